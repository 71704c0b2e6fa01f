//! Boot outcomes through the handlers, from event fixtures, with in-memory stores and the
//! journal over an in-memory object store: recording, check-in, fallback, and the journal
//! failing without failing boots or redemptions.

use ipxe_edge_core::api::metrics::{Counter, Metrics};
use ipxe_edge_core::api::trust::Trust;
use ipxe_edge_core::domain::identity::{ChainVerifier, Fingerprint, TrustBundle, DEFAULT_CLOCK_SKEW};
use ipxe_edge_core::domain::journal::{BootReason, HealthGate, Outcome};
use ipxe_edge_core::domain::token::Keyring;
use ipxe_edge_core::lambda::http::{boot_handler, redeem_handler, BootApp, CertHeader, RedeemApp};
use ipxe_edge_core::service::boot::{BootService, BootSettings};
use ipxe_edge_core::service::redeem::RedeemService;
use ipxe_edge_core::storage::adapters::memory::{MemoryLedger, MemoryPresigner, MemoryStore};
use ipxe_edge_core::storage::adapters::object_journal::ObjectJournal;
use ipxe_edge_core::storage::records::Records;
use ipxe_edge_core::storage::{keys, BootJournal, ObjectStore};
use ipxe_edge_tests::*;
use lambda_http::{Body, Response};
use serde_json::json;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const BASE: &str = "https://secrets.example.org";
const CHECKIN_TEMPLATE: &str =
    "#!ipxe\nkernel ${kernel_url} ${cmdline} checkin=\"${checkin_url}\"\ninitrd ${initrd_url}\nboot\n";

#[derive(Default)]
struct CountingMetrics(Mutex<Vec<(&'static str, Vec<&'static str>)>>);

impl Metrics for CountingMetrics {
    fn record(&self, outcome: &'static str, counters: &[Counter]) {
        self.0.lock().unwrap().push((outcome, counters.iter().map(|c| c.name()).collect()));
    }
}

impl CountingMetrics {
    fn count(&self, name: &str) -> usize {
        self.0.lock().unwrap().iter().filter(|(_, c)| c.contains(&name)).count()
    }
}

struct Harness {
    store: Arc<MemoryStore>,
    journal_store: Arc<MemoryStore>,
    journal: Arc<ObjectJournal>,
    boot: BootApp,
    redeem: RedeemApp,
    metrics: Arc<CountingMetrics>,
    gw: ipxe_edge_pki::Issued,
    fp: Fingerprint,
}

async fn harness(secrets: Option<&[u8]>) -> Harness {
    let store = Arc::new(MemoryStore::new());
    let journal_store = Arc::new(MemoryStore::new());
    let journal = Arc::new(ObjectJournal::new(journal_store.clone(), Duration::from_secs(86_400)));
    let keyring = Arc::new(Keyring::parse(&Keyring::generate_entry("k1")).unwrap());
    let gw = issue_gateway("gw-outcomes");
    let seeded = seed_gateway(
        store.as_ref(),
        "gw1",
        &gw.cert_der,
        SeedRelease { id: "A", kernel: b"KERNEL-A", initrd: b"INITRD-A", cmdline: "" },
        secrets,
    )
    .await;
    seed_release(
        store.as_ref(),
        SeedRelease { id: "B", kernel: b"KERNEL-B", initrd: b"INITRD-B", cmdline: "" },
        None,
        HealthGate::ReachedLinux,
    )
    .await;
    seed_release(
        store.as_ref(),
        SeedRelease { id: "C", kernel: b"KERNEL-C", initrd: b"INITRD-C", cmdline: "" },
        Some(CHECKIN_TEMPLATE),
        HealthGate::Checkin,
    )
    .await;
    let metrics = Arc::new(CountingMetrics::default());
    let boot = BootApp {
        service: BootService::new(
            Records::new(store.clone()),
            Arc::new(MemoryPresigner::default()),
            keyring.clone(),
            BootSettings::new(BASE),
        )
        .with_journal(journal.clone()),
        trust: Trust::Fixed(Arc::new(ChainVerifier::new(
            TrustBundle::from_pem(test_ca().cert_pem().as_bytes()).unwrap(),
            DEFAULT_CLOCK_SKEW,
        ))),
        cert_header: CertHeader::Off,
        metrics: metrics.clone(),
    };
    let redeem = RedeemApp {
        service: RedeemService::new(Records::new(store.clone()), Arc::new(MemoryLedger::default()), keyring)
            .with_journal(journal.clone())
            .with_checkin_base_url(BASE),
        metrics: metrics.clone(),
    };
    Harness { store, journal_store, journal, boot, redeem, metrics, gw, fp: seeded.fingerprint }
}

fn body(response: &Response<Body>) -> String {
    String::from_utf8_lossy(response.body().as_ref()).into_owned()
}

impl Harness {
    /// Boots; returns the script and which release's kernel it holds.
    async fn boot(&self) -> (String, &'static str) {
        let request = request(
            "apigw-http-v2-boot.json",
            &[
                ("__CLIENT_CERT_PEM__", json!(self.gw.cert_pem)),
                ("__RAW_QUERY__", json!("mac=52:54:00:12:34:56&platform=efi&buildarch=x86_64")),
                ("__QUERY_PARAMETERS__", json!({"mac": "52:54:00:12:34:56", "platform": "efi", "buildarch": "x86_64"})),
                ("__METHOD__", json!("GET")),
            ],
        );
        let response = boot_handler(&self.boot, request).await;
        let text = body(&response);
        assert_eq!(response.status(), 200, "{text}");
        let release = ["A", "B", "C"]
            .into_iter()
            .find(|r| text.contains(&sha256_hex(format!("KERNEL-{r}").as_bytes())))
            .expect("a known kernel");
        (text, release)
    }

    async fn call(&self, path: &str, method: &str) -> Response<Body> {
        redeem_handler(
            &self.redeem,
            request("function-url-redeem.json", &[("__PATH__", json!(path)), ("__METHOD__", json!(method))]),
        )
        .await
    }

    async fn redeem(&self, script: &str) -> Response<Body> {
        self.call(&url_path(script, "/secrets/"), "GET").await
    }

    async fn state(&self) -> ipxe_edge_core::domain::journal::GatewayJournal {
        self.journal.load(&self.fp).await.unwrap().health
    }
}

/// The path of the first `BASE<prefix>…` URL in a text, up to a quote or whitespace.
fn url_path(text: &str, prefix: &str) -> String {
    let start = text.find(&format!("{BASE}{prefix}")).unwrap_or_else(|| panic!("no {prefix} URL in {text}"));
    let rest = &text[start + BASE.len()..];
    rest[..rest.find(|c: char| c == '"' || c.is_whitespace()).unwrap_or(rest.len())].to_string()
}

#[tokio::test]
async fn two_failed_boots_fall_back_to_the_last_good_release_until_the_target_changes() {
    let h = harness(Some(b"k=v\n")).await;
    let (script, release) = h.boot().await;
    assert_eq!(release, "A");
    assert_eq!(h.redeem(&script).await.status(), 200);
    assert_eq!(h.state().await.last_good.unwrap().release, "A");

    point_stable(h.store.as_ref(), "B").await;
    assert_eq!(h.boot().await.1, "B");
    assert_eq!(h.boot().await.1, "B", "one failure is not enough (default 2)");
    let (script, release) = h.boot().await;
    assert_eq!(release, "A", "after two failed boots of B, its last good release");
    assert_eq!(h.metrics.count("Fallbacks"), 1);
    // The fallback boot redeems fine; B stays failed and the gateway stays on A.
    assert_eq!(h.redeem(&script).await.status(), 200);
    assert_eq!(h.boot().await.1, "A");
    let state = h.state().await;
    assert_eq!((state.target.as_deref(), state.fallback.as_deref(), state.failures), (Some("B"), Some("A"), 2));

    let history = h.journal.history(&h.fp, 10).await.unwrap();
    let summary: Vec<_> = history.iter().rev().map(|b| (b.release.as_str(), b.reason, b.outcome)).collect();
    assert_eq!(
        summary,
        vec![
            ("A", BootReason::Channel, Outcome::ReachedLinux),
            ("B", BootReason::Channel, Outcome::Failed),
            ("B", BootReason::Channel, Outcome::Failed),
            ("A", BootReason::Fallback, Outcome::ReachedLinux),
            ("A", BootReason::Fallback, Outcome::Issued),
        ]
    );
    assert_eq!(history[4].mac.as_deref(), Some("52:54:00:12:34:56"));
    assert_eq!(history[4].platform.as_deref(), Some("efi"));

    // A promote clears the fallback.
    seed_release(
        h.store.as_ref(),
        SeedRelease { id: "D", kernel: b"KERNEL-B", initrd: b"INITRD-B", cmdline: "" },
        None,
        HealthGate::ReachedLinux,
    )
    .await;
    point_stable(h.store.as_ref(), "D").await;
    let (text, _) = h.boot().await;
    assert!(!text.contains(&sha256_hex(b"KERNEL-A")));
    let state = h.state().await;
    assert_eq!((state.target.as_deref(), state.fallback, state.failures), (Some("D"), None, 0));
}

#[tokio::test]
async fn never_falls_back_to_a_release_that_is_gone_or_when_disabled() {
    let h = harness(Some(b"k=v\n")).await;
    let (script, _) = h.boot().await;
    h.redeem(&script).await;
    point_stable(h.store.as_ref(), "B").await;
    h.boot().await;
    h.boot().await;
    h.store.delete(&keys::release("A")).await.unwrap();
    assert_eq!(h.boot().await.1, "B", "last good release deleted: the target is served");
    assert_eq!(h.metrics.count("Fallbacks"), 0);

    // A channel's own threshold of 0 turns fallback off.
    let h = harness(Some(b"k=v\n")).await;
    let (script, _) = h.boot().await;
    h.redeem(&script).await;
    point_stable(h.store.as_ref(), "B").await;
    let mut channel: ipxe_edge_core::domain::model::Channel =
        serde_json::from_slice(&h.store.get(&keys::channel("stable")).await.unwrap().unwrap().body).unwrap();
    channel.fallback_after = Some(0);
    put_json(h.store.as_ref(), &keys::channel("stable"), &channel).await;
    for _ in 0..4 {
        assert_eq!(h.boot().await.1, "B");
    }
}

#[tokio::test]
async fn checkin_is_single_use_forged_is_403_and_neither_changes_records() {
    let h = harness(None).await;
    point_stable(h.store.as_ref(), "C").await;
    let (script, release) = h.boot().await;
    assert_eq!(release, "C");
    let path = url_path(&script, "/checkin/");
    assert_eq!(h.call(&path, "GET").await.status(), 405);
    assert_eq!(h.call(&path, "GET").await.headers()["allow"], "POST");
    // One character of the MAC changed (not the last one, whose spare bits may not decode).
    let mut forged: Vec<char> = path.chars().collect();
    let at = forged.len() - 10;
    forged[at] = if forged[at] == 'A' { 'B' } else { 'A' };
    let forged: String = forged.into_iter().collect();
    let before = h.journal_store.list("").await.unwrap();
    let state_before = h.state().await;
    assert_eq!(h.call(&forged, "POST").await.status(), 403);
    assert_eq!(h.state().await, state_before, "a forged check-in changes nothing");
    // A secrets token is no check-in token, and the other way round.
    assert_eq!(h.call(&path.replace("/checkin/", "/secrets/"), "GET").await.status(), 403);

    let response = h.call(&path, "POST").await;
    assert_eq!(response.status(), 204, "{}", body(&response));
    let state = h.state().await;
    assert_eq!(state.latest.as_ref().unwrap().outcome, Outcome::Healthy);
    assert_eq!(state.last_good.as_ref().unwrap().release, "C");
    let after = h.journal_store.list("").await.unwrap();
    assert_eq!(before, after, "the check-in rewrote the same objects, no new ones");

    assert_eq!(h.call(&path, "POST").await.status(), 410, "replay");
    assert_eq!(h.state().await, state, "a replayed check-in changes nothing");
    // The check-in of a superseded boot is refused as well.
    let (next, _) = h.boot().await;
    assert_eq!(h.call(&path, "POST").await.status(), 410);
    assert_eq!(h.call(&url_path(&next, "/checkin/"), "POST").await.status(), 204);
    assert_eq!(h.metrics.count("Checkins"), 7);
}

#[tokio::test]
async fn secrets_can_carry_their_boots_checkin_url() {
    let h = harness(Some(b"health=${checkin_url}\n")).await;
    let (script, _) = h.boot().await;
    let response = h.redeem(&script).await;
    let secret = body(&response);
    let path = url_path(&secret, "/checkin/");
    assert!(!secret.contains("${checkin_url}"));
    assert_eq!(h.call(&path, "POST").await.status(), 204);
    assert_eq!(h.state().await.latest.unwrap().outcome, Outcome::Healthy);
}

#[tokio::test]
async fn a_failing_journal_fails_neither_boot_nor_redemption() {
    let h = harness(Some(b"k=v\n")).await;
    h.journal_store.fail.store(true, Ordering::SeqCst);
    let (script, release) = h.boot().await;
    assert_eq!(release, "A");
    assert!(script.contains("checkin=") || !script.contains("${checkin_url}"));
    let response = h.redeem(&script).await;
    assert_eq!(response.status(), 200);
    assert_eq!(body(&response), "k=v\n");
    assert_eq!(h.metrics.count("JournalFailures"), 2, "the boot and the redemption were counted");
    h.journal_store.fail.store(false, Ordering::SeqCst);
    assert_eq!(h.journal.history(&h.fp, 10).await.unwrap().len(), 0);
    // A check-in that cannot be recorded is a 503 that can be retried.
    point_stable(h.store.as_ref(), "C").await;
    let (script, _) = h.boot().await;
    h.journal_store.fail.store(true, Ordering::SeqCst);
    let path = url_path(&script, "/checkin/");
    let response = h.call(&path, "POST").await;
    assert_eq!(response.status(), 503);
    assert_eq!(response.headers()["retry-after"], "5");
    h.journal_store.fail.store(false, Ordering::SeqCst);
    assert_eq!(h.call(&path, "POST").await.status(), 204);
}

/// Many boots and check-ins of one gateway at once: every committed boot is in the history,
/// the latest boot is one of them, and the state matches what the history says.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_boots_and_checkins_keep_the_state_consistent() {
    let h = Arc::new(harness(None).await);
    point_stable(h.store.as_ref(), "C").await;
    let (first, _) = h.boot().await;
    let first_checkin = url_path(&first, "/checkin/");
    let mut tasks = Vec::new();
    for i in 0..24 {
        let h = h.clone();
        let checkin = first_checkin.clone();
        tasks.push(tokio::spawn(async move {
            if i % 3 == 0 {
                h.call(&checkin, "POST").await.status().as_u16()
            } else {
                h.boot().await;
                200
            }
        }));
    }
    let mut checkins_ok = 0;
    for t in tasks {
        if t.await.unwrap() == 204 {
            checkins_ok += 1;
        }
    }
    assert!(checkins_ok <= 1, "one boot, one check-in: {checkins_ok}");
    let state = h.state().await;
    let history = h.journal.history(&h.fp, 100).await.unwrap();
    assert_eq!(history.len(), 17, "every boot recorded once");
    let latest = state.latest.clone().unwrap();
    assert!(history.iter().any(|b| b.id == latest.id));
    // Every boot but the latest was closed (failed) or passed.
    let open: Vec<_> = history.iter().filter(|b| b.is_open() && b.id != latest.id).collect();
    assert!(open.is_empty(), "{open:?}");
    let failed = history.iter().filter(|b| b.outcome == Outcome::Failed).count() as u32;
    assert_eq!(state.failures, failed, "consecutive failures = failed boots (no fallback target here)");
}

/// A journal whose reads take a while, as over a network (boots arriving together overlap),
/// counting its reads and writes.
struct SlowReads(Arc<ObjectJournal>, std::sync::atomic::AtomicUsize, std::sync::atomic::AtomicUsize);

#[async_trait::async_trait]
impl BootJournal for SlowReads {
    async fn load(
        &self,
        fp: &Fingerprint,
    ) -> Result<ipxe_edge_core::storage::StoredJournal, ipxe_edge_core::storage::StoreError> {
        self.1.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(5)).await;
        self.0.load(fp).await
    }
    async fn commit(
        &self,
        fp: &Fingerprint,
        version: Option<&str>,
        next: &ipxe_edge_core::domain::journal::GatewayJournal,
        boots: &[&ipxe_edge_core::domain::journal::BootRecord],
    ) -> Result<(), ipxe_edge_core::storage::StoreError> {
        self.2.fetch_add(1, Ordering::SeqCst);
        self.0.commit(fp, version, next, boots).await
    }
    async fn history(
        &self,
        fp: &Fingerprint,
        limit: usize,
    ) -> Result<Vec<ipxe_edge_core::domain::journal::BootRecord>, ipxe_edge_core::storage::StoreError> {
        self.0.history(fp, limit).await
    }
}

/// Sixteen boots of one gateway at once (a tight iPXE loop): each is recorded with one read and
/// one write of the state; none loses its write to the others and starts over (they take turns
/// in the process instead of all reading one state).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boots_of_one_gateway_at_once_are_all_recorded() {
    let h = harness(None).await;
    let journal = Arc::new(SlowReads(h.journal.clone(), Default::default(), Default::default()));
    let service = Arc::new(
        BootService::new(
            Records::new(h.store.clone()),
            Arc::new(MemoryPresigner::default()),
            Arc::new(Keyring::parse(&Keyring::generate_entry("k1")).unwrap()),
            BootSettings::new(BASE),
        )
        .with_journal(journal.clone()),
    );
    let client = ipxe_edge_core::domain::identity::ClientIdentity {
        fingerprint: h.fp.clone(),
        subject: "CN=gw1".into(),
        issuer: "CN=ca".into(),
        not_after: i64::MAX,
    };
    let now = ipxe_edge_core::domain::clock::unix_now();
    let boots: Vec<_> = (0..16)
        .map(|_| {
            let (service, client) = (service.clone(), client.clone());
            tokio::spawn(async move {
                service.boot(&client, &ipxe_edge_core::domain::query::BootQuery::default(), now).await.unwrap()
            })
        })
        .collect();
    for boot in boots {
        let boot = boot.await.unwrap();
        assert_eq!(boot.journal_error, None, "a boot went unrecorded");
    }
    assert_eq!(h.journal.history(&h.fp, 100).await.unwrap().len(), 16);
    let (reads, writes) = (journal.1.load(Ordering::SeqCst), journal.2.load(Ordering::SeqCst));
    assert_eq!((reads, writes), (16, 16), "state reads and writes of 16 boots");
}
