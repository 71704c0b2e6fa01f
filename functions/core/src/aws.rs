//! Wiring for AWS: clients built once at init, the keyring and trust bundle read once, and the
//! connections warmed so that the first request after a cold start skips the TLS handshakes.

use crate::boot::{BootService, BootSettings};
use crate::config::{ConfigError, Settings};
use crate::http::{BootApp, CertHeader, RedeemApp};
use crate::identity::{ChainVerifier, IdentityError, TrustBundle};
use crate::redeem::RedeemService;
use crate::store::dynamodb::DynamoLedger;
use crate::store::s3::S3Store;
use crate::store::{ObjectStore, StoreError};
use crate::token::{Keyring, KeyringError};
use aws_config::{BehaviorVersion, SdkConfig};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("token keyring: {0}")]
    Keyring(#[from] KeyringError),
    #[error("token keyring: neither TOKEN_KEYS_SSM_PARAMETER nor TOKEN_KEYS is set")]
    NoKeyring,
    #[error("token keyring: reading SSM parameter {name}: {reason}")]
    Ssm { name: String, reason: String },
    #[error("trust bundle {key}: {reason}")]
    TrustBundle { key: String, reason: String },
    #[error(transparent)]
    Storage(#[from] StoreError),
}

pub async fn sdk_config() -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest()).load().await
}

/// An S3 client; endpoint from `AWS_ENDPOINT_URL_S3` / `AWS_ENDPOINT_URL` like any SDK client.
pub fn s3_client(config: &SdkConfig, force_path_style: bool) -> aws_sdk_s3::Client {
    let conf = aws_sdk_s3::config::Builder::from(config).force_path_style(force_path_style).build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// The token keyring: from SSM (SecureString, decrypted) in deployments, or `TOKEN_KEYS` for
/// local runs. Read once; the value is never logged.
pub async fn load_keyring(settings: &Settings, config: &SdkConfig) -> Result<Keyring, InitError> {
    if let Some(name) = &settings.token_keys_ssm_parameter {
        let ssm = aws_sdk_ssm::Client::new(config);
        let output = ssm
            .get_parameter()
            .name(name)
            .with_decryption(true)
            .send()
            .await
            .map_err(|e| InitError::Ssm { name: name.clone(), reason: aws_sdk_ssm::error::DisplayErrorContext(&e).to_string() })?;
        let value = output
            .parameter()
            .and_then(|p| p.value())
            .ok_or_else(|| InitError::Ssm { name: name.clone(), reason: "parameter has no value".into() })?;
        return Ok(Keyring::parse(value)?);
    }
    if settings.token_keys_inline {
        let value = std::env::var("TOKEN_KEYS").unwrap_or_default();
        return Ok(Keyring::parse(&value)?);
    }
    Err(InitError::NoKeyring)
}

/// Reads the CA bundle client certificates must chain to.
pub async fn load_trust_bundle(store: &dyn ObjectStore, key: &str) -> Result<TrustBundle, InitError> {
    let object = store
        .get(key)
        .await?
        .ok_or_else(|| InitError::TrustBundle { key: key.to_string(), reason: "object not found".into() })?;
    TrustBundle::from_pem(&object.body).map_err(|e: IdentityError| InitError::TrustBundle { key: key.to_string(), reason: e.to_string() })
}

/// The boot function's application, from the environment.
pub async fn boot_app_from_env() -> Result<BootApp, InitError> {
    let settings = Settings::from_env()?;
    let bucket = settings.bucket.clone().ok_or(ConfigError::Missing("BUCKET"))?;
    let secrets_base_url = settings.secrets_base_url.clone().ok_or(ConfigError::Missing("SECRETS_BASE_URL"))?;
    let config = sdk_config().await;
    let store = Arc::new(S3Store::new(s3_client(&config, settings.s3_force_path_style), bucket));
    // Reading the bundle also opens the S3 connection the first request will reuse.
    let (keyring, bundle) = tokio::join!(load_keyring(&settings, &config), load_trust_bundle(store.as_ref(), &settings.trust_bundle_key));
    let keyring = Arc::new(keyring?);
    let verifier = ChainVerifier::new(bundle?, settings.clock_skew_secs);
    let cert_header = match &settings.client_cert_header {
        Some(name) => CertHeader::Trusted(name.parse().map_err(|_| ConfigError::Invalid { name: "CLIENT_CERT_HEADER", reason: "not a header name".into() })?),
        None => CertHeader::Off,
    };
    let boot_settings = BootSettings { presign_ttl: settings.presign_ttl, token_ttl: settings.token_ttl, secrets_base_url };
    tracing::info!(
        key_id = keyring.signing_key_id(), trusted_cas = verifier.bundle().len(),
        cert_header = settings.client_cert_header.as_deref().unwrap_or("off"), "boot function initialised"
    );
    Ok(BootApp { service: BootService::new(store.clone(), store, keyring, boot_settings), verifier, cert_header })
}

/// The redeem function's application, from the environment.
pub async fn redeem_app_from_env() -> Result<RedeemApp, InitError> {
    let settings = Settings::from_env()?;
    let bucket = settings.bucket.clone().ok_or(ConfigError::Missing("BUCKET"))?;
    let table = settings.table.clone().ok_or(ConfigError::Missing("TABLE"))?;
    let config = sdk_config().await;
    let store = Arc::new(S3Store::new(s3_client(&config, settings.s3_force_path_style), bucket));
    let ledger = Arc::new(DynamoLedger::new(aws_sdk_dynamodb::Client::new(&config), table));
    let (keyring, _, _) = tokio::join!(load_keyring(&settings, &config), warm_s3(&store), warm_dynamodb(&ledger));
    let keyring = Arc::new(keyring?);
    tracing::info!(key_id = keyring.signing_key_id(), "redeem function initialised");
    Ok(RedeemApp { service: RedeemService::new(store, ledger, keyring) })
}

/// Opens the S3 connection (the answer does not matter: a 403 or 404 warms it just as well).
async fn warm_s3(store: &S3Store) {
    if let Err(e) = store.exists("gateways/warm-up/secrets").await {
        tracing::debug!(error = %e, "S3 warm-up call failed");
    }
}

async fn warm_dynamodb(ledger: &DynamoLedger) {
    if let Err(e) = ledger.client().describe_table().table_name(ledger.table()).send().await {
        tracing::debug!(error = %aws_sdk_dynamodb::error::DisplayErrorContext(&e), "DynamoDB warm-up call failed");
    }
}
