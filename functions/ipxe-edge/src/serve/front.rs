//! The HTTPS edge of `serve`: each listener feeds one function's request pipeline
//! ([`ipxe_edge_core::api`]). The client chain is verified once per connection, in the TLS
//! handshake, and the identity it proved goes straight to the pipeline with each request. Only
//! the request path and query route a request: the client's `Host` and `X-Forwarded-*` never
//! reach it.

use crate::listener::{accept_loop, FairGate, Limits, ListenerStats};
use crate::serve::metrics::ServeMetrics;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use ipxe_edge_core::api::metrics::Metrics;
use ipxe_edge_core::api::{pipeline, route, BootApp, ClientCert, RedeemApp, RequestInfo};
use ipxe_edge_core::domain::clock;
use ipxe_edge_core::domain::identity::ClientIdentity;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

/// Limits that keep one slow or greedy client from hurting the others.
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
pub const MAX_BODY_BYTES: usize = 16 * 1024;
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Headers, then body: a whole request must arrive within their sum (10 s), or it gets `408`
/// (body) or the connection is closed (headers).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
pub const BODY_TIMEOUT: Duration = Duration::from_secs(5);

/// Which handler a listener feeds.
#[derive(Clone)]
pub enum Route {
    Boot(Arc<BootApp>),
    Redeem(Arc<RedeemApp>),
}

impl Route {
    fn name(&self) -> &'static str {
        match self {
            Route::Boot(_) => "boot",
            Route::Redeem(_) => "secrets",
        }
    }

    /// The metric label of a request this listener refuses before its pipeline.
    fn label(&self, path: &str) -> &'static str {
        match self {
            Route::Boot(_) => "boot",
            Route::Redeem(_) => route::label(path).filter(|l| *l != "boot").unwrap_or("redeem"),
        }
    }
}

/// What a listener knows about itself, for the events it builds.
#[derive(Clone)]
pub struct Front {
    pub route: Route,
    pub acceptor: Option<TlsAcceptor>,
    /// The host name the deployment is reached at (the base of URLs handed out).
    pub public_host: Arc<str>,
    pub metrics: Arc<ServeMetrics>,
    /// Requests handled at once on this listener ([`MAX_IN_FLIGHT`], a quarter of them at most
    /// for one address); the others wait with their request read, so a boot storm does not
    /// hold a thousand handlers' state at once.
    pub in_flight: Arc<FairGate>,
}

/// Requests a listener handles at once. Handlers are short and CPU-bound (two cores); more at
/// once only adds memory and latency.
pub const MAX_IN_FLIGHT: usize = 64;
/// Of those, what one client address may hold.
pub const MAX_IN_FLIGHT_PER_ADDRESS: usize = MAX_IN_FLIGHT / 4;
/// The longest query string a request may carry (a boot's is a few dozen bytes).
pub const MAX_QUERY_BYTES: usize = 2048;

impl Front {
    pub fn new(route: Route, acceptor: Option<TlsAcceptor>, public_host: Arc<str>, metrics: Arc<ServeMetrics>) -> Self {
        Front {
            route,
            acceptor,
            public_host,
            metrics,
            in_flight: FairGate::new(MAX_IN_FLIGHT, MAX_IN_FLIGHT_PER_ADDRESS),
        }
    }
}

/// What one connection established: the peer, and the client identity its handshake proved.
struct Connection {
    peer: SocketAddr,
    client: Option<ClientIdentity>,
}

/// Accepts connections (TLS when the front has an acceptor) until `shutdown` flips.
pub async fn run(
    listener: TcpListener,
    front: Front,
    limits: Limits,
    stats: Arc<ListenerStats>,
    shutdown: watch::Receiver<bool>,
) {
    let request_ids = Arc::new(AtomicU64::new(1));
    let name = front.route.name();
    let handshakes = limits.gate();
    accept_loop(listener, name, limits, stats, shutdown, move |stream, peer| {
        serve_connection(stream, peer, front.clone(), request_ids.clone(), handshakes.clone())
    })
    .await
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    front: Front,
    ids: Arc<AtomicU64>,
    handshakes: Arc<FairGate>,
) {
    let Some(acceptor) = front.acceptor.clone() else {
        let conn = Connection { peer, client: None };
        return Box::pin(serve_http(stream, conn, front, ids)).await;
    };
    // The handshake and the HTTP state are boxed: a connection waiting for a handshake permit
    // (a storm's thousand at once) then holds a small task and its socket, not their buffers.
    // A permit is taken only once the client has spoken: idle sockets hold none.
    let handshake = async {
        stream.readable().await?;
        let _permit = handshakes.acquire(peer.ip()).await;
        Box::pin(acceptor.accept(stream)).await
    };
    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            front.metrics.tls_refused(front.route.name());
            let no_certificate = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .is_some_and(|e| matches!(e, rustls::Error::NoCertificatesPresented));
            if no_certificate {
                // What an iPXE that cannot use its key does (an ECDSA key before iPXE 2.0).
                tracing::warn!(listener = front.route.name(), peer = %peer, outcome = "tls_refused", "TLS handshake failed: no client certificate (a gateway on iPXE before 2.0 cannot use an ECDSA key: give it an RSA one)");
            } else {
                tracing::warn!(listener = front.route.name(), peer = %peer, error = %e, outcome = "tls_refused", "TLS handshake failed");
            }
            return;
        }
        Err(_) => {
            front.metrics.tls_refused(front.route.name());
            tracing::warn!(listener = front.route.name(), peer = %peer, outcome = "tls_timeout", "TLS handshake timed out");
            return;
        }
    };
    if tls.get_ref().1.alpn_protocol() == Some(crate::serve::tls::ACME_TLS_ALPN) {
        // A TLS-ALPN-01 validation: the handshake was the answer (RFC 8737 §3).
        tracing::info!(listener = front.route.name(), peer = %peer, outcome = "acme_validation", "ACME validation handshake answered");
        return;
    }
    let chain: Vec<Vec<u8>> = tls
        .get_ref()
        .1
        .peer_certificates()
        .map(|c| c.iter().map(|d| d.as_ref().to_vec()).collect())
        .unwrap_or_default();
    if matches!(front.route, Route::Boot(_)) && chain.is_empty() {
        // Only with ACME on may a handshake end without a client certificate; the boot
        // listener serves nobody it cannot identify.
        front.metrics.tls_refused("boot");
        tracing::warn!(listener = "boot", peer = %peer, outcome = "tls_refused", "no client certificate");
        return;
    }
    let mut conn = Connection { peer, client: None };
    if let (Route::Boot(app), false) = (&front.route, chain.is_empty()) {
        // The handshake accepted this chain with the same verifier; this gives its identity.
        match app.trust.verifier().await.verify_der_chain(&chain, clock::unix_now() as i64) {
            Ok(identity) => conn.client = Some(identity),
            Err(e) => {
                front.metrics.tls_refused("boot");
                tracing::warn!(listener = "boot", peer = %peer, error = %e, outcome = "tls_refused", "client chain refused after the handshake");
                return;
            }
        }
    }
    Box::pin(serve_http(tls, conn, front, ids)).await
}

async fn serve_http<S>(io: S, conn: Connection, front: Front, ids: Arc<AtomicU64>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let peer = conn.peer;
    let name = front.route.name();
    let conn = Arc::new(conn);
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let front = front.clone();
        let conn = conn.clone();
        let id = ids.fetch_add(1, Ordering::Relaxed);
        async move { Ok::<_, std::convert::Infallible>(handle(req, &conn, &front, id).await) }
    });
    let result = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES)
        .serve_connection(TokioIo::new(io), service)
        .await;
    if let Err(e) = result {
        if e.is_parse() || e.is_parse_too_large() {
            // hyper has answered 400 (or 431) already; say so in the JSON log.
            let status = if e.is_parse_too_large() { 431u16 } else { 400u16 };
            tracing::warn!(listener = name, peer = %peer, outcome = "bad_request", status, error = %e, "malformed request refused");
        } else {
            tracing::debug!(listener = name, peer = %peer, error = %e, "connection ended with an error");
        }
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

async fn handle(req: Request<Incoming>, conn: &Connection, front: &Front, id: u64) -> Response<Full<Bytes>> {
    let started = std::time::Instant::now();
    let label = front.route.label(req.uri().path());
    match read_request(req, conn, front).await {
        // The whole request is here: only now does it wait for a handler slot, so a slow body
        // holds a connection but never a slot. The pipeline times what it handles.
        Ok((parts, body)) => match front.in_flight.acquire(conn.peer.ip()).await {
            Some(_permit) => handle_request(parts, body, conn, front, id).await,
            None => refused(front, label, started, plain(StatusCode::SERVICE_UNAVAILABLE, "shutting down")),
        },
        Err(response) => refused(front, label, started, response),
    }
}

/// A request answered here, before the pipeline: timed under the route it was for.
fn refused(
    front: &Front,
    label: &'static str,
    started: std::time::Instant,
    response: Response<Full<Bytes>>,
) -> Response<Full<Bytes>> {
    front.metrics.observe(label, started.elapsed());
    response
}

/// The request's head and its whole body, read under [`BODY_TIMEOUT`], or the answer that
/// refuses it.
async fn read_request(
    req: Request<Incoming>,
    conn: &Connection,
    front: &Front,
) -> Result<(hyper::http::request::Parts, Bytes), Response<Full<Bytes>>> {
    let query_bytes = req.uri().query().map_or(0, str::len);
    if query_bytes > MAX_QUERY_BYTES {
        tracing::warn!(listener = front.route.name(), peer = %conn.peer, outcome = "bad_request", status = 414u16, query_bytes, "query string too long");
        return Err(plain(StatusCode::URI_TOO_LONG, "query string too long"));
    }
    let (parts, body) = req.into_parts();
    match tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, MAX_BODY_BYTES).collect()).await {
        Ok(Ok(collected)) => Ok((parts, collected.to_bytes())),
        Ok(Err(_)) => Err(plain(StatusCode::PAYLOAD_TOO_LARGE, "request body too large")),
        Err(_) => {
            tracing::warn!(listener = front.route.name(), peer = %conn.peer, outcome = "request_timeout", status = 408u16, "request body too slow");
            let mut response = plain(StatusCode::REQUEST_TIMEOUT, "request body too slow");
            response.headers_mut().insert("connection", hyper::header::HeaderValue::from_static("close"));
            Err(response)
        }
    }
}

async fn handle_request(
    parts: hyper::http::request::Parts,
    body: Bytes,
    conn: &Connection,
    front: &Front,
    id: u64,
) -> Response<Full<Bytes>> {
    let started = std::time::Instant::now();
    let request = match pipeline_request(&parts, body, conn, &front.public_host, id) {
        Ok(r) => r,
        Err(reason) => {
            tracing::warn!(listener = front.route.name(), peer = %conn.peer, outcome = "bad_request", status = 400u16, reason, "request refused");
            let label = front.route.label(parts.uri.path());
            return refused(front, label, started, plain(StatusCode::BAD_REQUEST, "bad request"));
        }
    };
    let response = match &front.route {
        Route::Boot(app) => pipeline::boot(app, &request).await,
        Route::Redeem(app) => pipeline::redeem(app, &request).await,
    };
    response.map(Full::new)
}

/// Headers that describe how the client reached us; a client may send them, but only a proxy
/// the deployment trusts could vouch for them, and `serve` is the edge.
fn is_hop_header(name: &str) -> bool {
    name == "host" || name == "forwarded" || name.starts_with("x-forwarded-")
}

/// The request for the pipeline: method, path, the headers a client may speak for, the body,
/// and what this connection knows in [`RequestInfo`].
fn pipeline_request(
    parts: &hyper::http::request::Parts,
    body: Bytes,
    conn: &Connection,
    public_host: &str,
    id: u64,
) -> Result<Request<Bytes>, &'static str> {
    let path = parts.uri.path();
    if !path.starts_with('/') {
        return Err("request target is not a path");
    }
    let query = form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let mut request = Request::new(body);
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = path.parse().map_err(|_| "request target is not a path")?;
    for (name, value) in &parts.headers {
        if !is_hop_header(name.as_str()) {
            request.headers_mut().append(name, value.clone());
        }
    }
    let client = conn.client.clone().map_or(ClientCert::None, ClientCert::Verified);
    let info = RequestInfo {
        request_id: format!("local-{:x}-{id}", time::OffsetDateTime::now_utc().unix_timestamp()),
        client,
        base_url: route::base_url(public_host, None),
        query,
    };
    request.extensions_mut().insert(info);
    Ok(request)
}

/// The request the pipeline would see for these request parts, from an anonymous peer: the
/// entry point of the `serve_front` fuzz target.
pub fn request_for_fuzzing(parts: &hyper::http::request::Parts, body: Bytes) -> Result<Request<Bytes>, &'static str> {
    let conn = Connection { peer: SocketAddr::from(([127, 0, 0, 1], 1)), client: None };
    pipeline_request(parts, body, &conn, "fuzz.invalid", 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> hyper::http::request::Parts {
        let mut b = Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn conn() -> Connection {
        Connection { peer: "127.0.0.1:5555".parse().unwrap(), client: None }
    }

    fn info(req: &Request<Bytes>) -> &RequestInfo {
        req.extensions().get::<RequestInfo>().expect("the edge attaches its request info")
    }

    #[test]
    fn routes_by_path_and_drops_host_and_forwarded_headers() {
        let p = parts(
            "/definitely-not-boot?mac=52%3A54%3A00%3A12%3A34%3A56&x=1&x=2",
            &[
                ("host", "localhost/boot.ipxe#"),
                ("x-forwarded-proto", "1http"),
                ("forwarded", "for=1.2.3.4"),
                ("user-agent", "iPXE/1.21.1"),
            ],
        );
        let req = pipeline_request(&p, Bytes::new(), &conn(), "boot.example.org", 1).unwrap();
        assert_eq!(req.uri().path(), "/definitely-not-boot");
        assert!(req.uri().query().is_none(), "the query travels decoded, in the request info");
        assert!(req.headers().get("host").is_none());
        assert!(req.headers().get("x-forwarded-proto").is_none());
        assert!(req.headers().get("forwarded").is_none());
        assert_eq!(req.headers().get("user-agent").unwrap(), "iPXE/1.21.1");
        let info = info(&req);
        assert!(info.query.contains(&("mac".into(), "52:54:00:12:34:56".into())));
        assert_eq!(info.query.iter().filter(|(k, _)| k == "x").count(), 2);
        assert_eq!(info.base_url.as_deref(), Some("https://boot.example.org"));
        assert!(matches!(info.client, ClientCert::None), "no handshake identity, none claimed");
    }

    #[test]
    fn hostile_host_values_build_a_request() {
        for host in ["a b", "127.0.0.1:99999", "[::1"] {
            let p = parts("/boot.ipxe", &[("host", host)]);
            let req = pipeline_request(&p, Bytes::new(), &conn(), "127.0.0.1", 1).unwrap();
            assert_eq!(req.uri().path(), "/boot.ipxe");
        }
    }
}
