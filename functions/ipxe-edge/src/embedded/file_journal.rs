//! The boot journal of `serve` and the CLI on one machine (`DIR/journal/`):
//!
//! ```text
//! <fp>/state.json    the gateway's boot state: conditional writes through [`FsStore`]
//! <fp>/boots.jsonl   its boots, one JSON line per version of a boot record, appended
//! ```
//! A boot creates no file: its state overwrites the old one in place (a volatile
//! [`FsStore`]) and its record is a line appended to the log. On ext4, creating and deleting
//! files is what a boot would cost most. A later line of a boot supersedes the earlier ones.
//! The states, and the commit lock held across the state write and the appends, are the core's
//! [`GatewayStates`]. Old boots are pruned by rewriting the log ([`FileJournal::prune`], hourly
//! in `serve`). Writes are not fsynced: a crash may lose the latest boots, and a torn state
//! starts over. The two files of the gateways that booted last stay open
//! ([`MAX_OPEN_GATEWAYS`]): opening two long paths was a third of a commit's cost.

use crate::embedded::fs_store::FsStore;
use crate::files::{open_creating_dirs, write_replacing};
use async_trait::async_trait;
use ipxe_edge_core::domain::identity::Fingerprint;
use ipxe_edge_core::domain::journal::{BootRecord, GatewayJournal};
use ipxe_edge_core::storage::adapters::object_journal::{GatewayStates, MAX_BOOTS_KEPT};
use ipxe_edge_core::storage::{BootJournal, StoreError, StoredJournal};
use std::collections::HashMap;
use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const LOG: &str = "boots.jsonl";
/// How many gateways' files stay open between commits (two descriptors each).
pub const MAX_OPEN_GATEWAYS: usize = 128;

/// A gateway's state file and log, open. Written only under the gateway's commit lock.
struct GatewayFiles {
    state: std::fs::File,
    log: std::fs::File,
}

pub struct FileJournal {
    root: PathBuf,
    /// The states' store, also written directly so that a commit is one blocking task.
    store: FsStore,
    states: GatewayStates,
    retention: Duration,
    open: Mutex<HashMap<Fingerprint, Arc<GatewayFiles>>>,
}

fn io(what: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |e| StoreError::Unavailable(format!("{}: {e}", what.display()))
}

/// The boots of a log, latest version of each, oldest first.
fn read_log(path: &Path) -> Result<Vec<BootRecord>, StoreError> {
    match fs::read_to_string(path) {
        Ok(text) => Ok(parse_log(&text)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io(path)(e)),
    }
}

/// [`read_log`] of a log's text.
fn parse_log(text: &str) -> Vec<BootRecord> {
    let mut latest: HashMap<String, BootRecord> = HashMap::new();
    // A line a crash cut short is skipped; every other line is a whole record.
    for boot in text.lines().filter_map(|line| serde_json::from_str::<BootRecord>(line).ok()) {
        latest.insert(boot.id.clone(), boot);
    }
    let mut boots: Vec<BootRecord> = latest.into_values().collect();
    boots.sort_by_key(|b| (b.seq, b.issued_at));
    boots
}

/// Boot records as log lines, one JSON object each.
fn log_lines<'a>(boots: impl IntoIterator<Item = &'a BootRecord>) -> Result<Vec<u8>, StoreError> {
    let mut lines = Vec::new();
    for boot in boots {
        serde_json::to_writer(&mut lines, boot).map_err(|e| StoreError::Unavailable(format!("boot record: {e}")))?;
        lines.push(b'\n');
    }
    Ok(lines)
}

impl FileJournal {
    /// Opens (creating if needed) the journal folder; boots older than `retention` are pruned.
    pub fn open(root: impl Into<PathBuf>, retention: Duration) -> Result<Self, StoreError> {
        let root = root.into();
        let store = FsStore::open_volatile(&root)?;
        let states = GatewayStates::new(Arc::new(store.clone()));
        Ok(FileJournal { root, store, states, retention, open: Mutex::default() })
    }

    /// The gateway's open files, opened (and created) if they are not; call it under the
    /// gateway's commit lock.
    fn files(&self, fp: &Fingerprint, state: &Path, key: &str) -> Result<Arc<GatewayFiles>, StoreError> {
        if let Some(files) = self.open.lock().ok().and_then(|open| open.get(fp).cloned()) {
            return Ok(files);
        }
        let log_path = self.log_path(fp);
        let files = Arc::new(GatewayFiles {
            state: self.store.open_in_place(state, key)?,
            log: open_creating_dirs(&log_path, OpenOptions::new().append(true).create(true).mode(0o600))
                .map_err(io(&log_path))?,
        });
        if let Ok(mut open) = self.open.lock() {
            if open.len() >= MAX_OPEN_GATEWAYS {
                if let Some(any) = open.keys().next().cloned() {
                    open.remove(&any);
                }
            }
            open.insert(fp.clone(), files.clone());
        }
        Ok(files)
    }

    /// Closes the gateway's files (after its log was replaced, or its state deleted).
    fn close(&self, fp: &Fingerprint) {
        if let Ok(mut open) = self.open.lock() {
            open.remove(fp);
        }
    }

    fn log_path(&self, fp: &Fingerprint) -> PathBuf {
        self.root.join(fp.as_str()).join(LOG)
    }

    fn append(path: &Path, boots: &[&BootRecord]) -> Result<(), StoreError> {
        if boots.is_empty() {
            return Ok(());
        }
        let lines = log_lines(boots.iter().copied())?;
        // One write of whole lines: appends of concurrent commits never interleave within a line.
        let mut file =
            open_creating_dirs(path, OpenOptions::new().append(true).create(true).mode(0o600)).map_err(io(path))?;
        file.write_all(&lines).map_err(io(path))
    }

    /// Rewrites every gateway's log without boots older than the retention (counted from
    /// `now`) and beyond [`MAX_BOOTS_KEPT`]; returns how many boots it dropped. Blocks on each
    /// gateway's commit lock in turn: call it from a blocking thread.
    pub fn prune(&self, now: u64) -> Result<usize, StoreError> {
        let cutoff = now.saturating_sub(self.retention.as_secs());
        let mut removed = 0;
        let entries = match fs::read_dir(&self.root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(io(&self.root)(e)),
        };
        for entry in entries.flatten() {
            let path = entry.path().join(LOG);
            let Some(fp) = entry.file_name().to_str().and_then(|name| Fingerprint::parse(name).ok()) else { continue };
            if !path.is_file() {
                continue;
            }
            // The gateway's commit lock: a boot appended between the read and the rename below
            // would go to the file the rename replaces, and be lost.
            let _commit = self.states.lock(&fp).blocking_lock();
            let text = fs::read_to_string(&path).map_err(io(&path))?;
            let (lines, boots) = (text.lines().count(), parse_log(&text));
            let excess = boots.len().saturating_sub(MAX_BOOTS_KEPT);
            let kept: Vec<&BootRecord> = boots
                .iter()
                .enumerate()
                .filter(|(i, b)| *i >= excess && b.issued_at >= cutoff)
                .map(|(_, b)| b)
                .collect();
            if kept.len() == lines {
                continue;
            }
            removed += boots.len() - kept.len();
            write_replacing(&path, &log_lines(kept)?, 0o600, false).map_err(io(&path))?;
            // Appends through the open log would go to the file just replaced.
            self.close(&fp);
        }
        Ok(removed)
    }
}

#[async_trait]
impl BootJournal for FileJournal {
    async fn load(&self, fp: &Fingerprint) -> Result<StoredJournal, StoreError> {
        self.states.load(fp).await
    }

    async fn commit(
        &self,
        fp: &Fingerprint,
        version: Option<&str>,
        next: &GatewayJournal,
        boots: &[&BootRecord],
    ) -> Result<(), StoreError> {
        let _guard = self.states.lock(fp).lock().await;
        let (key, body, condition) = GatewayStates::write_of(fp, version, next)?;
        let (store, path) = (self.store.clone(), self.log_path(fp));
        let state = store.path(&key)?;
        // A few page-cache writes through the open files: done here unless another process
        // (the CLI) holds the state's lock, since a hand-off to the blocking pool would cost a
        // boot more than the writes.
        for attempt in 0..2 {
            let files = self.files(fp, &state, &key)?;
            match store.write_in_place(&files.state, &state, &key, &body, &condition, false) {
                Ok(true) if boots.is_empty() => return Ok(()),
                Ok(true) => {
                    let lines = log_lines(boots.iter().copied())?;
                    // One write of whole lines: appends of concurrent commits never interleave.
                    return (&files.log).write_all(&lines).map_err(io(&path));
                }
                Ok(false) => break,
                Err(e @ StoreError::Conflict(_)) => return Err(e),
                // Deleted under the open file: open the path again, once.
                Err(StoreError::Unavailable(_)) if attempt == 0 => self.close(fp),
                Err(e) => {
                    self.close(fp);
                    return Err(e);
                }
            }
        }
        let boots: Vec<BootRecord> = boots.iter().map(|b| (*b).clone()).collect();
        tokio::task::spawn_blocking(move || {
            store.put_blocking(&key, body, condition)?;
            Self::append(&path, &boots.iter().collect::<Vec<_>>())
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("journal task: {e}")))?
    }

    async fn history(&self, fp: &Fingerprint, limit: usize) -> Result<Vec<BootRecord>, StoreError> {
        let path = self.log_path(fp);
        let mut boots = tokio::task::spawn_blocking(move || read_log(&path))
            .await
            .map_err(|e| StoreError::Unavailable(format!("journal task: {e}")))??;
        boots.reverse();
        boots.truncate(limit);
        Ok(boots)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipxe_edge_core::domain::journal::Outcome;

    fn boot(n: u64, issued_at: u64) -> BootRecord {
        ipxe_edge_tests::issued_boot(n, n, issued_at, "token")
    }

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ipxe-edge-journal-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    /// A journal in a fresh folder whose gateway has committed one boot (seq 1, issued at 100),
    /// with retention 500 s; and that gateway's state.
    async fn journal_with_one_boot(name: &str) -> (PathBuf, Arc<FileJournal>, Fingerprint, GatewayJournal) {
        let dir = temp(name);
        let journal = Arc::new(FileJournal::open(&dir, Duration::from_secs(500)).unwrap());
        let fp = Fingerprint::of_der(b"gw");
        let state = GatewayJournal { target: Some("r1".into()), ..Default::default() };
        journal.commit(&fp, None, &state, &[&boot(1, 100)]).await.unwrap();
        (dir, journal, fp, state)
    }

    /// While another process (the CLI) holds a state's lock, a commit waits for it on the
    /// blocking pool instead of writing at once, then writes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_commit_waits_for_another_writer_of_the_state() {
        let (dir, journal, fp, first) = journal_with_one_boot("locked").await;
        let version = journal.load(&fp).await.unwrap().version;
        let state = dir.join(fp.as_str()).join("state.json");
        let other = fs::File::open(&state).unwrap();
        other.lock().unwrap();
        let second = GatewayJournal { target: Some("r2".into()), ..Default::default() };
        let task = tokio::spawn({
            let (journal, fp, second) = (journal.clone(), fp.clone(), second.clone());
            async move { journal.commit(&fp, version.as_deref(), &second, &[&boot(2, 200)]).await }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!task.is_finished(), "the commit wrote through another process's lock");
        assert_eq!(journal.load(&fp).await.map(|s| s.health), Ok(first), "read while locked");
        other.unlock().unwrap();
        task.await.unwrap().unwrap();
        assert_eq!(journal.load(&fp).await.unwrap().health, second);
        assert_eq!(journal.history(&fp, 10).await.unwrap().len(), 2);
        let _ = fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn commits_are_conditional_later_lines_win_and_pruning_rewrites() {
        let dir = temp("file");
        let journal = FileJournal::open(&dir, Duration::from_secs(500)).unwrap();
        let fp = Fingerprint::of_der(b"gw");
        assert_eq!(journal.load(&fp).await.unwrap(), StoredJournal::default());
        let state = GatewayJournal { target: Some("r1".into()), ..Default::default() };
        journal.commit(&fp, None, &state, &[&boot(1, 100)]).await.unwrap();
        assert!(matches!(journal.commit(&fp, None, &state, &[]).await, Err(StoreError::Conflict(_))));
        let loaded = journal.load(&fp).await.unwrap();
        assert_eq!(loaded.health, state);
        let mut failed = boot(1, 100);
        failed.outcome = Outcome::Failed;
        journal
            .commit(&fp, loaded.version.as_deref(), &state, &[&failed, &boot(2, 700), &boot(3, 1_000)])
            .await
            .unwrap();
        let history = journal.history(&fp, 10).await.unwrap();
        assert_eq!(
            history.iter().map(|b| (b.seq, b.outcome)).collect::<Vec<_>>(),
            vec![(3, Outcome::Issued), (2, Outcome::Issued), (1, Outcome::Failed)]
        );
        assert_eq!(journal.history(&fp, 1).await.unwrap().len(), 1);
        // A torn last line (a crash mid-append) is skipped.
        fs::OpenOptions::new().append(true).open(journal.log_path(&fp)).unwrap().write_all(b"{\"id\":\"00").unwrap();
        assert_eq!(journal.history(&fp, 10).await.unwrap().len(), 3);
        let journal = Arc::new(journal);
        let pruning = journal.clone();
        assert_eq!(tokio::task::spawn_blocking(move || pruning.prune(1_000)).await.unwrap().unwrap(), 1);
        assert_eq!(journal.history(&fp, 10).await.unwrap().iter().map(|b| b.seq).collect::<Vec<_>>(), vec![3, 2]);
        let mode = std::os::unix::fs::PermissionsExt::mode(&fs::metadata(journal.log_path(&fp)).unwrap().permissions())
            & 0o777;
        assert_eq!(mode, 0o600);
        fs::remove_dir_all(&dir).unwrap();
    }

    /// Pruning waits for a commit in progress: the commit's appended line is never written to
    /// a log the prune then replaces.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pruning_waits_for_the_gateways_commit_lock() {
        let (dir, journal, fp, _) = journal_with_one_boot("prune-lock").await;
        let commit_in_progress = journal.states.lock(&fp).lock().await;
        let pruning = tokio::task::spawn_blocking({
            let journal = journal.clone();
            move || journal.prune(1_000)
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!pruning.is_finished(), "pruned while a commit held the gateway's lock");
        drop(commit_in_progress);
        assert_eq!(pruning.await.unwrap().unwrap(), 1);
        assert!(journal.history(&fp, 10).await.unwrap().is_empty());
        fs::remove_dir_all(&dir).unwrap();
    }

    /// The files a commit keeps open never swallow a later commit: after a prune replaced the
    /// log, and after the gateway's folder was deleted, the next boots land in the files the
    /// paths name, as another process (the CLI) reads them.
    #[tokio::test]
    async fn commits_after_the_open_files_were_replaced_land_at_the_paths() {
        let (dir, journal, fp, state) = journal_with_one_boot("reopen").await;
        let version = journal.load(&fp).await.unwrap().version;
        journal.commit(&fp, version.as_deref(), &state, &[&boot(2, 900)]).await.unwrap();
        let pruning = journal.clone();
        assert_eq!(tokio::task::spawn_blocking(move || pruning.prune(1_000)).await.unwrap().unwrap(), 1);
        let version = journal.load(&fp).await.unwrap().version;
        journal.commit(&fp, version.as_deref(), &state, &[&boot(3, 950)]).await.unwrap();
        let reader = FileJournal::open(&dir, Duration::from_secs(500)).unwrap();
        assert_eq!(reader.history(&fp, 10).await.unwrap().iter().map(|b| b.seq).collect::<Vec<_>>(), vec![3, 2]);
        fs::remove_dir_all(dir.join(fp.as_str())).unwrap();
        let moved = GatewayJournal { target: Some("r9".into()), ..Default::default() };
        journal.commit(&fp, None, &moved, &[&boot(4, 990)]).await.unwrap();
        assert_eq!(reader.history(&fp, 10).await.unwrap().iter().map(|b| b.seq).collect::<Vec<_>>(), vec![4]);
        assert_eq!(reader.load(&fp).await.unwrap().health, moved);
        fs::remove_dir_all(&dir).unwrap();
    }
}
