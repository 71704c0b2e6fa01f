//! Throughput of `ipxe-edge serve` (release build recommended): boots per second through the
//! mTLS front, with keep-alive connections and with a new TLS connection per boot.
//! Prints a table.
//!
//! Run: cargo bench -p ipxe-edge --bench serve_throughput

use ipxe_edge_tests::*;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ipxe-edge");

async fn run(serve: &ServeProcess, ca: &[u8], identity: &[u8], connections: usize, per_connection: usize, keep_alive: bool) -> (f64, Duration, Duration) {
    let url = format!("{}?buildarch=x86_64", serve.boot_url());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (ca, identity, url) = (ca.to_vec(), identity.to_vec(), url.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(per_connection);
            let mut client = https_client(&ca, Some(&identity));
            for _ in 0..per_connection {
                if !keep_alive {
                    client = https_client(&ca, Some(&identity));
                }
                let t = Instant::now();
                let response = client.get(&url).send().await.expect("boot request");
                assert_eq!(response.status(), 200);
                response.bytes().await.unwrap();
                latencies.push(t.elapsed());
            }
            latencies
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort();
    let at = |q: f64| all[((all.len() - 1) as f64 * q).round() as usize];
    (all.len() as f64 / elapsed, at(0.5), at(0.99))
}

#[tokio::main]
async fn main() {
    let data = temp_dir("bench-serve");
    let serve = ServeProcess::start(BIN, &data, &[]).expect("serve starts");
    let ca = std::fs::read(data.join("pki/ca.crt")).unwrap();
    let identity = [std::fs::read(data.join("pki/gateways/demo.crt")).unwrap(), std::fs::read(data.join("pki/gateways/demo.key")).unwrap()].concat();
    run(&serve, &ca, &identity, 4, 25, true).await; // warm-up
    println!("\n| mode                         | conns | boots | boots/s | p50 (ms) | p99 (ms) |");
    println!("|------------------------------|-------|-------|---------|----------|----------|");
    for (label, conns, per, keep) in [("keep-alive", 16, 200, true), ("keep-alive", 50, 40, true), ("new TLS connection per boot", 16, 40, false)] {
        let (rate, p50, p99) = run(&serve, &ca, &identity, conns, per, keep).await;
        println!("| {label:<28} | {conns:>5} | {:>5} | {rate:>7.0} | {:>8.1} | {:>8.1} |", conns * per, p50.as_secs_f64() * 1e3, p99.as_secs_f64() * 1e3);
    }
    drop(serve);
    let _ = std::fs::remove_dir_all(&data);
}
