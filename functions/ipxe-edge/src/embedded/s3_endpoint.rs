//! The embedded S3-compatible endpoint (s3s + s3s-fs): objects live as files under the data
//! directory, and every request, presigned URLs included, is checked for a valid SigV4
//! signature and expiry, exactly as S3 would. It speaks HTTPS with the server certificate (a
//! presigned URL protects the request, not the bytes: over plain HTTP anyone on the path could
//! swap a kernel), under the same connection limits as the other listeners.

use crate::embedded::scratch::{EmbeddedScratch, EndpointAccess, EndpointAuth};
use crate::serve::listener::{accept_loop, Limits, ListenerStats};
use hyper_util::rt::{TokioIo, TokioTimer};
use s3s::service::S3ServiceBuilder;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

/// Connections may live long enough to download a large initrd over a slow link.
pub const S3_CONNECTION_LIFETIME: Duration = Duration::from_secs(1800);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Response bytes buffered per connection, in hyper and again in TLS: a thousand downloads at
/// once stay within memory, and the socket, not the buffer, paces each one.
const RESPONSE_BUFFER: usize = 8 * 1024;
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
/// only what its scratch space needs.
pub fn service(root: PathBuf, creds: &S3Credentials, scratch: Arc<EmbeddedScratch>) -> std::io::Result<s3s::service::S3Service> {
    let fs = s3s_fs::FileSystem::new(root).map_err(|e| std::io::Error::other(format!("{e:?}")))?;
    let mut builder = S3ServiceBuilder::new(fs);
    builder.set_auth(EndpointAuth { admin_access_key: creds.access_key.clone(), admin_secret_key: creds.secret_key.clone(), scratch: scratch.clone() });
    builder.set_access(EndpointAccess { admin_access_key: creds.access_key.clone(), scratch });
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
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().thread_name("s3-endpoint").max_blocking_threads(FILE_READ_THREADS).build()?;
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new().name("s3-endpoint".into()).spawn(move || {
        runtime.block_on(async move {
            match TcpListener::from_std(listener) {
                Ok(listener) => run(listener, service, acceptor, limits, stats, shutdown).await,
                Err(e) => tracing::error!(error = %e, "embedded S3 endpoint could not start"),
            }
        });
        let _ = done_tx.send(());
    })?;
    Ok(async move {
        let _ = done_rx.await;
    })
}

/// The endpoint's service with a bound on the responses it streams at once: a response holds
/// its permit until its body is sent (or dropped), and other requests wait for one, parsed.
#[derive(Clone)]
struct Gated {
    inner: s3s::service::S3Service,
    responses: Arc<tokio::sync::Semaphore>,
}

impl hyper::service::Service<hyper::Request<hyper::body::Incoming>> for Gated {
    type Response = hyper::Response<GatedBody>;
    type Error = s3s::HttpError;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn call(&self, request: hyper::Request<hyper::body::Incoming>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move { this.respond(request.map(s3s::Body::from)).await })
    }
}

impl Gated {
    async fn respond(self, request: s3s::HttpRequest) -> Result<hyper::Response<GatedBody>, s3s::HttpError> {
        let permit = self.responses.acquire_owned().await.ok();
        let response = self.inner.call(request).await?;
        Ok(response.map(|body| GatedBody { body, _permit: permit }))
    }
}

/// A response body and the permit it holds while it is sent.
struct GatedBody {
    body: s3s::Body,
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl http_body::Body for GatedBody {
    type Data = bytes::Bytes;
    type Error = <s3s::Body as http_body::Body>::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Serves the endpoint: over TLS with `acceptor`, plain HTTP without (`--s3-http`).
pub async fn run(
    listener: TcpListener,
    service: s3s::service::S3Service,
    acceptor: Option<TlsAcceptor>,
    limits: Limits,
    stats: Arc<ListenerStats>,
    shutdown: watch::Receiver<bool>,
) {
    let (handshakes, responses) = (limits.gate(), limits.gate());
    let service = Gated { inner: service, responses };
    accept_loop(listener, "s3", limits, stats, shutdown, move |stream, peer| {
        let service = service.clone();
        let acceptor = acceptor.clone();
        let handshakes = handshakes.clone();
        async move {
            let http = || {
                let mut builder = hyper::server::conn::http1::Builder::new();
                builder.timer(TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT).max_buf_size(RESPONSE_BUFFER);
                builder
            };
            match acceptor {
                None => {
                    let _ = http().serve_connection(TokioIo::new(stream), service).await;
                }
                Some(acceptor) => match tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
                    let _permit = handshakes.acquire().await;
                    acceptor.accept(stream).await
                })
                .await
                {
                    Ok(Ok(mut tls)) => {
                        tls.get_mut().1.set_buffer_limit(Some(RESPONSE_BUFFER));
                        let _ = http().serve_connection(TokioIo::new(tls), service).await;
                    }
                    Ok(Err(e)) => tracing::debug!(listener = "s3", peer = %peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(listener = "s3", peer = %peer, "TLS handshake timed out"),
                },
            }
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With every permit held by a response still being sent, the next request waits; it is
    /// answered once that response's body is gone.
    #[tokio::test]
    async fn responses_beyond_the_gate_wait_for_a_body_to_finish() {
        let root = std::env::temp_dir().join(format!("ipxe-edge-s3-gate-{}", std::process::id()));
        let data = crate::datadir::DataDir::open(&root).unwrap();
        let creds = S3Credentials::generate("TEST");
        let scratch = EmbeddedScratch::open(&data, "https://127.0.0.1").unwrap();
        let gated = Gated { inner: service(data.s3_root(), &creds, scratch).unwrap(), responses: Arc::new(tokio::sync::Semaphore::new(1)) };
        let request = || hyper::Request::get("http://127.0.0.1/bucket/key").body(s3s::Body::empty()).unwrap();
        let first = gated.clone().respond(request()).await.unwrap();
        assert_eq!(first.status(), 403, "unsigned request");
        let second = tokio::spawn(gated.clone().respond(request()));
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!second.is_finished(), "answered while the gate was full");
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(5), second).await.expect("answered once a body finished").unwrap().unwrap();
        assert_eq!(second.status(), 403);
        let _ = std::fs::remove_dir_all(&root);
    }
}
