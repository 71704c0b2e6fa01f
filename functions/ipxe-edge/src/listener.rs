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
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

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
    /// Waiting connections are small (a socket and a task): room for sixteen addresses at
    /// their cap and as many real clients again.
    pub const DEFAULT_MAX_CONNECTIONS: usize = 2048;
    pub const DEFAULT_MAX_PER_CLIENT: usize = 64;

    /// Work of one kind a listener does at once: TLS handshakes (a storm opens a thousand
    /// connections within a second and two cores finish only a few handshakes at a time) and
    /// S3 connections (each streams a file through its own buffers). The others wait as bare
    /// sockets, holding little memory. At least twice the per-address cap: no single address
    /// can hold every permit.
    pub fn concurrent_work(&self) -> usize {
        (2 * self.max_per_client).max(256)
    }

    /// A gate of [`Limits::concurrent_work`] permits, a thirty-second of them at most for one
    /// address: sixteen addresses at their share hold half, and a client over its share waits
    /// in line rather than being refused (two cores finish a few handshakes at a time anyway).
    pub fn gate(&self) -> Arc<FairGate> {
        FairGate::new(self.concurrent_work(), (self.concurrent_work() / 32).max(1))
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: Self::DEFAULT_MAX_CONNECTIONS,
            max_per_client: Self::DEFAULT_MAX_PER_CLIENT,
            connection_lifetime: Duration::from_secs(300),
        }
    }
}

/// What a listener reports to the metrics and `/healthz`: open connections and refusals.
#[derive(Debug, Default)]
pub struct ListenerStats {
    pub open: AtomicI64,
    pub refused: AtomicU64,
    /// When (monotonic milliseconds since start) the listener last refused a connection
    /// because it was at its total cap; 0 for never.
    pub last_full_ms: AtomicU64,
}

impl ListenerStats {
    /// Whether the listener refused a connection at its total cap within the last `window`.
    pub fn full_within(&self, window: Duration) -> bool {
        let last = self.last_full_ms.load(Ordering::Relaxed);
        last != 0 && monotonic_ms().saturating_sub(last) <= window.as_millis() as u64
    }
}

/// Milliseconds since the first call (never 0).
fn monotonic_ms() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// `total` permits of which one client address holds at most `per_address`: a few busy
/// addresses cannot take all of them. Waiters are served in arrival order on each level.
pub struct FairGate {
    total: Arc<Semaphore>,
    per_address: usize,
    addresses: Mutex<HashMap<IpAddr, Arc<Semaphore>>>,
}

/// A permit of a [`FairGate`]; both levels are given back when it drops.
pub struct FairPermit {
    _total: OwnedSemaphorePermit,
    _own: OwnedSemaphorePermit,
    _share: AddressShare,
}

/// An address's entry in use; the last user removes it.
struct AddressShare {
    gate: Arc<FairGate>,
    ip: IpAddr,
    semaphore: Option<Arc<Semaphore>>,
}

impl Drop for AddressShare {
    fn drop(&mut self) {
        let mut addresses = self.gate.addresses.lock().unwrap_or_else(|p| p.into_inner());
        drop(self.semaphore.take());
        if addresses.get(&self.ip).is_some_and(|s| Arc::strong_count(s) == 1) {
            addresses.remove(&self.ip);
        }
    }
}

impl FairGate {
    pub fn new(total: usize, per_address: usize) -> Arc<Self> {
        Arc::new(FairGate {
            total: Arc::new(Semaphore::new(total)),
            per_address: per_address.max(1),
            addresses: Mutex::default(),
        })
    }

    /// Waits for a permit: first one of `ip`'s share, then one of the total. `None` once the
    /// gate is closed.
    pub async fn acquire(self: &Arc<Self>, ip: IpAddr) -> Option<FairPermit> {
        let semaphore = {
            let mut addresses = self.addresses.lock().unwrap_or_else(|p| p.into_inner());
            addresses.entry(ip).or_insert_with(|| Arc::new(Semaphore::new(self.per_address))).clone()
        };
        let share = AddressShare { gate: self.clone(), ip, semaphore: Some(semaphore.clone()) };
        let own = semaphore.acquire_owned().await.ok()?;
        let total = self.total.clone().acquire_owned().await.ok()?;
        Some(FairPermit { _total: total, _own: own, _share: share })
    }

    /// Permits of the total not held.
    pub fn available(&self) -> usize {
        self.total.available_permits()
    }

    /// Addresses holding or waiting for a permit.
    pub fn addresses(&self) -> usize {
        self.addresses.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
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
            stats.last_full_ms.store(monotonic_ms(), Ordering::Relaxed);
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

    #[tokio::test]
    async fn one_address_holds_at_most_its_share_of_a_fair_gate() {
        let gate = FairGate::new(8, 2);
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.1".parse().unwrap();
        let held = [gate.acquire(a).await.unwrap(), gate.acquire(a).await.unwrap()];
        let third = tokio::time::timeout(Duration::from_millis(100), gate.acquire(a)).await;
        assert!(third.is_err(), "a third permit for one address");
        let other = tokio::time::timeout(Duration::from_millis(100), gate.acquire(b)).await;
        assert!(matches!(other, Ok(Some(_))), "another address still gets one");
        assert_eq!(gate.available(), 5, "two for a, one for b");
        drop(held);
        drop(other);
        assert_eq!(gate.available(), 8);
        assert_eq!(
            gate.addresses(),
            0,
            "entries of addresses that hold nothing are removed, waiters that gave up included"
        );
    }
}
