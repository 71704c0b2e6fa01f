//! `ipxe-edge channel …`: promotion, rollback, history and how the current release does.

use crate::ops::{self, check_name, Deployment, OpError};

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
        /// From now on every release of this channel must have kernels signed by this
        /// certificate (PEM or DER: the db certificate of a Secure Boot farm) or one it issued;
        /// kept on the channel, checked at every promote and rollback.
        #[arg(long, value_name = "CERT", conflicts_with = "allow_unsigned")]
        require_signed: Option<std::path::PathBuf>,
        /// Drop the channel's signed-kernel requirement.
        #[arg(long)]
        allow_unsigned: bool,
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

pub async fn run(ctx: &Deployment, command: ChannelCommand) -> Result<(), OpError> {
    match command {
        ChannelCommand::Promote { channel, release, fallback_after, require_signed, allow_unsigned } => {
            let require_signed = match (require_signed, allow_unsigned) {
                (Some(path), _) => Some(Some(ops::channel::signing_certificate_file(&path)?)),
                (None, true) => Some(None),
                (None, false) => None,
            };
            let previous = ops::channel::promote(ctx, &channel, &release, fallback_after, require_signed).await?;
            println!("channel {channel}: {} -> {release}", previous.as_deref().unwrap_or("nothing"));
            Ok(())
        }
        ChannelCommand::Rollback { channel } => {
            let (from, to) = ops::channel::rollback(ctx, &channel).await?;
            println!("channel {channel}: {from} -> {to} (rolled back)");
            Ok(())
        }
        ChannelCommand::History { channel } => history(ctx, &channel).await,
        ChannelCommand::Status { channel, json } => super::journal::channel_status(ctx, &channel, json).await,
    }
}

pub async fn history(ctx: &Deployment, channel: &str) -> Result<(), OpError> {
    check_name("channel name", channel)?;
    let ch =
        ctx.records.channel(channel).await?.ok_or_else(|| OpError::Refused(format!("unknown channel {channel:?}")))?;
    println!("{:<32} REPLACED AT", "RELEASE");
    println!("{:<32} (current)", ch.release);
    for entry in ch.history.iter().rev() {
        println!("{:<32} {}", entry.release, entry.at);
    }
    if let Some(required) = &ch.require_signed {
        println!("kernels must be signed by {required}");
    }
    Ok(())
}
