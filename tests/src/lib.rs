//! Shared support for the test suites: certificates made at test time, event fixtures, a
//! seeded bucket, and the endpoints of the protocol servers `scripts/test-servers.sh` starts.

use ipxe_edge_core::identity::Fingerprint;
use ipxe_edge_core::model::{layout, ArchAssets, Asset, Channel, GatewayRecord, ReleaseManifest};
use ipxe_edge_core::pki::{validity_days, CertificateAuthority, Issued};
use ipxe_edge_core::store::{ObjectStore, WriteCondition};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;

/// One CA per test process: RSA key generation is the slow part of these tests.
pub fn test_ca() -> &'static CertificateAuthority {
    static CA: OnceLock<CertificateAuthority> = OnceLock::new();
    CA.get_or_init(|| CertificateAuthority::generate("ipxe-edge test CA", 30).expect("CA generation"))
}

pub fn issue_gateway(name: &str) -> Issued {
    test_ca().issue_client(name, validity_days(10)).expect("client certificate")
}

pub fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(name)
}

/// A fixture's text with each placeholder (`__NAME__`, bare or as a whole JSON string)
/// replaced by a JSON value.
pub fn fixture(name: &str, replacements: &[(&str, serde_json::Value)]) -> String {
    let mut text = std::fs::read_to_string(fixture_path(name)).expect("fixture exists");
    for (placeholder, value) in replacements {
        let json = value.to_string();
        text = text.replace(&format!("\"{placeholder}\""), &json).replace(placeholder, &json);
    }
    assert!(!text.contains("\"__"), "fixture {name} has a placeholder left: {text}");
    text
}

/// A lambda_http request parsed from a fixture, exactly as the runtime would build it.
pub fn request(name: &str, replacements: &[(&str, serde_json::Value)]) -> lambda_http::Request {
    lambda_http::request::from_str(&fixture(name, replacements)).expect("fixture parses as an event")
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// What [`seed_gateway`] wrote, for assertions.
pub struct Seeded {
    pub fingerprint: Fingerprint,
    pub kernel_key: String,
    pub initrd_key: String,
}

/// Writes assets, a release `release_id` with x86_64 assets, channel `stable` pointing at it,
/// and an enrolled gateway (with secrets when given).
pub async fn seed_gateway(
    store: &dyn ObjectStore,
    name: &str,
    cert_der: &[u8],
    kernel: &[u8],
    initrd: &[u8],
    release_id: &str,
    cmdline: &str,
    secrets: Option<&[u8]>,
) -> Seeded {
    let fp = Fingerprint::of_der(cert_der);
    let asset = |bytes: &[u8]| Asset { key: layout::asset(&sha256_hex(bytes)), sha256: sha256_hex(bytes), size: bytes.len() as u64 };
    let (k, i) = (asset(kernel), asset(initrd));
    store.put(&k.key, kernel.to_vec(), WriteCondition::Always).await.unwrap();
    store.put(&i.key, initrd.to_vec(), WriteCondition::Always).await.unwrap();
    let mut arches = BTreeMap::new();
    arches.insert("x86_64".to_string(), ArchAssets { kernel: k.clone(), initrd: i.clone() });
    let manifest = ReleaseManifest {
        id: release_id.into(),
        cmdline: cmdline.into(),
        template: None,
        arches,
        created_at: None,
        description: None,
    };
    put_json(store, &layout::release(release_id), &manifest).await;
    put_json(store, &layout::channel("stable"), &Channel { name: "stable".into(), release: release_id.into(), history: vec![] }).await;
    let mut record = ipxe_edge_core::model::new_gateway(name, fp.clone());
    record.vars.insert("site".into(), "lab-1".into());
    put_json(store, &layout::gateway(&fp), &record).await;
    if let Some(secrets) = secrets {
        store.put(&layout::secrets(&fp), secrets.to_vec(), WriteCondition::Always).await.unwrap();
    }
    Seeded { fingerprint: fp, kernel_key: k.key, initrd_key: i.key }
}

pub async fn put_json<T: serde::Serialize>(store: &dyn ObjectStore, key: &str, value: &T) {
    store.put(key, serde_json::to_vec_pretty(value).unwrap(), WriteCondition::Always).await.unwrap();
}

pub async fn update_gateway(store: &dyn ObjectStore, fp: &Fingerprint, change: impl FnOnce(&mut GatewayRecord)) {
    let key = layout::gateway(fp);
    let mut record: GatewayRecord = serde_json::from_slice(&store.get(&key).await.unwrap().unwrap().body).unwrap();
    change(&mut record);
    put_json(store, &key, &record).await;
}

/// Endpoint and credentials of a protocol server started by `scripts/test-servers.sh`.
pub struct ServerEnv {
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
}

fn server_env(endpoint_var: &str) -> ServerEnv {
    let endpoint = std::env::var(endpoint_var).unwrap_or_else(|_| {
        panic!("{endpoint_var} is not set: run the suite with scripts/test.sh, which starts the test servers")
    });
    ServerEnv {
        endpoint,
        access_key: std::env::var("IPXE_EDGE_TEST_ACCESS_KEY").unwrap_or_else(|_| "ipxeedgetest".into()),
        secret_key: std::env::var("IPXE_EDGE_TEST_SECRET_KEY").unwrap_or_else(|_| "ipxeedgetestsecret".into()),
    }
}

pub fn s3_env() -> ServerEnv {
    server_env("IPXE_EDGE_TEST_S3_ENDPOINT")
}

pub fn dynamodb_env() -> ServerEnv {
    server_env("IPXE_EDGE_TEST_DYNAMODB_ENDPOINT")
}

async fn sdk_config(env: &ServerEnv) -> aws_config::SdkConfig {
    let creds = aws_sdk_s3::config::Credentials::new(&env.access_key, &env.secret_key, None, None, "ipxe-edge-tests");
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(creds)
        .endpoint_url(&env.endpoint)
        .load()
        .await
}

pub async fn s3_client(env: &ServerEnv) -> aws_sdk_s3::Client {
    ipxe_edge_core::aws::s3_client(&sdk_config(env).await, true)
}

pub async fn dynamodb_client(env: &ServerEnv) -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::new(&sdk_config(env).await)
}

/// A bucket or table name unique to this test run.
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst))
}
