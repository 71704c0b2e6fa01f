//! `ipxe-edge channel …`: atomic promotion and rollback. A channel is one object; each change is
//! one conditional write, so two operators racing cannot lose an update or corrupt it.

use super::context::{now_rfc3339, CliError, Context};
use ipxe_edge_core::model::{layout, Channel, ChannelEntry};
use ipxe_edge_core::publish::{self, PublishError};
use ipxe_edge_core::store::{StoreError, WriteCondition};

/// Refuses a release that cannot boot every gateway following the channel.
async fn check_followers(ctx: &Context, channel: &str, release: &str) -> Result<(), CliError> {
    let followers: Vec<_> = ctx.gateways().await?.into_iter().filter(|g| g.channel() == channel && g.pinned_release.is_none()).collect();
    for gateway in followers {
        super::gateway::release_serves(ctx, release, gateway.arch())
            .await
            .map_err(|e| CliError::Usage(format!("{e}, which gateway {} on channel {channel} needs", gateway.name)))?;
    }
    Ok(())
}

pub async fn promote(ctx: &Context, channel: &str, release: &str) -> Result<(), CliError> {
    if !ctx.store.exists(&layout::release(release)).await? {
        return Err(CliError::Usage(format!("unknown release {release:?} (see: ipxe-edge release list)")));
    }
    check_followers(ctx, channel, release).await?;
    for _ in 0..5 {
        match publish::promote(ctx.store.as_ref(), channel, release, &now_rfc3339()).await {
            Ok(ch) => {
                let previous = ch.history.last().map(|e| e.release.as_str()).unwrap_or("nothing");
                println!("channel {channel}: {previous} -> {release}");
                return Ok(());
            }
            Err(PublishError::Storage(StoreError::Conflict(_))) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(CliError::Usage(format!("channel {channel} keeps changing under us; try again")))
}

pub async fn rollback(ctx: &Context, channel: &str) -> Result<(), CliError> {
    let key = layout::channel(channel);
    let current = ctx.store.get(&key).await?.ok_or_else(|| CliError::Usage(format!("unknown channel {channel:?}")))?;
    let mut ch: Channel = serde_json::from_slice(&current.body).map_err(|e| CliError::Usage(format!("{key} is corrupt: {e}")))?;
    let previous: ChannelEntry = ch.history.pop().ok_or_else(|| CliError::Usage(format!("channel {channel} has no earlier release to roll back to")))?;
    check_followers(ctx, channel, &previous.release).await?;
    let from = std::mem::replace(&mut ch.release, previous.release.clone());
    let condition = current.etag.map(WriteCondition::Matches).unwrap_or(WriteCondition::Always);
    match ctx.store.put(&key, serde_json::to_vec_pretty(&ch).expect("channel serialises"), condition).await {
        Ok(()) => {
            println!("channel {channel}: {from} -> {} (rolled back)", previous.release);
            Ok(())
        }
        // Never roll back twice by retrying: the operator decides again with fresh history.
        Err(StoreError::Conflict(_)) => Err(CliError::Usage(format!("channel {channel} changed while rolling back; check `ipxe-edge channel history {channel}` and retry"))),
        Err(e) => Err(e.into()),
    }
}

pub async fn history(ctx: &Context, channel: &str) -> Result<(), CliError> {
    let ch = publish::get_channel(ctx.store.as_ref(), channel).await?.ok_or_else(|| CliError::Usage(format!("unknown channel {channel:?}")))?;
    println!("{:<32} {}", "RELEASE", "REPLACED AT");
    println!("{:<32} {}", ch.release, "(current)");
    for entry in ch.history.iter().rev() {
        println!("{:<32} {}", entry.release, entry.at);
    }
    Ok(())
}
