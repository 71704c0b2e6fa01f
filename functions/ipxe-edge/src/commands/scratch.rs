//! `gateway scratch NAME`: what a gateway's scratch space holds and which key opens it, and
//! `--revoke-keys` to kill its live keys now.

use super::context::{CliError, Context};

pub async fn scratch(ctx: &Context, name: &str, revoke_keys: bool, json: bool) -> Result<(), CliError> {
    let record = ctx.gateway(name).await?;
    let keys = ctx.scratch()?.ok_or_else(|| {
        CliError::Usage(
            "scratch keys of a bucket deployment are IAM access keys: manage them with the AWS tools".into(),
        )
    })?;
    if revoke_keys {
        let revoked = keys.revoke_all(&record.name).await?;
        println!("revoked {revoked} scratch key(s) of gateway {name}; the next redemption mints a new one");
        return Ok(());
    }
    let live = keys.keys(&record.name).await?;
    let usage = keys.usage(&record.name).await?;
    if json {
        let out =
            serde_json::json!({"gateway": record.name, "objects": usage.objects, "bytes": usage.bytes, "keys": live});
        println!("{out}");
        return Ok(());
    }
    println!("gateway:  {}", record.name);
    println!("space:    {} object(s), {} byte(s)", usage.objects, usage.bytes);
    match live.last() {
        None => {
            println!("key:      none live (minted at the next redemption of a secret that uses ${{s3_access_key}})")
        }
        Some(key) => {
            let minted = time::OffsetDateTime::from_unix_timestamp(key.minted_at as i64)
                .map(|t| t.to_string())
                .unwrap_or_default();
            println!("key:      {} (minted {minted})", key.access_key_id);
        }
    }
    if live.len() > 1 {
        println!("older:    {} more live key(s); they are revoked at the next redemption", live.len() - 1);
    }
    Ok(())
}

/// Revoking a gateway also kills its scratch keys.
pub async fn revoke_all(ctx: &Context, name: &str) -> Result<usize, CliError> {
    match ctx.scratch()? {
        Some(keys) => Ok(keys.revoke_all(name).await?),
        None => {
            eprintln!("warning: scratch keys not revoked: give --scratch-bucket (or IPXE_EDGE_SCRATCH_BUCKET) on a bucket deployment");
            Ok(0)
        }
    }
}

/// Disabling a gateway suspends its scratch keys (refused until it is enabled again).
pub async fn set_suspended(ctx: &Context, name: &str, suspended: bool) -> Result<usize, CliError> {
    match ctx.scratch()? {
        Some(keys) => Ok(keys.set_suspended(name, suspended).await?),
        None => {
            eprintln!(
                "warning: scratch keys not {}: give --scratch-bucket (or IPXE_EDGE_SCRATCH_BUCKET) on a bucket deployment",
                if suspended { "suspended" } else { "reactivated" }
            );
            Ok(0)
        }
    }
}
