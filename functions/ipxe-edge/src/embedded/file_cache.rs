//! Small files of the data dir kept in memory and checked against their metadata before each
//! use. A boot reads the same few records every time (the gateway, its channel, the release,
//! its boot state); a `stat` is a fraction of what open, read, close and hashing cost.
//!
//! Every writer of the data dir (this store, the CLI, the embedded S3 endpoint) replaces files
//! by renaming a new one over them, so a change shows as a new inode, size or change time.
//! File times tick coarsely, so a file read within [`RACY_WINDOW`] of its last change is not
//! kept: a second change within the same tick would look the same (git's "racy clean").
//!
//! A file checked less than [`RECHECK_AFTER`] ago is used without a new `stat`: under load a
//! record is read thousands of times a second, and a path lookup per read was a tenth of a
//! boot's cost. A change by another process is therefore seen by every read that starts at
//! least that long after it; this process's own writes are seen at once.

use std::collections::HashMap;
use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Files larger than this are read every time (kernels and initrds are not records).
pub const MAX_CACHED_FILE: usize = 64 * 1024;
/// What the cache may hold in all; past it, it starts over.
const MAX_CACHED_BYTES: usize = 16 * 1024 * 1024;
/// How recent a change must be for the file not to be kept.
const RACY_WINDOW_NS: i128 = 100_000_000;
/// How long a file's last check stands for the next reads. Far below what starting a CLI
/// command or answering a request takes, so no operator or client can tell.
pub const RECHECK_AFTER: Duration = Duration::from_millis(1);

/// What identifies one content of a file (or one listing of a folder).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl Stamp {
    pub fn of(meta: &Metadata) -> Self {
        let ns = |s: i64, n: i64| s as i128 * 1_000_000_000 + n as i128;
        Stamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: ns(meta.mtime(), meta.mtime_nsec()),
            ctime_ns: ns(meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// Whether the file changed so recently that a further change could keep this stamp.
    pub fn is_racy(&self) -> bool {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i128).unwrap_or(i128::MAX);
        now - self.mtime_ns.max(self.ctime_ns) < RACY_WINDOW_NS
    }
}

/// A cached file: its content and version tag, or a folder's entries.
#[derive(Clone, Debug)]
pub enum Cached {
    File { body: Vec<u8>, etag: String },
    Folder(Vec<String>),
}

impl Cached {
    fn weight(&self) -> usize {
        match self {
            Cached::File { body, etag } => body.len() + etag.len(),
            Cached::Folder(names) => names.iter().map(|n| n.len() + 24).sum(),
        }
    }
}

#[derive(Default)]
struct Entries {
    /// Each file's stamp, content and when its stamp was last compared with the file's.
    map: HashMap<PathBuf, (Stamp, Cached, Instant)>,
    bytes: usize,
}

#[derive(Default)]
pub struct FileCache {
    entries: Mutex<Entries>,
}

/// Names how much is held, never what.
impl std::fmt::Debug for FileCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (files, bytes) = self.entries.lock().map(|e| (e.map.len(), e.bytes)).unwrap_or_default();
        f.debug_struct("FileCache").field("files", &files).field("bytes", &bytes).finish()
    }
}

impl FileCache {
    /// What was cached for `path`, if the file still has the metadata it had then.
    pub fn get(&self, path: &Path, meta: &Metadata) -> Option<Cached> {
        let mut entries = self.entries.lock().ok()?;
        let (stamp, cached, checked) = entries.map.get_mut(path)?;
        if *stamp != Stamp::of(meta) {
            return None;
        }
        *checked = Instant::now();
        Some(cached.clone())
    }

    /// What was cached for `path`, if it was checked against the file (or kept) less than
    /// [`RECHECK_AFTER`] ago: no `stat` needed.
    pub fn recent(&self, path: &Path) -> Option<Cached> {
        let entries = self.entries.lock().ok()?;
        let (_, cached, checked) = entries.map.get(path)?;
        (checked.elapsed() < RECHECK_AFTER).then(|| cached.clone())
    }

    /// Keeps what was just read, unless its file changed too recently to tell the next change.
    pub fn keep_read(&self, path: &Path, meta: &Metadata, cached: Cached) {
        let stamp = Stamp::of(meta);
        if stamp.is_racy() {
            self.forget(path);
        } else {
            self.insert(path, stamp, cached);
        }
    }

    /// Keeps what this process just wrote: the file (`meta`, taken before the rename that
    /// published it) is a new inode only this process wrote, so any later replacement shows.
    pub fn keep_written(&self, path: &Path, meta: &Metadata, cached: Cached) {
        self.insert(path, Stamp::of(meta), cached);
    }

    pub fn forget(&self, path: &Path) {
        if let Ok(mut entries) = self.entries.lock() {
            if let Some((_, old, _)) = entries.map.remove(path) {
                entries.bytes -= old.weight();
            }
        }
    }

    fn insert(&self, path: &Path, stamp: Stamp, cached: Cached) {
        let weight = cached.weight();
        if weight > MAX_CACHED_FILE {
            return self.forget(path);
        }
        let Ok(mut entries) = self.entries.lock() else { return };
        if entries.bytes + weight > MAX_CACHED_BYTES {
            entries.map.clear();
            entries.bytes = 0;
        }
        if let Some((_, old, _)) = entries.map.insert(path.to_path_buf(), (stamp, cached, Instant::now())) {
            entries.bytes -= old.weight();
        }
        entries.bytes += weight;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn temp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("ipxe-edge-file-cache-{name}-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn file(body: &[u8]) -> Cached {
        Cached::File { body: body.to_vec(), etag: "t".into() }
    }

    fn age(path: &Path) {
        let old = SystemTime::now() - std::time::Duration::from_secs(60);
        fs::File::options().write(true).open(path).unwrap().set_modified(old).unwrap();
        // ctime follows any metadata change; wait out the window instead.
        std::thread::sleep(std::time::Duration::from_nanos(RACY_WINDOW_NS as u64 + 10_000_000));
    }

    #[test]
    fn a_replaced_file_is_read_again() {
        let dir = temp("replaced");
        let path = dir.join("gateway.json");
        fs::write(&path, b"one").unwrap();
        age(&path);
        let cache = FileCache::default();
        cache.keep_read(&path, &fs::metadata(&path).unwrap(), file(b"one"));
        assert!(
            matches!(cache.get(&path, &fs::metadata(&path).unwrap()), Some(Cached::File { body, .. }) if body == b"one")
        );
        // Replaced by rename, same size: a new inode.
        let tmp = dir.join("tmp");
        fs::write(&tmp, b"two").unwrap();
        fs::rename(&tmp, &path).unwrap();
        assert!(cache.get(&path, &fs::metadata(&path).unwrap()).is_none());
        // Just changed: not kept, since a second change in the same tick would look the same.
        cache.keep_read(&path, &fs::metadata(&path).unwrap(), file(b"two"));
        assert!(cache.get(&path, &fs::metadata(&path).unwrap()).is_none());
        // Own writes are kept at once.
        cache.keep_written(&path, &fs::metadata(&path).unwrap(), file(b"two"));
        assert!(cache.get(&path, &fs::metadata(&path).unwrap()).is_some());
        cache.forget(&path);
        assert!(cache.get(&path, &fs::metadata(&path).unwrap()).is_none());
        let _ = fs::remove_dir_all(&dir);
    }

    /// A file checked a moment ago is used without a `stat`; once the moment has passed, only
    /// a check against the file's metadata gives it out again, and renews the moment.
    #[test]
    fn a_recent_check_stands_for_a_moment_only() {
        let dir = temp("recent");
        let path = dir.join("channel.json");
        fs::write(&path, b"one").unwrap();
        let cache = FileCache::default();
        assert!(cache.recent(&path).is_none(), "nothing kept yet");
        cache.keep_written(&path, &fs::metadata(&path).unwrap(), file(b"one"));
        assert!(matches!(cache.recent(&path), Some(Cached::File { body, .. }) if body == b"one"));
        std::thread::sleep(RECHECK_AFTER * 2);
        assert!(cache.recent(&path).is_none(), "a check older than the moment stood in for a stat");
        assert!(cache.get(&path, &fs::metadata(&path).unwrap()).is_some());
        assert!(cache.recent(&path).is_some(), "the check renewed the moment");
        std::thread::sleep(RECHECK_AFTER * 2);
        fs::write(&path, b"two, longer").unwrap();
        assert!(cache.recent(&path).is_none());
        assert!(cache.get(&path, &fs::metadata(&path).unwrap()).is_none(), "the change shows in the stamp");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn large_files_are_not_kept_and_the_budget_holds() {
        let dir = temp("big");
        let path = dir.join("kernel");
        fs::write(&path, b"x").unwrap();
        let meta = fs::metadata(&path).unwrap();
        let cache = FileCache::default();
        cache.keep_written(&path, &meta, file(&vec![0; MAX_CACHED_FILE + 1]));
        assert!(cache.get(&path, &meta).is_none());
        for i in 0..(MAX_CACHED_BYTES / MAX_CACHED_FILE + 2) {
            cache.keep_written(&dir.join(i.to_string()), &meta, file(&vec![0; MAX_CACHED_FILE - 8]));
        }
        let entries = cache.entries.lock().unwrap();
        assert!(entries.bytes <= MAX_CACHED_BYTES, "{} bytes held", entries.bytes);
        assert_eq!(entries.bytes, entries.map.values().map(|(_, c, _)| c.weight()).sum::<usize>());
        drop(entries);
        let _ = fs::remove_dir_all(&dir);
    }
}
