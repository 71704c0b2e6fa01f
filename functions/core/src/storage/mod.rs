//! Storage: the ports (this file), the typed records layer over them ([`records`]), the object
//! keys ([`keys`]) and the adapters that implement the ports ([`adapters`]).
//!
//! Ports: the object store holding records and assets, the presigner handing clients
//! short-lived download URLs, and the ledger of used tokens.

pub mod adapters;
pub mod keys;
pub mod records;

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

#[async_trait]
pub trait ObjectStore: Send + Sync {
    /// The object's bytes, or `None` when it does not exist.
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError>;
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
    async fn record_use(&self, token_id: &str, fingerprint: &str, used_at: u64, expires_at: u64) -> Result<LedgerOutcome, StoreError>;
}
