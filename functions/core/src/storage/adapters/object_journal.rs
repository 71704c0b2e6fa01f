//! The boot journal over any object store: the in-memory journal of tests and benchmarks
//! (`serve` uses a file journal of its own, which appends boots to a log instead).
//!
//! ```text
//! <fp>/state.json                        the gateway's boot state (conditional writes)
//! <fp>/boots/<issued_at>-<seq>-<id>.json one boot and its outcome
//! ```
//! The state is the source of truth and is written first, conditionally; the boot records are
//! its history. A commit holds a lock of its gateway (one of 64, by fingerprint) across both,
//! so that a slower commit cannot overwrite a boot record a later one already closed. Old boot
//! records are pruned off the request path ([`ObjectJournal::prune`]).

use crate::domain::identity::Fingerprint;
use crate::domain::journal::{BootRecord, GatewayJournal};
use crate::storage::{BootJournal, ObjectStore, StoreError, StoredJournal, WriteCondition};
use async_trait::async_trait;
use std::sync::Arc;
use std::time::Duration;

/// Boot records kept per gateway at most, whatever their age.
pub const MAX_BOOTS_KEPT: usize = 1000;

const COMMIT_LOCKS: usize = 64;

/// The gateways' boot states as `<fp>/state.json` objects, written conditionally, with one
/// commit lock per gateway (one of 64, by fingerprint) that a journal holds across the state
/// write and the boot records it adds, so that they land in commit order. Shared by the
/// journals kept in an object store and in files.
pub struct GatewayStates {
    store: Arc<dyn ObjectStore>,
    locks: Vec<tokio::sync::Mutex<()>>,
}

impl GatewayStates {
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        GatewayStates { store, locks: (0..COMMIT_LOCKS).map(|_| tokio::sync::Mutex::new(())).collect() }
    }

    /// The commit lock of a gateway.
    pub fn lock(&self, fp: &Fingerprint) -> &tokio::sync::Mutex<()> {
        let shard = fp.as_str().bytes().take(4).fold(0usize, |acc, b| acc.wrapping_mul(31).wrapping_add(b as usize));
        &self.locks[shard % COMMIT_LOCKS]
    }

    fn key(fp: &Fingerprint) -> String {
        format!("{fp}/state.json")
    }

    pub async fn load(&self, fp: &Fingerprint) -> Result<StoredJournal, StoreError> {
        let key = Self::key(fp);
        match self.store.get(&key).await? {
            None => Ok(StoredJournal::default()),
            Some(object) => match serde_json::from_slice(&object.body) {
                Ok(health) => Ok(StoredJournal { health, version: object.etag }),
                // A state a crash left unreadable starts over (no failures counted, no last
                // known good: the target is served) and is overwritten by the next commit.
                Err(e) => {
                    tracing::warn!(key, error = %e, "boot state unreadable; starting over");
                    Ok(StoredJournal { health: GatewayJournal::default(), version: object.etag })
                }
            },
        }
    }

    /// Writes `next` if the stored state still carries `version`; the caller holds the lock.
    pub async fn put(&self, fp: &Fingerprint, version: Option<&str>, next: &GatewayJournal) -> Result<(), StoreError> {
        let (key, body, condition) = Self::write_of(fp, version, next)?;
        self.store.put(&key, body, condition).await
    }

    /// The key, body and condition of that write, for a store that makes it together with
    /// other work.
    pub fn write_of(
        fp: &Fingerprint,
        version: Option<&str>,
        next: &GatewayJournal,
    ) -> Result<(String, Vec<u8>, WriteCondition), StoreError> {
        let condition = match version {
            None => WriteCondition::Absent,
            Some(tag) => WriteCondition::Matches(tag.to_string()),
        };
        let body = serde_json::to_vec(next).map_err(|e| StoreError::Unavailable(format!("journal state: {e}")))?;
        Ok((Self::key(fp), body, condition))
    }
}

pub struct ObjectJournal {
    store: Arc<dyn ObjectStore>,
    states: GatewayStates,
    retention: Duration,
}

impl ObjectJournal {
    /// Boot records older than `retention` (counted from the newest boot) are pruned.
    pub fn new(store: Arc<dyn ObjectStore>, retention: Duration) -> Self {
        ObjectJournal { states: GatewayStates::new(store.clone()), store, retention }
    }

    fn boots_prefix(fp: &Fingerprint) -> String {
        format!("{fp}/boots/")
    }

    fn boot_key(fp: &Fingerprint, boot: &BootRecord) -> String {
        format!("{}{:010}-{:010}-{}.json", Self::boots_prefix(fp), boot.issued_at, boot.seq, boot.id)
    }

    /// Deletes boot records older than the retention, and beyond [`MAX_BOOTS_KEPT`] per
    /// gateway (the oldest first); returns how many.
    pub async fn prune(&self, now: u64) -> Result<usize, StoreError> {
        let keys = self.store.list("").await?;
        let cutoff = now.saturating_sub(self.retention.as_secs());
        let mut removed = 0;
        let mut per_gateway: std::collections::BTreeMap<&str, Vec<&String>> = Default::default();
        for key in &keys {
            if let Some((gateway, _)) = key.split_once("/boots/") {
                per_gateway.entry(gateway).or_default().push(key);
            }
        }
        for boots in per_gateway.values() {
            let excess = boots.len().saturating_sub(MAX_BOOTS_KEPT);
            for (index, key) in boots.iter().enumerate() {
                let issued_at =
                    key.rsplit('/').next().and_then(|name| name.split('-').next()).and_then(|t| t.parse::<u64>().ok());
                if index < excess || matches!(issued_at, Some(t) if t < cutoff) {
                    self.store.delete(key).await?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}

fn invalid(key: &str, e: serde_json::Error) -> StoreError {
    StoreError::Unavailable(format!("journal object {key} is not valid: {e}"))
}

#[async_trait]
impl BootJournal for ObjectJournal {
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
        self.states.put(fp, version, next).await?;
        for boot in boots {
            let body = serde_json::to_vec(boot).map_err(|e| StoreError::Unavailable(format!("boot record: {e}")))?;
            self.store.put(&Self::boot_key(fp, boot), body, WriteCondition::Always).await?;
        }
        Ok(())
    }

    async fn history(&self, fp: &Fingerprint, limit: usize) -> Result<Vec<BootRecord>, StoreError> {
        let keys = self.store.list(&Self::boots_prefix(fp)).await?;
        let mut boots = Vec::new();
        for key in keys.iter().rev().take(limit) {
            if let Some(object) = self.store.get(key).await? {
                boots.push(serde_json::from_slice(&object.body).map_err(|e| invalid(key, e))?);
            }
        }
        Ok(boots)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::journal::{BootReason, HealthGate, Outcome};
    use crate::storage::adapters::memory::MemoryStore;

    fn boot(n: u64) -> BootRecord {
        BootRecord {
            id: format!("{n:032x}"),
            seq: n,
            release: "r1".into(),
            target: "r1".into(),
            reason: BootReason::Channel,
            gate: HealthGate::ReachedLinux,
            arch: "x86_64".into(),
            platform: Some("efi".into()),
            mac: None,
            cert: None,
            issued_at: n,
            deadline: n + 600,
            secrets_token: None,
            outcome: Outcome::Issued,
            reached_linux_at: None,
            healthy_at: None,
            failed_at: None,
            fail_reason: None,
        }
    }

    #[tokio::test]
    async fn commits_are_conditional_and_history_is_newest_first() {
        let journal = ObjectJournal::new(Arc::new(MemoryStore::new()), Duration::from_secs(86_400));
        let fp = Fingerprint::of_der(b"gw");
        let empty = journal.load(&fp).await.unwrap();
        assert_eq!(empty, StoredJournal::default());
        let state = GatewayJournal { target: Some("r1".into()), ..Default::default() };
        journal.commit(&fp, None, &state, &[&boot(100)]).await.unwrap();
        assert!(matches!(journal.commit(&fp, None, &state, &[]).await, Err(StoreError::Conflict(_))));
        let loaded = journal.load(&fp).await.unwrap();
        assert_eq!(loaded.health, state);
        assert!(matches!(journal.commit(&fp, Some("stale"), &state, &[]).await, Err(StoreError::Conflict(_))));
        // A torn state starts over and is overwritten by the next commit.
        let store = Arc::new(MemoryStore::new());
        let torn = ObjectJournal::new(store.clone(), Duration::from_secs(60));
        store.insert(&GatewayStates::key(&fp), b"{\"target\":".to_vec());
        let loaded_torn = torn.load(&fp).await.unwrap();
        assert_eq!(loaded_torn.health, GatewayJournal::default());
        torn.commit(&fp, loaded_torn.version.as_deref(), &state, &[]).await.unwrap();
        assert_eq!(torn.load(&fp).await.unwrap().health, state);
        journal.commit(&fp, loaded.version.as_deref(), &state, &[&boot(200), &boot(1_000)]).await.unwrap();
        let history = journal.history(&fp, 2).await.unwrap();
        assert_eq!(history.iter().map(|b| b.issued_at).collect::<Vec<_>>(), vec![1_000, 200]);
    }

    #[tokio::test]
    async fn prunes_by_age() {
        let journal = ObjectJournal::new(Arc::new(MemoryStore::new()), Duration::from_secs(500));
        let fp = Fingerprint::of_der(b"gw");
        let state = GatewayJournal::default();
        journal.commit(&fp, None, &state, &[&boot(100), &boot(700), &boot(1_000)]).await.unwrap();
        let other = Fingerprint::of_der(b"other");
        journal.commit(&other, None, &state, &[&boot(100)]).await.unwrap();
        assert_eq!(journal.prune(1_000).await.unwrap(), 2);
        let history = journal.history(&fp, 10).await.unwrap();
        assert_eq!(history.iter().map(|b| b.issued_at).collect::<Vec<_>>(), vec![1_000, 700]);
        assert!(journal.history(&other, 10).await.unwrap().is_empty());
        assert!(journal.load(&other).await.unwrap().version.is_some(), "states are never pruned");
    }
}
