//! In-memory stores for unit tests and benchmarks, with switches to simulate outages.

use crate::storage::{
    LedgerOutcome, ObjectStore, Presigner, ScratchKey, ScratchKeyInfo, ScratchKeys, ScratchUsage, StoreError,
    TokenLedger, Versioned, WriteCondition,
};
use async_trait::async_trait;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

#[derive(Default)]
pub struct MemoryStore {
    objects: Mutex<BTreeMap<String, (Vec<u8>, u64)>>,
    next_version: AtomicU64,
    /// While set, every call fails with [`StoreError::Unavailable`].
    pub fail: AtomicBool,
    /// Calls that reached the store, of every kind (to count round trips).
    pub calls: AtomicU64,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&self, key: &str, body: impl Into<Vec<u8>>) {
        let version = self.next_version.fetch_add(1, Ordering::SeqCst);
        self.objects.lock().unwrap().insert(key.to_string(), (body.into(), version));
    }

    fn check(&self) -> Result<(), StoreError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if self.fail.load(Ordering::SeqCst) {
            Err(StoreError::Unavailable("simulated outage".into()))
        } else {
            Ok(())
        }
    }
}

#[async_trait]
impl ObjectStore for MemoryStore {
    async fn get(&self, key: &str) -> Result<Option<Versioned>, StoreError> {
        self.check()?;
        Ok(self
            .objects
            .lock()
            .unwrap()
            .get(key)
            .map(|(body, v)| Versioned { body: body.clone(), etag: Some(v.to_string()) }))
    }

    async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        self.check()?;
        Ok(self.objects.lock().unwrap().contains_key(key))
    }

    async fn put(&self, key: &str, body: Vec<u8>, condition: WriteCondition) -> Result<(), StoreError> {
        self.check()?;
        let mut objects = self.objects.lock().unwrap();
        let current = objects.get(key).map(|(_, v)| v.to_string());
        if !condition.allows(current.as_deref()) {
            return Err(StoreError::Conflict(key.to_string()));
        }
        let version = self.next_version.fetch_add(1, Ordering::SeqCst);
        objects.insert(key.to_string(), (body, version));
        Ok(())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        self.check()?;
        Ok(self.objects.lock().unwrap().keys().filter(|k| k.starts_with(prefix)).cloned().collect())
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.check()?;
        self.objects.lock().unwrap().remove(key);
        Ok(())
    }
}

/// Presigns `memory://` URLs that carry the key and lifetime, so tests can see what was signed.
#[derive(Default)]
pub struct MemoryPresigner {
    pub fail: AtomicBool,
}

#[async_trait]
impl Presigner for MemoryPresigner {
    async fn presign_get(&self, key: &str, ttl: Duration) -> Result<String, StoreError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("simulated presign failure".into()));
        }
        Ok(format!("https://objects.invalid/{key}?expires={}&sig=0123", ttl.as_secs()))
    }
}

#[derive(Default)]
pub struct MemoryLedger {
    used: Mutex<HashMap<String, u64>>,
    pub fail: AtomicBool,
}

impl MemoryLedger {
    pub fn holds(&self, token_id: &str) -> bool {
        self.used.lock().unwrap().contains_key(token_id)
    }
}

#[async_trait]
impl TokenLedger for MemoryLedger {
    async fn record_use(
        &self,
        token_id: &str,
        _fingerprint: &str,
        _used_at: u64,
        expires_at: u64,
    ) -> Result<LedgerOutcome, StoreError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("simulated ledger outage".into()));
        }
        let mut used = self.used.lock().unwrap();
        if used.contains_key(token_id) {
            return Ok(LedgerOutcome::AlreadyUsed);
        }
        used.insert(token_id.to_string(), expires_at);
        Ok(LedgerOutcome::Recorded)
    }

    async fn is_used(&self, token_id: &str) -> Result<bool, StoreError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("simulated ledger outage".into()));
        }
        Ok(self.holds(token_id))
    }
}

/// A live key in memory: access key id, secret, minted at.
type MemoryKey = (String, String, u64);

/// Scratch keys in memory, with failure switches: minting, revoking.
#[derive(Default)]
pub struct MemoryScratch {
    /// gateway → live keys, oldest first.
    keys: Mutex<HashMap<String, Vec<MemoryKey>>>,
    pub fail_mint: AtomicBool,
    pub fail_revoke: AtomicBool,
    minted: AtomicU64,
    /// Gateways whose keys refuse every request.
    suspended: Mutex<std::collections::HashSet<String>>,
}

impl MemoryScratch {
    /// Whether `access_key_id` with `secret` is a live key of `gateway`, and not suspended.
    pub fn accepts(&self, gateway: &str, access_key_id: &str, secret: &str) -> bool {
        !self.suspended.lock().unwrap().contains(gateway)
            && self
                .keys
                .lock()
                .unwrap()
                .get(gateway)
                .is_some_and(|keys| keys.iter().any(|(id, s, _)| id == access_key_id && s == secret))
    }

    fn check_revoke(&self) -> Result<(), StoreError> {
        match self.fail_revoke.load(Ordering::SeqCst) {
            true => Err(StoreError::Unavailable("simulated key service outage".into())),
            false => Ok(()),
        }
    }

    /// Keys minted since creation, delivered or not.
    pub fn minted(&self) -> u64 {
        self.minted.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl ScratchKeys for MemoryScratch {
    async fn mint(&self, gateway: &str, now: u64) -> Result<ScratchKey, StoreError> {
        if self.fail_mint.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("simulated key service outage".into()));
        }
        let n = self.minted.fetch_add(1, Ordering::SeqCst);
        let (id, secret) = (format!("SCRATCH{n:012}"), format!("secret-{n}-{:016x}", rand::random::<u64>()));
        self.keys.lock().unwrap().entry(gateway.to_string()).or_default().push((id.clone(), secret.clone(), now));
        Ok(ScratchKey {
            access_key_id: id,
            secret_access_key: secret,
            endpoint: "https://scratch.example.org".into(),
            bucket_name: format!("scratch/{gateway}"),
            minted_at: now,
        })
    }

    async fn revoke_older(&self, gateway: &str, keep: &str) -> Result<usize, StoreError> {
        self.check_revoke()?;
        let mut all = self.keys.lock().unwrap();
        let keys = all.entry(gateway.to_string()).or_default();
        // Oldest first: everything before `keep`.
        let older = keys.iter().position(|(id, _, _)| id == keep).unwrap_or(0);
        keys.drain(..older);
        Ok(older)
    }

    async fn revoke_all(&self, gateway: &str) -> Result<usize, StoreError> {
        self.check_revoke()?;
        self.suspended.lock().unwrap().remove(gateway);
        Ok(self.keys.lock().unwrap().remove(gateway).map_or(0, |keys| keys.len()))
    }

    async fn set_suspended(&self, gateway: &str, suspended: bool) -> Result<usize, StoreError> {
        self.check_revoke()?;
        let mut set = self.suspended.lock().unwrap();
        match suspended {
            true => set.insert(gateway.to_string()),
            false => set.remove(gateway),
        };
        Ok(self.keys.lock().unwrap().get(gateway).map_or(0, Vec::len))
    }

    async fn revoke(&self, gateway: &str, access_key_id: &str) -> Result<(), StoreError> {
        self.check_revoke()?;
        self.keys.lock().unwrap().entry(gateway.to_string()).or_default().retain(|(id, _, _)| id != access_key_id);
        Ok(())
    }

    async fn keys(&self, gateway: &str) -> Result<Vec<ScratchKeyInfo>, StoreError> {
        let all = self.keys.lock().unwrap();
        Ok(all
            .get(gateway)
            .map(|keys| {
                keys.iter().map(|(id, _, at)| ScratchKeyInfo { access_key_id: id.clone(), minted_at: *at }).collect()
            })
            .unwrap_or_default())
    }

    async fn usage(&self, _gateway: &str) -> Result<ScratchUsage, StoreError> {
        Ok(ScratchUsage::default())
    }
}
