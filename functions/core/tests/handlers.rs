//! The boot and redeem handlers driven by API Gateway event fixtures (HTTP API 2.0, REST API,
//! Lambda function URL), with in-memory stores.

use ipxe_edge_core::api::metrics::NoMetrics;
use ipxe_edge_core::api::trust::Trust;
use ipxe_edge_core::domain::identity::DEFAULT_CLOCK_SKEW;
use ipxe_edge_core::domain::identity::{ChainVerifier, Fingerprint, TrustBundle};
use ipxe_edge_core::domain::model::{GatewayState, ReleaseManifest};
use ipxe_edge_core::domain::token::{Grant, Keyring};
use ipxe_edge_core::lambda::http::{boot_handler, redeem_handler, BootApp, CertHeader, RedeemApp};
use ipxe_edge_core::service::boot::{BootService, BootSettings};
use ipxe_edge_core::service::redeem::RedeemService;
use ipxe_edge_core::storage::adapters::memory::{MemoryLedger, MemoryPresigner, MemoryStore};
use ipxe_edge_core::storage::keys;
use ipxe_edge_core::storage::records::Records;
use ipxe_edge_core::storage::ObjectStore;
use ipxe_edge_pki::{issue_v1_client_with_openssl, CertificateAuthority};
use ipxe_edge_tests::*;
use lambda_http::{Body, Response};
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

const SECRET: &[u8] = b"b2c.minio=\"bbz,https://s3.example,KEY,SECRET\"\n";

struct Harness {
    store: Arc<MemoryStore>,
    ledger: Arc<MemoryLedger>,
    keyring: Arc<Keyring>,
    boot: BootApp,
    redeem: RedeemApp,
    gw: ipxe_edge_pki::Issued,
    fp: Fingerprint,
}

async fn harness_with(cert_header: CertHeader, secrets: Option<&[u8]>) -> Harness {
    let store = Arc::new(MemoryStore::new());
    let ledger = Arc::new(MemoryLedger::default());
    let keyring = Arc::new(Keyring::parse(&Keyring::generate_entry("k1")).unwrap());
    let gw = issue_gateway("gw1");
    let seeded = seed_gateway(
        store.as_ref(),
        "gw1",
        &gw.cert_der,
        SeedRelease {
            id: "r1",
            kernel: b"KERNEL",
            initrd: b"INITRD",
            cmdline: "console=ttyS0 b2c.container=\"docker://x\"",
        },
        secrets,
    )
    .await;
    let settings = BootSettings::new("https://secrets.example.org");
    let boot = BootApp {
        service: BootService::new(
            Records::new(store.clone()),
            Arc::new(MemoryPresigner::default()),
            keyring.clone(),
            settings,
        ),
        trust: Trust::Fixed(Arc::new(ChainVerifier::new(
            TrustBundle::from_pem(test_ca().cert_pem().as_bytes()).unwrap(),
            DEFAULT_CLOCK_SKEW,
        ))),
        cert_header,
        metrics: Arc::new(NoMetrics),
    };
    let redeem = RedeemApp {
        service: RedeemService::new(Records::new(store.clone()), ledger.clone(), keyring.clone()),
        metrics: Arc::new(NoMetrics),
    };
    Harness { store, ledger, keyring, boot, redeem, gw, fp: seeded.fingerprint }
}

async fn harness() -> Harness {
    harness_with(CertHeader::Off, Some(SECRET)).await
}

fn v2_boot(cert_pem: &str, raw_query: &str, params: Value) -> lambda_http::Request {
    v2_boot_method(cert_pem, raw_query, params, "GET")
}

fn v2_boot_method(cert_pem: &str, raw_query: &str, params: Value, method: &str) -> lambda_http::Request {
    request(
        "apigw-http-v2-boot.json",
        &[
            ("__CLIENT_CERT_PEM__", json!(cert_pem)),
            ("__RAW_QUERY__", json!(raw_query)),
            ("__QUERY_PARAMETERS__", params),
            ("__METHOD__", json!(method)),
        ],
    )
}

fn default_params() -> Value {
    json!({"mac": "52:54:00:12:34:56", "platform": "efi", "buildarch": "x86_64"})
}

fn redeem_request(path: &str, method: &str) -> lambda_http::Request {
    request("function-url-redeem.json", &[("__PATH__", json!(path)), ("__METHOD__", json!(method))])
}

fn body(response: &Response<Body>) -> String {
    String::from_utf8_lossy(response.body().as_ref()).into_owned()
}

fn header<'a>(response: &'a Response<Body>, name: &str) -> &'a str {
    response.headers().get(name).map(|v| v.to_str().unwrap()).unwrap_or("")
}

/// The secrets URL path (`/secrets/<token>`) in a boot script.
fn secrets_path(script: &str) -> String {
    let start = script.find("https://secrets.example.org/secrets/").expect("secrets URL in script");
    let rest = &script[start + "https://secrets.example.org".len()..];
    rest[..rest.find('"').unwrap()].to_string()
}

#[tokio::test]
async fn http_api_event_gets_a_presigned_boot_script() {
    let h = harness().await;
    let response = boot_handler(
        &h.boot,
        v2_boot(&h.gw.cert_pem, "mac=52:54:00:12:34:56&platform=efi&buildarch=x86_64", default_params()),
    )
    .await;
    let text = body(&response);
    assert_eq!(response.status(), 200, "{text}");
    assert!(header(&response, "content-type").starts_with("text/plain"));
    assert_eq!(header(&response, "cache-control"), "no-store");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "#!ipxe");
    let kernel_url = format!("https://objects.invalid/{}?expires=300&sig=0123", keys::asset(&sha256_hex(b"KERNEL")));
    assert!(
        lines[1]
            .starts_with(&format!("kernel {kernel_url} console=ttyS0 b2c.container=\"docker://x\" b2c.extra_args_url=\"https://secrets.example.org/secrets/")),
        "{}",
        lines[1]
    );
    assert_eq!(
        lines[2],
        format!("initrd https://objects.invalid/{}?expires=300&sig=0123", keys::asset(&sha256_hex(b"INITRD")))
    );
    assert_eq!(lines[3], "boot");
    assert_eq!(lines.len(), 4);
}

/// iPXE 2.0 reports its version and gets the script that checks each image's SHA-256 before
/// `boot`; older versions, and gateways that do not say, get the plain one.
#[tokio::test]
async fn gateways_on_ipxe_2_get_a_script_that_checks_digests() {
    let h = harness().await;
    let query = |version: &str| format!("buildarch=x86_64&version={version}");
    let script = |version: &str| {
        let request = v2_boot(&h.gw.cert_pem, &query(version), default_params());
        async { body(&boot_handler(&h.boot, request).await) }
    };
    let checked = script("2.0.0%2B%20%28g1234%29").await;
    let lines: Vec<&str> = checked.lines().collect();
    assert!(lines[1].starts_with("kernel --name kernel https://objects.invalid/"), "{checked}");
    assert!(lines[2].starts_with("initrd --name initrd https://objects.invalid/"), "{checked}");
    assert_eq!(lines[3], "sha256sum --set edge_kernel_sha256 kernel");
    assert_eq!(lines[4], format!("iseq ${{edge_kernel_sha256}} {} || goto edge_mismatch", sha256_hex(b"KERNEL")));
    assert_eq!(lines[6], format!("iseq ${{edge_initrd_sha256}} {} || goto edge_mismatch", sha256_hex(b"INITRD")));
    assert_eq!(lines[7], "boot");
    assert!(lines[8..].contains(&"exit 1"), "a mismatch ends the script with an error");
    for older in ["1.21.1%2Bgit20250501", "", "garbage"] {
        let plain = script(older).await;
        assert!(!plain.contains("sha256sum") && plain.lines().nth(3) == Some("boot"), "{older:?}: {plain}");
    }
}

/// ECDSA gateways (iPXE 2.0): a P-256 leaf signed by the deployment's ECDSA CA, whose
/// certificate sits in the truststore beside the RSA CA's, boots through both API Gateway event
/// shapes; an ECDSA leaf of a CA outside the truststore does not. A P-256 leaf under the RSA CA
/// verifies too (the CA's signature algorithm is what iPXE cares about, not the verifier).
#[tokio::test]
async fn ecdsa_gateway_certificates_boot() {
    use ipxe_edge_pki::{validity_days, KeyType};
    let store = Arc::new(MemoryStore::new());
    let ecdsa_ca = CertificateAuthority::generate_with("ipxe-edge test ECDSA CA", 30, KeyType::EcdsaP256).unwrap();
    let gw = ecdsa_ca.issue_client_with("gw-ec", validity_days(10), KeyType::EcdsaP256).unwrap();
    let under_rsa = test_ca().issue_client_with("gw-ec-rsa-ca", validity_days(10), KeyType::EcdsaP256).unwrap();
    let release = || SeedRelease { id: "r1", kernel: b"KERNEL", initrd: b"INITRD", cmdline: "" };
    seed_gateway(store.as_ref(), "gw-ec", &gw.cert_der, release(), Some(SECRET)).await;
    seed_gateway(store.as_ref(), "gw-ec-rsa-ca", &under_rsa.cert_der, release(), Some(SECRET)).await;
    let truststore = format!("{}{}", test_ca().cert_pem(), ecdsa_ca.cert_pem());
    let boot = BootApp {
        service: BootService::new(
            Records::new(store.clone()),
            Arc::new(MemoryPresigner::default()),
            Arc::new(Keyring::parse(&Keyring::generate_entry("k1")).unwrap()),
            BootSettings::new("https://secrets.example.org"),
        ),
        trust: Trust::Fixed(Arc::new(ChainVerifier::new(
            TrustBundle::from_pem(truststore.as_bytes()).unwrap(),
            DEFAULT_CLOCK_SKEW,
        ))),
        cert_header: CertHeader::Off,
        metrics: Arc::new(NoMetrics),
    };
    for leaf in [&gw, &under_rsa] {
        let response = boot_handler(&boot, v2_boot(&leaf.cert_pem, "buildarch=x86_64", default_params())).await;
        assert_eq!(response.status(), 200, "{}", body(&response));
        assert!(body(&response).contains("/secrets/"));
    }
    let rest = request("apigw-rest-boot.json", &[("__CLIENT_CERT_PEM__", json!(gw.cert_pem))]);
    let response = boot_handler(&boot, rest).await;
    assert_eq!(response.status(), 200, "{}", body(&response));

    let foreign_ca = CertificateAuthority::generate_with("another farm's ECDSA CA", 30, KeyType::EcdsaP256).unwrap();
    let foreign = foreign_ca.issue_client_with("gw-ec", validity_days(10), KeyType::EcdsaP256).unwrap();
    let response = boot_handler(&boot, v2_boot(&foreign.cert_pem, "buildarch=x86_64", default_params())).await;
    assert_eq!(response.status(), 403, "{}", body(&response));
}

#[tokio::test]
async fn rest_api_event_with_x509_v1_certificate_boots() {
    let h = harness().await;
    let legacy = issue_v1_client_with_openssl(test_ca(), "ci-gateway-legacy", 30).expect("openssl is installed");
    seed_gateway(
        h.store.as_ref(),
        "legacy",
        &legacy.cert_der,
        SeedRelease { id: "r1", kernel: b"KERNEL", initrd: b"INITRD", cmdline: "quiet" },
        None,
    )
    .await;
    let req = request("apigw-rest-boot.json", &[("__CLIENT_CERT_PEM__", json!(legacy.cert_pem))]);
    let response = boot_handler(&h.boot, req).await;
    let text = body(&response);
    assert_eq!(response.status(), 200, "{text}");
    assert!(text.contains(" quiet\n"), "no secrets, so no extra_args_url: {text}");
    assert!(!text.contains("extra_args_url"));
}

#[tokio::test]
async fn missing_certificate_is_forbidden_and_header_ignored_unless_configured() {
    let h = harness().await;
    // A perfectly valid certificate in the proxy header does not count when header mode is off.
    let escaped = percent_encoding::utf8_percent_encode(&h.gw.cert_pem, percent_encoding::NON_ALPHANUMERIC).to_string();
    let req = request("apigw-http-v2-no-cert.json", &[("__HEADER_CERT__", json!(escaped))]);
    let response = boot_handler(&h.boot, req).await;
    assert_eq!(response.status(), 403);
    assert!(body(&response).contains("client certificate required"));

    let with_header = harness_with(CertHeader::Trusted("x-amzn-mtls-clientcert".parse().unwrap()), Some(SECRET)).await;
    let escaped =
        percent_encoding::utf8_percent_encode(&with_header.gw.cert_pem, percent_encoding::NON_ALPHANUMERIC).to_string();
    let req = request("apigw-http-v2-no-cert.json", &[("__HEADER_CERT__", json!(escaped))]);
    let response = boot_handler(&with_header.boot, req).await;
    assert_eq!(response.status(), 200, "{}", body(&response));

    // Header mode on still verifies the chain: a certificate from another CA is refused.
    let other = CertificateAuthority::generate("rogue", 30)
        .unwrap()
        .issue_client("gw1", ipxe_edge_pki::validity_days(5))
        .unwrap();
    let escaped =
        percent_encoding::utf8_percent_encode(&other.cert_pem, percent_encoding::NON_ALPHANUMERIC).to_string();
    let req = request("apigw-http-v2-no-cert.json", &[("__HEADER_CERT__", json!(escaped))]);
    assert_eq!(boot_handler(&with_header.boot, req).await.status(), 403);
}

#[tokio::test]
async fn unknown_revoked_and_disabled_gateways_are_forbidden() {
    let h = harness().await;
    let stranger = issue_gateway("stranger");
    let response = boot_handler(&h.boot, v2_boot(&stranger.cert_pem, "", Value::Null)).await;
    assert_eq!(response.status(), 403);
    assert_eq!(body(&response), "gateway not enrolled\n");

    for state in [GatewayState::Revoked, GatewayState::Disabled] {
        update_gateway(h.store.as_ref(), &h.fp, |r| r.state = state).await;
        let response = boot_handler(&h.boot, v2_boot(&h.gw.cert_pem, "", Value::Null)).await;
        assert_eq!(response.status(), 403, "{state:?}");
    }
}

#[tokio::test]
async fn certificate_from_another_ca_or_garbage_is_forbidden() {
    let h = harness().await;
    let other = CertificateAuthority::generate("ipxe-edge test CA", 30).unwrap();
    let forged = other.issue_client("gw1", ipxe_edge_pki::validity_days(5)).unwrap();
    assert_eq!(boot_handler(&h.boot, v2_boot(&forged.cert_pem, "", Value::Null)).await.status(), 403);
    let garbage = "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n";
    assert_eq!(boot_handler(&h.boot, v2_boot(garbage, "", Value::Null)).await.status(), 403);
}

#[tokio::test]
async fn storage_outage_is_503_with_retry_after() {
    let h = harness().await;
    h.store.fail.store(true, Ordering::SeqCst);
    let response = boot_handler(&h.boot, v2_boot(&h.gw.cert_pem, "", Value::Null)).await;
    assert_eq!(response.status(), 503);
    assert_eq!(header(&response, "retry-after"), "5");
    assert!(!body(&response).starts_with("#!ipxe"));
}

#[tokio::test]
async fn bad_query_and_missing_architecture() {
    let h = harness().await;
    let response = boot_handler(&h.boot, v2_boot(&h.gw.cert_pem, "mac=zz", json!({"mac": "zz"}))).await;
    assert_eq!(response.status(), 400);
    assert!(body(&response).contains("mac"));
    let response =
        boot_handler(&h.boot, v2_boot(&h.gw.cert_pem, "buildarch=arm64", json!({"buildarch": "arm64"}))).await;
    assert_eq!(response.status(), 404);
    assert_eq!(body(&response), "release r1 has no assets for architecture arm64\n");
}

#[tokio::test]
async fn wrong_path_and_method() {
    let h = harness().await;
    let response = boot_handler(&h.boot, v2_boot_method(&h.gw.cert_pem, "", Value::Null, "POST")).await;
    assert_eq!(response.status(), 405);
    let response = redeem_handler(&h.redeem, redeem_request("/boot.ipxe", "GET")).await;
    assert_eq!(response.status(), 404);
}

#[tokio::test]
async fn unsafe_gateway_variable_or_template_is_an_error_not_a_script() {
    let h = harness().await;
    let manifest_key = keys::release("r1");
    let mut manifest: ReleaseManifest =
        serde_json::from_slice(&h.store.get(&manifest_key).await.unwrap().unwrap().body).unwrap();
    manifest.template = Some("#!ipxe\necho ${site}\nkernel ${kernel_url} ${cmdline}\nboot\n".into());
    put_json(h.store.as_ref(), &manifest_key, &manifest).await;
    update_gateway(h.store.as_ref(), &h.fp, |r| {
        r.vars.insert("site".into(), "x\nchain http://evil/".into());
    })
    .await;
    let response = boot_handler(&h.boot, v2_boot(&h.gw.cert_pem, "", Value::Null)).await;
    assert_eq!(response.status(), 500);
    assert!(!body(&response).contains("evil"));
}

#[tokio::test]
async fn template_needing_secrets_without_secrets_is_an_error() {
    let h = harness_with(CertHeader::Off, None).await;
    let manifest_key = keys::release("r1");
    let mut manifest: ReleaseManifest =
        serde_json::from_slice(&h.store.get(&manifest_key).await.unwrap().unwrap().body).unwrap();
    manifest.cmdline = "b2c.extra_args_url=\"${secrets_url}\"".into();
    put_json(h.store.as_ref(), &manifest_key, &manifest).await;
    let response = boot_handler(&h.boot, v2_boot(&h.gw.cert_pem, "", Value::Null)).await;
    assert_eq!(response.status(), 500, "never a silently broken URL");
}

#[tokio::test]
async fn cmdline_can_place_the_secrets_url_itself() {
    let h = harness().await;
    let manifest_key = keys::release("r1");
    let mut manifest: ReleaseManifest =
        serde_json::from_slice(&h.store.get(&manifest_key).await.unwrap().unwrap().body).unwrap();
    manifest.cmdline = "b2c.extra_args_url=\"${secrets_url}\" hostname=${gateway} mac=${netX/mac}".into();
    put_json(h.store.as_ref(), &manifest_key, &manifest).await;
    let response = boot_handler(&h.boot, v2_boot(&h.gw.cert_pem, "", Value::Null)).await;
    let text = body(&response);
    assert_eq!(response.status(), 200, "{text}");
    assert_eq!(text.matches("extra_args_url").count(), 1, "{text}");
    assert!(text.contains(" hostname=gw1 mac=${netX/mac}\n"), "{text}");
}

#[tokio::test]
async fn secrets_are_served_exactly_once() {
    let h = harness().await;
    let script = body(&boot_handler(&h.boot, v2_boot(&h.gw.cert_pem, "", Value::Null)).await);
    let path = secrets_path(&script);

    // HEAD (and any other method) is refused without touching the ledger.
    for method in ["HEAD", "POST", "DELETE"] {
        assert_eq!(redeem_handler(&h.redeem, redeem_request(&path, method)).await.status(), 405);
    }
    let first = redeem_handler(&h.redeem, redeem_request(&path, "GET")).await;
    assert_eq!(first.status(), 200);
    assert_eq!(first.body().as_ref(), SECRET);
    assert!(header(&first, "content-type").starts_with("text/plain"));
    assert_eq!(header(&first, "cache-control"), "no-store");
    let second = redeem_handler(&h.redeem, redeem_request(&path, "GET")).await;
    assert_eq!(second.status(), 410);
    assert!(!second.body().as_ref().windows(6).any(|w| w == b"SECRET"));
}

#[tokio::test]
async fn failed_reads_or_ledger_writes_leave_the_token_redeemable() {
    let h = harness().await;
    let script = body(&boot_handler(&h.boot, v2_boot(&h.gw.cert_pem, "", Value::Null)).await);
    let path = secrets_path(&script);

    h.store.fail.store(true, Ordering::SeqCst);
    let response = redeem_handler(&h.redeem, redeem_request(&path, "GET")).await;
    assert_eq!(response.status(), 503);
    assert_eq!(header(&response, "retry-after"), "5");
    h.store.fail.store(false, Ordering::SeqCst);

    h.ledger.fail.store(true, Ordering::SeqCst);
    assert_eq!(redeem_handler(&h.redeem, redeem_request(&path, "GET")).await.status(), 503);
    h.ledger.fail.store(false, Ordering::SeqCst);

    assert_eq!(redeem_handler(&h.redeem, redeem_request(&path, "GET")).await.status(), 200);
}

#[tokio::test]
async fn malformed_forged_and_expired_tokens() {
    let h = harness().await;
    assert_eq!(redeem_handler(&h.redeem, redeem_request("/secrets/%%%", "GET")).await.status(), 400);
    assert_eq!(redeem_handler(&h.redeem, redeem_request("/secrets/abc", "GET")).await.status(), 400);
    assert_eq!(redeem_handler(&h.redeem, redeem_request("/secrets/", "GET")).await.status(), 404);

    let other = Keyring::parse(&Keyring::generate_entry("k1")).unwrap();
    let (_, forged) = other.mint(&h.fp, &Grant::Secrets, u64::MAX).unwrap();
    assert_eq!(redeem_handler(&h.redeem, redeem_request(&format!("/secrets/{forged}"), "GET")).await.status(), 403);

    // Signed by us but for another object than the gateway's secrets.
    let (_, wrong_key) = h.keyring.mint_v1(&h.fp, "releases/r1/manifest.json", u64::MAX);
    assert_eq!(redeem_handler(&h.redeem, redeem_request(&format!("/secrets/{wrong_key}"), "GET")).await.status(), 403);

    let (id, expired) = h.keyring.mint(&h.fp, &Grant::Secrets, 1).unwrap();
    assert_eq!(redeem_handler(&h.redeem, redeem_request(&format!("/secrets/{expired}"), "GET")).await.status(), 410);
    assert!(!h.ledger.holds(&id.to_string()), "a refused token is not recorded");
}

#[tokio::test]
async fn concurrent_redemptions_in_memory_give_one_success() {
    let h = Arc::new(harness().await);
    let script = body(&boot_handler(&h.boot, v2_boot(&h.gw.cert_pem, "", Value::Null)).await);
    let path = secrets_path(&script);
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let h = h.clone();
            let path = path.clone();
            tokio::spawn(async move { redeem_handler(&h.redeem, redeem_request(&path, "GET")).await.status().as_u16() })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 410).count(), 15, "{statuses:?}");
}

#[tokio::test]
async fn presign_lifetime_is_configurable() {
    let h = harness().await;
    let settings =
        BootSettings { presign_ttl: Duration::from_secs(60), ..BootSettings::new("https://secrets.example.org") };
    let app = BootApp {
        service: BootService::new(
            Records::new(h.store.clone()),
            Arc::new(MemoryPresigner::default()),
            h.keyring.clone(),
            settings,
        ),
        trust: Trust::Fixed(Arc::new(ChainVerifier::new(
            TrustBundle::from_pem(test_ca().cert_pem().as_bytes()).unwrap(),
            DEFAULT_CLOCK_SKEW,
        ))),
        cert_header: CertHeader::Off,
        metrics: Arc::new(NoMetrics),
    };
    let text = body(&boot_handler(&app, v2_boot(&h.gw.cert_pem, "", Value::Null)).await);
    assert_eq!(text.matches("expires=60&").count(), 2, "{text}");
}

/// A record naming a release or channel like `../x` is a configuration error: `500` "record
/// invalid", never a `503` with `Retry-After` that would make gateways retry forever.
#[tokio::test]
async fn records_naming_path_tricks_are_500_record_invalid() {
    type Edit = Box<dyn Fn(&Harness) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + '_>>>;
    let edits: Vec<(&str, Edit)> = vec![
        (
            "pinned_release",
            Box::new(|h: &Harness| {
                Box::pin(update_gateway(h.store.as_ref(), &h.fp, |r| r.pinned_release = Some("../x".into())))
            }),
        ),
        (
            "channel",
            Box::new(|h: &Harness| {
                Box::pin(update_gateway(h.store.as_ref(), &h.fp, |r| r.channel = Some("../x".into())))
            }),
        ),
        (
            "channel release",
            Box::new(|h: &Harness| {
                Box::pin(async move {
                    h.store.insert(&keys::channel("stable"), br#"{"name":"stable","release":"../x"}"#.to_vec());
                })
            }),
        ),
    ];
    for (what, edit) in edits {
        let h = harness().await;
        edit(&h).await;
        let response = boot_handler(&h.boot, v2_boot(&h.gw.cert_pem, "", Value::Null)).await;
        assert_eq!(response.status(), 500, "{what}");
        assert!(response.headers().get("retry-after").is_none(), "{what}");
        assert!(body(&response).contains("record invalid"), "{what}: {}", body(&response));
    }
}

fn v2_renewal(token: &str, raw_query: &str, params: Value) -> lambda_http::Request {
    request(
        "apigw-http-v2-renewal.json",
        &[
            ("__PATH__", json!(format!("/renewal/{token}"))),
            ("__TOKEN__", json!(token)),
            ("__METHOD__", json!("GET")),
            ("__RAW_QUERY__", json!(raw_query)),
            ("__QUERY_PARAMETERS__", params),
        ],
    )
}

#[tokio::test]
async fn renewal_route_from_an_http_api_event_answers_once() {
    use ipxe_edge_core::domain::model::{GatewayCertificate, PendingRenewal};
    let h = harness_with(CertHeader::Off, Some(b"renew=${renewal_url}")).await;
    let records = Records::new(h.store.clone());
    let renewed = issue_gateway("gw1");
    let new = Fingerprint::of_der(&renewed.cert_der);
    records.add_certificate(&h.fp, GatewayCertificate::new(new.clone(), Some(i64::MAX / 2), None)).await.unwrap();
    let renewal = PendingRenewal {
        fingerprint: new.clone(),
        renews: h.fp.clone(),
        not_after: i64::MAX / 2,
        created_at: 0,
        cert_pem: renewed.cert_pem.clone(),
        key_pem: renewed.key_pem.clone(),
        autoexec: "#!ipxe\nset cert:hex 00\n".into(),
    };
    records.put_renewal(&h.fp, &renewal).await.unwrap();
    let now = ipxe_edge_core::domain::clock::unix_now();
    let secrets_token = h.keyring.mint(&h.fp, &Grant::Secrets, now + 60).unwrap().1;
    let secret = redeem_handler(&h.redeem, redeem_request(&format!("/secrets/{secrets_token}"), "GET")).await;
    assert_eq!(secret.status(), 200);
    let text = body(&secret);
    // Under the domain the secret was fetched through (no base URL configured).
    let token = text
        .strip_prefix("renew=https://abcdefghijklmnop.lambda-url.eu-west-1.on.aws/renewal/")
        .unwrap_or_else(|| panic!("{text}"))
        .to_string();

    // A bad format is refused before anything is spent.
    let bad = redeem_handler(&h.redeem, v2_renewal(&token, "format=zip", json!({"format": "zip"}))).await;
    assert_eq!(bad.status(), 400);
    let pem = redeem_handler(&h.redeem, v2_renewal(&token, "format=pem", json!({"format": "pem"}))).await;
    assert_eq!(pem.status(), 200);
    assert_eq!(pem.headers()["content-type"], "application/x-pem-file");
    assert_eq!(pem.headers()["cache-control"], "no-store");
    assert_eq!(body(&pem), format!("{}{}", renewal.cert_pem, renewal.key_pem));
    assert_eq!(redeem_handler(&h.redeem, v2_renewal(&token, "", json!({}))).await.status(), 410);
    // One character of the MAC changed: not the last one, whose low bits may be padding (a
    // token with non-zero padding bits does not decode: 400, not 403).
    let mut chars: Vec<char> = token.chars().collect();
    let at = chars.len() - 2;
    chars[at] = if chars[at] == 'A' { 'B' } else { 'A' };
    let forged: String = chars.into_iter().collect();
    assert_eq!(redeem_handler(&h.redeem, v2_renewal(&forged, "", json!({}))).await.status(), 403);
    assert!(records.renewal(&h.fp).await.unwrap().is_none());
}
