//! Boot handler latency with in-memory records: certificate verification, three record reads,
//! rendering, two real SigV4 presigns (aws-sdk-s3, computed locally) and a token; with boot
//! outcome recording (one journal read and one write, in memory) and without.
//! Prints a p50/p99 table after criterion's own report.
//!
//! Run: cargo bench -p ipxe-edge-tests --bench boot_handler

use criterion::{criterion_group, Criterion};
use ipxe_edge_core::api::metrics::NoMetrics;
use ipxe_edge_core::api::trust::Trust;
use ipxe_edge_core::domain::identity::DEFAULT_CLOCK_SKEW;
use ipxe_edge_core::domain::identity::{ChainVerifier, TrustBundle};
use ipxe_edge_core::domain::token::Keyring;
use ipxe_edge_core::lambda::http::{boot_handler, redeem_handler, BootApp, CertHeader, RedeemApp};
use ipxe_edge_core::service::boot::{BootService, BootSettings};
use ipxe_edge_core::service::redeem::RedeemService;
use ipxe_edge_core::storage::adapters::memory::{MemoryLedger, MemoryStore};
use ipxe_edge_core::storage::adapters::object_journal::ObjectJournal;
use ipxe_edge_core::storage::adapters::s3::S3Store;
use ipxe_edge_core::storage::records::Records;
use ipxe_edge_tests::*;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Bench {
    runtime: tokio::runtime::Runtime,
    boot: BootApp,
    redeem: RedeemApp,
    event: String,
}

fn setup(recording: bool) -> Bench {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let store = Arc::new(MemoryStore::new());
    let gw = issue_gateway("bench");
    runtime.block_on(seed_gateway(
        store.as_ref(),
        "bench",
        &gw.cert_der,
        SeedRelease { id: "r1", kernel: b"K", initrd: b"I", cmdline: "console=ttyS0" },
        Some(b"s"),
    ));
    let creds = aws_sdk_s3::config::Credentials::new(
        "AKIDEXAMPLE",
        "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
        Some("session-token".into()),
        None,
        "bench",
    );
    let conf = aws_sdk_s3::Config::builder()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("eu-west-1"))
        .credentials_provider(creds)
        .build();
    let presigner = Arc::new(S3Store::new(aws_sdk_s3::Client::from_conf(conf), "bench-bucket"));
    let keyring = Arc::new(Keyring::parse(&Keyring::generate_entry("k1")).unwrap());
    let settings = BootSettings::new("https://secrets.example.org");
    let journal = Arc::new(ObjectJournal::new(Arc::new(MemoryStore::new()), Duration::from_secs(90 * 86_400)));
    // As the functions run it: presigned URLs reused during the first fifth of their lifetime.
    let presigner = Arc::new(ipxe_edge_core::storage::presign_cache::CachingPresigner::new(presigner));
    let mut service = BootService::new(Records::new(store.clone()), presigner, keyring.clone(), settings);
    let mut redeem_service = RedeemService::new(Records::new(store), Arc::new(MemoryLedger::default()), keyring);
    if recording {
        service = service.with_journal(journal.clone());
        redeem_service = redeem_service.with_journal(journal);
    }
    let boot = BootApp {
        service,
        trust: Trust::Fixed(Arc::new(ChainVerifier::new(
            TrustBundle::from_pem(test_ca().cert_pem().as_bytes()).unwrap(),
            DEFAULT_CLOCK_SKEW,
        ))),
        cert_header: CertHeader::Off,
        metrics: Arc::new(NoMetrics),
    };
    let redeem = RedeemApp { service: redeem_service, metrics: Arc::new(NoMetrics) };
    let event = fixture(
        "apigw-http-v2-boot.json",
        &[
            ("__CLIENT_CERT_PEM__", json!(gw.cert_pem)),
            ("__RAW_QUERY__", json!("mac=52:54:00:12:34:56&platform=efi&buildarch=x86_64")),
            ("__QUERY_PARAMETERS__", json!({"mac": "52:54:00:12:34:56", "platform": "efi", "buildarch": "x86_64"})),
            ("__METHOD__", json!("GET")),
        ],
    );
    Bench { runtime, boot, redeem, event }
}

fn boot_once(b: &Bench) -> String {
    let req = lambda_http::request::from_str(&b.event).unwrap();
    let response = b.runtime.block_on(boot_handler(&b.boot, req));
    assert_eq!(response.status(), 200);
    String::from_utf8(response.body().to_vec()).unwrap()
}

fn redeem_path(script: &str) -> String {
    let start = script.find("/secrets/").unwrap();
    script[start..start + script[start..].find('"').unwrap()].to_string()
}

fn redeem_once(b: &Bench, path: &str) {
    let event = fixture("function-url-redeem.json", &[("__PATH__", json!(path)), ("__METHOD__", json!("GET"))]);
    let response = b.runtime.block_on(redeem_handler(&b.redeem, lambda_http::request::from_str(&event).unwrap()));
    assert_eq!(response.status(), 200);
}

fn criterion_benches(c: &mut Criterion) {
    let b = setup(false);
    c.bench_function("boot_handler (event parse + verify + render + 2 presigns + token)", |bench| {
        bench.iter(|| boot_once(&b))
    });
    let b = setup(true);
    c.bench_function("boot_handler with outcome recording (+ journal read and write)", |bench| {
        bench.iter(|| boot_once(&b))
    });
}

fn percentiles(name: &str, samples: &mut [Duration]) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "| {name:<27} | {:>6} | {:>9.1} | {:>9.1} | {:>9.1} |",
        samples.len(),
        at(0.5).as_secs_f64() * 1e6,
        at(0.99).as_secs_f64() * 1e6,
        at(1.0).as_secs_f64() * 1e6
    );
}

fn measure(recording: bool) -> (Vec<Duration>, Vec<Duration>) {
    let b = setup(recording);
    for _ in 0..200 {
        boot_once(&b);
    }
    let mut boot = Vec::new();
    let mut scripts = Vec::new();
    for _ in 0..3000 {
        let t = Instant::now();
        scripts.push(boot_once(&b));
        boot.push(t.elapsed());
    }
    // Only the latest boot's redemption changes the journal; the others are recorded as
    // superseded, which costs the same read.
    let mut redeem = Vec::new();
    for script in &scripts {
        let path = redeem_path(script);
        let t = Instant::now();
        redeem_once(&b, &path);
        redeem.push(t.elapsed());
    }
    (boot, redeem)
}

fn latency_table() {
    let (mut boot, mut redeem) = measure(false);
    let (mut boot_rec, mut redeem_rec) = measure(true);
    println!("\n| handler                     | n      | p50 (µs)  | p99 (µs)  | max (µs)  |");
    println!("|-----------------------------|--------|-----------|-----------|-----------|");
    percentiles("boot", &mut boot);
    percentiles("boot, outcomes recorded", &mut boot_rec);
    percentiles("redeem", &mut redeem);
    percentiles("redeem, outcomes recorded", &mut redeem_rec);
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50).measurement_time(Duration::from_secs(5));
    targets = criterion_benches
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    latency_table();
}
