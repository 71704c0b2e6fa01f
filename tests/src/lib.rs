//! Shared support for the test suites: certificates made at test time, event fixtures, a
//! seeded bucket, and the endpoints of the protocol servers `scripts/test-servers.sh` starts.

pub mod fault;

use ipxe_edge_core::domain::identity::Fingerprint;
use ipxe_edge_core::domain::journal::{BootReason, BootRecord, HealthGate, Outcome};
use ipxe_edge_core::domain::model::{ArchAssets, Asset, Channel, GatewayRecord, ReleaseManifest};
use ipxe_edge_core::storage::keys;
use ipxe_edge_core::storage::{ObjectStore, WriteCondition};
use ipxe_edge_pki::{validity_days, CertificateAuthority, Issued};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;

/// One CA per test process: RSA key generation is the slow part of these tests.
pub fn test_ca() -> &'static CertificateAuthority {
    static CA: OnceLock<CertificateAuthority> = OnceLock::new();
    CA.get_or_init(|| CertificateAuthority::generate("ipxe-edge test CA", 30).expect("CA generation"))
}

pub fn issue_gateway(name: &str) -> Issued {
    test_ca().issue_client(name, validity_days(10)).expect("client certificate")
}

/// API Gateway event fixtures live beside the handler tests that use them.
pub fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../functions/core/tests/fixtures").join(name)
}

/// A fixture's text with each placeholder (`__NAME__`, bare or as a whole JSON string)
/// replaced by a JSON value.
pub fn fixture(name: &str, replacements: &[(&str, serde_json::Value)]) -> String {
    let mut text = std::fs::read_to_string(fixture_path(name)).expect("fixture exists");
    for (placeholder, value) in replacements {
        let json = value.to_string();
        text = text.replace(&format!("\"{placeholder}\""), &json).replace(placeholder, &json);
    }
    assert!(!text.contains("\"__"), "fixture {name} has a placeholder left: {text}");
    text
}

/// A lambda_http request parsed from a fixture, exactly as the runtime would build it.
pub fn request(name: &str, replacements: &[(&str, serde_json::Value)]) -> lambda_http::Request {
    lambda_http::request::from_str(&fixture(name, replacements)).expect("fixture parses as an event")
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A CA made with rcgen for chain tests (roots with any path length, intermediates that are or
/// are not CAs, expired ones).
pub struct ChainCa {
    pub cert: rcgen::Certificate,
    pub key: rcgen::KeyPair,
}

fn chain_params(cn: &str, validity: (time::OffsetDateTime, time::OffsetDateTime)) -> rcgen::CertificateParams {
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name.push(rcgen::DnType::CommonName, cn);
    (params.not_before, params.not_after) = validity;
    params
}

/// A self-signed root; `path_len` limits the intermediates below it (`None`: unlimited).
pub fn chain_root(cn: &str, path_len: Option<u8>) -> ChainCa {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let mut params = chain_params(cn, validity_days(30));
    params.is_ca = rcgen::IsCa::Ca(match path_len {
        Some(n) => rcgen::BasicConstraints::Constrained(n),
        None => rcgen::BasicConstraints::Unconstrained,
    });
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
    ChainCa { cert: params.self_signed(&key).unwrap(), key }
}

/// An intermediate issued by `issuer`; `is_ca: false` makes one that must not issue anything.
pub fn chain_intermediate(
    issuer: &ChainCa,
    cn: &str,
    is_ca: bool,
    validity: (time::OffsetDateTime, time::OffsetDateTime),
) -> ChainCa {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let mut params = chain_params(cn, validity);
    if is_ca {
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
    } else {
        params.is_ca = rcgen::IsCa::ExplicitNoCa;
    }
    ChainCa { cert: params.signed_by(&key, &issuer.cert, &issuer.key).unwrap(), key }
}

/// A gateway (clientAuth) certificate issued by `issuer`.
pub fn chain_leaf(issuer: &ChainCa, cn: &str) -> Issued {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let mut params = chain_params(cn, validity_days(10));
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature, rcgen::KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer.cert, &issuer.key).unwrap();
    Issued { cert_pem: cert.pem(), cert_der: cert.der().to_vec(), key_pem: key.serialize_pem() }
}

/// What [`seed_gateway`] wrote, for assertions.
pub struct Seeded {
    pub fingerprint: Fingerprint,
    pub kernel_key: String,
    pub initrd_key: String,
}

/// The release [`seed_gateway`] writes: x86_64 assets and a command line.
pub struct SeedRelease<'a> {
    pub id: &'a str,
    pub kernel: &'a [u8],
    pub initrd: &'a [u8],
    pub cmdline: &'a str,
}

/// Writes assets, a release with x86_64 assets, channel `stable` pointing at it, and an
/// enrolled gateway (with secrets when given).
pub async fn seed_gateway(
    store: &dyn ObjectStore,
    name: &str,
    cert_der: &[u8],
    release: SeedRelease<'_>,
    secrets: Option<&[u8]>,
) -> Seeded {
    let SeedRelease { id: release_id, kernel, initrd, cmdline } = release;
    let fp = Fingerprint::of_der(cert_der);
    let asset = |bytes: &[u8]| Asset {
        key: keys::asset(&sha256_hex(bytes)),
        sha256: sha256_hex(bytes),
        size: bytes.len() as u64,
    };
    let (k, i) = (asset(kernel), asset(initrd));
    store.put(&k.key, kernel.to_vec(), WriteCondition::Always).await.unwrap();
    store.put(&i.key, initrd.to_vec(), WriteCondition::Always).await.unwrap();
    let mut arches = BTreeMap::new();
    arches.insert("x86_64".to_string(), ArchAssets { kernel: k.clone(), initrd: i.clone(), kernel_signature: None });
    let manifest = ReleaseManifest {
        id: release_id.into(),
        cmdline: cmdline.into(),
        template: None,
        arches,
        created_at: None,
        description: None,
        health_gate: Default::default(),
        skip_digest_check: false,
    };
    put_json(store, &keys::release(release_id), &manifest).await;
    put_json(
        store,
        &keys::channel("stable"),
        &Channel {
            name: "stable".into(),
            release: release_id.into(),
            history: vec![],
            fallback_after: None,
            require_signed: None,
        },
    )
    .await;
    let mut record = ipxe_edge_core::domain::model::new_gateway(name, fp.clone());
    record.vars.insert("site".into(), "lab-1".into());
    // As `gateway set-secrets` leaves it.
    record.has_secrets = Some(secrets.is_some());
    put_json(store, &keys::gateway(&fp), &record).await;
    if let Some(secrets) = secrets {
        store.put(&keys::secrets(&fp), secrets.to_vec(), WriteCondition::Always).await.unwrap();
    }
    Seeded { fingerprint: fp, kernel_key: k.key, initrd_key: i.key }
}

/// A boot issued at `issued_at` (release `r1`, gated on reaching Linux) whose secrets token id
/// is `secrets_token`, as the boot service records it.
pub fn issued_boot(id: u64, seq: u64, issued_at: u64, secrets_token: &str) -> BootRecord {
    BootRecord {
        id: format!("{id:032x}"),
        seq,
        release: "r1".into(),
        target: "r1".into(),
        reason: BootReason::Channel,
        gate: HealthGate::ReachedLinux,
        arch: "x86_64".into(),
        platform: None,
        mac: Some("52:54:00:12:34:56".into()),
        cert: Some(Fingerprint::of_der(b"cert")),
        issued_at,
        deadline: issued_at + 600,
        secrets_token: Some(secrets_token.into()),
        outcome: Outcome::Issued,
        reached_linux_at: None,
        healthy_at: None,
        failed_at: None,
        fail_reason: None,
    }
}

/// Writes another x86_64 release (assets and manifest), without touching any channel.
pub async fn seed_release(
    store: &dyn ObjectStore,
    release: SeedRelease<'_>,
    template: Option<&str>,
    gate: ipxe_edge_core::domain::journal::HealthGate,
) {
    let asset = |bytes: &[u8]| Asset {
        key: keys::asset(&sha256_hex(bytes)),
        sha256: sha256_hex(bytes),
        size: bytes.len() as u64,
    };
    let (k, i) = (asset(release.kernel), asset(release.initrd));
    store.put(&k.key, release.kernel.to_vec(), WriteCondition::Always).await.unwrap();
    store.put(&i.key, release.initrd.to_vec(), WriteCondition::Always).await.unwrap();
    let mut arches = BTreeMap::new();
    arches.insert("x86_64".to_string(), ArchAssets { kernel: k, initrd: i, kernel_signature: None });
    let manifest = ReleaseManifest {
        id: release.id.into(),
        cmdline: release.cmdline.into(),
        template: template.map(str::to_string),
        arches,
        created_at: None,
        description: None,
        health_gate: gate,
        skip_digest_check: false,
    };
    put_json(store, &keys::release(release.id), &manifest).await;
}

/// Points channel `stable` at `release` (the previous one into its history).
pub async fn point_stable(store: &dyn ObjectStore, release: &str) {
    let current: Option<Channel> =
        store.get(&keys::channel("stable")).await.unwrap().map(|o| serde_json::from_slice(&o.body).unwrap());
    let mut channel = current.unwrap_or(Channel {
        name: "stable".into(),
        release: release.into(),
        history: vec![],
        fallback_after: None,
        require_signed: None,
    });
    channel.release = release.into();
    put_json(store, &keys::channel("stable"), &channel).await;
}

pub async fn put_json<T: serde::Serialize>(store: &dyn ObjectStore, key: &str, value: &T) {
    store.put(key, serde_json::to_vec_pretty(value).unwrap(), WriteCondition::Always).await.unwrap();
}

pub async fn update_gateway(store: &dyn ObjectStore, fp: &Fingerprint, change: impl FnOnce(&mut GatewayRecord)) {
    let key = keys::gateway(fp);
    let mut record: GatewayRecord = serde_json::from_slice(&store.get(&key).await.unwrap().unwrap().body).unwrap();
    change(&mut record);
    put_json(store, &key, &record).await;
}

/// Endpoint and credentials of a protocol server started by `scripts/test-servers.sh`.
pub struct ServerEnv {
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
}

/// The server named by `endpoint_var`, or `None` (with a message) when the test servers are not
/// running: `cargo test` alone skips the server-backed tests. `scripts/test.sh` starts the
/// servers and sets `IPXE_EDGE_REQUIRE_TEST_SERVERS=1`, so there a missing server fails.
fn server_env(endpoint_var: &str, test: &str) -> Option<ServerEnv> {
    let Ok(endpoint) = std::env::var(endpoint_var) else {
        if std::env::var_os("IPXE_EDGE_REQUIRE_TEST_SERVERS").is_some() {
            panic!("{endpoint_var} is not set but IPXE_EDGE_REQUIRE_TEST_SERVERS is");
        }
        // Written past the test harness's capture, so the skip shows in every run.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "skipped {test}: {endpoint_var} is not set (scripts/test.sh starts the test servers)"
        );
        return None;
    };
    Some(ServerEnv {
        endpoint,
        access_key: std::env::var("IPXE_EDGE_TEST_ACCESS_KEY").unwrap_or_else(|_| "ipxeedgetest".into()),
        secret_key: std::env::var("IPXE_EDGE_TEST_SECRET_KEY").unwrap_or_else(|_| "ipxeedgetestsecret".into()),
    })
}

/// s3s-fs, for test `test`; `None` means skip it.
pub fn s3_env(test: &str) -> Option<ServerEnv> {
    server_env("IPXE_EDGE_TEST_S3_ENDPOINT", test)
}

/// moto's DynamoDB, for test `test`; `None` means skip it.
pub fn dynamodb_env(test: &str) -> Option<ServerEnv> {
    server_env("IPXE_EDGE_TEST_DYNAMODB_ENDPOINT", test)
}

/// moto's server (the DynamoDB endpoint serves IAM and S3 too), for test `test`.
pub fn moto_env(test: &str) -> Option<ServerEnv> {
    dynamodb_env(test)
}

/// SDK configuration for a test server (its endpoint and credentials), with the timeouts the
/// functions use when serving requests.
pub async fn sdk_config(env: &ServerEnv) -> aws_config::SdkConfig {
    use ipxe_edge_core::lambda::init::{static_sdk_config, Timeouts};
    static_sdk_config(&env.endpoint, &env.access_key, &env.secret_key, Timeouts::Request)
}

pub async fn s3_client(env: &ServerEnv) -> aws_sdk_s3::Client {
    ipxe_edge_core::lambda::init::s3_client(&sdk_config(env).await, true)
}

pub async fn dynamodb_client(env: &ServerEnv) -> aws_sdk_dynamodb::Client {
    aws_sdk_dynamodb::Client::new(&sdk_config(env).await)
}

/// Creates the table layout the template declares (`pk`/`sk`, TTL on `expires_at`).
pub async fn create_ledger_table(client: &aws_sdk_dynamodb::Client, table: &str) {
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType, TimeToLiveSpecification,
    };
    use ipxe_edge_core::storage::adapters::dynamodb::{PARTITION_KEY, SORT_KEY, TTL_ATTRIBUTE};
    let attribute = |name: &str| {
        AttributeDefinition::builder().attribute_name(name).attribute_type(ScalarAttributeType::S).build().unwrap()
    };
    let key =
        |name: &str, kind: KeyType| KeySchemaElement::builder().attribute_name(name).key_type(kind).build().unwrap();
    client
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attribute(PARTITION_KEY))
        .attribute_definitions(attribute(SORT_KEY))
        .key_schema(key(PARTITION_KEY, KeyType::Hash))
        .key_schema(key(SORT_KEY, KeyType::Range))
        .send()
        .await
        .expect("create table on moto");
    client
        .update_time_to_live()
        .table_name(table)
        .time_to_live_specification(
            TimeToLiveSpecification::builder().enabled(true).attribute_name(TTL_ATTRIBUTE).build().unwrap(),
        )
        .send()
        .await
        .expect("enable TTL");
}

/// The ledger's item marking `token_id` used, if any (read straight from the table).
pub async fn ledger_used_entry(
    ledger: &ipxe_edge_core::storage::adapters::dynamodb::DynamoLedger,
    token_id: &str,
) -> Option<std::collections::HashMap<String, aws_sdk_dynamodb::types::AttributeValue>> {
    use aws_sdk_dynamodb::types::AttributeValue;
    use ipxe_edge_core::storage::adapters::dynamodb::{token_pk, PARTITION_KEY, SORT_KEY};
    let key = [
        (PARTITION_KEY.to_string(), AttributeValue::S(token_pk(token_id))),
        (SORT_KEY.to_string(), AttributeValue::S("used".into())),
    ];
    ledger
        .client()
        .get_item()
        .table_name(ledger.table())
        .set_key(Some(key.into_iter().collect()))
        .send()
        .await
        .expect("read the ledger item")
        .item
}

/// A bucket or table name unique to this test run.
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{prefix}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst))
}

/// A running `ipxe-edge serve` process on free loopback ports; killed when dropped.
pub struct ServeProcess {
    pub child: std::process::Child,
    pub data: PathBuf,
    pub boot_port: u16,
    pub secrets_port: u16,
    pub s3_port: u16,
    pub stdout: String,
    stderr_path: PathBuf,
}

/// A port free at this moment on every address of both families (a dual-stack wildcard bind),
/// so that a server may take it on `[::]` as well as on a loopback address; IPv4 only on a
/// machine without IPv6. Another process can still take it before the server binds it: see
/// [`ServeProcess::start`].
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("[::]:0")
        .or_else(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether a server failed to start only because a port picked free was taken meanwhile.
pub fn port_taken(error: &str) -> bool {
    error.contains("Address already in use")
}

impl ServeProcess {
    /// Starts `binary serve` and waits until it prints its boot URL (or exits).
    /// A port taken by another test between its pick and serve's bind is picked again (a few
    /// times).
    pub fn start(binary: &str, data: &std::path::Path, extra: &[&str]) -> Result<Self, String> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            match Self::start_on(binary, data, (free_port(), free_port(), free_port()), extra) {
                Err(e) if port_taken(&e) && attempts < 5 => continue,
                other => return other,
            }
        }
    }

    pub fn start_on(
        binary: &str,
        data: &std::path::Path,
        ports: (u16, u16, u16),
        extra: &[&str],
    ) -> Result<Self, String> {
        use std::io::{BufRead, BufReader};
        let (boot_port, secrets_port, s3_port) = ports;
        let stderr_path = data.with_extension(format!("stderr-{boot_port}.log"));
        let stderr = std::fs::File::create(&stderr_path).unwrap();
        let mut child = std::process::Command::new(binary)
            .args(["serve", "--data"])
            .arg(data)
            .args(["--listen", &format!("127.0.0.1:{boot_port}")])
            .args(["--secrets-listen", &format!("127.0.0.1:{secrets_port}")])
            // A test that names its own S3 address (one flag, one address) replaces this one.
            .args(if extra.contains(&"--s3-listen") {
                vec![]
            } else {
                vec!["--s3-listen".to_string(), format!("127.0.0.1:{s3_port}")]
            })
            .args(extra)
            .stdout(std::process::Stdio::piped())
            .stderr(stderr)
            .spawn()
            .map_err(|e| e.to_string())?;
        let mut reader = BufReader::new(child.stdout.take().unwrap());
        let mut stdout = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                let _ = child.wait();
                let err = std::fs::read_to_string(&stderr_path).unwrap_or_default();
                return Err(format!("serve exited before it was ready; stdout: {stdout}; stderr: {err}"));
            }
            stdout.push_str(&line);
            if line.starts_with("  curl ") {
                break;
            }
        }
        // Keep draining stdout so the process never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sink = String::new();
            while reader.read_line(&mut sink).unwrap_or(0) > 0 {
                sink.clear();
            }
        });
        Ok(ServeProcess { child, data: data.to_path_buf(), boot_port, secrets_port, s3_port, stdout, stderr_path })
    }

    pub fn boot_url(&self) -> String {
        format!("https://127.0.0.1:{}/boot.ipxe", self.boot_port)
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let _ = std::process::Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let status = self.child.wait().unwrap();
        std::mem::forget(self);
        status
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTPS client trusting `ca_pem`, presenting `identity_pem` (certificate + key) if given.
pub fn https_client(ca_pem: &[u8], identity_pem: Option<&[u8]>) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem).unwrap())
        .timeout(std::time::Duration::from_secs(30));
    if let Some(identity) = identity_pem {
        builder = builder.identity(reqwest::Identity::from_pem(identity).unwrap());
    }
    builder.build().unwrap()
}

/// A fresh temporary directory under the system temp dir.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique_name(&format!("ipxe-edge-{name}")));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A minimal well-formed PE32+ EFI application for `machine` (0x8664 x86_64, 0xaa64 arm64):
/// headers in the first 512 bytes, one 512-byte section; `sbsign` signs it.
pub fn minimal_pe(machine: u16) -> Vec<u8> {
    let mut pe = vec![0u8; 0x400];
    let mut put = |at: usize, bytes: &[u8]| pe[at..at + bytes.len()].copy_from_slice(bytes);
    put(0, b"MZ");
    put(0x3c, &0x40u32.to_le_bytes());
    put(0x40, b"PE\0\0");
    // COFF header: machine, one section, a PE32+ optional header of 240 bytes, executable.
    put(0x44, &machine.to_le_bytes());
    put(0x46, &1u16.to_le_bytes());
    put(0x54, &240u16.to_le_bytes());
    put(0x56, &0x0022u16.to_le_bytes());
    // Optional header (PE32+): entry point and code in the one section, 4 KiB sections,
    // 512-byte file alignment, an EFI application, 16 data directories (all empty).
    let opt = 0x58;
    put(opt, &0x20bu16.to_le_bytes());
    put(opt + 4, &0x200u32.to_le_bytes());
    put(opt + 16, &0x1000u32.to_le_bytes());
    put(opt + 20, &0x1000u32.to_le_bytes());
    put(opt + 32, &0x1000u32.to_le_bytes());
    put(opt + 36, &0x200u32.to_le_bytes());
    put(opt + 56, &0x2000u32.to_le_bytes());
    put(opt + 60, &0x200u32.to_le_bytes());
    put(opt + 68, &10u16.to_le_bytes());
    put(opt + 108, &16u32.to_le_bytes());
    // The section table after the 240-byte optional header: .text, 512 bytes at 0x200.
    let section = opt + 240;
    put(section, b".text\0\0\0");
    put(section + 8, &0x200u32.to_le_bytes());
    put(section + 12, &0x1000u32.to_le_bytes());
    put(section + 16, &0x200u32.to_le_bytes());
    put(section + 20, &0x200u32.to_le_bytes());
    put(section + 36, &0x6000_0020u32.to_le_bytes());
    put(0x200, b"\xeb\xfe minimal PE image");
    pe
}

/// What an mtools command (`mtype`, `mdir -b`) prints for `path` inside the ESP of a disk image
/// from `image build` (its partition starts at 1 MiB); panics when it fails.
pub fn esp_read(tool: &[&str], image: &std::path::Path, path: &str) -> String {
    let out = std::process::Command::new(tool[0])
        .env("MTOOLS_SKIP_CHECK", "1")
        .args(&tool[1..])
        .args(["-i", &format!("{}@@1M", image.display()), &format!("::/{path}")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{tool:?} {path}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}
