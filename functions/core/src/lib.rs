//! ipxe-edge core: gateway identity, the bucket's data model, boot script rendering and
//! one-time secrets tokens (domain modules, free of HTTP and AWS), plus the storage adapters,
//! HTTP handlers and AWS wiring that the functions, the local server and the CLI share.

pub mod boot;
pub mod identity;
pub mod model;
pub mod publish;
pub mod query;
pub mod redeem;
pub mod render;
pub mod token;

pub mod aws;
pub mod config;
pub mod http;
pub mod logging;
#[cfg(any(test, feature = "pki"))]
pub mod pki;
pub mod store;
