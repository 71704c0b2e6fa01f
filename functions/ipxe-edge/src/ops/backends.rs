//! The one place that chooses where a deployment's records, boot journal, used-token ledger and
//! scratch keys live: the embedded stand-ins in the data directory, or real services named by
//! flags or environment variables. The CLI and `serve` both open a deployment here.

use super::{check_name, OpError};
use crate::datadir::{self, DataDir, EMBEDDED_BUCKET};
use crate::embedded::file_journal::FileJournal;
use crate::embedded::file_ledger::FileLedger;
use crate::embedded::fs_store::FsStore;
use crate::embedded::scratch::EmbeddedScratch;
use ipxe_edge_core::domain::model::GatewayRecord;
use ipxe_edge_core::lambda::config::{s3_path_style_from_env, ConfigError, ScratchConfig};
use ipxe_edge_core::lambda::init::{iam_scratch, s3_client, sdk_config, Timeouts};
use ipxe_edge_core::storage::adapters::dynamodb::{DynamoJournal, DynamoLedger, DEFAULT_BOOT_RETENTION};
use ipxe_edge_core::storage::adapters::iam::DEFAULT_USER_PATH;
use ipxe_edge_core::storage::adapters::s3::S3Store;
use ipxe_edge_core::storage::records::Records;
use ipxe_edge_core::storage::{BootJournal, ObjectStore, ScratchKeys, TokenLedger};
use std::path::PathBuf;
use std::sync::Arc;

/// Where the records live.
#[derive(Clone)]
pub enum Store {
    /// The embedded bucket in the data directory.
    Embedded(Arc<FsStore>),
    /// A bucket on S3 or an S3-compatible server.
    S3(S3Store),
}

impl Store {
    pub fn as_object_store(&self) -> Arc<dyn ObjectStore> {
        match self {
            Store::Embedded(fs) => fs.clone(),
            Store::S3(s3) => Arc::new(s3.clone()),
        }
    }
}

/// Where boots and their outcomes are journaled.
#[derive(Clone)]
pub enum Journal {
    /// The embedded journal in the data directory.
    Embedded(Arc<FileJournal>),
    /// The DynamoDB table (`--table`).
    Dynamo(Arc<DynamoJournal>),
}

impl Journal {
    pub fn as_boot_journal(&self) -> Arc<dyn BootJournal> {
        match self {
            Journal::Embedded(journal) => journal.clone(),
            Journal::Dynamo(journal) => journal.clone(),
        }
    }
}

/// Where used tokens are recorded (only `serve` redeems tokens).
#[derive(Clone)]
pub enum Ledger {
    /// The embedded ledger in the data directory.
    Embedded(FileLedger),
    /// The DynamoDB table (`--table`).
    Dynamo(Arc<DynamoLedger>),
}

impl Ledger {
    pub fn as_token_ledger(&self) -> Arc<dyn TokenLedger> {
        match self {
            Ledger::Embedded(ledger) => Arc::new(ledger.clone()),
            Ledger::Dynamo(ledger) => ledger.clone(),
        }
    }
}

/// The real services a deployment may use instead of the embedded ones: the same flags (and
/// environment variables) for `serve` and every operator command.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct BackendArgs {
    /// Use this S3 bucket (standard AWS environment) instead of the embedded store.
    #[arg(long, global = true, env = "IPXE_EDGE_BUCKET")]
    pub bucket: Option<String>,
    /// The S3-compatible endpoint of --bucket (AWS_ENDPOINT_URL_S3 works too; either implies
    /// path-style addressing, as does S3_FORCE_PATH_STYLE=true).
    #[arg(long, global = true, env = "IPXE_EDGE_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// DynamoDB table of the boot journal and the used-token ledger instead of the embedded ones
    /// (several servers sharing one bucket and table agree on every gateway's state).
    #[arg(long, global = true, env = "IPXE_EDGE_TABLE")]
    pub table: Option<String>,
    /// The DynamoDB-compatible endpoint of --table (AWS_ENDPOINT_URL_DYNAMODB works too).
    #[arg(long, global = true, env = "IPXE_EDGE_DYNAMODB_ENDPOINT")]
    pub dynamodb_endpoint: Option<String>,
    /// The scratch bucket of a bucket deployment (the stack's ScratchBucketName output), for
    /// `gateway scratch` and for revoking a gateway's scratch keys (its IAM access keys).
    #[arg(long, global = true, env = "IPXE_EDGE_SCRATCH_BUCKET")]
    pub scratch_bucket: Option<String>,
}

impl BackendArgs {
    /// Refuses combinations that name an endpoint without the thing it serves.
    pub fn check(&self) -> Result<(), OpError> {
        if self.s3_endpoint.is_some() && self.bucket.is_none() {
            return Err(OpError::Invalid("--s3-endpoint needs --bucket".into()));
        }
        if self.dynamodb_endpoint.is_some() && self.table.is_none() {
            return Err(OpError::Invalid("--dynamodb-endpoint needs --table".into()));
        }
        Ok(())
    }
}

fn config_error(e: ConfigError) -> OpError {
    OpError::Invalid(e.to_string())
}

/// The records: the embedded bucket of `dir`, or `--bucket`.
pub async fn open_store(dir: &DataDir, args: &BackendArgs, timeouts: Timeouts) -> Result<Store, OpError> {
    args.check()?;
    match &args.bucket {
        None => Ok(Store::Embedded(Arc::new(FsStore::open_s3s_bucket(dir.s3_root(), EMBEDDED_BUCKET)?))),
        Some(bucket) => {
            let config = sdk_config(args.s3_endpoint.as_deref(), timeouts).await;
            let path_style = args.s3_endpoint.is_some() || s3_path_style_from_env().map_err(config_error)?;
            Ok(Store::S3(S3Store::new(s3_client(&config, path_style), bucket.clone())))
        }
    }
}

/// The boot journal: `--table`, else the embedded journal when `embedded` allows it (`serve`
/// always keeps its own; an operator command on a bucket without a table has none to read).
pub async fn open_journal(
    dir: &DataDir,
    args: &BackendArgs,
    embedded: bool,
    timeouts: Timeouts,
) -> Result<Option<Journal>, OpError> {
    match &args.table {
        Some(table) => {
            let config = sdk_config(args.dynamodb_endpoint.as_deref(), timeouts).await;
            let client = aws_sdk_dynamodb::Client::new(&config);
            Ok(Some(Journal::Dynamo(Arc::new(DynamoJournal::new(client, table.clone(), DEFAULT_BOOT_RETENTION)))))
        }
        None if embedded => {
            Ok(Some(Journal::Embedded(Arc::new(FileJournal::open(dir.journal(), DEFAULT_BOOT_RETENTION)?))))
        }
        None => Ok(None),
    }
}

/// The used-token ledger: `--table`, else the embedded ledger.
pub async fn open_ledger(dir: &DataDir, args: &BackendArgs, timeouts: Timeouts) -> Result<Ledger, OpError> {
    match &args.table {
        Some(table) => {
            let config = sdk_config(args.dynamodb_endpoint.as_deref(), timeouts).await;
            Ok(Ledger::Dynamo(Arc::new(DynamoLedger::new(aws_sdk_dynamodb::Client::new(&config), table.clone()))))
        }
        None => Ok(Ledger::Embedded(FileLedger::open(dir.ledger()).map_err(datadir::io_error(&dir.ledger()))?)),
    }
}

/// A deployment as the operator commands see it: the data directory, the records, the boot
/// journal and the scratch keys.
pub struct Deployment {
    pub dir: DataDir,
    pub store: Store,
    pub records: Records,
    journal: Option<Journal>,
    /// Scratch keys of a bucket deployment (`--scratch-bucket`).
    scratch: Option<Arc<dyn ScratchKeys>>,
}

impl Deployment {
    pub async fn open(data: PathBuf, args: &BackendArgs) -> Result<Self, OpError> {
        let dir = DataDir::open(data)?;
        let store = open_store(&dir, args, Timeouts::Operator).await?;
        let embedded = matches!(store, Store::Embedded(_));
        let journal = open_journal(&dir, args, embedded, Timeouts::Operator).await?;
        // Operators read and revoke scratch keys; only the redeem function mints them, so the
        // boundary is not needed here.
        let scratch: Option<Arc<dyn ScratchKeys>> = match (&args.scratch_bucket, &store) {
            (Some(bucket), Store::S3(_)) => {
                let sdk = sdk_config(None, Timeouts::Operator).await;
                let config = ScratchConfig {
                    bucket: bucket.clone(),
                    boundary_arn: String::new(),
                    user_path: DEFAULT_USER_PATH.into(),
                    endpoint: None,
                };
                let path_style = s3_path_style_from_env().map_err(config_error)?;
                Some(Arc::new(iam_scratch(&sdk, &config, path_style)))
            }
            _ => None,
        };
        let records = Records::new(store.as_object_store());
        Ok(Deployment { dir, store, records, journal, scratch })
    }

    /// The scratch keys: the embedded endpoint's (what `serve` hosts), or on a bucket
    /// deployment the IAM users' (with `--scratch-bucket`; `None` without).
    pub fn scratch(&self) -> Result<Option<Arc<dyn ScratchKeys>>, OpError> {
        match self.store {
            Store::Embedded(_) => Ok(Some(EmbeddedScratch::open(&self.dir, "")?)),
            Store::S3(_) => Ok(self.scratch.clone()),
        }
    }

    /// The boot journal; with `--bucket`, boot records live in the DynamoDB table.
    pub fn journal(&self) -> Result<Arc<dyn BootJournal>, OpError> {
        self.journal.as_ref().map(|j| j.as_boot_journal()).ok_or_else(|| {
            OpError::Invalid(
                "boot records of a bucket live in its DynamoDB table: give --table (or IPXE_EDGE_TABLE)".into(),
            )
        })
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        self.records.store()
    }

    /// The record of the gateway called `name`.
    pub async fn gateway(&self, name: &str) -> Result<GatewayRecord, OpError> {
        check_name("gateway name", name)?;
        self.records
            .gateway_by_name(name)
            .await?
            .ok_or_else(|| OpError::Refused(format!("unknown gateway {name:?} (see: ipxe-edge gateway list)")))
    }
}
