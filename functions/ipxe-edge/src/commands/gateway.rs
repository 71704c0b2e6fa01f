//! `ipxe-edge gateway …`: enrollment, state, pins and secrets of gateways.

use crate::ops::gateway::{self, ScratchKeysChanged};
use crate::ops::renewal;
use crate::ops::{Deployment, OpError};
use ipxe_edge_core::domain::clock;
use ipxe_edge_core::domain::model::{GatewayState, DEFAULT_ARCH};
use ipxe_edge_pki::KeyType;
use std::path::{Path, PathBuf};

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
        #[arg(long, default_value_t = crate::ops::renewal::DEFAULT_DAYS, value_parser = clap::value_parser!(u32).range(1..=ipxe_edge_pki::MAX_VALIDITY_DAYS as i64))]
        days: u32,
        /// The gateway's architecture (checked against releases it is given).
        #[arg(long, default_value = DEFAULT_ARCH)]
        arch: String,
        /// The gateway's key: rsa-2048 (every iPXE) or ecdsa-p256 (iPXE 2.0 and newer: a
        /// fraction of the handshake cost).
        #[arg(long, default_value = "rsa-2048", value_parser = super::parse_key_type)]
        key: KeyType,
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
        #[arg(long, value_parser = crate::ops::renewal::parse_window)]
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

pub async fn run(ctx: &Deployment, command: GatewayCommand) -> Result<(), OpError> {
    match command {
        GatewayCommand::Enroll { name, channel, days, arch, key } => {
            let enrolled = gateway::enroll(ctx, &name, channel.as_deref(), days, &arch, key).await?;
            if enrolled.created_ecdsa_ca {
                println!("created the ECDSA CA {} and added it to the trust bundle (restart serve, or upload the bundle: ipxe-edge ca truststore)", ctx.dir.ca_ecdsa_cert().display());
            }
            println!("enrolled gateway {name} ({})", enrolled.fingerprint);
            println!(
                "certificate {}  key {} (0600: whoever holds it boots as {name})",
                enrolled.cert_path.display(),
                enrolled.key_path.display()
            );
            Ok(())
        }
        GatewayCommand::Import { name, cert, channel, arch } => {
            import(ctx, &name, &cert, channel.as_deref(), &arch).await
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
            super::journal::history(ctx, &name, limit as usize, json).await
        }
        GatewayCommand::Status { name, json } => super::journal::status(ctx, &name, json).await,
        GatewayCommand::Retry { name } => super::journal::retry(ctx, &name).await,
        GatewayCommand::Scratch { name, revoke_keys, json } => {
            super::scratch::scratch(ctx, &name, revoke_keys, json).await
        }
    }
}

fn state_name(state: GatewayState) -> &'static str {
    match state {
        GatewayState::Enabled => "enabled",
        GatewayState::Disabled => "disabled",
        GatewayState::Revoked => "revoked",
    }
}

pub async fn list(ctx: &Deployment, expiring_within: Option<std::time::Duration>, json: bool) -> Result<(), OpError> {
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

pub async fn show(ctx: &Deployment, name: &str) -> Result<(), OpError> {
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
    let has_secrets = ctx.records.has_secrets(&record).await?;
    println!("secrets: {}", if has_secrets { "set" } else { "none" });
    println!("renewal: {}", if standing.pending { "pending (fetched once through ${renewal_url})" } else { "none" });
    Ok(())
}

pub async fn import(
    ctx: &Deployment,
    name: &str,
    cert: &Path,
    channel: Option<&str>,
    arch: &str,
) -> Result<(), OpError> {
    let fingerprint = gateway::import(ctx, name, cert, channel, arch).await?;
    println!("imported gateway {name} ({fingerprint})");
    Ok(())
}

pub async fn set_state(ctx: &Deployment, name: &str, state: GatewayState) -> Result<(), OpError> {
    let verb = match state {
        GatewayState::Revoked => "revoked",
        GatewayState::Disabled => "suspended",
        GatewayState::Enabled => "reactivated",
    };
    match gateway::set_state(ctx, name, state).await? {
        ScratchKeysChanged::Keys(0) => {}
        ScratchKeysChanged::Keys(n) => println!("{verb} {n} scratch key(s) of gateway {name}"),
        ScratchKeysChanged::NotReachable => eprintln!(
            "warning: scratch keys not {verb}: give --scratch-bucket (or IPXE_EDGE_SCRATCH_BUCKET) on a bucket deployment"
        ),
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

pub async fn pin(ctx: &Deployment, name: &str, release: Option<&str>) -> Result<(), OpError> {
    let before = gateway::pin(ctx, name, release).await?;
    match release {
        Some(r) => println!("gateway {name} pinned to release {r}"),
        None => println!("gateway {name} follows channel {} again", before.channel()),
    }
    Ok(())
}

pub async fn set_secrets(ctx: &Deployment, name: &str, file: &Path) -> Result<(), OpError> {
    let stored = gateway::set_secrets(ctx, name, file).await?;
    println!("stored {} bytes of secrets for gateway {name}", stored.bytes);
    if stored.uses_scratch {
        println!("uses scratch storage: each redemption mints a new key to the gateway's own space and revokes the previous one");
    }
    if !stored.unknown_variables.is_empty() {
        let names: Vec<String> = stored.unknown_variables.iter().map(|v| format!("${{{v}}}")).collect();
        eprintln!("warning: no value for {}: served as written (set gateway vars or fix the names)", names.join(", "));
    }
    Ok(())
}
