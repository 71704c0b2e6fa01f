//! The HTTPS front of `serve`: plays API Gateway. Each request becomes the same HTTP API 2.0
//! event API Gateway would send the function (client certificate and its validity included)
//! and goes to the same handler the Lambda function runs.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use ipxe_edge_core::http::{boot_handler, redeem_handler, BootApp, RedeemApp};
use serde_json::{json, Map, Value};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Limits that keep one slow or greedy client from hurting the others.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
pub const MAX_BODY_BYTES: usize = 16 * 1024;
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
pub const CONNECTION_LIFETIME: Duration = Duration::from_secs(300);
pub const MAX_CONNECTIONS: usize = 1024;

/// Which handler a listener feeds.
#[derive(Clone)]
pub enum Route {
    Boot(Arc<BootApp>),
    Redeem(Arc<RedeemApp>),
}

/// Accepts connections (TLS when `acceptor` is given) until `shutdown` flips, then lets open
/// requests finish.
pub async fn run(listener: TcpListener, acceptor: Option<TlsAcceptor>, route: Route, mut shutdown: watch::Receiver<bool>) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let request_ids = Arc::new(AtomicU64::new(1));
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        // Small responses written in parts must not wait for delayed ACKs.
        let _ = stream.set_nodelay(true);
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(peer = %peer, "too many connections, closing a new one");
            continue;
        };
        let acceptor = acceptor.clone();
        let route = route.clone();
        let ids = request_ids.clone();
        tasks.spawn(async move {
            let _permit = permit;
            let _ = tokio::time::timeout(CONNECTION_LIFETIME, serve_connection(stream, peer, acceptor, route, ids)).await;
        });
        while tasks.try_join_next().is_some() {}
    }
    // Let requests in flight finish, briefly.
    let _ = tokio::time::timeout(Duration::from_secs(5), async { while tasks.join_next().await.is_some() {} }).await;
}

async fn serve_connection(stream: tokio::net::TcpStream, peer: SocketAddr, acceptor: Option<TlsAcceptor>, route: Route, ids: Arc<AtomicU64>) {
    let Some(acceptor) = acceptor else {
        return serve_http(stream, peer, None, route, ids).await;
    };
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::warn!(peer = %peer, error = %e, outcome = "tls_refused", "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::warn!(peer = %peer, outcome = "tls_timeout", "TLS handshake timed out");
            return;
        }
    };
    let client_cert = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.as_ref().to_vec());
    serve_http(tls, peer, client_cert, route, ids).await
}

async fn serve_http<S>(io: S, peer: SocketAddr, client_cert: Option<Vec<u8>>, route: Route, ids: Arc<AtomicU64>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let client_cert = Arc::new(client_cert);
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let route = route.clone();
        let client_cert = client_cert.clone();
        let id = ids.fetch_add(1, Ordering::Relaxed);
        async move { Ok::<_, std::convert::Infallible>(handle(req, peer, client_cert.as_ref().as_deref(), route, id).await) }
    });
    let result = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES)
        .serve_connection(TokioIo::new(io), service)
        .await;
    if let Err(e) = result {
        tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
    }
}

fn plain(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .header("cache-control", "no-store")
        .body(Full::new(Bytes::from(format!("{message}\n"))))
        .expect("static response")
}

async fn handle(req: Request<Incoming>, peer: SocketAddr, client_cert: Option<&[u8]>, route: Route, id: u64) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return plain(StatusCode::PAYLOAD_TOO_LARGE, "request body too large"),
    };
    let event = api_gateway_event(&parts, &body, peer, client_cert, id);
    let request = match lambda_http::request::from_str(&event.to_string()) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(peer = %peer, error = %e, "request cannot be expressed as an API Gateway event");
            return plain(StatusCode::BAD_REQUEST, "bad request");
        }
    };
    let response = match route {
        Route::Boot(app) => boot_handler(&app, request).await,
        Route::Redeem(app) => redeem_handler(&app, request).await,
    };
    let (parts, body) = response.into_parts();
    let bytes = match body {
        lambda_http::Body::Empty => Bytes::new(),
        lambda_http::Body::Text(t) => Bytes::from(t),
        lambda_http::Body::Binary(b) => Bytes::from(b),
        _ => Bytes::new(),
    };
    Response::from_parts(parts, Full::new(bytes))
}

/// API Gateway's date format for certificate validity (`May 28 12:30:02 2019 GMT`).
fn gateway_date(t: OffsetDateTime) -> String {
    let format = time::macros::format_description!("[month repr:short] [day padding:space] [hour]:[minute]:[second] [year] GMT");
    t.format(format).unwrap_or_default()
}

fn client_cert_json(der: &[u8]) -> Option<Value> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let pem = ipxe_edge_core::identity::der_to_pem(der);
    Some(json!({
        "clientCertPem": pem,
        "subjectDN": cert.subject().to_string(),
        "issuerDN": cert.issuer().to_string(),
        "serialNumber": cert.raw_serial_as_string(),
        "validity": {
            "notBefore": gateway_date(cert.validity().not_before.to_datetime()),
            "notAfter": gateway_date(cert.validity().not_after.to_datetime()),
        }
    }))
}

/// The HTTP API payload 2.0 event for a request.
pub fn api_gateway_event(parts: &hyper::http::request::Parts, body: &[u8], peer: SocketAddr, client_cert: Option<&[u8]>, id: u64) -> Value {
    let mut headers = Map::new();
    for (name, value) in &parts.headers {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        match headers.get_mut(name.as_str()) {
            Some(Value::String(existing)) => {
                existing.push(',');
                existing.push_str(&value);
            }
            _ => {
                headers.insert(name.as_str().to_string(), Value::String(value));
            }
        }
    }
    let raw_query = parts.uri.query().unwrap_or("");
    let mut query = Map::new();
    for pair in raw_query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| percent_encoding::percent_decode_str(&s.replace('+', " ")).decode_utf8_lossy().into_owned();
        let (k, v) = (decode(k), decode(v));
        match query.get_mut(&k) {
            Some(Value::String(existing)) => {
                existing.push(',');
                existing.push_str(&v);
            }
            _ => {
                query.insert(k, Value::String(v));
            }
        }
    }
    let now = OffsetDateTime::now_utc();
    let host = parts.headers.get("host").and_then(|h| h.to_str().ok()).unwrap_or("localhost").to_string();
    let user_agent = parts.headers.get("user-agent").and_then(|h| h.to_str().ok()).unwrap_or("").to_string();
    let mut context = json!({
        "accountId": "local",
        "apiId": "ipxe-edge-serve",
        "domainName": host,
        "domainPrefix": host.split('.').next().unwrap_or(""),
        "http": {
            "method": parts.method.as_str(),
            "path": parts.uri.path(),
            "protocol": "HTTP/1.1",
            "sourceIp": peer.ip().to_string(),
            "userAgent": user_agent,
        },
        "requestId": format!("local-{:x}-{id}", now.unix_timestamp()),
        "routeKey": "$default",
        "stage": "$default",
        "time": now.format(time::macros::format_description!("[day]/[month repr:short]/[year]:[hour]:[minute]:[second] +0000")).unwrap_or_default(),
        "timeEpoch": (now.unix_timestamp_nanos() / 1_000_000) as i64,
    });
    if let Some(cert) = client_cert.and_then(client_cert_json) {
        context["authentication"] = json!({ "clientCert": cert });
    }
    let mut event = json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": parts.uri.path(),
        "rawQueryString": raw_query,
        "headers": headers,
        "requestContext": context,
        "isBase64Encoded": true,
    });
    if !query.is_empty() {
        event["queryStringParameters"] = Value::Object(query);
    }
    if !body.is_empty() {
        use base64::Engine;
        event["body"] = Value::String(base64::engine::general_purpose::STANDARD.encode(body));
    }
    event
}
