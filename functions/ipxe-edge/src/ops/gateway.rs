//! `ipxe-edge gateway …`: enrollment, state, pins and secrets of gateways.

use super::context::{file_error, CliError, Context};
use crate::datadir::write_atomic;
use ipxe_edge_core::boot::read_json;
use ipxe_edge_core::identity::{describe_der, pem_certificates, ChainVerifier, Fingerprint};
use ipxe_edge_core::model::{layout, new_gateway, valid_name, GatewayRecord, GatewayState, ReleaseManifest};
use ipxe_edge_core::pki::validity_days;
use ipxe_edge_core::publish;
use ipxe_edge_core::query::KNOWN_ARCHES;
use ipxe_edge_core::store::{StoreError, WriteCondition};
use std::io::Read;
use std::path::Path;

/// Largest secrets object accepted (b2c reads it as a kernel command line).
const MAX_SECRETS_BYTES: usize = 64 * 1024;

fn check_new_name(name: &str) -> Result<(), CliError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(CliError::Usage(format!("invalid gateway name {name:?}: use 1-64 characters of [A-Za-z0-9._-]")))
    }
}

fn check_arch(arch: &str) -> Result<(), CliError> {
    if KNOWN_ARCHES.contains(&arch) {
        Ok(())
    } else {
        Err(CliError::Usage(format!("invalid architecture {arch:?}: one of {}", KNOWN_ARCHES.join(", "))))
    }
}

pub async fn release_serves(ctx: &Context, release: &str, arch: &str) -> Result<ReleaseManifest, CliError> {
    let manifest: ReleaseManifest = read_json(ctx.store.as_ref(), &layout::release(release))
        .await?
        .ok_or_else(|| CliError::Usage(format!("unknown release {release:?} (see: ipxe-edge release list)")))?;
    if manifest.assets_for(arch, None).is_none() && !manifest.arches.keys().any(|k| k.starts_with(&format!("{arch}-"))) {
        return Err(CliError::Usage(format!("release {release} has no assets for architecture {arch}")));
    }
    Ok(manifest)
}

async fn check_channel(ctx: &Context, channel: &str) -> Result<(), CliError> {
    if publish::get_channel(ctx.store.as_ref(), channel).await?.is_none() {
        return Err(CliError::Usage(format!("unknown channel {channel:?} (create it with: ipxe-edge channel promote {channel} RELEASE)")));
    }
    Ok(())
}

async fn register(ctx: &Context, record: &GatewayRecord) -> Result<(), CliError> {
    let body = serde_json::to_vec_pretty(record).expect("record serialises");
    match ctx.store.put(&layout::gateway(&record.fingerprint), body, WriteCondition::Absent).await {
        Ok(()) => Ok(()),
        Err(StoreError::Conflict(_)) => Err(CliError::Usage(format!("this certificate ({}) is enrolled already", record.fingerprint))),
        Err(e) => Err(e.into()),
    }
}

async fn ensure_name_free(ctx: &Context, name: &str) -> Result<(), CliError> {
    if ctx.gateways().await?.iter().any(|g| g.name == name) {
        return Err(CliError::Usage(format!("a gateway named {name:?} is enrolled already")));
    }
    Ok(())
}

pub async fn enroll(ctx: &Context, name: &str, channel: Option<&str>, days: u32, arch: &str) -> Result<(), CliError> {
    check_new_name(name)?;
    check_arch(arch)?;
    if let Some(c) = channel {
        check_channel(ctx, c).await?;
    }
    ensure_name_free(ctx, name).await?;
    let (cert_path, key_path) = (ctx.dir.gateway_cert(name), ctx.dir.gateway_key(name));
    for path in [&cert_path, &key_path] {
        if path.exists() {
            return Err(CliError::Usage(format!("{} exists already; refusing to overwrite it", path.display())));
        }
    }
    let ca = super::ca::load(&ctx.dir)?;
    let issued = ca.issue_client(name, validity_days(days)).map_err(|e| CliError::Pki(e.to_string()))?;
    let fp = Fingerprint::of_der(&issued.cert_der);
    let mut record = new_gateway(name, fp.clone());
    record.channel = channel.map(str::to_string);
    record.arch = (arch != ipxe_edge_core::model::DEFAULT_ARCH).then(|| arch.to_string());
    record.subject = describe_der(&issued.cert_der).map(|(s, _)| s);
    write_atomic(&key_path, issued.key_pem.as_bytes(), 0o600)?;
    write_atomic(&cert_path, issued.cert_pem.as_bytes(), 0o644)?;
    register(ctx, &record).await?;
    println!("enrolled gateway {name} ({fp})");
    println!("certificate {}  key {} (0600: whoever holds it boots as {name})", cert_path.display(), key_path.display());
    Ok(())
}

pub async fn import(ctx: &Context, name: &str, cert: &Path, channel: Option<&str>, arch: &str) -> Result<Fingerprint, CliError> {
    check_new_name(name)?;
    check_arch(arch)?;
    if let Some(c) = channel {
        check_channel(ctx, c).await?;
    }
    ensure_name_free(ctx, name).await?;
    let pem = std::fs::read(cert).map_err(file_error(cert))?;
    let verifier = ChainVerifier::new(super::ca::bundle(ctx.store.as_ref()).await?, 60);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let identity = verifier.verify_pem(&pem, now).map_err(|e| CliError::Usage(format!("{}: {e}", cert.display())))?;
    let mut record = new_gateway(name, identity.fingerprint.clone());
    record.channel = channel.map(str::to_string);
    record.arch = (arch != ipxe_edge_core::model::DEFAULT_ARCH).then(|| arch.to_string());
    record.subject = Some(identity.subject.clone());
    register(ctx, &record).await?;
    // Keep a copy beside the ones we issue, so `gateway show` and image builds find it.
    let leaf = pem_certificates(&pem)?.remove(0);
    write_atomic(&ctx.dir.gateway_cert(name), ipxe_edge_core::identity::der_to_pem(&leaf).as_bytes(), 0o644)?;
    println!("imported gateway {name} ({})", identity.fingerprint);
    Ok(identity.fingerprint)
}

/// Changes a gateway record with a conditional write, retrying on concurrent changes.
async fn update(ctx: &Context, name: &str, change: impl Fn(&mut GatewayRecord)) -> Result<GatewayRecord, CliError> {
    for _ in 0..5 {
        let record = ctx.gateway(name).await?;
        let key = layout::gateway(&record.fingerprint);
        let current = ctx.store.get(&key).await?.ok_or_else(|| CliError::Usage(format!("gateway {name} vanished")))?;
        let mut next = record.clone();
        change(&mut next);
        let condition = current.etag.map(WriteCondition::Matches).unwrap_or(WriteCondition::Always);
        match ctx.store.put(&key, serde_json::to_vec_pretty(&next).expect("record serialises"), condition).await {
            Ok(()) => return Ok(next),
            Err(StoreError::Conflict(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(StoreError::Conflict(format!("gateway {name}")).into())
}

pub async fn list(ctx: &Context) -> Result<(), CliError> {
    let gateways = ctx.gateways().await?;
    println!("{:<24} {:<18} {:<28} {:<9} {}", "NAME", "FINGERPRINT", "CHANNEL/PIN", "STATE", "LAST BOOT");
    for g in gateways {
        let target = match &g.pinned_release {
            Some(pin) => format!("pin:{pin}"),
            None => g.channel().to_string(),
        };
        let state = match g.state {
            GatewayState::Enabled => "enabled",
            GatewayState::Disabled => "disabled",
            GatewayState::Revoked => "revoked",
        };
        println!("{:<24} {:<18} {:<28} {:<9} {}", g.name, &g.fingerprint.as_str()[..16], target, state, "-");
    }
    Ok(())
}

pub async fn show(ctx: &Context, name: &str) -> Result<(), CliError> {
    let record = ctx.gateway(name).await?;
    println!("{}", serde_json::to_string_pretty(&record).expect("record serialises"));
    let has_secrets = ctx.store.exists(&layout::secrets(&record.fingerprint)).await?;
    println!("secrets: {}", if has_secrets { "set" } else { "none" });
    Ok(())
}

pub async fn set_state(ctx: &Context, name: &str, state: GatewayState) -> Result<(), CliError> {
    update(ctx, name, |r| r.state = state).await?;
    println!("gateway {name} is now {}", match state {
        GatewayState::Enabled => "enabled",
        GatewayState::Disabled => "disabled (boots refused)",
        GatewayState::Revoked => "revoked (boots refused)",
    });
    Ok(())
}

pub async fn pin(ctx: &Context, name: &str, release: Option<&str>) -> Result<(), CliError> {
    let record = ctx.gateway(name).await?;
    if let Some(release) = release {
        release_serves(ctx, release, record.arch()).await?;
    }
    update(ctx, name, |r| r.pinned_release = release.map(str::to_string)).await?;
    match release {
        Some(r) => println!("gateway {name} pinned to release {r}"),
        None => println!("gateway {name} follows channel {} again", record.channel()),
    }
    Ok(())
}

pub async fn set_secrets(ctx: &Context, name: &str, file: &Path) -> Result<(), CliError> {
    let record = ctx.gateway(name).await?;
    let mut secrets = Vec::new();
    if file == Path::new("-") {
        std::io::stdin().take(MAX_SECRETS_BYTES as u64 + 1).read_to_end(&mut secrets).map_err(file_error(file))?;
    } else {
        std::fs::File::open(file).and_then(|f| f.take(MAX_SECRETS_BYTES as u64 + 1).read_to_end(&mut secrets)).map_err(file_error(file))?;
    }
    if secrets.is_empty() {
        return Err(CliError::Usage("the secrets are empty".into()));
    }
    if secrets.len() > MAX_SECRETS_BYTES {
        return Err(CliError::Usage(format!("the secrets are larger than {MAX_SECRETS_BYTES} bytes")));
    }
    publish::put_secrets(ctx.store.as_ref(), &record.fingerprint, secrets.clone()).await?;
    println!("stored {} bytes of secrets for gateway {name}", secrets.len());
    Ok(())
}
