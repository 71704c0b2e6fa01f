//! The Lambda functions as shipped: the `bootstrap` binaries from `scripts/build-lambda.sh`'s
//! zips run under a Runtime API emulator (the real protocol: `/runtime/invocation/next`,
//! `/response`, `/error`, `/init/error`), against moto (S3, DynamoDB and SSM) holding a bucket
//! made by the `ipxe-edge` CLI. Prints init and invocation times.
//!
//! Needs `IPXE_EDGE_LAMBDA_DIR` (the `target/lambda` folder with `boot/bootstrap.zip` and
//! `redeem/bootstrap.zip`) and the test servers; `scripts/test.sh` provides both.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use ipxe_edge_tests::*;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, Mutex};

const BIN: &str = env!("CARGO_BIN_EXE_ipxe-edge");
const RUNTIME: &str = "/2018-06-01/runtime";

/// What the function answered for one invocation.
#[derive(Debug)]
enum Outcome {
    Response(Value),
    Error(String),
}

/// A Lambda Runtime API on loopback: hands out queued events, collects answers.
struct RuntimeApi {
    addr: std::net::SocketAddr,
    events: mpsc::UnboundedSender<(String, Value)>,
    state: Arc<ApiState>,
}

#[derive(Default)]
struct ApiState {
    queue: Mutex<Option<mpsc::UnboundedReceiver<(String, Value)>>>,
    waiting: Mutex<HashMap<String, oneshot::Sender<Outcome>>>,
    first_poll: std::sync::Mutex<Option<Instant>>,
    init_error: std::sync::Mutex<Option<(String, String)>>,
}

impl RuntimeApi {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        let state = Arc::new(ApiState { queue: Mutex::new(Some(rx)), ..Default::default() });
        let served = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let state = served.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| handle(state.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        RuntimeApi { addr, events: tx, state }
    }

    /// Queues an event and waits for the function's answer.
    async fn invoke(&self, event: Value) -> Outcome {
        let id = format!("req-{}", unique_name("inv"));
        let (tx, rx) = oneshot::channel();
        self.state.waiting.lock().await.insert(id.clone(), tx);
        self.events.send((id, event)).unwrap();
        tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .expect("function answers within 30 s")
            .expect("answer delivered")
    }

    fn first_poll(&self) -> Option<Instant> {
        *self.state.first_poll.lock().unwrap()
    }
}

async fn handle(
    state: Arc<ApiState>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let path = req.uri().path().to_string();
    let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let ok = |status: u16, body: Vec<u8>, headers: &[(&str, String)]| {
        let mut r = Response::builder().status(status);
        for (k, v) in headers {
            r = r.header(*k, v);
        }
        Ok(r.body(Full::new(Bytes::from(body))).unwrap())
    };
    if path == format!("{RUNTIME}/invocation/next") {
        state.first_poll.lock().unwrap().get_or_insert_with(Instant::now);
        let mut queue = state.queue.lock().await;
        let Some((id, event)) = queue.as_mut().unwrap().recv().await else { return ok(500, vec![], &[]) };
        let deadline = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() + 10_000;
        return ok(
            200,
            event.to_string().into_bytes(),
            &[
                ("lambda-runtime-aws-request-id", id),
                ("lambda-runtime-deadline-ms", deadline.to_string()),
                ("lambda-runtime-invoked-function-arn", "arn:aws:lambda:us-east-1:123456789012:function:test".into()),
                ("lambda-runtime-trace-id", "Root=1-00000000-000000000000000000000000".into()),
                ("content-type", "application/json".into()),
            ],
        );
    }
    if path == format!("{RUNTIME}/init/error") {
        *state.init_error.lock().unwrap() = Some((path, String::from_utf8_lossy(&body).into_owned()));
        return ok(202, br#"{"status":"OK"}"#.to_vec(), &[]);
    }
    if let Some(rest) = path.strip_prefix(&format!("{RUNTIME}/invocation/")) {
        if let Some((id, kind)) = rest.split_once('/') {
            let outcome = match kind {
                "response" => Outcome::Response(serde_json::from_slice(&body).unwrap_or(Value::Null)),
                _ => Outcome::Error(String::from_utf8_lossy(&body).into_owned()),
            };
            if let Some(tx) = state.waiting.lock().await.remove(id) {
                let _ = tx.send(outcome);
            }
            return ok(202, br#"{"status":"OK"}"#.to_vec(), &[]);
        }
    }
    ok(404, vec![], &[])
}

/// The moto server of `scripts/test-servers.sh` (it speaks S3, DynamoDB and SSM).
struct Moto {
    env: ServerEnv,
}

impl Moto {
    fn aws_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL_S3", self.env.endpoint.clone()),
            ("AWS_ENDPOINT_URL_DYNAMODB", self.env.endpoint.clone()),
            ("AWS_ENDPOINT_URL_SSM", self.env.endpoint.clone()),
            ("AWS_ENDPOINT_URL_IAM", self.env.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", self.env.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.env.secret_key.clone()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ]
    }
}

/// A bucket, table and keyring parameter on moto, filled through the operator CLI.
struct Deployment {
    bucket: String,
    table: String,
    parameter: String,
    data: PathBuf,
}

fn cli(moto: &Moto, data: &Path, bucket: &str, args: &[&str], stdin: Option<&[u8]>) -> String {
    let mut cmd = Command::new(BIN);
    cmd.arg("--data").arg(data).args(["--bucket", bucket]).args(args).envs(moto.aws_env());
    cmd.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    if let Some(bytes) = stdin {
        child.stdin.take().unwrap().write_all(bytes).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "ipxe-edge {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const SECRETS: &[u8] = b"b2c.minio=\"bbz,https://s3.example,KEY,SECRET\"\n";
const KERNEL: &[u8] = b"shipped-zip kernel bytes";

async fn deploy(moto: &Moto) -> Deployment {
    let bucket = unique_name("lambda-zips");
    s3_client(&moto.env).await.create_bucket().bucket(&bucket).send().await.expect("create bucket on moto");
    let table = unique_name("lambda-zips-ledger");
    create_ledger_table(&dynamodb_client(&moto.env).await, &table).await;
    let parameter = format!("/ipxe-edge/{}/token-keys", unique_name("zips"));
    let ssm_conf = aws_sdk_ssm::config::Builder::from(&sdk_config(&moto.env).await).build();
    aws_sdk_ssm::Client::from_conf(ssm_conf)
        .put_parameter()
        .name(&parameter)
        .value(ipxe_edge_core::domain::token::Keyring::generate_entry("k1"))
        .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
        .send()
        .await
        .expect("put SSM parameter on moto");

    let data = temp_dir("lambda-zips");
    std::fs::create_dir_all(&data).unwrap();
    let (kernel, initrd) = (data.join("vmlinuz"), data.join("initrd.img"));
    std::fs::write(&kernel, KERNEL).unwrap();
    std::fs::write(&initrd, b"shipped-zip initrd bytes").unwrap();
    cli(moto, &data, &bucket, &["ca", "init"], None);
    cli(
        moto,
        &data,
        &bucket,
        &[
            "release",
            "create",
            "r1",
            "--kernel",
            kernel.to_str().unwrap(),
            "--initrd",
            initrd.to_str().unwrap(),
            "--cmdline",
            "console=ttyS0",
        ],
        None,
    );
    cli(moto, &data, &bucket, &["channel", "promote", "stable", "r1"], None);
    cli(moto, &data, &bucket, &["gateway", "enroll", "gw1"], None);
    cli(moto, &data, &bucket, &["gateway", "set-secrets", "gw1", "--file", "-"], Some(SECRETS));
    Deployment { bucket, table, parameter, data }
}

impl Deployment {
    /// The environment both functions get: the standard AWS variables pointing at moto, and
    /// the function settings for this deployment.
    fn function_env(&self, moto: &Moto) -> Vec<(&'static str, String)> {
        let mut env = moto.aws_env();
        env.extend([
            ("BUCKET", self.bucket.clone()),
            ("TABLE", self.table.clone()),
            ("SECRETS_BASE_URL", "https://secrets.example.org".into()),
            ("TOKEN_KEYS_SSM_PARAMETER", self.parameter.clone()),
            ("S3_FORCE_PATH_STYLE", "true".into()),
        ]);
        env
    }
}

/// A function process attached to its own Runtime API emulator.
struct Function {
    child: std::process::Child,
    api: RuntimeApi,
    started: Instant,
    stderr: PathBuf,
}

impl Function {
    async fn start(bootstrap: &Path, name: &str, env: &[(&str, String)]) -> Self {
        let api = RuntimeApi::start().await;
        let stderr = temp_dir(&format!("{name}-stderr")).with_extension("log");
        let started = Instant::now();
        let child = Command::new(bootstrap)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("AWS_LAMBDA_RUNTIME_API", api.addr.to_string())
            .env("AWS_LAMBDA_FUNCTION_NAME", name)
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_LOG_GROUP_NAME", format!("/aws/lambda/{name}"))
            .env("AWS_LAMBDA_LOG_STREAM_NAME", "test")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        Function { child, api, started, stderr }
    }

    /// Init time: process start until the runtime first asks for an event.
    async fn ready(&self) -> Duration {
        for _ in 0..300 {
            if let Some(t) = self.api.first_poll() {
                return t - self.started;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("function never became ready; stderr: {}", std::fs::read_to_string(&self.stderr).unwrap_or_default());
    }

    /// Waits for an init failure: the exit status and the log lines.
    async fn failed_init(mut self) -> (std::process::ExitStatus, Vec<Value>, Option<String>) {
        for _ in 0..300 {
            if let Some(status) = self.child.try_wait().unwrap() {
                let text = std::fs::read_to_string(&self.stderr).unwrap_or_default();
                let lines = text
                    .lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("log line is not JSON: {l}")))
                    .collect();
                let report = self.api.state.init_error.lock().unwrap().clone().map(|(_, body)| body);
                return (status, lines, report);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = self.child.kill();
        panic!("function did not exit after a failed init");
    }
}

impl Drop for Function {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Unzips `<dir>/<function>/bootstrap.zip` and returns the binary.
fn bootstrap(lambda_dir: &Path, function: &str) -> PathBuf {
    let zip = lambda_dir.join(function).join("bootstrap.zip");
    assert!(zip.is_file(), "{} is missing: run scripts/build-lambda.sh", zip.display());
    let out = temp_dir(&format!("zip-{function}"));
    std::fs::create_dir_all(&out).unwrap();
    let status = Command::new("unzip").args(["-q", "-o"]).arg(&zip).arg("-d").arg(&out).status().expect("unzip runs");
    assert!(status.success());
    out.join("bootstrap")
}

fn boot_event(cert_pem: Option<&str>) -> Value {
    let text = match cert_pem {
        Some(pem) => fixture(
            "apigw-http-v2-boot.json",
            &[
                ("__CLIENT_CERT_PEM__", json!(pem)),
                ("__RAW_QUERY__", json!("buildarch=x86_64")),
                ("__QUERY_PARAMETERS__", json!({"buildarch": "x86_64"})),
                ("__METHOD__", json!("GET")),
            ],
        ),
        None => fixture("apigw-http-v2-no-cert.json", &[("__HEADER_CERT__", json!(""))]),
    };
    serde_json::from_str(&text).unwrap()
}

fn redeem_event(token: &str) -> Value {
    let path = format!("/secrets/{token}");
    serde_json::from_str(&fixture(
        "apigw-http-v2-redeem.json",
        &[("__PATH__", json!(path)), ("__TOKEN__", json!(token)), ("__METHOD__", json!("GET"))],
    ))
    .unwrap()
}

/// Status and body of an API Gateway (payload 2.0) response document.
fn http(outcome: Outcome) -> (u16, String) {
    let doc = match outcome {
        Outcome::Response(doc) => doc,
        Outcome::Error(report) => panic!("function reported an error: {report}"),
    };
    let status = doc["statusCode"].as_u64().unwrap_or(0) as u16;
    let body = doc["body"].as_str().unwrap_or("").to_string();
    let body = if doc["isBase64Encoded"].as_bool() == Some(true) {
        use base64::Engine;
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(body).unwrap()).unwrap()
    } else {
        body
    };
    (status, body)
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn setup(test: &str) -> Option<(PathBuf, Moto)> {
    let Ok(dir) = std::env::var("IPXE_EDGE_LAMBDA_DIR") else {
        if std::env::var_os("IPXE_EDGE_REQUIRE_TEST_SERVERS").is_some() {
            panic!("IPXE_EDGE_LAMBDA_DIR is not set but IPXE_EDGE_REQUIRE_TEST_SERVERS is");
        }
        let _ = writeln!(
            std::io::stderr(),
            "skipped {test}: IPXE_EDGE_LAMBDA_DIR is not set (scripts/test.sh builds the zips)"
        );
        return None;
    };
    Some((PathBuf::from(dir), Moto { env: dynamodb_env(test)? }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_functions_boot_and_redeem_against_moto() {
    let Some((lambda_dir, moto)) = setup("shipped_functions_boot_and_redeem_against_moto") else { return };
    let deployment = deploy(&moto).await;
    let env = deployment.function_env(&moto);
    let boot = Function::start(&bootstrap(&lambda_dir, "boot"), "boot", &env).await;
    let redeem = Function::start(&bootstrap(&lambda_dir, "redeem"), "redeem", &env).await;
    let (boot_init, redeem_init) = (boot.ready().await, redeem.ready().await);

    let cert = std::fs::read_to_string(deployment.data.join("pki/gateways/gw1.crt")).unwrap();
    let mut boot_times = Vec::new();
    let mut script = String::new();
    for _ in 0..10 {
        let t = Instant::now();
        let (status, body) = http(boot.api.invoke(boot_event(Some(&cert))).await);
        boot_times.push(t.elapsed());
        assert_eq!(status, 200, "{body}");
        script = body;
    }
    assert!(script.starts_with("#!ipxe\n"), "{script}");
    // The presigned kernel URL is served by moto.
    let kernel_url =
        script.lines().find_map(|l| l.strip_prefix("kernel ")).unwrap().split(' ').next().unwrap().to_string();
    assert!(kernel_url.contains("X-Amz-Signature="), "{kernel_url}");
    let fetched = reqwest::get(&kernel_url).await.unwrap();
    assert_eq!(fetched.status().as_u16(), 200);
    assert_eq!(fetched.bytes().await.unwrap().as_ref(), KERNEL);
    // No certificate: refused.
    assert_eq!(http(boot.api.invoke(boot_event(None)).await).0, 403);

    // Redeem the last script's token once, then a replay; then nine fresh tokens for timing.
    let token_of = |script: &str| script.split("/secrets/").nth(1).unwrap().split('"').next().unwrap().to_string();
    let mut redeem_times = Vec::new();
    let t = Instant::now();
    let (status, body) = http(redeem.api.invoke(redeem_event(&token_of(&script))).await);
    redeem_times.push(t.elapsed());
    assert_eq!((status, body.as_bytes()), (200, SECRETS));
    assert_eq!(http(redeem.api.invoke(redeem_event(&token_of(&script))).await).0, 410);
    for _ in 0..9 {
        let (_, fresh) = http(boot.api.invoke(boot_event(Some(&cert))).await);
        let t = Instant::now();
        assert_eq!(http(redeem.api.invoke(redeem_event(&token_of(&fresh))).await).0, 200);
        redeem_times.push(t.elapsed());
    }

    // The shipped functions recorded every boot and the redemptions in the table: the ten
    // redeemed boots reached Linux, the nine before them were closed (failed) by the next boot.
    let history = cli(
        &moto,
        &deployment.data,
        &deployment.bucket,
        &["gateway", "history", "gw1", "--json", "--limit", "100", "--table", &deployment.table],
        None,
    );
    let history: Vec<Value> = serde_json::from_str(&history).unwrap();
    assert_eq!(history.len(), 19, "10 + 9 boots recorded");
    let outcomes: Vec<&str> = history.iter().map(|b| b["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, [vec!["reached_linux"; 10], vec!["failed"; 9]].concat(), "{history:?}");
    let status = cli(
        &moto,
        &deployment.data,
        &deployment.bucket,
        &["gateway", "status", "gw1", "--json", "--table", &deployment.table],
        None,
    );
    let status: Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["last_known_good"]["release"], "r1");

    println!("shipped functions against moto (init = process start to first /invocation/next):");
    println!("| function | init | 1st invocation | 10th invocation |");
    println!("|---|---|---|---|");
    println!("| boot | {} | {} | {} |", ms(boot_init), ms(boot_times[0]), ms(boot_times[9]));
    println!("| redeem | {} | {} | {} |", ms(redeem_init), ms(redeem_times[0]), ms(redeem_times[9]));
}

/// The shipped redeem function with scratch storage: the seed's secret gets a key of an IAM
/// user (on moto) minted at each redemption, the previous one deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_redeem_mints_scratch_keys_against_moto() {
    let Some((lambda_dir, moto)) = setup("shipped_redeem_mints_scratch_keys_against_moto") else { return };
    let deployment = deploy(&moto).await;
    let seed = b"b2c.minio=\"bbz,${s3_endpoint},${s3_access_key_id},${s3_access_key}\" b2c.volume=\"perm,mirror=bbz/${s3_bucket_name},pull_on=pipeline_start\"";
    cli(&moto, &deployment.data, &deployment.bucket, &["gateway", "set-secrets", "gw1", "--file", "-"], Some(seed));
    let scratch_bucket = unique_name("lambda-zips-scratch");
    s3_client(&moto.env).await.create_bucket().bucket(&scratch_bucket).send().await.unwrap();
    let iam = aws_sdk_iam::Client::new(&sdk_config(&moto.env).await);
    let boundary = iam
        .create_policy()
        .policy_name(unique_name("zips-boundary"))
        .policy_document(
            r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:GetObject","Resource":"*"}]}"#,
        )
        .send()
        .await
        .unwrap();
    let mut env = deployment.function_env(&moto);
    env.extend([
        ("SCRATCH_BUCKET", scratch_bucket.clone()),
        ("SCRATCH_BOUNDARY_ARN", boundary.policy().unwrap().arn().unwrap().to_string()),
        ("SCRATCH_USER_PATH", "/ipxe-edge/zips/scratch/".into()),
        ("SCRATCH_ENDPOINT", moto.env.endpoint.clone()),
    ]);
    let boot = Function::start(&bootstrap(&lambda_dir, "boot"), "boot", &env).await;
    let redeem = Function::start(&bootstrap(&lambda_dir, "redeem"), "redeem", &env).await;
    boot.ready().await;
    redeem.ready().await;
    let cert = std::fs::read_to_string(deployment.data.join("pki/gateways/gw1.crt")).unwrap();
    let token_of = |script: &str| script.split("/secrets/").nth(1).unwrap().split('"').next().unwrap().to_string();
    let live_keys = || async {
        let listed = iam.list_access_keys().user_name("ies-gw1").send().await.unwrap();
        listed.access_key_metadata().iter().filter_map(|k| k.access_key_id().map(str::to_string)).collect::<Vec<_>>()
    };
    let mut previous: Option<String> = None;
    for _ in 0..2 {
        let (_, script) = http(boot.api.invoke(boot_event(Some(&cert))).await);
        let (status, secret) = http(redeem.api.invoke(redeem_event(&token_of(&script))).await);
        assert_eq!(status, 200, "{secret}");
        let live = live_keys().await;
        assert_eq!(live.len(), 1, "one live key: {live:?}");
        assert!(secret.starts_with(&format!("b2c.minio=\"bbz,{},{},", moto.env.endpoint, live[0])), "{secret}");
        assert!(secret.contains(&format!("mirror=bbz/{scratch_bucket}/gw1,")), "{secret}");
        assert_ne!(previous.as_ref(), Some(&live[0]), "a new key per redemption");
        previous = Some(live[0].clone());
    }
    let user = iam.get_user().user_name("ies-gw1").send().await.unwrap();
    assert_eq!(user.user().unwrap().path(), "/ipxe-edge/zips/scratch/");

    // The operator sees the live key, and revoking the gateway deletes it.
    let (data, bucket) = (&deployment.data, &deployment.bucket);
    let shown: Value = serde_json::from_str(&cli(
        &moto,
        data,
        bucket,
        &["gateway", "scratch", "gw1", "--json", "--scratch-bucket", &scratch_bucket],
        None,
    ))
    .unwrap();
    assert_eq!(shown["keys"][0]["access_key_id"].as_str(), previous.as_deref(), "{shown}");
    let revoked = cli(&moto, data, bucket, &["gateway", "revoke", "gw1", "--scratch-bucket", &scratch_bucket], None);
    assert!(revoked.contains("revoked 1 scratch key"), "{revoked}");
    assert!(live_keys().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_failures_name_what_is_wrong() {
    let Some((lambda_dir, moto)) = setup("init_failures_name_what_is_wrong") else { return };
    let deployment = deploy(&moto).await;
    let boot_bin = bootstrap(&lambda_dir, "boot");
    let redeem_bin = bootstrap(&lambda_dir, "redeem");
    let base = |without: &str| -> Vec<(&'static str, String)> {
        let mut env = deployment.function_env(&moto);
        env.retain(|(k, _)| *k != without);
        env
    };
    // A malformed keyring parameter.
    let malformed = format!("{}-malformed", deployment.parameter);
    let ssm_conf = aws_sdk_ssm::config::Builder::from(&sdk_config(&moto.env).await).build();
    aws_sdk_ssm::Client::from_conf(ssm_conf)
        .put_parameter()
        .name(&malformed)
        .value("not a keyring")
        .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
        .send()
        .await
        .unwrap();

    type Case<'a> = (&'a str, &'a Path, Vec<(&'static str, String)>, &'a str);
    let cases: Vec<Case> = vec![
        ("missing BUCKET", &boot_bin, base("BUCKET"), "BUCKET"),
        ("missing TABLE", &redeem_bin, base("TABLE"), "TABLE"),
        ("missing SECRETS_BASE_URL", &boot_bin, base("SECRETS_BASE_URL"), "SECRETS_BASE_URL"),
        ("missing keyring variable", &redeem_bin, base("TOKEN_KEYS_SSM_PARAMETER"), "TOKEN_KEYS_SSM_PARAMETER"),
        (
            "missing SSM parameter",
            &boot_bin,
            {
                let mut e = base("TOKEN_KEYS_SSM_PARAMETER");
                e.push(("TOKEN_KEYS_SSM_PARAMETER", "/ipxe-edge/none".into()));
                e
            },
            "/ipxe-edge/none",
        ),
        (
            "malformed SSM parameter",
            &redeem_bin,
            {
                let mut e = base("TOKEN_KEYS_SSM_PARAMETER");
                e.push(("TOKEN_KEYS_SSM_PARAMETER", malformed.clone()));
                e
            },
            &malformed,
        ),
        (
            "unreadable trust bundle",
            &boot_bin,
            {
                let mut e = base("");
                e.push(("TRUST_BUNDLE_KEY", "pki/missing.pem".into()));
                e
            },
            "pki/missing.pem",
        ),
    ];
    for (what, bin, env, named) in cases {
        let function = Function::start(bin, "init-failure", &env).await;
        let (status, lines, report) = function.failed_init().await;
        assert!(!status.success(), "{what}: exit status {status}");
        let failures: Vec<&Value> = lines.iter().filter(|l| l["message"] == "init failed").collect();
        assert_eq!(failures.len(), 1, "{what}: one init-failure line expected in {lines:?}");
        let error = failures[0]["error"].as_str().unwrap_or("");
        assert!(error.contains(named), "{what}: {error:?} does not name {named}");
        assert_eq!(failures[0]["level"], "ERROR", "{what}");
        let report = report.unwrap_or_else(|| panic!("{what}: no /init/error report"));
        assert!(report.contains(named), "{what}: report {report}");
    }
}
