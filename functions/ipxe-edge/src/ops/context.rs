//! What every operator command needs: the data directory, the store, and one error type whose
//! message fits on one line.

use crate::datadir::{DataDir, DataDirError, EMBEDDED_BUCKET};
use ipxe_edge_core::boot::{read_json, BootError};
use ipxe_edge_core::identity::{Fingerprint, IdentityError};
use ipxe_edge_core::model::{layout, GatewayRecord};
use ipxe_edge_core::publish::PublishError;
use ipxe_edge_core::store::fs::FsStore;
use ipxe_edge_core::store::s3::S3Store;
use ipxe_edge_core::store::{ObjectStore, StoreError};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error("certificate: {0}")]
    Identity(#[from] IdentityError),
    #[error("{path}: {source}")]
    File { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Pki(String),
}

pub fn file_error(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> CliError + '_ {
    move |source| CliError::File { path: path.to_path_buf(), source }
}

/// Where objects go.
pub enum Backend {
    Embedded,
    S3(S3Store),
}

pub struct Context {
    pub dir: DataDir,
    pub backend: Backend,
    pub store: Arc<dyn ObjectStore>,
}

#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// Use this S3 bucket (standard AWS environment; AWS_ENDPOINT_URL_S3 for S3-compatible servers) instead of the embedded store.
    #[arg(long, global = true, env = "IPXE_EDGE_BUCKET")]
    pub bucket: Option<String>,
}

impl Context {
    pub async fn open(data: PathBuf, store: &StoreArgs) -> Result<Self, CliError> {
        let dir = DataDir::open(data)?;
        let (backend, store): (Backend, Arc<dyn ObjectStore>) = match &store.bucket {
            None => {
                let fs = FsStore::open_s3s_bucket(dir.s3_root(), EMBEDDED_BUCKET)?;
                (Backend::Embedded, Arc::new(fs))
            }
            Some(bucket) => {
                let config = ipxe_edge_core::aws::sdk_config().await;
                let custom_endpoint = std::env::var_os("AWS_ENDPOINT_URL_S3").is_some() || std::env::var_os("AWS_ENDPOINT_URL").is_some();
                let path_style = custom_endpoint || matches!(std::env::var("S3_FORCE_PATH_STYLE").as_deref(), Ok("1") | Ok("true"));
                let s3 = S3Store::new(ipxe_edge_core::aws::s3_client(&config, path_style), bucket.clone());
                (Backend::S3(s3.clone()), Arc::new(s3))
            }
        };
        Ok(Context { dir, backend, store })
    }

    /// Every enrolled gateway's record.
    pub async fn gateways(&self) -> Result<Vec<GatewayRecord>, CliError> {
        let mut out = Vec::new();
        for key in self.store.list("gateways/").await? {
            if key.ends_with("/gateway.json") {
                if let Some(record) = read_json::<GatewayRecord>(self.store.as_ref(), &key).await? {
                    out.push(record);
                }
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The record of the gateway called `name`.
    pub async fn gateway(&self, name: &str) -> Result<GatewayRecord, CliError> {
        self.gateways()
            .await?
            .into_iter()
            .find(|g| g.name == name)
            .ok_or_else(|| CliError::Usage(format!("unknown gateway {name:?} (see: ipxe-edge gateway list)")))
    }

    pub async fn gateway_by_fingerprint(&self, fp: &Fingerprint) -> Result<Option<GatewayRecord>, CliError> {
        Ok(read_json(self.store.as_ref(), &layout::gateway(fp)).await?)
    }
}

pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}
