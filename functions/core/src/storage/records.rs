//! The typed records layer: every read and write of a record goes through [`Records`], over a
//! plain [`ObjectStore`]. Records are validated whenever they are read, and every change of an
//! existing record is one conditional read-modify-write ([`Records::update`]), retried when
//! another writer got there first.

use super::{keys, ObjectStore, Revalidated, StoreError, Versioned, WriteCondition};
use crate::domain::identity::Fingerprint;
use crate::domain::model::{
    valid_name, Asset, CertificateAlias, Channel, ChannelEntry, GatewayCertificate, GatewayRecord, PendingRenewal,
    ReleaseManifest, SigningCertificate,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often a read-modify-write is tried before giving up on a record that keeps changing.
pub const UPDATE_ATTEMPTS: usize = 5;

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum RecordError {
    /// A stored record breaks the rules (unparsable, a name like `../x`, a key mismatch): a
    /// configuration error for an operator to fix, not an outage to retry.
    #[error("record {key} is invalid: {reason}")]
    Invalid { key: String, reason: String },
    /// A name given by a caller (not read from a record) breaks the naming rules.
    #[error("invalid name {0:?}: use 1-64 characters of [A-Za-z0-9._-]")]
    BadName(String),
    #[error("release {0} exists already (releases are immutable)")]
    ReleaseExists(String),
    #[error("release {0} does not exist")]
    UnknownRelease(String),
    #[error("this certificate ({0}) is enrolled already")]
    AlreadyEnrolled(Fingerprint),
    #[error("certificate {fingerprint} is not one of gateway {gateway}'s")]
    UnknownCertificate { gateway: String, fingerprint: Fingerprint },
    #[error("certificate {fingerprint} is the last one of gateway {gateway}: revoke the gateway instead")]
    LastCertificate { gateway: String, fingerprint: Fingerprint },
    /// A change the record's own rules refuse (a channel's signer requirement), said in one line.
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a promote changes on a channel besides its release, and the check the release must pass
/// against the channel as the conditional write finds it (so a requirement set meanwhile by
/// another operator still holds).
#[derive(Default)]
pub struct Promotion<'a> {
    pub fallback_after: Option<u32>,
    /// Sets the channel's signer requirement (`Some(None)` drops it); kept when `None`.
    pub require_signed: Option<Option<SigningCertificate>>,
    pub check: Option<&'a PromotionCheck<'a>>,
}

/// Refuses a channel as a promote would write it, saying why in one line.
pub type PromotionCheck<'a> = dyn Fn(&Channel) -> Result<(), String> + Sync + 'a;

/// A record type: JSON, with rules checked on every read and write.
pub trait Record: Serialize + DeserializeOwned {
    fn validate(&self) -> Result<(), String>;
}

impl Record for GatewayRecord {
    fn validate(&self) -> Result<(), String> {
        GatewayRecord::validate(self)
    }
}
impl Record for ReleaseManifest {
    fn validate(&self) -> Result<(), String> {
        ReleaseManifest::validate(self)
    }
}
impl Record for CertificateAlias {
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }
}
impl Record for PendingRenewal {
    fn validate(&self) -> Result<(), String> {
        PendingRenewal::validate(self)
    }
}
impl Record for Channel {
    fn validate(&self) -> Result<(), String> {
        Channel::validate(self)
    }
}

/// What a read-modify-write step decided.
pub enum Change<T> {
    /// Write this value (conditionally on the version that was read).
    Write(T),
    /// Leave the object as it is.
    Keep,
}

fn parse<T: Record>(key: &str, body: &[u8]) -> Result<T, RecordError> {
    let invalid = |reason: String| RecordError::Invalid { key: key.to_string(), reason };
    let value: T = serde_json::from_slice(body).map_err(|e| invalid(e.to_string()))?;
    value.validate().map_err(invalid)?;
    Ok(value)
}

fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec_pretty(value).expect("records serialise")
}

fn name(name: &str) -> Result<&str, RecordError> {
    if valid_name(name) {
        Ok(name)
    } else {
        Err(RecordError::BadName(name.to_string()))
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Typed getters and putters over an object store.
#[derive(Clone)]
pub struct Records {
    store: Arc<dyn ObjectStore>,
    cache: Option<Arc<ReadCache>>,
}

/// Copies a long-lived process (a warm function) keeps between requests, so that a boot does
/// not read what cannot have changed: release manifests are immutable and kept once read;
/// channels are served from memory for `max_age` after they were last read or revalidated, then
/// revalidated by version tag (one round trip, no body when unchanged). A promote is thus
/// visible to such a process within `max_age`. Writes through these records update the copy.
pub struct ReadCache {
    max_age: Duration,
    releases: Mutex<HashMap<String, ReleaseManifest>>,
    channels: Mutex<HashMap<String, Checked>>,
}

/// A record's bytes, its version tag and when the store last confirmed them.
struct Checked {
    object: Versioned,
    checked_at: Instant,
}

/// Release manifests kept at most (a few KiB each); all are forgotten when full.
const CACHED_RELEASES: usize = 256;

impl ReadCache {
    pub fn new(max_age: Duration) -> Self {
        ReadCache { max_age, releases: Mutex::default(), channels: Mutex::default() }
    }

    /// How long a channel is served from memory before it is revalidated.
    pub fn max_age(&self) -> Duration {
        self.max_age
    }
}

impl Records {
    pub fn new(store: Arc<dyn ObjectStore>) -> Self {
        Records { store, cache: None }
    }

    /// These records, keeping copies between calls (see [`ReadCache`]).
    pub fn with_read_cache(mut self, cache: ReadCache) -> Self {
        self.cache = Some(Arc::new(cache));
        self
    }

    /// A channel's bytes, from the read cache while they are fresh, else from the store
    /// (revalidating the cached copy when there is one).
    async fn read_channel_object(&self, key: &str) -> Result<Option<Vec<u8>>, RecordError> {
        let Some(cache) = &self.cache else { return Ok(self.store.get(key).await?.map(|o| o.body)) };
        let cached = cache.channels.lock().unwrap().get(key).map(|c| (c.object.clone(), c.checked_at));
        let now = Instant::now();
        let current = match cached {
            Some((object, checked_at)) if now.duration_since(checked_at) < cache.max_age => {
                return Ok(Some(object.body))
            }
            Some((object, _)) if object.etag.is_some() => {
                match self.store.get_unless(key, object.etag.as_deref().unwrap_or_default()).await? {
                    Revalidated::Unchanged => Some(object),
                    Revalidated::Changed(current) => current,
                }
            }
            _ => self.store.get(key).await?,
        };
        let mut channels = cache.channels.lock().unwrap();
        match &current {
            Some(object) => {
                channels.insert(key.to_string(), Checked { object: object.clone(), checked_at: now });
            }
            None => {
                channels.remove(key);
            }
        }
        Ok(current.map(|o| o.body))
    }

    /// Forgets the cached copy of a record this process just changed.
    fn forget_channel(&self, key: &str) {
        if let Some(cache) = &self.cache {
            cache.channels.lock().unwrap().remove(key);
        }
    }

    /// The store underneath, for assets and other untyped objects.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// Reads and validates a record; `None` when it does not exist.
    pub async fn read<T: Record>(&self, key: &str) -> Result<Option<T>, RecordError> {
        match self.store.get(key).await? {
            None => Ok(None),
            Some(object) => parse(key, &object.body).map(Some),
        }
    }

    /// The one conditional read-modify-write: reads the object and its version, lets `change`
    /// decide, writes on condition that nobody changed it meanwhile, and starts over (up to
    /// `attempts` times) when somebody did. `change` may run more than once.
    pub async fn update_raw<E>(
        &self,
        key: &str,
        attempts: usize,
        mut change: impl FnMut(Option<&[u8]>) -> Result<Change<Vec<u8>>, E>,
    ) -> Result<Change<Vec<u8>>, E>
    where
        E: From<RecordError>,
    {
        for _ in 0..attempts.max(1) {
            let current = self.store.get(key).await.map_err(RecordError::from)?;
            let condition = match &current {
                None => WriteCondition::Absent,
                Some(object) => object.etag.clone().map(WriteCondition::Matches).unwrap_or(WriteCondition::Always),
            };
            let body = match change(current.as_ref().map(|o| o.body.as_slice()))? {
                Change::Keep => return Ok(Change::Keep),
                Change::Write(body) => body,
            };
            match self.store.put(key, body.clone(), condition).await {
                Ok(()) => return Ok(Change::Write(body)),
                Err(StoreError::Conflict(_)) => continue,
                Err(e) => return Err(RecordError::from(e).into()),
            }
        }
        Err(RecordError::Store(StoreError::Conflict(key.to_string())).into())
    }

    /// [`Records::update_raw`] for a typed record: `change` sees the current record (validated)
    /// and the result is validated before it is written.
    pub async fn update<T: Record, E>(
        &self,
        key: &str,
        attempts: usize,
        mut change: impl FnMut(Option<T>) -> Result<Change<T>, E>,
    ) -> Result<Change<T>, E>
    where
        E: From<RecordError>,
    {
        let mut written = None;
        let outcome = self
            .update_raw::<E>(key, attempts, |current| -> Result<Change<Vec<u8>>, E> {
                let current = current.map(|body| parse::<T>(key, body)).transpose()?;
                match change(current)? {
                    Change::Keep => Ok(Change::Keep),
                    Change::Write(next) => {
                        next.validate().map_err(|reason| RecordError::Invalid { key: key.to_string(), reason })?;
                        let body = to_json(&next);
                        written = Some(next);
                        Ok(Change::Write(body))
                    }
                }
            })
            .await?;
        Ok(match (outcome, written) {
            (Change::Write(_), Some(value)) => Change::Write(value),
            _ => Change::Keep,
        })
    }

    // --- gateways ---

    /// The gateway record for a fingerprint, or `None` when it is not enrolled.
    pub async fn gateway(&self, fp: &Fingerprint) -> Result<Option<GatewayRecord>, RecordError> {
        let key = keys::gateway(fp);
        let record: Option<GatewayRecord> = self.read(&key).await?;
        if let Some(record) = &record {
            if &record.fingerprint != fp {
                return Err(RecordError::Invalid { key, reason: "fingerprint does not match its key".into() });
            }
        }
        Ok(record)
    }

    /// The gateway a client certificate belongs to: its own record, or the record a renewed
    /// certificate's alias points at. `None` when the certificate is not (or no longer) one of
    /// an enrolled gateway's.
    pub async fn gateway_for_certificate(&self, fp: &Fingerprint) -> Result<Option<GatewayRecord>, RecordError> {
        let record = match self.gateway(fp).await? {
            Some(record) => Some(record),
            None => match self.read::<CertificateAlias>(&keys::alias(fp)).await? {
                Some(alias) if &alias.gateway != fp => self.gateway(&alias.gateway).await?,
                _ => None,
            },
        };
        Ok(record.filter(|r| r.certificate(fp).is_some()))
    }

    /// Adds a certificate to an enrolled gateway: its alias first (refused if the fingerprint is
    /// anybody's already), then the record. Returns the record as written.
    pub async fn add_certificate(
        &self,
        gateway: &Fingerprint,
        cert: GatewayCertificate,
    ) -> Result<GatewayRecord, RecordError> {
        let new = cert.fingerprint.clone();
        if self.store.exists(&keys::gateway(&new)).await? {
            return Err(RecordError::AlreadyEnrolled(new));
        }
        let alias = to_json(&CertificateAlias { gateway: gateway.clone() });
        match self.store.put(&keys::alias(&new), alias, WriteCondition::Absent).await {
            Ok(()) => {}
            Err(StoreError::Conflict(_)) => return Err(RecordError::AlreadyEnrolled(new)),
            Err(e) => return Err(e.into()),
        }
        let updated = self
            .update_gateway::<RecordError>(gateway, |record| {
                record.certificates = record.certificates();
                record.certificates.retain(|c| c.fingerprint != new);
                record.certificates.push(cert.clone());
                Ok(())
            })
            .await;
        match updated {
            Ok(Some(record)) => Ok(record),
            other => {
                // The gateway is gone or the write failed: take the alias back.
                let _ = self.store.delete(&keys::alias(&new)).await;
                match other {
                    Err(e) => Err(e),
                    _ => Err(RecordError::Invalid {
                        key: keys::gateway(gateway),
                        reason: "the gateway is not enrolled".into(),
                    }),
                }
            }
        }
    }

    /// Retires one of a gateway's certificates (never the last one). Returns the record as written.
    pub async fn retire_certificate(
        &self,
        gateway: &Fingerprint,
        fp: &Fingerprint,
    ) -> Result<GatewayRecord, RecordError> {
        let record = self
            .update_gateway::<RecordError>(gateway, |record| {
                let mut certs = record.certificates();
                if !certs.iter().any(|c| &c.fingerprint == fp) {
                    return Err(RecordError::UnknownCertificate {
                        gateway: record.name.clone(),
                        fingerprint: fp.clone(),
                    });
                }
                certs.retain(|c| &c.fingerprint != fp);
                if certs.is_empty() {
                    return Err(RecordError::LastCertificate { gateway: record.name.clone(), fingerprint: fp.clone() });
                }
                record.certificates = certs;
                Ok(())
            })
            .await?
            .ok_or_else(|| RecordError::Invalid {
                key: keys::gateway(gateway),
                reason: "the gateway is not enrolled".into(),
            })?;
        if fp != gateway {
            self.store.delete(&keys::alias(fp)).await?;
        }
        Ok(record)
    }

    /// The first boot with a renewed certificate: marks it (`first_boot_at`) and retires every
    /// other certificate of the gateway, in one update, then their aliases. The retired ones.
    pub async fn retire_all_but(
        &self,
        gateway: &Fingerprint,
        presented: &Fingerprint,
        now: u64,
    ) -> Result<Vec<Fingerprint>, RecordError> {
        let mut retired = Vec::new();
        self.update_gateway::<RecordError>(gateway, |record| {
            let mut certs = record.certificates();
            retired = certs.iter().filter(|c| &c.fingerprint != presented).map(|c| c.fingerprint.clone()).collect();
            certs.retain(|c| &c.fingerprint == presented);
            if let Some(c) = certs.first_mut() {
                c.first_boot_at = Some(now);
            }
            record.certificates = certs;
            Ok(())
        })
        .await?;
        for fp in &retired {
            if fp != gateway {
                self.store.delete(&keys::alias(fp)).await?;
            }
        }
        Ok(retired)
    }

    // --- renewals ---

    /// The gateway's pending renewal (redeem side).
    pub async fn renewal(&self, gateway: &Fingerprint) -> Result<Option<PendingRenewal>, RecordError> {
        self.read(&keys::renewal(gateway)).await
    }

    pub async fn put_renewal(&self, gateway: &Fingerprint, renewal: &PendingRenewal) -> Result<(), RecordError> {
        let key = keys::renewal(gateway);
        renewal.validate().map_err(|reason| RecordError::Invalid { key: key.clone(), reason })?;
        self.store.put(&key, to_json(renewal), WriteCondition::Always).await?;
        Ok(())
    }

    pub async fn delete_renewal(&self, gateway: &Fingerprint) -> Result<(), RecordError> {
        Ok(self.store.delete(&keys::renewal(gateway)).await?)
    }

    /// Every enrolled gateway, sorted by name.
    pub async fn gateways(&self) -> Result<Vec<GatewayRecord>, RecordError> {
        let mut out = Vec::new();
        for key in self.store.list(keys::GATEWAYS_PREFIX).await? {
            if keys::is_gateway_record(&key) {
                if let Some(record) = self.read::<GatewayRecord>(&key).await? {
                    out.push(record);
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The gateway called `name`, if one is enrolled.
    pub async fn gateway_by_name(&self, gateway: &str) -> Result<Option<GatewayRecord>, RecordError> {
        name(gateway)?;
        Ok(self.gateways().await?.into_iter().find(|g| g.name == gateway))
    }

    /// Enrolls a new gateway; refuses a fingerprint that is enrolled already.
    pub async fn enroll(&self, record: &GatewayRecord) -> Result<(), RecordError> {
        record.validate().map_err(|reason| RecordError::Invalid { key: keys::gateway(&record.fingerprint), reason })?;
        match self.store.put(&keys::gateway(&record.fingerprint), to_json(record), WriteCondition::Absent).await {
            Ok(()) => Ok(()),
            Err(StoreError::Conflict(_)) => Err(RecordError::AlreadyEnrolled(record.fingerprint.clone())),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes a gateway record whatever was there (imports that replace a farm's records).
    pub async fn put_gateway(&self, record: &GatewayRecord) -> Result<(), RecordError> {
        record.validate().map_err(|reason| RecordError::Invalid { key: keys::gateway(&record.fingerprint), reason })?;
        self.store.put(&keys::gateway(&record.fingerprint), to_json(record), WriteCondition::Always).await?;
        Ok(())
    }

    /// Changes an enrolled gateway's record with a conditional write.
    pub async fn update_gateway<E: From<RecordError>>(
        &self,
        fp: &Fingerprint,
        mut change: impl FnMut(&mut GatewayRecord) -> Result<(), E>,
    ) -> Result<Option<GatewayRecord>, E> {
        let outcome = self
            .update::<GatewayRecord, E>(&keys::gateway(fp), UPDATE_ATTEMPTS, |current| match current {
                None => Ok(Change::Keep),
                Some(mut record) => {
                    change(&mut record)?;
                    Ok(Change::Write(record))
                }
            })
            .await?;
        Ok(match outcome {
            Change::Write(record) => Some(record),
            Change::Keep => None,
        })
    }

    // --- secrets ---

    /// Whether the gateway has secrets: its record says so, or on records written before it
    /// did, a listing of its prefix finds them (the boot side never needs the right to read
    /// any secret).
    pub async fn has_secrets(&self, gateway: &GatewayRecord) -> Result<bool, RecordError> {
        if let Some(known) = gateway.has_secrets {
            return Ok(known);
        }
        let secrets = keys::secrets(&gateway.fingerprint);
        Ok(self.store.list(&keys::gateway_prefix(&gateway.fingerprint)).await?.contains(&secrets))
    }

    /// The gateway's secrets (redeem side).
    pub async fn secrets(&self, fp: &Fingerprint) -> Result<Option<Vec<u8>>, RecordError> {
        Ok(self.store.get(&keys::secrets(fp)).await?.map(|o| o.body))
    }

    /// Stores an enrolled gateway's secrets, then marks its record as having them.
    pub async fn put_secrets(&self, fp: &Fingerprint, secrets: Vec<u8>) -> Result<(), RecordError> {
        self.store.put(&keys::secrets(fp), secrets, WriteCondition::Always).await?;
        self.update_gateway::<RecordError>(fp, |record| {
            record.has_secrets = Some(true);
            Ok(())
        })
        .await?;
        Ok(())
    }

    // --- releases ---

    pub async fn release(&self, id: &str) -> Result<Option<ReleaseManifest>, RecordError> {
        let key = keys::release(name(id)?);
        if let Some(cache) = &self.cache {
            if let Some(manifest) = cache.releases.lock().unwrap().get(id) {
                return Ok(Some(manifest.clone()));
            }
        }
        let manifest: Option<ReleaseManifest> = self.read(&key).await?;
        if let Some(m) = &manifest {
            if m.id != id {
                return Err(RecordError::Invalid { key, reason: format!("manifest id {} differs from {id}", m.id) });
            }
            if let Some(cache) = &self.cache {
                let mut releases = cache.releases.lock().unwrap();
                if releases.len() >= CACHED_RELEASES {
                    releases.clear();
                }
                releases.insert(id.to_string(), m.clone());
            }
        }
        Ok(manifest)
    }

    pub async fn release_exists(&self, id: &str) -> Result<bool, RecordError> {
        Ok(self.store.exists(&keys::release(name(id)?)).await?)
    }

    /// Every release, sorted by id.
    pub async fn releases(&self) -> Result<Vec<ReleaseManifest>, RecordError> {
        let mut out = Vec::new();
        for key in self.store.list(keys::RELEASES_PREFIX).await? {
            if keys::is_release_manifest(&key) {
                if let Some(m) = self.read::<ReleaseManifest>(&key).await? {
                    out.push(m);
                }
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Writes a release manifest once (releases are immutable); its assets must be stored first.
    pub async fn put_release(&self, manifest: &ReleaseManifest) -> Result<(), RecordError> {
        let key = keys::release(name(&manifest.id)?);
        manifest.validate().map_err(|reason| RecordError::Invalid { key: key.clone(), reason })?;
        for assets in manifest.arches.values() {
            for asset in [&assets.kernel, &assets.initrd] {
                if !self.store.exists(&asset.key).await? {
                    return Err(RecordError::Invalid {
                        key: key.clone(),
                        reason: format!("asset {} is not stored", asset.key),
                    });
                }
            }
        }
        match self.store.put(&key, to_json(manifest), WriteCondition::Absent).await {
            Ok(()) => Ok(()),
            Err(StoreError::Conflict(_)) => Err(RecordError::ReleaseExists(manifest.id.clone())),
            Err(e) => Err(e.into()),
        }
    }

    /// Stores an asset under its digest, skipping the upload when it is there already.
    pub async fn put_asset(&self, bytes: Vec<u8>) -> Result<Asset, RecordError> {
        let sha256 = sha256_hex(&bytes);
        let asset = Asset { key: keys::asset(&sha256), sha256, size: bytes.len() as u64 };
        if !self.store.exists(&asset.key).await? {
            self.store.put(&asset.key, bytes, WriteCondition::Always).await?;
        }
        Ok(asset)
    }

    // --- channels ---

    pub async fn channel(&self, channel: &str) -> Result<Option<Channel>, RecordError> {
        let key = keys::channel(name(channel)?);
        let record: Option<Channel> =
            self.read_channel_object(&key).await?.map(|body| parse(&key, &body)).transpose()?;
        if let Some(c) = &record {
            if c.name != channel {
                return Err(RecordError::Invalid {
                    key,
                    reason: format!("channel name {} differs from {channel}", c.name),
                });
            }
        }
        Ok(record)
    }

    /// Points a channel at a release (creating the channel), keeping the previous release in
    /// its history. Returns the channel as written.
    /// Points `channel` at `release`; `fallback_after`, when given, becomes the channel's own
    /// fallback threshold in the same write.
    pub async fn promote(
        &self,
        channel: &str,
        release: &str,
        at: &str,
        promotion: &Promotion<'_>,
    ) -> Result<Channel, RecordError> {
        name(channel)?;
        if !self.release_exists(release).await? {
            return Err(RecordError::UnknownRelease(release.to_string()));
        }
        let outcome = self
            .update::<Channel, RecordError>(&keys::channel(channel), UPDATE_ATTEMPTS, |current| {
                let mut ch = match current {
                    None => Channel {
                        name: channel.into(),
                        release: release.into(),
                        history: vec![],
                        fallback_after: None,
                        require_signed: None,
                    },
                    Some(mut ch) => {
                        ch.history.push(ChannelEntry { release: ch.release.clone(), at: at.into() });
                        ch.release = release.into();
                        ch
                    }
                };
                if promotion.fallback_after.is_some() {
                    ch.fallback_after = promotion.fallback_after;
                }
                if let Some(require) = &promotion.require_signed {
                    ch.require_signed = require.clone();
                }
                if let Some(check) = promotion.check {
                    check(&ch).map_err(RecordError::Refused)?;
                }
                Ok(Change::Write(ch))
            })
            .await?;
        self.forget_channel(&keys::channel(channel));
        match outcome {
            Change::Write(ch) => Ok(ch),
            Change::Keep => unreachable!("promote always writes"),
        }
    }

    // --- trust bundle ---

    /// The PEM bundle client certificates must chain to, at `key` (normally [`keys::TRUST_BUNDLE`]).
    pub async fn trust_bundle(&self, key: &str) -> Result<Option<Vec<u8>>, RecordError> {
        Ok(self.store.get(key).await?.map(|o| o.body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::model::new_gateway;
    use crate::storage::adapters::memory::MemoryStore;

    fn records() -> (Arc<MemoryStore>, Records) {
        let store = Arc::new(MemoryStore::new());
        (store.clone(), Records::new(store))
    }

    fn calls(store: &MemoryStore) -> u64 {
        store.calls.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn manifest(id: &str) -> ReleaseManifest {
        let sha = sha256_hex(id.as_bytes());
        let asset = serde_json::json!({"key": keys::asset(&sha), "sha256": sha, "size": 2});
        let arches = serde_json::json!({"x86_64": {"kernel": asset, "initrd": asset}});
        serde_json::from_value(serde_json::json!({"id": id, "cmdline": "", "arches": arches})).unwrap()
    }

    #[tokio::test]
    async fn a_read_cache_reads_a_manifest_once_and_a_channel_once_per_max_age() {
        let store = Arc::new(MemoryStore::new());
        store.insert(&keys::release("r1"), to_json(&manifest("r1")));
        store.insert(&keys::channel("stable"), br#"{"name":"stable","release":"r1"}"#.to_vec());
        let kept = Records::new(store.clone()).with_read_cache(ReadCache::new(Duration::from_secs(3600)));
        let revalidating = Records::new(store.clone()).with_read_cache(ReadCache::new(Duration::ZERO));
        for records in [&kept, &revalidating] {
            assert_eq!(records.release("r1").await.unwrap().unwrap().id, "r1");
            assert_eq!(records.channel("stable").await.unwrap().unwrap().release, "r1");
        }
        let before = calls(&store);
        assert_eq!(kept.release("r1").await.unwrap().unwrap().id, "r1");
        assert_eq!(kept.channel("stable").await.unwrap().unwrap().release, "r1");
        assert_eq!(calls(&store), before, "manifest and fresh channel from memory");
        assert_eq!(revalidating.release("r1").await.unwrap().unwrap().id, "r1");
        assert_eq!(calls(&store), before, "a manifest never changes");
        assert_eq!(revalidating.channel("stable").await.unwrap().unwrap().release, "r1");
        assert_eq!(calls(&store), before + 1, "a stale channel is revalidated");

        // Another process promotes: the stale copy sees it, the fresh one keeps its copy.
        store.insert(&keys::release("r2"), to_json(&manifest("r2")));
        store.insert(&keys::channel("stable"), br#"{"name":"stable","release":"r2"}"#.to_vec());
        assert_eq!(revalidating.channel("stable").await.unwrap().unwrap().release, "r2");
        assert_eq!(kept.channel("stable").await.unwrap().unwrap().release, "r1");
        // A promote through the cached records themselves is seen at once.
        kept.promote("stable", "r1", "now", &Promotion::default()).await.unwrap();
        assert_eq!(kept.channel("stable").await.unwrap().unwrap().release, "r1");
        kept.promote("stable", "r2", "now", &Promotion::default()).await.unwrap();
        assert_eq!(kept.channel("stable").await.unwrap().unwrap().release, "r2");

        // A channel deleted is gone after max age; an outage is an error, not a stale answer.
        store.delete(&keys::channel("stable")).await.unwrap();
        assert_eq!(revalidating.channel("stable").await.unwrap(), None);
        assert_eq!(kept.release("r2").await.unwrap().unwrap().id, "r2");
        store.fail.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(revalidating.channel("stable").await.is_err());
        assert_eq!(kept.release("r2").await.unwrap().unwrap().id, "r2", "kept manifests need no store");
    }

    #[tokio::test]
    async fn secrets_presence_comes_from_the_record_once_secrets_are_set() {
        let (store, records) = records();
        let fp = Fingerprint::of_der(b"gw");
        records.enroll(&new_gateway("gw", fp.clone())).await.unwrap();
        // A record written before it said so: the listing decides.
        let old = records.gateway(&fp).await.unwrap().unwrap();
        assert_eq!(old.has_secrets, None);
        assert!(!records.has_secrets(&old).await.unwrap());
        store.insert(&keys::secrets(&fp), b"s".to_vec());
        assert!(records.has_secrets(&old).await.unwrap(), "found by listing");
        records.put_secrets(&fp, b"s2".to_vec()).await.unwrap();
        let record = records.gateway(&fp).await.unwrap().unwrap();
        assert_eq!(record.has_secrets, Some(true));
        let before = calls(&store);
        assert!(records.has_secrets(&record).await.unwrap());
        assert_eq!(calls(&store), before, "no listing");
        assert_eq!(records.secrets(&fp).await.unwrap().unwrap(), b"s2");
    }

    #[tokio::test]
    async fn records_naming_bad_names_are_invalid_not_unavailable() {
        let (store, records) = records();
        let fp = Fingerprint::of_der(b"gw");
        let mut gw = new_gateway("gw", fp.clone());
        gw.pinned_release = Some("../x".into());
        store.insert(&keys::gateway(&fp), serde_json::to_vec(&gw).unwrap());
        let err = records.gateway(&fp).await.unwrap_err();
        assert!(matches!(&err, RecordError::Invalid { key, .. } if *key == keys::gateway(&fp)), "{err:?}");
        store.insert(&keys::channel("stable"), br#"{"name":"stable","release":"../x"}"#.to_vec());
        assert!(matches!(records.channel("stable").await, Err(RecordError::Invalid { .. })));
        assert!(matches!(records.release("../x").await, Err(RecordError::BadName(_))));
    }

    #[tokio::test]
    async fn update_retries_on_conflict_and_can_keep() {
        let (store, records) = records();
        store.insert("k", b"0".to_vec());
        let mut calls = 0;
        let outcome = records
            .update_raw::<RecordError>("k", 3, |current| {
                calls += 1;
                if calls == 1 {
                    // Someone else writes between our read and our write.
                    store.insert("k", b"1".to_vec());
                }
                let n: u8 = std::str::from_utf8(current.unwrap()).unwrap().parse().unwrap();
                Ok(Change::Write((n + 10).to_string().into_bytes()))
            })
            .await
            .unwrap();
        assert_eq!(calls, 2);
        assert!(matches!(outcome, Change::Write(b) if b == b"11"));
        let kept = records.update_raw::<RecordError>("k", 3, |_| Ok(Change::Keep)).await.unwrap();
        assert!(matches!(kept, Change::Keep));
    }

    #[tokio::test]
    async fn update_gives_up_after_attempts() {
        let (store, records) = records();
        store.insert("k", b"0".to_vec());
        let result = records
            .update_raw::<RecordError>("k", 2, |_| {
                store.insert("k", b"x".to_vec());
                Ok(Change::Write(b"y".to_vec()))
            })
            .await;
        assert!(matches!(result, Err(RecordError::Store(StoreError::Conflict(_)))));
    }

    #[tokio::test]
    async fn promote_keeps_history_and_refuses_unknown_releases() {
        let (store, records) = records();
        assert!(matches!(
            records.promote("stable", "r1", "t", &Promotion::default()).await,
            Err(RecordError::UnknownRelease(_))
        ));
        store.insert(&keys::release("r1"), b"{}".to_vec());
        store.insert(&keys::release("r2"), b"{}".to_vec());
        records.promote("stable", "r1", "t1", &Promotion::default()).await.unwrap();
        let ch = records
            .promote("stable", "r2", "t2", &Promotion { fallback_after: Some(3), ..Default::default() })
            .await
            .unwrap();
        assert_eq!(ch.release, "r2");
        assert_eq!(ch.fallback_after, Some(3));
        assert_eq!(ch.history, vec![ChannelEntry { release: "r1".into(), at: "t2".into() }]);
        assert_eq!(records.channel("stable").await.unwrap().unwrap(), ch);
    }

    fn cert(fp: &Fingerprint, not_after: i64) -> GatewayCertificate {
        GatewayCertificate::new(fp.clone(), Some(not_after), Some(1))
    }

    #[tokio::test]
    async fn a_renewed_certificate_finds_its_gateway_until_it_is_retired() {
        let (store, records) = records();
        let old = Fingerprint::of_der(b"old");
        let new = Fingerprint::of_der(b"new");
        records.enroll(&new_gateway("gw", old.clone())).await.unwrap();
        assert!(records.gateway_for_certificate(&new).await.unwrap().is_none());

        let written = records.add_certificate(&old, cert(&new, 2_000)).await.unwrap();
        // The record's implicit certificate became explicit, the new one was added beside it.
        let fps: Vec<_> = written.certificates.iter().map(|c| c.fingerprint.clone()).collect();
        assert_eq!(fps, vec![old.clone(), new.clone()]);
        assert_eq!(written.newest_certificate().fingerprint, new);
        for fp in [&old, &new] {
            let found = records.gateway_for_certificate(fp).await.unwrap().unwrap();
            assert_eq!((found.name.as_str(), &found.fingerprint), ("gw", &old));
        }
        // One fingerprint, one gateway: neither another gateway's nor an enrolled one.
        records.enroll(&new_gateway("other", Fingerprint::of_der(b"other"))).await.unwrap();
        assert!(matches!(
            records.add_certificate(&Fingerprint::of_der(b"other"), cert(&new, 1)).await,
            Err(RecordError::AlreadyEnrolled(_))
        ));
        assert!(matches!(
            records.add_certificate(&old, cert(&Fingerprint::of_der(b"other"), 1)).await,
            Err(RecordError::AlreadyEnrolled(_))
        ));

        // Retiring the old one leaves the record where it is, but the old certificate is refused.
        let retired = records.retire_certificate(&old, &old).await.unwrap();
        assert_eq!(retired.certificates.len(), 1);
        assert!(records.gateway_for_certificate(&old).await.unwrap().is_none());
        assert_eq!(records.gateway_for_certificate(&new).await.unwrap().unwrap().name, "gw");
        assert!(matches!(records.retire_certificate(&old, &new).await, Err(RecordError::LastCertificate { .. })));
        assert!(matches!(records.retire_certificate(&old, &old).await, Err(RecordError::UnknownCertificate { .. })));

        // Retiring a renewed certificate deletes its alias too.
        let third = Fingerprint::of_der(b"third");
        records.add_certificate(&old, cert(&third, 3_000)).await.unwrap();
        records.retire_certificate(&old, &third).await.unwrap();
        assert!(store.get(&keys::alias(&third)).await.unwrap().is_none());
        assert!(records.gateway_for_certificate(&third).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn an_alias_to_a_gateway_that_does_not_list_the_certificate_is_refused() {
        let (store, records) = records();
        let home = Fingerprint::of_der(b"home");
        let stray = Fingerprint::of_der(b"stray");
        records.enroll(&new_gateway("gw", home.clone())).await.unwrap();
        // A hand-written alias cannot make a certificate the gateway does not list boot as it.
        store.insert(&keys::alias(&stray), serde_json::to_vec(&CertificateAlias { gateway: home.clone() }).unwrap());
        assert!(records.gateway_for_certificate(&stray).await.unwrap().is_none());
        assert!(matches!(
            records.add_certificate(&Fingerprint::of_der(b"nobody"), cert(&Fingerprint::of_der(b"x"), 1)).await,
            Err(RecordError::Invalid { .. })
        ));
        assert!(store.get(&keys::alias(&Fingerprint::of_der(b"x"))).await.unwrap().is_none(), "alias taken back");
    }

    #[tokio::test]
    async fn enroll_refuses_a_second_enrollment() {
        let (_, records) = records();
        let gw = new_gateway("gw", Fingerprint::of_der(b"gw"));
        records.enroll(&gw).await.unwrap();
        assert!(matches!(records.enroll(&gw).await, Err(RecordError::AlreadyEnrolled(_))));
        assert_eq!(records.gateway_by_name("gw").await.unwrap().unwrap(), gw);
        assert!(records.gateway_by_name("other").await.unwrap().is_none());
    }
}
