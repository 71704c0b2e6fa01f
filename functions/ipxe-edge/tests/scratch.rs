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
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
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
    s3_with(ca, key, method, url_path, upload, &[])
}

/// [`s3`] with extra curl arguments. The path goes out exactly as given (`--path-as-is`), and
/// curl signs that same path, so a refusal is the endpoint's, never a signature mismatch.
fn s3_with(
    ca: &Path,
    key: &Minted,
    method: &str,
    url_path: &str,
    upload: Option<&Path>,
    extra: &[&str],
) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "--path-as-is",
        "--cacert",
        ca.to_str().unwrap(),
        "--aws-sigv4",
        "aws:amz:us-east-1:s3",
        "--user",
        &format!("{}:{}", key.id, key.secret),
    ]);
    // S3 wants the payload hash header, which curl before 8.x does not add by itself.
    cmd.args(["-X", method, "-w", "\n%{http_code}", "-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD"]);
    if let Some(file) = upload {
        cmd.arg("-T").arg(file);
    }
    cmd.args(extra);
    cmd.arg(format!("{}{url_path}", key.endpoint));
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (status.trim().parse().unwrap_or(0), body.to_string())
}

/// A request signed by the SigV4 signer of the AWS SDK and sent with its path exactly as given.
/// The signature covers the path as the endpoint canonicalises it (decoded once, encoded once),
/// so percent-encoded spellings reach the access check rather than failing their signature.
fn raw(ca: &Path, key: &Minted, method: &str, raw_path: &str, upload: Option<&Path>, extra: &[&str]) -> (u16, String) {
    use aws_sigv4::http_request::{
        sign, PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest, SigningSettings,
        UriPathNormalizationMode,
    };
    const ENCODE: &percent_encoding::AsciiSet =
        &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~').remove(b'/');
    let (path, query) = raw_path.split_once('?').map_or((raw_path, None), |(p, q)| (p, Some(q)));
    let decoded = percent_encoding::percent_decode_str(path).decode_utf8_lossy();
    let canonical = percent_encoding::utf8_percent_encode(&decoded, ENCODE).to_string();
    let signed_url = format!("{}{canonical}{}", key.endpoint, query.map(|q| format!("?{q}")).unwrap_or_default());
    let identity = aws_credential_types::Credentials::new(&key.id, &key.secret, None, None, "test").into();
    let mut settings = SigningSettings::default();
    settings.percent_encoding_mode = PercentEncodingMode::Single;
    settings.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
    settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    let params = aws_sigv4::sign::v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name("s3")
        .time(std::time::SystemTime::now())
        .settings(settings)
        .build()
        .unwrap()
        .into();
    let signable = SignableRequest::new(method, signed_url, std::iter::empty(), SignableBody::UnsignedPayload).unwrap();
    let (instructions, _) = sign(signable, &params).unwrap().into_parts();
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--path-as-is", "--cacert", ca.to_str().unwrap(), "-X", method, "-w", "\n%{http_code}"]);
    for (name, value) in instructions.headers() {
        cmd.arg("-H").arg(format!("{name}: {value}"));
    }
    if let Some(file) = upload {
        cmd.arg("-T").arg(file);
    }
    cmd.args(extra);
    cmd.arg(format!("{}{raw_path}", key.endpoint));
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (status.trim().parse().unwrap_or(0), body.to_string())
}

async fn boot_and_redeem(client: &reqwest::Client, serve: &ServeProcess) -> (String, String) {
    let script =
        client.get(format!("{}?buildarch=x86_64", serve.boot_url())).send().await.unwrap().text().await.unwrap();
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
    assert_eq!(
        s3(&ca, &second, "GET", "/scratch/demo/state/b.txt", None),
        (200, "persistent state of demo".to_string()),
        "state persists across boots"
    );

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

/// Every file of the data dir outside `skip` (relative prefixes), with its contents.
fn snapshot(data: &Path, skip: &[&str]) -> std::collections::BTreeMap<String, Vec<u8>> {
    fn walk(dir: &Path, root: &Path, skip: &[&str], out: &mut std::collections::BTreeMap<String, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            let relative = path.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            if skip.iter().any(|s| relative.starts_with(s)) {
                continue;
            }
            if path.is_dir() {
                walk(&path, root, skip, out);
            } else {
                out.insert(relative, std::fs::read(&path).unwrap_or_default());
            }
        }
    }
    let mut out = std::collections::BTreeMap::new();
    walk(data, data, skip, &mut out);
    out
}

fn enroll_with_secrets(data: &Path, name: &str) -> reqwest::Client {
    let (ok, _, err) = edge(data, &["gateway", "enroll", name]);
    assert!(ok, "{err}");
    let secret_file = data.with_extension(format!("{name}.secrets"));
    std::fs::write(&secret_file, SEED_SECRET).unwrap();
    let (ok, _, err) = edge(data, &["gateway", "set-secrets", name, "--file", secret_file.to_str().unwrap()]);
    assert!(ok, "{err}");
    let mut identity = read(&data.join(format!("pki/gateways/{name}.crt")));
    identity.extend(read(&data.join(format!("pki/gateways/{name}.key"))));
    https_client(&read(&data.join("pki/ca.crt")), Some(&identity))
}

/// The reproductions of an attacker holding one gateway's scratch key (and of one holding the
/// deployment's own key): every spelling of a path out of the key's folder is refused for its
/// scope, nothing outside that folder changes, and a CA planted through it boots nothing after
/// a restart.
#[tokio::test]
async fn no_spelling_of_a_path_leaves_the_keys_folder() {
    let data = temp_dir("scratch-escape");
    let serve = ServeProcess::start(BIN, &data, &[]).expect("serve starts");
    let ca = data.join("pki/ca.crt");
    let demo = enroll_with_secrets(&data, "attacker");
    let _ = enroll_with_secrets(&data, "victim");
    let (_, secret) = boot_and_redeem(&demo, &serve).await;
    let key = parse(&secret);
    assert_eq!(key.bucket, "scratch/attacker");
    let victim_fp =
        ipxe_edge_core::domain::identity::Fingerprint::of_der(&pem_der(&read(&data.join("pki/gateways/victim.crt"))))
            .to_string();
    let victim_secrets = format!("ipxe-edge/gateways/{victim_fp}/secrets");
    assert!(data.join("s3").join(&victim_secrets).exists(), "the victim's secrets are where the attack aims");
    let file = data.with_extension("payload");
    std::fs::write(&file, b"planted").unwrap();
    let before = snapshot(&data, &["journal", "ledger", "scratch-keys.json", "s3/scratch", "s3/.", "cache"]);

    let refused = |method: &str, path: &str, upload: Option<&Path>, extra: &[&str]| {
        let (status, body) = raw(&ca, &key, method, path, upload, extra);
        assert!(status == 403 || status == 400, "{method} {path}: {status} {body}");
        assert!(
            !body.contains("SignatureDoesNotMatch") && !body.contains("s3cret") && !body.contains("b2c."),
            "{method} {path}: {body}"
        );
        // A HEAD answer carries no body to name the error.
        assert!(
            method == "HEAD" || body.contains("AccessDenied") || body.contains("InvalidArgument"),
            "refused for its scope: {method} {path}: {body}"
        );
    };
    let target = format!("ipxe-edge/gateways/{victim_fp}/secrets");
    for spelling in [
        format!("/scratch/attacker/../../{target}"),
        format!("/scratch/attacker/%2e%2e/%2e%2e/{target}"),
        format!("/scratch/attacker/%2E%2E/%2E%2E/{target}"),
        format!("/scratch/attacker/..%2f..%2f{target}"),
        format!("/scratch/attacker/..%2F..%2F{target}"),
        format!("/scratch/attacker/./../../{target}"),
        format!("/scratch/attacker/x/../../../{target}"),
        format!("/scratch/attacker/..%5c..%5c{target}"),
        format!("/scratch/attacker//../../{target}"),
        "/scratch/attacker/../victim/x".to_string(),
        "/scratch/attacker/../../../s3-credentials".to_string(),
        "/scratch/attacker/../../../pki/ca.key".to_string(),
    ] {
        refused("GET", &spelling, None, &[]);
        refused("HEAD", &spelling, None, &["-I"]);
    }
    // Writes: the stable channel, another gateway's secrets, the trust bundle plus a record for
    // a certificate of a foreign CA.
    let foreign = chain_root("foreign CA", None);
    let leaf = chain_leaf(&foreign, "planted");
    let leaf_fp = ipxe_edge_core::domain::identity::Fingerprint::of_der(&leaf.cert_der).to_string();
    let mut bundle = read(&data.join("s3/ipxe-edge/pki/truststore.pem"));
    bundle.extend(foreign.cert.pem().as_bytes());
    let bundle_file = data.with_extension("bundle");
    std::fs::write(&bundle_file, &bundle).unwrap();
    let demo_fp =
        ipxe_edge_core::domain::identity::Fingerprint::of_der(&pem_der(&read(&data.join("pki/gateways/attacker.crt"))))
            .to_string();
    let record = String::from_utf8(read(&data.join(format!("s3/ipxe-edge/gateways/{demo_fp}/gateway.json"))))
        .unwrap()
        .replace(&demo_fp, &leaf_fp)
        .replace("\"attacker\"", "\"planted\"");
    let record_file = data.with_extension("record");
    std::fs::write(&record_file, record).unwrap();
    for (path, upload) in [
        ("/scratch/attacker/../../ipxe-edge/channels/stable.json".to_string(), &file),
        (format!("/scratch/attacker/%2e%2e/%2e%2e/{target}"), &file),
        ("/scratch/attacker/../../ipxe-edge/pki/truststore.pem".to_string(), &bundle_file),
        (format!("/scratch/attacker/..%2f..%2fipxe-edge/gateways/{leaf_fp}/gateway.json"), &record_file),
    ] {
        refused("PUT", &path, Some(upload), &[]);
    }
    refused("DELETE", "/scratch/attacker/../../ipxe-edge/channels/stable.json", None, &[]);
    refused(
        "PUT",
        "/scratch/attacker/copy",
        None,
        &["-H", &format!("x-amz-copy-source: scratch/attacker/../../{target}"), "-H", "content-length: 0"],
    );
    refused(
        "PUT",
        "/scratch/attacker/copy",
        None,
        &[
            "-H",
            &format!("x-amz-copy-source: /ipxe-edge/{}", target.trim_start_matches("ipxe-edge/")),
            "-H",
            "content-length: 0",
        ],
    );
    // DeleteObjects names its keys in the body: each is checked.
    let delete = "<Delete><Object><Key>attacker/../../ipxe-edge/channels/stable.json</Key></Object><Object><Key>attacker/../victim/x</Key></Object></Delete>";
    let (status, body) = raw(
        &ca,
        &key,
        "POST",
        "/scratch?delete",
        None,
        &["--data-binary", delete, "-H", "content-type: application/xml"],
    );
    assert!(!body.contains("<Deleted>"), "DeleteObjects: {status} {body}");
    assert!(status == 403 || body.contains("AccessDenied"), "DeleteObjects: {status} {body}");
    // Multipart: into a traversal key, and completing a legitimate upload under one.
    refused("POST", "/scratch/attacker/../../ipxe-edge/releases/evil.json?uploads", None, &[]);
    let (status, body) = raw(&ca, &key, "POST", "/scratch/attacker/upload.bin?uploads", None, &[]);
    assert_eq!(status, 200, "{body}");
    let upload_id =
        body.split("<UploadId>").nth(1).and_then(|r| r.split("</UploadId>").next()).expect("an upload id").to_string();
    refused("PUT", &format!("/scratch/attacker/../../ipxe-edge/x?partNumber=1&uploadId={upload_id}"), Some(&file), &[]);
    let complete =
        "<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>x</ETag></Part></CompleteMultipartUpload>";
    refused(
        "POST",
        &format!("/scratch/attacker/../../ipxe-edge/channels/stable.json?uploadId={upload_id}"),
        None,
        &["--data-binary", complete],
    );
    // Listing: only below its own folder.
    for query in [
        "prefix=attacker",
        "prefix=attacker%2F..%2F",
        "prefix=attacker%2F..%2F..%2Fipxe-edge%2F",
        "prefix=",
        "prefix=victim%2F",
    ] {
        refused("GET", &format!("/scratch?list-type=2&{query}"), None, &[]);
    }
    // Presigned requests signed with the scratch key.
    let presigner = |bucket: &str, object: &str| {
        let config = ipxe_edge_core::lambda::init::static_sdk_config(
            &key.endpoint,
            &key.id,
            &key.secret,
            ipxe_edge_core::lambda::init::Timeouts::Request,
        );
        let store = ipxe_edge_core::storage::adapters::s3::S3Store::new(
            ipxe_edge_core::lambda::init::s3_client(&config, true),
            bucket.to_string(),
        );
        let object = object.to_string();
        async move {
            ipxe_edge_core::storage::Presigner::presign_get(&store, &object, std::time::Duration::from_secs(60))
                .await
                .unwrap()
        }
    };
    for (bucket, object) in [
        ("scratch", format!("attacker/../../{target}")),
        ("ipxe-edge", target.trim_start_matches("ipxe-edge/").to_string()),
        ("scratch", "victim/x".to_string()),
    ] {
        let url = presigner(bucket, &object).await;
        let out = Command::new("curl")
            .args(["-sS", "--path-as-is", "--cacert", ca.to_str().unwrap(), "-w", "\n%{http_code}", &url])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(text.ends_with("\n403") && text.contains("AccessDenied"), "presigned {bucket}/{object}: {text}");
    }
    // The deployment's own key names nothing outside its buckets either.
    let admin_text = String::from_utf8(read(&data.join("s3-credentials"))).unwrap();
    let (id, secret) = admin_text.trim().split_once(':').unwrap();
    let admin = Minted { endpoint: key.endpoint.clone(), id: id.into(), secret: secret.into(), bucket: String::new() };
    for path in [
        "/ipxe-edge/../../s3-credentials",
        "/ipxe-edge/%2e%2e/%2e%2e/token-keys",
        "/ipxe-edge/..%2f..%2fpki/ca.key",
        "/..",
        "/%2e%2e/pki/ca.key",
    ] {
        let (status, body) = raw(&ca, &admin, "GET", path, None, &[]);
        assert!(matches!(status, 400 | 403 | 404), "{path}: {status} {body}");
        assert!(
            !body.contains(secret) && !body.contains("PRIVATE KEY") && !body.contains("SignatureDoesNotMatch"),
            "{path}: {body}"
        );
    }

    let after = snapshot(&data, &["journal", "ledger", "scratch-keys.json", "s3/scratch", "s3/.", "cache"]);
    let changed: Vec<_> = after
        .iter()
        .filter(|(k, v)| before.get(*k) != Some(v))
        .map(|(k, _)| k.clone())
        .chain(before.keys().filter(|k| !after.contains_key(*k)).cloned())
        .collect();
    assert!(changed.is_empty(), "files outside the scratch folder changed: {changed:?}");

    // Audit: one line per request, with who, what and where; denials with their reason.
    let logs = serve.logs();
    let lines: Vec<&str> = logs.lines().filter(|l| l.contains("s3_denied") || l.contains("s3_request")).collect();
    assert!(lines.len() > 40, "{logs}");
    let denial = lines
        .iter()
        .find(|l| l.contains("s3_denied") && l.contains("PutObject") && l.contains("truststore"))
        .unwrap_or_else(|| panic!("{logs}"));
    for field in ["\"key_id\"", "\"operation\"", "\"bucket\"", "\"key\"", "\"status\"", "\"peer\"", "\"reason\""] {
        assert!(denial.contains(field), "{field} in {denial}");
    }
    assert!(denial.contains(&key.id), "{denial}");
    assert!(
        lines.iter().any(|l| l.contains("s3_request") && l.contains("CreateMultipartUpload")),
        "successes are logged: {logs}"
    );
    for line in &lines {
        assert!(
            !line.contains(&key.secret)
                && !line.contains(secret)
                && !line.contains("X-Amz-Signature=")
                && !line.contains("Signature="),
            "{line}"
        );
    }

    // After a restart the planted CA, had it landed, would admit its certificate.
    assert!(serve.terminate().success());
    let serve = ServeProcess::start(BIN, &data, &[]).expect("serve restarts");
    let mut identity = leaf.cert_pem.clone().into_bytes();
    identity.extend(leaf.key_pem.as_bytes());
    let planted = https_client(&read(&ca), Some(&identity));
    // Refused in the handshake (an error) or by the handler: never a boot script.
    if let Ok(response) = planted.get(format!("{}?buildarch=x86_64", serve.boot_url())).send().await {
        assert_ne!(response.status(), 200, "a certificate of the foreign CA boots: {:?}", response.text().await);
    }
    assert!(
        demo.get(format!("{}?buildarch=x86_64", serve.boot_url())).send().await.unwrap().status() == 200,
        "the attacker's own gateway still boots"
    );
}

fn pem_der(pem: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(pem);
    let body: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::Engine::decode(&base64::engine::general_purpose::STANDARD, body.trim()).unwrap()
}

/// `gw-1` lists only `gw-1/`, never its neighbour `gw-10`; writes stop at the quota; a disabled
/// gateway's key is refused until it is enabled again.
#[tokio::test]
async fn prefixes_end_at_the_slash_quotas_hold_and_disabled_keys_wait() {
    let data = temp_dir("scratch-boundaries");
    let serve = ServeProcess::start(BIN, &data, &["--scratch-quota", "1MiB"]).expect("serve starts");
    let ca = data.join("pki/ca.crt");
    let one = enroll_with_secrets(&data, "gw-1");
    let ten = enroll_with_secrets(&data, "gw-10");
    let one = parse(&boot_and_redeem(&one, &serve).await.1);
    let ten = parse(&boot_and_redeem(&ten, &serve).await.1);
    let small = data.with_extension("small");
    std::fs::write(&small, b"neighbour's state").unwrap();
    assert_eq!(s3(&ca, &ten, "PUT", "/scratch/gw-10/state.txt", Some(&small)).0, 200);
    assert_eq!(s3(&ca, &one, "PUT", "/scratch/gw-1/state.txt", Some(&small)).0, 200);

    for query in ["prefix=gw-1", "prefix=gw-", "prefix=gw-10%2F", "delimiter=%2F"] {
        let (status, body) = s3(&ca, &one, "GET", &format!("/scratch?list-type=2&{query}"), None);
        assert_eq!(status, 403, "{query}: {body}");
        assert!(!body.contains("gw-10/"), "{query}: {body}");
    }
    for list in ["/scratch?list-type=2&prefix=gw-1%2F", "/scratch?prefix=gw-1%2F"] {
        let (status, body) = s3(&ca, &one, "GET", list, None);
        assert_eq!(status, 200, "{list}: {body}");
        assert!(body.contains("<Key>gw-1/state.txt</Key>") && !body.contains("gw-10"), "{list}: {body}");
    }
    assert_eq!(s3(&ca, &one, "GET", "/scratch/gw-10/state.txt", None).0, 403);

    // The quota: 1 MiB for each gateway, counted over what it stores.
    let big = data.with_extension("big");
    std::fs::write(&big, vec![7u8; 600 * 1024]).unwrap();
    assert_eq!(s3(&ca, &one, "PUT", "/scratch/gw-1/a.bin", Some(&big)).0, 200);
    let (status, body) = s3(&ca, &one, "PUT", "/scratch/gw-1/b.bin", Some(&big));
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("QuotaExceeded"), "{body}");
    assert_eq!(s3(&ca, &one, "GET", "/scratch/gw-1/b.bin", None).0, 404, "nothing of the refused body was kept");
    assert_eq!(s3(&ca, &ten, "PUT", "/scratch/gw-10/a.bin", Some(&big)).0, 200, "each gateway has its own quota");
    assert_eq!(s3(&ca, &one, "DELETE", "/scratch/gw-1/a.bin", None).0, 204);
    assert_eq!(s3(&ca, &one, "PUT", "/scratch/gw-1/b.bin", Some(&big)).0, 200, "deleting frees the space");

    // Disabled: the key is refused with the reason; enabled again, it works.
    let (ok, _, err) = edge(&data, &["gateway", "disable", "gw-1"]);
    assert!(ok, "{err}");
    let (status, body) = s3(&ca, &one, "GET", "/scratch/gw-1/state.txt", None);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("gateway disabled"), "{body}");
    assert_eq!(s3(&ca, &ten, "GET", "/scratch/gw-10/state.txt", None).0, 200, "the neighbour is not affected");
    let (ok, _, err) = edge(&data, &["gateway", "enable", "gw-1"]);
    assert!(ok, "{err}");
    assert_eq!(s3(&ca, &one, "GET", "/scratch/gw-1/state.txt", None), (200, "neighbour's state".to_string()));
    let logs = serve.logs();
    assert!(
        logs.lines().any(|l| l.contains("s3_denied") && l.contains("gateway disabled") && l.contains(&one.id)),
        "{logs}"
    );
    assert!(logs.lines().any(|l| l.contains("s3_denied") && l.contains("scratch quota exceeded")), "{logs}");
}
