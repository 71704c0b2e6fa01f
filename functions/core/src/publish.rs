//! Writing what gateways boot: content-addressed assets, immutable release manifests, channels
//! and gateway records. Used by the operator CLI and the local server's first start.

use crate::boot::{read_json, BootError};
use crate::identity::Fingerprint;
use crate::model::{layout, valid_name, Asset, Channel, ChannelEntry, GatewayRecord, ReleaseManifest};
use crate::render;
use crate::store::{ObjectStore, StoreError, WriteCondition};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("invalid name {0:?}: use 1-64 characters of [A-Za-z0-9._-]")]
    BadName(String),
    #[error("release {0} exists already (releases are immutable)")]
    ReleaseExists(String),
    #[error("release {0} does not exist")]
    UnknownRelease(String),
    #[error("channel {0} does not exist")]
    UnknownChannel(String),
    #[error("release {release} is invalid: {reason}")]
    BadRelease { release: String, reason: String },
    #[error("channel {0} has no earlier release to roll back to")]
    NothingToRollBack(String),
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error(transparent)]
    Storage(#[from] StoreError),
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Stores an asset under its digest, skipping the upload when it is there already.
pub async fn put_asset(store: &dyn ObjectStore, bytes: Vec<u8>) -> Result<Asset, PublishError> {
    let sha256 = sha256_hex(&bytes);
    let asset = Asset { key: layout::asset(&sha256), sha256, size: bytes.len() as u64 };
    if !store.exists(&asset.key).await? {
        store.put(&asset.key, bytes, WriteCondition::Always).await?;
    }
    Ok(asset)
}

/// Checks a manifest before it is written: names, architectures, template and command line.
pub fn check_release(manifest: &ReleaseManifest) -> Result<(), PublishError> {
    let bad = |reason: String| PublishError::BadRelease { release: manifest.id.clone(), reason };
    if !valid_name(&manifest.id) {
        return Err(PublishError::BadName(manifest.id.clone()));
    }
    if manifest.arches.is_empty() {
        return Err(bad("it has no architecture".into()));
    }
    for arch in manifest.arches.keys() {
        if !crate::query::valid_arch_key(arch) {
            return Err(bad(format!("unknown architecture {arch:?}")));
        }
    }
    if let Some(template) = &manifest.template {
        render::check_template(template).map_err(|e| bad(e.to_string()))?;
    }
    render::check_fragment("cmdline", &manifest.cmdline).map_err(|e| bad(e.to_string()))?;
    Ok(())
}

/// Writes a release manifest; the assets it names must be stored first.
pub async fn put_release(store: &dyn ObjectStore, manifest: &ReleaseManifest) -> Result<(), PublishError> {
    check_release(manifest)?;
    let key = layout::release(&manifest.id);
    if store.exists(&key).await? {
        return Err(PublishError::ReleaseExists(manifest.id.clone()));
    }
    for assets in manifest.arches.values() {
        for asset in [&assets.kernel, &assets.initrd] {
            if !store.exists(&asset.key).await? {
                return Err(PublishError::BadRelease { release: manifest.id.clone(), reason: format!("asset {} is not stored", asset.key) });
            }
        }
    }
    let body = serde_json::to_vec_pretty(manifest).expect("manifest serialises");
    store.put(&key, body, WriteCondition::Absent).await.map_err(|e| match e {
        StoreError::Conflict(_) => PublishError::ReleaseExists(manifest.id.clone()),
        other => other.into(),
    })
}

/// Points a channel at a release in one conditional write, keeping the previous release in the
/// channel's history. Returns the channel as written.
pub async fn promote(store: &dyn ObjectStore, channel: &str, release: &str, at: &str) -> Result<Channel, PublishError> {
    if !valid_name(channel) {
        return Err(PublishError::BadName(channel.into()));
    }
    if !valid_name(release) || !store.exists(&layout::release(release)).await? {
        return Err(PublishError::UnknownRelease(release.into()));
    }
    let key = layout::channel(channel);
    let current = store.get(&key).await?;
    let (next, condition) = match &current {
        None => (Channel { name: channel.into(), release: release.into(), history: vec![] }, WriteCondition::Absent),
        Some(object) => {
            let mut ch: Channel = serde_json::from_slice(&object.body)
                .map_err(|e| BootError::Corrupt { key: key.clone(), reason: e.to_string() })?;
            ch.history.push(ChannelEntry { release: ch.release.clone(), at: at.into() });
            ch.release = release.into();
            (ch, object.etag.clone().map(WriteCondition::Matches).unwrap_or(WriteCondition::Always))
        }
    };
    store.put(&key, serde_json::to_vec_pretty(&next).expect("channel serialises"), condition).await?;
    Ok(next)
}

/// Writes a gateway record.
pub async fn put_gateway(store: &dyn ObjectStore, record: &GatewayRecord) -> Result<(), PublishError> {
    if !valid_name(&record.name) {
        return Err(PublishError::BadName(record.name.clone()));
    }
    let body = serde_json::to_vec_pretty(record).expect("record serialises");
    store.put(&layout::gateway(&record.fingerprint), body, WriteCondition::Always).await?;
    Ok(())
}

pub async fn put_secrets(store: &dyn ObjectStore, fp: &Fingerprint, secrets: Vec<u8>) -> Result<(), PublishError> {
    store.put(&layout::secrets(fp), secrets, WriteCondition::Always).await?;
    Ok(())
}

pub async fn get_channel(store: &dyn ObjectStore, name: &str) -> Result<Option<Channel>, PublishError> {
    Ok(read_json(store, &layout::channel(name)).await?)
}
