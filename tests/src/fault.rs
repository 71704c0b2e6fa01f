//! A fault-injecting HTTP proxy between the code under test and a real test server (s3s-fs,
//! moto). Per request it can pass, refuse (close the connection unanswered), reset in the
//! middle of the response, delay past the client's timeout, or answer an error status itself.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Close the connection without an answer.
    Refuse,
    /// Forward the request, then cut the response after its first bytes.
    Reset,
    /// Wait this long before forwarding.
    Delay(Duration),
    /// Answer this status with an error body in the service's format (`SlowDown` for 503).
    Status(u16),
}

#[derive(Default)]
struct Plan {
    /// Requests let through before any fault applies.
    pass: usize,
    next: VecDeque<Fault>,
    always: Option<Fault>,
}

type BoxBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// One request the proxy forwarded: what it was, when it left and when its answer came back.
#[derive(Clone, Debug)]
pub struct Call {
    /// The API operation: DynamoDB's `X-Amz-Target` action (`PutItem`), or for S3
    /// `GetObject`, `GetObject if-none-match`, `HeadObject`, `PutObject`, `ListObjectsV2`, ...
    pub operation: String,
    pub status: u16,
    pub started: std::time::Instant,
    pub ended: std::time::Instant,
}

/// The longest chain of calls each started after the previous one ended: the round trips a
/// request waited for one after another (calls made side by side overlap).
pub fn sequential_depth(calls: &[Call]) -> usize {
    let mut by_end: Vec<&Call> = calls.iter().collect();
    by_end.sort_by_key(|c| c.ended);
    let (mut depth, mut last_end) = (0, None);
    for call in by_end {
        if last_end.is_none_or(|end| call.started >= end) {
            depth += 1;
            last_end = Some(call.ended);
        }
    }
    depth
}

pub struct FaultProxy {
    /// `http://127.0.0.1:PORT`, to give the client instead of the server's endpoint.
    pub endpoint: String,
    plan: Arc<Mutex<Plan>>,
    calls: Arc<Mutex<Vec<Call>>>,
    /// Added before forwarding each request, like a network's round trip.
    latency: Arc<Mutex<Duration>>,
    forwarded: Arc<AtomicUsize>,
    faulted: Arc<AtomicUsize>,
    /// Bodies of the requests forwarded, in order.
    bodies: Arc<Mutex<Vec<Bytes>>>,
}

impl FaultProxy {
    pub async fn start(upstream: &str) -> Self {
        Self::start_with(upstream, false).await
    }

    /// A proxy that forwards one request at a time. moto's conditional writes are not atomic
    /// under concurrent requests (two racing `attribute_not_exists` puts can both succeed,
    /// measured with boto3 alone); DynamoDB serializes writes to an item, and so does this.
    pub async fn start_serialized(upstream: &str) -> Self {
        Self::start_with(upstream, true).await
    }

    async fn start_with(upstream: &str, serialized: bool) -> Self {
        let one_at_a_time = serialized.then(|| Arc::new(tokio::sync::Mutex::new(())));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let plan = Arc::new(Mutex::new(Plan::default()));
        let (forwarded, faulted) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let upstream: Arc<str> = Arc::from(upstream.trim_end_matches('/'));
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let (calls, latency) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(Duration::ZERO)));
        let (p, fw, fl, bs) = (plan.clone(), forwarded.clone(), faulted.clone(), bodies.clone());
        let (cs, lt) = (calls.clone(), latency.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (plan, forwarded, faulted, upstream, client, bodies) =
                    (p.clone(), fw.clone(), fl.clone(), upstream.clone(), client.clone(), bs.clone());
                let (calls, latency) = (cs.clone(), lt.clone());
                let one_at_a_time = one_at_a_time.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let fault = {
                            let mut plan = plan.lock().unwrap();
                            if plan.pass > 0 {
                                plan.pass -= 1;
                                None
                            } else {
                                plan.next.pop_front().or(plan.always)
                            }
                        };
                        if fault.is_some() {
                            faulted.fetch_add(1, Ordering::SeqCst);
                        } else {
                            forwarded.fetch_add(1, Ordering::SeqCst);
                        }
                        let (upstream, client, one_at_a_time, bodies) =
                            (upstream.clone(), client.clone(), one_at_a_time.clone(), bodies.clone());
                        let (calls, latency) = (calls.clone(), *latency.lock().unwrap());
                        async move {
                            let started = std::time::Instant::now();
                            let operation = operation(&req);
                            tokio::time::sleep(latency).await;
                            let _turn = match &one_at_a_time {
                                Some(lock) => Some(lock.clone().lock_owned().await),
                                None => None,
                            };
                            let response = proxy(req, fault, upstream, client, bodies).await;
                            if fault.is_none() {
                                let status = response.as_ref().map(|r| r.status().as_u16()).unwrap_or(0);
                                let ended = std::time::Instant::now();
                                calls.lock().unwrap().push(Call { operation, status, started, ended });
                            }
                            response
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FaultProxy { endpoint, plan, calls, latency, forwarded, faulted, bodies }
    }

    /// Every forwarded request waits this long first (a network's round trip), so that calls
    /// made one after another cannot overlap.
    pub fn set_latency(&self, latency: Duration) {
        *self.latency.lock().unwrap() = latency;
    }

    /// The calls forwarded since the last time, in the order they were answered; forgets them.
    pub fn take_calls(&self) -> Vec<Call> {
        std::mem::take(&mut *self.calls.lock().unwrap())
    }

    /// The next requests meet these faults, in order; later ones pass.
    pub fn fail_next(&self, faults: impl IntoIterator<Item = Fault>) {
        self.plan.lock().unwrap().next.extend(faults);
    }

    /// Every request meets `fault` until [`FaultProxy::clear`].
    pub fn fail_always(&self, fault: Fault) {
        self.plan.lock().unwrap().always = Some(fault);
    }

    /// The first `n` requests pass, every later one meets `fault` until [`FaultProxy::clear`].
    pub fn fail_after(&self, n: usize, fault: Fault) {
        let mut plan = self.plan.lock().unwrap();
        plan.pass = n;
        plan.always = Some(fault);
    }

    /// The first `n` requests pass, the next ones meet these faults in order, later ones pass.
    pub fn fail_after_next(&self, n: usize, faults: impl IntoIterator<Item = Fault>) {
        let mut plan = self.plan.lock().unwrap();
        plan.pass = n;
        plan.next.extend(faults);
    }

    pub fn clear(&self) {
        let mut plan = self.plan.lock().unwrap();
        plan.pass = 0;
        plan.next.clear();
        plan.always = None;
    }

    /// How many requests met a fault.
    pub fn faulted(&self) -> usize {
        self.faulted.load(Ordering::SeqCst)
    }

    /// The bodies of the requests forwarded so far (as text), e.g. to see what an AWS query
    /// API call carried.
    pub fn bodies(&self) -> Vec<String> {
        self.bodies.lock().unwrap().iter().map(|b| String::from_utf8_lossy(b).into_owned()).collect()
    }

    /// How many requests went through untouched.
    pub fn forwarded(&self) -> usize {
        self.forwarded.load(Ordering::SeqCst)
    }
}

/// The API operation a request calls.
fn operation(req: &Request<Incoming>) -> String {
    if let Some(target) = req.headers().get("x-amz-target").and_then(|v| v.to_str().ok()) {
        return target.rsplit('.').next().unwrap_or(target).to_string();
    }
    let query = req.uri().query().unwrap_or("");
    let object = req.uri().path().trim_start_matches('/').contains('/');
    let name = match (req.method().as_str(), object) {
        ("GET", _) if query.contains("list-type=2") => "ListObjectsV2",
        ("GET", true) => "GetObject",
        ("HEAD", true) => "HeadObject",
        ("PUT", true) => "PutObject",
        ("DELETE", true) => "DeleteObject",
        (method, _) => return format!("{method} {}", req.uri().path()),
    };
    match req.headers().contains_key("if-none-match") && name == "GetObject" {
        true => "GetObject if-none-match".to_string(),
        false => name.to_string(),
    }
}

fn error_body(req_is_dynamodb: bool, status: u16) -> (String, &'static str) {
    if req_is_dynamodb {
        let kind = if status == 503 { "ThrottlingException" } else { "InternalServerError" };
        (
            format!(r#"{{"__type":"com.amazonaws.dynamodb.v20120810#{kind}","message":"injected fault"}}"#),
            "application/x-amz-json-1.0",
        )
    } else {
        let code = if status == 503 { "SlowDown" } else { "InternalError" };
        (format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>injected fault</Message></Error>"), "application/xml")
    }
}

async fn proxy(
    req: Request<Incoming>,
    fault: Option<Fault>,
    upstream: Arc<str>,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
    bodies: Arc<Mutex<Vec<Bytes>>>,
) -> Result<Response<BoxBody>, std::io::Error> {
    let is_dynamodb = req.headers().contains_key("x-amz-target");
    match fault {
        Some(Fault::Refuse) => return Err(std::io::Error::other("injected: connection closed unanswered")),
        Some(Fault::Status(status)) => {
            let (body, content_type) = error_body(is_dynamodb, status);
            let response = Response::builder()
                .status(status)
                .header("content-type", content_type)
                .body(Full::new(Bytes::from(body)).map_err(|e| match e {}).boxed());
            return Ok(response.unwrap());
        }
        Some(Fault::Delay(d)) => tokio::time::sleep(d).await,
        _ => {}
    }
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map_err(std::io::Error::other)?.to_bytes();
    bodies.lock().unwrap().push(body.clone());
    let path = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let mut forward = Request::builder().method(parts.method.clone()).uri(format!("{upstream}{path}"));
    for (name, value) in &parts.headers {
        forward = forward.header(name, value);
    }
    let response = client.request(forward.body(Full::new(body)).unwrap()).await.map_err(std::io::Error::other)?;
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.map_err(std::io::Error::other)?.to_bytes();
    if fault == Some(Fault::Reset) {
        // Promise the whole body, send a little of it, then fail: the connection is cut.
        let head = bytes.slice(..bytes.len().min(8));
        let frames =
            futures_stream(vec![Ok(Frame::data(head)), Err(std::io::Error::other("injected: reset mid-response"))]);
        let mut response = Response::from_parts(parts, StreamBody::new(frames).boxed());
        response.headers_mut().insert("content-length", bytes.len().max(16).into());
        return Ok(response);
    }
    Ok(Response::from_parts(parts, Full::new(bytes).map_err(|e| match e {}).boxed()))
}

/// A stream of ready frames.
fn futures_stream(
    items: Vec<Result<Frame<Bytes>, std::io::Error>>,
) -> impl futures_core::Stream<Item = Result<Frame<Bytes>, std::io::Error>> + Send + Sync {
    struct Ready(VecDeque<Result<Frame<Bytes>, std::io::Error>>);
    impl futures_core::Stream for Ready {
        type Item = Result<Frame<Bytes>, std::io::Error>;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            std::task::Poll::Ready(self.0.pop_front())
        }
    }
    Ready(items.into())
}
