//! The operator CLI as a user runs it, against the embedded store and against an S3-compatible
//! server (s3s-fs): the canary flow, revocation, interrupted uploads and bad input.

use ipxe_edge_pki::{issue_v1_client_with_openssl, validity_days, CertificateAuthority};
use ipxe_edge_tests::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_ipxe-edge");

/// How a test reaches its store: the embedded one, or a bucket on s3s-fs.
struct Target {
    data: PathBuf,
    bucket: Option<(String, ServerEnv)>,
}

impl Target {
    fn embedded(name: &str) -> Self {
        Target { data: temp_dir(name), bucket: None }
    }

    /// A bucket on s3s-fs, or `None` to skip the test.
    async fn s3(name: &str) -> Option<Self> {
        let env = s3_env(name)?;
        let bucket = unique_name("cli");
        s3_client(&env).await.create_bucket().bucket(&bucket).send().await.expect("create bucket");
        Some(Target { data: temp_dir(name), bucket: Some((bucket, env)) })
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.arg("--data").arg(&self.data);
        if let Some((bucket, env)) = &self.bucket {
            cmd.args(["--bucket", bucket])
                .env("AWS_ENDPOINT_URL_S3", &env.endpoint)
                .env("AWS_ACCESS_KEY_ID", &env.access_key)
                .env("AWS_SECRET_ACCESS_KEY", &env.secret_key)
                .env("AWS_REGION", "us-east-1");
        }
        cmd.args(args).stdin(Stdio::null());
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("ipxe-edge runs")
    }

    /// Runs a command that must succeed; returns its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "ipxe-edge {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a command that must fail with a one-line error; returns it.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            !out.status.success(),
            "ipxe-edge {args:?} should have failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "expected a one-line error from {args:?}, got: {err}");
        assert!(lines[0].starts_with("ipxe-edge: "), "{err}");
        err
    }

    fn file(&self, name: &str, content: &[u8]) -> PathBuf {
        let dir = self.data.with_extension("inputs");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        path
    }
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// The asset key of a release's x86_64 kernel, from `release show`.
fn kernel_key(t: &Target, release: &str) -> String {
    let manifest: serde_json::Value = serde_json::from_str(&t.ok(&["release", "show", release])).unwrap();
    manifest["arches"]["x86_64"]["kernel"]["key"].as_str().unwrap().to_string()
}

fn canary_flow(t: &Target) {
    t.ok(&["ca", "init"]);
    let err = t.fails(&["ca", "init"]);
    assert!(err.contains("refusing to overwrite"), "{err}");
    let bundle = t.ok(&["ca", "truststore"]);
    assert!(bundle.starts_with("-----BEGIN CERTIFICATE-----"), "{bundle}");

    let (k1, i1) = (t.file("k1", b"kernel one"), t.file("i1", b"initrd one"));
    let (k2, i2) = (t.file("k2", b"kernel two"), t.file("i2", b"initrd two"));
    t.ok(&["release", "create", "R1", "--kernel", s(&k1), "--initrd", s(&i1), "--cmdline", "console=ttyS0"]);
    t.ok(&["release", "create", "R2", "--kernel", s(&k2), "--initrd", s(&i2), "--cmdline", "console=ttyS0 r2=1"]);
    let err = t.fails(&["release", "create", "R1", "--kernel", s(&k1), "--initrd", s(&i1)]);
    assert!(err.contains("exists already"), "{err}");
    let listed = t.ok(&["release", "list"]);
    assert!(listed.contains("R1") && listed.contains("R2"), "{listed}");
    let (r1_kernel, r2_kernel) = (kernel_key(t, "R1"), kernel_key(t, "R2"));

    t.ok(&["channel", "promote", "stable", "R1"]);
    t.ok(&["gateway", "enroll", "gw1"]);
    t.ok(&["gateway", "enroll", "gw2", "--channel", "stable", "--days", "30"]);
    let err = t.fails(&["gateway", "enroll", "gw1"]);
    assert!(err.contains("enrolled already"), "{err}");
    t.ok(&["gateway", "pin", "gw2", "R2"]);

    let preview = |name: &str| t.ok(&["preview", name]);
    let p1 = preview("gw1");
    assert!(p1.starts_with("#!ipxe\n"), "{p1}");
    assert!(p1.contains(&r1_kernel), "gw1 boots R1: {p1}");
    assert!(!p1.contains("X-Amz-Signature"), "preview redacts URLs: {p1}");
    assert!(preview("gw2").contains(&r2_kernel), "gw2 is pinned to R2");

    t.ok(&["channel", "promote", "stable", "R2"]);
    assert!(preview("gw1").contains(&r2_kernel), "gw1 follows the channel to R2");
    t.ok(&["channel", "rollback", "stable"]);
    assert!(preview("gw1").contains(&r1_kernel), "rollback returns gw1 to R1");
    assert!(preview("gw2").contains(&r2_kernel), "the pin holds through the rollback");
    let history = t.ok(&["channel", "history", "stable"]);
    assert!(history.contains("R1") && history.contains("(current)"), "{history}");
    let err = t.fails(&["channel", "rollback", "stable"]);
    assert!(err.contains("no earlier release"), "{err}");

    t.ok(&["gateway", "unpin", "gw2"]);
    assert!(preview("gw2").contains(&r1_kernel));

    // Secrets are stored, never echoed.
    let mut child = t
        .command(&["gateway", "set-secrets", "gw1", "--file", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"b2c.minio=\"s3,https://x,TOPSECRETKEY,TOPSECRETVALUE\"").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("TOPSECRET")
            && !String::from_utf8_lossy(&out.stderr).contains("TOPSECRET")
    );
    let p1 = preview("gw1");
    assert!(p1.contains("b2c.extra_args_url=\"https://secrets-endpoint/secrets/<one-time-token>\""), "{p1}");
    assert!(!p1.contains("TOPSECRET"));

    let list = t.ok(&["gateway", "list"]);
    assert!(list.contains("gw1") && !list.contains("pin:") && list.contains("stable"), "{list}");
    t.ok(&["gateway", "revoke", "gw1"]);
    assert!(t.ok(&["gateway", "list"]).contains("revoked"));
    let err = t.fails(&["preview", "gw1"]);
    assert!(err.contains("revoked"), "{err}");
}

fn bad_input(t: &Target) {
    let (k, i) = (t.file("k", b"k"), t.file("i", b"i"));
    for (args, expect) in [
        (vec!["release", "create", "R9", "--kernel", "/nonexistent/kernel", "--initrd", s(&i)], "/nonexistent/kernel"),
        (
            vec!["release", "create", "R9", "--arch", "sparc", "--kernel", s(&k), "--initrd", s(&i)],
            "invalid architecture",
        ),
        (vec!["release", "create", "../x", "--kernel", s(&k), "--initrd", s(&i)], "invalid release id"),
        (vec!["gateway", "show", "nobody"], "unknown gateway"),
        (vec!["gateway", "pin", "gw2", "R404"], "unknown release"),
        (vec!["channel", "promote", "stable", "R404"], "unknown release"),
        (vec!["channel", "history", "nochannel"], "unknown channel"),
        (vec!["gateway", "enroll", "gw3", "--channel", "nochannel"], "unknown channel"),
        (vec!["gateway", "enroll", "bad name"], "invalid gateway name"),
        (vec!["gateway", "set-secrets", "gw2", "--file", "/nonexistent/secrets"], "/nonexistent/secrets"),
    ] {
        let err = t.fails(&args);
        assert!(err.contains(expect), "{args:?}: {err}");
    }
    // A certificate from another CA cannot be imported.
    let rogue = CertificateAuthority::generate("rogue", 10).unwrap().issue_client("x", validity_days(5)).unwrap();
    let cert = t.file("rogue.crt", rogue.cert_pem.as_bytes());
    let err = t.fails(&["gateway", "import", "rogue", "--cert", s(&cert)]);
    assert!(err.contains("does not chain"), "{err}");
    // An arm64 gateway cannot be pinned to, or its channel promoted to, an x86_64-only release.
    let legacy_ca = CertificateAuthority::from_pem(
        &std::fs::read_to_string(t.data.join("pki/ca.crt")).unwrap(),
        &std::fs::read_to_string(t.data.join("pki/ca.key")).unwrap(),
    )
    .unwrap();
    let v1 = issue_v1_client_with_openssl(&legacy_ca, "arm-gw", 10).unwrap();
    let v1_cert = t.file("arm.crt", v1.cert_pem.as_bytes());
    t.ok(&["gateway", "import", "arm-gw", "--cert", s(&v1_cert), "--arch", "arm64", "--channel", "stable"]);
    let err = t.fails(&["gateway", "pin", "arm-gw", "R2"]);
    assert!(err.contains("no assets for architecture arm64"), "{err}");
    let err = t.fails(&["channel", "promote", "stable", "R2"]);
    assert!(err.contains("arm-gw"), "{err}");
    let (ka, ia) = (t.file("ka", b"arm kernel"), t.file("ia", b"arm initrd"));
    t.ok(&[
        "release",
        "create",
        "R3",
        "--arch",
        "x86_64",
        "--kernel",
        s(&k),
        "--initrd",
        s(&i),
        "--arch",
        "arm64",
        "--kernel",
        s(&ka),
        "--initrd",
        s(&ia),
    ]);
    t.ok(&["channel", "promote", "stable", "R3"]);
}

fn interrupted_upload_leaves_no_release(t: &Target) {
    let kernel = t.file("big-kernel", &vec![7u8; 4 * 1024 * 1024]);
    let fifo = t.data.with_extension("inputs").join("initrd-fifo");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let mut child = t
        .command(&["release", "create", "RX", "--kernel", s(&kernel), "--initrd", s(&fifo)])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    child.kill().unwrap();
    child.wait().unwrap();
    let err = t.fails(&["release", "show", "RX"]);
    assert!(err.contains("unknown release"), "{err}");
    assert!(!t.ok(&["release", "list"]).contains("RX"));
}

#[tokio::test]
async fn embedded_store() {
    let t = Target::embedded("cli-embedded");
    canary_flow(&t);
    bad_input(&t);
    interrupted_upload_leaves_no_release(&t);
}

#[tokio::test]
async fn s3_compatible_bucket() {
    let Some(t) = Target::s3("cli-s3").await else { return };
    canary_flow(&t);
    bad_input(&t);
    interrupted_upload_leaves_no_release(&t);
}

#[tokio::test]
async fn large_assets_upload_in_parts_and_verify() {
    let Some(t) = Target::s3("cli-multipart").await else { return };
    t.ok(&["ca", "init"]);
    let big: Vec<u8> = (0..(70 * 1024 * 1024u32)).map(|i| (i % 251) as u8).collect();
    let kernel = t.file("big", &big);
    let initrd = t.file("small", b"small");
    t.ok(&["release", "create", "BIG", "--kernel", s(&kernel), "--initrd", s(&initrd)]);
    let key = kernel_key(&t, "BIG");
    let (bucket, env) = t.bucket.as_ref().unwrap();
    let object = s3_client(env).await.get_object().bucket(bucket).key(&key).send().await.unwrap();
    let bytes = object.body.collect().await.unwrap().into_bytes();
    assert_eq!(sha256_hex(&bytes), sha256_hex(&big));
    // A second release with the same kernel does not upload it again.
    let out = t.run(&["release", "create", "BIG2", "--kernel", s(&kernel), "--initrd", s(&initrd)]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already stored"));
}

#[tokio::test]
async fn revocation_and_pins_reach_a_running_server() {
    let t = Target::embedded("cli-live");
    let serve = ServeProcess::start(BIN, &t.data, &[]).expect("serve starts");
    let (k, i) = (t.file("k", b"live kernel"), t.file("i", b"live initrd"));
    t.ok(&["release", "create", "LIVE", "--kernel", s(&k), "--initrd", s(&i)]);
    t.ok(&["gateway", "enroll", "live-gw"]);
    let identity = [
        std::fs::read(t.data.join("pki/gateways/live-gw.crt")).unwrap(),
        std::fs::read(t.data.join("pki/gateways/live-gw.key")).unwrap(),
    ]
    .concat();
    let client = https_client(&std::fs::read(t.data.join("pki/ca.crt")).unwrap(), Some(&identity));
    let boot = || async { client.get(serve.boot_url()).send().await.unwrap() };
    let first = boot().await;
    assert_eq!(first.status(), 200);
    assert!(!first.text().await.unwrap().contains("demo-placeholder"));
    t.ok(&["gateway", "pin", "live-gw", "LIVE"]);
    let live_kernel = kernel_key(&t, "LIVE");
    assert!(boot().await.text().await.unwrap().contains(&live_kernel), "pin takes effect at once");
    // Overwrite a record the server bootstrapped through its S3 endpoint: it must serve the new one.
    t.ok(&["channel", "promote", "stable", "LIVE"]);
    let demo = [
        std::fs::read(t.data.join("pki/gateways/demo.crt")).unwrap(),
        std::fs::read(t.data.join("pki/gateways/demo.key")).unwrap(),
    ]
    .concat();
    let demo_client = https_client(&std::fs::read(t.data.join("pki/ca.crt")).unwrap(), Some(&demo));
    let response = demo_client.get(serve.boot_url()).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.text().await.unwrap().contains(&live_kernel), "promotion takes effect at once");
    t.ok(&["gateway", "revoke", "live-gw"]);
    assert_eq!(boot().await.status(), 403, "revocation takes effect at once");
    assert!(serve.logs().contains("gateway live-gw is revoked"));
}

#[tokio::test]
async fn valve_infra_import() {
    let t = Target::embedded("cli-valve");
    t.ok(&["ca", "init"]);
    // A farm of the reference deployment: its own CA, v1 certificates, SHA-1 folders.
    let farm = t.data.with_extension("farm");
    let (files, certs) = (farm.join("files"), farm.join("certs"));
    std::fs::create_dir_all(&certs).unwrap();
    let farm_ca = CertificateAuthority::generate("valve farm CA", 30).unwrap();
    std::fs::write(farm.join("ca.crt"), farm_ca.cert_pem()).unwrap();
    let gw = issue_v1_client_with_openssl(&farm_ca, "ci-gateway-berlin", 30).unwrap();
    std::fs::write(certs.join("ci-gateway-berlin.iso.crt"), &gw.cert_pem).unwrap();
    let orphan = issue_v1_client_with_openssl(&farm_ca, "ci-gateway-orphan", 30).unwrap();
    std::fs::write(certs.join("ci-gateway-orphan.iso.crt"), &orphan.cert_pem).unwrap();
    use sha1_check::sha1_hex;
    let folder = files.join(sha1_hex(&gw.cert_der));
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("kernel"), b"valve kernel").unwrap();
    std::fs::write(folder.join("initrd"), b"valve initrd").unwrap();
    std::fs::write(folder.join("secrets"), b"b2c.minio=\"valve,https://x,K,S\"").unwrap();
    std::fs::write(
        folder.join("boot.ipxe"),
        "#!ipxe\nkernel https://ipxe.example/files/kernel b2c.extra_args_url=\"${secrets_url}\" mac=${netX/mac} site=$site\ninitrd /files/initrd\nboot\n",
    )
    .unwrap();

    let farm_ca_path = farm.join("ca.crt");
    let args = ["import", "valve-infra", "--files", s(&farm), "--certs", s(&certs), "--ca", s(&farm_ca_path)];
    let dry = t.ok(&args);
    assert!(dry.contains("dry run") && dry.contains("berlin"), "{dry}");
    assert!(dry.contains("not mapped") && dry.contains("orphan"), "{dry}");
    assert!(dry.contains("site"), "unknown template variables are reported: {dry}");
    assert!(t.fails(&["gateway", "show", "berlin"]).contains("unknown gateway"), "dry run writes nothing");

    let mut applied = args.to_vec();
    applied.push("--apply");
    t.ok(&applied);
    let p = t.ok(&["preview", "berlin"]);
    assert!(p.contains("kernel <presigned-url:assets/sha256/"), "{p}");
    assert!(
        p.contains(
            "b2c.extra_args_url=\"https://secrets-endpoint/secrets/<one-time-token>\" mac=${netX/mac} site=$site"
        ),
        "{p}"
    );
    assert!(p.contains("initrd <presigned-url:"), "{p}");
    // Our RSA and ECDSA CAs, and the farm's.
    assert!(t.ok(&["ca", "truststore"]).matches("BEGIN CERTIFICATE").count() == 3, "farm CA trusted");
}

mod sha1_check {
    /// SHA-1 of a DER certificate, as the reference deployment names its folders.
    pub fn sha1_hex(der: &[u8]) -> String {
        let out = std::process::Command::new("openssl")
            .args(["dgst", "-sha1", "-r"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write;
                c.stdin.take().unwrap().write_all(der)?;
                c.wait_with_output()
            });
        String::from_utf8(out.unwrap().stdout).unwrap().split_whitespace().next().unwrap().to_string()
    }
}

fn run_with_stdout(data: &Path, args: &[&str], stdout: Stdio) -> Output {
    Command::new(BIN)
        .arg("--data")
        .arg(data)
        .args(args)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

/// Out-of-range numbers in every command that takes one are refused with a usage error and
/// change nothing; every read-only command, its stdout closed, ends quietly. Nothing panics.
#[test]
fn no_input_panics_and_a_closed_stdout_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let data = temp_dir("cli-hostile");
    let ok = |args: &[&str]| {
        let out = run_with_stdout(&data, args, Stdio::piped());
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    ok(&["ca", "init"]);
    ok(&["gateway", "enroll", "gw"]);
    let (kernel, initrd, empty) =
        (data.with_extension("vmlinuz"), data.with_extension("initrd"), data.with_extension("empty"));
    std::fs::write(&kernel, b"KERNEL").unwrap();
    std::fs::write(&initrd, b"INITRD").unwrap();
    std::fs::write(&empty, b"").unwrap();
    let (kernel, initrd, empty) = (kernel.to_str().unwrap(), initrd.to_str().unwrap(), empty.to_str().unwrap());
    ok(&["release", "create", "r1", "--kernel", kernel, "--initrd", initrd]);
    ok(&["channel", "promote", "stable", "r1"]);
    let boot = "https://boot.example.net/boot.ipxe";
    let refused: &[&[&str]] = &[
        &["gateway", "enroll", "x", "--days", "0"],
        &["gateway", "enroll", "x", "--days", "3651"],
        &["gateway", "enroll", "x", "--days", "2932896"],
        &["gateway", "enroll", "x", "--days", "-1"],
        &["gateway", "enroll", "x", "--days", "99999999999999999999999"],
        &["ca", "init", "--days", "0"],
        &["ca", "init", "--days", "4294967296"],
        &["gateway", "renew", "gw", "--boot-url", boot, "--days", "0"],
        &["gateway", "renew", "gw", "--boot-url", boot, "--days", "3651"],
        &["gateway", "renew", "--expiring-within", "99999999999999999d", "--boot-url", boot],
        &["gateway", "list", "--expiring-within", "18446744073709551616"],
        &["gateway", "history", "gw", "--limit", "0"],
        &["gateway", "history", "gw", "--limit", "18446744073709551615"],
        &["channel", "promote", "stable", "r", "--fallback-after", "101"],
        &["channel", "promote", "stable", "r", "--fallback-after", "-5"],
        &["serve", "--max-connections", "0"],
        &["serve", "--max-connections-per-client", "65537"],
        &["serve", "--token-ttl", "0"],
        &["serve", "--presign-ttl", "99999999999999"],
        &["serve", "--scratch-quota", "1"],
        &["serve", "--scratch-quota", "99999999999TiB"],
        &["serve", "--scratch-quota", "-1GiB"],
        &["serve", "--auto-renew-days", "3651"],
        &["serve", "--renewal-window-days", "99999999999"],
        &["serve", "--fallback-after", "4294967296"],
        &["serve", "--listen", "127.0.0.1:99999"],
        &["release", "create", "r0", "--kernel", empty, "--initrd", initrd],
        &["release", "create", "r0", "--kernel", kernel, "--initrd", empty],
        &["release", "create", "r0", "--kernel", kernel, "--initrd", "/"],
    ];
    for args in refused {
        let out = run_with_stdout(&data, args, Stdio::piped());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?} is a usage error: {err}");
        assert!(!err.contains("panicked") && !err.trim().is_empty(), "{args:?}: {err}");
    }
    let out = run_with_stdout(&data, &["gateway", "show", "x"], Stdio::piped());
    assert!(!out.status.success(), "no refused enrollment left a gateway behind");
    let out = run_with_stdout(&data, &["release", "show", "r0"], Stdio::piped());
    assert!(!out.status.success(), "no refused release was written");

    let readers: &[&[&str]] = &[
        &["gateway", "show", "gw"],
        &["gateway", "list"],
        &["gateway", "list", "--json"],
        &["gateway", "history", "gw"],
        &["gateway", "status", "gw"],
        &["gateway", "scratch", "gw"],
        &["release", "list"],
        &["release", "show", "r1"],
        &["preview", "gw"],
        &["channel", "history", "stable"],
        &["ca", "truststore"],
        &["image", "script", "gw", "--boot-url", boot],
        &["--help"],
        &["gateway", "--help"],
        &["serve", "--help"],
        &["serve", "--print-config"],
        &["--version"],
    ];
    for args in readers {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = run_with_stdout(&data, args, Stdio::from(writer));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !err.contains("panicked") && !err.contains("Broken pipe") && !err.contains("failed printing"),
            "{args:?}: {err}"
        );
        let quiet = out.status.success() || out.status.signal() == Some(libc_sigpipe());
        assert!(quiet, "{args:?} with a closed stdout: {:?} {err}", out.status);
    }
}

/// SIGPIPE's number on Linux.
fn libc_sigpipe() -> i32 {
    13
}

#[test]
fn image_build_for_arm64_writes_bootaa64_and_refuses_a_binary_of_the_other_architecture() {
    let t = Target::embedded("cli-image-arch");
    t.ok(&["ca", "init"]);
    t.ok(&["gateway", "enroll", "gw-arm"]);
    let dir = t.data.with_extension("efi");
    std::fs::create_dir_all(&dir).unwrap();
    let (x86, arm) = (dir.join("ipxe-amd64.efi"), dir.join("ipxe-arm64.efi"));
    std::fs::write(&x86, minimal_pe(0x8664)).unwrap();
    std::fs::write(&arm, minimal_pe(0xaa64)).unwrap();
    std::fs::write(dir.join("not-pe.efi"), b"MZ but nothing after").unwrap();
    // An iPXE build with its own bzImage loader (its image type's name in the binary).
    let mut own_loader = minimal_pe(0x8664);
    own_loader.extend_from_slice(b"bzImage\0");
    std::fs::write(dir.join("own-loader.efi"), own_loader).unwrap();
    let image = dir.join("gw-arm.img");
    let build = |arch: &str, efi: &Path| {
        t.run(&[
            "image",
            "build",
            "gw-arm",
            "--boot-url",
            "https://boot.example.org/boot.ipxe",
            "--out",
            image.to_str().unwrap(),
            "--arch",
            arch,
            "--efi",
            efi.to_str().unwrap(),
        ])
    };
    let out = build("arm64", &arm);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let files = esp_read(&["mdir", "-b"], &image, "EFI/BOOT");
    assert!(files.contains("BOOTAA64.EFI") && files.contains("autoexec.ipxe"), "{files}");
    assert!(!files.contains("BOOTX64.EFI"), "{files}");
    std::fs::remove_file(&image).unwrap();

    for (arch, efi, says) in [
        ("arm64", x86.clone(), "is not an arm64 EFI binary (PE machine type 0x8664)"),
        ("x86_64", arm.clone(), "is not an x86_64 EFI binary (PE machine type 0xaa64)"),
        ("x86_64", dir.join("not-pe.efi"), "is not an EFI binary (no PE header)"),
    ] {
        let out = build(arch, &efi);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(says), "{arch} {}: {err}", efi.display());
        assert!(!image.exists(), "nothing written for a refused binary");
    }
    let loader_warning =
        "carries iPXE's own bzImage loader, which starts a kernel without the firmware's signature check";
    let out = build("x86_64", &x86);
    assert!(out.status.success() && !String::from_utf8_lossy(&out.stderr).contains("warning"));
    let out = build("x86_64", &dir.join("own-loader.efi"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.starts_with("warning: ") && err.contains(loader_warning), "{err}");
    std::fs::remove_file(&image).unwrap();
    let out = build("sparc", &x86);
    assert_eq!(out.status.code(), Some(2), "an unknown --arch is a usage error");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Runs a command-line tool that must succeed.
fn tool(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn kernel_signatures_are_recorded_and_a_channel_can_require_them() {
    let t = Target::embedded("cli-signed");
    let dir = t.data.with_extension("keys");
    std::fs::create_dir_all(&dir).unwrap();
    let p = |name: &str| dir.join(name).to_str().unwrap().to_string();
    // A farm's db key, another vendor's key, and a farm CA with a signing key it issued.
    for (name, subject) in [("db", "/CN=Farm db"), ("other", "/CN=Other vendor"), ("ca", "/CN=Farm signing CA")] {
        let (key, crt) = (p(&format!("{name}.key")), p(&format!("{name}.crt")));
        tool(
            "openssl",
            &[
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-subj", subject, "-keyout", &key,
                "-out", &crt,
            ],
        );
    }
    tool(
        "openssl",
        &[
            "req",
            "-new",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=Farm kernel signer",
            "-keyout",
            &p("leaf.key"),
            "-out",
            &p("leaf.csr"),
        ],
    );
    tool(
        "openssl",
        &[
            "x509",
            "-req",
            "-in",
            &p("leaf.csr"),
            "-CA",
            &p("ca.crt"),
            "-CAkey",
            &p("ca.key"),
            "-days",
            "30",
            "-out",
            &p("leaf.crt"),
        ],
    );
    std::fs::write(p("unsigned.efi"), minimal_pe(0x8664)).unwrap();
    for (signer, out) in [("db", "signed.efi"), ("other", "other.efi"), ("leaf", "leaf.efi")] {
        tool(
            "sbsign",
            &[
                "--key",
                &p(&format!("{signer}.key")),
                "--cert",
                &p(&format!("{signer}.crt")),
                "--output",
                &p(out),
                &p("unsigned.efi"),
            ],
        );
    }
    // Signed, then one byte of its code changed: what firmware refuses.
    let mut tampered = std::fs::read(p("signed.efi")).unwrap();
    tampered[0x210] ^= 0xff;
    std::fs::write(p("tampered.efi"), tampered).unwrap();
    std::fs::write(p("bzimage"), b"not a PE image at all").unwrap();
    let initrd = t.file("initrd", b"initrd");
    for (release, kernel) in [
        ("r-signed", "signed.efi"),
        ("r-unsigned", "unsigned.efi"),
        ("r-other", "other.efi"),
        ("r-leaf", "leaf.efi"),
        ("r-tampered", "tampered.efi"),
        ("r-notpe", "bzimage"),
    ] {
        t.ok(&["release", "create", release, "--kernel", &p(kernel), "--initrd", s(&initrd)]);
    }
    let signature = |release: &str| {
        let manifest: serde_json::Value = serde_json::from_str(&t.ok(&["release", "show", release])).unwrap();
        manifest["arches"]["x86_64"]["kernel_signature"].clone()
    };
    let der_sha256 = |crt: &str| {
        let pem = std::fs::read_to_string(p(crt)).unwrap();
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        use base64::Engine;
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
            base64::engine::general_purpose::STANDARD.decode(b64).unwrap(),
        ))
    };
    let signed = signature("r-signed");
    assert_eq!(signed["status"], "signed", "{signed}");
    assert_eq!(signed["signers"][0]["subject"], "CN=Farm db", "{signed}");
    assert_eq!(signed["signers"][0]["sha256"], der_sha256("db.crt"), "{signed}");
    assert_eq!(signature("r-leaf")["signers"][0]["issuer"], "CN=Farm signing CA");
    assert_eq!(signature("r-unsigned")["status"], "unsigned");
    let tampered = signature("r-tampered");
    assert_eq!(tampered["status"], "invalid", "{tampered}");
    assert!(tampered["reason"].as_str().unwrap().contains("changed after it was signed"), "{tampered}");
    assert_eq!(signature("r-notpe")["status"], "not_pe");

    // Nothing about signatures blocks a channel that did not ask for them.
    t.ok(&["channel", "promote", "sb", "r-unsigned"]);
    t.ok(&["channel", "promote", "sb", "r-notpe"]);
    // Asked for: every release that is not signed by the farm's db key is refused, named.
    let db = p("db.crt");
    for (release, says) in [
        ("r-unsigned", "release r-unsigned's x86_64 kernel is unsigned, not by CN=Farm db"),
        ("r-other", "release r-other's x86_64 kernel is signed by CN=Other vendor"),
        ("r-tampered", "release r-tampered's x86_64 kernel has a signature that does not hold"),
        ("r-notpe", "release r-notpe's x86_64 kernel is not a PE image"),
    ] {
        let err = t.fails(&["channel", "promote", "sb", release, "--require-signed", &db]);
        assert!(err.contains("channel sb requires signed kernels") && err.contains(says), "{release}: {err}");
    }
    let current = |channel: &str| {
        let history = t.ok(&["channel", "history", channel]);
        let line = history.lines().find(|l| l.ends_with("(current)")).unwrap_or_default().to_string();
        line.split_whitespace().next().unwrap_or_default().to_string()
    };
    assert_eq!(current("sb"), "r-notpe");
    t.ok(&["channel", "promote", "sb", "r-signed", "--require-signed", &db]);
    let history = t.ok(&["channel", "history", "sb"]);
    assert!(history.contains("kernels must be signed by CN=Farm db (sha256 "), "{history}");
    // The requirement stays with the channel: later promotes and rollbacks are checked too.
    let err = t.fails(&["channel", "promote", "sb", "r-unsigned"]);
    assert!(err.contains("r-unsigned's x86_64 kernel is unsigned"), "{err}");
    let err = t.fails(&["channel", "rollback", "sb"]);
    assert!(err.contains("r-notpe's x86_64 kernel is not a PE image") && err.contains("not rolled back"), "{err}");
    // A pin cannot hand a gateway of that channel what its firmware would refuse.
    t.ok(&["ca", "init"]);
    t.ok(&["gateway", "enroll", "sb-gw", "--channel", "sb"]);
    let err = t.fails(&["gateway", "pin", "sb-gw", "r-unsigned"]);
    assert!(
        err.contains("gateway sb-gw follows channel sb, which requires signed kernels") && err.contains("is unsigned"),
        "{err}"
    );
    t.ok(&["gateway", "pin", "sb-gw", "r-signed"]);
    // A certificate a CA in db issued is accepted under that CA; the CA's own key is not needed.
    t.ok(&["channel", "promote", "farm", "r-leaf", "--require-signed", &p("ca.crt")]);
    assert!(t.fails(&["channel", "promote", "farm", "r-signed"]).contains("is signed by CN=Farm db"));
    // Dropped on request.
    t.ok(&["channel", "promote", "sb", "r-unsigned", "--allow-unsigned"]);
    assert!(!t.ok(&["channel", "history", "sb"]).contains("must be signed"));

    // An unreadable certificate is a usage error, and nothing is changed.
    std::fs::write(p("garbage.crt"), b"-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
    for cert in [p("missing.crt"), p("garbage.crt"), p("db.key")] {
        let out = t.run(&["channel", "promote", "sb", "r-signed", "--require-signed", &cert]);
        assert_eq!(out.status.code(), Some(2), "{cert}: {}", String::from_utf8_lossy(&out.stderr));
    }
    assert_eq!(current("sb"), "r-unsigned");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn serve_reads_a_config_file_below_flags_and_refuses_a_bad_one_before_touching_disk() {
    let dir = temp_dir("cli-config");
    std::fs::create_dir_all(&dir).unwrap();
    let data = dir.join("data");
    let config = dir.join("serve.toml");
    let run = |args: &[&str]| {
        Command::new(BIN).args(["serve", "--config", s(&config)]).args(args).stdin(Stdio::null()).output().unwrap()
    };
    std::fs::write(
        &config,
        format!(
            "# a farm's serve settings\nmax-connections = 300\nlisten = [\"127.0.0.1:18443\", \"[::1]:18443\"]\n\nsecrets-http = true\nfallback-after = 4\ndata = \"{}\"\n",
            data.display()
        ),
    )
    .unwrap();
    let out = run(&["--print-config", "--fallback-after", "5"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    let at = |line: usize| format!("# {}:{line}", config.display());
    for want in [
        format!("max-connections = 300  {}", at(2)),
        format!("listen = [\"127.0.0.1:18443\", \"[::1]:18443\"]  {}", at(3)),
        format!("secrets-http = true  {}", at(5)),
        // A flag wins over the file.
        "fallback-after = 5  # flag".to_string(),
        "presign-ttl = 300  # default".to_string(),
        format!("data = \"{}\"  {}", data.display(), at(7)),
    ] {
        assert!(printed.lines().any(|l| l == want), "missing {want:?} in\n{printed}");
    }
    // The environment wins over the file too.
    let env = run(&["--print-config"]);
    assert!(String::from_utf8_lossy(&env.stdout).contains(&format!("data = \"{}\"  {}", data.display(), at(7))));
    let env = Command::new(BIN)
        .env("IPXE_EDGE_DATA", "/srv/elsewhere")
        .args(["serve", "--config", s(&config), "--print-config"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&env.stdout).lines().any(|l| l == "data = \"/srv/elsewhere\"  # environment"));
    // The printout is itself a config file serve takes.
    std::fs::write(dir.join("printed.toml"), &printed).unwrap();
    let again =
        Command::new(BIN).args(["serve", "--config", s(&dir.join("printed.toml")), "--print-config"]).output().unwrap();
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    assert!(String::from_utf8_lossy(&again.stdout).contains("fallback-after = 5  # "));

    for (body, says) in [
        ("max-conections = 3\n", "serve.toml:1: unknown key \"max-conections\""),
        ("\nmax-connections = 0\n", "serve.toml:2: max-connections: invalid value '0'"),
        ("listen = \"not an address\"\n", "serve.toml:1: listen: invalid value 'not an address'"),
        ("secrets-http = \"yes\"\n", "serve.toml:1: secrets-http: expected true or false, found string"),
        ("presign-ttl = [1, 2]\n", "serve.toml:1: presign-ttl: takes one value, not a list"),
        ("config = \"other.toml\"\n", "serve.toml:1: unknown key \"config\""),
        ("max-connections = \n", "serve.toml: TOML parse error at line 1"),
    ] {
        std::fs::write(&config, body).unwrap();
        let out = run(&[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{body:?}: {err}");
        assert!(err.lines().count() == 1 && err.contains(says), "{body:?}: {err}");
        assert!(!data.exists(), "nothing is written for a refused config");
    }
    // The shipped example lists every setting at its default, commented out.
    let defaults = Command::new(BIN).args(["serve", "--print-config"]).output().unwrap();
    let example = include_str!("../../../infra/serve.toml");
    for line in String::from_utf8_lossy(&defaults.stdout).lines() {
        let line = line.trim_end_matches("  # default").trim_start_matches("# ");
        assert!(example.lines().any(|l| l == format!("# {line}")), "infra/serve.toml lacks {line:?}");
    }
    let out = Command::new(BIN).args(["serve", "--config", s(&dir.join("missing.toml"))]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
    let _ = std::fs::remove_dir_all(&dir);
}
