//! Secrets templates and scratch keys at redemption, with in-memory fakes: keys are minted only
//! for a valid, unused token; a failure to mint leaves the token redeemable; a key nobody
//! received is deleted; a delivered key revokes the previous boot's.

use ipxe_edge_core::domain::token::{Grant, Keyring};
use ipxe_edge_core::service::redeem::{RedeemError, RedeemService};
use ipxe_edge_core::storage::adapters::memory::{MemoryLedger, MemoryScratch, MemoryStore};
use ipxe_edge_core::storage::records::Records;
use ipxe_edge_core::storage::ScratchKeys;
use ipxe_edge_tests::*;
use std::sync::atomic::Ordering;
use std::sync::Arc;

const NOW: u64 = 1_800_000_000;
const SEED_SECRET: &[u8] = br#"b2c.minio="bbz,${s3_endpoint},${s3_access_key_id},${s3_access_key}" b2c.volume="perm,mirror=bbz/${s3_bucket_name},pull_on=pipeline_start,push_on=changes,overwrite,delete" gw=${gateway} fp=${client_cert_fingerprint} site=${site} keep=${unknown}"#;

struct Setup {
    service: RedeemService,
    ledger: Arc<MemoryLedger>,
    scratch: Arc<MemoryScratch>,
    keyring: Arc<Keyring>,
    seeded: Seeded,
}

async fn setup(secret: &[u8]) -> Setup {
    setup_with(secret, true).await
}

/// With `scratch` false, the deployment hosts no scratch storage.
async fn setup_with(secret: &[u8], scratch: bool) -> Setup {
    let store = Arc::new(MemoryStore::new());
    let gw = issue_gateway("scratch-gw");
    let seeded = seed_gateway(
        store.as_ref(),
        "scratch-gw",
        &gw.cert_der,
        SeedRelease { id: "r1", kernel: b"K", initrd: b"I", cmdline: "" },
        Some(secret),
    )
    .await;
    let keyring = Arc::new(Keyring::parse(&Keyring::generate_entry("k1")).unwrap());
    let ledger = Arc::new(MemoryLedger::default());
    let keys = Arc::new(MemoryScratch::default());
    let mut service = RedeemService::new(Records::new(store), ledger.clone(), keyring.clone());
    if scratch {
        service = service.with_scratch(keys.clone());
    }
    Setup { service, ledger, scratch: keys, keyring, seeded }
}

impl Setup {
    fn token(&self) -> String {
        let fp = &self.seeded.fingerprint;
        self.keyring.mint(fp, &Grant::Secrets, NOW + 120).unwrap().1
    }
}

#[tokio::test]
async fn the_seed_secret_gets_a_fresh_key_and_every_variable() {
    let s = setup(SEED_SECRET).await;
    let redeemed = s.service.redeem(&s.token(), NOW).await.unwrap();
    let text = String::from_utf8(redeemed.secret).unwrap();
    let keys = s.scratch.keys("scratch-gw").await.unwrap();
    assert_eq!(keys.len(), 1);
    let id = &keys[0].access_key_id;
    assert!(text.starts_with(&format!("b2c.minio=\"bbz,https://scratch.example.org,{id},secret-")), "{text}");
    assert!(text.contains("mirror=bbz/scratch/scratch-gw,"), "{text}");
    assert!(text.contains(" gw=scratch-gw "), "{text}");
    assert!(text.contains(&format!(" fp={} ", s.seeded.fingerprint)), "{text}");
    assert!(text.contains(" site=lab-1 "), "the gateway's vars: {text}");
    assert!(text.ends_with(" keep=${unknown}"), "unknown variables stay: {text}");
    let secret = text.split(',').nth(3).unwrap().trim_end_matches('"').split('"').next().unwrap();
    assert!(s.scratch.accepts("scratch-gw", id, secret), "the served key works");
}

#[tokio::test]
async fn each_redemption_revokes_the_previous_boots_key() {
    let s = setup(SEED_SECRET).await;
    s.service.redeem(&s.token(), NOW).await.unwrap();
    let first = s.scratch.keys("scratch-gw").await.unwrap();
    s.service.redeem(&s.token(), NOW + 60).await.unwrap();
    let second = s.scratch.keys("scratch-gw").await.unwrap();
    assert_eq!(second.len(), 1, "only the newest key lives");
    assert_ne!(first[0].access_key_id, second[0].access_key_id);
    assert_eq!(second[0].minted_at, NOW + 60);
}

#[tokio::test]
async fn replays_forgeries_and_failures_mint_nothing_and_spend_nothing() {
    let s = setup(SEED_SECRET).await;
    let token = s.token();
    s.service.redeem(&token, NOW).await.unwrap();
    assert_eq!(s.scratch.minted(), 1);
    assert!(matches!(s.service.redeem(&token, NOW).await, Err(RedeemError::Replayed(_))));
    assert_eq!(s.scratch.minted(), 1, "a replay mints nothing");
    let mut forged = s.token();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    assert!(s.service.redeem(&forged, NOW).await.is_err());
    assert_eq!(s.scratch.minted(), 1, "a forged token mints nothing");

    // The key service is down: 503, token still redeemable, nothing minted.
    let token = s.token();
    s.scratch.fail_mint.store(true, Ordering::SeqCst);
    assert!(matches!(s.service.redeem(&token, NOW).await, Err(RedeemError::ScratchUnavailable(_))));
    s.scratch.fail_mint.store(false, Ordering::SeqCst);
    let keys_before = s.scratch.keys("scratch-gw").await.unwrap();

    // The ledger fails after the key was minted: that key is deleted again, the old one lives.
    s.ledger.fail.store(true, Ordering::SeqCst);
    assert!(s.service.redeem(&token, NOW).await.is_err());
    s.ledger.fail.store(false, Ordering::SeqCst);
    assert_eq!(s.scratch.keys("scratch-gw").await.unwrap(), keys_before, "no live key that nobody received");
    // And the token still works.
    s.service.redeem(&token, NOW).await.expect("token left redeemable");
    assert_eq!(s.scratch.keys("scratch-gw").await.unwrap().len(), 1);
}

#[tokio::test]
async fn secrets_without_variables_are_served_byte_for_byte_without_a_key() {
    let raw: Vec<u8> = b"token=abc $HOME ${not closed".iter().copied().chain([0u8, 255]).collect();
    let s = setup(&raw).await;
    assert_eq!(s.service.redeem(&s.token(), NOW).await.unwrap().secret, raw);
    assert_eq!(s.scratch.minted(), 0);
}

#[tokio::test]
async fn without_scratch_storage_the_secret_is_refused_not_served_literally() {
    let s = setup_with(SEED_SECRET, false).await;
    let fp = &s.seeded.fingerprint;
    let (id, token) = s.keyring.mint(fp, &Grant::Secrets, NOW + 120).unwrap();
    assert!(matches!(s.service.redeem(&token, NOW).await, Err(RedeemError::ScratchNotConfigured)));
    assert!(!s.ledger.holds(&id.to_string()), "token not spent");
}
