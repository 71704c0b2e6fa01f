//! A used-token ledger on the local filesystem, for `ipxe-edge serve`.
//!
//! One file per used token, created with `O_CREAT | O_EXCL`: the filesystem makes "record once"
//! atomic across tasks and processes, and an entry either exists whole or not at all. Entries are
//! fsynced (file and directory) before the secret is released, so a crash cannot forget a spent
//! token, and swept once their expiry has passed.

use async_trait::async_trait;
use ipxe_edge_core::storage::{LedgerOutcome, StoreError, TokenLedger};
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug)]
pub struct FileLedger {
    dir: PathBuf,
}

impl FileLedger {
    /// Opens (creating if needed) the ledger directory.
    pub fn open(dir: impl Into<PathBuf>) -> std::io::Result<Self> {
        let dir = dir.into();
        crate::files::create_private_dirs(&dir)?;
        // Fail early on a directory we cannot write.
        let probe = dir.join(format!(".write-probe-{}-{:x}", std::process::id(), rand::random::<u32>()));
        File::create(&probe)?;
        fs::remove_file(&probe)?;
        Ok(FileLedger { dir })
    }

    fn entry(&self, token_id: &str) -> Result<PathBuf, StoreError> {
        if token_id.is_empty() || token_id.len() > 64 || !token_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(StoreError::Unavailable("ledger: token id is not hex".into()));
        }
        Ok(self.dir.join(token_id))
    }

    /// Removes entries whose expiry has passed; returns how many.
    pub fn sweep(&self, now: u64) -> std::io::Result<usize> {
        let mut removed = 0;
        for entry in fs::read_dir(&self.dir)? {
            let path = entry?.path();
            let Ok(text) = fs::read_to_string(&path) else { continue };
            let expires_at =
                text.lines().find_map(|l| l.strip_prefix("expires_at=")).and_then(|v| v.parse::<u64>().ok());
            if matches!(expires_at, Some(t) if t < now) {
                fs::remove_file(&path)?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn record_blocking(path: &Path, fingerprint: &str, now: u64, expires_at: u64) -> Result<LedgerOutcome, StoreError> {
        let io = |e: std::io::Error| StoreError::Unavailable(format!("ledger: {e}"));
        let mut file = match OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::AlreadyExists => return Ok(LedgerOutcome::AlreadyUsed),
            Err(e) => return Err(io(e)),
        };
        let written = file
            .write_all(format!("fingerprint={fingerprint}\nused_at={now}\nexpires_at={expires_at}\n").as_bytes())
            .and_then(|_| file.sync_all())
            .and_then(|_| File::open(path.parent().unwrap_or(Path::new("."))).and_then(|d| d.sync_all()));
        match written {
            Ok(()) => Ok(LedgerOutcome::Recorded),
            Err(e) => {
                // The secret will not be served: leave the token redeemable.
                let _ = fs::remove_file(path);
                Err(io(e))
            }
        }
    }
}

#[async_trait]
impl TokenLedger for FileLedger {
    async fn record_use(
        &self,
        token_id: &str,
        fingerprint: &str,
        used_at: u64,
        expires_at: u64,
    ) -> Result<LedgerOutcome, StoreError> {
        let path = self.entry(token_id)?;
        let fingerprint = fingerprint.to_string();
        tokio::task::spawn_blocking(move || Self::record_blocking(&path, &fingerprint, used_at, expires_at))
            .await
            .map_err(|e| StoreError::Unavailable(format!("ledger task: {e}")))?
    }

    async fn is_used(&self, token_id: &str) -> Result<bool, StoreError> {
        let path = self.entry(token_id)?;
        tokio::task::spawn_blocking(move || {
            path.try_exists().map_err(|e| StoreError::Unavailable(format!("ledger: {e}")))
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("ledger task: {e}")))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ipxe-edge-ledger-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        dir
    }

    #[tokio::test]
    async fn records_once_and_survives_reopening() {
        let dir = temp_dir("once");
        let ledger = FileLedger::open(&dir).unwrap();
        assert_eq!(ledger.record_use("abcd", "fp", 1, 10).await.unwrap(), LedgerOutcome::Recorded);
        assert_eq!(ledger.record_use("abcd", "fp", 1, 10).await.unwrap(), LedgerOutcome::AlreadyUsed);
        let reopened = FileLedger::open(&dir).unwrap();
        assert_eq!(reopened.record_use("abcd", "fp", 1, 10).await.unwrap(), LedgerOutcome::AlreadyUsed);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn concurrent_records_have_one_winner() {
        let dir = temp_dir("race");
        let ledger = std::sync::Arc::new(FileLedger::open(&dir).unwrap());
        let tasks: Vec<_> = (0..32)
            .map(|_| {
                let l = ledger.clone();
                tokio::spawn(async move { l.record_use("ff00", "fp", 1, 10).await.unwrap() })
            })
            .collect();
        let mut wins = 0;
        for t in tasks {
            if t.await.unwrap() == LedgerOutcome::Recorded {
                wins += 1;
            }
        }
        assert_eq!(wins, 1);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn rejects_path_tricks_and_sweeps_expired() {
        let dir = temp_dir("sweep");
        let ledger = FileLedger::open(&dir).unwrap();
        assert!(ledger.record_use("../x", "fp", 1, 10).await.is_err());
        ledger.record_use("aa", "fp", 1, 10).await.unwrap();
        ledger.record_use("bb", "fp", 1, 1_000).await.unwrap();
        assert_eq!(ledger.sweep(500).unwrap(), 1);
        assert_eq!(ledger.record_use("bb", "fp", 1, 1_000).await.unwrap(), LedgerOutcome::AlreadyUsed);
        fs::remove_dir_all(&dir).unwrap();
    }
}
