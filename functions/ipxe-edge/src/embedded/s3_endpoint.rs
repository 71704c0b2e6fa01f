//! The embedded S3-compatible endpoint (s3s + s3s-fs): objects live as files under the data
//! directory, and every request, presigned URLs included, is checked for a valid SigV4
//! signature and expiry, exactly as S3 would. It speaks HTTPS with the server certificate (a
//! presigned URL protects the request, not the bytes: over plain HTTP anyone on the path could
//! swap a kernel), under the same connection limits as the other listeners.

use crate::embedded::scratch::{EmbeddedScratch, EndpointAccess, EndpointAuth};
use crate::serve::listener::{accept_loop, Limits, ListenerStats};
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
/// files. An idle keep-alive connection gives its slot back after [`HEADER_TIMEOUT`], and one
/// address holds at most its per-address cap, which is at most half the slots.
async fn run(
    listener: TcpListener,
    service: s3s::service::S3Service,
    acceptor: Option<TlsAcceptor>,
    limits: Limits,
    stats: Arc<ListenerStats>,
    shutdown: watch::Receiver<bool>,
    slots: Arc<tokio::sync::Semaphore>,
) {
    accept_loop(listener, "s3", limits, stats, shutdown, move |stream, peer| {
        let (service, acceptor, slots) = (service.clone(), acceptor.clone(), slots.clone());
        async move {
            let Ok(_slot) = slots.acquire_owned().await else { return };
            // Boxed: the TLS and HTTP state is allocated only once the connection has a slot,
            // so a waiting connection's task stays small.
            Box::pin(serve_connection(stream, peer, service, acceptor)).await
        }
    })
    .await
}

async fn serve_connection(stream: TcpStream, peer: SocketAddr, service: s3s::service::S3Service, acceptor: Option<TlsAcceptor>) {
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT).max_buf_size(RESPONSE_BUFFER);
    let Some(acceptor) = acceptor else {
        let _ = http.serve_connection(TokioIo::new(stream), service).await;
        return;
    };
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(mut tls)) => {
            tls.get_mut().1.set_buffer_limit(Some(RESPONSE_BUFFER));
            let _ = http.serve_connection(TokioIo::new(tls), service).await;
        }
        Ok(Err(e)) => tracing::debug!(listener = "s3", peer = %peer, error = %e, "TLS handshake failed"),
        Err(_) => tracing::debug!(listener = "s3", peer = %peer, "TLS handshake timed out"),
    }
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
        let service = service(data.s3_root(), &S3Credentials::generate("TEST"), scratch).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_stop, shutdown) = watch::channel(false);
        let slots = Arc::new(tokio::sync::Semaphore::new(1));
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
        let status = tokio::time::timeout(Duration::from_secs(5), read_status(&mut second)).await.expect("served once a slot was free");
        assert_eq!(status, "403");
        let _ = std::fs::remove_dir_all(&root);
    }
}
