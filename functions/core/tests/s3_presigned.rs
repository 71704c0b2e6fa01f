//! The boot handler against a real S3-compatible server (s3s-fs) that verifies SigV4 presigned
//! URLs: the URLs in the boot script download exactly the uploaded bytes, and nothing else.

use ipxe_edge_core::api::metrics::NoMetrics;
use ipxe_edge_core::api::trust::Trust;
use ipxe_edge_core::domain::identity::DEFAULT_CLOCK_SKEW;
use ipxe_edge_core::domain::identity::{ChainVerifier, TrustBundle};
use ipxe_edge_core::domain::token::Keyring;
use ipxe_edge_core::lambda::http::{boot_handler, BootApp, CertHeader};
use ipxe_edge_core::service::boot::{BootService, BootSettings};
use ipxe_edge_core::storage::adapters::s3::S3Store;
use ipxe_edge_core::storage::records::Records;
use ipxe_edge_core::storage::{ObjectStore, Presigner};
use ipxe_edge_tests::*;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// A fresh bucket on s3s-fs, or `None` to skip the test.
async fn store(test: &str) -> Option<Arc<S3Store>> {
    let env = s3_env(test)?;
    let client = s3_client(&env).await;
    let bucket = unique_name("boot");
    client.create_bucket().bucket(&bucket).send().await.expect("create bucket on s3s-fs");
    Some(Arc::new(S3Store::new(client, bucket)))
}

fn app(store: Arc<S3Store>, presign_ttl: Duration) -> BootApp {
    let settings = BootSettings { presign_ttl, ..BootSettings::new("https://secrets.example.org") };
    BootApp {
        service: BootService::new(
            Records::new(store.clone()),
            store,
            Arc::new(Keyring::parse(&Keyring::generate_entry("k1")).unwrap()),
            settings,
        ),
        trust: Trust::Fixed(Arc::new(ChainVerifier::new(
            TrustBundle::from_pem(test_ca().cert_pem().as_bytes()).unwrap(),
            DEFAULT_CLOCK_SKEW,
        ))),
        cert_header: CertHeader::Off,
        metrics: Arc::new(NoMetrics),
    }
}

fn boot_event(cert_pem: &str) -> lambda_http::Request {
    request(
        "apigw-http-v2-boot.json",
        &[
            ("__CLIENT_CERT_PEM__", json!(cert_pem)),
            ("__RAW_QUERY__", json!("buildarch=x86_64")),
            ("__QUERY_PARAMETERS__", json!({"buildarch": "x86_64"})),
            ("__METHOD__", json!("GET")),
        ],
    )
}

/// The kernel and initrd URLs of a rendered default script.
fn urls(script: &str) -> (String, String) {
    let word = |prefix: &str| {
        let line =
            script.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no {prefix} line in {script}"));
        line.split(' ').nth(1).unwrap().to_string()
    };
    (word("kernel "), word("initrd "))
}

async fn fetch(url: &str) -> (u16, Vec<u8>) {
    let response = reqwest::get(url).await.expect("request reaches s3s-fs");
    (response.status().as_u16(), response.bytes().await.unwrap().to_vec())
}

#[tokio::test]
async fn presigned_urls_download_exactly_the_uploaded_assets() {
    let Some(store) = store("presigned_urls_download_exactly_the_uploaded_assets").await else { return };
    let kernel: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let initrd: Vec<u8> = (0..150_000u32).map(|i| (i * 13 % 241) as u8).collect();
    let gw = issue_gateway("gw-s3");
    let seeded = seed_gateway(
        store.as_ref(),
        "gw-s3",
        &gw.cert_der,
        SeedRelease { id: "r1", kernel: &kernel, initrd: &initrd, cmdline: "console=ttyS0" },
        Some(b"s=1"),
    )
    .await;

    let response = boot_handler(&app(store.clone(), Duration::from_secs(300)), boot_event(&gw.cert_pem)).await;
    let script = String::from_utf8(response.body().to_vec()).unwrap();
    assert_eq!(response.status(), 200, "{script}");
    let (kernel_url, initrd_url) = urls(&script);
    assert!(kernel_url.contains("X-Amz-Signature="), "{kernel_url}");
    assert!(kernel_url.contains(&seeded.kernel_key), "{kernel_url}");
    assert!(kernel_url.contains("X-Amz-Expires=300"), "{kernel_url}");

    assert_eq!(fetch(&kernel_url).await, (200, kernel.clone()));
    assert_eq!(fetch(&initrd_url).await, (200, initrd.clone()));

    // A tampered signature is refused.
    let sig_at = kernel_url.find("X-Amz-Signature=").unwrap() + "X-Amz-Signature=".len();
    let mut tampered = kernel_url.clone().into_bytes();
    tampered[sig_at] = if tampered[sig_at] == b'0' { b'1' } else { b'0' };
    let (status, _) = fetch(&String::from_utf8(tampered).unwrap()).await;
    assert!(status == 403 || status == 400, "tampered signature answered {status}");

    // The kernel's signature does not open the initrd.
    let rewritten = kernel_url.replace(&seeded.kernel_key, &seeded.initrd_key);
    assert_ne!(rewritten, kernel_url);
    let (status, body) = fetch(&rewritten).await;
    assert!(status == 403 || status == 400, "URL rewritten to another key answered {status}");
    assert_ne!(body, initrd);

    // A longer lifetime cannot be claimed.
    let (status, _) = fetch(&kernel_url.replace("X-Amz-Expires=300", "X-Amz-Expires=900")).await;
    assert!(status == 403 || status == 400, "extended expiry answered {status}");
}

#[tokio::test]
async fn expired_presigned_urls_are_refused() {
    let Some(store) = store("expired_presigned_urls_are_refused").await else { return };
    let gw = issue_gateway("gw-exp");
    seed_gateway(
        store.as_ref(),
        "gw-exp",
        &gw.cert_der,
        SeedRelease { id: "r1", kernel: b"kernel-bytes", initrd: b"initrd-bytes", cmdline: "" },
        None,
    )
    .await;
    let response = boot_handler(&app(store.clone(), Duration::from_secs(1)), boot_event(&gw.cert_pem)).await;
    assert_eq!(response.status(), 200);
    let (kernel_url, _) = urls(std::str::from_utf8(response.body()).unwrap());
    assert_eq!(fetch(&kernel_url).await.0, 200, "valid at first");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (status, body) = fetch(&kernel_url).await;
    assert!(status == 403 || status == 400, "expired URL answered {status}");
    assert_ne!(body, b"kernel-bytes");
}

#[tokio::test]
async fn unknown_gateway_on_real_s3_is_forbidden() {
    let Some(store) = store("unknown_gateway_on_real_s3_is_forbidden").await else { return };
    let gw = issue_gateway("gw-unknown");
    let response = boot_handler(&app(store, Duration::from_secs(300)), boot_event(&gw.cert_pem)).await;
    assert_eq!(response.status(), 403);
}

#[tokio::test]
async fn unreachable_or_refusing_s3_is_503() {
    let Some(env) = s3_env("unreachable_or_refusing_s3_is_503") else { return };
    // Wrong credentials: the server answers, but refuses every request.
    let bad =
        ServerEnv { endpoint: env.endpoint.clone(), access_key: env.access_key.clone(), secret_key: "wrong".into() };
    let refused = Arc::new(S3Store::new(s3_client(&bad).await, unique_name("boot")));
    let gw = issue_gateway("gw-503");
    let response = boot_handler(&app(refused, Duration::from_secs(300)), boot_event(&gw.cert_pem)).await;
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers().get("retry-after").unwrap(), "5");
    // Nothing listening at all.
    let closed = ServerEnv { endpoint: "http://127.0.0.1:9".into(), access_key: "a".into(), secret_key: "b".into() };
    let dead = Arc::new(S3Store::new(s3_client(&closed).await, "bucket-x".to_string()));
    assert!(dead.get("gateways/x/gateway.json").await.is_err());
    let response = boot_handler(&app(dead, Duration::from_secs(300)), boot_event(&gw.cert_pem)).await;
    assert_eq!(response.status(), 503);
}

#[tokio::test]
async fn store_adapter_round_trip() {
    let Some(store) = store("store_adapter_round_trip").await else { return };
    assert_eq!(store.get("missing").await.unwrap(), None);
    assert!(!store.exists("missing").await.unwrap());
    store.put("a/b", b"hello".to_vec(), ipxe_edge_core::storage::WriteCondition::Always).await.unwrap();
    assert_eq!(store.get("a/b").await.unwrap().unwrap().body, b"hello");
    assert!(store.exists("a/b").await.unwrap());
    assert_eq!(store.list("a/").await.unwrap(), vec!["a/b".to_string()]);
    let url = store.presign_get("a/b", Duration::from_secs(30)).await.unwrap();
    assert_eq!(fetch(&url).await, (200, b"hello".to_vec()));
    store.delete("a/b").await.unwrap();
    assert!(!store.exists("a/b").await.unwrap());
    let _ = Value::Null;
}
