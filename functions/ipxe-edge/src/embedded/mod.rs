//! The embedded stand-ins for AWS that `serve` and the CLI use on one machine: the bucket as
//! plain files ([`fs_store`]), the used-token ledger as files ([`file_ledger`]), the boot
//! journal as files ([`file_journal`]), and the S3-compatible endpoint that serves that bucket
//! to gateways ([`s3_endpoint`]) with each gateway's scratch space ([`scratch`]), the names it
//! lets a request reach ([`s3_location`]), how it reads an object's bytes ([`object_body`]) and who may do what there ([`s3_access`]).

pub mod file_cache;
pub mod file_journal;
pub mod file_ledger;
pub mod fs_store;
pub mod object_body;
pub mod s3_access;
pub mod s3_endpoint;
pub mod s3_location;
pub mod scratch;
