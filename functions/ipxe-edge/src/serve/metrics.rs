//! `serve`'s observability: the handlers' counters, request durations, TLS refusals and open
//! connections as Prometheus (OpenMetrics) text at `/metrics`, and `/healthz`, on a listener of
//! their own (`--metrics-listen`, off by default; keep it off the public internet).

use crate::listener::{accept_loop, Limits, ListenerStats};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use ipxe_edge_core::api::metrics::{Counter as CoreCounter, Metrics};
use ipxe_edge_core::storage::{keys, ObjectStore};
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ListenerLabel {
    listener: &'static str,
}

type DurationFamily = Family<RouteLabel, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    // 100 µs to about 1.6 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 15))
}

/// Every metric `serve` exposes.
pub struct ServeMetrics {
    registry: Registry,
    boots: Family<OutcomeLabel, Counter>,
    redemptions: Family<OutcomeLabel, Counter>,
    checkins: Family<OutcomeLabel, Counter>,
    renewals: Family<OutcomeLabel, Counter>,
    certs_expiring: Gauge,
    cert_min_days: Gauge,
    plain: [(CoreCounter, Counter); 6],
    tls_refused: Family<ListenerLabel, Counter>,
    durations: DurationFamily,
    open: Family<ListenerLabel, Gauge>,
    refused: Family<ListenerLabel, Gauge>,
    listeners: Vec<(&'static str, Arc<ListenerStats>)>,
}

impl ServeMetrics {
    pub fn new(listeners: Vec<(&'static str, Arc<ListenerStats>)>) -> Self {
        let mut registry = Registry::default();
        let boots = Family::<OutcomeLabel, Counter>::default();
        let redemptions = Family::<OutcomeLabel, Counter>::default();
        let checkins = Family::<OutcomeLabel, Counter>::default();
        let renewals = Family::<OutcomeLabel, Counter>::default();
        registry.register("ipxe_edge_renewals", "Renewal fetches by outcome", renewals.clone());
        let certs_expiring = Gauge::default();
        registry.register(
            "ipxe_edge_gateway_certificates_expiring",
            "Enrolled gateways whose certificate expires within the renewal window and that have no renewal pending (checked hourly)",
            certs_expiring.clone(),
        );
        let cert_min_days = Gauge::default();
        registry.register(
            "ipxe_edge_gateway_certificate_min_days_left",
            "Fewest days of validity left among enrolled gateways' newest certificates",
            cert_min_days.clone(),
        );
        registry.register("ipxe_edge_boots", "Boot requests by outcome", boots.clone());
        registry.register("ipxe_edge_redemptions", "Secrets requests by outcome", redemptions.clone());
        registry.register("ipxe_edge_checkins", "Check-in requests by outcome", checkins.clone());
        let plain = [
            (
                CoreCounter::RefusedCertificates,
                "ipxe_edge_refused_certificates",
                "Boots refused for their certificate or gateway",
            ),
            (CoreCounter::TokenReplays, "ipxe_edge_token_replays", "Secrets tokens presented a second time"),
            (CoreCounter::ForgedTokens, "ipxe_edge_forged_tokens", "Secrets tokens whose signature does not verify"),
            (CoreCounter::Fallbacks, "ipxe_edge_fallbacks", "Boots answered with the last known good release"),
            (
                CoreCounter::JournalFailures,
                "ipxe_edge_journal_failures",
                "Boots or outcomes that could not be recorded",
            ),
            (
                CoreCounter::CertExpiring,
                "ipxe_edge_cert_expiring_boots",
                "Boots with a certificate that expires within the renewal window",
            ),
        ]
        .map(|(which, name, help)| {
            let counter = Counter::default();
            registry.register(name, help, counter.clone());
            (which, counter)
        });
        let tls_refused = Family::<ListenerLabel, Counter>::default();
        registry.register("ipxe_edge_tls_refused", "TLS handshakes refused or timed out", tls_refused.clone());
        let durations = DurationFamily::new_with_constructor(duration_histogram);
        registry.register(
            "ipxe_edge_request_duration_seconds",
            "Time from request headers to response, by route",
            durations.clone(),
        );
        let open = Family::<ListenerLabel, Gauge>::default();
        registry.register("ipxe_edge_open_connections", "Open connections by listener", open.clone());
        let refused = Family::<ListenerLabel, Gauge>::default();
        registry.register(
            "ipxe_edge_connections_refused",
            "Connections refused by the connection caps since start, by listener",
            refused.clone(),
        );
        ServeMetrics {
            registry,
            boots,
            redemptions,
            checkins,
            renewals,
            certs_expiring,
            cert_min_days,
            plain,
            tls_refused,
            durations,
            open,
            refused,
            listeners,
        }
    }

    /// The certificate gauges, from the latest look at the gateway records.
    pub fn set_certificates(&self, expiring: i64, min_days_left: Option<i64>) {
        self.certs_expiring.set(expiring);
        self.cert_min_days.set(min_days_left.unwrap_or(0));
    }

    pub fn tls_refused(&self, listener: &'static str) {
        self.tls_refused.get_or_create(&ListenerLabel { listener }).inc();
    }

    /// The exposition text, with the connection gauges read now.
    pub fn render(&self) -> String {
        for (listener, stats) in &self.listeners {
            self.open.get_or_create(&ListenerLabel { listener }).set(stats.open.load(Ordering::Relaxed));
            self.refused.get_or_create(&ListenerLabel { listener }).set(stats.refused.load(Ordering::Relaxed) as i64);
        }
        let mut text = String::new();
        if encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }
}

impl Metrics for ServeMetrics {
    fn observe(&self, route: &'static str, elapsed: Duration) {
        self.durations.get_or_create(&RouteLabel { route }).observe(elapsed.as_secs_f64());
    }

    fn record(&self, outcome: &'static str, counters: &[CoreCounter]) {
        for counter in counters {
            match counter {
                CoreCounter::Boots => {
                    self.boots.get_or_create(&OutcomeLabel { outcome }).inc();
                }
                CoreCounter::Redemptions => {
                    self.redemptions.get_or_create(&OutcomeLabel { outcome }).inc();
                }
                CoreCounter::Checkins => {
                    self.checkins.get_or_create(&OutcomeLabel { outcome }).inc();
                }
                CoreCounter::Renewals => {
                    self.renewals.get_or_create(&OutcomeLabel { outcome }).inc();
                }
                other => {
                    if let Some((_, c)) = self.plain.iter().find(|(which, _)| which == other) {
                        c.inc();
                    }
                }
            }
        }
    }
}

/// What `/healthz` checks: each listener accepts a connection and has not refused one at its
/// cap within [`FULL_WINDOW`], and the store answers a read.
pub struct Health {
    pub listeners: Vec<(&'static str, SocketAddr)>,
    pub caps: Vec<(&'static str, Arc<ListenerStats>)>,
    pub store: Arc<dyn ObjectStore>,
}

/// A listener that refused a connection at its cap this recently is reported degraded.
pub const FULL_WINDOW: Duration = Duration::from_secs(10);

impl Health {
    /// `Ok` or the list of what failed.
    pub async fn check(&self) -> Result<(), Vec<String>> {
        let mut failed = Vec::new();
        for (name, addr) in &self.listeners {
            let mut target = *addr;
            if target.ip().is_unspecified() {
                target.set_ip(if target.is_ipv4() {
                    [127, 0, 0, 1].into()
                } else {
                    std::net::Ipv6Addr::LOCALHOST.into()
                });
            }
            match tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(target)).await {
                Ok(Ok(_)) => {}
                _ => failed.push(format!("{name} listener does not accept connections")),
            }
        }
        for (name, stats) in &self.caps {
            if stats.full_within(FULL_WINDOW) {
                failed.push(format!("{name} listener degraded: refusing connections at its cap"));
            }
        }
        match tokio::time::timeout(Duration::from_secs(5), self.store.exists(keys::TRUST_BUNDLE)).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => failed.push("store answers but holds no trust bundle".into()),
            Ok(Err(e)) => failed.push(format!("store: {e}")),
            Err(_) => failed.push("store: no answer within 5 s".into()),
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(failed)
        }
    }
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("cache-control", "no-store")
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts")
}

async fn answer(req: Request<Incoming>, metrics: &ServeMetrics, health: &Health) -> Response<Full<Bytes>> {
    if req.method() != hyper::Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "text/plain; charset=utf-8", "method not allowed\n".into());
    }
    match req.uri().path() {
        "/metrics" => {
            text(StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", metrics.render())
        }
        "/healthz" => match health.check().await {
            Ok(()) => text(StatusCode::OK, "text/plain; charset=utf-8", "ok\n".into()),
            Err(failed) => {
                tracing::warn!(listener = "metrics", failed = %failed.join("; "), "health check failed");
                text(StatusCode::SERVICE_UNAVAILABLE, "text/plain; charset=utf-8", format!("{}\n", failed.join("\n")))
            }
        },
        _ => text(StatusCode::NOT_FOUND, "text/plain; charset=utf-8", "not found\n".into()),
    }
}

/// Serves `/metrics` and `/healthz` over plain HTTP.
pub async fn run(
    listener: TcpListener,
    metrics: Arc<ServeMetrics>,
    health: Arc<Health>,
    stats: Arc<ListenerStats>,
    shutdown: watch::Receiver<bool>,
) {
    let limits = Limits { max_connections: 64, max_per_client: 16, connection_lifetime: Duration::from_secs(60) };
    accept_loop(listener, "metrics", limits, stats, shutdown, move |stream, _peer| {
        let metrics = metrics.clone();
        let health = health.clone();
        async move {
            let service = hyper::service::service_fn(move |req| {
                let metrics = metrics.clone();
                let health = health.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(req, &metrics, &health).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(5))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_the_named_metrics() {
        let stats = Arc::new(ListenerStats::default());
        stats.open.store(3, Ordering::Relaxed);
        let m = ServeMetrics::new(vec![("boot", stats)]);
        m.record("ok", &[CoreCounter::Boots]);
        m.record("forbidden", &[CoreCounter::Boots, CoreCounter::RefusedCertificates]);
        m.record("ok", &[CoreCounter::Redemptions]);
        m.tls_refused("boot");
        m.observe("boot", Duration::from_micros(300));
        let text = m.render();
        for line in [
            "ipxe_edge_boots_total{outcome=\"ok\"} 1",
            "ipxe_edge_boots_total{outcome=\"forbidden\"} 1",
            "ipxe_edge_redemptions_total{outcome=\"ok\"} 1",
            "ipxe_edge_refused_certificates_total 1",
            "ipxe_edge_tls_refused_total{listener=\"boot\"} 1",
            "ipxe_edge_request_duration_seconds_count{route=\"boot\"} 1",
            "ipxe_edge_open_connections{listener=\"boot\"} 3",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(text.contains("# TYPE ipxe_edge_request_duration_seconds histogram"));
    }

    /// The shipped alert rules and dashboard name only metrics `serve` exposes (a renamed
    /// metric would silence an alert).
    #[test]
    fn shipped_rules_and_dashboard_name_exposed_metrics() {
        // Families show in the text once they have a sample.
        let m = ServeMetrics::new(vec![("boot", Arc::new(ListenerStats::default()))]);
        m.record("ok", &[CoreCounter::Boots, CoreCounter::Redemptions, CoreCounter::Checkins, CoreCounter::Renewals]);
        m.tls_refused("boot");
        m.observe("boot", Duration::from_micros(300));
        let text = m.render();
        let families: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split(' ').next()).collect();
        let shipped = [
            ("ipxe-edge.rules.yml", include_str!("../../../../infra/monitoring/ipxe-edge.rules.yml")),
            ("grafana-dashboard.json", include_str!("../../../../infra/monitoring/grafana-dashboard.json")),
        ];
        for (file, body) in shipped {
            let mut named = 0;
            for (at, _) in body.match_indices("ipxe_edge_") {
                let name: String = body[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_' || c.is_ascii_digit())
                    .collect();
                let family = ["_total", "_bucket", "_count", "_sum"]
                    .iter()
                    .find_map(|suffix| name.strip_suffix(suffix))
                    .unwrap_or(&name);
                assert!(families.contains(&family), "{file} names {name}, which serve does not expose");
                named += 1;
            }
            assert!(named >= 10, "{file} names only {named} metrics");
        }
    }
}
