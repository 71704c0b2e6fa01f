//! `gateway scratch NAME`: what a gateway's scratch space holds and which key opens it, and
//! `--revoke-keys` to kill its live keys now.

use crate::ops::{Deployment, OpError};

pub async fn scratch(ctx: &Deployment, name: &str, revoke_keys: bool, json: bool) -> Result<(), OpError> {
    let record = ctx.gateway(name).await?;
    let keys = ctx.scratch()?.ok_or_else(|| {
        OpError::Invalid(
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
