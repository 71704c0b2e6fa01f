//! The embedded bucket as plain files (`DIR/s3/<bucket>/<key>`), the layout the embedded S3
//! endpoint serves. The operator CLI writes through it when no server is running, and a running
//! server sees each write within a millisecond.
//!
//! Writes are atomic (temporary file, fsync, rename). Conditional writes hold an exclusive lock
//! on the bucket's lock file while they compare and write, so concurrent operators on one
//! machine cannot lose an update. Version tags are the SHA-256 of the content.
//!
//! Records are kept in memory ([`FileCache`]) and checked with one `stat` per read (at most
//! one per [`RECHECK_AFTER`](crate::embedded::file_cache::RECHECK_AFTER)), done in place: on
//! the page-cached data dir a hand-off to the blocking pool costs more than the lookup. Misses, folder walks and writes run on the blocking pool.

use crate::embedded::file_cache::{Cached, FileCache, MAX_CACHED_FILE};
use crate::files::{create_private_dirs, open_creating_dirs, write_replacing};
use async_trait::async_trait;
use ipxe_edge_core::storage::{keys, ObjectStore, StoreError, Versioned, WriteCondition};
use sha2::{Digest, Sha256};
use std::fs::{self, File, OpenOptions};
use std::io::ErrorKind;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

#[derive(Clone, Debug)]
pub struct FsStore {
    root: PathBuf,
    /// When the directory is a bucket of the embedded S3 endpoint (s3s-fs): its root and the
    /// bucket name, so that a write can drop the endpoint's cached checksums of the object.
    s3s: Option<(PathBuf, String)>,
    /// Whether writes are renamed into place and fsynced before they count (records: yes; the
    /// boot journal, whose latest entries may be lost in a crash without harm: no, its files
    /// are overwritten in place).
    durable: bool,
    cache: Arc<FileCache>,
}

fn io(key: &str) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |e| StoreError::Unavailable(format!("{key}: {e}"))
}

impl FsStore {
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        create_private_dirs(&root).map_err(|e| StoreError::Unavailable(format!("{}: {e}", root.display())))?;
        Ok(FsStore { root, s3s: None, durable: true, cache: Arc::default() })
    }

    /// A store whose writes are neither fsynced nor renamed into place but overwrite the file
    /// under the file's own lock (readers share it): for data a crash may lose or tear (the boot
    /// journal), where an fsync, or a new inode, per boot would bound the boot rate.
    pub fn open_volatile(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        Ok(FsStore { durable: false, ..Self::open(root)? })
    }

    /// Bucket `bucket` of an s3s-fs root: the objects the embedded S3 endpoint serves.
    pub fn open_s3s_bucket(s3s_root: impl Into<PathBuf>, bucket: &str) -> Result<Self, StoreError> {
        let s3s_root = s3s_root.into();
        let mut store = Self::open(s3s_root.join(bucket))?;
        store.s3s = Some((s3s_root, bucket.to_string()));
        Ok(store)
    }

    /// Where s3s-fs keeps what it knows of an object besides its bytes (`internal.json`:
    /// checksums and ETag; `metadata.json`).
    fn s3s_sidecar(&self, key: &str, suffix: &str) -> Option<PathBuf> {
        use base64::Engine;
        let (root, bucket) = self.s3s.as_ref()?;
        let encode = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        Some(root.join(format!(".bucket-{}.object-{}.{suffix}", encode(bucket), encode(key))))
    }

    /// Removes what s3s-fs remembers of an object (checksums, metadata), which would no longer
    /// match content written here.
    fn forget_s3s_sidecars(&self, key: &str) {
        for suffix in ["internal.json", "metadata.json"] {
            if let Some(path) = self.s3s_sidecar(key, suffix) {
                let _ = fs::remove_file(path);
            }
        }
    }

    /// Gives s3s-fs the ETag (MD5) of an object gateways download, which it would otherwise
    /// compute by reading the whole file on every GET (an initrd's megabytes per boot). Small
    /// objects are left to it: hashing them is cheap, a second file per record write is not.
    fn remember_s3s_etag(&self, key: &str, body: &[u8]) {
        const HASHED_ONCE_FROM: usize = 64 * 1024;
        let Some(path) = self.s3s_sidecar(key, "internal.json").filter(|_| body.len() >= HASHED_ONCE_FROM) else {
            return;
        };
        let info = serde_json::json!({ "e_tag": hex::encode(<md5::Md5 as md5::Digest>::digest(body)) });
        // Best effort: without it s3s-fs hashes the file itself.
        let _ = write_replacing(&path, info.to_string().as_bytes(), 0o600, self.durable);
    }

    /// The file of a key; keys that could leave the bucket directory are refused.
    pub(crate) fn path(&self, key: &str) -> Result<PathBuf, StoreError> {
        let relative = Path::new(key);
        let safe = !key.is_empty()
            && !key.contains('\0')
            && relative.components().all(|c| matches!(c, Component::Normal(_)))
            && !relative.components().any(|c| c.as_os_str().to_string_lossy().starts_with(".ipxe-edge"));
        if !safe {
            return Err(StoreError::InvalidKey(key.to_string()));
        }
        Ok(self.root.join(relative))
    }

    fn tag(body: &[u8]) -> String {
        hex::encode(Sha256::digest(body))
    }

    fn write_object(&self, path: &Path, body: &[u8], key: &str) -> Result<(), StoreError> {
        self.forget_s3s_sidecars(key);
        let result = self.write_file(path, body, key);
        self.forget_s3s_sidecars(key);
        if result.is_ok() {
            self.remember_s3s_etag(key, body);
        }
        result
    }

    fn write_file(&self, path: &Path, body: &[u8], key: &str) -> Result<(), StoreError> {
        self.cache.forget(path);
        let meta = write_replacing(path, body, 0o600, true).map_err(io(key))?;
        self.keep_written(path, key, &meta, body);
        Ok(())
    }

    /// Keeps what this store just wrote at `path`, if it is a record.
    fn keep_written(&self, path: &Path, key: &str, meta: &fs::Metadata, body: &[u8]) {
        if Self::cacheable(key, body.len()) {
            self.cache.keep_written(path, meta, Cached::File { body: body.to_vec(), etag: Self::tag(body) });
        }
    }

    /// Records are kept in memory; large objects and anything holding key material are not.
    fn cacheable(key: &str, len: usize) -> bool {
        len <= MAX_CACHED_FILE && !keys::holds_key_material(key)
    }

    /// The object at `path` from the cache when its file is unchanged.
    fn cached(&self, path: &Path, meta: &fs::Metadata) -> Option<Versioned> {
        match self.cache.get(path, meta)? {
            Cached::File { body, etag } => Some(Versioned { body, etag: Some(etag) }),
            Cached::Folder(_) => None,
        }
    }

    /// Reads an object (or `None` when there is none), through the cache.
    fn read_blocking(&self, path: &Path, key: &str) -> Result<Option<Versioned>, StoreError> {
        use std::io::Read;
        let mut file = match File::open(path) {
            Ok(file) => file,
            Err(e) if e.kind() == ErrorKind::NotFound || e.kind() == ErrorKind::NotADirectory => return Ok(None),
            Err(e) => return Err(io(key)(e)),
        };
        if !self.durable {
            // Overwritten in place under this file's lock: read none halfway through.
            file.lock_shared().map_err(io(key))?;
        }
        // The metadata of the file read, not of whatever the path names a moment later.
        let meta = file.metadata().map_err(io(key))?;
        if meta.is_dir() {
            return Ok(None);
        }
        if let Some(hit) = self.cached(path, &meta) {
            return Ok(Some(hit));
        }
        let mut body = Vec::with_capacity(meta.len() as usize);
        file.read_to_end(&mut body).map_err(io(key))?;
        if body.is_empty() && !self.durable {
            return Ok(None); // created by a writer that has not written yet
        }
        let etag = Self::tag(&body);
        if Self::cacheable(key, body.len()) {
            self.cache.keep_read(path, &meta, Cached::File { body: body.clone(), etag: etag.clone() });
        }
        Ok(Some(Versioned { body, etag: Some(etag) }))
    }

    /// The keys under `start` that begin with `prefix`, sorted. A folder without subfolders (a
    /// gateway's) is kept in the cache, checked by the folder's own metadata.
    fn list_blocking(&self, start: &Path, prefix: &str) -> Result<Vec<String>, StoreError> {
        let start_meta = fs::metadata(start).ok();
        let mut keys = Vec::new();
        let mut flat = true;
        let mut stack = vec![start.to_path_buf()];
        while let Some(dir) = stack.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == ErrorKind::NotFound || e.kind() == ErrorKind::NotADirectory => continue,
                Err(e) => return Err(StoreError::Unavailable(format!("{}: {e}", dir.display()))),
            };
            for entry in entries.flatten() {
                let path = entry.path();
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with(".ipxe-edge") || name.starts_with(".tmp") {
                    continue;
                }
                if path.is_dir() {
                    flat = false;
                    stack.push(path);
                } else if let Ok(rel) = path.strip_prefix(&self.root) {
                    keys.push(rel.to_string_lossy().into_owned());
                }
            }
        }
        keys.sort();
        if let (true, Some(meta)) = (flat, start_meta.filter(|m| m.is_dir())) {
            self.cache.keep_read(start, &meta, Cached::Folder(keys.clone()));
        }
        keys.retain(|k| k.starts_with(prefix));
        Ok(keys)
    }

    pub(crate) fn put_blocking(&self, key: &str, body: Vec<u8>, condition: WriteCondition) -> Result<(), StoreError> {
        let path = self.path(key)?;
        if !self.durable {
            let file = self.open_in_place(&path, key)?;
            return self.write_in_place(&file, &path, key, &body, &condition, true).map(drop);
        }
        if condition == WriteCondition::Always {
            return self.write_object(&path, &body, key);
        }
        use std::os::unix::fs::OpenOptionsExt;
        // The bucket's lock: a renamed file cannot carry its own lock across the replacement.
        // Closing the lock file (any return) releases it.
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(self.root.join(".ipxe-edge.lock"))
            .map_err(io(key))?;
        lock.lock().map_err(io(key))?;
        let current = match fs::read(&path) {
            Ok(b) => Some(Self::tag(&b)),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => return Err(io(key)(e)),
        };
        if condition.allows(current.as_deref()) {
            self.write_object(&path, &body, key)
        } else {
            Err(StoreError::Conflict(key.to_string()))
        }
    }

    /// The file of a volatile store's key, opened (and created) for [`Self::write_in_place`].
    pub(crate) fn open_in_place(&self, path: &Path, key: &str) -> Result<File, StoreError> {
        use std::os::unix::fs::OpenOptionsExt;
        open_creating_dirs(path, OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600))
            .map_err(io(key))
    }

    /// A volatile store's write: the file is overwritten in place (no new inode) under its own
    /// lock, which readers share; an empty file counts as none. With `wait` false, gives up
    /// (`Ok(false)`) instead of waiting for another process's lock. `file` is open at `path`
    /// and may stay open for the next write: its lock is released on return. A file no longer linked at its path
    /// (deleted under the open handle) is [`StoreError::Unavailable`] and nothing counts as
    /// written; the caller opens the path again.
    pub(crate) fn write_in_place(
        &self,
        file: &File,
        path: &Path,
        key: &str,
        body: &[u8],
        condition: &WriteCondition,
        wait: bool,
    ) -> Result<bool, StoreError> {
        use std::os::unix::fs::{FileExt, MetadataExt};
        if wait {
            file.lock().map_err(io(key))?;
        } else {
            match file.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => return Ok(false),
                Err(std::fs::TryLockError::Error(e)) => return Err(io(key)(e)),
            }
        }
        let written = (|| {
            // The file itself, not the cache: another process's write within one tick of the
            // clock could leave the cache's stamp unchanged.
            let current = read_whole_at(file).map_err(io(key))?;
            let tag = (!current.is_empty()).then(|| Self::tag(&current));
            let deleted = || StoreError::Unavailable(format!("{key}: deleted while open"));
            if !condition.allows(tag.as_deref()) {
                self.cache.forget(path);
                // Only a file still at its path conflicts; a deleted one holds nobody's state.
                return Err(match file.metadata() {
                    Ok(meta) if meta.nlink() == 0 => deleted(),
                    _ => StoreError::Conflict(key.to_string()),
                });
            }
            file.write_all_at(body, 0).map_err(io(key))?;
            if body.len() < current.len() {
                file.set_len(body.len() as u64).map_err(io(key))?;
            }
            let meta = file.metadata().map_err(io(key))?;
            if meta.nlink() == 0 {
                self.cache.forget(path);
                return Err(deleted());
            }
            if !body.is_empty() {
                self.keep_written(path, key, &meta, body);
            }
            Ok(true)
        })();
        // Released before any other use of the handle; a failed unlock is released at close.
        let _ = file.unlock();
        written
    }
}

/// A regular file's whole content read from offset 0, without moving its cursor: a short read
/// of a regular file is its end.
fn read_whole_at(file: &File) -> std::io::Result<Vec<u8>> {
    use std::os::unix::fs::FileExt;
    let mut body = vec![0; 4096];
    let mut len = 0;
    loop {
        match file.read_at(&mut body[len..], len as u64) {
            Ok(n) => {
                len += n;
                if n == 0 || len < body.len() {
                    body.truncate(len);
                    return Ok(body);
                }
                body.resize(body.len() * 2, 0);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

#[async_trait]
impl ObjectStore for FsStore {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        let path = self.path(key)?;
        match self.cache.recent(&path) {
            Some(Cached::File { body, etag }) => return Ok(Some(Versioned { body, etag: Some(etag) })),
            Some(Cached::Folder(_)) => return Ok(None),
            None => {}
        }
        match fs::metadata(&path) {
            Ok(meta) if meta.is_dir() => return Ok(None),
            Ok(meta) => {
                if let Some(hit) = self.cached(&path, &meta) {
                    return Ok(Some(hit));
                }
            }
            Err(e) if e.kind() == ErrorKind::NotFound || e.kind() == ErrorKind::NotADirectory => return Ok(None),
            Err(e) => return Err(io(key)(e)),
        }
        let this = self.clone();
        let key = key.to_string();
        tokio::task::spawn_blocking(move || this.read_blocking(&path, &key))
            .await
            .map_err(|e| StoreError::Unavailable(format!("read task: {e}")))?
    }

    async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        let path = self.path(key)?;
        Ok(fs::metadata(&path).map(|m| m.is_file() && (self.durable || m.len() > 0)).unwrap_or(false))
    }

    async fn put(&self, key: &str, body: Vec<u8>, condition: WriteCondition) -> Result<(), StoreError> {
        let this = self.clone();
        let key = key.to_string();
        tokio::task::spawn_blocking(move || this.put_blocking(&key, body, condition))
            .await
            .map_err(|e| StoreError::Unavailable(format!("write task: {e}")))?
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let root = &self.root;
        let prefix = prefix.to_string();
        // Walk only the directory the prefix names (`gateways/<fp>/` reads one folder), so a
        // listing costs what it returns, not the size of the bucket.
        let start = match prefix.rfind('/') {
            Some(i) if Path::new(&prefix[..i]).components().all(|c| matches!(c, Component::Normal(_))) => {
                root.join(&prefix[..i])
            }
            Some(_) => return Err(StoreError::InvalidKey(prefix)),
            None => root.clone(),
        };
        if let Some(Cached::Folder(keys)) = self.cache.recent(&start) {
            return Ok(keys.into_iter().filter(|k| k.starts_with(&prefix)).collect());
        }
        if let Ok(meta) = fs::metadata(&start) {
            if let Some(Cached::Folder(keys)) = self.cache.get(&start, &meta) {
                return Ok(keys.into_iter().filter(|k| k.starts_with(&prefix)).collect());
            }
        }
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.list_blocking(&start, &prefix))
            .await
            .map_err(|e| StoreError::Unavailable(format!("list task: {e}")))?
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path(key)?;
        self.forget_s3s_sidecars(key);
        self.cache.forget(&path);
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(key)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn store(name: &str) -> FsStore {
        let dir = std::env::temp_dir().join(format!("ipxe-edge-fsstore-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        FsStore::open(dir).unwrap()
    }

    #[tokio::test]
    async fn round_trip_and_conditions() {
        let s = store("rt");
        assert_eq!(s.get("a/b.json").await.unwrap(), None);
        s.put("a/b.json", b"1".to_vec(), WriteCondition::Absent).await.unwrap();
        assert!(matches!(s.put("a/b.json", b"2".to_vec(), WriteCondition::Absent).await, Err(StoreError::Conflict(_))));
        let v = s.get("a/b.json").await.unwrap().unwrap();
        s.put("a/b.json", b"2".to_vec(), WriteCondition::Matches(v.etag.clone().unwrap())).await.unwrap();
        assert!(matches!(
            s.put("a/b.json", b"3".to_vec(), WriteCondition::Matches(v.etag.unwrap())).await,
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(s.list("a/").await.unwrap(), vec!["a/b.json".to_string()]);
        s.delete("a/b.json").await.unwrap();
        assert!(!s.exists("a/b.json").await.unwrap());
    }

    /// Large objects of the endpoint's bucket carry their MD5 for s3s-fs, so that a GET does not
    /// hash the whole file; small ones and rewritten ones carry nothing stale.
    #[tokio::test]
    async fn large_objects_tell_s3s_their_etag() {
        let root = std::env::temp_dir().join(format!("ipxe-edge-fsstore-etag-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let s = FsStore::open_s3s_bucket(&root, "b").unwrap();
        let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        s.put("assets/sha256/big", big.clone(), WriteCondition::Always).await.unwrap();
        let sidecar = s.s3s_sidecar("assets/sha256/big", "internal.json").unwrap();
        let info: serde_json::Value = serde_json::from_slice(&fs::read(&sidecar).unwrap()).unwrap();
        let file = root.join("b/assets/sha256/big");
        let md5sum = std::process::Command::new("md5sum").arg(&file).output().unwrap();
        let expected = String::from_utf8(md5sum.stdout).unwrap().split(' ').next().unwrap().to_string();
        assert_eq!(info["e_tag"], expected.as_str());
        s.put("assets/sha256/big", b"small now".to_vec(), WriteCondition::Always).await.unwrap();
        assert!(!sidecar.exists(), "no stale ETag after a rewrite");
        s.put("records/small.json", b"{}".to_vec(), WriteCondition::Always).await.unwrap();
        assert!(!s.s3s_sidecar("records/small.json", "internal.json").unwrap().exists());
    }

    /// The journal's store overwrites its files (no new inode per write); a conflict found on
    /// the file itself drops what the cache held, so the next read sees the other writer.
    #[tokio::test]
    async fn a_volatile_store_overwrites_in_place() {
        use std::os::unix::fs::MetadataExt;
        let dir = std::env::temp_dir().join(format!("ipxe-edge-fsstore-volatile-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let s = FsStore::open_volatile(&dir).unwrap();
        let file = dir.join("g/state.json");
        s.put("g/state.json", b"a longer first state".to_vec(), WriteCondition::Absent).await.unwrap();
        let inode = fs::metadata(&file).unwrap().ino();
        let first = s.get("g/state.json").await.unwrap().unwrap();
        s.put("g/state.json", b"short".to_vec(), WriteCondition::Matches(first.etag.unwrap())).await.unwrap();
        assert_eq!(fs::read(&file).unwrap(), b"short");
        assert_eq!(fs::metadata(&file).unwrap().ino(), inode);
        let mode = std::os::unix::fs::PermissionsExt::mode(&fs::metadata(&file).unwrap().permissions()) & 0o777;
        assert_eq!(mode, 0o600);
        let second = s.get("g/state.json").await.unwrap().unwrap();
        assert_eq!(second.body, b"short");
        // Another writer, same size, same inode, same clock tick.
        fs::OpenOptions::new().write(true).open(&file).unwrap().write_all(b"other").unwrap();
        assert!(matches!(
            s.put("g/state.json", b"mine".to_vec(), WriteCondition::Matches(second.etag.unwrap())).await,
            Err(StoreError::Conflict(_))
        ));
        assert_eq!(s.get("g/state.json").await.unwrap().unwrap().body, b"other");
        let _ = fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn keys_cannot_escape() {
        let s = store("escape");
        for bad in ["../x", "/etc/passwd", "a/../../x", "", ".ipxe-edge.lock"] {
            assert!(
                matches!(s.put(bad, b"x".to_vec(), WriteCondition::Always).await, Err(StoreError::InvalidKey(_))),
                "{bad}"
            );
            assert!(matches!(s.get(bad).await, Err(StoreError::InvalidKey(_))), "{bad}");
        }
        assert!(matches!(s.list("../").await, Err(StoreError::InvalidKey(_))));
    }

    #[tokio::test]
    async fn listing_a_prefix_reads_only_its_folder() {
        let s = store("prefix");
        for key in
            ["gateways/aa/gateway.json", "gateways/aa/secrets", "gateways/ab/gateway.json", "releases/r1/manifest.json"]
        {
            s.put(key, b"x".to_vec(), WriteCondition::Always).await.unwrap();
        }
        assert_eq!(
            s.list("gateways/aa/").await.unwrap(),
            vec!["gateways/aa/gateway.json".to_string(), "gateways/aa/secrets".to_string()]
        );
        assert_eq!(s.list("gateways/a").await.unwrap().len(), 3);
        assert_eq!(s.list("gateways/zz/").await.unwrap(), Vec::<String>::new());
        assert_eq!(s.list("").await.unwrap().len(), 4);
    }
}
