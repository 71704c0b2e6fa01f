//! `serve --acme-domain` against pebble, the ACME test CA, validating for real: pebble resolves
//! the domain through pebble-challtestsrv's DNS to 127.0.0.1 and connects to the boot listener
//! with TLS-ALPN-01. Then: the certificate chains to pebble's root for that name on every
//! listener, gateways still need their client certificate, the certificate survives a restart
//! without the CA, and it is renewed while running.

use ipxe_edge_tests::*;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BIN: &str = env!("CARGO_BIN_EXE_ipxe-edge");
const DOMAIN: &str = "boot.ipxe-edge.test";

/// pebble and its DNS, killed when dropped.
struct Pebble {
    children: Vec<Child>,
    directory: String,
    management: String,
    /// CA of pebble's own HTTPS (the directory and the management interface).
    https_ca: PathBuf,
}

impl Drop for Pebble {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn tools_present() -> bool {
    let found = ["pebble", "pebble-challtestsrv"].iter().all(|t| {
        Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if !found {
        assert!(
            std::env::var_os("IPXE_EDGE_REQUIRE_TEST_SERVERS").is_none(),
            "pebble is required (apt-get install pebble)"
        );
        eprintln!("skipping: pebble is not installed (apt-get install pebble)");
    }
    found
}

/// Starts pebble validating TLS-ALPN-01 against `tls_port` on 127.0.0.1.
async fn start_pebble(work: &Path, tls_port: u16) -> Pebble {
    std::fs::create_dir_all(work).unwrap();
    let ca = ipxe_edge_pki::CertificateAuthority::generate("pebble HTTPS test CA", 2).unwrap();
    let server = ca.issue_server(&["127.0.0.1".into(), "localhost".into()], 2).unwrap();
    let (https_ca, cert, key) = (work.join("pebble-https-ca.pem"), work.join("pebble.crt"), work.join("pebble.key"));
    std::fs::write(&https_ca, ca.cert_pem()).unwrap();
    std::fs::write(&cert, &server.cert_pem).unwrap();
    std::fs::write(&key, &server.key_pem).unwrap();
    let (listen, management, dns, dns_management, http01) =
        (free_port(), free_port(), free_port(), free_port(), free_port());
    let config = serde_json::json!({"pebble": {
        "listenAddress": format!("127.0.0.1:{listen}"),
        "managementListenAddress": format!("127.0.0.1:{management}"),
        "certificate": cert, "privateKey": key,
        "httpPort": http01, "tlsPort": tls_port,
        "ocspResponderURL": "", "externalAccountBindingRequired": false,
    }});
    let config_path = work.join("pebble-config.json");
    std::fs::write(&config_path, config.to_string()).unwrap();
    let log = |name: &str| std::fs::File::create(work.join(name)).unwrap();
    let dns_server = Command::new("pebble-challtestsrv")
        .args(["-management", &format!("127.0.0.1:{dns_management}"), "-dns01", &format!("127.0.0.1:{dns}")])
        .args(["-http01", "", "-https01", "", "-tlsalpn01", "", "-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
        .stdout(log("challtestsrv.log"))
        .stderr(log("challtestsrv.err"))
        .spawn()
        .expect("pebble-challtestsrv");
    let pebble = Command::new("pebble")
        .args(["-config", config_path.to_str().unwrap(), "-dnsserver", &format!("127.0.0.1:{dns}")])
        .env("PEBBLE_VA_NOSLEEP", "1")
        .env("PEBBLE_WFE_NONCEREJECT", "0")
        .env("PEBBLE_AUTHZREUSE", "0")
        .stdout(log("pebble.log"))
        .stderr(log("pebble.err"))
        .spawn()
        .expect("pebble");
    let pebble = Pebble {
        children: vec![pebble, dns_server],
        directory: format!("https://127.0.0.1:{listen}/dir"),
        management: format!("https://127.0.0.1:{management}"),
        https_ca,
    };
    let client = https_client(&std::fs::read(&pebble.https_ca).unwrap(), None);
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.get(&pebble.directory).send().await.is_err() {
        assert!(
            Instant::now() < deadline,
            "pebble did not start: {}",
            std::fs::read_to_string(work.join("pebble.log")).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    pebble
}

impl Pebble {
    /// The root pebble signs with (made at its start).
    async fn root_pem(&self) -> Vec<u8> {
        let client = https_client(&std::fs::read(&self.https_ca).unwrap(), None);
        client.get(format!("{}/roots/0", self.management)).send().await.unwrap().bytes().await.unwrap().to_vec()
    }
}

fn roots(pem: &[u8]) -> rustls::RootCertStore {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    roots
}

fn client_config(root_pem: &[u8], alpn: &[u8], identity: Option<(&Path, &Path)>) -> Arc<rustls::ClientConfig> {
    client_config_with(rustls::crypto::aws_lc_rs::default_provider(), root_pem, alpn, identity)
}

/// A client that can verify RSA signatures only, like iPXE before 2.0.
fn rsa_only_client(root_pem: &[u8]) -> Arc<rustls::ClientConfig> {
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    let algorithms = provider.signature_verification_algorithms;
    let mapping: Vec<_> =
        algorithms.mapping.iter().filter(|(scheme, _)| format!("{scheme:?}").starts_with("RSA")).cloned().collect();
    provider.signature_verification_algorithms = rustls::crypto::WebPkiSupportedAlgorithms {
        all: algorithms.all,
        mapping: Box::leak(mapping.into_boxed_slice()),
    };
    client_config_with(provider, root_pem, b"http/1.1", None)
}

fn client_config_with(
    provider: rustls::crypto::CryptoProvider,
    root_pem: &[u8],
    alpn: &[u8],
    identity: Option<(&Path, &Path)>,
) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots(root_pem));
    let mut config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                rustls::pki_types::CertificateDer::pem_file_iter(cert).unwrap().map(|c| c.unwrap()).collect(),
                rustls::pki_types::PrivateKeyDer::from_pem_file(key).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(config)
}

/// The leaf presented on `port` to a client that verifies it against pebble's root as `DOMAIN`;
/// `None` while that fails (e.g. the self-made certificate is still presented).
async fn verified_leaf(root_pem: &[u8], port: u16) -> Option<Vec<u8>> {
    verified_leaf_with(client_config(root_pem, b"http/1.1", None), port).await
}

async fn verified_leaf_with(config: Arc<rustls::ClientConfig>, port: u16) -> Option<Vec<u8>> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
    let connector = tokio_rustls::TlsConnector::from(config);
    let tls = connector.connect(DOMAIN.try_into().unwrap(), tcp).await.ok()?;
    Some(tls.get_ref().1.peer_certificates()?[0].as_ref().to_vec())
}

async fn wait_for_leaf(root_pem: &[u8], port: u16, unlike: Option<&[u8]>) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(leaf) = verified_leaf(root_pem, port).await {
            if unlike != Some(leaf.as_slice()) {
                return leaf;
            }
        }
        assert!(Instant::now() < deadline, "no (new) certificate from pebble on port {port}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// An HTTP/1.1 GET over a TLS connection verified against pebble's root as `DOMAIN`.
async fn get(root_pem: &[u8], port: u16, path: &str, identity: Option<(&Path, &Path)>) -> std::io::Result<String> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    let connector = tokio_rustls::TlsConnector::from(client_config(root_pem, b"http/1.1", identity));
    let mut tls = connector.connect(DOMAIN.try_into().unwrap(), tcp).await?;
    tls.write_all(format!("GET {path} HTTP/1.1\r\nHost: {DOMAIN}\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut response = String::new();
    tls.read_to_string(&mut response).await?;
    Ok(response)
}

fn acme_args<'a>(pebble: &'a Pebble, extra: &[&'a str]) -> Vec<String> {
    let mut args = vec![
        "--acme-domain".to_string(),
        DOMAIN.into(),
        "--acme-email".into(),
        "ops@ipxe-edge.test".into(),
        "--acme-directory".into(),
        pebble.directory.clone(),
        "--acme-directory-ca".into(),
        pebble.https_ca.to_str().unwrap().into(),
        "--public-host".into(),
        "127.0.0.1".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// A data dir, pebble validating against its boot port, and `serve` asking pebble for its
/// certificate; `None` when pebble is not installed (outside the full suite).
struct Setup {
    data: PathBuf,
    work: PathBuf,
    pebble: Pebble,
    serve: ServeProcess,
    args: Vec<String>,
}

async fn setup(name: &str, extra: &[&str]) -> Option<Setup> {
    if !tools_present() {
        return None;
    }
    let data = temp_dir(name);
    let work = data.with_extension("pebble");
    let ports = (free_port(), free_port(), free_port());
    let pebble = start_pebble(&work, ports.0).await;
    let args = acme_args(&pebble, extra);
    let serve = ServeProcess::start_on(BIN, &data, ports, &args.iter().map(String::as_str).collect::<Vec<_>>())
        .expect("serve starts");
    Some(Setup { data, work, pebble, serve, args })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_from_an_acme_ca_validated_over_tls_alpn() {
    let Some(Setup { data, work, pebble, serve, args }) = setup("acme", &[]).await else { return };
    let args: Vec<&str> = args.iter().map(String::as_str).collect();

    let root = pebble.root_pem().await;
    let leaf = wait_for_leaf(&root, serve.secrets_port, None).await;
    assert_eq!(
        verified_leaf(&root, serve.boot_port).await.as_deref(),
        Some(leaf.as_slice()),
        "the boot listener presents it too"
    );
    let logs = serve.logs();
    assert!(logs.contains("server certificate obtained over ACME"), "{logs}");
    assert!(logs.contains("\"outcome\":\"acme_validation\""), "pebble validated against the boot listener: {logs}");
    let pebble_log = std::fs::read_to_string(work.join("pebble.log")).unwrap();
    assert!(pebble_log.contains("set VALID by completed challenge"), "{pebble_log}");

    // Two certificates, for the domain, issued by pebble: ECDSA for a client that speaks it,
    // RSA for one that does not (iPXE before 2.0).
    let (_, parsed) = x509_parser::parse_x509_certificate(&leaf).unwrap();
    assert_eq!(parsed.public_key().algorithm.algorithm.to_id_string(), "1.2.840.10045.2.1", "ECDSA key");
    assert!(parsed.issuer().to_string().contains("Pebble"), "{}", parsed.issuer());
    let rsa_leaf =
        verified_leaf_with(rsa_only_client(&root), serve.boot_port).await.expect("an RSA-only client verifies");
    let (_, parsed) = x509_parser::parse_x509_certificate(&rsa_leaf).unwrap();
    assert_eq!(parsed.public_key().algorithm.algorithm.to_id_string(), "1.2.840.113549.1.1.1", "RSA key");
    assert!(parsed.issuer().to_string().contains("Pebble"), "{}", parsed.issuer());

    // A gateway boots through it; without a client certificate the boot listener closes the
    // connection after the handshake, and the secrets listener answers anyone.
    let (cert, key) = (data.join("pki/gateways/demo.crt"), data.join("pki/gateways/demo.key"));
    let script =
        get(&root, serve.boot_port, "/boot.ipxe?buildarch=x86_64", Some((&cert, &key))).await.expect("gateway boots");
    assert!(script.starts_with("HTTP/1.1 200"), "{script}");
    assert!(script.contains("#!ipxe"), "{script}");
    let anonymous = get(&root, serve.boot_port, "/boot.ipxe", None).await.unwrap_or_default();
    assert!(!anonymous.contains("HTTP/1.1"), "no HTTP answer without a client certificate: {anonymous}");
    assert!(serve.logs().contains("no client certificate"));
    assert!(get(&root, serve.secrets_port, "/secrets/forged", None).await.unwrap().starts_with("HTTP/1.1 4"));

    // A TLS-ALPN-01 probe when no validation is pending gets no certificate at all.
    let tcp = TcpStream::connect(("127.0.0.1", serve.boot_port)).await.unwrap();
    let probe = tokio_rustls::TlsConnector::from(client_config(&root, b"acme-tls/1", None))
        .connect(DOMAIN.try_into().unwrap(), tcp)
        .await;
    assert!(probe.is_err(), "no challenge certificate outside a validation");

    // Kept private in the data dir.
    for file in ["acme/server.pem", "acme/server-ecdsa.pem", "acme/account.json"] {
        let mode = std::fs::metadata(data.join(file)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{file}");
    }
    serve.terminate();

    // A restart presents the stored certificate at once, with the CA unreachable.
    drop(pebble);
    let serve = ServeProcess::start(BIN, &data, &args).expect("serve restarts");
    assert_eq!(
        verified_leaf(&root, serve.secrets_port).await.as_deref(),
        Some(leaf.as_slice()),
        "stored certificate presented"
    );
    assert!(serve.logs().contains("presenting the stored ACME certificate"), "{}", serve.logs());
    serve.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_certificate_is_renewed_while_running() {
    // Renewal due as soon as a certificate is there: every check renews.
    let Some(Setup { pebble, serve, .. }) =
        setup("acme-renew", &["--acme-renew-before-days", "100000", "--acme-check-interval", "2"]).await
    else {
        return;
    };
    let root = pebble.root_pem().await;
    let first = wait_for_leaf(&root, serve.secrets_port, None).await;
    let second = wait_for_leaf(&root, serve.secrets_port, Some(&first)).await;
    assert_ne!(first, second);
    // The S3 endpoint presents the renewed certificate too.
    let tcp = TcpStream::connect(("127.0.0.1", serve.s3_port)).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(client_config(&root, b"http/1.1", None))
        .connect(DOMAIN.try_into().unwrap(), tcp)
        .await
        .expect("S3 handshake");
    assert!(tls.get_ref().1.peer_certificates().is_some());
    let logs = serve.logs();
    assert!(logs.matches("server certificate obtained over ACME").count() >= 2, "{logs}");
}
