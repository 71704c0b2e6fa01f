//! Certificate renewal on `serve`, end to end: a gateway enrolled for 30 days shows up as
//! expiring, its boots are logged `cert_expiring`; `gateway renew` enrolls a new certificate
//! and stages it; the boot's secret carries `${renewal_url}`, which hands the renewal over once
//! (410 after, 403 forged); the new certificate boots the same gateway and release and is
//! logged `cert_renewed`; the old one boots until it is retired. The installer script puts a
//! fetched renewal on the FAT ESP of an `image build` disk, and `serve --auto-renew` renews by
//! itself.

use ipxe_edge_tests::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_ipxe-edge");

fn edge(data: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN).arg("--data").arg(data).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn edge_ok(data: &Path, args: &[&str]) -> String {
    let (ok, out, err) = edge(data, args);
    assert!(ok, "ipxe-edge {args:?}: {out}{err}");
    out
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn identity(cert: &Path, key: &Path) -> Vec<u8> {
    let mut pem = read(cert);
    pem.extend(read(key));
    pem
}

fn installer() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../boot-assets/install-renewal.sh")
}

/// Boots, redeems the boot's secret and returns (boot script, secret).
async fn boot_and_redeem(client: &reqwest::Client, serve: &ServeProcess) -> (String, String) {
    let response = client.get(format!("{}?buildarch=x86_64", serve.boot_url())).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let script = response.text().await.unwrap();
    let start = script.find("b2c.extra_args_url=\"").expect("secrets URL") + "b2c.extra_args_url=\"".len();
    let url = &script[start..start + script[start..].find('"').unwrap()];
    let response = client.get(url).send().await.unwrap();
    assert_eq!(response.status(), 200, "{url}");
    (script, response.text().await.unwrap())
}

fn renewal_url(secret: &str) -> String {
    let start = secret.find("renew=").expect("renew=") + "renew=".len();
    secret[start..].split_whitespace().next().unwrap_or("").to_string()
}

/// The kernel's object key in a boot script (the release's asset).
fn kernel_key(script: &str) -> String {
    let line = script.lines().find(|l| l.starts_with("kernel ")).expect("kernel line");
    line.split("/ipxe-edge/").nth(1).unwrap().split('?').next().unwrap().to_string()
}

fn hex_colons(der: &[u8]) -> String {
    der.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

fn cert_der(cert: &Path) -> Vec<u8> {
    ipxe_edge_core::domain::identity::pem_certificates(&read(cert)).unwrap().remove(0)
}

fn fingerprint(cert: &Path) -> String {
    sha256_hex(&cert_der(cert))
}

#[tokio::test]
async fn a_renewal_is_handed_over_once_and_both_certificates_boot_until_the_old_is_retired() {
    let data = temp_dir("renewal");
    let metrics_port = free_port();
    let serve = ServeProcess::start(
        BIN,
        &data,
        &["--metrics-listen", &format!("127.0.0.1:{metrics_port}"), "--certificate-check-interval", "1"],
    )
    .expect("serve starts");
    let ca_pem = read(&data.join("pki/ca.crt"));
    edge_ok(&data, &["gateway", "enroll", "renew-gw", "--days", "30"]);
    let secrets = data.with_extension("secrets");
    std::fs::write(&secrets, "token=abc renew=${renewal_url}").unwrap();
    let (ok, _, err) = edge(&data, &["gateway", "set-secrets", "renew-gw", "--file", secrets.to_str().unwrap()]);
    assert!(ok && !err.contains("warning"), "${{renewal_url}} is a known variable: {err}");
    let gw_dir = data.join("pki/gateways");
    let old_fp = fingerprint(&gw_dir.join("renew-gw.crt"));

    // Expiry in sight: list, its filter for scripts, show, the boot's log line and the gauge.
    let listed = edge_ok(&data, &["gateway", "list"]);
    let row = listed.lines().find(|l| l.starts_with("renew-gw ")).unwrap();
    assert!(row.contains(" 29 ") || row.contains(" 30 "), "days left: {listed}");
    let expiring = edge_ok(&data, &["gateway", "list", "--expiring-within", "60d"]);
    assert!(expiring.contains("renew-gw") && !expiring.contains("demo "), "{expiring}");
    let json: Value =
        serde_json::from_str(edge_ok(&data, &["gateway", "list", "--expiring-within", "60d", "--json"]).trim())
            .unwrap();
    assert_eq!(json["name"], "renew-gw");
    assert_eq!(json["fingerprint"], old_fp.as_str());
    assert!((29..=30).contains(&json["days_left"].as_i64().unwrap()), "{json}");
    assert!(edge_ok(&data, &["gateway", "list", "--expiring-within", "10d"]).lines().count() == 1, "header only");
    let old_client = https_client(&ca_pem, Some(&identity(&gw_dir.join("renew-gw.crt"), &gw_dir.join("renew-gw.key"))));
    let (old_script, secret) = boot_and_redeem(&old_client, &serve).await;
    assert_eq!(secret, "token=abc renew=", "nothing pending yet");
    let logs = serve.logs();
    let line = logs.lines().find(|l| l.contains("\"cert_expiring\"")).expect("cert_expiring logged");
    assert!(
        line.contains("\"gateway\":\"renew-gw\"")
            && (line.contains("\"days_left\":29") || line.contains("\"days_left\":30")),
        "{line}"
    );
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let metrics = reqwest::get(format!("http://127.0.0.1:{metrics_port}/metrics")).await.unwrap().text().await.unwrap();
    assert!(metrics.contains("ipxe_edge_gateway_certificates_expiring 1"), "{metrics}");
    assert!(metrics.contains("ipxe_edge_cert_expiring_boots_total 1"), "{metrics}");

    // Renew: the new certificate is enrolled and staged; the files move aside.
    let out = edge_ok(&data, &["gateway", "renew", "renew-gw", "--boot-url", &serve.boot_url()]);
    assert!(out.contains("renewed gateway renew-gw"), "{out}");
    let new_fp = fingerprint(&gw_dir.join("renew-gw.crt"));
    assert_ne!(new_fp, old_fp);
    assert!(gw_dir.join(format!("renew-gw.{old_fp}.crt")).exists());
    let (ok, _, err) = edge(&data, &["gateway", "renew", "renew-gw", "--boot-url", &serve.boot_url()]);
    assert!(!ok && err.contains("pending"), "a second renewal needs --replace: {err}");
    let shown = edge_ok(&data, &["gateway", "show", "renew-gw"]);
    assert!(shown.contains(&old_fp) && shown.contains(&new_fp) && shown.contains("renewal: pending"), "{shown}");
    let listed = edge_ok(&data, &["gateway", "list"]);
    assert!(listed.lines().any(|l| l.starts_with("renew-gw ") && l.ends_with("pending")), "{listed}");

    // The secret now carries a one-time URL on the secrets listener.
    let (_, secret) = boot_and_redeem(&old_client, &serve).await;
    let url = renewal_url(&secret);
    assert!(url.starts_with(&format!("https://127.0.0.1:{}/renewal/", serve.secrets_port)), "{secret}");
    let anonymous = https_client(&ca_pem, None);
    // One character of the MAC changed: not the last one, whose low bits may be padding (a
    // token with non-zero padding bits does not decode: 400, not 403).
    let mut chars: Vec<char> = url.chars().collect();
    let at = chars.len() - 2;
    chars[at] = if chars[at] == 'A' { 'B' } else { 'A' };
    let forged: String = chars.into_iter().collect();
    assert_eq!(anonymous.get(&forged).send().await.unwrap().status(), 403);
    assert_eq!(anonymous.get(format!("{url}?format=zip")).send().await.unwrap().status(), 400);
    assert_eq!(anonymous.head(&url).send().await.unwrap().status(), 405);
    let response = anonymous.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let autoexec = response.text().await.unwrap();
    assert_eq!(anonymous.get(&url).send().await.unwrap().status(), 410, "once");
    // The same file `image script` makes from the new pair.
    let script = edge_ok(&data, &["image", "script", "renew-gw", "--boot-url", &serve.boot_url()]);
    assert_eq!(autoexec, script);
    let new_der = cert_der(&gw_dir.join("renew-gw.crt"));
    assert!(autoexec.contains(&format!("set cert:hex {}\n", hex_colons(&new_der))));
    let (_, secret) = boot_and_redeem(&old_client, &serve).await;
    assert_eq!(secret, "token=abc renew=", "handed over: nothing pending");

    // The new certificate boots the same gateway and release; the first boot is logged.
    let new_client = https_client(&ca_pem, Some(&identity(&gw_dir.join("renew-gw.crt"), &gw_dir.join("renew-gw.key"))));
    let answer = new_client.get(serve.boot_url()).send().await.unwrap();
    assert_eq!(answer.headers()["x-ipxe-edge-gateway"], "renew-gw");
    assert_eq!(answer.headers()["x-ipxe-edge-fingerprint"], new_fp.as_str(), "the answer names the certificate used");
    let (new_script, secret) = boot_and_redeem(&new_client, &serve).await;
    assert_eq!(kernel_key(&new_script), kernel_key(&old_script));
    assert!(secret.starts_with("token=abc"));
    let logs = serve.logs();
    let renewed = logs.lines().filter(|l| l.contains("cert_renewed")).collect::<Vec<_>>();
    assert_eq!(renewed.len(), 1, "logged at the first boot with it only: {logs}");
    assert!(
        renewed[0].contains("\"gateway\":\"renew-gw\"") && renewed[0].contains(&new_fp) && renewed[0].contains(&old_fp),
        "{}",
        renewed[0]
    );
    boot_and_redeem(&new_client, &serve).await;
    assert_eq!(serve.logs().lines().filter(|l| l.contains("cert_renewed")).count(), 1, "only the first boot");
    let history = edge_ok(&data, &["gateway", "history", "renew-gw", "--json"]);
    assert!(history.contains(&new_fp) && history.contains(&old_fp), "history names the certificate used: {history}");

    // The old one boots until retired; then only the new one does.
    assert_eq!(old_client.get(serve.boot_url()).send().await.unwrap().status(), 200);
    let out = edge_ok(&data, &["gateway", "revoke-cert", "renew-gw", &old_fp[..20]]);
    assert!(out.contains("retired"), "{out}");
    assert_eq!(old_client.get(serve.boot_url()).send().await.unwrap().status(), 403);
    assert_eq!(new_client.get(serve.boot_url()).send().await.unwrap().status(), 200);
    let (ok, _, err) = edge(&data, &["gateway", "revoke-cert", "renew-gw", &new_fp]);
    assert!(!ok && err.contains("only certificate"), "{err}");

    // A second renewal, fetched as PEM by the installer's peer: certificate and key.
    edge_ok(&data, &["gateway", "renew", "renew-gw", "--boot-url", &serve.boot_url()]);
    let (_, secret) = boot_and_redeem(&new_client, &serve).await;
    let pem = anonymous.get(format!("{}?format=pem", renewal_url(&secret))).send().await.unwrap().text().await.unwrap();
    assert!(pem.contains("BEGIN CERTIFICATE") && pem.contains("PRIVATE KEY"), "PEM pair");
    assert_eq!(pem.as_bytes(), identity(&gw_dir.join("renew-gw.crt"), &gw_dir.join("renew-gw.key")).as_slice());

    // A third, installed by the gateway's script on an `image build` disk through mtools.
    let efi = data.with_extension("efi");
    std::fs::write(&efi, minimal_pe(0x8664)).unwrap();
    let image = data.with_extension("img");
    edge_ok(
        &data,
        &[
            "image",
            "build",
            "renew-gw",
            "--boot-url",
            &serve.boot_url(),
            "--out",
            image.to_str().unwrap(),
            "--efi",
            efi.to_str().unwrap(),
        ],
    );
    let before = mtype(&image, "EFI/BOOT/autoexec.ipxe");
    edge_ok(&data, &["gateway", "renew", "renew-gw", "--boot-url", &serve.boot_url()]);
    let (_, secret) = boot_and_redeem(&new_client, &serve).await;
    let ca_file = data.join("pki/ca.crt");
    let out = Command::new("sh")
        .arg(installer())
        .args(["--url", &renewal_url(&secret), "--device", &format!("{}@@1M", image.display())])
        .env("CURL_CA_BUNDLE", &ca_file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(mtype(&image, "EFI/BOOT/autoexec.ipxe.bak"), before, "old kept as a backup");
    let installed = mtype(&image, "EFI/BOOT/autoexec.ipxe");
    assert_eq!(installed, edge_ok(&data, &["image", "script", "renew-gw", "--boot-url", &serve.boot_url()]));
    assert_ne!(installed, before);
    assert!(!serve.logs().contains("BEGIN") && !serve.logs().contains("privkey"), "no key material in the logs");
    serve.terminate();
}

/// A file inside the ESP of a disk image, through mtools.
fn mtype(image: &Path, path: &str) -> String {
    esp_read(&["mtype"], image, path)
}

#[test]
fn the_installer_replaces_atomically_keeps_a_backup_and_refuses_what_is_not_an_identity() {
    let esp = temp_dir("renewal-esp");
    let boot = esp.join("EFI/BOOT");
    std::fs::create_dir_all(&boot).unwrap();
    std::fs::write(boot.join("autoexec.ipxe"), "#!ipxe\nset cert:hex 01\nset privkey:hex 02\nchain old\n").unwrap();
    let run = |file: &str| {
        let new = esp.with_extension("new");
        std::fs::write(&new, file).unwrap();
        Command::new("sh")
            .arg(installer())
            .args(["--file", new.to_str().unwrap(), "--esp", esp.to_str().unwrap()])
            .output()
            .unwrap()
    };
    for bad in ["<html>error</html>", "#!ipxe\nchain http://evil/\n", "#!ipxe\nset cert:hex 01\n", ""] {
        let out = run(bad);
        assert!(!out.status.success(), "{bad:?} installed");
        assert!(String::from_utf8_lossy(&out.stderr).contains("nothing installed"), "{bad:?}");
        assert_eq!(
            std::fs::read_to_string(boot.join("autoexec.ipxe")).unwrap(),
            "#!ipxe\nset cert:hex 01\nset privkey:hex 02\nchain old\n"
        );
        assert!(!boot.join("autoexec.ipxe.bak").exists());
    }
    let out = run("#!ipxe\nset cert:hex 0a:0b\nset privkey:hex 0c\nchain new\n");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        std::fs::read_to_string(boot.join("autoexec.ipxe")).unwrap(),
        "#!ipxe\nset cert:hex 0a:0b\nset privkey:hex 0c\nchain new\n"
    );
    assert_eq!(
        std::fs::read_to_string(boot.join("autoexec.ipxe.bak")).unwrap(),
        "#!ipxe\nset cert:hex 01\nset privkey:hex 02\nchain old\n"
    );
    assert!(!boot.join("autoexec.ipxe.new").exists(), "no leftovers");
    let missing =
        Command::new("sh").arg(installer()).args(["--file", "/nonexistent", "--esp", "/nonexistent"]).output().unwrap();
    assert!(!missing.status.success());
}

#[tokio::test]
async fn serve_auto_renews_gateways_entering_the_window() {
    let data = temp_dir("auto-renew");
    // Enrolled before serve starts, 20 days left: due at serve's first look.
    edge_ok(&data, &["ca", "init"]);
    edge_ok(&data, &["gateway", "enroll", "soon-gw", "--days", "20"]);
    let old_fp = fingerprint(&data.join("pki/gateways/soon-gw.crt"));
    let serve = ServeProcess::start(
        BIN,
        &data,
        &["--auto-renew", "--certificate-check-interval", "1", "--retire-old-after-first-boot"],
    )
    .expect("serve starts");
    let mut renewed = false;
    for _ in 0..50 {
        if serve.logs().contains("gateway certificate renewed") {
            renewed = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(renewed, "{}", serve.logs());
    let json: Value = serde_json::from_str(
        edge_ok(&data, &["gateway", "list", "--json"]).lines().find(|l| l.contains("soon-gw")).unwrap(),
    )
    .unwrap();
    assert_eq!(json["renewal_pending"], true, "{json}");
    let new_fp = fingerprint(&data.join("pki/gateways/soon-gw.crt"));
    assert_ne!(new_fp, old_fp);
    // Not renewed twice while the first renewal waits.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_eq!(serve.logs().matches("gateway certificate renewed").count(), 1);

    // --retire-old-after-first-boot: the first boot with the new one retires the old one.
    let ca_pem = read(&data.join("pki/ca.crt"));
    let dir = data.join("pki/gateways");
    let old = https_client(
        &ca_pem,
        Some(&identity(&dir.join(format!("soon-gw.{old_fp}.crt")), &dir.join(format!("soon-gw.{old_fp}.key")))),
    );
    let new = https_client(&ca_pem, Some(&identity(&dir.join("soon-gw.crt"), &dir.join("soon-gw.key"))));
    assert_eq!(old.get(serve.boot_url()).send().await.unwrap().status(), 200);
    assert_eq!(new.get(serve.boot_url()).send().await.unwrap().status(), 200);
    assert_eq!(old.get(serve.boot_url()).send().await.unwrap().status(), 403, "retired at the new one's first boot");
    let logs = serve.logs();
    assert!(
        logs.lines().any(|l| l.contains("cert_renewed") && l.contains(&format!("\"retired\":\"{old_fp}\""))),
        "{logs}"
    );
    serve.terminate();
}

/// The pair a gateway boots with survives every way of renewing it: `--replace` over an
/// unfetched renewal, and four runs started at once (with and without `--replace`). Backups are
/// named by the full fingerprint of the certificate they hold and never overwritten; of runs
/// without `--replace`, one renews and the others find its renewal pending.
#[test]
fn renewals_never_lose_the_pair_in_use() {
    let data = temp_dir("renew-keep");
    edge_ok(&data, &["ca", "init"]);
    edge_ok(&data, &["gateway", "enroll", "gw", "--days", "30"]);
    let dir = data.join("pki/gateways");
    let (cert, key) = (dir.join("gw.crt"), dir.join("gw.key"));
    let in_use = (read(&cert), read(&key));
    let fp0 = fingerprint(&cert);
    let url = "https://boot.example.net/boot.ipxe";
    let concurrently = |extra: &[&str]| -> Vec<(bool, String, String)> {
        let runs: Vec<_> = (0..4)
            .map(|_| {
                let mut args = vec!["gateway", "renew", "gw", "--boot-url", url];
                args.extend_from_slice(extra);
                Command::new(BIN)
                    .arg("--data")
                    .arg(&data)
                    .args(&args)
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        runs.into_iter()
            .map(|child| {
                let out = child.wait_with_output().unwrap();
                (
                    out.status.success(),
                    String::from_utf8_lossy(&out.stdout).into_owned(),
                    String::from_utf8_lossy(&out.stderr).into_owned(),
                )
            })
            .collect()
    };
    let kept_pair_is_intact = |what: &str| {
        assert_eq!(read(&dir.join(format!("gw.{fp0}.crt"))), in_use.0, "{what}: the certificate in use");
        assert_eq!(read(&dir.join(format!("gw.{fp0}.key"))), in_use.1, "{what}: its key");
    };
    let certificates = || -> Vec<String> {
        let shown = edge_ok(&data, &["gateway", "show", "gw"]);
        shown
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|w| w.len() == 64 && w.bytes().all(|b| b.is_ascii_hexdigit()))
            .map(String::from)
            .collect()
    };

    // Four at once: one renews, three find the renewal pending and change nothing.
    let runs = concurrently(&[]);
    let renewed: Vec<_> = runs.iter().filter(|r| r.0).collect();
    assert_eq!(renewed.len(), 1, "{runs:?}");
    for (ok, out, err) in runs.iter().filter(|r| !r.0) {
        assert!(!ok && err.contains("pending") && !err.contains("panicked"), "{out}{err}");
    }
    kept_pair_is_intact("after four concurrent renewals");
    let fp1 = fingerprint(&cert);
    assert_ne!(fp1, fp0);
    let listed = certificates();
    assert!(
        listed.contains(&fp0) && listed.contains(&fp1) && !listed.iter().any(|f| *f != fp0 && *f != fp1),
        "two certificates: {listed:?}"
    );

    // --replace: the unfetched renewal's pair is kept under its own name and retired; the pair
    // in use is untouched.
    let out = edge_ok(&data, &["gateway", "renew", "gw", "--boot-url", url, "--replace"]);
    assert!(out.contains("replaced the unfetched renewal"), "{out}");
    kept_pair_is_intact("after --replace");
    assert!(
        dir.join(format!("gw.{fp1}.crt")).exists() && dir.join(format!("gw.{fp1}.key")).exists(),
        "the replaced pair is kept too"
    );
    let fp2 = fingerprint(&cert);
    let listed = certificates();
    assert!(listed.contains(&fp0) && listed.contains(&fp2) && !listed.contains(&fp1), "{listed:?}");

    // Four --replace at once: serialized, each replacing the one before.
    let runs = concurrently(&["--replace"]);
    assert!(runs.iter().all(|r| r.0), "{runs:?}");
    kept_pair_is_intact("after four concurrent --replace");
    let newest = fingerprint(&cert);
    let listed = certificates();
    assert_eq!(listed.len(), 2, "the pair in use and the newest renewal: {listed:?}");
    assert!(listed.contains(&fp0) && listed.contains(&newest), "{listed:?}");
    let kept = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name().to_string_lossy().starts_with("gw.") && e.file_name().to_string_lossy().ends_with(".crt")
        })
        .count();
    assert_eq!(kept, 7, "gw.crt, the pair in use and the five renewals replaced since, each under its own name");
}
