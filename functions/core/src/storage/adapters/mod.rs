//! Implementations of the storage ports: AWS ([`s3`], [`dynamodb`]) and in-memory fakes with
//! failure switches for unit tests and benchmarks ([`memory`]), and the boot journal over any
//! object store ([`object_journal`]). The file-backed store and
//! ledger of `ipxe-edge serve` live in that crate: the functions never need them.

pub mod dynamodb;
pub mod iam;
pub mod memory;
pub mod object_journal;
pub mod s3;
