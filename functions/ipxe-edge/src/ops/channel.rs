//! Channels: atomic promotion and rollback. A channel is one object; each change is one
//! conditional write, so two operators racing cannot lose an update or corrupt it.

use super::{check_name, Deployment, OpError};
use ipxe_edge_core::domain::clock::rfc3339_now;
use ipxe_edge_core::domain::model::{Channel, SigningCertificate};
use ipxe_edge_core::storage::keys;
use ipxe_edge_core::storage::records::{Change, Promotion, RecordError};
use ipxe_edge_core::storage::StoreError;
use std::path::Path;

/// Refuses a release that cannot boot every gateway following the channel.
async fn check_followers(ctx: &Deployment, channel: &str, release: &str) -> Result<(), OpError> {
    let followers: Vec<_> = ctx
        .records
        .gateways()
        .await?
        .into_iter()
        .filter(|g| g.channel() == channel && g.pinned_release.is_none())
        .collect();
    for gateway in followers {
        super::gateway::release_serves(ctx, release, gateway.arch())
            .await
            .map_err(|e| OpError::Refused(format!("{e}, which gateway {} on channel {channel} needs", gateway.name)))?;
    }
    Ok(())
}

/// Points `channel` at `release` in one conditional write; returns the release it pointed at
/// before (`None` for a new channel). `require_signed` sets the channel's signer requirement
/// (`Some(None)` drops it; `None` keeps it); the release must meet the requirement the channel
/// holds after the write.
pub async fn promote(
    ctx: &Deployment,
    channel: &str,
    release: &str,
    fallback_after: Option<u32>,
    require_signed: Option<Option<SigningCertificate>>,
) -> Result<Option<String>, OpError> {
    check_name("channel name", channel)?;
    check_name("release id", release)?;
    let Some(manifest) = ctx.records.release(release).await? else {
        return Err(OpError::Refused(format!("unknown release {release:?} (see: ipxe-edge release list)")));
    };
    check_followers(ctx, channel, release).await?;
    let check = |ch: &Channel| match &ch.require_signed {
        Some(required) => super::release::check_signed_by(&manifest, required)
            .map_err(|e| format!("channel {channel} requires signed kernels: {e}")),
        None => Ok(()),
    };
    let promotion = Promotion { fallback_after, require_signed, check: Some(&check) };
    match ctx.records.promote(channel, release, &rfc3339_now(), &promotion).await {
        Ok(ch) => Ok(ch.history.last().map(|e| e.release.clone())),
        Err(RecordError::Store(StoreError::Conflict(_))) => {
            Err(OpError::Refused(format!("channel {channel} keeps changing under us; try again")))
        }
        Err(RecordError::Refused(e)) => Err(OpError::Refused(e)),
        Err(e) => Err(e.into()),
    }
}

/// The certificate a channel's kernels must be signed by, from a PEM or DER file; a file that
/// is not one is a usage error.
pub fn signing_certificate_file(path: &Path) -> Result<SigningCertificate, OpError> {
    let bytes =
        std::fs::read(path).map_err(|e| OpError::Invalid(format!("--require-signed {}: {e}", path.display())))?;
    let der = match x509_parser::pem::parse_x509_pem(&bytes) {
        Ok((_, pem)) if pem.label == "CERTIFICATE" => pem.contents,
        _ => bytes,
    };
    let signer = ipxe_edge_pki::authenticode::Signer::from_der(der).map_err(|e| {
        OpError::Invalid(format!("--require-signed {}: not an X.509 certificate (PEM or DER): {e}", path.display()))
    })?;
    Ok(super::release::signing_certificate(&signer))
}

/// Points `channel` back at the release it had before, once (never retried: the operator decides
/// again with fresh history). Returns `(from, to)`.
pub async fn rollback(ctx: &Deployment, channel: &str) -> Result<(String, String), OpError> {
    check_name("channel name", channel)?;
    let current =
        ctx.records.channel(channel).await?.ok_or_else(|| OpError::Refused(format!("unknown channel {channel:?}")))?;
    let previous = current
        .history
        .last()
        .cloned()
        .ok_or_else(|| OpError::Refused(format!("channel {channel} has no earlier release to roll back to")))?;
    check_followers(ctx, channel, &previous.release).await?;
    let previous_manifest = ctx
        .records
        .release(&previous.release)
        .await?
        .ok_or_else(|| OpError::Refused(format!("release {} is gone; not rolled back", previous.release)))?;
    let changed = || {
        OpError::Refused(format!(
            "channel {channel} changed while rolling back; check `ipxe-edge channel history {channel}` and retry"
        ))
    };
    // One attempt only: never roll back twice by retrying; the operator decides again with
    // fresh history.
    let outcome = ctx
        .records
        .update(&keys::channel(channel), 1, |now: Option<Channel>| match now {
            Some(mut ch) if ch == current => {
                if let Some(required) = &ch.require_signed {
                    super::release::check_signed_by(&previous_manifest, required).map_err(|e| {
                        OpError::Refused(format!("channel {channel} requires signed kernels: {e}; not rolled back"))
                    })?;
                }
                ch.history.pop();
                ch.release = previous.release.clone();
                Ok(Change::Write(ch))
            }
            _ => Err(changed()),
        })
        .await;
    match outcome {
        Ok(_) => Ok((current.release, previous.release)),
        Err(OpError::Record(RecordError::Store(StoreError::Conflict(_)))) => Err(changed()),
        Err(e) => Err(e),
    }
}
