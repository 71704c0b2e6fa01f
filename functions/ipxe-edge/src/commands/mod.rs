//! The command line, one file per command group: clap arguments, and printing what the
//! operations in [`crate::ops`] return:
//! certificates, gateways, releases, channels, previews, imports, boot images. Each runs
//! against the embedded store (`--data DIR`) or a real bucket (`--bucket NAME`).

pub mod ca;
pub mod channel;
pub mod config_file;
pub mod gateway;
pub mod image;
pub mod import;
pub mod journal;
pub mod preview;
pub mod progress;
pub mod release;
pub mod renew;
pub mod scratch;

use crate::ops::BackendArgs;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// A key type named on the command line (`--key`).
pub fn parse_key_type(name: &str) -> Result<ipxe_edge_pki::KeyType, String> {
    ipxe_edge_pki::KeyType::parse(name)
        .ok_or_else(|| format!("{name:?}: one of {}", ipxe_edge_pki::KeyType::NAMES.join(", ")))
}

/// The whole command line (`main.rs` parses it and dispatches).
#[derive(Parser)]
#[command(
    name = "ipxe-edge",
    version,
    about = "Serverless iPXE boot server for CI farm gateways: operator tool and local server"
)]
pub struct Cli {
    /// Data directory: local PKI, keys, and the embedded store.
    #[arg(long, global = true, default_value = "./ipxe-edge-data", env = "IPXE_EDGE_DATA")]
    pub data: PathBuf,
    #[command(flatten)]
    pub backends: BackendArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the boot service locally: mTLS boot endpoint, secrets endpoint, embedded S3 and ledger.
    ///
    /// The first start on an empty data directory creates a CA, a server certificate, a demo
    /// gateway with its certificate and key, a placeholder release and the token key, then
    /// prints a curl command that boots as the demo gateway.
    ///
    /// Example: ipxe-edge serve --data ./ipxe-edge-data --public-host 10.0.2.2
    Serve(Box<crate::serve::ServeArgs>),
    /// The deployment CA and the trust bundle.
    #[command(subcommand)]
    Ca(ca::CaCommand),
    /// Enroll, inspect, pin and revoke gateways.
    #[command(subcommand)]
    Gateway(gateway::GatewayCommand),
    /// Publish and inspect releases (kernel + initrd per architecture).
    #[command(subcommand)]
    Release(release::ReleaseCommand),
    /// Point channels at releases: promote, roll back, history.
    #[command(subcommand)]
    Channel(channel::ChannelCommand),
    /// The boot script gateway NAME would receive now, URLs and token redacted.
    ///
    /// Example: ipxe-edge preview gw-berlin-1
    Preview(preview::PreviewArgs),
    /// Import a farm from another deployment.
    #[command(subcommand)]
    Import(import::ImportCommand),
    /// Gateway boot images.
    #[command(subcommand)]
    Image(image::ImageCommand),
}
