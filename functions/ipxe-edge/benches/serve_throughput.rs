//! Throughput of `ipxe-edge serve` (release build recommended): boots per second through the
//! mTLS front, with keep-alive connections and with a new TLS connection per boot; then the
//! same keep-alive boots with 10,000 enrolled gateways, to show a boot's cost does not depend
//! on the farm's size. Prints tables. New-connection boots are also measured the way iPXE
//! connects (TLS 1.2, a full handshake per request), for RSA gateways (iPXE 1.x) and ECDSA
//! gateways (iPXE 2.0) side by side, each against nginx holding the same certificates.
//!
//! Each row also prints the CPU time `serve` spent per boot (user + system, all its threads) and
//! the client's own, since both share this machine's cores: `2 cores / serve CPU per boot` is
//! the rate `serve` could answer with the cores to itself.
//!
//! Run: cargo bench -p ipxe-edge --bench serve_throughput
//! (`BENCH_SCALE=10` runs ten times as many boots per row, e.g. under `perf record -p`;
//! `BENCH_ONLY=downloads` runs one part: `boots`, `nginx` (keep-alive and new connections
//! against nginx), `downloads` or `farm`, or several separated by commas.)

use ipxe_edge_tests::*;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_ipxe-edge");

/// Makes the HTTPS client of connection `i` (again for every boot without keep-alive).
type Clients = std::sync::Arc<dyn Fn(usize) -> reqwest::Client + Send + Sync>;

/// Boots through `connections` clients, client `i` as gateway `identities[i % len]` (a farm's
/// gateways boot as themselves: one gateway does not boot sixteen times at once).
async fn run(
    serve: &ServeProcess,
    ca: &[u8],
    identities: &[Vec<u8>],
    connections: usize,
    per_connection: usize,
    keep_alive: bool,
) -> (f64, Duration, Duration) {
    let (ca, identities) = (ca.to_vec(), identities.to_vec());
    let clients: Clients = std::sync::Arc::new(move |i| https_client(&ca, Some(&identities[i % identities.len()])));
    run_url(format!("{}?buildarch=x86_64", serve.boot_url()), clients, connections, per_connection, keep_alive).await
}

async fn run_url(
    url: String,
    clients: Clients,
    connections: usize,
    per_connection: usize,
    keep_alive: bool,
) -> (f64, Duration, Duration) {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..connections {
        let (clients, url) = (clients.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(per_connection);
            let mut client = clients(i);
            for _ in 0..per_connection {
                if !keep_alive {
                    client = clients(i);
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

/// A client that speaks TLS like iPXE: TLS 1.2 only, full handshakes, and for `Rsa2048` only
/// ECDHE-RSA suites (iPXE 1.x: the server must sign with RSA), for `EcdsaP256` only
/// ECDHE-ECDSA ones (an ECDSA gateway on iPXE 2.0: the server signs with P-256).
fn ipxe_like_client(ca_pem: &[u8], identity_pem: &[u8], key_type: ipxe_edge_pki::KeyType) -> reqwest::Client {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let prefix = match key_type {
        ipxe_edge_pki::KeyType::Rsa2048 => "TLS_ECDHE_RSA_",
        ipxe_edge_pki::KeyType::EcdsaP256 => "TLS_ECDHE_ECDSA_",
    };
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.cipher_suites.retain(|suite| format!("{:?}", suite.suite()).starts_with(prefix));
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(identity_pem).map(Result::unwrap).collect();
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, PrivateKeyDer::from_pem_slice(identity_pem).unwrap())
        .unwrap();
    reqwest::Client::builder().use_preconfigured_tls(config).timeout(Duration::from_secs(30)).build().unwrap()
}

#[tokio::main]
async fn main() {
    let data = temp_dir("bench-serve");
    let serve = ServeProcess::start(BIN, &data, &[]).expect("serve starts");
    let ca = std::fs::read(data.join("pki/ca.crt")).unwrap();
    let identity = gateways(&data, 50);
    // Warm-up: the record cache, the allocator's pages and the TLS sessions of a first round.
    run(&serve, &ca, &identity, 16, 200, true).await;
    let scale: usize = std::env::var("BENCH_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(1).max(1);
    let only = std::env::var("BENCH_ONLY").ok();
    let part = |name: &str| only.as_deref().is_none_or(|only| only.split(',').any(|p| p.trim() == name));
    if part("boots") {
        println!("\n| mode                         | conns | boots | boots/s | p50 (ms) | p99 (ms) | serve CPU/boot (µs) | client CPU/boot (µs) |");
        println!("|------------------------------|-------|-------|---------|----------|----------|---------------------|----------------------|");
        // `one gateway`: every connection boots the same gateway, as a gateway stuck in a tight
        // iPXE loop (or a test rig) does; its boots meet on one journal state.
        let mut cpu_per_boot = std::collections::HashMap::new();
        for (label, conns, per, keep, farm) in [
            ("keep-alive", 16, 2500, true, 50),
            ("keep-alive, one gateway", 16, 2500, true, 1),
            ("keep-alive", 50, 600, true, 50),
            ("new TLS connection per boot", 16, 40, false, 50),
        ] {
            let identity = &identity[..farm];
            let per = per * scale;
            let boots = (conns * per) as f64;
            // Three rounds of a few seconds each (shorter ones mostly measure their own start and
            // end); the row is the round with the median rate.
            let mut rounds = Vec::new();
            for _ in 0..3 {
                let (serve_before, client_before) = (cpu_time(serve.child.id()), cpu_time(std::process::id()));
                let (rate, p50, p99) = run(&serve, &ca, identity, conns, per, keep).await;
                let serve_us = (cpu_time(serve.child.id()) - serve_before).as_secs_f64() * 1e6 / boots;
                let client_us = (cpu_time(std::process::id()) - client_before).as_secs_f64() * 1e6 / boots;
                rounds.push((rate, p50, p99, serve_us, client_us));
            }
            rounds.sort_by(|a, b| a.0.total_cmp(&b.0));
            let (rate, p50, p99, serve_us, client_us) = rounds[1];
            cpu_per_boot.insert((label, conns), serve_us);
            println!(
                "| {label:<28} | {conns:>5} | {:>5} | {rate:>7.0} | {:>8.1} | {:>8.1} | {serve_us:>19.0} | {client_us:>20.0} |",
                conns * per,
                p50.as_secs_f64() * 1e3,
                p99.as_secs_f64() * 1e3
            );
        }
        println!("(median of 3 rounds per row)");
        println!(
            "serve CPU per boot, one gateway / 50 gateways (16 keep-alive connections): {:.2} (goal: at most 1.3)",
            cpu_per_boot[&("keep-alive, one gateway", 16)] / cpu_per_boot[&("keep-alive", 16)]
        );
    }

    // The handshake dominates a boot on a new connection: iPXE-like clients (TLS 1.2, a new
    // connection per boot) of RSA gateways and of ECDSA gateways, against `serve` (which picks
    // its RSA or ECDSA certificate per handshake) and against a bare mTLS server holding the
    // same certificates (nginx answering a constant) on this machine.
    let ecdsa_identity = ecdsa_gateways(&data, 50);
    let script = boot_script(&serve, &ca, &identity[0]).await;
    let files = data.with_extension("files");
    std::fs::create_dir_all(&files).unwrap();
    let initrd: Vec<u8> = (0..64u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(files.join("initrd.img"), &initrd).unwrap();
    let initrd_digest = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&initrd))
    };
    drop(initrd);
    let bare = BareMtls::start(&data, &script, &files);
    if let (Some(bare), true) = (&bare, part("nginx")) {
        keep_alive_against_nginx(&serve, &ca, &identity, bare, scale).await;
    }
    match &bare {
        Some(bare) if part("nginx") => {
            println!(
                "\n| new TLS connection per boot, TLS 1.2, 16 clients (median of 5) | boots/s | serve CPU/boot (µs) |"
            );
            println!(
                "|-----------------------------------------------------------------|---------|---------------------|"
            );
            let mut figures = Vec::new();
            for (key_type, identities) in
                [(ipxe_edge_pki::KeyType::Rsa2048, &identity), (ipxe_edge_pki::KeyType::EcdsaP256, &ecdsa_identity)]
            {
                let (ca, identities) = (ca.clone(), identities.clone());
                let clients: Clients =
                    std::sync::Arc::new(move |i| ipxe_like_client(&ca, &identities[i % identities.len()], key_type));
                let (per, url) = (40 * scale, format!("{}?buildarch=x86_64", serve.boot_url()));
                // Alternating rounds, median of each: one round's rate varies by ±10 % here.
                let (mut ours, mut cpu, mut theirs) = (Vec::new(), Vec::new(), Vec::new());
                for _ in 0..5 {
                    let before = cpu_time(serve.child.id());
                    ours.push(run_url(url.clone(), clients.clone(), 16, per, false).await.0);
                    cpu.push((cpu_time(serve.child.id()) - before).as_secs_f64() * 1e6 / (16 * per) as f64);
                    theirs.push(run_url(bare.url.clone(), clients.clone(), 16, per, false).await.0);
                }
                let (ours, cpu, theirs) = (median(ours), median(cpu), median(theirs));
                let kind = key_type.as_str();
                println!(
                    "| ipxe-edge serve (whole boot), {kind:<12} gateways and server key | {ours:>7.0} | {cpu:>19.0} |"
                );
                println!("| nginx, mTLS, constant answer, {kind:<12} gateways and server key | {theirs:>7.0} |                     |");
                figures.push((kind, ours, theirs));
            }
            for (kind, ours, theirs) in &figures {
                println!("{kind}: serve / nginx {:.2}", ours / theirs);
            }
            println!(
                "ecdsa-p256 / rsa-2048: serve {:.2}, nginx {:.2}",
                figures[1].1 / figures[0].1,
                figures[1].2 / figures[0].2
            );
        }
        Some(_) => {}
        None => {
            println!("\nnginx not found: install it (apt-get install nginx-light) to compare with a bare mTLS server")
        }
    }

    if let (Some(bare), true) = (&bare, part("downloads")) {
        downloads_against_nginx(&data, &serve, &ca, &identity[0], &files, &initrd_digest, bare).await;
    }

    if part("farm") {
        // Farm size: one gateway booting on one keep-alive connection, among the 50 gateways
        // enrolled so far and then among 10,000 more (each with secrets).
        let demo = &identity[..1];
        run(&serve, &ca, demo, 1, 50, true).await; // warm-up
        let (_, few_p50, few_p99) = run(&serve, &ca, demo, 1, 1000, true).await;
        enroll_many(&data, 10_000);
        run(&serve, &ca, demo, 1, 50, true).await; // warm-up
        let (_, many_p50, many_p99) = run(&serve, &ca, demo, 1, 1000, true).await;
        println!("\n| enrolled gateways | p50 (ms) | p99 (ms) |");
        println!("|-------------------|----------|----------|");
        println!("| 50                | {:>8.2} | {:>8.2} |", few_p50.as_secs_f64() * 1e3, few_p99.as_secs_f64() * 1e3);
        println!(
            "| 10,050            | {:>8.2} | {:>8.2} |",
            many_p50.as_secs_f64() * 1e3,
            many_p99.as_secs_f64() * 1e3
        );
        println!("p99 ratio (10,050 / 50): {:.2}", many_p99.as_secs_f64() / few_p99.as_secs_f64());
    }
    drop(serve);
    drop(bare);
    let _ = std::fs::remove_dir_all(&data);
    let _ = std::fs::remove_dir_all(&files);
}

/// Keep-alive boots against nginx answering a static copy of a boot script (same size) behind
/// mutual TLS, 16 connections, alternating rounds.
async fn keep_alive_against_nginx(
    serve: &ServeProcess,
    ca: &[u8],
    identity: &[Vec<u8>],
    bare: &BareMtls,
    scale: usize,
) {
    let (ca, identities) = (ca.to_vec(), identity.to_vec());
    let clients: Clients = std::sync::Arc::new(move |i| https_client(&ca, Some(&identities[i % identities.len()])));
    let boot_url = format!("{}?buildarch=x86_64", serve.boot_url());
    let per = 2500 * scale;
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        ours.push(run_url(boot_url.clone(), clients.clone(), 16, per, true).await.0);
        theirs.push(run_url(bare.static_url.clone(), clients.clone(), 16, per, true).await.0);
    }
    let (ours, theirs) = (median(ours), median(theirs));
    println!("\n| keep-alive, 16 connections (median of 3)                    | boots/s |");
    println!("|--------------------------------------------------------------|---------|");
    println!("| ipxe-edge serve (whole boot)                                 | {ours:>7.0} |");
    println!("| nginx, mTLS, a static file the size of the boot script       | {theirs:>7.0} |");
    println!("keep-alive: serve / nginx {:.2} (goal: at least 0.6)", ours / theirs);
}

/// A 64 MiB initrd through its presigned URL from `serve`'s embedded S3 endpoint, against nginx
/// serving the same file over HTTPS with the same server certificate: one stream, then eight
/// at once; MB/s of all streams together, best of 3.
async fn downloads_against_nginx(
    data: &std::path::Path,
    serve: &ServeProcess,
    ca: &[u8],
    identity: &[u8],
    files: &std::path::Path,
    digest: &str,
    bare: &BareMtls,
) {
    let initrd = files.join("initrd.img");
    let kernel = files.join("vmlinuz");
    std::fs::write(&kernel, b"KERNEL").unwrap();
    cli(data, &["release", "create", "bench-64m", "--kernel"], &[&kernel, std::path::Path::new("--initrd"), &initrd]);
    cli(data, &["channel", "promote", "stable", "bench-64m"], &[]);
    let mut presigned = None;
    for _ in 0..50 {
        let script = String::from_utf8(boot_script(serve, ca, identity).await).unwrap();
        presigned = script
            .split(|c: char| c.is_whitespace() || c == '"')
            .find(|word| word.starts_with("https://") && word.contains(digest))
            .map(str::to_string);
        if presigned.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let presigned = presigned.expect("the promoted release's initrd URL in the boot script");
    let ours_url = presigned.clone();
    let theirs_url = format!("{}/initrd.img", bare.files_url);
    let size = std::fs::metadata(&initrd).unwrap().len();
    println!("\n| 64 MiB initrd over HTTPS (best of 3)          | 1 stream (MB/s) | 8 streams (MB/s) |");
    println!("|-----------------------------------------------|-----------------|------------------|");
    let mut ratios = Vec::new();
    let mut rows = Vec::new();
    for (label, url) in [("ipxe-edge serve, presigned URL", &ours_url), ("nginx, the same file", &theirs_url)] {
        let mut rates = Vec::new();
        for streams in [1usize, 8] {
            let mut best: f64 = 0.0;
            for _ in 0..3 {
                let started = std::time::Instant::now();
                let tasks: Vec<_> = (0..streams)
                    .map(|_| {
                        let (client, url) = (https_client(ca, None), url.clone());
                        tokio::spawn(async move {
                            let mut response = client.get(&url).send().await.expect("download");
                            assert_eq!(response.status(), 200, "{url}");
                            let mut bytes = 0u64;
                            while let Some(chunk) = response.chunk().await.unwrap() {
                                bytes += chunk.len() as u64;
                            }
                            bytes
                        })
                    })
                    .collect();
                let mut total = 0;
                for task in tasks {
                    let bytes = task.await.unwrap();
                    assert_eq!(bytes, size, "whole file");
                    total += bytes;
                }
                best = best.max(total as f64 / started.elapsed().as_secs_f64() / 1e6);
            }
            rates.push(best);
        }
        println!("| {label:<45} | {:>15.0} | {:>16.0} |", rates[0], rates[1]);
        rows.push(rates);
    }
    for (i, streams) in [1, 8].into_iter().enumerate() {
        ratios.push(format!("{streams} stream{}: {:.2}", if streams == 1 { "" } else { "s" }, rows[0][i] / rows[1][i]));
    }
    println!("downloads, serve / nginx: {} (goal: at least 0.9)", ratios.join(", "));
}

/// CPU time (user + system, every thread) a process has used so far, from `/proc/<pid>/stat`.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): state is the 3rd field overall,
    // utime and stime the 14th and 15th.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: u64 = fields.get(11).and_then(|f| f.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    // SAFETY: sysconf only reads a system constant.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_micros(ticks * 1_000_000 / per_second)
}

/// Enrolls `n` gateways (the demo gateway first) and returns each one's certificate and key.
fn gateways(data: &std::path::Path, n: usize) -> Vec<Vec<u8>> {
    let mut all = vec![identity_of(data, "demo")];
    all.extend((1..n).map(|i| enroll(data, &format!("bench-gw-{i}"), ipxe_edge_pki::KeyType::Rsa2048)));
    all
}

/// Enrolls `n` ECDSA gateways (certificates from the deployment's ECDSA CA).
fn ecdsa_gateways(data: &std::path::Path, n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| enroll(data, &format!("bench-ecdsa-gw-{i}"), ipxe_edge_pki::KeyType::EcdsaP256)).collect()
}

/// Enrolls one gateway with secrets; its certificate and key.
fn enroll(data: &std::path::Path, name: &str, key: ipxe_edge_pki::KeyType) -> Vec<u8> {
    cli(data, &["gateway", "enroll", name, "--key", key.as_str()], &[]);
    std::fs::write(data.join(format!("s3/ipxe-edge/gateways/{}/secrets", fingerprint_of(data, name))), b"k=v\n")
        .unwrap();
    identity_of(data, name)
}

/// Runs one `ipxe-edge --data DATA` command (its words, then path arguments) and requires success.
fn cli(data: &std::path::Path, words: &[&str], paths: &[&std::path::Path]) {
    let status = std::process::Command::new(BIN)
        .arg("--data")
        .arg(data)
        .args(words)
        .args(paths)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "ipxe-edge {}", words.join(" "));
}

/// The boot script `serve` answers one gateway.
async fn boot_script(serve: &ServeProcess, ca: &[u8], identity: &[u8]) -> Vec<u8> {
    let response =
        https_client(ca, Some(identity)).get(format!("{}?buildarch=x86_64", serve.boot_url())).send().await.unwrap();
    response.bytes().await.unwrap().to_vec()
}

fn identity_of(data: &std::path::Path, name: &str) -> Vec<u8> {
    [
        std::fs::read(data.join(format!("pki/gateways/{name}.crt"))).unwrap(),
        std::fs::read(data.join(format!("pki/gateways/{name}.key"))).unwrap(),
    ]
    .concat()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn fingerprint_of(data: &std::path::Path, name: &str) -> String {
    let pem = std::fs::read(data.join(format!("pki/gateways/{name}.crt"))).unwrap();
    let der = ipxe_edge_core::domain::identity::pem_certificates(&pem).unwrap().remove(0);
    ipxe_edge_core::domain::identity::Fingerprint::of_der(&der).to_string()
}

/// Writes `n` more gateway records, each with a secrets object, straight into the embedded
/// bucket (what `gateway enroll` writes, without issuing `n` RSA keys).
fn enroll_many(data: &std::path::Path, n: usize) {
    use ipxe_edge_core::domain::identity::Fingerprint;
    let bucket = data.join("s3/ipxe-edge");
    for i in 0..n {
        let fp = Fingerprint::of_der(format!("bench-gateway-{i}").as_bytes());
        let record = ipxe_edge_core::domain::model::new_gateway(&format!("bench-{i}"), fp.clone());
        let dir = bucket.join(format!("gateways/{fp}"));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("gateway.json"), serde_json::to_vec(&record).unwrap()).unwrap();
        std::fs::write(dir.join("secrets"), b"k=v\n").unwrap();
    }
}

/// nginx with mutual TLS and a constant answer, on the server certificates of `serve` (RSA and
/// ECDSA: nginx, too, picks per handshake) and trusting both of the deployment's CAs.
/// Also, with mutual TLS, a static copy of a boot script (`static_url`), and over HTTPS without
/// a client certificate, as the embedded S3 endpoint serves presigned URLs, the files of
/// `files` (`files_url`).
struct BareMtls {
    child: std::process::Child,
    url: String,
    static_url: String,
    files_url: String,
}

impl BareMtls {
    fn start(data: &std::path::Path, script: &[u8], files: &std::path::Path) -> Option<Self> {
        let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"].into_iter().find(|p| std::path::Path::new(p).exists())?;
        let dir = data.with_extension("nginx");
        std::fs::create_dir_all(dir.join("logs")).unwrap();
        let pki = |name: &str| std::fs::read(data.join("pki").join(name)).unwrap();
        std::fs::write(dir.join("chain.pem"), [pki("server.crt"), pki("ca.crt")].concat()).unwrap();
        std::fs::write(dir.join("chain-ecdsa.pem"), [pki("server-ecdsa.crt"), pki("ca.crt")].concat()).unwrap();
        std::fs::write(dir.join("clients.pem"), [pki("ca.crt"), pki("ca-ecdsa.crt")].concat()).unwrap();
        std::fs::create_dir_all(dir.join("static")).unwrap();
        std::fs::write(dir.join("static/script.ipxe"), script).unwrap();
        let (port, files_port) = (free_port(), free_port());
        let conf = format!(
            "worker_processes 2; daemon off; pid {dir}/nginx.pid; error_log {dir}/logs/error.log;\n\
             events {{ worker_connections 1024; }}\n\
             http {{ access_log off; client_body_temp_path {dir}; proxy_temp_path {dir}; fastcgi_temp_path {dir}; uwsgi_temp_path {dir}; scgi_temp_path {dir};\n\
             server {{ listen 127.0.0.1:{port} ssl; ssl_certificate {dir}/chain.pem; ssl_certificate_key {key};\n\
             ssl_certificate {dir}/chain-ecdsa.pem; ssl_certificate_key {ecdsa_key};\n\
             ssl_client_certificate {dir}/clients.pem; ssl_verify_client on;\n\
             ssl_protocols TLSv1.2 TLSv1.3; keepalive_requests 100000;\n\
             location /static/ {{ root {dir}; }} location / {{ return 200 \"#!ipxe\\n\"; }} }}\n\
             server {{ listen 127.0.0.1:{files_port} ssl; ssl_certificate {dir}/chain.pem; ssl_certificate_key {key};\n\
             ssl_protocols TLSv1.2 TLSv1.3; location /files/ {{ alias {files}/; }} }} }}\n",
            files = files.display(),
            dir = dir.display(),
            key = data.join("pki/server.key").display(),
            ecdsa_key = data.join("pki/server-ecdsa.key").display(),
        );
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let child = std::process::Command::new(nginx)
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        for _ in 0..50 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(BareMtls {
                    child,
                    url: format!("https://127.0.0.1:{port}/boot.ipxe"),
                    static_url: format!("https://127.0.0.1:{port}/static/script.ipxe"),
                    files_url: format!("https://127.0.0.1:{files_port}/files"),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        None
    }
}

impl Drop for BareMtls {
    /// SIGTERM, so that the master stops its workers too (SIGKILL would orphan them).
    fn drop(&mut self) {
        // SAFETY: kill only sends a signal to our own child process.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let _ = self.child.wait();
    }
}
