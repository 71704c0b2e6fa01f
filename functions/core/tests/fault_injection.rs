//! Faults injected between the functions and the real test servers (s3s-fs for S3, moto for
//! DynamoDB): refused connections, resets mid-response, delays past the client's timeout,
//! `500`/`503 SlowDown` answers, at every step and on every retry. Redeem answers `503` with
//! `Retry-After` and never spends a token whose secret it did not answer; once the fault
//! clears the token redeems exactly once, also where the token's use is written in one
//! transaction with the boot state. Boot answers `503`, never a script with a broken URL.

use ipxe_edge_core::api::metrics::NoMetrics;
use ipxe_edge_core::api::trust::Trust;
use ipxe_edge_core::domain::identity::{ChainVerifier, Fingerprint, TrustBundle, DEFAULT_CLOCK_SKEW};
use ipxe_edge_core::domain::journal::GatewayJournal;
use ipxe_edge_core::domain::token::{Grant, Keyring};
use ipxe_edge_core::lambda::http::{boot_handler, redeem_handler, BootApp, CertHeader, RedeemApp};
use ipxe_edge_core::service::boot::{BootService, BootSettings};
use ipxe_edge_core::service::redeem::RedeemService;
use ipxe_edge_core::storage::adapters::dynamodb::{DynamoJournal, DynamoLedger};
use ipxe_edge_core::storage::adapters::s3::S3Store;
use ipxe_edge_core::storage::records::Records;
use ipxe_edge_core::storage::{keys, BootJournal, ObjectStore, WriteCondition};
use ipxe_edge_tests::fault::{Fault, FaultProxy};
use ipxe_edge_tests::*;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

const SECRET: &[u8] = b"b2c.minio=\"bbz,https://s3.example,KEY,SECRET\"\n";

/// Every kind of fault; the delay outlasts the per-attempt timeout (3 s) on every attempt.
fn faults() -> Vec<Fault> {
    vec![Fault::Refuse, Fault::Reset, Fault::Status(500), Fault::Status(503), Fault::Delay(Duration::from_secs(4))]
}

fn redeem_request(token: &str) -> lambda_http::Request {
    request(
        "function-url-redeem.json",
        &[("__PATH__", json!(format!("/secrets/{token}"))), ("__METHOD__", json!("GET"))],
    )
}

/// On the real servers, directly: a bucket holding the gateway's secret and a ledger table;
/// their names and a DynamoDB client for checking.
async fn secret_and_table(
    s3: &ServerEnv,
    ddb: &ServerEnv,
    fp: &Fingerprint,
    name: &str,
) -> (String, String, aws_sdk_dynamodb::Client) {
    let bucket = unique_name(name);
    let direct_s3 = s3_client(s3).await;
    direct_s3.create_bucket().bucket(&bucket).send().await.unwrap();
    S3Store::new(direct_s3, bucket.clone())
        .put(&keys::secrets(fp), SECRET.to_vec(), WriteCondition::Always)
        .await
        .unwrap();
    let table = unique_name(&format!("{name}-ledger"));
    let direct_ddb = dynamodb_client(ddb).await;
    create_ledger_table(&direct_ddb, &table).await;
    (bucket, table, direct_ddb)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redeem_faults_at_every_step_never_spend_a_token() {
    let (Some(s3), Some(ddb)) = (s3_env("redeem_faults"), dynamodb_env("redeem_faults")) else { return };
    let fp = Fingerprint::of_der(b"gateway-faults");
    let keyring = Arc::new(Keyring::parse(&Keyring::generate_entry("k1")).unwrap());
    // The real servers, directly, for setting up and checking.
    let (bucket, table, direct_ddb) = secret_and_table(&s3, &ddb, &fp, "faults").await;
    let direct_ledger = DynamoLedger::new(direct_ddb, table.clone());
    // The function's view, through the proxies.
    let (s3_proxy, ddb_proxy) = (FaultProxy::start(&s3.endpoint).await, FaultProxy::start(&ddb.endpoint).await);
    let through = |env: &ServerEnv, proxy: &FaultProxy| ServerEnv {
        endpoint: proxy.endpoint.clone(),
        access_key: env.access_key.clone(),
        secret_key: env.secret_key.clone(),
    };
    let store = Arc::new(S3Store::new(s3_client(&through(&s3, &s3_proxy)).await, bucket));
    let ledger = Arc::new(DynamoLedger::new(dynamodb_client(&through(&ddb, &ddb_proxy)).await, table));
    let app = RedeemApp {
        service: RedeemService::new(Records::new(store), ledger, keyring.clone()),
        metrics: Arc::new(NoMetrics),
    };

    let now = ipxe_edge_core::domain::clock::unix_now();
    for (step, proxy) in [("secret read (S3)", &s3_proxy), ("ledger write (DynamoDB)", &ddb_proxy)] {
        for fault in faults() {
            let (id, token) = keyring.mint(&fp, &Grant::Secrets, now + 300).unwrap();
            // Every attempt (the SDK's retries included) meets the fault.
            proxy.fail_always(fault);
            let before = proxy.faulted();
            let response = redeem_handler(&app, redeem_request(&token)).await;
            proxy.clear();
            assert_eq!(response.status(), 503, "{step}, {fault:?}");
            assert_eq!(
                response.headers().get("retry-after").map(|v| v.to_str().unwrap()),
                Some("5"),
                "{step}, {fault:?}"
            );
            assert!(proxy.faulted() > before, "{step}, {fault:?}: the fault was not met");
            assert!(
                ledger_used_entry(&direct_ledger, &id.to_string()).await.is_none(),
                "{step}, {fault:?}: token spent without its secret"
            );
            // Fault cleared: exactly one answer.
            let response = redeem_handler(&app, redeem_request(&token)).await;
            assert_eq!(response.status(), 200, "{step}, {fault:?}: after the fault");
            assert_eq!(response.body().as_ref(), SECRET);
            assert_eq!(redeem_handler(&app, redeem_request(&token)).await.status(), 410, "{step}, {fault:?}: replay");
        }
    }
    // A single fault on the first attempt is absorbed by the SDK's retry (Reset on the ledger
    // write included: the retried write recognises its own entry).
    for fault in [Fault::Reset, Fault::Status(503), Fault::Refuse] {
        let (_, token) = keyring.mint(&fp, &Grant::Secrets, now + 300).unwrap();
        ddb_proxy.fail_next([fault]);
        let response = redeem_handler(&app, redeem_request(&token)).await;
        assert_eq!(response.status(), 200, "one {fault:?} on the ledger write");
        assert_eq!(redeem_handler(&app, redeem_request(&token)).await.status(), 410);
    }
}

/// A boot issued for `token_id` (the gateway's next), as the boot function records it.
async fn record_boot(journal: &DynamoJournal, fp: &Fingerprint, token_id: &str, now: u64) {
    let stored = journal.load(fp).await.unwrap();
    let seq = stored.health.latest.map_or(1, |b| b.seq + 1);
    let next = GatewayJournal { latest: Some(issued_boot(seq, seq, now, token_id)), ..Default::default() };
    journal.commit(fp, stored.version.as_deref(), &next, &[next.latest.as_ref().unwrap()]).await.unwrap();
}

/// The redemption function as deployed: the journal beside the ledger, so the token's use and
/// the boot's new state are one transaction. Every fault on that transaction (its retries and
/// the undo included) leaves the token redeemable; a single reset is absorbed by the retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_on_the_one_write_of_a_redemption_never_spend_a_token() {
    let (Some(s3), Some(ddb)) = (s3_env("one_write_faults"), dynamodb_env("one_write_faults")) else { return };
    let fp = Fingerprint::of_der(b"gateway-one-write");
    let keyring = Arc::new(Keyring::parse(&Keyring::generate_entry("k1")).unwrap());
    let (bucket, table, direct_ddb) = secret_and_table(&s3, &ddb, &fp, "one-write").await;
    let direct_ledger = DynamoLedger::new(direct_ddb.clone(), table.clone());
    let retention = Duration::from_secs(86_400);
    let direct_journal = DynamoJournal::new(direct_ddb, table.clone(), retention).with_ledger(&direct_ledger);
    let ddb_proxy = FaultProxy::start(&ddb.endpoint).await;
    let through =
        ServerEnv { endpoint: ddb_proxy.endpoint.clone(), access_key: ddb.access_key, secret_key: ddb.secret_key };
    let ddb_client = dynamodb_client(&through).await;
    let ledger = Arc::new(DynamoLedger::new(ddb_client.clone(), table.clone()));
    let journal = Arc::new(DynamoJournal::new(ddb_client, table, retention).with_ledger(&ledger));
    let app = RedeemApp {
        service: RedeemService::new(
            Records::new(Arc::new(S3Store::new(s3_client(&s3).await, bucket))),
            ledger,
            keyring.clone(),
        )
        .with_journal(journal),
        metrics: Arc::new(NoMetrics),
    };
    let now = ipxe_edge_core::domain::clock::unix_now();
    for fault in faults() {
        let (id, token) = keyring.mint(&fp, &Grant::Secrets, now + 300).unwrap();
        record_boot(&direct_journal, &fp, &id.to_string(), now).await;
        // The state read passes; the transaction and everything after it meet the fault.
        ddb_proxy.fail_after(1, fault);
        let before = ddb_proxy.faulted();
        let response = redeem_handler(&app, redeem_request(&token)).await;
        ddb_proxy.clear();
        assert_eq!(response.status(), 503, "{fault:?}");
        assert!(ddb_proxy.faulted() > before, "{fault:?}: the fault was not met");
        assert!(
            ledger_used_entry(&direct_ledger, &id.to_string()).await.is_none(),
            "{fault:?}: token spent without its secret"
        );
        let response = redeem_handler(&app, redeem_request(&token)).await;
        assert_eq!(response.status(), 200, "{fault:?}: after the fault");
        assert_eq!(response.body().as_ref(), SECRET);
        assert_eq!(redeem_handler(&app, redeem_request(&token)).await.status(), 410, "{fault:?}: replay");
    }
    for fault in [Fault::Reset, Fault::Status(503), Fault::Refuse] {
        let (id, token) = keyring.mint(&fp, &Grant::Secrets, now + 300).unwrap();
        record_boot(&direct_journal, &fp, &id.to_string(), now).await;
        ddb_proxy.fail_after_next(1, [fault]);
        let response = redeem_handler(&app, redeem_request(&token)).await;
        assert_eq!(response.status(), 200, "one {fault:?} on the transaction");
        assert_eq!(redeem_handler(&app, redeem_request(&token)).await.status(), 410);
        let latest = direct_journal.load(&fp).await.unwrap().health.latest.unwrap();
        assert_eq!(latest.outcome, ipxe_edge_core::domain::journal::Outcome::ReachedLinux, "{fault:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boot_faults_answer_503_never_a_broken_script() {
    let Some(s3) = s3_env("boot_faults") else { return };
    let bucket = unique_name("boot-faults");
    let direct = Arc::new(S3Store::new(s3_client(&s3).await, bucket.clone()));
    direct.client().create_bucket().bucket(&bucket).send().await.unwrap();
    let gw = issue_gateway("gw-faults");
    seed_gateway(
        direct.as_ref(),
        "gw-faults",
        &gw.cert_der,
        SeedRelease { id: "r1", kernel: b"K", initrd: b"I", cmdline: "console=ttyS0" },
        Some(SECRET),
    )
    .await;
    let proxy = FaultProxy::start(&s3.endpoint).await;
    let env = ServerEnv {
        endpoint: proxy.endpoint.clone(),
        access_key: s3.access_key.clone(),
        secret_key: s3.secret_key.clone(),
    };
    let store = Arc::new(S3Store::new(s3_client(&env).await, bucket));
    let app = BootApp {
        service: BootService::new(
            Records::new(store.clone()),
            store,
            Arc::new(Keyring::parse(&Keyring::generate_entry("k1")).unwrap()),
            BootSettings::new("https://secrets.example.org"),
        ),
        trust: Trust::Fixed(Arc::new(ChainVerifier::new(
            TrustBundle::from_pem(test_ca().cert_pem().as_bytes()).unwrap(),
            DEFAULT_CLOCK_SKEW,
        ))),
        cert_header: CertHeader::Off,
        metrics: Arc::new(NoMetrics),
    };
    let event = || {
        request(
            "apigw-http-v2-boot.json",
            &[
                ("__CLIENT_CERT_PEM__", json!(gw.cert_pem)),
                ("__RAW_QUERY__", json!("")),
                ("__QUERY_PARAMETERS__", serde_json::Value::Null),
                ("__METHOD__", json!("GET")),
            ],
        )
    };
    assert_eq!(boot_handler(&app, event()).await.status(), 200, "healthy path");
    // Each read of a boot (gateway record, then channel and release) meets each fault in turn:
    // the first `pass` reads succeed, the rest fail.
    for fault in faults() {
        for pass in 0..3 {
            proxy.fail_after(pass, fault);
            let response = boot_handler(&app, event()).await;
            proxy.clear();
            let body = String::from_utf8_lossy(response.body().as_ref()).into_owned();
            assert_eq!(response.status(), 503, "{fault:?} after {pass} reads: {body}");
            assert_eq!(response.headers().get("retry-after").map(|v| v.to_str().unwrap()), Some("5"));
            assert!(!body.contains("kernel"), "{fault:?}: a script was answered: {body}");
        }
    }
    assert_eq!(boot_handler(&app, event()).await.status(), 200, "healthy again");
}
