//! Per-gateway scratch space on `serve`'s embedded S3 endpoint: bucket [`SCRATCH_BUCKET`], one
//! prefix per gateway (`scratch/<gateway>/`), and keys minted at each redemption that can list,
//! read, write and delete under their gateway's prefix and nothing else.
//!
//! Keys live in `DIR/scratch-keys.json` (0600; the endpoint needs each secret to check SigV4).
//! Every change is a locked read-modify-write (so `serve` and operator commands can both change
//! it), and the endpoint re-reads the file when it changed: a revoked key is refused from the
//! next request on.

use crate::datadir;
use crate::embedded::file_cache::Stamp;
use crate::embedded::s3_endpoint::S3Credentials;
use async_trait::async_trait;
use ipxe_edge_core::storage::{ScratchKey, ScratchKeyInfo, ScratchKeys, ScratchUsage, StoreError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// The embedded bucket that holds every gateway's scratch space.
pub const SCRATCH_BUCKET: &str = "scratch";

#[derive(Clone, Serialize, Deserialize)]
struct StoredKey {
    gateway: String,
    secret: String,
    minted_at: u64,
    /// Mint order: greater than every key live when this one was minted.
    #[serde(default)]
    seq: u64,
    /// Set while the gateway is disabled: the key opens nothing.
    #[serde(default)]
    suspended: bool,
}

/// A live key as the endpoint checks it.
pub struct LiveKey {
    pub gateway: String,
    pub secret: String,
    pub suspended: bool,
}

type Keys = BTreeMap<String, StoredKey>;
pub struct EmbeddedScratch {
    file: PathBuf,
    lock: PathBuf,
    bucket_dir: PathBuf,
    /// `${s3_endpoint}`: the endpoint's public URL.
    endpoint: String,
    /// The keys file as last read, with its stamp; empty while the file is missing or changed
    /// too recently for its stamp to tell the next change.
    cache: Mutex<Option<(Stamp, Arc<Keys>)>>,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("scratch keys: {e}"))
}

impl EmbeddedScratch {
    /// The scratch space under `data` (`DIR/scratch-keys.json`, `DIR/s3/scratch/`).
    pub fn open(data: &datadir::DataDir, endpoint: impl Into<String>) -> Result<Arc<Self>, datadir::DataDirError> {
        let bucket_dir = data.s3_root().join(SCRATCH_BUCKET);
        crate::files::create_private_dirs(&bucket_dir).map_err(datadir::io_error(&bucket_dir))?;
        Ok(Arc::new(EmbeddedScratch {
            file: data.root().join("scratch-keys.json"),
            lock: data.root().join("scratch-keys.lock"),
            bucket_dir,
            endpoint: endpoint.into(),
            cache: Mutex::new(None),
        }))
    }

    /// The keys as the file holds them now: re-read when its stamp changed, and on every call
    /// while it changed within the racy window of [`Stamp`] (a second change in the same clock
    /// tick, to the same size and inode, would keep the stamp: a revoked key must not live on).
    fn current(&self) -> Arc<Keys> {
        let stamp = std::fs::metadata(&self.file).ok().map(|meta| Stamp::of(&meta));
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let (Some(now), Some((kept, keys))) = (stamp, cache.as_ref()) {
            if now == *kept {
                return keys.clone();
            }
        }
        let keys: Arc<Keys> =
            Arc::new(std::fs::read(&self.file).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default());
        *cache = stamp.filter(|s| !s.is_racy()).map(|s| (s, keys.clone()));
        keys
    }

    /// A live key by its id.
    pub fn lookup(&self, access_key_id: &str) -> Option<LiveKey> {
        self.current().get(access_key_id).map(|k| LiveKey {
            gateway: k.gateway.clone(),
            secret: k.secret.clone(),
            suspended: k.suspended,
        })
    }

    /// Bytes the gateway's space holds, with the parts of multipart uploads its keys started
    /// and have not completed (they live outside the space until then).
    pub fn bytes_used(&self, gateway: &str) -> u64 {
        let keys = self.current();
        let mine = |ak: &str| keys.get(ak).is_some_and(|k| k.gateway == gateway);
        let mut bytes = space_usage(&self.bucket_dir.join(gateway)).bytes;
        let Some(root) = self.bucket_dir.parent() else { return bytes };
        let Ok(entries) = std::fs::read_dir(root) else { return bytes };
        let uploads: Vec<String> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let id = name.strip_prefix(".upload-")?.strip_suffix(".json")?.to_string();
                let owner: Option<String> = serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok()?;
                owner.is_some_and(|ak| mine(&ak)).then_some(id)
            })
            .collect();
        if uploads.is_empty() {
            return bytes;
        }
        for entry in std::fs::read_dir(root).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if uploads.iter().any(|id| name.starts_with(&format!(".upload_id-{id}.part-"))) {
                bytes += entry.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
        bytes
    }

    /// Changes the key file under an exclusive lock shared with other processes.
    async fn change<T: Send + 'static>(
        &self,
        change: impl FnOnce(&mut Keys) -> T + Send + 'static,
    ) -> Result<T, StoreError> {
        let (file, lock) = (self.file.clone(), self.lock.clone());
        tokio::task::spawn_blocking(move || -> Result<T, StoreError> {
            use std::os::unix::fs::OpenOptionsExt;
            use std::os::unix::io::AsRawFd;
            let guard = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600)
                .open(&lock)
                .map_err(unavailable)?;
            // SAFETY: flock on a file descriptor this function owns; released when it closes.
            if unsafe { libc::flock(guard.as_raw_fd(), libc::LOCK_EX) } != 0 {
                return Err(unavailable(std::io::Error::last_os_error()));
            }
            let mut keys: Keys = match std::fs::read(&file) {
                Ok(bytes) => serde_json::from_slice(&bytes).map_err(unavailable)?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Keys::new(),
                Err(e) => return Err(unavailable(e)),
            };
            let out = change(&mut keys);
            crate::files::write_replacing(&file, &serde_json::to_vec(&keys).map_err(unavailable)?, 0o600, true)
                .map_err(unavailable)?;
            drop(guard);
            Ok(out)
        })
        .await
        .map_err(unavailable)?
    }
}

#[async_trait]
impl ScratchKeys for EmbeddedScratch {
    async fn mint(&self, gateway: &str, now: u64) -> Result<ScratchKey, StoreError> {
        let S3Credentials { access_key, secret_key } = S3Credentials::generate("IPXESCRATCH");
        let mut stored = StoredKey {
            gateway: gateway.to_string(),
            secret: secret_key.clone(),
            minted_at: now,
            seq: 0,
            suspended: false,
        };
        let key_id = access_key.clone();
        self.change(move |keys| {
            stored.seq = keys.values().map(|k| k.seq).max().unwrap_or(0) + 1;
            keys.insert(key_id, stored)
        })
        .await?;
        Ok(ScratchKey {
            access_key_id: access_key,
            secret_access_key: secret_key,
            endpoint: self.endpoint.clone(),
            bucket_name: format!("{SCRATCH_BUCKET}/{gateway}"),
            minted_at: now,
        })
    }

    async fn revoke_older(&self, gateway: &str, keep: &str) -> Result<usize, StoreError> {
        let (gateway, keep) = (gateway.to_string(), keep.to_string());
        self.change(move |keys| {
            let Some(kept) = keys.get(&keep).filter(|k| k.gateway == gateway).map(|k| k.seq) else { return 0 };
            let before = keys.len();
            keys.retain(|_, k| k.gateway != gateway || k.seq >= kept);
            before - keys.len()
        })
        .await
    }

    async fn revoke_all(&self, gateway: &str) -> Result<usize, StoreError> {
        let gateway = gateway.to_string();
        self.change(move |keys| {
            let before = keys.len();
            keys.retain(|_, k| k.gateway != gateway);
            before - keys.len()
        })
        .await
    }

    async fn set_suspended(&self, gateway: &str, suspended: bool) -> Result<usize, StoreError> {
        let gateway = gateway.to_string();
        self.change(move |keys| {
            let mine = keys.values_mut().filter(|k| k.gateway == gateway);
            mine.map(|k| k.suspended = suspended).count()
        })
        .await
    }

    async fn revoke(&self, gateway: &str, access_key_id: &str) -> Result<(), StoreError> {
        let (gateway, id) = (gateway.to_string(), access_key_id.to_string());
        self.change(move |keys| {
            if keys.get(&id).is_some_and(|k| k.gateway == gateway) {
                keys.remove(&id);
            }
        })
        .await
    }

    async fn keys(&self, gateway: &str) -> Result<Vec<ScratchKeyInfo>, StoreError> {
        let mut live: Vec<ScratchKeyInfo> = self
            .current()
            .iter()
            .filter(|(_, k)| k.gateway == gateway)
            .map(|(id, k)| ScratchKeyInfo { access_key_id: id.clone(), minted_at: k.minted_at })
            .collect();
        live.sort_by_key(|k| k.minted_at);
        Ok(live)
    }

    async fn usage(&self, gateway: &str) -> Result<ScratchUsage, StoreError> {
        let root = self.bucket_dir.join(gateway);
        tokio::task::spawn_blocking(move || space_usage(&root)).await.map_err(unavailable)
    }
}

/// Objects and bytes below `root` (the store's hidden sidecar files left out).
fn space_usage(root: &std::path::Path) -> ScratchUsage {
    let mut usage = ScratchUsage::default();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                pending.push(entry.path());
            } else if meta.is_file() && !entry.file_name().to_string_lossy().starts_with('.') {
                usage.objects += 1;
                usage.bytes += meta.len();
            }
        }
    }
    usage
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    /// A key revoked by a rewrite that keeps the file's size, inode and modification time is
    /// refused at once.
    #[tokio::test]
    async fn a_key_revoked_within_one_clock_tick_is_refused() {
        let root = std::env::temp_dir().join(format!("ipxe-edge-scratch-keys-{}", std::process::id()));
        let data = datadir::DataDir::open(&root).unwrap();
        let scratch = EmbeddedScratch::open(&data, "https://127.0.0.1").unwrap();
        let key = scratch.mint("gw-a", 100).await.unwrap();
        assert!(scratch.lookup(&key.access_key_id).is_some());
        let meta = std::fs::metadata(&scratch.file).unwrap();
        let text = String::from_utf8(std::fs::read(&scratch.file).unwrap()).unwrap();
        let renamed = text.replace(&key.access_key_id, &key.access_key_id.to_lowercase());
        assert_eq!(renamed.len(), text.len());
        let file = std::fs::OpenOptions::new().write(true).open(&scratch.file).unwrap();
        file.write_all_at(renamed.as_bytes(), 0).unwrap();
        file.set_modified(meta.modified().unwrap()).unwrap();
        assert!(scratch.lookup(&key.access_key_id).is_none(), "a revoked key was still accepted");
        let _ = std::fs::remove_dir_all(&root);
    }
}
