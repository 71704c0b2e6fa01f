//! Gateways: enrollment, state, pins and secrets.

use super::{check_name, file_error, Deployment, OpError};
use crate::datadir::write_atomic;
use ipxe_edge_core::domain::identity::{
    describe_der, pem_certificates, ChainVerifier, Fingerprint, DEFAULT_CLOCK_SKEW,
};
use ipxe_edge_core::domain::model::{
    new_gateway, GatewayCertificate, GatewayRecord, GatewayState, ReleaseManifest, DEFAULT_ARCH,
};
use ipxe_edge_core::domain::query::KNOWN_ARCHES;
use ipxe_edge_core::domain::secret_template;
use ipxe_edge_core::domain::{clock, identity};
use ipxe_edge_core::storage::records::RecordError;
use ipxe_edge_core::storage::update_journal;
use ipxe_edge_pki::{validity_days, KeyType};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Largest secrets object accepted (b2c reads it as a kernel command line).
pub const MAX_SECRETS_BYTES: usize = 64 * 1024;

fn check_arch(arch: &str) -> Result<(), OpError> {
    if KNOWN_ARCHES.contains(&arch) {
        Ok(())
    } else {
        Err(OpError::Invalid(format!("invalid architecture {arch:?}: one of {}", KNOWN_ARCHES.join(", "))))
    }
}

/// The release, if it serves architecture `arch`.
pub async fn release_serves(ctx: &Deployment, release: &str, arch: &str) -> Result<ReleaseManifest, OpError> {
    check_name("release id", release)?;
    let manifest = ctx
        .records
        .release(release)
        .await?
        .ok_or_else(|| OpError::Refused(format!("unknown release {release:?} (see: ipxe-edge release list)")))?;
    if manifest.assets_for(arch, None).is_none() && !manifest.arches.keys().any(|k| k.starts_with(&format!("{arch}-")))
    {
        return Err(OpError::Refused(format!("release {release} has no assets for architecture {arch}")));
    }
    Ok(manifest)
}

async fn check_channel(ctx: &Deployment, channel: &str) -> Result<(), OpError> {
    check_name("channel name", channel)?;
    if ctx.records.channel(channel).await?.is_none() {
        return Err(OpError::Refused(format!(
            "unknown channel {channel:?} (create it with: ipxe-edge channel promote {channel} RELEASE)"
        )));
    }
    Ok(())
}

/// Checks what an enrollment needs before anything is written.
async fn check_new_gateway(ctx: &Deployment, name: &str, channel: Option<&str>, arch: &str) -> Result<(), OpError> {
    check_name("gateway name", name)?;
    check_arch(arch)?;
    if let Some(c) = channel {
        check_channel(ctx, c).await?;
    }
    if ctx.records.gateway_by_name(name).await?.is_some() {
        return Err(OpError::Refused(format!("a gateway named {name:?} is enrolled already")));
    }
    Ok(())
}

fn new_record(
    name: &str,
    fp: Fingerprint,
    channel: Option<&str>,
    arch: &str,
    subject: Option<String>,
    not_after: Option<i64>,
) -> GatewayRecord {
    let mut record = new_gateway(name, fp.clone());
    record.certificates = vec![GatewayCertificate::new(fp, not_after, Some(clock::unix_now()))];
    record.channel = channel.map(str::to_string);
    record.arch = (arch != DEFAULT_ARCH).then(|| arch.to_string());
    record.subject = subject;
    record
}

async fn register(ctx: &Deployment, record: &GatewayRecord) -> Result<(), OpError> {
    match ctx.records.enroll(record).await {
        Err(RecordError::AlreadyEnrolled(fp)) => {
            Err(OpError::Refused(format!("this certificate ({fp}) is enrolled already")))
        }
        other => Ok(other?),
    }
}

/// Where `enroll` wrote the new gateway's certificate and key.
pub struct Enrolled {
    pub fingerprint: Fingerprint,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    /// The ECDSA CA was created (and trusted) for this enrollment.
    pub created_ecdsa_ca: bool,
}

/// Issues a client certificate with the local CA and enrolls a new gateway with it.
pub async fn enroll(
    ctx: &Deployment,
    name: &str,
    channel: Option<&str>,
    days: u32,
    arch: &str,
    key_type: KeyType,
) -> Result<Enrolled, OpError> {
    check_new_gateway(ctx, name, channel, arch).await?;
    let (cert_path, key_path) = (ctx.dir.gateway_cert(name), ctx.dir.gateway_key(name));
    for path in [&cert_path, &key_path] {
        if path.exists() {
            return Err(OpError::Refused(format!("{} exists already; refusing to overwrite it", path.display())));
        }
    }
    let created_ecdsa_ca =
        key_type == KeyType::EcdsaP256 && super::ca::ensure_ecdsa(&ctx.dir, &ctx.records, super::ca::CA_DAYS).await?;
    let ca = super::ca::load_for(&ctx.dir, key_type)?;
    let issued = ca.issue_client_with(name, validity_days(days), key_type).map_err(|e| OpError::Pki(e.to_string()))?;
    let fp = Fingerprint::of_der(&issued.cert_der);
    let not_after = identity::not_after_der(&issued.cert_der);
    let record = new_record(name, fp.clone(), channel, arch, describe_der(&issued.cert_der).map(|(s, _)| s), not_after);
    write_atomic(&key_path, issued.key_pem.as_bytes(), 0o600)?;
    write_atomic(&cert_path, issued.cert_pem.as_bytes(), 0o600)?;
    register(ctx, &record).await?;
    Ok(Enrolled { fingerprint: fp, cert_path, key_path, created_ecdsa_ca })
}

/// Enrolls an existing certificate that chains to the trust bundle.
pub async fn import(
    ctx: &Deployment,
    name: &str,
    cert: &Path,
    channel: Option<&str>,
    arch: &str,
) -> Result<Fingerprint, OpError> {
    check_new_gateway(ctx, name, channel, arch).await?;
    let pem = std::fs::read(cert).map_err(file_error(cert))?;
    let verifier = ChainVerifier::new(super::ca::bundle(ctx).await?, DEFAULT_CLOCK_SKEW);
    let identity = verifier
        .verify_pem(&pem, clock::unix_now() as i64)
        .map_err(|e| OpError::Refused(format!("{}: {e}", cert.display())))?;
    let record = new_record(
        name,
        identity.fingerprint.clone(),
        channel,
        arch,
        Some(identity.subject.clone()),
        Some(identity.not_after),
    );
    register(ctx, &record).await?;
    // Keep a copy beside the ones we issue, so `gateway show` and image builds find it.
    let leaf = pem_certificates(&pem)?.remove(0);
    write_atomic(&ctx.dir.gateway_cert(name), identity::der_to_pem(&leaf).as_bytes(), 0o600)?;
    Ok(identity.fingerprint)
}

/// Changes the record of gateway `name` with one conditional read-modify-write.
pub async fn update(
    ctx: &Deployment,
    name: &str,
    change: impl FnMut(&mut GatewayRecord) -> Result<(), OpError>,
) -> Result<GatewayRecord, OpError> {
    let record = ctx.gateway(name).await?;
    ctx.records
        .update_gateway(&record.fingerprint, change)
        .await?
        .ok_or_else(|| OpError::Refused(format!("gateway {name} vanished")))
}

/// What a state change did to the gateway's scratch keys.
pub enum ScratchKeysChanged {
    /// This many keys were revoked, suspended or reactivated.
    Keys(usize),
    /// A bucket deployment without `--scratch-bucket`: its keys were left as they were.
    NotReachable,
}

/// Enables, disables or revokes a gateway; its scratch keys follow (suspended while disabled,
/// deleted on revoke).
pub async fn set_state(ctx: &Deployment, name: &str, state: GatewayState) -> Result<ScratchKeysChanged, OpError> {
    update(ctx, name, |r| {
        if state == GatewayState::Enabled && r.state == GatewayState::Revoked {
            return Err(OpError::Refused(format!("gateway {name} is revoked; enroll a new certificate instead")));
        }
        r.state = state;
        Ok(())
    })
    .await?;
    let Some(keys) = ctx.scratch()? else { return Ok(ScratchKeysChanged::NotReachable) };
    Ok(ScratchKeysChanged::Keys(match state {
        GatewayState::Revoked => keys.revoke_all(name).await?,
        GatewayState::Disabled => keys.set_suspended(name, true).await?,
        GatewayState::Enabled => keys.set_suspended(name, false).await?,
    }))
}

/// Pins a gateway to a release that serves its architecture, or (`None`) lets it follow its
/// channel again. Returns the gateway's record as it was before.
pub async fn pin(ctx: &Deployment, name: &str, release: Option<&str>) -> Result<GatewayRecord, OpError> {
    let record = ctx.gateway(name).await?;
    if let Some(release) = release {
        release_serves(ctx, release, record.arch()).await?;
        // A gateway of a channel that requires signed kernels is one whose firmware enforces
        // Secure Boot: a pin must not hand it what it would refuse.
        let channel = record.channel();
        if let Some(required) = ctx.records.channel(channel).await?.and_then(|c| c.require_signed) {
            if let Some(manifest) = ctx.records.release(release).await? {
                super::release::check_signed_by(&manifest, &required).map_err(|e| {
                    OpError::Refused(format!(
                        "gateway {name} follows channel {channel}, which requires signed kernels: {e}"
                    ))
                })?;
            }
        }
    }
    update(ctx, name, |r| {
        r.pinned_release = release.map(str::to_string);
        Ok(())
    })
    .await?;
    Ok(record)
}

/// What `set_secrets` stored.
pub struct SecretsStored {
    pub bytes: usize,
    /// The secrets use scratch storage (`${s3_access_key}` and friends).
    pub uses_scratch: bool,
    /// Variables the secrets name that neither the gateway nor the service defines.
    pub unknown_variables: Vec<String>,
}

/// Stores a gateway's secrets (at most 64 KiB, not empty), read from `file` or `-` (stdin).
pub async fn set_secrets(ctx: &Deployment, name: &str, file: &Path) -> Result<SecretsStored, OpError> {
    let record = ctx.gateway(name).await?;
    let mut secrets = Vec::new();
    if file == Path::new("-") {
        std::io::stdin().take(MAX_SECRETS_BYTES as u64 + 1).read_to_end(&mut secrets).map_err(file_error(file))?;
    } else {
        std::fs::File::open(file)
            .and_then(|f| f.take(MAX_SECRETS_BYTES as u64 + 1).read_to_end(&mut secrets))
            .map_err(file_error(file))?;
    }
    if secrets.is_empty() {
        return Err(OpError::Invalid("the secrets are empty".into()));
    }
    if secrets.len() > MAX_SECRETS_BYTES {
        return Err(OpError::Invalid(format!("the secrets are larger than {MAX_SECRETS_BYTES} bytes")));
    }
    let len = secrets.len();
    let unknown = secret_template::unknown_variables(&secrets, &record.vars);
    let scratch = secret_template::uses_scratch(&secrets);
    ctx.records.put_secrets(&record.fingerprint, secrets).await?;
    Ok(SecretsStored {
        bytes: len,
        uses_scratch: scratch,
        unknown_variables: unknown.iter().map(|v| v.to_string()).collect(),
    })
}

/// What `retry` cleared.
pub struct Retried {
    /// Failures or a fallback were recorded, and are cleared now.
    pub cleared: bool,
    /// The release the gateway was falling back to, if it was.
    pub fallback: Option<String>,
}

/// Gives the gateway's target another chance: clears its fallback and failure count in the
/// boot journal, in one conditional write.
pub async fn retry(ctx: &Deployment, gateway: &GatewayRecord) -> Result<Retried, OpError> {
    let journal = ctx.journal()?;
    let (cleared, fallback) = update_journal(&*journal, &gateway.fingerprint, |state| {
        Ok::<_, OpError>((state.retry(), vec![], (state.failures > 0 || state.in_fallback(), state.fallback.clone())))
    })
    .await?;
    Ok(Retried { cleared, fallback })
}
