//! What every operator command needs: the data directory, the records (embedded store or a real
//! bucket), and one error type whose message fits on one line.

use crate::datadir::{DataDir, DataDirError, EMBEDDED_BUCKET};
use crate::embedded::file_journal::FileJournal;
use crate::embedded::fs_store::FsStore;
use crate::embedded::scratch::EmbeddedScratch;
use ipxe_edge_core::domain::identity::IdentityError;
use ipxe_edge_core::domain::model::GatewayRecord;
use ipxe_edge_core::lambda::config::ScratchConfig;
use ipxe_edge_core::lambda::init::{iam_scratch, s3_client, sdk_config, Timeouts};
use ipxe_edge_core::service::boot::BootError;
use ipxe_edge_core::storage::adapters::dynamodb::{DynamoJournal, DEFAULT_BOOT_RETENTION};
use ipxe_edge_core::storage::adapters::iam::DEFAULT_USER_PATH;
use ipxe_edge_core::storage::adapters::s3::S3Store;
use ipxe_edge_core::storage::records::{RecordError, Records};
use ipxe_edge_core::storage::{BootJournal, ObjectStore, ScratchKeys, StoreError};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// Why a command failed. [`CliError::Usage`] is a mistake on the command line (exit 2, like
/// clap's own usage errors); everything else is an operation that could not be carried out
/// (exit 1).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command line is wrong: an invalid name, value or combination of options.
    #[error("{0}")]
    Usage(String),
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

impl From<StoreError> for CliError {
    fn from(e: StoreError) -> Self {
        CliError::Record(e.into())
    }
}

impl CliError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            CliError::Usage(_) | CliError::Record(RecordError::BadName(_)) => ExitCode::from(2),
            _ => ExitCode::FAILURE,
        }
    }
}

pub fn file_error(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> CliError + '_ {
    move |source| CliError::File { path: path.to_path_buf(), source }
}

/// Refuses a name that breaks the naming rules, saying what it names.
pub fn check_name(what: &str, name: &str) -> Result<(), CliError> {
    if ipxe_edge_core::domain::model::valid_name(name) {
        Ok(())
    } else {
        Err(CliError::Usage(format!("invalid {what} {name:?}: use 1-64 characters of [A-Za-z0-9._-]")))
    }
}

/// Where objects go.
pub enum Backend {
    Embedded,
    S3(S3Store),
}

pub struct Context {
    pub dir: DataDir,
    pub backend: Backend,
    pub records: Records,
    /// Boots and outcomes: the embedded journal, or the DynamoDB table (`--table`).
    journal: Option<Arc<dyn BootJournal>>,
    /// Scratch keys of a bucket deployment (`--scratch-bucket`).
    scratch: Option<Arc<dyn ScratchKeys>>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// Use this S3 bucket (standard AWS environment; AWS_ENDPOINT_URL_S3 for S3-compatible servers) instead of the embedded store.
    #[arg(long, global = true, env = "IPXE_EDGE_BUCKET")]
    pub bucket: Option<String>,
    /// DynamoDB table holding boot records (AWS_ENDPOINT_URL_DYNAMODB for compatible servers); the embedded journal without it.
    #[arg(long, global = true, env = "IPXE_EDGE_TABLE")]
    pub table: Option<String>,
    /// The scratch bucket of a bucket deployment (the stack's ScratchBucketName output), for
    /// `gateway scratch` and for revoking a gateway's scratch keys (its IAM access keys).
    #[arg(long, global = true, env = "IPXE_EDGE_SCRATCH_BUCKET")]
    pub scratch_bucket: Option<String>,
}

impl Context {
    pub async fn open(data: PathBuf, store_args: &StoreArgs) -> Result<Self, CliError> {
        let dir = DataDir::open(data)?;
        let (backend, store): (Backend, Arc<dyn ObjectStore>) = match &store_args.bucket {
            None => (Backend::Embedded, Arc::new(FsStore::open_s3s_bucket(dir.s3_root(), EMBEDDED_BUCKET)?)),
            Some(bucket) => {
                let config = sdk_config(None, Timeouts::Operator).await;
                let custom_endpoint =
                    std::env::var_os("AWS_ENDPOINT_URL_S3").is_some() || std::env::var_os("AWS_ENDPOINT_URL").is_some();
                let path_style =
                    custom_endpoint || matches!(std::env::var("S3_FORCE_PATH_STYLE").as_deref(), Ok("1") | Ok("true"));
                let s3 = S3Store::new(s3_client(&config, path_style), bucket.clone());
                (Backend::S3(s3.clone()), Arc::new(s3))
            }
        };
        let journal: Option<Arc<dyn BootJournal>> = match (&store_args.table, &backend) {
            (Some(table), _) => {
                let config = sdk_config(None, Timeouts::Operator).await;
                Some(Arc::new(DynamoJournal::new(
                    aws_sdk_dynamodb::Client::new(&config),
                    table.clone(),
                    DEFAULT_BOOT_RETENTION,
                )))
            }
            (None, Backend::Embedded) => Some(Arc::new(FileJournal::open(dir.journal(), DEFAULT_BOOT_RETENTION)?)),
            (None, Backend::S3(_)) => None,
        };
        // Operators read and revoke scratch keys; only the redeem function mints them, so the
        // boundary is not needed here.
        let scratch: Option<Arc<dyn ScratchKeys>> = match (&store_args.scratch_bucket, &backend) {
            (Some(bucket), Backend::S3(_)) => {
                let sdk = sdk_config(None, Timeouts::Operator).await;
                let config = ScratchConfig {
                    bucket: bucket.clone(),
                    boundary_arn: String::new(),
                    user_path: DEFAULT_USER_PATH.into(),
                    endpoint: None,
                };
                Some(Arc::new(iam_scratch(&sdk, &config, std::env::var_os("AWS_ENDPOINT_URL_S3").is_some())))
            }
            _ => None,
        };
        Ok(Context { dir, backend, records: Records::new(store), journal, scratch })
    }

    /// The scratch keys: the embedded endpoint's (what `serve` hosts), or on a bucket
    /// deployment the IAM users' (with `--scratch-bucket`; `None` without).
    pub fn scratch(&self) -> Result<Option<Arc<dyn ScratchKeys>>, CliError> {
        match self.backend {
            Backend::Embedded => Ok(Some(EmbeddedScratch::open(&self.dir, "")?)),
            Backend::S3(_) => Ok(self.scratch.clone()),
        }
    }

    /// The boot journal; with `--bucket`, boot records live in the DynamoDB table.
    pub fn journal(&self) -> Result<&dyn BootJournal, CliError> {
        self.journal.as_deref().ok_or_else(|| {
            CliError::Usage(
                "boot records of a bucket live in its DynamoDB table: give --table (or IPXE_EDGE_TABLE)".into(),
            )
        })
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        self.records.store()
    }

    /// The record of the gateway called `name`.
    pub async fn gateway(&self, name: &str) -> Result<GatewayRecord, CliError> {
        check_name("gateway name", name)?;
        self.records
            .gateway_by_name(name)
            .await?
            .ok_or_else(|| CliError::Refused(format!("unknown gateway {name:?} (see: ipxe-edge gateway list)")))
    }
}
