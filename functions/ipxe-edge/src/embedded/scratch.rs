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
use s3s::access::{S3Access, S3AccessContext};
use s3s::auth::{S3Auth, SecretKey};
use s3s::dto::DeleteObjectsInput;
use s3s::path::S3Path;
use s3s::{s3_error, S3Request, S3Result};
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
        crate::embedded::fs_store::create_private_dirs(&bucket_dir).map_err(datadir::io_error(&bucket_dir))?;
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
        let keys: Arc<Keys> = Arc::new(std::fs::read(&self.file).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default());
        *cache = stamp.filter(|s| !s.is_racy()).map(|s| (s, keys.clone()));
        keys
    }

    /// `(gateway, secret)` of a live key.
    fn lookup(&self, access_key_id: &str) -> Option<(String, String)> {
        self.current().get(access_key_id).map(|k| (k.gateway.clone(), k.secret.clone()))
    }

    /// Changes the key file under an exclusive lock shared with other processes.
    async fn change<T: Send + 'static>(&self, change: impl FnOnce(&mut Keys) -> T + Send + 'static) -> Result<T, StoreError> {
        let (file, lock) = (self.file.clone(), self.lock.clone());
        tokio::task::spawn_blocking(move || -> Result<T, StoreError> {
            use std::os::unix::fs::OpenOptionsExt;
            use std::os::unix::io::AsRawFd;
            let guard = std::fs::OpenOptions::new().create(true).truncate(false).write(true).mode(0o600).open(&lock).map_err(unavailable)?;
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
            crate::embedded::fs_store::write_atomic(&file, &serde_json::to_vec(&keys).map_err(unavailable)?, 0o600).map_err(unavailable)?;
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
        let stored = StoredKey { gateway: gateway.to_string(), secret: secret_key.clone(), minted_at: now };
        let key_id = access_key.clone();
        self.change(move |keys| keys.insert(key_id, stored)).await?;
        Ok(ScratchKey {
            access_key_id: access_key,
            secret_access_key: secret_key,
            endpoint: self.endpoint.clone(),
            bucket_name: format!("{SCRATCH_BUCKET}/{gateway}"),
            minted_at: now,
        })
    }

    async fn revoke_others(&self, gateway: &str, keep: Option<&str>) -> Result<usize, StoreError> {
        let (gateway, keep) = (gateway.to_string(), keep.map(str::to_string));
        self.change(move |keys| {
            let before = keys.len();
            keys.retain(|id, k| k.gateway != gateway || Some(id) == keep.as_ref());
            before - keys.len()
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
        tokio::task::spawn_blocking(move || {
            let mut usage = ScratchUsage::default();
            let mut pending = vec![root];
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
        })
        .await
        .map_err(unavailable)
    }
}

/// The endpoint's key lookup: the deployment's own key, or a live scratch key.
pub struct EndpointAuth {
    pub admin_access_key: String,
    pub admin_secret_key: String,
    pub scratch: Arc<EmbeddedScratch>,
}

#[async_trait]
impl S3Auth for EndpointAuth {
    async fn get_secret_key(&self, access_key: &str) -> S3Result<SecretKey> {
        if access_key == self.admin_access_key {
            return Ok(SecretKey::from(self.admin_secret_key.as_str()));
        }
        match self.scratch.lookup(access_key) {
            Some((_, secret)) => Ok(SecretKey::from(secret)),
            None => Err(s3_error!(InvalidAccessKeyId)),
        }
    }
}

/// Per-request access: the deployment's key may do anything; a scratch key only what its
/// gateway's space needs.
pub struct EndpointAccess {
    pub admin_access_key: String,
    pub scratch: Arc<EmbeddedScratch>,
}

/// Object operations a scratch key may use inside its own prefix (no server-side copy: its
/// source could be anywhere).
const OBJECT_OPERATIONS: [&str; 9] = [
    "GetObject",
    "HeadObject",
    "PutObject",
    "DeleteObject",
    "CreateMultipartUpload",
    "UploadPart",
    "CompleteMultipartUpload",
    "AbortMultipartUpload",
    "ListParts",
];

impl EndpointAccess {
    /// The gateway a request's scratch key belongs to; `None` for the deployment's key.
    fn gateway_of(&self, access_key: Option<&str>) -> S3Result<Option<String>> {
        let access_key = access_key.ok_or_else(|| s3_error!(AccessDenied))?;
        if access_key == self.admin_access_key {
            return Ok(None);
        }
        self.scratch.lookup(access_key).map(|(gateway, _)| Some(gateway)).ok_or_else(|| s3_error!(AccessDenied))
    }
}

fn query_value(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

#[async_trait]
impl S3Access for EndpointAccess {
    async fn check(&self, cx: &mut S3AccessContext<'_>) -> S3Result<()> {
        let Some(gateway) = self.gateway_of(cx.credentials().map(|c| c.access_key.as_str()))? else { return Ok(()) };
        let prefix = format!("{gateway}/");
        let op = cx.s3_op().name();
        let allowed = match cx.s3_path() {
            S3Path::Object { bucket, key } => &**bucket == SCRATCH_BUCKET && key.starts_with(&prefix) && OBJECT_OPERATIONS.contains(&op),
            S3Path::Bucket { bucket } if &**bucket == SCRATCH_BUCKET => match op {
                "HeadBucket" | "GetBucketLocation" | "DeleteObjects" => true,
                "ListObjects" | "ListObjectsV2" => query_value(cx.uri().query(), "prefix").is_some_and(|p| p.starts_with(&prefix) || p == gateway),
                _ => false,
            },
            _ => false,
        };
        if allowed {
            Ok(())
        } else {
            Err(s3_error!(AccessDenied))
        }
    }

    async fn delete_objects(&self, req: &mut S3Request<DeleteObjectsInput>) -> S3Result<()> {
        let Some(gateway) = self.gateway_of(req.credentials.as_ref().map(|c| c.access_key.as_str()))? else { return Ok(()) };
        let prefix = format!("{gateway}/");
        if req.input.delete.objects.iter().all(|o| o.key.starts_with(&prefix)) {
            Ok(())
        } else {
            Err(s3_error!(AccessDenied))
        }
    }
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
