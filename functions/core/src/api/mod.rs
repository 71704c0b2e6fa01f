//! The HTTP API both Lambda functions and `serve` answer, in one pipeline:
//!
//! - [`route`]: the routes, parsed once from method and path, and the public paths;
//! - [`pipeline`]: the entry points, the [`pipeline::RequestInfo`] an edge attaches to each
//!   request, and the one wrapper that times, logs and counts every request;
//! - [`handlers`]: one function per route, returning the response and what happened as data;
//! - [`trust`]: the CA bundle as each request sees it (fixed, or followed by version tag);
//! - [`answer`]: that data ([`answer::Handled`], [`answer::Record`]) and the one table from
//!   errors to statuses ([`answer::Failure`]).
//!
//! Nothing here knows API Gateway's event shape: `lambda::http` turns events into requests.

pub mod answer;
pub mod handlers;
pub mod metrics;
pub mod pipeline;
pub mod route;
pub mod trust;

pub use pipeline::{BootApp, CertHeader, ClientCert, RedeemApp, RequestInfo};
