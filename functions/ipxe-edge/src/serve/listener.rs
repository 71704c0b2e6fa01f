//! The accept loop every listener of `serve` shares (boot, secrets, embedded S3): a cap on open
//! connections, a lifetime per connection, TCP_NODELAY, and a graceful stop.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

/// Limits of one listener.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    /// A connection is closed after this long, whatever it is doing.
    pub connection_lifetime: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_connections: 1024, connection_lifetime: Duration::from_secs(300) }
    }
}

/// How long open connections get to finish once the server is told to stop.
const DRAIN: Duration = Duration::from_secs(5);

/// Accepts connections until `shutdown` flips, handing each to `serve`, then lets the open ones
/// finish for a few seconds.
pub async fn accept_loop<F, Fut>(listener: TcpListener, name: &'static str, limits: Limits, mut shutdown: watch::Receiver<bool>, serve: F)
where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        // Small responses written in parts must not wait for delayed ACKs (~40 ms each).
        let _ = stream.set_nodelay(true);
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(listener = name, peer = %peer, outcome = "connection_refused", "too many connections, closing a new one");
            continue;
        };
        let connection = serve(stream, peer);
        tasks.spawn(async move {
            let _permit = permit;
            let _ = tokio::time::timeout(limits.connection_lifetime, connection).await;
        });
        while tasks.try_join_next().is_some() {}
    }
    let _ = tokio::time::timeout(DRAIN, async { while tasks.join_next().await.is_some() {} }).await;
}
