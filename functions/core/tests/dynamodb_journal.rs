//! The boot journal in a DynamoDB-compatible server (moto): the item layout, conditional
//! commits, history order and TTL, a token's use written with the state, and the whole
//! fallback flow through the services.

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
use ipxe_edge_core::storage::{update_journal, BootJournal, StoreError, TokenLedger, TokenUse, UseCommit};
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
    issued_boot(id, seq, issued_at, "00ff")
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

/// A token's use and the boot state in one transaction: both or neither, and exactly one of
/// `commit_with_use` and `record_use` records a token.
#[tokio::test]
async fn a_use_and_the_state_are_written_together_or_not_at_all() {
    let Some(env) = dynamodb_env("a_use_and_the_state_are_written_together_or_not_at_all") else { return };
    let (client, table, journal) = journal(&env).await;
    let ledger = DynamoLedger::new(client.clone(), table.clone());
    let beside = DynamoJournal::new(client.clone(), table.clone(), RETENTION).with_ledger(&ledger);
    let fp = Fingerprint::of_der(b"gw-together");
    let state = GatewayJournal { latest: Some(boot(1, 1, 1_000)), ..Default::default() };
    let token = |id| TokenUse { token_id: id, fingerprint: fp.as_str(), used_at: 1_001, expires_at: 2_000 };
    let boots = [&boot(1, 1, 1_000)];

    // Apart (no ledger beside, or another table's ledger): not offered.
    assert!(journal.commit_with_use(&fp, None, &state, &boots, &token("aa01")).await.is_none());
    let elsewhere = DynamoLedger::new(client.clone(), format!("{table}-other"));
    let apart = DynamoJournal::new(client.clone(), table.clone(), RETENTION).with_ledger(&elsewhere);
    assert!(apart.commit_with_use(&fp, None, &state, &boots, &token("aa01")).await.is_none());

    let written = beside.commit_with_use(&fp, None, &state, &boots, &token("aa01")).await.unwrap().unwrap();
    assert_eq!(written, UseCommit::Recorded);
    assert!(ledger.is_used("aa01").await.unwrap());
    let stored = beside.load(&fp).await.unwrap();
    assert_eq!(
        (stored.version.as_deref(), stored.health.latest.map(|b| b.id)),
        (Some("1"), Some(format!("{:032x}", 1)))
    );
    assert_eq!(beside.history(&fp, 10).await.unwrap().len(), 1, "the boot record came with it");

    // The state moved on (a stale version): nothing written, the token is not spent.
    let stale = beside.commit_with_use(&fp, None, &state, &boots, &token("aa02")).await.unwrap().unwrap();
    assert_eq!(stale, UseCommit::StateChanged);
    assert!(!ledger.is_used("aa02").await.unwrap(), "a token spent without its state");
    // Used before, by either way of recording: nothing written, the state keeps its version.
    let replay = beside.commit_with_use(&fp, Some("1"), &state, &boots, &token("aa01")).await.unwrap().unwrap();
    assert_eq!(replay, UseCommit::AlreadyUsed);
    ledger.record_use("aa03", fp.as_str(), 1_001, 2_000).await.unwrap();
    let recorded_apart = beside.commit_with_use(&fp, Some("1"), &state, &boots, &token("aa03")).await.unwrap().unwrap();
    assert_eq!(recorded_apart, UseCommit::AlreadyUsed);
    assert_eq!(beside.load(&fp).await.unwrap().version.as_deref(), Some("1"), "a refused use wrote the state");
    // And the other way round: a use recorded with the state is a replay to the ledger.
    assert_eq!(
        ledger.record_use("aa01", fp.as_str(), 1_001, 2_000).await.unwrap(),
        ipxe_edge_core::storage::LedgerOutcome::AlreadyUsed
    );
}

/// The services on the real table: A passes, B fails twice, the third boot is A.
#[tokio::test]
async fn services_fall_back_on_the_real_table() {
    let Some(env) = dynamodb_env("services_fall_back_on_the_real_table") else { return };
    let (client, table, _) = journal(&env).await;
    // Wired as the redemption function is: the journal writes each use with the boot state.
    let ledger = Arc::new(DynamoLedger::new(client.clone(), table.clone()));
    let journal = Arc::new(DynamoJournal::new(client, table, RETENTION).with_ledger(&ledger));
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
    let redeem = RedeemService::new(Records::new(store.clone()), ledger, keyring).with_journal(journal.clone());
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
