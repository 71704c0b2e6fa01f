//! Certificate renewal with in-memory fakes: a renewed certificate boots as the same gateway,
//! `${renewal_url}` hands the staged renewal over exactly once, refusals spend nothing, and the
//! first boot with the new certificate is told apart (and may retire the old one).

use ipxe_edge_core::domain::identity::{ClientIdentity, Fingerprint};
use ipxe_edge_core::domain::model::{GatewayCertificate, PendingRenewal};
use ipxe_edge_core::domain::query::BootQuery;
use ipxe_edge_core::domain::token::{Grant, Keyring, TokenError};
use ipxe_edge_core::service::boot::{BootError, BootService, BootSettings};
use ipxe_edge_core::service::redeem::{RedeemService, RenewalError};
use ipxe_edge_core::storage::adapters::memory::{MemoryLedger, MemoryPresigner, MemoryStore};
use ipxe_edge_core::storage::adapters::object_journal::ObjectJournal;

use ipxe_edge_core::storage::records::Records;
use ipxe_edge_tests::*;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

const NOW: u64 = 1_800_000_000;
const BASE: &str = "https://secrets.example.org";
const DAY: i64 = 86_400;

struct Setup {
    store: Arc<MemoryStore>,
    records: Records,
    boot: BootService,
    redeem: RedeemService,
    ledger: Arc<MemoryLedger>,
    keyring: Arc<Keyring>,
    old: Fingerprint,
    new: Fingerprint,
}

async fn setup(retire_old_after_first_boot: bool) -> Setup {
    let store = Arc::new(MemoryStore::new());
    let gw = issue_gateway("renew-gw");
    let seeded = seed_gateway(
        store.as_ref(),
        "renew-gw",
        &gw.cert_der,
        SeedRelease { id: "r1", kernel: b"K", initrd: b"I", cmdline: "" },
        Some(b"token=abc renew=${renewal_url}"),
    )
    .await;
    let records = Records::new(store.clone());
    let journal = Arc::new(ObjectJournal::new(Arc::new(MemoryStore::new()), Duration::from_secs(86_400)));
    let keyring = Arc::new(Keyring::parse(&Keyring::generate_entry("k1")).unwrap());
    let ledger = Arc::new(MemoryLedger::default());
    let mut settings = BootSettings::new(BASE);
    settings.retire_old_after_first_boot = retire_old_after_first_boot;
    let boot = BootService::new(records.clone(), Arc::new(MemoryPresigner::default()), keyring.clone(), settings)
        .with_journal(journal.clone());
    let redeem = RedeemService::new(records.clone(), ledger.clone(), keyring.clone())
        .with_journal(journal)
        .with_checkin_base_url(BASE);
    let new = Fingerprint::of_der(b"renewed certificate");
    Setup { store, records, boot, redeem, ledger, keyring, old: seeded.fingerprint, new }
}

fn client(fp: &Fingerprint, not_after: i64) -> ClientIdentity {
    ClientIdentity { fingerprint: fp.clone(), subject: "CN=renew-gw".into(), issuer: "CN=ca".into(), not_after }
}

/// A pending renewal to `new`, with a certificate and key issued now (their fingerprint is
/// not checked by the hand-over, which serves them as stored).
fn pending(new: &Fingerprint, old: &Fingerprint) -> PendingRenewal {
    let issued = issue_gateway("renew-gw");
    PendingRenewal {
        fingerprint: new.clone(),
        renews: old.clone(),
        not_after: NOW as i64 + 365 * DAY,
        created_at: NOW,
        cert_pem: issued.cert_pem,
        key_pem: issued.key_pem,
        autoexec: "#!ipxe\nset cert:hex 01\n".into(),
    }
}

impl Setup {
    /// Enrolls the new certificate, then stages its renewal (the order `gateway renew` uses).
    async fn stage(&self) {
        let mut cert = GatewayCertificate::new(self.new.clone(), Some(NOW as i64 + 365 * DAY), Some(NOW));
        cert.renews = Some(self.old.clone());
        self.records.add_certificate(&self.old, cert).await.unwrap();
        self.records.put_renewal(&self.old, &pending(&self.new, &self.old)).await.unwrap();
    }

    /// Boots with `fp` and redeems the boot's secret; returns the secret's text.
    async fn boot_and_redeem(&self, fp: &Fingerprint, at: u64) -> String {
        let script = self.boot.boot(&client(fp, NOW as i64 + 30 * DAY), &BootQuery::default(), at).await.unwrap();
        let token = script.script.split("/secrets/").nth(1).unwrap().split('"').next().unwrap().to_string();
        String::from_utf8(self.redeem.redeem(&token, at + 1).await.unwrap().secret).unwrap()
    }
}

fn renewal_token(secret: &str) -> String {
    secret.split(&format!("{BASE}/renewal/")).nth(1).expect("a renewal URL").to_string()
}

#[tokio::test]
async fn the_renewal_url_hands_the_renewal_over_once() {
    let s = setup(false).await;
    // Nothing pending: the variable is empty.
    assert_eq!(s.boot_and_redeem(&s.old, NOW).await, "token=abc renew=");
    s.stage().await;
    let secret = s.boot_and_redeem(&s.old, NOW + 10).await;
    let token = renewal_token(&secret);

    let fetched = s.redeem.fetch_renewal(&token, NOW + 20).await.unwrap();
    assert_eq!(fetched.gateway, "renew-gw");
    assert_eq!(fetched.renewal.fingerprint, s.new);
    assert_eq!(fetched.renewal.autoexec, "#!ipxe\nset cert:hex 01\n");
    assert!(fetched.delete_error.is_none());
    assert!(s.records.renewal(&s.old).await.unwrap().is_none(), "deleted once handed over");
    assert!(matches!(s.redeem.fetch_renewal(&token, NOW + 21).await, Err(RenewalError::Replayed(_))));
    // And the next boot's secret has no renewal URL any more.
    assert_eq!(s.boot_and_redeem(&s.old, NOW + 30).await, "token=abc renew=");
}

#[tokio::test]
async fn forged_and_misused_tokens_are_refused_and_spend_nothing() {
    let s = setup(false).await;
    s.stage().await;
    let token = renewal_token(&s.boot_and_redeem(&s.old, NOW).await);
    let mut forged = token.clone().into_bytes();
    let last = forged.len() - 1;
    forged[last] = if forged[last] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    assert!(matches!(
        s.redeem.fetch_renewal(&forged, NOW + 1).await,
        Err(RenewalError::Token(TokenError::Forged | TokenError::Malformed))
    ));
    // A secrets token cannot fetch a renewal, and a renewal token cannot fetch secrets.
    let secrets_token = s.keyring.mint(&s.old, &Grant::Secrets, NOW + 100).unwrap().1;
    assert!(matches!(
        s.redeem.fetch_renewal(&secrets_token, NOW + 1).await,
        Err(RenewalError::Token(TokenError::Forged))
    ));
    assert!(s.redeem.redeem(&token, NOW + 1).await.is_err());
    // Another gateway's grant naming this renewal is not this gateway's.
    let other = Fingerprint::of_der(b"other gateway");
    let stolen = s.keyring.mint_v1(&other, &format!("gateways/{}/renewal/{}", s.old, s.new), NOW + 100).1;
    assert!(matches!(s.redeem.fetch_renewal(&stolen, NOW + 1).await, Err(RenewalError::Token(TokenError::Forged))));
    // An expired one is gone.
    assert!(matches!(s.redeem.fetch_renewal(&token, NOW + 3600).await, Err(RenewalError::Token(TokenError::Expired))));

    // The ledger is down: refused, nothing spent, the renewal stays.
    s.ledger.fail.store(true, Ordering::SeqCst);
    assert!(matches!(s.redeem.fetch_renewal(&token, NOW + 2).await, Err(RenewalError::Record(_))));
    s.ledger.fail.store(false, Ordering::SeqCst);
    // The store is down: the same.
    s.store.fail.store(true, Ordering::SeqCst);
    assert!(matches!(s.redeem.fetch_renewal(&token, NOW + 2).await, Err(RenewalError::Record(_))));
    s.store.fail.store(false, Ordering::SeqCst);
    assert!(s.records.renewal(&s.old).await.unwrap().is_some());
    s.redeem.fetch_renewal(&token, NOW + 3).await.unwrap();
}

#[tokio::test]
async fn a_replaced_or_retired_renewal_is_gone() {
    let s = setup(false).await;
    s.stage().await;
    let token = renewal_token(&s.boot_and_redeem(&s.old, NOW).await);
    // Replaced by a newer renewal: the old grant no longer fetches anything.
    let newer = Fingerprint::of_der(b"newer");
    s.records.put_renewal(&s.old, &pending(&newer, &s.old)).await.unwrap();
    assert!(matches!(s.redeem.fetch_renewal(&token, NOW + 1).await, Err(RenewalError::Gone(_))));
    // Back to the first, but its certificate retired: gone as well.
    s.records.put_renewal(&s.old, &pending(&s.new, &s.old)).await.unwrap();
    s.records.retire_certificate(&s.old, &s.new).await.unwrap();
    assert!(matches!(s.redeem.fetch_renewal(&token, NOW + 2).await, Err(RenewalError::Gone(_))));
    let id = s.keyring.verify(&token, NOW).unwrap().id;
    assert!(!s.ledger.holds(&id.to_string()), "refusals spend nothing");
}

#[tokio::test]
async fn the_renewed_certificate_boots_the_same_gateway_and_is_told_apart_once() {
    let s = setup(false).await;
    let before = s.boot.boot(&client(&s.old, NOW as i64 + 30 * DAY), &BootQuery::default(), NOW).await.unwrap();
    assert!(before.cert.expiring, "30 days left is within the 60-day window");
    assert_eq!(before.cert.days_left, 30);
    assert!(before.cert.renewed_from.is_none());
    assert!(matches!(
        s.boot.boot(&client(&s.new, i64::MAX), &BootQuery::default(), NOW).await,
        Err(BootError::UnknownGateway)
    ));
    s.stage().await;

    let first = s.boot.boot(&client(&s.new, NOW as i64 + 365 * DAY), &BootQuery::default(), NOW + 100).await.unwrap();
    assert_eq!((first.gateway.as_str(), first.release.as_str()), ("renew-gw", "r1"));
    assert_eq!(first.cert.fingerprint, s.new);
    assert_eq!(first.cert.renewed_from.as_ref(), Some(&s.old), "first boot with the renewed certificate");
    assert!(!first.cert.expiring);
    assert!(first.cert.retired.is_empty());
    // Its secret is the gateway's own.
    let token = first.script.split("/secrets/").nth(1).unwrap().split('"').next().unwrap().to_string();
    assert!(s.redeem.redeem(&token, NOW + 101).await.unwrap().secret.starts_with(b"token=abc"));

    let second = s.boot.boot(&client(&s.new, NOW as i64 + 365 * DAY), &BootQuery::default(), NOW + 200).await.unwrap();
    assert!(second.cert.renewed_from.is_none(), "only the first boot with it");
    // The old one still boots until it is retired.
    s.boot.boot(&client(&s.old, NOW as i64 + 30 * DAY), &BootQuery::default(), NOW + 300).await.unwrap();
    s.records.retire_certificate(&s.old, &s.old).await.unwrap();
    assert!(matches!(
        s.boot.boot(&client(&s.old, NOW as i64 + 30 * DAY), &BootQuery::default(), NOW + 400).await,
        Err(BootError::UnknownGateway)
    ));
    s.boot.boot(&client(&s.new, NOW as i64 + 365 * DAY), &BootQuery::default(), NOW + 500).await.unwrap();
}

#[tokio::test]
async fn retire_old_after_first_boot_retires_the_old_certificate() {
    let s = setup(true).await;
    s.stage().await;
    s.boot.boot(&client(&s.old, NOW as i64 + 30 * DAY), &BootQuery::default(), NOW).await.unwrap();
    let first = s.boot.boot(&client(&s.new, NOW as i64 + 365 * DAY), &BootQuery::default(), NOW + 100).await.unwrap();
    assert_eq!(first.cert.retired, vec![s.old.clone()]);
    assert!(first.cert.retire_error.is_none());
    assert!(matches!(
        s.boot.boot(&client(&s.old, NOW as i64 + 30 * DAY), &BootQuery::default(), NOW + 200).await,
        Err(BootError::UnknownGateway)
    ));
    let record = s.records.gateway(&s.old).await.unwrap().unwrap();
    assert_eq!(record.certificates.len(), 1);
    assert_eq!(record.certificates[0].first_boot_at, Some(NOW + 100));
    let again = s.boot.boot(&client(&s.new, NOW as i64 + 365 * DAY), &BootQuery::default(), NOW + 300).await.unwrap();
    assert!(again.cert.renewed_from.is_none() && again.cert.retired.is_empty());
}
