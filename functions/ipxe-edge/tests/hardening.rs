//! `ipxe-edge serve` under hostile traffic and on a shared machine: idle and slow-body floods
//! from one address while real clients are served, the request deadline, private files, and
//! the used-token ledger forgetting expired tokens while running.

use ipxe_edge_tests::*;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const BIN: &str = env!("CARGO_BIN_EXE_ipxe-edge");
/// The flooding address; real clients come from 127.0.0.1.
const FLOOD_SOURCE: &str = "127.0.0.2:0";
const FLOOD: usize = 1100;

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn demo_client(data: &Path) -> reqwest::Client {
    let mut identity = read(&data.join("pki/gateways/demo.crt"));
    identity.extend(read(&data.join("pki/gateways/demo.key")));
    https_client(&read(&data.join("pki/ca.crt")), Some(&identity))
}

async fn connect_from(source: &str, port: u16) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(source.parse::<SocketAddr>().unwrap())?;
    socket.connect(SocketAddr::from(([127, 0, 0, 1], port))).await
}

/// `FLOOD` idle connections from the flooding address (those the server closes at once count
/// too: the point is that they were tried).
async fn idle_flood(port: u16) -> Vec<TcpStream> {
    let mut held = Vec::new();
    for _ in 0..FLOOD {
        if let Ok(stream) = connect_from(FLOOD_SOURCE, port).await {
            held.push(stream);
        }
    }
    held
}

async fn boot(client: &reqwest::Client, serve: &ServeProcess) -> (u16, String) {
    let response = client.get(format!("{}?buildarch=x86_64", serve.boot_url())).send().await.expect("boot request");
    (response.status().as_u16(), response.text().await.unwrap())
}

fn secrets_url(script: &str) -> String {
    let start = script.find("b2c.extra_args_url=\"").expect("secrets URL") + "b2c.extra_args_url=\"".len();
    script[start..start + script[start..].find('"').unwrap()].to_string()
}

/// A TLS connector trusting only the CA certificates of `ca_pem`, without a client certificate.
fn tls_connector(ca_pem: &[u8]) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types_certs(ca_pem) {
        roots.add(cert).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

fn rustls_pki_types_certs(pem: &[u8]) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem).map(|c| c.unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn floods_from_one_address_do_not_lock_out_real_clients() {
    let data = temp_dir("flood");
    let serve = ServeProcess::start(BIN, &data, &[]).expect("serve starts");
    let client = demo_client(&data);
    let (status, script) = boot(&client, &serve).await;
    assert_eq!(status, 200, "{script}");
    let kernel_url =
        script.lines().find_map(|l| l.strip_prefix("kernel ")).unwrap().split(' ').next().unwrap().to_string();

    // 1,100 idle connections on each listener from one address.
    let started = Instant::now();
    let mut held = idle_flood(serve.boot_port).await;
    held.extend(idle_flood(serve.secrets_port).await);
    held.extend(idle_flood(serve.s3_port).await);
    let flood_time = started.elapsed();
    // Real clients are still served on every listener, on new connections.
    for _ in 0..3 {
        let (status, script) = boot(&demo_client(&data), &serve).await;
        assert_eq!(status, 200, "boot during an idle flood: {script}");
        let secrets = https_client(&read(&data.join("pki/ca.crt")), None);
        assert_eq!(
            secrets.get(secrets_url(&script)).send().await.unwrap().status(),
            200,
            "redeem during an idle flood"
        );
    }
    let assets = https_client(&read(&data.join("pki/ca.crt")), None);
    assert_eq!(assets.get(&kernel_url).send().await.unwrap().status(), 200, "download during an idle flood");

    // Slow bodies on the secrets listener: TLS, headers promising a body, no body.
    drop(held);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let connector = tls_connector(&read(&data.join("pki/ca.crt")));
    let mut slow = Vec::new();
    for _ in 0..100 {
        let Ok(tcp) = connect_from(FLOOD_SOURCE, serve.secrets_port).await else { continue };
        let Ok(Ok(mut tls)) =
            tokio::time::timeout(Duration::from_secs(2), connector.connect("localhost".try_into().unwrap(), tcp)).await
        else {
            continue;
        };
        if tls.write_all(b"POST /checkin/x HTTP/1.1\r\nhost: localhost\r\ncontent-length: 100\r\n\r\nab").await.is_ok()
        {
            slow.push(tls);
        }
    }
    let (status, script) = boot(&demo_client(&data), &serve).await;
    assert_eq!(status, 200, "boot during a slow-body flood");
    let secrets = https_client(&read(&data.join("pki/ca.crt")), None);
    assert_eq!(
        secrets.get(secrets_url(&script)).send().await.unwrap().status(),
        200,
        "redeem during a slow-body flood"
    );
    // Only the per-address share got through the handshake, and each is ended by the deadline.
    assert!(!slow.is_empty() && slow.len() <= 64, "{} slow connections got a handshake", slow.len());
    let waited = Instant::now();
    let mut answer = String::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), slow[0].read_to_string(&mut answer)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(waited.elapsed() < Duration::from_secs(11), "deadline took {:?}", waited.elapsed());

    let logs = serve.logs();
    let refused_lines = logs.lines().filter(|l| l.contains("\"outcome\":\"connection_refused\"")).count();
    assert!(refused_lines >= 1, "refusals are logged");
    let bound = flood_time.as_secs() as usize * 3 + 6;
    assert!(
        refused_lines <= bound,
        "{refused_lines} refusal lines in {flood_time:?} (at most one per second per listener)"
    );
    assert!(logs.contains("\"not_logged_since_last\""), "{logs}");
    assert!(logs.contains("\"outcome\":\"request_timeout\""), "the 408 is logged");
    println!(
        "idle flood: {} connections from one address in {flood_time:?}; {refused_lines} refusal log lines",
        FLOOD * 3
    );
}

fn modes_under(root: &Path) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(path) = pending.pop() {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        out.push((path.display().to_string(), meta.permissions().mode() & 0o777));
        if meta.is_dir() {
            pending.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        }
    }
    out
}

#[tokio::test]
async fn everything_under_the_data_dir_is_private_and_old_installs_are_fixed() {
    let data = temp_dir("modes");
    let serve = ServeProcess::start(BIN, &data, &[]).expect("serve starts");
    let (status, script) = boot(&demo_client(&data), &serve).await;
    assert_eq!(status, 200);
    let secrets = https_client(&read(&data.join("pki/ca.crt")), None);
    assert_eq!(secrets.get(secrets_url(&script)).send().await.unwrap().status(), 200);
    assert!(serve.terminate().success());
    let loose: Vec<_> = modes_under(&data).into_iter().filter(|(_, mode)| mode & 0o077 != 0).collect();
    assert!(loose.is_empty(), "readable by others after a fresh start and a boot: {loose:?}");

    // An install from before: folders 0755, files 0644 (keys excepted: they were 0600).
    for (path, _) in modes_under(&data) {
        let path = Path::new(&path);
        let is_key = path.extension().is_some_and(|e| e == "key") || path.ends_with("token-keys");
        let mode = if path.is_dir() {
            0o755
        } else if is_key {
            0o600
        } else {
            0o644
        };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let serve = ServeProcess::start(BIN, &data, &[]).expect("serve restarts");
    let loose: Vec<_> = modes_under(&data).into_iter().filter(|(_, mode)| mode & 0o077 != 0).collect();
    assert!(loose.is_empty(), "{loose:?}");
    let logs = serve.logs();
    assert_eq!(
        logs.lines().filter(|l| l.contains("made files and folders of the data directory private")).count(),
        1,
        "{logs}"
    );
}

#[tokio::test]
async fn the_ledger_forgets_expired_tokens_while_running() {
    let data = temp_dir("sweep");
    let serve =
        ServeProcess::start(BIN, &data, &["--token-ttl", "10", "--ledger-sweep-interval", "1"]).expect("serve starts");
    let (_, script) = boot(&demo_client(&data), &serve).await;
    let url = secrets_url(&script);
    let secrets = https_client(&read(&data.join("pki/ca.crt")), None);
    assert_eq!(secrets.get(&url).send().await.unwrap().status(), 200);
    let entries = || std::fs::read_dir(data.join("ledger")).unwrap().count();
    assert_eq!(entries(), 1);
    assert_eq!(secrets.get(&url).send().await.unwrap().status(), 410, "replay while remembered");
    let deadline = Instant::now() + Duration::from_secs(20);
    while entries() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(entries(), 0, "the expired entry was swept while running");
    assert_eq!(secrets.get(&url).send().await.unwrap().status(), 410, "still refused: expired");
}

/// The certificate a TLS server presents to a client that trusts `ca_pem`.
async fn presented_leaf(ca_pem: &[u8], port: u16) -> Vec<u8> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let tls = tls_connector(ca_pem).connect("127.0.0.1".try_into().unwrap(), tcp).await.expect("handshake");
    tls.get_ref().1.peer_certificates().unwrap()[0].as_ref().to_vec()
}

fn write_replacing(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn tls_cert_and_key_files_are_reloaded_without_a_restart() {
    let data = temp_dir("reload");
    let ca = ipxe_edge_pki::CertificateAuthority::generate("Reload test CA", 30).unwrap();
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let first = ca.issue_server(&names, 30).unwrap();
    let second = ca.issue_server(&names, 30).unwrap();
    let (cert, key) = (data.with_extension("fullchain.pem"), data.with_extension("privkey.pem"));
    write_replacing(&cert, first.cert_pem.as_bytes());
    write_replacing(&key, first.key_pem.as_bytes());
    let serve = ServeProcess::start(
        BIN,
        &data,
        &["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap(), "--tls-reload-interval", "1"],
    )
    .expect("serve starts");
    let ca_pem = ca.cert_pem().into_bytes();
    for port in [serve.secrets_port, serve.s3_port] {
        assert_eq!(presented_leaf(&ca_pem, port).await, first.cert_der, "port {port} presents --tls-cert");
    }
    // The boot listener presents it too (this client trusts nothing else), and gateways still
    // need their client certificate there.
    let mut identity = read(&data.join("pki/gateways/demo.crt"));
    identity.extend(read(&data.join("pki/gateways/demo.key")));
    let gateway = https_client(&ca_pem, Some(&identity));
    assert_eq!(gateway.get(format!("{}?buildarch=x86_64", serve.boot_url())).send().await.unwrap().status(), 200);
    assert!(
        https_client(&ca_pem, None).get(serve.boot_url()).send().await.is_err(),
        "no client certificate, no handshake"
    );

    // Renewal: new files, same paths; new connections get the new certificate.
    write_replacing(&key, second.key_pem.as_bytes());
    write_replacing(&cert, second.cert_pem.as_bytes());
    let deadline = Instant::now() + Duration::from_secs(10);
    while presented_leaf(&ca_pem, serve.secrets_port).await != second.cert_der && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(presented_leaf(&ca_pem, serve.secrets_port).await, second.cert_der, "reloaded without a restart");
    assert_eq!(presented_leaf(&ca_pem, serve.s3_port).await, second.cert_der);

    // A broken pair (a key that does not match) is refused; the current one stays.
    write_replacing(&key, first.key_pem.as_bytes());
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(presented_leaf(&ca_pem, serve.secrets_port).await, second.cert_der);
    let logs = serve.logs();
    assert!(logs.contains("server certificate reloaded"), "{logs}");
    assert!(logs.contains("new server certificate refused"), "{logs}");
}

#[tokio::test]
async fn metrics_and_health_endpoints() {
    let data = temp_dir("metrics");
    let metrics_port = free_port();
    let serve = ServeProcess::start(BIN, &data, &["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
        .expect("serve starts");
    let (status, script) = boot(&demo_client(&data), &serve).await;
    assert_eq!(status, 200);
    let secrets = https_client(&read(&data.join("pki/ca.crt")), None);
    assert_eq!(secrets.get(secrets_url(&script)).send().await.unwrap().status(), 200);
    assert_eq!(secrets.get(secrets_url(&script)).send().await.unwrap().status(), 410);
    // A client without a certificate is refused in the handshake.
    assert!(secrets.get(serve.boot_url()).send().await.is_err());

    let plain = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{metrics_port}");
    let text = plain.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    for line in [
        "ipxe_edge_boots_total{outcome=\"ok\"} 1",
        "ipxe_edge_redemptions_total{outcome=\"ok\"} 1",
        "ipxe_edge_redemptions_total{outcome=\"gone\"} 1",
        "ipxe_edge_token_replays_total 1",
        "ipxe_edge_tls_refused_total{listener=\"boot\"} 1",
        "ipxe_edge_request_duration_seconds_count{route=\"boot\"} 1",
        "ipxe_edge_request_duration_seconds_count{route=\"redeem\"} 2",
        "ipxe_edge_open_connections{listener=\"metrics\"} 1",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    assert!(text.contains("ipxe_edge_open_connections{listener=\"boot\"}"));
    let health = plain.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().await.unwrap(), "ok\n");

    // Without its trust bundle the store is not healthy.
    std::fs::rename(data.join("s3/ipxe-edge/pki/truststore.pem"), data.join("truststore.pem.aside")).unwrap();
    let health = plain.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 503);
    assert!(health.text().await.unwrap().contains("trust bundle"));
}

/// What one attacking connection does, again each time the server ends it.
#[derive(Clone, Copy, Debug)]
enum Attack {
    /// Connects and says nothing.
    Idle,
    /// Sends the first bytes of a TLS ClientHello and stops: holds a handshake permit (on the
    /// S3 listener, a slot) until the handshake deadline.
    PartialHello,
    /// Completes TLS, sends headers promising a body and two bytes of it.
    SlowBody,
    /// Completes TLS, sends half a request line.
    SlowHeaders,
}

struct Attacker {
    stop: Arc<std::sync::atomic::AtomicBool>,
    /// Connections that completed their TLS handshake.
    handshakes: Arc<std::sync::atomic::AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Attacker {
    fn new() -> Self {
        Attacker { stop: Arc::default(), handshakes: Arc::default(), tasks: Vec::new() }
    }

    fn launch(
        &mut self,
        source: std::net::IpAddr,
        port: u16,
        attack: Attack,
        count: usize,
        tls: Option<tokio_rustls::TlsConnector>,
    ) {
        use std::sync::atomic::Ordering;
        for _ in 0..count {
            let (stop, handshakes, tls) = (self.stop.clone(), self.handshakes.clone(), tls.clone());
            self.tasks.push(tokio::spawn(async move {
                let source = format!("{source}:0");
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut tcp) = connect_from(&source, port).await else {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    };
                    let mut sink = Vec::new();
                    match (attack, &tls) {
                        (Attack::Idle, _) | (_, None) => {
                            let _ = tokio::time::timeout(Duration::from_secs(60), tcp.read_to_end(&mut sink)).await;
                        }
                        (Attack::PartialHello, _) => {
                            let _ = tcp.write_all(b"\x16\x03\x01\x02\x00\x01").await;
                            let _ = tokio::time::timeout(Duration::from_secs(60), tcp.read_to_end(&mut sink)).await;
                        }
                        (Attack::SlowBody | Attack::SlowHeaders, Some(tls)) => {
                            let Ok(Ok(mut stream)) = tokio::time::timeout(
                                Duration::from_secs(20),
                                tls.connect("localhost".try_into().unwrap(), tcp),
                            )
                            .await
                            else {
                                continue;
                            };
                            handshakes.fetch_add(1, Ordering::Relaxed);
                            let request: &[u8] = match attack {
                                Attack::SlowBody => {
                                    b"POST /checkin/x HTTP/1.1\r\nhost: localhost\r\ncontent-length: 100\r\n\r\nab"
                                }
                                _ => b"GET /ipxe-edge/x HTTP/1.1\r\nhost: loc",
                            };
                            let _ = stream.write_all(request).await;
                            let _ = tokio::time::timeout(Duration::from_secs(60), stream.read_to_end(&mut sink)).await;
                        }
                    }
                }
            }));
        }
    }

    fn stop(self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for task in self.tasks {
            task.abort();
        }
    }
}

/// A TLS connector presenting `identity_pem` (certificate then key).
fn tls_connector_with(ca_pem: &[u8], identity_pem: &[u8]) -> tokio_rustls::TlsConnector {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_types_certs(ca_pem) {
        roots.add(cert).unwrap();
    }
    let chain = rustls_pki_types_certs(identity_pem);
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(identity_pem).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// The bound a real client's request must meet while sixteen addresses attack: under the
/// handshake deadline, where before a redemption waited more than 15 s.
const UNDER_ATTACK_BOUND: Duration = Duration::from_secs(8);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn floods_from_sixteen_addresses_do_not_lock_out_real_clients() {
    let data = temp_dir("flood16");
    let serve = ServeProcess::start(BIN, &data, &[]).expect("serve starts");
    let ca = read(&data.join("pki/ca.crt"));
    let mut identity = read(&data.join("pki/gateways/demo.crt"));
    identity.extend(read(&data.join("pki/gateways/demo.key")));
    let (anonymous, gateway) = (tls_connector(&ca), tls_connector_with(&ca, &identity));

    // Each of 127.0.0.2-17 holds, continuously, on every listener: idle sockets, stalled
    // handshakes, and slow bodies or headers (on the boot listener with the gateway's own
    // certificate): 100 connections per address, 1,600 in all.
    let mut attacker = Attacker::new();
    for last in 2..=17u8 {
        let source = std::net::IpAddr::from([127, 0, 0, last]);
        for port in [serve.boot_port, serve.secrets_port, serve.s3_port] {
            attacker.launch(source, port, Attack::Idle, 16, None);
            attacker.launch(source, port, Attack::PartialHello, 3, Some(anonymous.clone()));
        }
        attacker.launch(source, serve.boot_port, Attack::SlowBody, 8, Some(gateway.clone()));
        attacker.launch(source, serve.secrets_port, Attack::SlowBody, 16, Some(anonymous.clone()));
        attacker.launch(source, serve.s3_port, Attack::SlowHeaders, 16, Some(anonymous.clone()));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;

    // 127.0.0.1 boots, redeems and downloads, on new connections each time.
    let mut timings = Vec::new();
    for round in 0..5 {
        let started = Instant::now();
        let (status, script) = boot(&demo_client(&data), &serve).await;
        let booted = started.elapsed();
        assert_eq!(status, 200, "round {round}: {script}");
        let started = Instant::now();
        let secrets = https_client(&ca, None).get(secrets_url(&script)).send().await.expect("redeem under attack");
        assert_eq!(secrets.status(), 200, "round {round}");
        let redeemed = started.elapsed();
        let kernel_url =
            script.lines().find_map(|l| l.strip_prefix("kernel ")).unwrap().split(' ').next().unwrap().to_string();
        let started = Instant::now();
        let download = https_client(&ca, None).get(&kernel_url).send().await.expect("download under attack");
        assert_eq!(download.status(), 200, "round {round}");
        assert!(!download.bytes().await.unwrap().is_empty());
        let downloaded = started.elapsed();
        for (what, took) in [("boot", booted), ("redeem", redeemed), ("download", downloaded)] {
            assert!(took < UNDER_ATTACK_BOUND, "round {round}: {what} took {took:?} under attack");
        }
        timings.push((booted, redeemed, downloaded));
    }
    // The attack was real: its slow bodies reached the handlers and were ended by their
    // deadline, from many of its addresses.
    let timed_out = |logs: &str| -> std::collections::BTreeSet<String> {
        logs.lines()
            .filter(|l| l.contains("\"outcome\":\"request_timeout\""))
            .filter_map(|l| Some(l.split("\"peer\":\"127.0.0.").nth(1)?.split(':').next()?.to_string()))
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    let reached = || attacker.handshakes.load(std::sync::atomic::Ordering::Relaxed);
    while (timed_out(&serve.logs()).len() < 8 || reached() <= 64) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let handshakes = attacker.handshakes.load(std::sync::atomic::Ordering::Relaxed);
    attacker.stop();
    // More slow bodies than a listener handles requests at once: had they held handler
    // slots, the rounds above would have waited for their deadline.
    assert!(handshakes > 64, "the attack reached the handlers ({handshakes} attacking handshakes)");
    let attacked = timed_out(&serve.logs());
    assert!(attacked.len() >= 8, "slow bodies from many addresses were ended by their deadline: {attacked:?}");
    println!("under attack from 16 addresses ({handshakes} attacking handshakes):");
    println!("{:>6} {:>10} {:>10} {:>10}", "round", "boot", "redeem", "download");
    for (round, (b, r, d)) in timings.iter().enumerate() {
        println!(
            "{round:>6} {:>8.0}ms {:>8.0}ms {:>8.0}ms",
            b.as_secs_f64() * 1e3,
            r.as_secs_f64() * 1e3,
            d.as_secs_f64() * 1e3
        );
    }
}

#[tokio::test]
async fn healthz_is_degraded_while_a_listener_refuses_at_its_cap_and_gauges_are_right_at_once() {
    let data = temp_dir("degraded");
    let metrics_port = free_port();
    let serve = ServeProcess::start(
        BIN,
        &data,
        &["--metrics-listen", &format!("127.0.0.1:{metrics_port}"), "--max-connections", "8"],
    )
    .expect("serve starts");
    let plain = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{metrics_port}");
    // The first scrape already knows the gateway certificates (the demo's runs for years).
    let text = plain.get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    let days: i64 = text
        .lines()
        .find_map(|l| l.strip_prefix("ipxe_edge_gateway_certificate_min_days_left "))
        .unwrap_or_else(|| panic!("no min_days_left gauge:\n{text}"))
        .trim()
        .parse()
        .unwrap();
    assert!(days > 30, "min_days_left at the first scrape: {days}");
    assert_eq!(plain.get(format!("{base}/healthz")).send().await.unwrap().status(), 200);

    // Two addresses fill the boot listener's eight connections; the ninth is refused.
    let mut held = Vec::new();
    for source in ["127.0.0.2:0", "127.0.0.3:0"] {
        for _ in 0..4 {
            held.push(connect_from(source, serve.boot_port).await.unwrap());
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut refused = connect_from("127.0.0.4:0", serve.boot_port).await.unwrap();
    let mut buf = [0u8; 1];
    // Closed at once when refused; the held ones stay open until their 10 s handshake deadline,
    // so waiting up to 8 s tells a refusal from a slot that was free (a loaded machine may
    // take seconds to schedule `serve`), and the log says which it was.
    let closed = tokio::time::timeout(Duration::from_secs(8), refused.read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "the connection over the cap is closed: {closed:?}");
    assert!(
        serve
            .logs()
            .lines()
            .any(|l| l.contains("\"peer\":\"127.0.0.4:") && l.contains("\"reason\":\"too many connections\"")),
        "the refusal is logged: {}",
        serve.logs()
    );
    let health = plain.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 503);
    let text = health.text().await.unwrap();
    assert!(text.contains("boot listener degraded"), "{text}");
    assert!(!text.contains("secrets listener"), "only the listener at its cap: {text}");

    // Once it stops refusing, the report clears within its window.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(30);
    while plain.get(format!("{base}/healthz")).send().await.unwrap().status() != 200 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(plain.get(format!("{base}/healthz")).send().await.unwrap().status(), 200, "healthy again");
}
