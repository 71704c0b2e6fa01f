//! Scratch storage on `serve`, end to end: the seed's `b2c.minio` / `b2c.volume` secret is
//! redeemed, and the minted key, used by curl's own SigV4 signing over HTTPS, writes, reads and
//! lists in the gateway's own space and is refused everywhere else; the next redemption
//! revokes it; a replay mints nothing; `gateway scratch` shows and revokes.

use ipxe_edge_tests::*;
use serde_json::Value;
use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_ipxe-edge");
const SEED_SECRET: &str = r#"b2c.minio="bbz,${s3_endpoint},${s3_access_key_id},${s3_access_key}" b2c.volume="perm,mirror=bbz/${s3_bucket_name},pull_on=pipeline_start,push_on=changes,overwrite,delete""#;

fn edge(data: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN).arg("--data").arg(data).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// What the secret handed the gateway.
#[derive(Debug)]
struct Minted {
    endpoint: String,
    id: String,
    secret: String,
    bucket: String,
}

fn parse(secret: &str) -> Minted {
    let minio = secret.split("b2c.minio=\"").nth(1).unwrap().split('"').next().unwrap();
    let parts: Vec<&str> = minio.split(',').collect();
    let bucket = secret.split("mirror=bbz/").nth(1).unwrap().split(',').next().unwrap();
    Minted { endpoint: parts[1].into(), id: parts[2].into(), secret: parts[3].into(), bucket: bucket.into() }
}

/// `curl --aws-sigv4` against the endpoint: (HTTP status, body).
fn s3(ca: &Path, key: &Minted, method: &str, url_path: &str, upload: Option<&Path>) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--cacert", ca.to_str().unwrap(), "--aws-sigv4", "aws:amz:us-east-1:s3", "--user", &format!("{}:{}", key.id, key.secret)]);
    // S3 wants the payload hash header, which curl before 8.x does not add by itself.
    cmd.args(["-X", method, "-w", "\n%{http_code}", "-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"]);
    if let Some(file) = upload {
        cmd.arg("-T").arg(file);
    }
    cmd.arg(format!("{}{url_path}", key.endpoint));
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (status.trim().parse().unwrap_or(0), body.to_string())
}

async fn boot_and_redeem(client: &reqwest::Client, serve: &ServeProcess) -> (String, String) {
    let script = client.get(format!("{}?buildarch=x86_64", serve.boot_url())).send().await.unwrap().text().await.unwrap();
    let start = script.find("b2c.extra_args_url=\"").expect("secrets URL") + "b2c.extra_args_url=\"".len();
    let url = script[start..start + script[start..].find('"').unwrap()].to_string();
    let response = client.get(&url).send().await.unwrap();
    assert_eq!(response.status(), 200);
    (url, response.text().await.unwrap())
}

fn scratch_json(data: &Path, gateway: &str) -> Value {
    let (ok, out, err) = edge(data, &["gateway", "scratch", gateway, "--json"]);
    assert!(ok, "{err}");
    serde_json::from_str(&out).unwrap()
}

#[tokio::test]
async fn minted_keys_open_only_their_gateways_space_and_die_at_the_next_boot() {
    let data = temp_dir("scratch");
    let serve = ServeProcess::start(BIN, &data, &[]).expect("serve starts");
    let ca = data.join("pki/ca.crt");
    let secret_file = data.with_extension("secrets");
    std::fs::write(&secret_file, SEED_SECRET).unwrap();
    let (ok, out, err) = edge(&data, &["gateway", "set-secrets", "demo", "--file", secret_file.to_str().unwrap()]);
    assert!(ok && out.contains("uses scratch storage"), "{out}{err}");
    assert!(!err.contains("warning"), "the seed's variables are all known: {err}");
    let (ok, _, _) = edge(&data, &["gateway", "enroll", "other"]);
    assert!(ok);

    let mut identity = read(&data.join("pki/gateways/demo.crt"));
    identity.extend(read(&data.join("pki/gateways/demo.key")));
    let client = https_client(&read(&ca), Some(&identity));
    let (first_url, secret) = boot_and_redeem(&client, &serve).await;
    let key = parse(&secret);
    assert_eq!(key.endpoint, format!("https://127.0.0.1:{}", serve.s3_port), "{secret}");
    assert_eq!(key.bucket, "scratch/demo");

    // Own space: write, read back, list.
    let file = data.with_extension("payload");
    std::fs::write(&file, b"persistent state of demo").unwrap();
    let put = s3(&ca, &key, "PUT", "/scratch/demo/state/a.txt", Some(&file));
    assert_eq!(put.0, 200, "{}", put.1);
    assert_eq!(s3(&ca, &key, "GET", "/scratch/demo/state/a.txt", None), (200, "persistent state of demo".to_string()));
    let (status, listing) = s3(&ca, &key, "GET", "/scratch?list-type=2&prefix=demo%2F", None);
    assert_eq!(status, 200, "{listing}");
    assert!(listing.contains("<Key>demo/state/a.txt</Key>"), "{listing}");
    assert_eq!(s3(&ca, &key, "DELETE", "/scratch/demo/state/a.txt", None).0, 204);
    assert_eq!(s3(&ca, &key, "PUT", "/scratch/demo/state/b.txt", Some(&file)).0, 200);

    // Everything else: another gateway's space, the whole scratch bucket, the boot bucket.
    for (method, path) in [
        ("PUT", "/scratch/other/x.txt"),
        ("GET", "/scratch/other/x.txt"),
        ("GET", "/scratch?list-type=2&prefix=other%2F"),
        ("GET", "/scratch?list-type=2"),
        ("GET", "/scratch/demo-evil/x.txt"),
        ("GET", "/"),
        ("GET", "/ipxe-edge?list-type=2"),
        ("GET", "/ipxe-edge/channels/stable.json"),
        ("PUT", "/ipxe-edge/channels/stable.json"),
        ("PUT", "/newbucket"),
    ] {
        let upload = (method == "PUT" && path.matches('/').count() > 1).then_some(file.as_path());
        let (status, body) = s3(&ca, &key, method, path, upload);
        assert_eq!(status, 403, "{method} {path}: {body}");
        assert!(body.contains("AccessDenied"), "refused for its scope, not its signature: {method} {path}: {body}");
    }

    let status = scratch_json(&data, "demo");
    assert_eq!(status["objects"], 1, "{status}");
    assert_eq!(status["keys"][0]["access_key_id"], key.id.as_str());

    // The next boot's redemption mints a new key and the previous one stops working.
    let (_, second_secret) = boot_and_redeem(&client, &serve).await;
    let second = parse(&second_secret);
    assert_ne!(second.id, key.id);
    let old = s3(&ca, &key, "GET", "/scratch/demo/state/b.txt", None);
    assert_eq!(old.0, 403, "previous boot's key revoked");
    assert!(old.1.contains("InvalidAccessKeyId"), "{}", old.1);
    assert_eq!(s3(&ca, &second, "GET", "/scratch/demo/state/b.txt", None), (200, "persistent state of demo".to_string()), "state persists across boots");

    // A replay (of either token) mints nothing.
    assert_eq!(client.get(&first_url).send().await.unwrap().status(), 410);
    let status = scratch_json(&data, "demo");
    assert_eq!(status["keys"].as_array().unwrap().len(), 1);
    assert_eq!(status["keys"][0]["access_key_id"], second.id.as_str());

    // The operator kills the live key; revoking the gateway does too.
    let (ok, out, _) = edge(&data, &["gateway", "scratch", "demo", "--revoke-keys"]);
    assert!(ok && out.contains("revoked 1"), "{out}");
    assert_eq!(s3(&ca, &second, "GET", "/scratch/demo/state/b.txt", None).0, 403);
    let (_, third_secret) = boot_and_redeem(&client, &serve).await;
    let third = parse(&third_secret);
    assert_eq!(s3(&ca, &third, "GET", "/scratch/demo/state/b.txt", None).0, 200);
    let (ok, out, _) = edge(&data, &["gateway", "revoke", "demo"]);
    assert!(ok && out.contains("revoked 1 scratch key"), "{out}");
    assert_eq!(s3(&ca, &third, "GET", "/scratch/demo/state/b.txt", None).0, 403);
    let logs = serve.logs();
    assert!(logs.contains("scratch key minted"), "{logs}");
    assert!(!logs.contains(&third.secret) && !logs.contains(&key.secret), "secrets never logged");
}
