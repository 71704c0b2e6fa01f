//! The boot journal in a DynamoDB-compatible server (moto): the item layout, conditional
//! commits, history order and TTL, and the whole fallback flow through the services.

use aws_sdk_dynamodb::types::AttributeValue;
use ipxe_edge_core::domain::identity::{ClientIdentity, Fingerprint};
use ipxe_edge_core::domain::journal::{BootReason, BootRecord, GatewayJournal, HealthGate, LastGood, Outcome};
use ipxe_edge_core::domain::query::BootQuery;
use ipxe_edge_core::domain::token::Keyring;
use ipxe_edge_core::service::boot::{BootService, BootSettings};
use ipxe_edge_core::service::redeem::RedeemService;
use ipxe_edge_core::storage::adapters::dynamodb::{
    gateway_pk, DynamoJournal, DynamoLedger, PARTITION_KEY, SORT_KEY, TTL_ATTRIBUTE,
};
use ipxe_edge_core::storage::adapters::memory::{MemoryPresigner, MemoryStore};
use ipxe_edge_core::storage::records::Records;
use ipxe_edge_core::storage::{update_journal, BootJournal, StoreError};
use ipxe_edge_tests::*;
use std::sync::Arc;
use std::time::Duration;

const RETENTION: Duration = Duration::from_secs(90 * 86_400);

async fn journal(env: &ServerEnv) -> (aws_sdk_dynamodb::Client, String, DynamoJournal) {
    let client = dynamodb_client(env).await;
    let table = unique_name("ipxe-edge-journal");
    create_ledger_table(&client, &table).await;
    (client.clone(), table.clone(), DynamoJournal::new(client, table, RETENTION))
}

fn boot(id: u64, seq: u64, issued_at: u64) -> BootRecord {
    BootRecord {
        id: format!("{id:032x}"),
        seq,
        release: "r1".into(),
        target: "r1".into(),
        reason: BootReason::Channel,
        gate: HealthGate::ReachedLinux,
        arch: "x86_64".into(),
        platform: None,
        mac: Some("52:54:00:12:34:56".into()),
        cert: Some(ipxe_edge_core::domain::identity::Fingerprint::of_der(b"cert")),
        issued_at,
        deadline: issued_at + 600,
        secrets_token: Some("00ff".into()),
        outcome: Outcome::Issued,
        reached_linux_at: None,
        healthy_at: None,
        failed_at: None,
        fail_reason: None,
    }
}

async fn item(
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    pk: &str,
    sk: &str,
) -> Option<std::collections::HashMap<String, AttributeValue>> {
    let key = [
        (PARTITION_KEY.to_string(), AttributeValue::S(pk.into())),
        (SORT_KEY.to_string(), AttributeValue::S(sk.into())),
    ];
    client.get_item().table_name(table).set_key(Some(key.into_iter().collect())).send().await.unwrap().item
}

#[tokio::test]
async fn items_commits_and_history() {
    let Some(env) = dynamodb_env("items_commits_and_history") else { return };
    let (client, table, journal) = journal(&env).await;
    let fp = Fingerprint::of_der(b"journal-gw");
    assert_eq!(journal.load(&fp).await.unwrap().version, None);

    let first = boot(1, 1, 1_700_000_000);
    let state = GatewayJournal { target: Some("r1".into()), latest: Some(first.clone()), ..Default::default() };
    journal.commit(&fp, None, &state, &[&first]).await.unwrap();
    assert!(matches!(journal.commit(&fp, None, &state, &[]).await, Err(StoreError::Conflict(_))), "absent condition");
    let loaded = journal.load(&fp).await.unwrap();
    assert_eq!(loaded.health, state);
    assert_eq!(loaded.version.as_deref(), Some("1"));
    assert!(matches!(journal.commit(&fp, Some("7"), &state, &[]).await, Err(StoreError::Conflict(_))), "stale version");

    // A pass: the last-good item is its own item; the state item does not repeat it.
    let mut passed = first.clone();
    passed.reached_linux_at = Some(first.issued_at + 20);
    passed.outcome = Outcome::ReachedLinux;
    let good = GatewayJournal {
        last_good: Some(LastGood { release: "r1".into(), boot: passed.id.clone(), at: first.issued_at + 20 }),
        latest: Some(passed.clone()),
        ..state.clone()
    };
    journal.commit(&fp, loaded.version.as_deref(), &good, &[&passed]).await.unwrap();
    let pk = gateway_pk(&fp);
    let last_good = item(&client, &table, &pk, "last-good").await.expect("last-good item");
    assert_eq!(last_good["release"].as_s().unwrap(), "r1");
    let state_item = item(&client, &table, &pk, "state").await.expect("state item");
    assert!(!state_item["health"].as_s().unwrap().contains("last_good"));
    assert_eq!(journal.load(&fp).await.unwrap().health, good);

    // History: newest first, one item per boot, the pass replaced the issued record; TTL set.
    let second = boot(2, 2, 1_700_000_100);
    let v = journal.load(&fp).await.unwrap().version;
    journal
        .commit(&fp, v.as_deref(), &GatewayJournal { latest: Some(second.clone()), ..good.clone() }, &[&second])
        .await
        .unwrap();
    let history = journal.history(&fp, 10).await.unwrap();
    assert_eq!(history, vec![second.clone(), passed]);
    assert_eq!(journal.history(&fp, 1).await.unwrap(), vec![second.clone()]);
    let sk = format!("boot#{:010}#{:010}#{}", second.issued_at, second.seq, second.id);
    let boot_item = item(&client, &table, &pk, &sk).await.expect("boot item");
    assert_eq!(boot_item["outcome"].as_s().unwrap(), "issued");
    assert_eq!(
        boot_item[TTL_ATTRIBUTE].as_n().unwrap().parse::<u64>().unwrap(),
        second.issued_at + RETENTION.as_secs()
    );

    // Another gateway's items are separate.
    assert_eq!(journal.history(&Fingerprint::of_der(b"other"), 10).await.unwrap(), vec![]);
}

#[tokio::test]
async fn racing_updates_through_a_serializing_proxy_lose_nothing() {
    let Some(env) = dynamodb_env("racing_updates_through_a_serializing_proxy_lose_nothing") else { return };
    // DynamoDB orders transactions on one item; moto does not, so this proxy does.
    let proxy = ipxe_edge_tests::fault::FaultProxy::start_serialized(&env.endpoint).await;
    let env = ServerEnv { endpoint: proxy.endpoint.clone(), ..env };
    let (_, _, journal) = journal(&env).await;
    let journal = Arc::new(journal);
    let fp = Fingerprint::of_der(b"racing-gw");
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let journal = journal.clone();
            let fp = fp.clone();
            tokio::spawn(async move {
                update_journal(journal.as_ref(), &fp, |h| {
                    Ok::<_, StoreError>((GatewayJournal { failures: h.failures + 1, ..h.clone() }, vec![], ()))
                })
                .await
            })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        if t.await.unwrap().is_ok() {
            ok += 1;
        }
    }
    assert!(ok >= 1);
    assert_eq!(journal.load(&fp).await.unwrap().health.failures, ok, "every successful update counted exactly once");
}

/// The services on the real table: A passes, B fails twice, the third boot is A.
#[tokio::test]
async fn services_fall_back_on_the_real_table() {
    let Some(env) = dynamodb_env("services_fall_back_on_the_real_table") else { return };
    let (client, table, journal) = journal(&env).await;
    let journal = Arc::new(journal);
    let store = Arc::new(MemoryStore::new());
    let gw = issue_gateway("gw-ddb");
    let seeded = seed_gateway(
        store.as_ref(),
        "gw-ddb",
        &gw.cert_der,
        SeedRelease { id: "A", kernel: b"KA", initrd: b"IA", cmdline: "" },
        Some(b"s=1"),
    )
    .await;
    seed_release(
        store.as_ref(),
        SeedRelease { id: "B", kernel: b"KB", initrd: b"IB", cmdline: "" },
        None,
        HealthGate::ReachedLinux,
    )
    .await;
    let keyring = Arc::new(Keyring::parse(&Keyring::generate_entry("k1")).unwrap());
    let boots = BootService::new(
        Records::new(store.clone()),
        Arc::new(MemoryPresigner::default()),
        keyring.clone(),
        BootSettings::new("https://s.example"),
    )
    .with_journal(journal.clone());
    let redeem = RedeemService::new(Records::new(store.clone()), Arc::new(DynamoLedger::new(client, table)), keyring)
        .with_journal(journal.clone());
    let client_id = ClientIdentity {
        fingerprint: seeded.fingerprint.clone(),
        subject: "CN=gw-ddb".into(),
        issuer: "CN=ca".into(),
        not_after: i64::MAX,
    };
    let now = ipxe_edge_core::domain::clock::unix_now();

    let first = boots.boot(&client_id, &BootQuery::default(), now).await.unwrap();
    assert_eq!(first.journal_error, None);
    let token = first.script.split("/secrets/").nth(1).unwrap().split('"').next().unwrap().to_string();
    let redeemed = redeem.redeem(&token, now + 5).await.unwrap();
    assert!(
        matches!(redeemed.signal, ipxe_edge_core::service::redeem::SignalOutcome::Recorded(ref b) if b.outcome == Outcome::ReachedLinux)
    );
    point_stable(store.as_ref(), "B").await;
    let served: Vec<_> = [
        boots.boot(&client_id, &BootQuery::default(), now + 10).await.unwrap(),
        boots.boot(&client_id, &BootQuery::default(), now + 20).await.unwrap(),
        boots.boot(&client_id, &BootQuery::default(), now + 30).await.unwrap(),
    ]
    .into_iter()
    .map(|s| (s.release, s.reason, s.journal_error))
    .collect();
    assert_eq!(
        served,
        vec![
            ("B".into(), BootReason::Channel, None),
            ("B".into(), BootReason::Channel, None),
            ("A".into(), BootReason::Fallback, None)
        ]
    );
    let history = journal.history(&seeded.fingerprint, 10).await.unwrap();
    let outcomes: Vec<_> = history.iter().map(|b| (b.release.as_str(), b.outcome)).collect();
    assert_eq!(
        outcomes,
        vec![("A", Outcome::Issued), ("B", Outcome::Failed), ("B", Outcome::Failed), ("A", Outcome::ReachedLinux)]
    );
}
