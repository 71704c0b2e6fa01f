//! Boot outcomes for operators: `gateway history`, `gateway status`, `gateway retry` and
//! `channel status`, read from the boot journal (embedded, or the DynamoDB table).

use crate::ops::{self, check_name, Deployment, OpError};
use ipxe_edge_core::domain::clock;
use ipxe_edge_core::domain::journal::{BootRecord, GatewayJournal, Outcome};
use ipxe_edge_core::domain::model::GatewayRecord;
use ipxe_edge_core::service::boot::BootSettings;
use serde_json::json;

/// Boots of one gateway looked at by `channel status`.
const CHANNEL_STATUS_BOOTS: usize = 50;

fn seconds(value: Option<u64>) -> String {
    value.map(|s| format!("{s}s")).unwrap_or_else(|| "-".into())
}

fn outcome_text(boot: &BootRecord, now: u64) -> String {
    let outcome = boot.outcome_at(now);
    match (outcome, boot.fail_reason) {
        (Outcome::Failed, Some(reason)) => format!("failed ({})", reason.as_str()),
        (Outcome::Failed, None) => "failed (deadline_passed)".into(),
        _ if boot.is_open() => format!("{outcome} (waiting for {})", boot.gate.as_str()),
        _ => outcome.to_string(),
    }
}

fn boot_json(boot: &BootRecord, now: u64) -> serde_json::Value {
    let mut value = serde_json::to_value(boot).unwrap_or_default();
    value["outcome"] = json!(boot.outcome_at(now).as_str());
    value["issued"] = json!(clock::rfc3339(boot.issued_at));
    value["passed"] = json!(boot.passed());
    value["time_to_linux_s"] = json!(boot.time_to_linux());
    value["time_to_checkin_s"] = json!(boot.time_to_checkin());
    value
}

/// `gateway history NAME`: the latest boots, newest first.
pub async fn history(ctx: &Deployment, name: &str, limit: usize, as_json: bool) -> Result<(), OpError> {
    let gateway = ctx.gateway(name).await?;
    let boots = ctx.journal()?.history(&gateway.fingerprint, limit).await?;
    let now = clock::unix_now();
    if as_json {
        let list: Vec<_> = boots.iter().map(|b| boot_json(b, now)).collect();
        println!("{}", serde_json::to_string_pretty(&list).unwrap_or_default());
        return Ok(());
    }
    if boots.is_empty() {
        println!("no boots recorded for {name}");
        return Ok(());
    }
    println!(
        "{:<21} {:<24} {:<9} {:<38} {:>9} {:>11}",
        "ISSUED", "RELEASE", "REASON", "OUTCOME", "TO LINUX", "TO CHECK-IN"
    );
    for boot in &boots {
        let release = if boot.release == boot.target {
            boot.release.clone()
        } else {
            format!("{} (for {})", boot.release, boot.target)
        };
        println!(
            "{:<21} {:<24} {:<9} {:<38} {:>9} {:>11}",
            clock::rfc3339(boot.issued_at),
            release,
            boot.reason.as_str(),
            outcome_text(boot, now),
            seconds(boot.time_to_linux()),
            seconds(boot.time_to_checkin())
        );
    }
    Ok(())
}

/// The release a gateway is meant to boot, why, and the fallback threshold that applies.
async fn target(ctx: &Deployment, gateway: &GatewayRecord) -> Result<(String, &'static str, Option<u32>), OpError> {
    Ok(match &gateway.pinned_release {
        Some(pin) => (pin.clone(), "pin", None),
        None => {
            let channel = ctx.records.channel(gateway.channel()).await?;
            let release = channel
                .as_ref()
                .map(|c| c.release.clone())
                .unwrap_or_else(|| format!("(channel {} does not exist)", gateway.channel()));
            (release, "channel", channel.and_then(|c| c.fallback_after))
        }
    })
}

fn state_json(
    gateway: &GatewayRecord,
    health: &GatewayJournal,
    target: &str,
    why: &str,
    fallback_after: Option<u32>,
    now: u64,
) -> serde_json::Value {
    // The stored count is of the stored target; a new target starts from zero.
    let failures = if health.target.as_deref() == Some(target) { health.failures } else { 0 };
    let fallback = health.fallback.clone().filter(|_| health.target.as_deref() == Some(target));
    json!({
        "gateway": gateway.name,
        "fingerprint": gateway.fingerprint.as_str(),
        "target": target,
        "target_from": why,
        "fallback_after": fallback_after,
        "consecutive_failures": failures,
        "fallback": fallback,
        "last_known_good": health.last_good.as_ref().map(|g| json!({"release": g.release, "boot": g.boot, "at": clock::rfc3339(g.at)})),
        "latest_boot": health.latest.as_ref().map(|b| boot_json(b, now)),
    })
}

/// `gateway status NAME`: target, last known good, fallback state, consecutive failures.
pub async fn status(ctx: &Deployment, name: &str, as_json: bool) -> Result<(), OpError> {
    let gateway = ctx.gateway(name).await?;
    let stored = ctx.journal()?.load(&gateway.fingerprint).await?;
    let (target, why, fallback_after) = target(ctx, &gateway).await?;
    let now = clock::unix_now();
    let value = state_json(&gateway, &stored.health, &target, why, fallback_after, now);
    if as_json {
        println!("{}", serde_json::to_string_pretty(&value).unwrap_or_default());
        return Ok(());
    }
    let threshold = match fallback_after {
        Some(n) => format!("{n} (channel setting)"),
        None => format!("server setting (default {})", BootSettings::DEFAULT_FALLBACK_AFTER),
    };
    println!("gateway:              {}", gateway.name);
    println!("target:               {target} ({why})");
    println!("fallback after:       {threshold}");
    println!("consecutive failures: {}", value["consecutive_failures"]);
    match value["fallback"].as_str() {
        Some(release) => {
            println!("fallback:             ON, booting {release} (clear with: ipxe-edge gateway retry {name})")
        }
        None => println!("fallback:             off"),
    }
    match &stored.health.last_good {
        Some(good) => println!("last known good:      {} (since {})", good.release, clock::rfc3339(good.at)),
        None => println!("last known good:      none yet"),
    }
    match &stored.health.latest {
        Some(boot) => println!(
            "latest boot:          {} {} at {}",
            boot.release,
            outcome_text(boot, now),
            clock::rfc3339(boot.issued_at)
        ),
        None => println!("latest boot:          none recorded"),
    }
    Ok(())
}

/// `gateway retry NAME`: clears the fallback and the failure count, so the next boot gets the
/// target again.
pub async fn retry(ctx: &Deployment, name: &str) -> Result<(), OpError> {
    let gateway = ctx.gateway(name).await?;
    let retried = ops::gateway::retry(ctx, &gateway).await?;
    let (target, _, _) = target(ctx, &gateway).await?;
    match (retried.cleared, retried.fallback) {
        (true, Some(release)) => println!("gateway {name}: fallback to {release} cleared; the next boot gets {target}"),
        (true, None) => println!("gateway {name}: failure count cleared; the next boot gets {target}"),
        (false, _) => println!("gateway {name}: nothing to retry (no failures recorded); the next boot gets {target}"),
    }
    Ok(())
}

/// `channel status NAME`: how the channel's current release did on the gateways that follow it
/// (the canary verdict before a promote).
pub async fn channel_status(ctx: &Deployment, channel: &str, as_json: bool) -> Result<(), OpError> {
    check_name("channel name", channel)?;
    let current =
        ctx.records.channel(channel).await?.ok_or_else(|| OpError::Refused(format!("unknown channel {channel:?}")))?;
    let release = current.release.clone();
    let journal = ctx.journal()?;
    let now = clock::unix_now();
    let gateways: Vec<GatewayRecord> = ctx
        .records
        .gateways()
        .await?
        .into_iter()
        .filter(|g| g.channel() == channel || g.pinned_release.as_deref() == Some(&release))
        .collect();
    let mut rows = Vec::new();
    let (mut booted, mut healthy, mut failed, mut pending) = (0, 0, 0, 0);
    for gateway in &gateways {
        let boots: Vec<BootRecord> = journal
            .history(&gateway.fingerprint, CHANNEL_STATUS_BOOTS)
            .await?
            .into_iter()
            .filter(|b| b.release == release)
            .collect();
        let Some(latest) = boots.first() else { continue };
        booted += 1;
        let verdict = if latest.passed() {
            healthy += 1;
            "healthy"
        } else if latest.outcome_at(now) == Outcome::Failed {
            failed += 1;
            "failed"
        } else {
            pending += 1;
            "pending"
        };
        let failures = boots.iter().filter(|b| b.outcome_at(now) == Outcome::Failed).count();
        rows.push(json!({
            "gateway": gateway.name,
            "boots": boots.len(),
            "failed_boots": failures,
            "verdict": verdict,
            "latest": boot_json(latest, now),
        }));
    }
    if as_json {
        let value = json!({
            "channel": channel, "release": release, "fallback_after": current.fallback_after,
            "gateways": gateways.len(), "booted": booted, "healthy": healthy, "failed": failed, "pending": pending, "per_gateway": rows,
        });
        println!("{}", serde_json::to_string_pretty(&value).unwrap_or_default());
        return Ok(());
    }
    println!("channel {channel}: release {release}");
    println!(
        "gateways: {}  booted it: {booted}  healthy: {healthy}  failed: {failed}  pending: {pending}",
        gateways.len()
    );
    if !rows.is_empty() {
        println!("{:<24} {:>6} {:>7} {:<9} LATEST", "GATEWAY", "BOOTS", "FAILED", "VERDICT");
        for row in &rows {
            println!(
                "{:<24} {:>6} {:>7} {:<9} {} {}",
                row["gateway"].as_str().unwrap_or(""),
                row["boots"],
                row["failed_boots"],
                row["verdict"].as_str().unwrap_or(""),
                row["latest"]["issued"].as_str().unwrap_or(""),
                row["latest"]["outcome"].as_str().unwrap_or("")
            );
        }
    }
    Ok(())
}
