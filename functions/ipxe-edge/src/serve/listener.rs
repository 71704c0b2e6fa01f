//! The accept loop every listener of `serve` shares (boot, secrets, embedded S3): a cap on open
//! connections, a cap per client address (so that one address cannot take every slot), a
//! lifetime per connection, TCP_NODELAY, refusals logged at a bounded rate, and a graceful stop.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

/// Limits of one listener.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    /// Open connections one client address may hold.
    pub max_per_client: usize,
    /// A connection is closed after this long, whatever it is doing.
    pub connection_lifetime: Duration,
}

impl Limits {
    pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
    pub const DEFAULT_MAX_PER_CLIENT: usize = 64;

    /// Work of one kind a listener does at once: TLS handshakes (a storm opens a thousand
    /// connections within a second and two cores finish only a few handshakes at a time) and
    /// S3 connections (each streams a file through its own buffers). The others wait as bare
    /// sockets, holding little memory. At least twice the per-address cap: no single address
    /// can hold every permit.
    pub fn concurrent_work(&self) -> usize {
        (2 * self.max_per_client).max(256)
    }

    /// A gate of [`Limits::concurrent_work`] permits.
    pub fn gate(&self) -> std::sync::Arc<tokio::sync::Semaphore> {
        std::sync::Arc::new(tokio::sync::Semaphore::new(self.concurrent_work()))
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_connections: Self::DEFAULT_MAX_CONNECTIONS, max_per_client: Self::DEFAULT_MAX_PER_CLIENT, connection_lifetime: Duration::from_secs(300) }
    }
}

/// What a listener reports to the metrics: open connections and refusals.
#[derive(Debug, Default)]
pub struct ListenerStats {
    pub open: AtomicI64,
    pub refused: AtomicU64,
}

/// How long open connections get to finish once the server is told to stop.
const DRAIN: Duration = Duration::from_secs(5);
/// At most one "refused" log line per listener per this interval (with the count since the last).
const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// Open connections per client address; a slot is given back when its guard drops.
#[derive(Default)]
struct PerClient {
    open: Mutex<HashMap<IpAddr, usize>>,
}

struct ClientSlot {
    table: Arc<PerClient>,
    ip: IpAddr,
}

impl PerClient {
    fn acquire(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<ClientSlot> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(ip).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(ClientSlot { table: self.clone(), ip })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self.table.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Logs refusals at most once per interval, saying how many were not logged.
struct RefusalLog {
    last: Option<Instant>,
    suppressed: u64,
}

impl RefusalLog {
    fn refused(&mut self, listener: &'static str, peer: SocketAddr, reason: &'static str) {
        let now = Instant::now();
        if self.last.is_some_and(|t| now.duration_since(t) < REFUSAL_LOG_INTERVAL) {
            self.suppressed += 1;
            return;
        }
        tracing::warn!(listener, peer = %peer, outcome = "connection_refused", reason, not_logged_since_last = self.suppressed, "connection refused");
        self.last = Some(now);
        self.suppressed = 0;
    }
}

/// Decrements the open-connection gauge when a connection ends.
struct OpenGuard(Arc<ListenerStats>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Accepts connections until `shutdown` flips, handing each to `serve`, then lets the open ones
/// finish for a few seconds.
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    name: &'static str,
    limits: Limits,
    stats: Arc<ListenerStats>,
    mut shutdown: watch::Receiver<bool>,
    serve: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let per_client = Arc::new(PerClient::default());
    let mut refusals = RefusalLog { last: None, suppressed: 0 };
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
        let Some(slot) = per_client.acquire(peer.ip(), limits.max_per_client) else {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            refusals.refused(name, peer, "too many connections from this address");
            continue;
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            refusals.refused(name, peer, "too many connections");
            continue;
        };
        stats.open.fetch_add(1, Ordering::Relaxed);
        let open = OpenGuard(stats.clone());
        let connection = serve(stream, peer);
        tasks.spawn(async move {
            let _held = (permit, slot, open);
            let _ = tokio::time::timeout(limits.connection_lifetime, connection).await;
        });
        while tasks.try_join_next().is_some() {}
    }
    let _ = tokio::time::timeout(DRAIN, async { while tasks.join_next().await.is_some() {} }).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_client_slots_are_capped_and_given_back() {
        let table = Arc::new(PerClient::default());
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.1".parse().unwrap();
        let held: Vec<_> = (0..3).map(|_| table.acquire(a, 3).unwrap()).collect();
        assert!(table.acquire(a, 3).is_none());
        assert!(table.acquire(b, 3).is_some(), "another address is not affected");
        drop(held);
        assert!(table.acquire(a, 3).is_some());
        assert!(table.open.lock().unwrap().get(&b).is_none(), "empty entries are removed");
    }
}
