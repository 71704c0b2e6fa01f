//! What an operator can do, as library functions: certificates and the trust bundle, enrollment,
//! renewal, gateway images, imports, releases and channels. The CLI (`commands`) and `serve` both
//! call these; they print nothing and return what they did, or an [`OpError`] saying why not.

pub mod backends;
pub mod ca;
pub mod channel;
pub mod gateway;
pub mod image;
pub mod import;
pub mod release;
pub mod renewal;
pub mod upload;

pub use backends::{BackendArgs, Deployment};

use crate::datadir::DataDirError;
use ipxe_edge_core::domain::identity::IdentityError;
use ipxe_edge_core::service::boot::BootError;
use ipxe_edge_core::storage::records::RecordError;
use ipxe_edge_core::storage::StoreError;
use std::path::PathBuf;

/// Why an operation was not carried out. [`OpError::is_invalid_input`] tells a mistake in what
/// was asked (the CLI exits 2 on it, like clap's own usage errors) from everything else.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    /// What was asked is wrong: an invalid name, value or combination of options.
    #[error("{0}")]
    Invalid(String),
    /// The request is well formed but cannot be carried out in the current state (an unknown
    /// gateway, a release that exists already, a channel without history).
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error("certificate: {0}")]
    Identity(#[from] IdentityError),
    #[error("{path}: {source}")]
    File { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Pki(String),
}

impl From<StoreError> for OpError {
    fn from(e: StoreError) -> Self {
        OpError::Record(e.into())
    }
}

impl OpError {
    /// A mistake in what was asked rather than a state or a failure that prevented it.
    pub fn is_invalid_input(&self) -> bool {
        matches!(self, OpError::Invalid(_) | OpError::Record(RecordError::BadName(_)))
    }
}

pub fn file_error(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> OpError + '_ {
    move |source| OpError::File { path: path.to_path_buf(), source }
}

/// Refuses a name that breaks the naming rules, saying what it names.
pub fn check_name(what: &str, name: &str) -> Result<(), OpError> {
    if ipxe_edge_core::domain::model::valid_name(name) {
        Ok(())
    } else {
        Err(OpError::Invalid(format!("invalid {what} {name:?}: use 1-64 characters of [A-Za-z0-9._-]")))
    }
}
