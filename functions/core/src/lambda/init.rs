//! Init of the functions: AWS clients built once, the keyring and trust bundle read once, and
//! the connections warmed so that the first request after a cold start skips the TLS handshakes.

use crate::api::metrics::EmfMetrics;
use crate::api::trust::{RevalidatedTrust, Trust};
use crate::domain::identity::TrustBundle;
use crate::domain::token::{Keyring, KeyringError};
use crate::lambda::config::{BootConfig, ConfigError, KeyringSource, RedeemConfig, ScratchConfig};
use crate::lambda::http::{BootApp, RedeemApp};
use crate::service::boot::BootService;
use crate::service::redeem::RedeemService;
use crate::storage::adapters::dynamodb::{DynamoJournal, DynamoLedger};
use crate::storage::adapters::iam::{IamScratch, ScratchSettings};
use crate::storage::adapters::s3::S3Store;
use crate::storage::records::{ReadCache, RecordError, Records};
use aws_config::{BehaviorVersion, SdkConfig};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("token keyring: {0}")]
    Keyring(#[from] KeyringError),
    #[error("token keyring: reading SSM parameter {name}: {reason}")]
    Ssm { name: String, reason: String },
    #[error("trust bundle {key}: {reason}")]
    TrustBundle { key: String, reason: String },
    #[error(transparent)]
    Record(#[from] RecordError),
}

impl InitError {
    /// A short, stable name of what is wrong, for the log line and the Runtime API report.
    pub fn kind(&self) -> &'static str {
        match self {
            InitError::Config(ConfigError::Missing(_)) => "MissingVariable",
            InitError::Config(ConfigError::Invalid { .. }) => "InvalidVariable",
            InitError::Keyring(_) => "InvalidKeyring",
            InitError::Ssm { .. } => "KeyringParameter",
            InitError::TrustBundle { .. } => "TrustBundle",
            InitError::Record(_) => "Storage",
        }
    }
}

/// Ends a function whose init failed: one JSON log line naming what is wrong, the same report
/// to the Lambda Runtime API (`/runtime/init/error`), then exit. Lambda then fails the
/// invocation with `Runtime.InitError` and shows the reason.
pub async fn fail(function: &str, error: InitError) -> ! {
    let kind = error.kind();
    tracing::error!(function, init_error = kind, error = %error, "init failed");
    let body = serde_json::json!({ "errorType": format!("Runtime.{kind}"), "errorMessage": error.to_string() });
    if let Ok(client) = lambda_runtime_api_client::Client::builder().build() {
        let request = lambda_runtime_api_client::build_request()
            .method("POST")
            .uri("/2018-06-01/runtime/init/error")
            .header("Lambda-Runtime-Function-Error-Type", format!("Runtime.{kind}"))
            .header("content-type", "application/json")
            .body(lambda_runtime_api_client::body::Body::from(body.to_string().into_bytes()));
        if let Ok(request) = request {
            if let Err(e) = client.call(request).await {
                tracing::warn!(error = %e, "could not report the init failure to the Runtime API");
            }
        }
    }
    std::process::exit(1)
}

/// How long a call to AWS may take.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timeouts {
    /// Serving a request: fail fast enough to answer `503` well inside the function's 10 s
    /// (connect 2 s, one attempt 3 s, all retries 8 s), never hang on a stalled connection.
    Request,
    /// Operator commands: uploads of large assets may take minutes; only connecting is bounded.
    Operator,
}

impl Timeouts {
    pub fn config(self) -> aws_config::timeout::TimeoutConfig {
        use std::time::Duration;
        let builder = aws_config::timeout::TimeoutConfig::builder();
        match self {
            Timeouts::Request => builder
                .connect_timeout(Duration::from_secs(2))
                .operation_attempt_timeout(Duration::from_secs(3))
                .operation_timeout(Duration::from_secs(8))
                .build(),
            Timeouts::Operator => builder.connect_timeout(Duration::from_secs(10)).build(),
        }
    }
}

/// The shared SDK configuration: standard AWS environment (credentials, region,
/// `AWS_ENDPOINT_URL_*`), optionally with an explicit endpoint for S3-compatible servers.
pub async fn sdk_config(endpoint: Option<&str>, timeouts: Timeouts) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).timeout_config(timeouts.config());
    if let Some(url) = endpoint {
        loader = loader.endpoint_url(url);
    }
    loader.load().await
}

/// An SDK configuration with fixed credentials and endpoint (the embedded S3 endpoint, tests).
pub fn static_sdk_config(endpoint: &str, access_key: &str, secret_key: &str, timeouts: Timeouts) -> SdkConfig {
    SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .timeout_config(timeouts.config())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_s3::config::SharedCredentialsProvider::new(aws_sdk_s3::config::Credentials::new(
            access_key,
            secret_key,
            None,
            None,
            "ipxe-edge-static",
        )))
        .endpoint_url(endpoint)
        .build()
}

/// An S3 client; `force_path_style` for S3-compatible servers that do not route by host name.
pub fn s3_client(config: &SdkConfig, force_path_style: bool) -> aws_sdk_s3::Client {
    let conf = aws_sdk_s3::config::Builder::from(config).force_path_style(force_path_style).build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// The token keyring, read once; the value is never logged.
pub async fn load_keyring(source: &KeyringSource, config: &SdkConfig) -> Result<Keyring, InitError> {
    match source {
        KeyringSource::Inline(value) => Ok(Keyring::parse(value)?),
        KeyringSource::Ssm(name) => {
            let ssm = aws_sdk_ssm::Client::new(config);
            let output = ssm.get_parameter().name(name).with_decryption(true).send().await.map_err(|e| {
                InitError::Ssm { name: name.clone(), reason: aws_sdk_ssm::error::DisplayErrorContext(&e).to_string() }
            })?;
            let value = output
                .parameter()
                .and_then(|p| p.value())
                .ok_or_else(|| InitError::Ssm { name: name.clone(), reason: "parameter has no value".into() })?;
            Keyring::parse(value).map_err(|e| InitError::Ssm { name: name.clone(), reason: e.to_string() })
        }
    }
}

/// Reads the CA bundle client certificates must chain to.
pub async fn load_trust_bundle(records: &Records, key: &str) -> Result<TrustBundle, InitError> {
    Ok(load_versioned_trust_bundle(records, key).await?.0)
}

/// The CA bundle and its version tag.
async fn load_versioned_trust_bundle(records: &Records, key: &str) -> Result<(TrustBundle, Option<String>), InitError> {
    let bad = |reason: String| InitError::TrustBundle { key: key.to_string(), reason };
    let object = records
        .store()
        .get(key)
        .await
        .map_err(|e| bad(e.to_string()))?
        .ok_or_else(|| bad("object not found".into()))?;
    Ok((TrustBundle::from_pem(&object.body).map_err(|e| bad(e.to_string()))?, object.etag))
}

/// The boot function's application, from its settings.
pub async fn boot_app(config: BootConfig) -> Result<BootApp, InitError> {
    let sdk = sdk_config(None, Timeouts::Request).await;
    let (s3, dynamodb) = (s3_client(&sdk, config.s3_force_path_style), aws_sdk_dynamodb::Client::new(&sdk));
    boot_app_with(config, &sdk, s3, dynamodb).await
}

/// [`boot_app`] over given clients (tests put a proxy in front of the servers); `sdk` reads the
/// keyring from SSM.
pub async fn boot_app_with(
    config: BootConfig,
    sdk: &SdkConfig,
    s3: aws_sdk_s3::Client,
    dynamodb: aws_sdk_dynamodb::Client,
) -> Result<BootApp, InitError> {
    let s3 = Arc::new(S3Store::new(s3, config.bucket.clone()));
    let records = Records::new(s3.clone()).with_read_cache(ReadCache::new(config.channel_max_age));
    // Reading the bundle also opens the S3 connection the first request will reuse.
    let (keyring, bundle) = tokio::join!(
        load_keyring(&config.keyring, sdk),
        load_versioned_trust_bundle(&records, &config.trust_bundle_key)
    );
    let keyring = Arc::new(keyring?);
    let (bundle, etag) = bundle?;
    let trusted_cas = bundle.len();
    let trust = RevalidatedTrust::new(
        s3.clone(),
        config.trust_bundle_key.clone(),
        bundle,
        etag,
        config.boot.clock_skew,
        config.trust_max_age,
    );
    let cert_header = match &config.cert_header {
        crate::lambda::http::CertHeader::Off => "off".to_string(),
        crate::lambda::http::CertHeader::Trusted(name) => name.to_string(),
    };
    tracing::info!(
        key_id = keyring.signing_key_id(),
        trusted_cas,
        channel_max_age_secs = config.channel_max_age.as_secs(),
        trust_max_age_secs = config.trust_max_age.as_secs(),
        cert_header,
        boot_records = config.table.as_deref().unwrap_or("off"),
        fallback_after = config.boot.fallback_after,
        "boot function initialised"
    );
    let presigner = Arc::new(crate::storage::presign_cache::CachingPresigner::new(s3));
    let mut service = BootService::new(records, presigner, keyring, config.boot);
    if let Some(table) = &config.table {
        service = service.with_journal(Arc::new(DynamoJournal::new(dynamodb, table.clone(), config.boot_history)));
    }
    Ok(BootApp {
        service,
        trust: Trust::Revalidated(trust),
        cert_header: config.cert_header,
        metrics: Arc::new(EmfMetrics),
    })
}

pub async fn boot_app_from_env() -> Result<BootApp, InitError> {
    boot_app(BootConfig::from_env()?).await
}

/// The redeem function's application, from its settings.
pub async fn redeem_app(config: RedeemConfig) -> Result<RedeemApp, InitError> {
    let sdk = sdk_config(None, Timeouts::Request).await;
    let (s3, dynamodb) = (s3_client(&sdk, config.s3_force_path_style), aws_sdk_dynamodb::Client::new(&sdk));
    let scratch = config.scratch.as_ref().map(|scratch| iam_scratch(&sdk, scratch, config.s3_force_path_style));
    let mut app = redeem_app_with(config, &sdk, s3, dynamodb).await?;
    if let Some(scratch) = scratch {
        app.service = app.service.with_scratch(Arc::new(scratch));
    }
    Ok(app)
}

/// [`redeem_app`] over given clients, without scratch keys (tests put a proxy in front of the
/// servers); `sdk` reads the keyring from SSM.
pub async fn redeem_app_with(
    config: RedeemConfig,
    sdk: &SdkConfig,
    s3: aws_sdk_s3::Client,
    dynamodb: aws_sdk_dynamodb::Client,
) -> Result<RedeemApp, InitError> {
    let s3 = Arc::new(S3Store::new(s3, config.bucket.clone()));
    let ledger = Arc::new(DynamoLedger::new(dynamodb.clone(), config.table.clone()));
    let journal =
        Arc::new(DynamoJournal::new(dynamodb, config.table.clone(), config.boot_history).with_ledger(&ledger));
    let (keyring, _, _) = tokio::join!(load_keyring(&config.keyring, sdk), warm_s3(&s3), warm_dynamodb(&ledger));
    let keyring = Arc::new(keyring?);
    tracing::info!(
        key_id = keyring.signing_key_id(),
        scratch = config.scratch.is_some(),
        "redeem function initialised"
    );
    let service = RedeemService::new(Records::new(s3), ledger, keyring).with_journal(journal);
    Ok(RedeemApp { service, metrics: Arc::new(EmfMetrics) })
}

/// Scratch keys as IAM users, in the function's region and partition.
pub fn iam_scratch(sdk: &aws_config::SdkConfig, config: &ScratchConfig, s3_force_path_style: bool) -> IamScratch {
    let region = sdk.region().map(|r| r.as_ref().to_string()).unwrap_or_else(|| "us-east-1".into());
    let (partition, suffix) = if region.starts_with("cn-") {
        ("arn:aws-cn", "amazonaws.com.cn")
    } else if region.starts_with("us-gov-") {
        ("arn:aws-us-gov", "amazonaws.com")
    } else {
        ("arn:aws", "amazonaws.com")
    };
    let settings = ScratchSettings {
        bucket: config.bucket.clone(),
        boundary_arn: config.boundary_arn.clone(),
        user_path: config.user_path.clone(),
        endpoint: config.endpoint.clone().unwrap_or_else(|| format!("https://s3.{region}.{suffix}")),
        partition: partition.into(),
    };
    IamScratch::new(aws_sdk_iam::Client::new(sdk), s3_client(sdk, s3_force_path_style), settings)
}

pub async fn redeem_app_from_env() -> Result<RedeemApp, InitError> {
    redeem_app(RedeemConfig::from_env()?).await
}

/// Opens the S3 connection (the answer does not matter: a 403 or 404 warms it just as well).
async fn warm_s3(store: &S3Store) {
    use crate::storage::ObjectStore;
    if let Err(e) = store.exists("gateways/warm-up/secrets").await {
        tracing::debug!(error = %e, "S3 warm-up call failed");
    }
}

async fn warm_dynamodb(ledger: &DynamoLedger) {
    if let Err(e) = ledger.client().describe_table().table_name(ledger.table()).send().await {
        tracing::debug!(error = %aws_sdk_dynamodb::error::DisplayErrorContext(&e), "DynamoDB warm-up call failed");
    }
}
