//! `ipxe-edge gateway …`: enrollment, state, pins and secrets of gateways.

use super::context::{check_name, file_error, CliError, Context};
use crate::datadir::write_atomic;
use crate::renewal;
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
use ipxe_edge_pki::validity_days;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Largest secrets object accepted (b2c reads it as a kernel command line).
const MAX_SECRETS_BYTES: usize = 64 * 1024;

#[derive(clap::Subcommand)]
pub enum GatewayCommand {
    /// Issue a client certificate (RSA 2048, clientAuth) for a new gateway and enroll it.
    ///
    /// Writes DIR/pki/gateways/NAME.crt and NAME.key (0600). Whoever holds the key boots as the
    /// gateway: build it into the gateway's image and keep it secret.
    ///
    /// Example: ipxe-edge gateway enroll gw-berlin-1 --channel canary --days 730
    Enroll {
        name: String,
        #[arg(long)]
        channel: Option<String>,
        /// Validity of the certificate in days (1 to 3650).
        #[arg(long, default_value_t = crate::renewal::DEFAULT_DAYS, value_parser = clap::value_parser!(u32).range(1..=ipxe_edge_pki::MAX_VALIDITY_DAYS as i64))]
        days: u32,
        /// The gateway's architecture (checked against releases it is given).
        #[arg(long, default_value = DEFAULT_ARCH)]
        arch: String,
    },
    /// Enroll an existing certificate (it must chain to the trust bundle; v1 certificates work).
    ///
    /// Example: ipxe-edge gateway import gw-old --cert ci-gateway-old.iso.crt
    Import {
        name: String,
        #[arg(long)]
        cert: PathBuf,
        #[arg(long)]
        channel: Option<String>,
        #[arg(long, default_value = DEFAULT_ARCH)]
        arch: String,
    },
    /// Table of gateways: name, fingerprint prefix, channel or pin, state, certificate expiry
    /// and days left.
    ///
    /// Example: ipxe-edge gateway list --expiring-within 60d
    List {
        /// Only gateways whose certificate expires within this window (60d, 12h, seconds);
        /// exits 0 either way: read the output.
        #[arg(long, value_parser = crate::renewal::parse_window)]
        expiring_within: Option<std::time::Duration>,
        /// One JSON object per line: name, fingerprint, not_after, days_left, renewal_pending.
        #[arg(long)]
        json: bool,
    },
    /// A gateway's record, with each certificate's expiry and days left.
    ///
    /// Example: ipxe-edge gateway show gw-berlin-1
    Show { name: String },
    /// Issue a new certificate with the local CA, enroll it beside the old one and stage it
    /// for the gateway to fetch once through ${renewal_url} in its secrets.
    ///
    /// Example: ipxe-edge gateway renew --expiring-within 60d --boot-url https://boot.example.org/boot.ipxe
    Renew(super::renew::RenewArgs),
    /// Retire one certificate of a gateway (the old one after a renewal, or a leaked one).
    ///
    /// Example: ipxe-edge gateway revoke-cert gw-berlin-1 3f2a9c…
    RevokeCert {
        name: String,
        /// The certificate's SHA-256 fingerprint (64 hex digits, or a unique prefix of 12 or more).
        fingerprint: String,
    },
    /// Refuse every boot of this gateway from now on (a stolen or retired image).
    ///
    /// Example: ipxe-edge gateway revoke gw-berlin-1
    Revoke { name: String },
    /// Let a disabled gateway boot again (revoked gateways must be re-enrolled).
    ///
    /// Example: ipxe-edge gateway enable gw-berlin-1
    Enable { name: String },
    /// Refuse boots for now, without revoking the certificate.
    ///
    /// Example: ipxe-edge gateway disable gw-berlin-1
    Disable { name: String },
    /// Boot this gateway from RELEASE whatever its channel says (canary, hold).
    ///
    /// Example: ipxe-edge gateway pin gw-berlin-1 2026-11-26.1
    Pin { name: String, release: String },
    /// Follow the channel again.
    ///
    /// Example: ipxe-edge gateway unpin gw-berlin-1
    Unpin { name: String },
    /// Store the gateway's secrets (kernel-cmdline syntax, served once per boot). Never echoed.
    ///
    /// Example: ipxe-edge gateway set-secrets gw-berlin-1 --file - < secrets.txt
    SetSecrets {
        name: String,
        /// File to read, or - for standard input.
        #[arg(long)]
        file: PathBuf,
    },
    /// The gateway's latest boots: release, why, outcome, time to Linux and to check-in.
    ///
    /// Example: ipxe-edge gateway history gw-berlin-1 --limit 10
    History {
        name: String,
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=10_000))]
        limit: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The gateway's target, last known good release, fallback state and consecutive failures.
    ///
    /// Example: ipxe-edge gateway status gw-berlin-1
    Status {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// The gateway's scratch space (objects, bytes) and its live key; --revoke-keys kills them.
    ///
    /// Example: ipxe-edge gateway scratch gw-berlin-1 --revoke-keys
    Scratch {
        name: String,
        /// Revoke the gateway's live scratch keys now (the next redemption mints a new one).
        #[arg(long)]
        revoke_keys: bool,
        #[arg(long, conflicts_with = "revoke_keys")]
        json: bool,
    },
    /// Give the gateway's target another chance: clears its fallback and failure count.
    ///
    /// Example: ipxe-edge gateway retry gw-berlin-1
    Retry { name: String },
}

pub async fn run(ctx: &Context, command: GatewayCommand) -> Result<(), CliError> {
    match command {
        GatewayCommand::Enroll { name, channel, days, arch } => {
            enroll(ctx, &name, channel.as_deref(), days, &arch).await
        }
        GatewayCommand::Import { name, cert, channel, arch } => {
            import(ctx, &name, &cert, channel.as_deref(), &arch).await.map(|_| ())
        }
        GatewayCommand::List { expiring_within, json } => list(ctx, expiring_within, json).await,
        GatewayCommand::Renew(args) => super::renew::renew(ctx, args).await,
        GatewayCommand::RevokeCert { name, fingerprint } => super::renew::revoke_cert(ctx, &name, &fingerprint).await,
        GatewayCommand::Show { name } => show(ctx, &name).await,
        GatewayCommand::Revoke { name } => set_state(ctx, &name, GatewayState::Revoked).await,
        GatewayCommand::Disable { name } => set_state(ctx, &name, GatewayState::Disabled).await,
        GatewayCommand::Enable { name } => set_state(ctx, &name, GatewayState::Enabled).await,
        GatewayCommand::Pin { name, release } => pin(ctx, &name, Some(&release)).await,
        GatewayCommand::Unpin { name } => pin(ctx, &name, None).await,
        GatewayCommand::SetSecrets { name, file } => set_secrets(ctx, &name, &file).await,
        GatewayCommand::History { name, limit, json } => {
            super::outcomes::history(ctx, &name, limit as usize, json).await
        }
        GatewayCommand::Status { name, json } => super::outcomes::status(ctx, &name, json).await,
        GatewayCommand::Retry { name } => super::outcomes::retry(ctx, &name).await,
        GatewayCommand::Scratch { name, revoke_keys, json } => {
            super::scratch::scratch(ctx, &name, revoke_keys, json).await
        }
    }
}

fn check_arch(arch: &str) -> Result<(), CliError> {
    if KNOWN_ARCHES.contains(&arch) {
        Ok(())
    } else {
        Err(CliError::Usage(format!("invalid architecture {arch:?}: one of {}", KNOWN_ARCHES.join(", "))))
    }
}

/// The release, if it serves architecture `arch`.
pub async fn release_serves(ctx: &Context, release: &str, arch: &str) -> Result<ReleaseManifest, CliError> {
    check_name("release id", release)?;
    let manifest = ctx
        .records
        .release(release)
        .await?
        .ok_or_else(|| CliError::Refused(format!("unknown release {release:?} (see: ipxe-edge release list)")))?;
    if manifest.assets_for(arch, None).is_none() && !manifest.arches.keys().any(|k| k.starts_with(&format!("{arch}-")))
    {
        return Err(CliError::Refused(format!("release {release} has no assets for architecture {arch}")));
    }
    Ok(manifest)
}

async fn check_channel(ctx: &Context, channel: &str) -> Result<(), CliError> {
    check_name("channel name", channel)?;
    if ctx.records.channel(channel).await?.is_none() {
        return Err(CliError::Refused(format!(
            "unknown channel {channel:?} (create it with: ipxe-edge channel promote {channel} RELEASE)"
        )));
    }
    Ok(())
}

/// Checks what an enrollment needs before anything is written.
async fn check_new_gateway(ctx: &Context, name: &str, channel: Option<&str>, arch: &str) -> Result<(), CliError> {
    check_name("gateway name", name)?;
    check_arch(arch)?;
    if let Some(c) = channel {
        check_channel(ctx, c).await?;
    }
    if ctx.records.gateway_by_name(name).await?.is_some() {
        return Err(CliError::Refused(format!("a gateway named {name:?} is enrolled already")));
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

async fn register(ctx: &Context, record: &GatewayRecord) -> Result<(), CliError> {
    match ctx.records.enroll(record).await {
        Err(RecordError::AlreadyEnrolled(fp)) => {
            Err(CliError::Refused(format!("this certificate ({fp}) is enrolled already")))
        }
        other => Ok(other?),
    }
}

pub async fn enroll(ctx: &Context, name: &str, channel: Option<&str>, days: u32, arch: &str) -> Result<(), CliError> {
    check_new_gateway(ctx, name, channel, arch).await?;
    let (cert_path, key_path) = (ctx.dir.gateway_cert(name), ctx.dir.gateway_key(name));
    for path in [&cert_path, &key_path] {
        if path.exists() {
            return Err(CliError::Refused(format!("{} exists already; refusing to overwrite it", path.display())));
        }
    }
    let ca = super::ca::load(&ctx.dir)?;
    let issued = ca.issue_client(name, validity_days(days)).map_err(|e| CliError::Pki(e.to_string()))?;
    let fp = Fingerprint::of_der(&issued.cert_der);
    let not_after = identity::not_after_der(&issued.cert_der);
    let record = new_record(name, fp.clone(), channel, arch, describe_der(&issued.cert_der).map(|(s, _)| s), not_after);
    write_atomic(&key_path, issued.key_pem.as_bytes(), 0o600)?;
    write_atomic(&cert_path, issued.cert_pem.as_bytes(), 0o600)?;
    register(ctx, &record).await?;
    println!("enrolled gateway {name} ({fp})");
    println!(
        "certificate {}  key {} (0600: whoever holds it boots as {name})",
        cert_path.display(),
        key_path.display()
    );
    Ok(())
}

pub async fn import(
    ctx: &Context,
    name: &str,
    cert: &Path,
    channel: Option<&str>,
    arch: &str,
) -> Result<Fingerprint, CliError> {
    check_new_gateway(ctx, name, channel, arch).await?;
    let pem = std::fs::read(cert).map_err(file_error(cert))?;
    let verifier = ChainVerifier::new(super::ca::bundle(ctx).await?, DEFAULT_CLOCK_SKEW);
    let identity = verifier
        .verify_pem(&pem, clock::unix_now() as i64)
        .map_err(|e| CliError::Refused(format!("{}: {e}", cert.display())))?;
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
    println!("imported gateway {name} ({})", identity.fingerprint);
    Ok(identity.fingerprint)
}

/// Changes the record of gateway `name` with one conditional read-modify-write.
async fn update(
    ctx: &Context,
    name: &str,
    change: impl FnMut(&mut GatewayRecord) -> Result<(), CliError>,
) -> Result<GatewayRecord, CliError> {
    let record = ctx.gateway(name).await?;
    ctx.records
        .update_gateway(&record.fingerprint, change)
        .await?
        .ok_or_else(|| CliError::Refused(format!("gateway {name} vanished")))
}

fn state_name(state: GatewayState) -> &'static str {
    match state {
        GatewayState::Enabled => "enabled",
        GatewayState::Disabled => "disabled",
        GatewayState::Revoked => "revoked",
    }
}

pub async fn list(ctx: &Context, expiring_within: Option<std::time::Duration>, json: bool) -> Result<(), CliError> {
    let now = clock::unix_now();
    let standings = renewal::standings(&ctx.records).await?;
    let shown = standings.iter().filter(|s| expiring_within.is_none_or(|w| s.expires_within(w, now)));
    if json {
        for s in shown {
            let line = serde_json::json!({
                "name": s.gateway.name,
                "fingerprint": s.holds.fingerprint.as_str(),
                "not_after": s.holds.not_after,
                "days_left": s.days_left(now),
                "renewal_pending": s.pending,
                "state": state_name(s.gateway.state),
            });
            println!("{line}");
        }
        return Ok(());
    }
    println!(
        "{:<24} {:<18} {:<28} {:<9} {:<11} {:>9}  RENEWAL",
        "NAME", "FINGERPRINT", "CHANNEL/PIN", "STATE", "EXPIRES", "DAYS LEFT"
    );
    for s in shown {
        let g = &s.gateway;
        let target = match &g.pinned_release {
            Some(pin) => format!("pin:{pin}"),
            None => g.channel().to_string(),
        };
        println!(
            "{:<24} {:<18} {:<28} {:<9} {:<11} {:>9}  {}",
            g.name,
            &s.holds.fingerprint.as_str()[..16],
            target,
            state_name(g.state),
            s.holds.not_after.map(renewal::date).unwrap_or_else(|| "-".into()),
            renewal::days_cell(s.days_left(now)),
            if s.pending { "pending" } else { "-" },
        );
    }
    Ok(())
}

pub async fn show(ctx: &Context, name: &str) -> Result<(), CliError> {
    let record = ctx.gateway(name).await?;
    let now = clock::unix_now();
    println!("{}", serde_json::to_string_pretty(&record).expect("record serialises"));
    let standing = renewal::standing(&ctx.records, record.clone()).await?;
    println!("certificates:");
    for cert in record.certificates() {
        let role = if cert.fingerprint == standing.holds.fingerprint {
            "held"
        } else if standing.pending
            && cert.renews.is_some()
            && cert.first_boot_at.is_none()
            && cert.not_after > standing.holds.not_after
        {
            "pending renewal"
        } else {
            "accepted"
        };
        println!(
            "  {}  expires {}  days left {}  ({role})",
            cert.fingerprint,
            cert.not_after.map(renewal::date).unwrap_or_else(|| "-".into()),
            renewal::days_cell(cert.days_left(now)),
        );
    }
    let has_secrets = ctx.records.has_secrets(&record.fingerprint).await?;
    println!("secrets: {}", if has_secrets { "set" } else { "none" });
    println!("renewal: {}", if standing.pending { "pending (fetched once through ${renewal_url})" } else { "none" });
    Ok(())
}

pub async fn set_state(ctx: &Context, name: &str, state: GatewayState) -> Result<(), CliError> {
    update(ctx, name, |r| {
        if state == GatewayState::Enabled && r.state == GatewayState::Revoked {
            return Err(CliError::Refused(format!("gateway {name} is revoked; enroll a new certificate instead")));
        }
        r.state = state;
        Ok(())
    })
    .await?;
    match state {
        GatewayState::Revoked => {
            let revoked = super::scratch::revoke_all(ctx, name).await?;
            if revoked > 0 {
                println!("revoked {revoked} scratch key(s) of gateway {name}");
            }
        }
        GatewayState::Disabled | GatewayState::Enabled => {
            let suspended = state == GatewayState::Disabled;
            let changed = super::scratch::set_suspended(ctx, name, suspended).await?;
            if changed > 0 {
                println!(
                    "{} {changed} scratch key(s) of gateway {name}",
                    if suspended { "suspended" } else { "reactivated" }
                );
            }
        }
    }
    println!(
        "gateway {name} is now {}",
        match state {
            GatewayState::Enabled => "enabled",
            GatewayState::Disabled => "disabled (boots refused)",
            GatewayState::Revoked => "revoked (boots refused)",
        }
    );
    Ok(())
}

pub async fn pin(ctx: &Context, name: &str, release: Option<&str>) -> Result<(), CliError> {
    let record = ctx.gateway(name).await?;
    if let Some(release) = release {
        release_serves(ctx, release, record.arch()).await?;
    }
    update(ctx, name, |r| {
        r.pinned_release = release.map(str::to_string);
        Ok(())
    })
    .await?;
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
        std::fs::File::open(file)
            .and_then(|f| f.take(MAX_SECRETS_BYTES as u64 + 1).read_to_end(&mut secrets))
            .map_err(file_error(file))?;
    }
    if secrets.is_empty() {
        return Err(CliError::Usage("the secrets are empty".into()));
    }
    if secrets.len() > MAX_SECRETS_BYTES {
        return Err(CliError::Usage(format!("the secrets are larger than {MAX_SECRETS_BYTES} bytes")));
    }
    let len = secrets.len();
    let unknown = secret_template::unknown_variables(&secrets, &record.vars);
    let scratch = secret_template::uses_scratch(&secrets);
    ctx.records.put_secrets(&record.fingerprint, secrets).await?;
    println!("stored {len} bytes of secrets for gateway {name}");
    if scratch {
        println!("uses scratch storage: each redemption mints a new key to the gateway's own space and revokes the previous one");
    }
    if !unknown.is_empty() {
        let names: Vec<String> = unknown.iter().map(|v| format!("${{{v}}}")).collect();
        eprintln!("warning: no value for {}: served as written (set gateway vars or fix the names)", names.join(", "));
    }
    Ok(())
}
