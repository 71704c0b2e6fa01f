//! The embedded S3-compatible endpoint (s3s + s3s-fs): objects live as files under the data
//! directory, and every request, presigned URLs included, is checked for a valid SigV4
//! signature and expiry, exactly as S3 would. It speaks HTTPS with the server certificate (a
//! presigned URL protects the request, not the bytes: over plain HTTP anyone on the path could
//! swap a kernel), under the same connection limits as the other listeners. Every request is
//! logged once answered, with who asked for what ([`AuditEntry`]).

use crate::embedded::s3_access::{AuditEntry, EndpointAccess, EndpointAuth};
use crate::embedded::s3_location::ConfinedFs;
use crate::embedded::scratch::EmbeddedScratch;
use crate::listener::{accept_loop, FairGate, Limits, ListenerStats};
use hyper_util::rt::{TokioIo, TokioTimer};
use s3s::service::S3ServiceBuilder;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

/// Connections may live long enough to download a large initrd over a slow link.
pub const S3_CONNECTION_LIFETIME: Duration = Duration::from_secs(1800);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an accepted socket may wait for its slot once its client has spoken. A storm of
/// large initrds queues for minutes (a thousand 256 MiB downloads are minutes of TLS on two
/// cores), and a gateway that waits its turn boots sooner than one whose download fails: that
/// one sleeps, boots again and counts a failed boot toward its fallback.
const SLOT_WAIT: Duration = Duration::from_secs(600);
/// A gateway's scratch space unless `--scratch-quota` says otherwise.
pub const DEFAULT_SCRATCH_QUOTA: u64 = 1 << 30;
/// Bytes hyper buffers per connection: a thousand downloads at once stay within memory, and
/// the socket, not the buffer, paces each one.
const RESPONSE_BUFFER: usize = 8 * 1024;
/// Plaintext TLS holds per connection before the socket takes it: at least a few full
/// 16 KiB records, so that a download is sent in full records rather than in small writes.
const TLS_SEND_BUFFER: usize = 64 * 1024;
/// Threads reading object files (s3s-fs reads through tokio's blocking pool). Reads come from
/// the page cache and are short: a few threads keep up, and a boot storm cannot grow hundreds.
const FILE_READ_THREADS: usize = 8;

pub struct S3Credentials {
    pub access_key: String,
    pub secret_key: String,
}

impl S3Credentials {
    /// A new key pair: `prefix` and 48 random bits as the access key id, 160 random bits as
    /// the secret (both hex).
    pub fn generate(prefix: &str) -> Self {
        use rand::RngCore;
        let hex = |bytes: usize| {
            let mut buf = vec![0u8; bytes];
            rand::rng().fill_bytes(&mut buf);
            hex::encode(buf)
        };
        S3Credentials { access_key: format!("{prefix}{}", hex(6).to_uppercase()), secret_key: hex(20) }
    }
}

/// The endpoint over `root`: the deployment's key may do anything, each gateway's scratch keys
/// only what its scratch space needs, up to `scratch_quota` bytes each.
pub fn service(
    root: PathBuf,
    creds: &S3Credentials,
    scratch: Arc<EmbeddedScratch>,
    scratch_quota: u64,
) -> std::io::Result<s3s::service::S3Service> {
    let mut builder = S3ServiceBuilder::new(ConfinedFs::new(root)?);
    builder.set_auth(EndpointAuth {
        admin_access_key: creds.access_key.clone(),
        admin_secret_key: creds.secret_key.clone(),
        scratch: scratch.clone(),
    });
    builder.set_access(EndpointAccess {
        admin_access_key: creds.access_key.clone(),
        scratch,
        quota_bytes: scratch_quota,
    });
    Ok(builder.build())
}

/// [`run`] on a runtime of its own (one thread): kernel and initrd downloads are long and
/// CPU-bound (TLS of megabytes each), and on a shared runtime a thousand of them delay the
/// boot and secrets listeners' handshakes past their deadline. The returned future ends when
/// the endpoint has stopped.
pub fn run_isolated(
    listener: TcpListener,
    service: s3s::service::S3Service,
    acceptor: Option<TlsAcceptor>,
    limits: Limits,
    stats: Arc<ListenerStats>,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<impl std::future::Future<Output = ()>> {
    let listener = listener.into_std()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("s3-endpoint")
        .max_blocking_threads(FILE_READ_THREADS)
        .build()?;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new().name("s3-endpoint".into()).spawn(move || {
        runtime.block_on(async move {
            match TcpListener::from_std(listener) {
                Ok(listener) => run(listener, service, acceptor, limits, stats, shutdown, limits.gate()).await,
                Err(e) => tracing::error!(error = %e, "embedded S3 endpoint could not start"),
            }
        });
        let _ = done_tx.send(());
    })?;
    Ok(async move {
        let _ = done_rx.await;
    })
}

/// Serves the endpoint: over TLS with `acceptor`, plain HTTP without (`--s3-http`).
///
/// At most `slots` ([`Limits::concurrent_work`]) connections are served at once, from the TLS handshake
/// to their close; the others wait before their handshake, as bare sockets. A storm's thousand
/// downloads then hold a thousand sockets but only that many TLS sessions, HTTP buffers and open
/// files. A socket takes its place in the queue once the client has spoken (it is closed if the
/// client says nothing within [`HANDSHAKE_TIMEOUT`]), and is closed if no slot is free within
/// [`SLOT_WAIT`]; an idle keep-alive connection gives its slot back after [`HEADER_TIMEOUT`];
/// one address holds at most a thirty-second of the slots.
async fn run(
    listener: TcpListener,
    service: s3s::service::S3Service,
    acceptor: Option<TlsAcceptor>,
    limits: Limits,
    stats: Arc<ListenerStats>,
    shutdown: watch::Receiver<bool>,
    slots: Arc<FairGate>,
) {
    accept_loop(listener, "s3", limits, stats, shutdown, move |stream, peer| {
        let (service, acceptor, slots) = (service.clone(), acceptor.clone(), slots.clone());
        async move {
            if !matches!(tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.readable()).await, Ok(Ok(()))) {
                tracing::debug!(listener = "s3", peer = %peer, "closed: the client said nothing");
                return;
            }
            let Ok(Some(_slot)) = tokio::time::timeout(SLOT_WAIT, slots.acquire(peer.ip())).await else {
                tracing::debug!(listener = "s3", peer = %peer, "closed while waiting for a slot");
                return;
            };
            // Boxed: the TLS and HTTP state is allocated only once the connection has a slot,
            // so a waiting connection's task stays small.
            Box::pin(serve_connection(stream, peer, service, acceptor)).await
        }
    })
    .await
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    service: s3s::service::S3Service,
    acceptor: Option<TlsAcceptor>,
) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT).max_buf_size(RESPONSE_BUFFER);
    let service = audited(service, peer);
    let Some(acceptor) = acceptor else {
        let _ = http.serve_connection(TokioIo::new(stream), service).await;
        return;
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(mut tls)) => {
            tls.get_mut().1.set_buffer_limit(Some(TLS_SEND_BUFFER));
            let _ = http.serve_connection(TokioIo::new(tls), service).await;
        }
        Ok(Err(e)) => tracing::debug!(listener = "s3", peer = %peer, error = %e, "TLS handshake failed"),
        Err(_) => tracing::debug!(listener = "s3", peer = %peer, "TLS handshake timed out"),
    }
}

/// The endpoint with its audit trail: each request carries an [`AuditEntry`] that the access
/// rules fill in, and is logged once answered, at info, or at warn when refused.
fn audited(
    service: s3s::service::S3Service,
    peer: SocketAddr,
) -> impl hyper::service::Service<
    hyper::Request<hyper::body::Incoming>,
    Response = s3s::HttpResponse,
    Error = s3s::HttpError,
    Future = impl Send,
> + Clone {
    hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        let service = service.clone();
        async move {
            let entry = Arc::new(AuditEntry::default());
            req.extensions_mut().insert(entry.clone());
            let method = req.method().clone();
            let key_id = signing_key_id(&req);
            let started = std::time::Instant::now();
            let result = service.call(req.map(s3s::Body::from)).await;
            let status = result.as_ref().map_or(500, |r| r.status().as_u16());
            log_request(&entry, &method, key_id.as_deref(), status, peer, started.elapsed());
            result
        }
    })
}

fn log_request(
    entry: &AuditEntry,
    method: &hyper::Method,
    key_id: Option<&str>,
    status: u16,
    peer: SocketAddr,
    elapsed: Duration,
) {
    let fields = entry.fields();
    let operation = fields.operation.as_deref().unwrap_or("unknown");
    let (bucket, key) = (fields.bucket.as_deref().unwrap_or(""), fields.key.as_deref().unwrap_or(""));
    let (gateway, key_id) = (fields.gateway.as_deref().unwrap_or(""), key_id.unwrap_or(""));
    let elapsed_ms = elapsed.as_millis() as u64;
    let refused = fields.denied.or(match status {
        401 | 403 => Some("signature or key refused"),
        _ => None,
    });
    match refused {
        Some(reason) => {
            tracing::warn!(listener = "s3", outcome = "s3_denied", peer = %peer, key_id, gateway, method = %method, operation, bucket, key, status, reason, elapsed_ms, "S3 request refused")
        }
        None => {
            tracing::info!(listener = "s3", outcome = "s3_request", peer = %peer, key_id, gateway, method = %method, operation, bucket, key, status, elapsed_ms, "S3 request")
        }
    }
}

/// The access key id a request names (from its `Authorization` header or, when presigned, its
/// `X-Amz-Credential`), only the id: never the rest of the credential scope or the signature.
fn signing_key_id<B>(req: &hyper::Request<B>) -> Option<String> {
    let from_header = req.headers().get(hyper::header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| {
        let credential = v.split_once("Credential=")?.1;
        Some(credential.split(['/', ',', ' ']).next()?.to_string())
    });
    let from_query = || {
        form_urlencoded::parse(req.uri().query()?.as_bytes())
            .find(|(name, _)| name == "X-Amz-Credential")
            .and_then(|(_, v)| v.split('/').next().map(str::to_string))
    };
    let id = from_header.or_else(from_query)?;
    // An id is a short run of letters and digits; anything else is not logged as given.
    let plausible = !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_alphanumeric());
    Some(if plausible { id } else { "(malformed)".to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn send_request(stream: &mut TcpStream) {
        stream.write_all(b"GET /bucket/key HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n").await.unwrap();
    }

    async fn read_status(stream: &mut TcpStream) -> String {
        let mut buf = [0u8; 12];
        stream.read_exact(&mut buf).await.unwrap();
        String::from_utf8_lossy(&buf[9..12]).into_owned()
    }

    /// With every slot held by an open connection, the next connection is not served; it is
    /// once that connection closes.
    #[tokio::test]
    async fn a_connection_beyond_the_slots_waits_for_one_to_close() {
        let root = std::env::temp_dir().join(format!("ipxe-edge-s3-slots-{}", std::process::id()));
        let data = crate::datadir::DataDir::open(&root).unwrap();
        let scratch = EmbeddedScratch::open(&data, "http://127.0.0.1").unwrap();
        let service =
            service(data.s3_root(), &S3Credentials::generate("TEST"), scratch, DEFAULT_SCRATCH_QUOTA).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_stop, shutdown) = watch::channel(false);
        let slots = FairGate::new(1, 1);
        tokio::spawn(run(listener, service, None, Limits::default(), Arc::default(), shutdown, slots));

        let mut first = TcpStream::connect(addr).await.unwrap();
        send_request(&mut first).await;
        assert_eq!(read_status(&mut first).await, "403", "unsigned request");
        let mut second = TcpStream::connect(addr).await.unwrap();
        send_request(&mut second).await;
        let mut byte = [0u8; 1];
        let early = tokio::time::timeout(Duration::from_millis(300), second.read(&mut byte)).await;
        assert!(early.is_err(), "served while every slot was held");
        drop(first);
        let status = tokio::time::timeout(Duration::from_secs(5), read_status(&mut second))
            .await
            .expect("served once a slot was free");
        assert_eq!(status, "403");
        let _ = std::fs::remove_dir_all(&root);
    }
}
