//! The operator commands, one file each, with their arguments beside their handlers:
//! certificates, gateways, releases, channels, previews, imports, boot images. Each runs
//! against the embedded store (`--data DIR`) or a real bucket (`--bucket NAME`).

pub mod ca;
pub mod channel;
pub mod context;
pub mod gateway;
pub mod image;
pub mod import;
pub mod outcomes;
pub mod preview;
pub mod release;
pub mod renew;
pub mod scratch;
pub mod upload;

pub use context::{CliError, Context};
