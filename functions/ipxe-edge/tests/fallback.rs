//! Boot outcomes on a running `ipxe-edge serve`: boots recorded in the embedded journal, the
//! automatic fallback after failed boots, the check-in on the secrets listener, and the
//! operator commands that show and reset it all.

use ipxe_edge_tests::*;
use serde_json::Value;
use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_ipxe-edge");

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn edge(data: &Path, args: &[&str]) -> String {
    let out = Command::new(BIN).arg("--data").arg(data).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ipxe-edge {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn edge_json(data: &Path, args: &[&str]) -> Value {
    let text = edge(data, args);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?}: {e}: {text}"))
}

/// Creates a release whose kernel is `KERNEL-<id>`; returns the kernel's digest.
fn release(data: &Path, id: &str, extra: &[&str]) -> String {
    let dir = data.with_extension(format!("assets-{id}"));
    std::fs::create_dir_all(&dir).unwrap();
    let kernel = format!("KERNEL-{id}");
    std::fs::write(dir.join("vmlinuz"), &kernel).unwrap();
    std::fs::write(dir.join("initrd"), format!("INITRD-{id}")).unwrap();
    let (k, i) = (dir.join("vmlinuz"), dir.join("initrd"));
    let mut args = vec!["release", "create", id, "--kernel", k.to_str().unwrap(), "--initrd", i.to_str().unwrap()];
    args.extend_from_slice(extra);
    edge(data, &args);
    sha256_hex(kernel.as_bytes())
}

struct Gateway {
    client: reqwest::Client,
    secrets: reqwest::Client,
    url: String,
}

impl Gateway {
    fn new(serve: &ServeProcess) -> Self {
        let ca = read(&serve.data.join("pki/ca.crt"));
        let mut identity = read(&serve.data.join("pki/gateways/demo.crt"));
        identity.extend(read(&serve.data.join("pki/gateways/demo.key")));
        Gateway { client: https_client(&ca, Some(&identity)), secrets: https_client(&ca, None), url: serve.boot_url() }
    }

    async fn boot(&self) -> String {
        let response = self
            .client
            .get(format!("{}?buildarch=x86_64&platform=efi&mac=52:54:00:aa:bb:cc", self.url))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.text().await.unwrap()
    }

    async fn redeem(&self, script: &str) -> u16 {
        let start = script.find("b2c.extra_args_url=\"").expect("secrets URL") + "b2c.extra_args_url=\"".len();
        let url = &script[start..start + script[start..].find('"').unwrap()];
        self.secrets.get(url).send().await.unwrap().status().as_u16()
    }

    async fn checkin(&self, script: &str) -> u16 {
        let start = script.find("checkin=").expect("check-in URL") + "checkin=".len();
        let url = script[start..].split_whitespace().next().unwrap();
        self.secrets.post(url).send().await.unwrap().status().as_u16()
    }
}

#[tokio::test]
async fn two_failed_boots_fall_back_and_a_promote_or_a_retry_clears_it() {
    let data = temp_dir("fallback");
    let serve = ServeProcess::start(BIN, &data, &[]).expect("serve starts");
    let a = release(&data, "rel-a", &[]);
    let b = release(&data, "rel-b", &[]);
    let template = data.with_extension("checkin.ipxe");
    std::fs::write(
        &template,
        "#!ipxe\nkernel ${kernel_url} ${cmdline}${secrets_arg} checkin=${checkin_url}\ninitrd ${initrd_url}\nboot\n",
    )
    .unwrap();
    let c = release(&data, "rel-c", &["--health-gate", "checkin", "--template", template.to_str().unwrap()]);
    edge(&data, &["channel", "promote", "stable", "rel-a"]);
    let gw = Gateway::new(&serve);

    let script = gw.boot().await;
    assert!(script.contains(&a));
    assert_eq!(gw.redeem(&script).await, 200);
    edge(&data, &["channel", "promote", "stable", "rel-b"]);
    assert!(gw.boot().await.contains(&b));
    assert!(gw.boot().await.contains(&b));
    let third = gw.boot().await;
    assert!(third.contains(&a), "third boot after two failures is the last known good release: {third}");
    assert_eq!(gw.redeem(&third).await, 200);

    let logs = serve.logs();
    let line = logs
        .lines()
        .find(|l| l.contains("\"boot_event\":\"fallback\""))
        .unwrap_or_else(|| panic!("no fallback line: {logs}"));
    assert!(line.contains("\"from\":\"rel-b\"") && line.contains("\"to\":\"rel-a\""), "{line}");

    let status = edge_json(&data, &["gateway", "status", "demo", "--json"]);
    assert_eq!(status["target"], "rel-b");
    assert_eq!(status["fallback"], "rel-a");
    assert_eq!(status["consecutive_failures"], 2);
    assert_eq!(status["last_known_good"]["release"], "rel-a");
    let history = edge_json(&data, &["gateway", "history", "demo", "--json", "--limit", "3"]);
    let rows: Vec<(String, String, String)> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["release"].as_str().unwrap().into(),
                b["reason"].as_str().unwrap().into(),
                b["outcome"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            ("rel-a".into(), "fallback".into(), "reached_linux".into()),
            ("rel-b".into(), "channel".into(), "failed".into()),
            ("rel-b".into(), "channel".into(), "failed".into())
        ]
    );
    assert_eq!(history[0]["mac"], "52:54:00:aa:bb:cc");
    assert!(history[0]["time_to_linux_s"].is_u64());
    let table = edge(&data, &["gateway", "history", "demo"]);
    assert!(table.contains("failed (rebooted)") && table.contains("fallback"), "{table}");
    let canary = edge_json(&data, &["channel", "status", "stable", "--json"]);
    assert_eq!(
        (canary["release"].as_str(), canary["booted"].as_u64(), canary["failed"].as_u64()),
        (Some("rel-b"), Some(1), Some(1))
    );

    // The operator retries: the target is served again.
    assert!(edge(&data, &["gateway", "retry", "demo"]).contains("fallback to rel-a cleared"));
    assert!(gw.boot().await.contains(&b));

    // A promote clears it too; a release with a check-in gate passes only with the check-in.
    edge(&data, &["channel", "promote", "stable", "rel-c", "--fallback-after", "1"]);
    let script = gw.boot().await;
    assert!(script.contains(&c));
    assert_eq!(gw.redeem(&script).await, 200);
    assert_eq!(edge_json(&data, &["gateway", "status", "demo", "--json"])["latest_boot"]["outcome"], "reached_linux");
    assert_eq!(gw.checkin(&script).await, 204);
    assert_eq!(gw.checkin(&script).await, 410, "a check-in is single use");
    let status = edge_json(&data, &["gateway", "status", "demo", "--json"]);
    assert_eq!(
        (status["last_known_good"]["release"].as_str(), status["fallback_after"].as_u64()),
        (Some("rel-c"), Some(1))
    );
    assert_eq!(status["latest_boot"]["outcome"], "healthy");
    assert!(serve.terminate().success());
}

#[tokio::test]
async fn check_ins_of_disabled_or_revoked_gateways_are_refused_and_change_nothing() {
    let data = temp_dir("checkin-refused");
    let serve = ServeProcess::start(BIN, &data, &[]).expect("serve starts");
    let template = data.with_extension("checkin.ipxe");
    std::fs::write(
        &template,
        "#!ipxe\nkernel ${kernel_url} ${cmdline}${secrets_arg} checkin=${checkin_url}\ninitrd ${initrd_url}\nboot\n",
    )
    .unwrap();
    release(&data, "rel-c", &["--health-gate", "checkin", "--template", template.to_str().unwrap()]);
    edge(&data, &["channel", "promote", "stable", "rel-c"]);
    let gw = Gateway::new(&serve);
    let script = gw.boot().await;
    assert_eq!(gw.redeem(&script).await, 200);
    let outcome =
        |data: &Path| edge_json(data, &["gateway", "status", "demo", "--json"])["latest_boot"]["outcome"].clone();
    assert_eq!(outcome(&data), "reached_linux");

    edge(&data, &["gateway", "disable", "demo"]);
    assert_eq!(gw.checkin(&script).await, 403, "a disabled gateway's check-in");
    assert_eq!(outcome(&data), "reached_linux", "a refused check-in records nothing");
    edge(&data, &["gateway", "enable", "demo"]);
    let script = gw.boot().await;
    assert_eq!(gw.redeem(&script).await, 200);
    edge(&data, &["gateway", "revoke", "demo"]);
    assert_eq!(gw.checkin(&script).await, 403, "a revoked gateway's check-in");
    let status = edge_json(&data, &["gateway", "status", "demo", "--json"]);
    assert_eq!(status["latest_boot"]["outcome"], "reached_linux", "{status}");
    assert!(
        status["last_known_good"].is_null() || status["last_known_good"]["release"] != "rel-c",
        "no check-in made rel-c good: {status}"
    );
    let logs = serve.logs();
    assert_eq!(logs.matches("\"security_event\":\"gateway_not_enabled\"").count(), 2, "{logs}");
    assert!(serve.terminate().success());
}
