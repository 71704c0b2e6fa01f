//! The `ipxe-edge` binary's library: the operator commands ([`commands`], one file each), the
//! local server ([`serve`]) and what stands in for AWS on one machine ([`embedded`]), over the
//! data directory ([`datadir`]). `main.rs` only parses and dispatches.

pub mod commands;
pub mod datadir;
pub mod embedded;
pub mod files;
pub mod listener;
pub mod ops;
pub mod serve;
