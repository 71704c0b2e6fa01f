//! `ipxe-edge channel …`: atomic promotion and rollback. A channel is one object; each change is
//! one conditional write, so two operators racing cannot lose an update or corrupt it.

use super::context::{check_name, CliError, Context};
use ipxe_edge_core::domain::clock::rfc3339_now;
use ipxe_edge_core::domain::model::Channel;
use ipxe_edge_core::storage::keys;
use ipxe_edge_core::storage::records::{Change, RecordError};
use ipxe_edge_core::storage::StoreError;

#[derive(clap::Subcommand)]
pub enum ChannelCommand {
    /// Point CHANNEL at RELEASE in one atomic write (the previous release goes to history).
    ///
    /// Example: ipxe-edge channel promote stable 2026-11-26.1 --fallback-after 3
    Promote {
        channel: String,
        release: String,
        /// Consecutive failed boots after which a gateway on this channel boots its last known
        /// good release (0: never); kept on the channel. The server's setting when never given.
        #[arg(long, value_parser = clap::value_parser!(u32).range(0..=100))]
        fallback_after: Option<u32>,
    },
    /// Point CHANNEL back at the release it had before.
    ///
    /// Example: ipxe-edge channel rollback stable
    Rollback { channel: String },
    /// The channel's current release and the ones before it.
    ///
    /// Example: ipxe-edge channel history stable
    History { channel: String },
    /// How the current release does on the channel's gateways: booted, healthy, failed.
    ///
    /// Example: ipxe-edge channel status canary
    Status {
        channel: String,
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(ctx: &Context, command: ChannelCommand) -> Result<(), CliError> {
    match command {
        ChannelCommand::Promote { channel, release, fallback_after } => {
            promote(ctx, &channel, &release, fallback_after).await
        }
        ChannelCommand::Rollback { channel } => rollback(ctx, &channel).await,
        ChannelCommand::History { channel } => history(ctx, &channel).await,
        ChannelCommand::Status { channel, json } => super::outcomes::channel_status(ctx, &channel, json).await,
    }
}

/// Refuses a release that cannot boot every gateway following the channel.
async fn check_followers(ctx: &Context, channel: &str, release: &str) -> Result<(), CliError> {
    let followers: Vec<_> = ctx
        .records
        .gateways()
        .await?
        .into_iter()
        .filter(|g| g.channel() == channel && g.pinned_release.is_none())
        .collect();
    for gateway in followers {
        super::gateway::release_serves(ctx, release, gateway.arch()).await.map_err(|e| {
            CliError::Refused(format!("{e}, which gateway {} on channel {channel} needs", gateway.name))
        })?;
    }
    Ok(())
}

pub async fn promote(ctx: &Context, channel: &str, release: &str, fallback_after: Option<u32>) -> Result<(), CliError> {
    check_name("channel name", channel)?;
    check_name("release id", release)?;
    if !ctx.records.release_exists(release).await? {
        return Err(CliError::Refused(format!("unknown release {release:?} (see: ipxe-edge release list)")));
    }
    check_followers(ctx, channel, release).await?;
    match ctx.records.promote(channel, release, &rfc3339_now(), fallback_after).await {
        Ok(ch) => {
            let previous = ch.history.last().map(|e| e.release.as_str()).unwrap_or("nothing");
            println!("channel {channel}: {previous} -> {release}");
            Ok(())
        }
        Err(RecordError::Store(StoreError::Conflict(_))) => {
            Err(CliError::Refused(format!("channel {channel} keeps changing under us; try again")))
        }
        Err(e) => Err(e.into()),
    }
}

pub async fn rollback(ctx: &Context, channel: &str) -> Result<(), CliError> {
    check_name("channel name", channel)?;
    let current =
        ctx.records.channel(channel).await?.ok_or_else(|| CliError::Refused(format!("unknown channel {channel:?}")))?;
    let previous = current
        .history
        .last()
        .cloned()
        .ok_or_else(|| CliError::Refused(format!("channel {channel} has no earlier release to roll back to")))?;
    check_followers(ctx, channel, &previous.release).await?;
    let changed = || {
        CliError::Refused(format!(
            "channel {channel} changed while rolling back; check `ipxe-edge channel history {channel}` and retry"
        ))
    };
    // One attempt only: never roll back twice by retrying; the operator decides again with
    // fresh history.
    let outcome = ctx
        .records
        .update(&keys::channel(channel), 1, |now: Option<Channel>| match now {
            Some(mut ch) if ch == current => {
                ch.history.pop();
                ch.release = previous.release.clone();
                Ok(Change::Write(ch))
            }
            _ => Err(changed()),
        })
        .await;
    match outcome {
        Ok(_) => {
            println!("channel {channel}: {} -> {} (rolled back)", current.release, previous.release);
            Ok(())
        }
        Err(CliError::Record(RecordError::Store(StoreError::Conflict(_)))) => Err(changed()),
        Err(e) => Err(e),
    }
}

pub async fn history(ctx: &Context, channel: &str) -> Result<(), CliError> {
    check_name("channel name", channel)?;
    let ch =
        ctx.records.channel(channel).await?.ok_or_else(|| CliError::Refused(format!("unknown channel {channel:?}")))?;
    println!("{:<32} REPLACED AT", "RELEASE");
    println!("{:<32} (current)", ch.release);
    for entry in ch.history.iter().rev() {
        println!("{:<32} {}", entry.release, entry.at);
    }
    Ok(())
}
