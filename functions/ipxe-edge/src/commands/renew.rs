//! `ipxe-edge gateway renew` and `gateway revoke-cert`: a gateway's certificates over time.

use crate::ops::renewal::{self, RenewOptions, Standing};
use crate::ops::{Deployment, OpError};
use ipxe_edge_core::domain::clock;
use ipxe_edge_core::domain::identity::Fingerprint;
use ipxe_edge_core::storage::records::RecordError;
use ipxe_edge_pki::KeyType;
use std::time::Duration;

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["name", "expiring_within"])))]
pub struct RenewArgs {
    /// The gateway to renew.
    pub name: Option<String>,
    /// Renew every enrolled gateway whose certificate expires within this window (60d, 12h,
    /// seconds) and has no renewal pending.
    #[arg(long, value_parser = renewal::parse_window, conflicts_with = "name")]
    pub expiring_within: Option<Duration>,
    /// The boot URL the renewed autoexec.ipxe chains to (as for `image script`).
    #[arg(long, env = "IPXE_EDGE_BOOT_URL")]
    pub boot_url: String,
    #[command(flatten)]
    pub script: super::image::ScriptArgs,
    /// The new key: rsa-2048 (every iPXE) or ecdsa-p256 (iPXE 2.0 and newer) [default: the type
    /// of the key the gateway holds].
    #[arg(long, value_parser = super::parse_key_type)]
    pub key: Option<KeyType>,
    /// Validity of the new certificate, in days.
    #[arg(long, default_value_t = renewal::DEFAULT_DAYS, value_parser = clap::value_parser!(u32).range(1..=ipxe_edge_pki::MAX_VALIDITY_DAYS as i64))]
    pub days: u32,
    /// Replace a pending renewal that was not fetched yet (its certificate is retired).
    #[arg(long)]
    pub replace: bool,
}

pub async fn renew(ctx: &Deployment, args: RenewArgs) -> Result<(), OpError> {
    let script = args.script.options();
    crate::ops::image::check_script(&args.boot_url, &script)?;
    let now = clock::unix_now();
    let ca = crate::ops::ca::load(&ctx.dir)?;
    let options = RenewOptions {
        boot_url: args.boot_url.clone(),
        script,
        days: args.days,
        key_type: args.key,
        replace: args.replace,
    };
    let chosen: Vec<Standing> = match (&args.name, args.expiring_within) {
        (Some(name), _) => {
            let standing = renewal::standing(&ctx.records, ctx.gateway(name).await?).await?;
            if standing.pending && !args.replace {
                return Err(OpError::Refused(format!(
                    "gateway {name} has a renewal pending that it has not fetched yet; --replace issues another one"
                )));
            }
            vec![standing]
        }
        (None, Some(window)) => {
            let all = renewal::standings(&ctx.records).await?;
            let due: Vec<Standing> = all.into_iter().filter(|s| s.expires_within(window, now)).collect();
            let (pending, due): (Vec<Standing>, Vec<Standing>) =
                due.into_iter().partition(|s| s.pending && !args.replace);
            for s in &pending {
                println!("gateway {}: renewal already pending, skipped", s.gateway.name);
            }
            due.into_iter()
                .filter(|s| s.gateway.state != ipxe_edge_core::domain::model::GatewayState::Revoked)
                .collect()
        }
        (None, None) => unreachable!("clap requires one"),
    };
    if chosen.is_empty() {
        println!("no gateway to renew");
        return Ok(());
    }
    let mut failed = 0;
    for standing in &chosen {
        match renewal::renew(&ctx.records, &ctx.dir, &ca, standing, &options, now).await {
            Ok(None) if args.name.is_some() => {
                let name = &standing.gateway.name;
                return Err(OpError::Refused(format!(
                    "gateway {name} has a renewal pending that it has not fetched yet; --replace issues another one"
                )));
            }
            Ok(None) => println!("gateway {}: renewal already pending, skipped", standing.gateway.name),
            Ok(Some(done)) => {
                println!(
                    "renewed gateway {}: {} (expires {}) renews {}; staged for the gateway to fetch once through ${{renewal_url}}",
                    done.gateway,
                    done.fingerprint,
                    renewal::date(done.not_after),
                    &done.renews.as_str()[..16]
                );
                if let Some(old) = done.replaced {
                    println!("  replaced the unfetched renewal {} (retired)", &old.as_str()[..16]);
                }
            }
            Err(e) => {
                eprintln!("gateway {}: not renewed: {e}", standing.gateway.name);
                failed += 1;
            }
        }
    }
    if failed > 0 {
        return Err(OpError::Refused(format!("{failed} of {} gateway(s) not renewed", chosen.len())));
    }
    Ok(())
}

pub async fn revoke_cert(ctx: &Deployment, name: &str, fingerprint: &str) -> Result<(), OpError> {
    let record = ctx.gateway(name).await?;
    let wanted = fingerprint.replace(':', "").to_ascii_lowercase();
    if wanted.len() < 12 || !wanted.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(OpError::Invalid(format!(
            "{fingerprint:?} is not a fingerprint: give 64 hex digits or a unique prefix of 12 or more"
        )));
    }
    let matching: Vec<Fingerprint> =
        record.certificates().into_iter().map(|c| c.fingerprint).filter(|f| f.as_str().starts_with(&wanted)).collect();
    let fp = match matching.as_slice() {
        [one] => one.clone(),
        [] => {
            return Err(OpError::Refused(format!(
                "gateway {name} has no certificate {fingerprint} (see: ipxe-edge gateway show {name})"
            )))
        }
        _ => {
            return Err(OpError::Invalid(format!(
                "{fingerprint} matches several certificates of gateway {name}: give more digits"
            )))
        }
    };
    match ctx.records.retire_certificate(&record.fingerprint, &fp).await {
        Ok(left) => {
            // A renewal staged for the retired certificate can no longer be handed over.
            if let Some(pending) = ctx.records.renewal(&record.fingerprint).await? {
                if pending.fingerprint == fp {
                    ctx.records.delete_renewal(&record.fingerprint).await?;
                    println!("deleted the pending renewal to {}", &fp.as_str()[..16]);
                }
            }
            println!(
                "retired certificate {fp} of gateway {name}: it no longer boots; {} certificate(s) left",
                left.certificates.len()
            );
            Ok(())
        }
        Err(RecordError::LastCertificate { .. }) => Err(OpError::Refused(format!(
            "{fp} is gateway {name}'s only certificate: revoke the gateway instead (ipxe-edge gateway revoke {name})"
        ))),
        Err(e) => Err(e.into()),
    }
}
