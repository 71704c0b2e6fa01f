//! The one request pipeline of both functions and of `serve`: route the request once, run its
//! handler, then time it, write its log lines and count it, all from what the handler returned.
//! The edges (the Lambda functions, `serve`'s listeners) only build the `http::Request` and its
//! [`RequestInfo`].

use super::answer::{Failure, Fields, Handled, Level, Record};
use super::handlers;
use super::route::{Route, Unrouted};
use super::trust::Trust;
use crate::api::metrics::Metrics;
use crate::domain::clock;
use crate::domain::identity::{ClientIdentity, IdentityError};
use crate::service::boot::BootService;
use crate::service::redeem::RedeemService;
use bytes::Bytes;
use http::header::HeaderName;
use http::{Request, Response};
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

/// Where the boot function may find the client certificate besides the API Gateway event.
#[derive(Clone, Debug, Default)]
pub enum CertHeader {
    /// Only the certificate API Gateway verified and put in the event counts.
    #[default]
    Off,
    /// A trusted TLS-terminating proxy puts the URL-encoded PEM chain in this header.
    Trusted(HeaderName),
}

pub struct BootApp {
    pub service: BootService,
    pub trust: Trust,
    pub cert_header: CertHeader,
    pub metrics: Arc<dyn Metrics>,
}

pub struct RedeemApp {
    pub service: RedeemService,
    pub metrics: Arc<dyn Metrics>,
}

/// The client certificate of a request, as its edge found it.
#[derive(Clone, Debug, Default)]
pub enum ClientCert {
    #[default]
    None,
    /// Verified already by the server in front, with the very verifier of [`BootApp`] (the TLS
    /// handshake of `serve`). Nothing a client sends can produce it.
    Verified(ClientIdentity),
    /// A PEM chain to verify (what API Gateway or a trusted proxy passed on), or why it could
    /// not be read.
    Presented(Result<Vec<u8>, IdentityError>),
}

/// What the edge knows of a request besides method and path: the one extension handlers read.
#[derive(Clone, Debug, Default)]
pub struct RequestInfo {
    pub request_id: String,
    pub client: ClientCert,
    /// The deployment's own base URL as the edge knows it (for URLs handed out when none is
    /// configured).
    pub base_url: Option<String>,
    /// The query string's pairs, decoded.
    pub query: Vec<(String, String)>,
}

/// Serves one request of the boot function.
pub async fn boot(app: &BootApp, req: &Request<Bytes>) -> Response<Bytes> {
    let none = RequestInfo::default();
    let info = req.extensions().get::<RequestInfo>().unwrap_or(&none);
    let now = clock::unix_now();
    let handled = async {
        match Route::parse(req.method(), req.uri().path()) {
            Ok(Route::Boot) => handlers::boot(app, info, now).await,
            Err(Unrouted::MethodNotAllowed { name: "boot", allow }) => {
                handlers::boot_unrouted(Failure::method_not_allowed(allow), format!("method {}", req.method()))
            }
            Ok(_) | Err(_) => handlers::boot_unrouted(Failure::not_found(), "unknown path".into()),
        }
    };
    finish(app.metrics.as_ref(), "boot", &info.request_id, handled).await
}

/// Serves one request of the redeem function: secrets, check-ins, renewals.
pub async fn redeem(app: &RedeemApp, req: &Request<Bytes>) -> Response<Bytes> {
    let none = RequestInfo::default();
    let info = req.extensions().get::<RequestInfo>().unwrap_or(&none);
    let now = clock::unix_now();
    // The redeem function has no boot route: that path, like any other unknown one, is a 404
    // of the secrets route.
    let (name, route) = match Route::parse(req.method(), req.uri().path()) {
        Ok(Route::Boot)
        | Err(Unrouted::NotFound { name: None | Some("boot") })
        | Err(Unrouted::MethodNotAllowed { name: "boot", .. }) => ("redeem", Err(Failure::not_found())),
        Err(Unrouted::NotFound { name: Some(name) }) => (name, Err(Failure::not_found())),
        Err(Unrouted::MethodNotAllowed { name, allow }) => (name, Err(Failure::method_not_allowed(allow))),
        Ok(route) => (route.name(), Ok(route)),
    };
    let handled = async {
        match route {
            Ok(Route::Secrets { token }) => handlers::secrets(app, &token, info, now).await,
            Ok(Route::Checkin { token }) => handlers::checkin(app, &token, now).await,
            Ok(Route::Renewal { token }) => handlers::renewal(app, &token, info, now).await,
            Ok(Route::Boot) => refused(name, Failure::not_found()),
            Err(failure) => refused(name, failure),
        }
    };
    finish(app.metrics.as_ref(), name, &info.request_id, handled).await
}

/// A request the redeem function refuses before its handler, recorded as that route's.
fn refused(name: &'static str, failure: Failure) -> Handled {
    use crate::api::metrics::Counter;
    match name {
        "checkin" => handlers::checkin_refused(failure),
        "renewal" => handlers::renewal_refused(failure, vec![Counter::Renewals]),
        _ => handlers::secrets_refused(failure, vec![Counter::Redemptions]),
    }
}

/// The wrapper every request goes through: times the handler, writes the record's lines (its
/// events, then the request's own line with outcome, status and latency), counts it.
pub async fn finish(
    metrics: &dyn Metrics,
    route: &'static str,
    request_id: &str,
    handler: impl Future<Output = Handled>,
) -> Response<Bytes> {
    let started = Instant::now();
    let Handled { response, record } = handler.await;
    let elapsed = started.elapsed();
    log(&record, route, request_id, response.status().as_u16(), elapsed.as_secs_f64() * 1000.0);
    metrics.record(record.outcome, &record.counters);
    metrics.observe(route, elapsed);
    response
}

/// One log line through `tracing::$mac!`, with every field of `$f` that is set.
macro_rules! emit {
    ($mac:ident, $rid:expr, $route:expr, $f:expr, $message:expr, $outcome:expr, $status:expr, $latency:expr) => {{
        let f: &Fields = $f;
        tracing::$mac!(
            request_id = %$rid, route = $route, security_event = f.security_event, boot_event = f.boot_event,
            fingerprint = f.fingerprint.as_deref(), subject = f.subject.as_deref(), gateway = f.gateway.as_deref(),
            release = f.release.as_deref(), reason = f.reason.as_deref(), arch = f.arch.as_deref(),
            token_id = f.token_id.as_deref(), boot_outcome = f.boot_outcome.as_deref(), renewed = f.renewed.as_deref(),
            renews = f.renews.as_deref(), retired = f.retired.as_deref(), from = f.from.as_deref(), to = f.to.as_deref(),
            target = f.target.as_deref(), failures = f.failures, days_left = f.days_left, format = f.format,
            ipxe_version = f.ipxe_version.as_deref(), digests_checked = f.digests_checked,
            outcome = $outcome, status = $status, latency_ms = $latency, detail = f.detail.as_deref(),
            "{}", $message
        )
    }};
}

/// One line at the level the record chose.
#[allow(clippy::too_many_arguments)]
fn write(
    level: Level,
    rid: &str,
    route: &'static str,
    f: &Fields,
    message: &str,
    outcome: Option<&str>,
    status: Option<u16>,
    latency: Option<f64>,
) {
    match level {
        Level::Info => emit!(info, rid, route, f, message, outcome, status, latency),
        Level::Warn => emit!(warn, rid, route, f, message, outcome, status, latency),
        Level::Error => emit!(error, rid, route, f, message, outcome, status, latency),
    }
}

fn log(record: &Record, route: &'static str, request_id: &str, status: u16, latency_ms: f64) {
    for event in &record.events {
        write(event.level, request_id, route, &event.fields, event.message, event.fields.outcome, None, None);
    }
    write(
        record.level,
        request_id,
        route,
        &record.fields,
        record.message,
        Some(record.outcome),
        Some(status),
        Some(latency_ms),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::metrics::Counter;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Seen {
        recorded: Mutex<Vec<(&'static str, Vec<Counter>)>>,
        observed: Mutex<Vec<&'static str>>,
    }

    impl Metrics for Seen {
        fn record(&self, outcome: &'static str, counters: &[Counter]) {
            self.recorded.lock().unwrap().push((outcome, counters.to_vec()));
        }
        fn observe(&self, route: &'static str, _: std::time::Duration) {
            self.observed.lock().unwrap().push(route);
        }
    }

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn the_wrapper_alone_logs_and_counts_what_a_handler_returned() {
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_target(false)
            .with_writer(move || writer.clone())
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let metrics = Seen::default();
        let mut record = Record::new(
            Level::Warn,
            "boot refused",
            "forbidden",
            vec![Counter::Boots, Counter::RefusedCertificates],
            Fields { fingerprint: Some("ab12".into()), detail: Some("not enrolled".into()), ..Fields::default() },
        );
        record.event(
            Level::Warn,
            "an event before it",
            Fields { security_event: Some("token_forged"), outcome: Some("forbidden"), ..Fields::default() },
        );
        let failure = Failure::new(http::StatusCode::FORBIDDEN, "gateway not enrolled");
        let response =
            finish(&metrics, "boot", "rid-1", async { Handled { response: failure.response(), record } }).await;

        assert_eq!(response.status(), 403);
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        let logged: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(logged.len(), 2, "{text}");
        assert_eq!(logged[0]["message"], "an event before it");
        assert_eq!(logged[0]["security_event"], "token_forged");
        assert!(logged[0].get("status").is_none() && logged[0].get("latency_ms").is_none(), "{}", logged[0]);
        let line = &logged[1];
        for (field, value) in [
            ("message", "boot refused"),
            ("level", "WARN"),
            ("route", "boot"),
            ("request_id", "rid-1"),
            ("outcome", "forbidden"),
            ("fingerprint", "ab12"),
            ("detail", "not enrolled"),
        ] {
            assert_eq!(line[field], value, "{field} in {line}");
        }
        assert_eq!(line["status"], 403);
        assert!(line["latency_ms"].is_f64(), "{line}");
        assert!(line.get("gateway").is_none(), "unset fields are left out: {line}");
        assert_eq!(
            *metrics.recorded.lock().unwrap(),
            vec![("forbidden", vec![Counter::Boots, Counter::RefusedCertificates])]
        );
        assert_eq!(*metrics.observed.lock().unwrap(), vec!["boot"]);
    }

    /// The handlers return data; the wrapper above is the only place that logs or counts.
    #[test]
    fn no_handler_logs_or_counts_by_itself() {
        let handlers = include_str!("handlers.rs");
        for forbidden in ["tracing::", "tracing!", ".record(", ".observe(", "metrics."] {
            assert!(!handlers.contains(forbidden), "handlers.rs uses {forbidden}");
        }
    }
}
