//! Entry wiring for the Lambda functions (also reused by `ipxe-edge serve`): settings from the
//! environment, clients built once at init, the HTTP handlers and the JSON log format.

pub mod config;
pub mod http;
pub mod init;
pub mod logging;
