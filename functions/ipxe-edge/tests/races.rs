//! Races at scale: many trials of 32 concurrent redemptions of one token, against the file
//! ledger of `serve` and against moto's DynamoDB: exactly one `200` per token, every time; and
//! concurrent redemptions of one gateway's distinct tokens against `serve`'s scratch keys:
//! exactly one live key afterwards, and one that was delivered.
//! (moto's own conditional puts are not atomic under concurrency, so its requests go through a
//! proxy that forwards one at a time, as DynamoDB orders the writes to one item.)
//! `IPXE_EDGE_RACE_TRIALS` sets the trial count (the CI run uses a small one; the README's
//! figure comes from 10,000).

use ipxe_edge::datadir::DataDir;
use ipxe_edge::embedded::file_ledger::FileLedger;
use ipxe_edge::embedded::scratch::EmbeddedScratch;
use ipxe_edge_core::api::metrics::NoMetrics;
use ipxe_edge_core::domain::identity::Fingerprint;
use ipxe_edge_core::domain::token::{Grant, Keyring};
use ipxe_edge_core::lambda::http::{redeem_handler, RedeemApp};
use ipxe_edge_core::service::redeem::RedeemService;
use ipxe_edge_core::storage::adapters::dynamodb::DynamoLedger;
use ipxe_edge_core::storage::adapters::memory::MemoryStore;
use ipxe_edge_core::storage::keys;
use ipxe_edge_core::storage::records::Records;
use ipxe_edge_core::storage::{ScratchKeys, TokenLedger};
use ipxe_edge_tests::*;
use serde_json::json;
use std::sync::Arc;
use std::time::Instant;

const RACERS: usize = 32;

fn trials(default: usize) -> usize {
    std::env::var("IPXE_EDGE_RACE_TRIALS").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Runs `trials` tokens, each redeemed by 32 concurrent requests; returns the number of 200s
/// per token that was not exactly one, and prints the totals.
async fn race(name: &str, ledger: Arc<dyn TokenLedger>, trials: usize) -> usize {
    let fp = Fingerprint::of_der(name.as_bytes());
    let store = Arc::new(MemoryStore::new());
    store.insert(&keys::secrets(&fp), b"s=1".to_vec());
    let keyring = Arc::new(Keyring::parse(&Keyring::generate_entry("k1")).unwrap());
    let app = Arc::new(RedeemApp {
        service: RedeemService::new(Records::new(store), ledger, keyring.clone()),
        metrics: Arc::new(NoMetrics),
    });
    let started = Instant::now();
    let (mut wrong, mut ok_total, mut gone_total) = (0, 0, 0);
    for _ in 0..trials {
        // Minted per trial: a long run must not outlive its tokens.
        let (_, token) = keyring.mint(&fp, &Grant::Secrets, ipxe_edge_core::domain::clock::unix_now() + 600).unwrap();
        let racers: Vec<_> = (0..RACERS)
            .map(|_| {
                let (app, token) = (app.clone(), token.clone());
                tokio::spawn(async move {
                    let event = request(
                        "function-url-redeem.json",
                        &[("__PATH__", json!(format!("/secrets/{token}"))), ("__METHOD__", json!("GET"))],
                    );
                    redeem_handler(&app, event).await.status().as_u16()
                })
            })
            .collect();
        let mut statuses = Vec::with_capacity(RACERS);
        for r in racers {
            statuses.push(r.await.unwrap());
        }
        let ok = statuses.iter().filter(|s| **s == 200).count();
        let gone = statuses.iter().filter(|s| **s == 410).count();
        ok_total += ok;
        gone_total += gone;
        if ok != 1 || gone != RACERS - 1 {
            wrong += 1;
        }
    }
    println!(
        "races: {name}: {trials} tokens x {RACERS} concurrent redemptions in {:.1} s: {ok_total} x 200, {gone_total} x 410, {wrong} tokens without exactly one 200",
        started.elapsed().as_secs_f64()
    );
    wrong
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn file_ledger_gives_exactly_one_secret_per_token() {
    let dir = temp_dir("races-ledger");
    let ledger = Arc::new(FileLedger::open(&dir).unwrap());
    assert_eq!(race("file ledger", ledger, trials(200)).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dynamodb_ledger_gives_exactly_one_secret_per_token() {
    let Some(env) = dynamodb_env("dynamodb_ledger_gives_exactly_one_secret_per_token") else { return };
    // Our 32 requests race; moto sees them one at a time, as DynamoDB orders writes to one item
    // (moto itself lets two racing conditional puts both win: see FaultProxy::start_serialized).
    let proxy = ipxe_edge_tests::fault::FaultProxy::start_serialized(&env.endpoint).await;
    let env = ServerEnv { endpoint: proxy.endpoint.clone(), ..env };
    let client = dynamodb_client(&env).await;
    let table = unique_name("races");
    create_ledger_table(&client, &table).await;
    assert_eq!(race("moto DynamoDB", Arc::new(DynamoLedger::new(client, table)), trials(20)).await, 0);
}

/// Eight tokens of one gateway redeemed at the same moment, twenty times: every redemption
/// gets its secret, and afterwards exactly one key lives, the one minted last, which one of them
/// delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_redemptions_of_one_gateway_leave_exactly_the_newest_delivered_key() {
    const SECRET: &[u8] = b"b2c.minio=\"bbz,${s3_endpoint},${s3_access_key_id},${s3_access_key}\"";
    let root = temp_dir("races-scratch");
    let data = DataDir::open(&root).unwrap();
    let scratch = EmbeddedScratch::open(&data, "https://127.0.0.1:9000").unwrap();
    let store = Arc::new(MemoryStore::new());
    let gw = issue_gateway("racer");
    let seeded = seed_gateway(
        store.as_ref(),
        "racer",
        &gw.cert_der,
        SeedRelease { id: "r1", kernel: b"K", initrd: b"I", cmdline: "" },
        Some(SECRET),
    )
    .await;
    let fp = seeded.fingerprint;
    let keyring = Arc::new(Keyring::parse(&Keyring::generate_entry("k1")).unwrap());
    let ledger = Arc::new(FileLedger::open(root.join("ledger")).unwrap());
    let service = RedeemService::new(Records::new(store), ledger, keyring.clone()).with_scratch(scratch.clone());
    let app = Arc::new(RedeemApp { service, metrics: Arc::new(NoMetrics) });
    for round in 0..20 {
        let racers: Vec<_> = (0..8)
            .map(|_| {
                let (_, token) =
                    keyring.mint(&fp, &Grant::Secrets, ipxe_edge_core::domain::clock::unix_now() + 600).unwrap();
                let app = app.clone();
                tokio::spawn(async move {
                    let event = request(
                        "function-url-redeem.json",
                        &[("__PATH__", json!(format!("/secrets/{token}"))), ("__METHOD__", json!("GET"))],
                    );
                    let response = redeem_handler(&app, event).await;
                    let status = response.status().as_u16();
                    let body = String::from_utf8_lossy(response.body().as_ref()).into_owned();
                    (status, body)
                })
            })
            .collect();
        let mut delivered = Vec::new();
        for racer in racers {
            let (status, body) = racer.await.unwrap();
            assert_eq!(status, 200, "round {round}: {body}");
            delivered.push(body.split(',').nth(2).expect("a key id in the secret").to_string());
        }
        let live = scratch.keys("racer").await.unwrap();
        assert_eq!(live.len(), 1, "round {round}: live keys {live:?}");
        assert!(delivered.contains(&live[0].access_key_id), "round {round}: the live key was delivered");
        assert!(scratch.lookup(&live[0].access_key_id).is_some());
        let newest = newest_minted(&root.join("scratch-keys.json"));
        assert_eq!(live[0].access_key_id, newest, "round {round}: the live key is the newest minted");
    }
}

/// The id of the key with the greatest mint order in the keys file.
fn newest_minted(file: &std::path::Path) -> String {
    let keys: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
    keys.iter().max_by_key(|(_, k)| k["seq"].as_u64().unwrap()).map(|(id, _)| id.clone()).unwrap()
}
