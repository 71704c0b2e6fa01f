//! Storage: the ports (this file), the typed records layer over them ([`records`]), the object
//! keys ([`keys`]) and the adapters that implement the ports ([`adapters`]).
//!
//! Ports: the object store holding records and assets, the presigner handing clients
//! short-lived download URLs, the ledger of used tokens, and the journal of boots and their
//! outcomes.

pub mod adapters;
pub mod keys;
pub mod presign_cache;
pub mod records;

use crate::domain::identity::Fingerprint;
use crate::domain::journal::{BootRecord, GatewayJournal};
use async_trait::async_trait;
use std::time::Duration;

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The backend could not be reached or answered with an error; worth retrying.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// A conditional write lost against another writer.
    #[error("object {0} was changed by someone else")]
    Conflict(String),
    /// A key the store refuses to address (it would leave the bucket): a bug or a bad record,
    /// never worth retrying.
    #[error("invalid object key {0:?}")]
    InvalidKey(String),
}

/// An object's bytes with the version tag used for conditional writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned {
    pub body: Vec<u8>,
    pub etag: Option<String>,
}

/// When a write may happen, for writers racing on the same object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteCondition {
    Always,
    /// Only if the object does not exist yet.
    Absent,
    /// Only if the object still carries this version tag.
    Matches(String),
}

impl WriteCondition {
    /// Whether a write may happen over an object with version `current` (`None`: no object).
    pub fn allows(&self, current: Option<&str>) -> bool {
        match self {
            WriteCondition::Always => true,
            WriteCondition::Absent => current.is_none(),
            WriteCondition::Matches(tag) => current == Some(tag.as_str()),
        }
    }
}

/// What a read conditional on a version tag found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Revalidated {
    /// The object still carries the tag: nothing was transferred.
    Unchanged,
    /// The object changed (or is gone): its current bytes.
    Changed(Option<Versioned>),
}

/// Objects by key. Calls may run concurrently; a conditional [`ObjectStore::put`] is atomic
/// against every other write of the same key.
#[async_trait]
pub trait ObjectStore: Send + Sync {
    /// The object's bytes, or `None` when it does not exist.
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError>;
    /// The object unless it still carries `etag` (S3's `If-None-Match`): a cached copy is
    /// checked in one round trip that carries no body when nothing changed. A store without
    /// conditional reads answers [`Revalidated::Changed`] with a full read.
    async fn get_unless(&self, key: &str, etag: &str) -> Result<Revalidated, StoreError> {
        let current = self.get(key).await?;
        match &current {
            Some(object) if object.etag.as_deref() == Some(etag) => Ok(Revalidated::Unchanged),
            _ => Ok(Revalidated::Changed(current)),
        }
    }
    async fn exists(&self, key: &str) -> Result<bool, StoreError>;
    async fn put(&self, key: &str, body: Vec<u8>, condition: WriteCondition) -> Result<(), StoreError>;
    /// Keys under a prefix, sorted.
    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError>;
    async fn delete(&self, key: &str) -> Result<(), StoreError>;
}

#[async_trait]
pub trait Presigner: Send + Sync {
    /// A URL that lets its holder GET exactly this object until `ttl` has passed.
    async fn presign_get(&self, key: &str, ttl: Duration) -> Result<String, StoreError>;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LedgerOutcome {
    /// This call recorded the token: the caller may hand out the secret.
    Recorded,
    /// The token was recorded before: a replay.
    AlreadyUsed,
}

/// Remembers which tokens were redeemed. Recording must be atomic: of any number of concurrent
/// calls for one token, exactly one sees [`LedgerOutcome::Recorded`].
#[async_trait]
pub trait TokenLedger: Send + Sync {
    /// `used_at` is now; `expires_at` (unix seconds) tells the ledger when it may forget the entry.
    async fn record_use(
        &self,
        token_id: &str,
        fingerprint: &str,
        used_at: u64,
        expires_at: u64,
    ) -> Result<LedgerOutcome, StoreError>;
    /// Whether the token was recorded (a strongly consistent read): checked before work that a
    /// replay must not cause, such as minting a key. [`Self::record_use`] stays the decision.
    async fn is_used(&self, token_id: &str) -> Result<bool, StoreError>;
}

/// A key to one gateway's scratch space, as handed to the booted gateway.
#[derive(Clone)]
pub struct ScratchKey {
    pub access_key_id: String,
    pub secret_access_key: String,
    /// `${s3_endpoint}`: the S3 endpoint URL the key works at.
    pub endpoint: String,
    /// `${s3_bucket_name}`: `bucket/prefix` of the gateway's space (what MinIO's client takes
    /// after its alias).
    pub bucket_name: String,
    pub minted_at: u64,
}

impl std::fmt::Debug for ScratchKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScratchKey")
            .field("access_key_id", &self.access_key_id)
            .field("bucket_name", &self.bucket_name)
            .finish_non_exhaustive()
    }
}

/// A live scratch key, without its secret.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ScratchKeyInfo {
    pub access_key_id: String,
    pub minted_at: u64,
}

/// What a gateway's scratch space holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ScratchUsage {
    pub objects: u64,
    pub bytes: u64,
}

/// Per-gateway scratch storage and the keys to it. A key is limited to list, read, write and
/// delete inside its gateway's space; minting one leaves the older keys alive until
/// [`ScratchKeys::revoke_older`], so that a failure between minting and delivery never leaves
/// a gateway without a working key, and a key nobody received is deleted again
/// ([`ScratchKeys::revoke`]).
///
/// Keys of one gateway are ordered by when they were minted, the same order for every caller:
/// of redemptions that race, each revokes only the keys minted before its own, so exactly the
/// newest delivered key stays live, and none revokes a key minted after it.
#[async_trait]
pub trait ScratchKeys: Send + Sync {
    async fn mint(&self, gateway: &str, now: u64) -> Result<ScratchKey, StoreError>;
    /// Deletes the gateway's keys minted before `keep`; none when `keep` is no longer live (a
    /// newer redemption or the operator revoked it). How many it deleted.
    async fn revoke_older(&self, gateway: &str, keep: &str) -> Result<usize, StoreError>;
    /// Deletes every key of the gateway; how many.
    async fn revoke_all(&self, gateway: &str) -> Result<usize, StoreError>;
    /// Makes the gateway's keys refuse every request (`true`, while it is disabled) or work
    /// again (`false`); how many keys it changed.
    async fn set_suspended(&self, gateway: &str, suspended: bool) -> Result<usize, StoreError>;
    async fn revoke(&self, gateway: &str, access_key_id: &str) -> Result<(), StoreError>;
    /// The gateway's live keys, oldest first.
    async fn keys(&self, gateway: &str) -> Result<Vec<ScratchKeyInfo>, StoreError>;
    async fn usage(&self, gateway: &str) -> Result<ScratchUsage, StoreError>;
}

/// A gateway's boot state as stored, with the version tag its next write must match (`None`:
/// nothing stored yet).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoredJournal {
    pub health: GatewayJournal,
    pub version: Option<String>,
}

/// Per gateway: the boot state the fallback decision reads, and the history of boots.
#[async_trait]
pub trait BootJournal: Send + Sync {
    /// The gateway's state (the default state when nothing was recorded). One read.
    async fn load(&self, fp: &Fingerprint) -> Result<StoredJournal, StoreError>;
    /// Writes `next` only if the stored state still carries `version`
    /// ([`StoreError::Conflict`] otherwise), together with the boot records that changed.
    /// One write.
    async fn commit(
        &self,
        fp: &Fingerprint,
        version: Option<&str>,
        next: &GatewayJournal,
        boots: &[&BootRecord],
    ) -> Result<(), StoreError>;
    /// The latest `limit` boots, newest first.
    async fn history(&self, fp: &Fingerprint, limit: usize) -> Result<Vec<BootRecord>, StoreError>;
    /// [`Self::commit`] and [`TokenLedger::record_use`] of `token` as one atomic write, for a
    /// journal that keeps the service's used-token ledger beside it: a redemption then writes
    /// once instead of twice. Both or neither are written. `None`: this journal does not keep
    /// the ledger, and the caller records the use first, then commits.
    ///
    /// Contract: as [`TokenLedger::record_use`], of any number of concurrent calls (of this
    /// method or of `record_use`) for one token exactly one records it; an error means nothing
    /// is written (an uncertain write of ours is undone, as `record_use` does).
    async fn commit_with_use(
        &self,
        _fp: &Fingerprint,
        _version: Option<&str>,
        _next: &GatewayJournal,
        _boots: &[&BootRecord],
        _token: &TokenUse<'_>,
    ) -> Option<Result<UseCommit, StoreError>> {
        None
    }
}

/// A token's use, as [`TokenLedger::record_use`] takes it.
#[derive(Clone, Copy, Debug)]
pub struct TokenUse<'a> {
    pub token_id: &'a str,
    pub fingerprint: &'a str,
    pub used_at: u64,
    pub expires_at: u64,
}

/// What [`BootJournal::commit_with_use`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UseCommit {
    /// The token is recorded and the state written.
    Recorded,
    /// The token was recorded before: nothing written.
    AlreadyUsed,
    /// The state changed since it was read: nothing written, the token is not recorded.
    StateChanged,
}

/// How often a read-modify-write of a gateway's boot state is tried before giving up.
pub const HEALTH_UPDATE_ATTEMPTS: u32 = 4;

/// Read-modify-write of a gateway's boot state: `change` computes the next state and the boot
/// records it changed from the current one (or refuses), retried when another writer won.
pub async fn update_journal<T, E: From<StoreError>>(
    journal: &dyn BootJournal,
    fp: &Fingerprint,
    change: impl FnMut(&GatewayJournal) -> Result<(GatewayJournal, Vec<BootRecord>, T), E>,
) -> Result<T, E> {
    update_journal_from(journal, fp, None, change).await
}

/// [`update_journal`] starting from a state the caller read already (`first`), which saves the
/// first read.
pub async fn update_journal_from<T, E: From<StoreError>>(
    journal: &dyn BootJournal,
    fp: &Fingerprint,
    mut first: Option<StoredJournal>,
    mut change: impl FnMut(&GatewayJournal) -> Result<(GatewayJournal, Vec<BootRecord>, T), E>,
) -> Result<T, E> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let stored = match first.take() {
            Some(stored) => stored,
            None => journal.load(fp).await?,
        };
        let (next, boots, value) = change(&stored.health)?;
        let refs: Vec<&BootRecord> = boots.iter().collect();
        match journal.commit(fp, stored.version.as_deref(), &next, &refs).await {
            Ok(()) => return Ok(value),
            Err(StoreError::Conflict(_)) if attempt < HEALTH_UPDATE_ATTEMPTS => continue,
            Err(e) => return Err(e.into()),
        }
    }
}
