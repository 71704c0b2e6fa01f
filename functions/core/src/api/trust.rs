//! The CA bundle client certificates must chain to, as each request sees it.

use crate::domain::identity::{ChainVerifier, TrustBundle};
use crate::storage::{ObjectStore, Revalidated};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub enum Trust {
    /// Read once for the life of the process: `serve`, whose TLS handshake verifies with this
    /// very verifier.
    Fixed(Arc<ChainVerifier>),
    /// Follows the bundle object (a warm function): `ca trust` takes effect within its max age.
    Revalidated(RevalidatedTrust),
}

impl Trust {
    /// The verifier for a request arriving now.
    pub async fn verifier(&self) -> Arc<ChainVerifier> {
        match self {
            Trust::Fixed(verifier) => verifier.clone(),
            Trust::Revalidated(trust) => trust.verifier(Instant::now()).await,
        }
    }
}

/// A trust bundle kept in memory and revalidated by version tag once it is `max_age` old: one
/// round trip without a body while nothing changed, a new verifier (with an empty cache of
/// verified chains) when it did. A bundle that cannot be read or parsed leaves the last good one
/// in place, and the next request after `max_age` tries again.
pub struct RevalidatedTrust {
    store: Arc<dyn ObjectStore>,
    key: String,
    clock_skew: Duration,
    max_age: Duration,
    current: Mutex<Current>,
}

struct Current {
    verifier: Arc<ChainVerifier>,
    etag: Option<String>,
    checked_at: Instant,
}

impl RevalidatedTrust {
    /// Starts from a bundle just read from `key` with version tag `etag`.
    pub fn new(
        store: Arc<dyn ObjectStore>,
        key: impl Into<String>,
        bundle: TrustBundle,
        etag: Option<String>,
        clock_skew: Duration,
        max_age: Duration,
    ) -> Self {
        let verifier = Arc::new(ChainVerifier::new(bundle, clock_skew));
        RevalidatedTrust {
            store,
            key: key.into(),
            clock_skew,
            max_age,
            current: Mutex::new(Current { verifier, etag, checked_at: Instant::now() }),
        }
    }

    /// How long the bundle is used before it is revalidated.
    pub fn max_age(&self) -> Duration {
        self.max_age
    }

    pub async fn verifier(&self, now: Instant) -> Arc<ChainVerifier> {
        let (verifier, etag) = {
            let current = self.current.lock().unwrap();
            if now.saturating_duration_since(current.checked_at) < self.max_age {
                return current.verifier.clone();
            }
            (current.verifier.clone(), current.etag.clone())
        };
        let read = match &etag {
            Some(etag) => self.store.get_unless(&self.key, etag).await,
            None => self.store.get(&self.key).await.map(Revalidated::Changed),
        };
        let mut current = self.current.lock().unwrap();
        current.checked_at = now;
        match read {
            Ok(Revalidated::Unchanged) => verifier,
            Ok(Revalidated::Changed(Some(object))) => match TrustBundle::from_pem(&object.body) {
                Ok(bundle) => {
                    tracing::info!(key = %self.key, trusted_cas = bundle.len(), "trust bundle changed");
                    current.verifier = Arc::new(ChainVerifier::new(bundle, self.clock_skew));
                    current.etag = object.etag;
                    current.verifier.clone()
                }
                Err(e) => {
                    tracing::error!(key = %self.key, error = %e, "trust bundle changed but cannot be used; keeping the previous one");
                    verifier
                }
            },
            Ok(Revalidated::Changed(None)) => {
                tracing::error!(key = %self.key, "trust bundle is gone; keeping the previous one");
                verifier
            }
            Err(e) => {
                tracing::warn!(key = %self.key, error = %e, "trust bundle cannot be revalidated; keeping the current one");
                verifier
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::identity::DEFAULT_CLOCK_SKEW;
    use crate::storage::adapters::memory::MemoryStore;
    use crate::storage::{ObjectStore, WriteCondition};
    use ipxe_edge_pki::{validity_days, CertificateAuthority};
    use std::sync::atomic::Ordering;

    const KEY: &str = "pki/truststore.pem";
    const MAX_AGE: Duration = Duration::from_secs(60);

    async fn trust_in(store: &Arc<MemoryStore>, ca: &CertificateAuthority) -> RevalidatedTrust {
        store.put(KEY, ca.cert_pem().into_bytes(), WriteCondition::Always).await.unwrap();
        let object = store.get(KEY).await.unwrap().unwrap();
        let bundle = TrustBundle::from_pem(&object.body).unwrap();
        RevalidatedTrust::new(store.clone(), KEY, bundle, object.etag, DEFAULT_CLOCK_SKEW, MAX_AGE)
    }

    fn now() -> i64 {
        crate::domain::clock::unix_now() as i64
    }

    #[tokio::test]
    async fn a_changed_bundle_is_used_after_max_age_and_not_before() {
        let (ours, theirs) = (
            CertificateAuthority::generate("ours", 30).unwrap(),
            CertificateAuthority::generate("theirs", 30).unwrap(),
        );
        let gateway = theirs.issue_client("gw", validity_days(10)).unwrap();
        let store = Arc::new(MemoryStore::new());
        let trust = trust_in(&store, &ours).await;
        let start = Instant::now();
        assert!(trust.verifier(start).await.verify_pem(gateway.cert_pem.as_bytes(), now()).is_err());

        // `ca trust`: both CAs in the bundle.
        let both = format!("{}{}", ours.cert_pem(), theirs.cert_pem());
        store.put(KEY, both.into_bytes(), WriteCondition::Always).await.unwrap();
        let calls = store.calls.load(Ordering::SeqCst);
        let fresh = trust.verifier(start + MAX_AGE - Duration::from_secs(1)).await;
        assert!(fresh.verify_pem(gateway.cert_pem.as_bytes(), now()).is_err(), "within max age: the copy");
        assert_eq!(store.calls.load(Ordering::SeqCst), calls, "no read within max age");
        let revalidated = trust.verifier(start + MAX_AGE).await;
        assert!(revalidated.verify_pem(gateway.cert_pem.as_bytes(), now()).is_ok(), "after max age: the new bundle");
        assert_eq!(store.calls.load(Ordering::SeqCst), calls + 1, "one read");

        // `ca untrust`: their CA leaves the bundle again; a chain verified before is refused.
        store.put(KEY, ours.cert_pem().into_bytes(), WriteCondition::Always).await.unwrap();
        let untrusted = trust.verifier(start + MAX_AGE * 2).await;
        assert!(untrusted.verify_pem(gateway.cert_pem.as_bytes(), now()).is_err());
    }

    #[tokio::test]
    async fn an_unusable_bundle_or_an_outage_keeps_the_last_good_one() {
        let ca = CertificateAuthority::generate("ours", 30).unwrap();
        let gateway = ca.issue_client("gw", validity_days(10)).unwrap();
        let store = Arc::new(MemoryStore::new());
        let trust = trust_in(&store, &ca).await;
        let start = Instant::now();
        store.put(KEY, b"not a bundle".to_vec(), WriteCondition::Always).await.unwrap();
        let kept = trust.verifier(start + MAX_AGE).await;
        assert!(kept.verify_pem(gateway.cert_pem.as_bytes(), now()).is_ok());
        store.fail.store(true, Ordering::SeqCst);
        let kept = trust.verifier(start + MAX_AGE * 2).await;
        assert!(kept.verify_pem(gateway.cert_pem.as_bytes(), now()).is_ok());
        store.fail.store(false, Ordering::SeqCst);
        store.delete(KEY).await.unwrap();
        let kept = trust.verifier(start + MAX_AGE * 3).await;
        assert!(kept.verify_pem(gateway.cert_pem.as_bytes(), now()).is_ok());
    }
}
