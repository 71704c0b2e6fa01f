//! Reuse of presigned URLs: a farm's gateways boot the same few kernels and initrds, and
//! signing each URL anew is most of a boot's work. A URL is handed out again only during the
//! first fifth of its lifetime, so every URL a gateway receives has at least 80% of the
//! configured lifetime left. The URLs grant reading one content-addressed asset, the same for
//! every gateway that boots it.

use crate::storage::{Presigner, StoreError};
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Entries kept at most; beyond, the cache starts over (assets per release are few).
const MAX_ENTRIES: usize = 4096;

pub struct CachingPresigner {
    inner: Arc<dyn Presigner>,
    entries: Mutex<HashMap<(String, Duration), (String, Instant)>>,
}

impl CachingPresigner {
    pub fn new(inner: Arc<dyn Presigner>) -> Self {
        CachingPresigner { inner, entries: Mutex::new(HashMap::new()) }
    }

    fn reuse_window(ttl: Duration) -> Duration {
        ttl / 5
    }
}

#[async_trait]
impl Presigner for CachingPresigner {
    async fn presign_get(&self, key: &str, ttl: Duration) -> Result<String, StoreError> {
        let cache_key = (key.to_string(), ttl);
        let now = Instant::now();
        if let Some((url, signed_at)) = self.entries.lock().unwrap_or_else(|p| p.into_inner()).get(&cache_key) {
            if now.duration_since(*signed_at) < Self::reuse_window(ttl) {
                return Ok(url.clone());
            }
        }
        let url = self.inner.presign_get(key, ttl).await?;
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(cache_key, (url.clone(), now));
        Ok(url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    #[derive(Default)]
    struct Counting(AtomicU64);

    #[async_trait]
    impl Presigner for Counting {
        async fn presign_get(&self, key: &str, ttl: Duration) -> Result<String, StoreError> {
            let n = self.0.fetch_add(1, Ordering::SeqCst);
            Ok(format!("https://x/{key}?ttl={}&n={n}", ttl.as_secs()))
        }
    }

    #[tokio::test]
    async fn reuses_a_url_only_in_the_first_fifth_of_its_lifetime() {
        let inner = Arc::new(Counting::default());
        let cache = CachingPresigner::new(inner.clone());
        let ttl = Duration::from_millis(500);
        let a = cache.presign_get("k", ttl).await.unwrap();
        assert_eq!(cache.presign_get("k", ttl).await.unwrap(), a);
        assert_ne!(cache.presign_get("other", ttl).await.unwrap(), a);
        assert_ne!(cache.presign_get("k", Duration::from_secs(9)).await.unwrap(), a, "another lifetime is another URL");
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_ne!(cache.presign_get("k", ttl).await.unwrap(), a, "signed anew after a fifth of the lifetime");
        assert_eq!(inner.0.load(Ordering::SeqCst), 4);
    }
}
