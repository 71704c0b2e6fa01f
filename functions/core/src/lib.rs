//! ipxe-edge core: everything the boot and redeem Lambda functions run, in three layers.
//!
//! - [`domain`]: gateway identity, the bucket's data model, boot script rendering, one-time
//!   tokens and the clock; no I/O, no HTTP, no AWS.
//! - [`service`]: the two use cases (boot, redeem) over the storage ports.
//! - [`storage`]: the ports (object store, presigner, token ledger), the typed records layer and
//!   object keys, and the adapters (S3, DynamoDB, in-memory fakes for tests).
//! - [`api`]: the HTTP API as one request pipeline (routes, handlers, the wrapper that logs and
//!   counts, the error-to-status table), shared by the functions and `serve`.
//! - [`lambda`]: the Lambda edge: settings, client set-up at init, events turned into requests
//!   for the pipeline, and JSON logging.

pub mod api;
pub mod domain;
pub mod lambda;
pub mod service;
pub mod storage;
