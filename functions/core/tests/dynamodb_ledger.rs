//! Redeeming against a DynamoDB-compatible server (moto) for the used-token ledger and an
//! S3-compatible server (s3s-fs) for the secrets.

use ipxe_edge_core::api::metrics::NoMetrics;
use ipxe_edge_core::domain::identity::Fingerprint;
use ipxe_edge_core::domain::token::{Grant, Keyring};
use ipxe_edge_core::lambda::http::{redeem_handler, RedeemApp};
use ipxe_edge_core::service::redeem::RedeemService;
use ipxe_edge_core::storage::adapters::dynamodb::{DynamoLedger, TTL_ATTRIBUTE};
use ipxe_edge_core::storage::adapters::s3::S3Store;
use ipxe_edge_core::storage::keys;
use ipxe_edge_core::storage::records::Records;
use ipxe_edge_core::storage::{ObjectStore, WriteCondition};
use ipxe_edge_tests::*;
use serde_json::json;
use std::sync::Arc;

const SECRET: &[u8] = b"b2c.minio=\"bbz,https://s3.example,KEY,SECRET\"";

/// Both servers, or `None` to skip the test.
fn servers(test: &str) -> Option<(ServerEnv, ServerEnv)> {
    Some((dynamodb_env(test)?, s3_env(test)?))
}

async fn ledger(env: &ServerEnv) -> Arc<DynamoLedger> {
    let client = dynamodb_client(env).await;
    let table = unique_name("ipxe-edge-ledger");
    create_ledger_table(&client, &table).await;
    Arc::new(DynamoLedger::new(client, table))
}

async fn secrets_store(env: &ServerEnv, fp: &Fingerprint) -> Arc<S3Store> {
    let client = s3_client(env).await;
    let bucket = unique_name("secrets");
    client.create_bucket().bucket(&bucket).send().await.unwrap();
    let store = Arc::new(S3Store::new(client, bucket));
    store.put(&keys::secrets(fp), SECRET.to_vec(), WriteCondition::Always).await.unwrap();
    store
}

fn now() -> u64 {
    ipxe_edge_core::domain::clock::unix_now()
}

fn redeem_request(token: &str) -> lambda_http::Request {
    request(
        "function-url-redeem.json",
        &[("__PATH__", json!(format!("/secrets/{token}"))), ("__METHOD__", json!("GET"))],
    )
}

#[tokio::test]
async fn thirty_two_concurrent_redemptions_give_exactly_one_secret() {
    let Some((ddb, s3)) = servers("thirty_two_concurrent_redemptions_give_exactly_one_secret") else { return };
    // moto lets two racing conditional puts both win; DynamoDB orders writes to one item, and
    // so does this proxy (our 32 requests still race each other).
    let proxy = ipxe_edge_tests::fault::FaultProxy::start_serialized(&ddb.endpoint).await;
    let ddb = ServerEnv { endpoint: proxy.endpoint.clone(), ..ddb };
    let fp = Fingerprint::of_der(b"gateway-a");
    let keyring = Arc::new(Keyring::parse(&Keyring::generate_entry("k1")).unwrap());
    let ledger = ledger(&ddb).await;
    let app = Arc::new(RedeemApp {
        service: RedeemService::new(Records::new(secrets_store(&s3, &fp).await), ledger.clone(), keyring.clone()),
        metrics: Arc::new(NoMetrics),
    });
    let expires_at = now() + 120;
    let (id, token) = keyring.mint(&fp, &Grant::Secrets, expires_at).unwrap();

    let tasks: Vec<_> = (0..32)
        .map(|_| {
            let app = app.clone();
            let token = token.clone();
            tokio::spawn(async move {
                let response = redeem_handler(&app, redeem_request(&token)).await;
                (response.status().as_u16(), response.body().to_vec())
            })
        })
        .collect();
    let mut results = Vec::new();
    for task in tasks {
        results.push(task.await.unwrap());
    }
    let ok: Vec<_> = results.iter().filter(|(s, _)| *s == 200).collect();
    assert_eq!(ok.len(), 1, "statuses: {:?}", results.iter().map(|r| r.0).collect::<Vec<_>>());
    assert_eq!(ok[0].1, SECRET);
    assert_eq!(results.iter().filter(|(s, _)| *s == 410).count(), 31);

    // The ledger entry carries a TTL at or after the token's expiry.
    let item = ledger_used_entry(&ledger, &id.to_string()).await.expect("used token recorded");
    let ttl: u64 = item[TTL_ATTRIBUTE].as_n().unwrap().parse().unwrap();
    assert!(ttl >= expires_at, "ttl {ttl} before expiry {expires_at}");
    assert_eq!(item["fingerprint"].as_s().unwrap(), fp.as_str());
    let ttl_status = ledger.client().describe_time_to_live().table_name(ledger.table()).send().await.unwrap();
    assert_eq!(ttl_status.time_to_live_description().unwrap().attribute_name(), Some(TTL_ATTRIBUTE));
}

#[tokio::test]
async fn failed_secret_read_leaves_the_token_redeemable() {
    let Some((ddb, env)) = servers("failed_secret_read_leaves_the_token_redeemable") else { return };
    let fp = Fingerprint::of_der(b"gateway-b");
    let keyring = Arc::new(Keyring::parse(&Keyring::generate_entry("k1")).unwrap());
    let ledger = ledger(&ddb).await;
    let good = secrets_store(&env, &fp).await;
    // Same bucket, but credentials the server refuses: every read fails.
    let bad_env = ServerEnv {
        endpoint: env.endpoint.clone(),
        access_key: env.access_key.clone(),
        secret_key: "wrong-secret".into(),
    };
    let broken = Arc::new(S3Store::new(s3_client(&bad_env).await, good.bucket().to_string()));
    let (id, token) = keyring.mint(&fp, &Grant::Secrets, now() + 120).unwrap();

    let failing = RedeemApp {
        service: RedeemService::new(Records::new(broken), ledger.clone(), keyring.clone()),
        metrics: Arc::new(NoMetrics),
    };
    let response = redeem_handler(&failing, redeem_request(&token)).await;
    assert_eq!(response.status(), 503);
    assert!(
        ledger_used_entry(&ledger, &id.to_string()).await.is_none(),
        "token recorded although its secret was not served"
    );

    // A ledger that cannot be written also leaves it redeemable.
    let missing_table = Arc::new(DynamoLedger::new(ledger.client().clone(), "no-such-table"));
    let no_ledger = RedeemApp {
        service: RedeemService::new(Records::new(good.clone()), missing_table, keyring.clone()),
        metrics: Arc::new(NoMetrics),
    };
    assert_eq!(redeem_handler(&no_ledger, redeem_request(&token)).await.status(), 503);

    let working =
        RedeemApp { service: RedeemService::new(Records::new(good), ledger, keyring), metrics: Arc::new(NoMetrics) };
    let response = redeem_handler(&working, redeem_request(&token)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.body().as_ref(), SECRET);
    assert_eq!(redeem_handler(&working, redeem_request(&token)).await.status(), 410);
}
