//! Backend round trips of the Lambda functions on a warm instance, counted by a proxy in front of
//! the real servers (s3s-fs for S3, moto for DynamoDB) that adds a network's latency to each
//! call, so that calls made one after another never overlap. Prints the calls per request and
//! how many were waited for one after another; checks the goals: a warm boot at most 4 calls,
//! at most 3 of them in sequence; a redemption at most 4, at most 3 in sequence. Also checks
//! what the copies a warm function keeps may cost: a promote and a change of the trust bundle
//! reach it within their max age.

use ipxe_edge_core::domain::token::Keyring;
use ipxe_edge_core::lambda::config::{BootConfig, RedeemConfig};
use ipxe_edge_core::lambda::http::{boot_handler, redeem_handler, BootApp, RedeemApp};
use ipxe_edge_core::lambda::init::{boot_app_with, redeem_app_with, static_sdk_config, Timeouts};
use ipxe_edge_core::storage::adapters::s3::S3Store;
use ipxe_edge_core::storage::{keys, ObjectStore, WriteCondition};
use ipxe_edge_tests::fault::{sequential_depth, Call, FaultProxy};
use ipxe_edge_tests::*;
use serde_json::json;
use std::collections::HashMap;
use std::time::Duration;

const SECRET: &[u8] = b"b2c.minio=\"bbz,https://s3.example,KEY,SECRET\"\n";
/// Latency the proxies add to every call.
const LATENCY: Duration = Duration::from_millis(25);

struct Deployment {
    s3: ServerEnv,
    ddb: ServerEnv,
    s3_proxy: FaultProxy,
    ddb_proxy: FaultProxy,
    direct: S3Store,
    settings: HashMap<&'static str, String>,
    gw: ipxe_edge_pki::Issued,
}

impl Deployment {
    async fn start(test: &str) -> Option<Self> {
        let (s3, ddb) = (s3_env(test)?, dynamodb_env(test)?);
        let bucket = unique_name("round-trips");
        let direct = S3Store::new(s3_client(&s3).await, bucket.clone());
        direct.client().create_bucket().bucket(&bucket).send().await.unwrap();
        let table = unique_name("round-trips");
        create_ledger_table(&dynamodb_client(&ddb).await, &table).await;
        let gw = issue_gateway("gw-round-trips");
        let release = SeedRelease { id: "r1", kernel: b"KERNEL-1", initrd: b"INITRD-1", cmdline: "quiet" };
        seed_gateway(&direct, "gw-round-trips", &gw.cert_der, release, Some(SECRET)).await;
        direct.put(keys::TRUST_BUNDLE, test_ca().cert_pem().into_bytes(), WriteCondition::Always).await.unwrap();
        let settings = HashMap::from([
            ("BUCKET", bucket),
            ("TABLE", table),
            ("TOKEN_KEYS", Keyring::generate_entry("k1")),
            ("SECRETS_BASE_URL", "https://secrets.example.org".to_string()),
            ("S3_FORCE_PATH_STYLE", "true".to_string()),
        ]);
        let (s3_proxy, ddb_proxy) =
            (FaultProxy::start(&s3.endpoint).await, FaultProxy::start_serialized(&ddb.endpoint).await);
        Some(Deployment { s3, ddb, s3_proxy, ddb_proxy, direct, settings, gw })
    }

    fn lookup<'a>(&'a self, overrides: &'a [(&str, &str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            overrides
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| v.to_string())
                .or_else(|| self.settings.get(name).cloned())
        }
    }

    fn clients(&self) -> (aws_sdk_s3::Client, aws_sdk_dynamodb::Client, aws_config::SdkConfig) {
        let s3 =
            static_sdk_config(&self.s3_proxy.endpoint, &self.s3.access_key, &self.s3.secret_key, Timeouts::Request);
        let ddb =
            static_sdk_config(&self.ddb_proxy.endpoint, &self.ddb.access_key, &self.ddb.secret_key, Timeouts::Request);
        (ipxe_edge_core::lambda::init::s3_client(&s3, true), aws_sdk_dynamodb::Client::new(&ddb), s3)
    }

    /// A boot function's application as its init builds it, with `overrides` in its environment.
    async fn boot_app(&self, overrides: &[(&str, &str)]) -> BootApp {
        let config = BootConfig::from_lookup(&self.lookup(overrides)).unwrap();
        let (s3, ddb, sdk) = self.clients();
        boot_app_with(config, &sdk, s3, ddb).await.unwrap()
    }

    async fn redeem_app(&self) -> RedeemApp {
        let config = RedeemConfig::from_lookup(&self.lookup(&[])).unwrap();
        let (s3, ddb, sdk) = self.clients();
        redeem_app_with(config, &sdk, s3, ddb).await.unwrap()
    }

    /// Boots the gateway once; its status, script and the calls it made.
    async fn boot(&self, app: &BootApp) -> (u16, String, Vec<Call>) {
        self.take_calls();
        let request = request(
            "apigw-http-v2-boot.json",
            &[
                ("__CLIENT_CERT_PEM__", json!(self.gw.cert_pem)),
                ("__RAW_QUERY__", json!("buildarch=x86_64")),
                ("__QUERY_PARAMETERS__", json!({"buildarch": "x86_64"})),
                ("__METHOD__", json!("GET")),
            ],
        );
        let response = boot_handler(app, request).await;
        let script = String::from_utf8_lossy(response.body().as_ref()).into_owned();
        (response.status().as_u16(), script, self.take_calls())
    }

    fn take_calls(&self) -> Vec<Call> {
        let mut calls = self.s3_proxy.take_calls();
        calls.extend(self.ddb_proxy.take_calls());
        calls.sort_by_key(|c| c.started);
        calls
    }

    fn set_latency(&self, latency: Duration) {
        self.s3_proxy.set_latency(latency);
        self.ddb_proxy.set_latency(latency);
    }
}

fn print_calls(what: &str, calls: &[Call]) {
    let names: Vec<String> = calls.iter().map(|c| format!("{} ({})", c.operation, c.status)).collect();
    println!("{what}: {} calls, {} in sequence: {}", calls.len(), sequential_depth(calls), names.join(", "));
}

fn secrets_path(script: &str) -> String {
    let start = script.find("https://secrets.example.org/secrets/").expect("secrets URL in script");
    let rest = &script[start + "https://secrets.example.org".len()..];
    rest[..rest.find('"').unwrap()].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_boots_and_redemptions_make_few_round_trips() {
    let Some(d) = Deployment::start("round_trips").await else { return };
    let boot = d.boot_app(&[]).await;
    let redeem = d.redeem_app().await;
    d.set_latency(LATENCY);

    let (status, _, first) = d.boot(&boot).await;
    assert_eq!(status, 200);
    print_calls("first boot of a warm function", &first);
    let (status, script, warm) = d.boot(&boot).await;
    assert_eq!(status, 200, "{script}");
    print_calls("warm boot", &warm);
    assert!(warm.len() <= 4, "a warm boot makes at most 4 calls: {warm:?}");
    assert!(sequential_depth(&warm) <= 3, "at most 3 of them in sequence: {warm:?}");
    assert!(!warm.iter().any(|c| c.operation == "ListObjectsV2"), "secrets presence comes from the record: {warm:?}");
    let s3_reads = warm.iter().filter(|c| c.operation.starts_with("GetObject")).count();
    assert_eq!(s3_reads, 1, "only the gateway record is read from S3: {warm:?}");

    let path = secrets_path(&script);
    let redeem_request =
        || request("function-url-redeem.json", &[("__PATH__", json!(path)), ("__METHOD__", json!("GET"))]);
    d.take_calls();
    let response = redeem_handler(&redeem, redeem_request()).await;
    let redemption = d.take_calls();
    assert_eq!(response.status(), 200);
    assert_eq!(response.body().as_ref(), SECRET);
    print_calls("redemption", &redemption);
    assert!(redemption.len() <= 3, "a redemption makes at most 3 calls: {redemption:?}");
    assert!(sequential_depth(&redemption) <= 2, "{redemption:?}");
    let writes = redemption.iter().filter(|c| !matches!(c.operation.as_str(), "GetObject" | "Query")).count();
    assert_eq!(writes, 1, "the token's use and the boot state are one write: {redemption:?}");
    assert_eq!(redeem_handler(&redeem, redeem_request()).await.status(), 410, "replay");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promotes_and_trust_changes_reach_a_warm_function_within_their_max_age() {
    let Some(d) = Deployment::start("round_trips_max_age").await else { return };
    let long = d.boot_app(&[]).await;
    let revalidating = d.boot_app(&[("CHANNEL_MAX_AGE_SECONDS", "0"), ("TRUST_MAX_AGE_SECONDS", "0")]).await;
    for app in [&long, &revalidating] {
        let (status, script, _) = d.boot(app).await;
        assert_eq!(status, 200);
        assert!(script.contains(&keys::asset(&sha256_hex(b"KERNEL-1"))), "{script}");
    }
    d.set_latency(LATENCY);
    let (_, _, unchanged) = d.boot(&revalidating).await;
    print_calls("warm boot revalidating channel and trust bundle", &unchanged);
    let revalidations: Vec<&Call> = unchanged.iter().filter(|c| c.operation == "GetObject if-none-match").collect();
    assert_eq!(revalidations.len(), 2, "channel and trust bundle revalidated: {unchanged:?}");
    // s3s-fs answers a conditional GET in full (S3 answers 304): the adapter compares the tags
    // itself then; `conditional_reads_get_304_where_the_server_implements_them` covers 304.
    assert!(revalidations.iter().all(|c| c.status == 304 || c.status == 200), "{unchanged:?}");
    d.set_latency(Duration::ZERO);

    // A promote: seen at once after max age 0, not within the default 10 s.
    let release = SeedRelease { id: "r2", kernel: b"KERNEL-2", initrd: b"INITRD-2", cmdline: "quiet" };
    seed_release(&d.direct, release, None, Default::default()).await;
    point_stable(&d.direct, "r2").await;
    let (_, script, _) = d.boot(&revalidating).await;
    assert!(script.contains(&keys::asset(&sha256_hex(b"KERNEL-2"))), "promoted release after max age: {script}");
    let (_, script, _) = d.boot(&long).await;
    assert!(script.contains(&keys::asset(&sha256_hex(b"KERNEL-1"))), "within max age, the copy: {script}");

    // The gateway's CA leaves the trust bundle: refused at once after max age 0, and until the
    // max age has passed the function keeps the bundle it has.
    let other = ipxe_edge_pki::CertificateAuthority::generate("another CA", 30).unwrap();
    d.direct.put(keys::TRUST_BUNDLE, other.cert_pem().into_bytes(), WriteCondition::Always).await.unwrap();
    let (status, _, _) = d.boot(&revalidating).await;
    assert_eq!(status, 403, "untrusted CA after max age");
    let (status, _, _) = d.boot(&long).await;
    assert_eq!(status, 200, "within max age, the bundle read before");
}

/// moto implements S3's conditional GET: an unchanged object answers 304 and no body.
#[tokio::test]
async fn conditional_reads_get_304_where_the_server_implements_them() {
    use ipxe_edge_core::storage::Revalidated;
    let Some(moto) = dynamodb_env("conditional_reads") else { return };
    let bucket = unique_name("conditional");
    let store = S3Store::new(s3_client(&moto).await, bucket.clone());
    store.client().create_bucket().bucket(&bucket).send().await.unwrap();
    store.put("channels/stable.json", b"{}".to_vec(), WriteCondition::Always).await.unwrap();
    let first = store.get("channels/stable.json").await.unwrap().unwrap();
    let etag = first.etag.clone().expect("an ETag");
    assert_eq!(store.get_unless("channels/stable.json", &etag).await.unwrap(), Revalidated::Unchanged);
    store.put("channels/stable.json", b"{\"x\":1}".to_vec(), WriteCondition::Always).await.unwrap();
    match store.get_unless("channels/stable.json", &etag).await.unwrap() {
        Revalidated::Changed(Some(object)) => assert_eq!(object.body, b"{\"x\":1}"),
        other => panic!("changed object: {other:?}"),
    }
    store.delete("channels/stable.json").await.unwrap();
    assert_eq!(store.get_unless("channels/stable.json", &etag).await.unwrap(), Revalidated::Changed(None));
}
