//! Implementations of the storage ports: AWS ([`s3`], [`dynamodb`]) and in-memory fakes with
//! failure switches for unit tests and benchmarks ([`memory`]). The file-backed store and
//! ledger of `ipxe-edge serve` live in that crate: the functions never need them.

pub mod dynamodb;
pub mod memory;
pub mod s3;
