//! `ipxe-edge serve` as a real process on loopback: mutual TLS, presigned downloads from the
//! embedded S3 endpoint, one-time secrets, restarts and bad input.

use ipxe_edge_core::domain::identity::Fingerprint;
use ipxe_edge_core::domain::model::new_gateway;
use ipxe_edge_core::storage::keys;
use ipxe_edge_pki::{issue_v1_client_with_openssl, validity_days, CertificateAuthority};
use ipxe_edge_tests::*;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_ipxe-edge");

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn demo_identity(data: &Path) -> Vec<u8> {
    let mut pem = read(&data.join("pki/gateways/demo.crt"));
    pem.extend(read(&data.join("pki/gateways/demo.key")));
    pem
}

fn demo_client(data: &Path) -> reqwest::Client {
    https_client(&read(&data.join("pki/ca.crt")), Some(&demo_identity(data)))
}

/// The word after `prefix` at the start of a script line.
fn url_after(script: &str, prefix: &str) -> String {
    let line = script.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no {prefix:?} in {script}"));
    line.split(' ').nth(1).unwrap().to_string()
}

fn secrets_url(script: &str) -> String {
    let start = script.find("b2c.extra_args_url=\"").expect("secrets URL") + "b2c.extra_args_url=\"".len();
    script[start..start + script[start..].find('"').unwrap()].to_string()
}

async fn boot(client: &reqwest::Client, url: &str) -> (u16, String) {
    let response = client.get(format!("{url}?buildarch=x86_64&platform=efi")).send().await.expect("boot request");
    (response.status().as_u16(), response.text().await.unwrap())
}

/// Downloads a content-addressed asset URL over HTTPS (the embedded S3 endpoint presents the
/// server certificate) and checks the bytes hash to the key's digest; the same URL over plain
/// HTTP gets nothing.
async fn check_asset(data: &Path, url: &str) {
    assert!(url.starts_with("https://"), "{url}");
    let client = https_client(&read(&data.join("pki/ca.crt")), None);
    let digest = url.split("/assets/sha256/").nth(1).unwrap().split('?').next().unwrap().to_string();
    assert!(
        reqwest::get(url.replacen("https://", "http://", 1)).await.map(|r| r.status() != 200).unwrap_or(true),
        "plain HTTP served an asset"
    );
    let response = client.get(url).send().await.unwrap();
    assert_eq!(response.status(), 200, "{url}");
    let bytes = response.bytes().await.unwrap();
    assert_eq!(sha256_hex(&bytes), digest);
    // Ranges (a resumed download) answer exactly their bytes.
    for (range, expected) in
        [("bytes=1-3", &bytes[1..4]), ("bytes=-2", &bytes[bytes.len() - 2..]), ("bytes=2-", &bytes[2..])]
    {
        let part = client.get(url).header("range", range).send().await.unwrap();
        assert_eq!(part.status(), 206, "{range}");
        assert_eq!(&part.bytes().await.unwrap()[..], expected, "{range}");
    }
    let mut tampered = url.to_string();
    tampered.push('0');
    let status = client.get(&tampered).send().await.unwrap().status().as_u16();
    assert!(status == 403 || status == 400, "tampered presigned URL answered {status}");
}

#[tokio::test]
async fn boots_redeems_once_and_survives_a_restart() {
    let data = temp_dir("serve");
    let serve = ServeProcess::start(BIN, &data, &[]).expect("serve starts");
    assert!(serve.stdout.contains("bootstrapped"), "{}", serve.stdout);
    assert!(serve.stdout.contains("curl --cert"), "{}", serve.stdout);
    for private in
        ["pki/ca.key", "pki/server.key", "pki/gateways/demo.key", "token-keys", "pki/ca.crt", "s3-credentials"]
    {
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(data.join(private)).unwrap().permissions())
                & 0o777;
        assert_eq!(mode, 0o600, "{private}");
    }
    let ca_before = read(&data.join("pki/ca.crt"));

    let client = demo_client(&data);
    let (status, script) = boot(&client, &serve.boot_url()).await;
    assert_eq!(status, 200, "{script}");
    assert!(script.starts_with("#!ipxe\n"));
    let kernel = url_after(&script, "kernel ");
    assert!(kernel.contains("X-Amz-Signature="));
    check_asset(&data, &kernel).await;
    check_asset(&data, &url_after(&script, "initrd ")).await;

    let secrets = secrets_url(&script);
    let secrets_client = https_client(&ca_before, None);
    let first = secrets_client.get(&secrets).send().await.unwrap();
    assert_eq!(first.status(), 200);
    assert!(first.text().await.unwrap().contains("b2c.minio="));
    assert_eq!(secrets_client.get(&secrets).send().await.unwrap().status(), 410);

    // A HEAD does not consume a fresh token.
    let (_, script2) = boot(&client, &serve.boot_url()).await;
    let secrets2 = secrets_url(&script2);
    assert_eq!(secrets_client.head(&secrets2).send().await.unwrap().status(), 405);

    let logs = serve.logs();
    assert!(logs.contains("\"security_event\":\"token_replay\""), "{logs}");
    assert!(!logs.contains(secrets.rsplit('/').next().unwrap()), "a token was logged");
    assert!(!logs.contains("X-Amz-Signature"), "a presigned URL was logged");
    assert!(serve.terminate().success(), "clean exit on SIGTERM");

    // Restart: same CA, same gateway, the used token stays used, the unused one still works.
    let serve = ServeProcess::start(BIN, &data, &[]).expect("serve restarts");
    assert!(serve.stdout.contains("reusing"), "{}", serve.stdout);
    assert_eq!(read(&data.join("pki/ca.crt")), ca_before);
    // Ports changed, so rewrite the secrets URLs to the new listener.
    let moved = |url: &str| {
        let path = &url[url.find("/secrets/").unwrap()..];
        format!("https://127.0.0.1:{}{path}", serve.secrets_port)
    };
    assert_eq!(secrets_client.get(moved(&secrets)).send().await.unwrap().status(), 410);
    assert_eq!(secrets_client.get(moved(&secrets2)).send().await.unwrap().status(), 200);
    let (status, _) = boot(&demo_client(&data), &serve.boot_url()).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn refuses_clients_without_or_with_foreign_certificates() {
    let data = temp_dir("serve-mtls");
    let serve = ServeProcess::start(BIN, &data, &[]).expect("serve starts");
    let ca = read(&data.join("pki/ca.crt"));

    let anonymous = https_client(&ca, None);
    // Either the handshake is refused or the request is.
    if let Ok(response) = anonymous.get(serve.boot_url()).send().await {
        assert_eq!(response.status(), 403)
    }

    let rogue_ca = CertificateAuthority::generate("ipxe-edge CA", 30).unwrap();
    let rogue = rogue_ca.issue_client("demo", validity_days(5)).unwrap();
    let identity = format!("{}{}", rogue.cert_pem, rogue.key_pem);
    let foreign = https_client(&ca, Some(identity.as_bytes()));
    if let Ok(response) = foreign.get(serve.boot_url()).send().await {
        panic!("foreign certificate got an HTTP answer: {}", response.status())
    }
    assert!(serve.logs().contains("tls_refused"));

    // The server still serves the demo gateway.
    assert_eq!(boot(&demo_client(&data), &serve.boot_url()).await.0, 200);
    // An unknown path is a 404, not a script.
    let response = demo_client(&data).get(format!("https://127.0.0.1:{}/nope", serve.boot_port)).send().await.unwrap();
    assert_eq!(response.status(), 404);
}

#[tokio::test]
async fn x509_v1_gateway_certificates_pass_mutual_tls() {
    let data = temp_dir("serve-v1");
    let serve = ServeProcess::start(BIN, &data, &[]).expect("serve starts");
    let ca = CertificateAuthority::from_pem(
        &String::from_utf8(read(&data.join("pki/ca.crt"))).unwrap(),
        &String::from_utf8(read(&data.join("pki/ca.key"))).unwrap(),
    )
    .unwrap();
    let legacy = issue_v1_client_with_openssl(&ca, "ci-gateway-legacy", 30).expect("openssl");
    let fp = Fingerprint::of_der(&legacy.cert_der);

    // rustls clients refuse to present a v1 certificate; curl (OpenSSL) does, like iPXE.
    let dir = temp_dir("v1-client");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("gw.crt"), &legacy.cert_pem).unwrap();
    std::fs::write(dir.join("gw.key"), &legacy.key_pem).unwrap();
    let curl = |url: &str| -> (u16, String) {
        let out = std::process::Command::new("curl")
            .args(["-sS", "--max-time", "20", "-w", "\n%{http_code}", "--cert"])
            .arg(dir.join("gw.crt"))
            .arg("--key")
            .arg(dir.join("gw.key"))
            .arg("--cacert")
            .arg(data.join("pki/ca.crt"))
            .arg(url)
            .output()
            .expect("curl runs");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    };

    // Not enrolled yet: TLS passes, the boot handler refuses and logs the fingerprint.
    assert_eq!(curl(&serve.boot_url()).0, 403);
    assert!(serve.logs().contains(fp.as_str()), "unknown fingerprint logged for enrollment");

    // Enroll it by writing its record into the embedded bucket, as the store sees it.
    let record = new_gateway("legacy", fp.clone());
    let path = data.join("s3/ipxe-edge").join(keys::gateway(&fp));
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, serde_json::to_vec(&record).unwrap()).unwrap();
    let (status, script) = curl(&format!("{}?buildarch=x86_64", serve.boot_url()));
    assert_eq!(status, 200, "{script}");
    assert!(script.starts_with("#!ipxe"), "{script}");
    assert!(!script.contains("extra_args_url"), "no secrets stored for this gateway: {script}");
}

#[tokio::test]
async fn many_concurrent_boots_complete() {
    let data = temp_dir("serve-load");
    let serve = ServeProcess::start(BIN, &data, &[]).expect("serve starts");
    let ca = read(&data.join("pki/ca.crt"));
    let identity = demo_identity(&data);
    let mut tasks = Vec::new();
    for _ in 0..50 {
        // One client per connection: 50 connections, 4 boots each.
        let client = https_client(&ca, Some(&identity));
        let url = serve.boot_url();
        tasks.push(tokio::spawn(async move {
            let mut statuses = Vec::new();
            for _ in 0..4 {
                statuses.push(boot(&client, &url).await.0);
            }
            statuses
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    assert_eq!(all.len(), 200);
    assert!(all.iter().all(|s| *s == 200), "{all:?}");
}

#[tokio::test]
async fn bad_input_gets_clear_errors_and_others_keep_being_served() {
    let data = temp_dir("serve-bad");
    let serve = ServeProcess::start(BIN, &data, &[]).expect("serve starts");

    // Occupied port: a second server on the same ports fails with a clear message.
    let second =
        ServeProcess::start_on(BIN, &temp_dir("serve-bad-2"), (serve.boot_port, free_port(), free_port()), &[]);
    let err = second.err().expect("second server must not start");
    assert!(err.contains("cannot listen on") && err.contains("boot"), "{err}");

    // A slow client that never sends a request does not block others.
    let mut idle = std::net::TcpStream::connect(("127.0.0.1", serve.boot_port)).unwrap();
    // Oversized headers are refused.
    let client = demo_client(&data);
    let response = client.get(serve.boot_url()).header("x-big", "a".repeat(64 * 1024)).send().await;
    // Either the server closes the connection or it answers 431/400.
    if let Ok(r) = response {
        assert!(r.status().as_u16() == 431 || r.status().as_u16() == 400, "{}", r.status())
    }
    assert_eq!(boot(&demo_client(&data), &serve.boot_url()).await.0, 200);
    // A boot query over 2 KiB is refused as such, on both listeners; 2 KiB still passes.
    let long = format!("{}?buildarch=x86_64&x={}", serve.boot_url(), "a".repeat(15 * 1024));
    let response = client.get(&long).send().await.unwrap();
    assert_eq!(response.status(), 414, "{:?}", response.text().await);
    let secrets_long = format!("https://127.0.0.1:{}/secrets/x?{}", serve.secrets_port, "a".repeat(4096));
    assert_eq!(
        https_client(&read(&data.join("pki/ca.crt")), None).get(&secrets_long).send().await.unwrap().status(),
        414
    );
    let fits = format!("{}?buildarch=x86_64&x={}", serve.boot_url(), "a".repeat(2000));
    assert_eq!(client.get(&fits).send().await.unwrap().status(), 200);
    // The idle connection is eventually closed by the server (handshake timeout).
    idle.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut buf = [0u8; 1];
    let n = idle.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "server closes idle connections");
    let _ = idle.write_all(b"x");
    drop(serve);

    // A private key readable by others: an operator command refuses it with a clear message;
    // `serve` makes the data directory private at start and goes on.
    let key = data.join("pki/ca.key");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let out = std::process::Command::new(BIN)
        .arg("--data")
        .arg(&data)
        .args(["gateway", "enroll", "loose-key"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("chmod 600"), "{}", String::from_utf8_lossy(&out.stderr));
    let serve = ServeProcess::start(BIN, &data, &[]).expect("serve fixes the mode and starts");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key).unwrap().permissions()) & 0o777;
    assert_eq!(mode, 0o600);
    assert!(serve.logs().contains("made files and folders of the data directory private"));
    drop(serve);

    // A corrupt certificate is named.
    std::fs::write(data.join("pki/ca.crt"), b"garbage").unwrap();
    let err = ServeProcess::start(BIN, &data, &[]).err().expect("must refuse a corrupt CA");
    assert!(err.contains("ca.crt"), "{err}");
}

/// Hostile `Host` and `X-Forwarded-*` values never reach the handlers: they get a normal answer
/// (no panic, no empty reply), routing follows the path alone, and every log line stays JSON.
#[tokio::test]
async fn hostile_host_headers_neither_crash_nor_route() {
    let data = temp_dir("serve-host");
    let serve = ServeProcess::start(BIN, &data, &[]).expect("serve starts");
    let secrets_url = format!("https://127.0.0.1:{}/secrets/not-a-token", serve.secrets_port);
    // The secrets listener needs no client certificate: anyone can send these.
    let anonymous = https_client(&read(&data.join("pki/ca.crt")), None);
    for (name, value) in
        [("host", "a b"), ("host", "127.0.0.1:99999"), ("host", "[::1"), ("x-forwarded-proto", "1http")]
    {
        let response = anonymous
            .get(&secrets_url)
            .header(name, value)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{name}: {value}: {e}"));
        assert_eq!(response.status().as_u16(), 400, "{name}: {value}");
        assert!(response.text().await.unwrap().contains("malformed token"), "{name}: {value}");
    }
    // Routing follows the path, whatever the Host says.
    let gateway = demo_client(&data);
    let url = format!("https://127.0.0.1:{}/definitely-not-boot", serve.boot_port);
    let response = gateway.get(&url).header("host", "localhost/boot.ipxe#").send().await.unwrap();
    assert_eq!(response.status().as_u16(), 404);
    let response =
        gateway.get(serve.boot_url()).header("host", "[::1").header("x-forwarded-proto", "1http").send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200, "a real boot with odd headers is still served");
    // A malformed request line is a 400 and a JSON log line.
    let mut raw = std::net::TcpStream::connect(("127.0.0.1", serve.secrets_port)).unwrap();
    drop(raw.write_all(b"\x16\x03\x01garbage that is no TLS hello\r\n\r\n"));
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = raw.read(&mut [0u8; 64]);
    let logs = serve.logs();
    for line in logs.lines().filter(|l| !l.trim().is_empty()) {
        assert!(serde_json::from_str::<serde_json::Value>(line).is_ok(), "log line is not JSON: {line}");
    }
    assert!(!logs.contains("panicked"), "{logs}");
}

/// Over plain HTTP (`--secrets-http`), a malformed request line gets hyper's 400 and one JSON
/// log line.
#[tokio::test]
async fn malformed_request_lines_get_400_and_a_log_line() {
    let data = temp_dir("serve-badline");
    let serve = ServeProcess::start(BIN, &data, &["--secrets-http"]).expect("serve starts");
    let mut raw = std::net::TcpStream::connect(("127.0.0.1", serve.secrets_port)).unwrap();
    raw.write_all(b"GET /secrets/x HTTP/1.1 extra words\r\nHost: a b\r\n\r\n").unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut reply = Vec::new();
    let _ = raw.read_to_end(&mut reply);
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 400"), "{reply}");
    // Hostile Host over plain HTTP too.
    let mut raw = std::net::TcpStream::connect(("127.0.0.1", serve.secrets_port)).unwrap();
    raw.write_all(b"GET /secrets/x HTTP/1.1\r\nHost: [::1\r\nX-Forwarded-Proto: 1http\r\nConnection: close\r\n\r\n")
        .unwrap();
    raw.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut reply = Vec::new();
    let _ = raw.read_to_end(&mut reply);
    assert!(String::from_utf8_lossy(&reply).starts_with("HTTP/1.1 400"), "{}", String::from_utf8_lossy(&reply));
    std::thread::sleep(Duration::from_millis(200));
    let logs = serve.logs();
    assert!(logs.lines().any(|l| l.contains("\"outcome\":\"bad_request\"")), "{logs}");
    for line in logs.lines().filter(|l| !l.trim().is_empty()) {
        assert!(serde_json::from_str::<serde_json::Value>(line).is_ok(), "log line is not JSON: {line}");
    }
}

/// A gateway whose certificate comes from an intermediate CA boots when it sends the
/// intermediate: the TLS verifier and the handler see the same chain.
#[tokio::test]
async fn gateways_sending_an_intermediate_boot() {
    let data = temp_dir("serve-chain");
    drop(ServeProcess::start(BIN, &data, &[]).expect("first start bootstraps"));
    let root = chain_root("farm root", None);
    let site_ca = chain_intermediate(&root, "farm site CA", true, validity_days(10));
    let leaf = chain_leaf(&site_ca, "gw-chain");
    let root_file = data.join("farm-root.pem");
    std::fs::write(&root_file, root.cert.pem()).unwrap();
    let chain_file = data.join("gw-chain.pem");
    std::fs::write(&chain_file, format!("{}{}", leaf.cert_pem, site_ca.cert.pem())).unwrap();
    for args in [
        vec!["ca", "trust", root_file.to_str().unwrap()],
        vec!["gateway", "import", "gw-chain", "--cert", chain_file.to_str().unwrap()],
    ] {
        let out = std::process::Command::new(BIN).arg("--data").arg(&data).args(&args).output().unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let serve = ServeProcess::start(BIN, &data, &[]).expect("serve starts");
    let ca = read(&data.join("pki/ca.crt"));
    let with_intermediate =
        https_client(&ca, Some(format!("{}{}{}", leaf.cert_pem, site_ca.cert.pem(), leaf.key_pem).as_bytes()));
    let (status, script) = boot(&with_intermediate, &serve.boot_url()).await;
    assert_eq!(status, 200, "{script}\n{}", serve.logs());
    assert!(script.starts_with("#!ipxe"));
    // Without the intermediate the chain does not verify: refused in the handshake.
    let leaf_only = https_client(&ca, Some(format!("{}{}", leaf.cert_pem, leaf.key_pem).as_bytes()));
    if let Ok(response) = leaf_only.get(serve.boot_url()).send().await {
        assert_eq!(response.status(), 403);
    }
}

/// IPv6 beside IPv4 (iPXE 2.0 enables IPv6 by default): each listener on both loopbacks, the
/// URLs handed out naming `::1`; a gateway boots, downloads and redeems over IPv6 only, and the
/// same listeners still answer over IPv4.
#[tokio::test]
async fn boots_and_redeems_over_ipv6() {
    let data = temp_dir("serve-ipv6");
    let mut attempts = 0;
    let (serve, ports) = loop {
        attempts += 1;
        let ports = (free_port(), free_port(), free_port());
        let (boot_v6, secrets_v6) = (format!("[::1]:{}", ports.0), format!("[::1]:{}", ports.1));
        // The S3 endpoint takes one address: `[::]` takes IPv4 connections too.
        let s3_any = format!("[::]:{}", ports.2);
        let extra =
            ["--listen", &boot_v6, "--secrets-listen", &secrets_v6, "--public-host", "::1", "--s3-listen", &s3_any];
        match ServeProcess::start_on(BIN, &data, ports, &extra) {
            Err(e) if port_taken(&e) && attempts < 5 => continue,
            started => break (started.expect("serve starts on both families"), ports),
        }
    };

    let client = demo_client(&data);
    let (status, script) = boot(&client, &format!("https://[::1]:{}/boot.ipxe", ports.0)).await;
    assert_eq!(status, 200, "{script}");
    let kernel = url_after(&script, "kernel ");
    assert!(kernel.starts_with(&format!("https://[::1]:{}/", ports.2)), "{kernel}");
    check_asset(&data, &kernel).await;
    let secrets = secrets_url(&script);
    assert!(secrets.starts_with(&format!("https://[::1]:{}/secrets/", ports.1)), "{secrets}");
    let secrets_client = https_client(&read(&data.join("pki/ca.crt")), None);
    assert_eq!(secrets_client.get(&secrets).send().await.unwrap().status(), 200);
    assert_eq!(secrets_client.get(&secrets).send().await.unwrap().status(), 410);

    let (status, _) = boot(&client, &serve.boot_url()).await;
    assert_eq!(status, 200, "the IPv4 listener still answers");
    assert!(serve.logs().contains("\"gateway\":\"demo\""));
}

/// What `openssl s_client` (TLS 1.2, the given OpenSSL cipher list, the demo gateway's
/// certificate) receives from `port`: the server's leaf certificate (PEM) if the handshake
/// completed.
fn leaf_for_ciphers(data: &Path, port: u16, ciphers: &str) -> Option<String> {
    let out = std::process::Command::new("openssl")
        .args(["s_client", "-tls1_2", "-cipher", ciphers, "-connect", &format!("127.0.0.1:{port}")])
        .arg("-cert")
        .arg(data.join("pki/gateways/demo.crt"))
        .arg("-key")
        .arg(data.join("pki/gateways/demo.key"))
        .arg("-CAfile")
        .arg(data.join("pki/ca.crt"))
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let start = text.find("-----BEGIN CERTIFICATE-----")?;
    let end = text[start..].find("-----END CERTIFICATE-----")? + start + "-----END CERTIFICATE-----".len();
    Some(format!("{}\n", &text[start..end]))
}

/// `serve` holds an RSA and an ECDSA certificate and picks per handshake: a client with
/// ECDHE-RSA suites only (iPXE 1.x) gets the RSA one, a client with ECDHE-ECDSA suites the
/// ECDSA one; a client sharing no suite (static RSA key exchange) gets an alert, and `serve`
/// one log line for it.
#[tokio::test]
async fn picks_the_server_certificate_per_handshake() {
    let data = temp_dir("serve-keys");
    let serve = ServeProcess::start(BIN, &data, &[]).expect("serve starts");
    let pem = |name: &str| String::from_utf8(read(&data.join("pki").join(name))).unwrap();
    assert_eq!(
        leaf_for_ciphers(&data, serve.boot_port, "ECDHE-RSA-AES128-GCM-SHA256").as_deref(),
        Some(&*pem("server.crt"))
    );
    assert_eq!(
        leaf_for_ciphers(&data, serve.boot_port, "ECDHE-ECDSA-AES128-GCM-SHA256").as_deref(),
        Some(&*pem("server-ecdsa.crt"))
    );
    let refused_before = serve.logs().matches("\"outcome\":\"tls_refused\"").count();
    assert_eq!(leaf_for_ciphers(&data, serve.boot_port, "AES128-GCM-SHA256:AES256-SHA"), None);
    let mut logs = serve.logs();
    for _ in 0..50 {
        if logs.matches("\"outcome\":\"tls_refused\"").count() > refused_before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        logs = serve.logs();
    }
    let refusals: Vec<&str> = logs.lines().filter(|l| l.contains("\"outcome\":\"tls_refused\"")).collect();
    assert_eq!(refusals.len(), refused_before + 1, "one line for the refused handshake: {logs}");
    assert!(refusals.last().unwrap().contains("TLS handshake failed"), "{logs}");
}

/// `--tls-cert` and `--tls-key` come in pairs: a count mismatch stops `serve` at start with a
/// message, before it listens.
#[test]
fn unpaired_tls_certificates_are_refused_at_start() {
    let data = temp_dir("serve-unpaired");
    let first = ServeProcess::start(BIN, &data, &[]).expect("serve starts");
    drop(first);
    let pki = data.join("pki");
    let (rsa, ecdsa, rsa_key) = (pki.join("server.crt"), pki.join("server-ecdsa.crt"), pki.join("server.key"));
    let args = [
        "--tls-cert",
        rsa.to_str().unwrap(),
        "--tls-cert",
        ecdsa.to_str().unwrap(),
        "--tls-key",
        rsa_key.to_str().unwrap(),
    ];
    let err = ServeProcess::start(BIN, &data, &args).err().expect("serve refuses to start");
    assert!(err.contains("give one --tls-key per --tls-cert"), "{err}");
}
