//! The two HTTP handlers, over `lambda_http` requests, shared by the Lambda functions and the
//! local server. They extract and check inputs, call the domain services, log one line per
//! request, and map every error to a status code in one place ([`Failure`]).

use crate::domain::clock;
use crate::domain::health::BootReason;
use crate::domain::identity::{decode_escaped_pem, describe_der, pem_certificates, ChainVerifier, ClientIdentity, IdentityError};
use crate::domain::query::{BootQuery, QueryError};
use crate::domain::token::TokenError;
use crate::lambda::metrics::{Counter, Metrics};
use crate::service::boot::{BootError, BootScript, BootService};
use crate::service::redeem::{CheckinError, RedeemError, RedeemService, RenewalError, SignalOutcome};
use crate::storage::records::RecordError;
use crate::storage::StoreError;
use lambda_http::http::header::{HeaderName, ALLOW, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use lambda_http::http::{Method, StatusCode};
use lambda_http::request::RequestContext;
use lambda_http::{Body, Request, RequestExt, Response};
use std::sync::Arc;
use std::time::Instant;

pub const BOOT_PATH: &str = "/boot.ipxe";
pub const SECRETS_PREFIX: &str = "/secrets/";
pub const CHECKIN_PREFIX: &str = "/checkin/";
pub const RENEWAL_PREFIX: &str = "/renewal/";
/// Response headers of a served boot script: the gateway, and the certificate used.
pub const GATEWAY_HEADER: &str = "x-ipxe-edge-gateway";
pub const FINGERPRINT_HEADER: &str = "x-ipxe-edge-fingerprint";
/// Seconds a client should wait before retrying after a storage outage.
pub const RETRY_AFTER_SECS: u64 = 5;

/// Where the boot handler may find the client certificate besides the API Gateway event.
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
    pub verifier: ChainVerifier,
    pub cert_header: CertHeader,
    pub metrics: Arc<dyn Metrics>,
}

pub struct RedeemApp {
    pub service: RedeemService,
    pub metrics: Arc<dyn Metrics>,
}

/// A client identity already verified by the server in front (the TLS handshake of
/// `ipxe-edge serve`, with the very verifier of [`BootApp`]), put in the request's extensions.
/// Nothing in an API Gateway event can set it: extensions are not part of the event.
#[derive(Clone, Debug)]
pub struct VerifiedClient(pub ClientIdentity);

/// An error answer: status, a short plain-text reason, and whether to ask for a retry.
#[derive(Debug)]
pub struct Failure {
    pub status: StatusCode,
    pub message: String,
    pub retry_after: bool,
    /// The method a `405` allows.
    pub allow: &'static str,
}

impl Failure {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Failure { status, message: message.into(), retry_after: status == StatusCode::SERVICE_UNAVAILABLE, allow: "GET" }
    }

    fn into_response(self) -> Response<Body> {
        let mut builder = Response::builder().status(self.status).header(CONTENT_TYPE, "text/plain; charset=utf-8").header(CACHE_CONTROL, "no-store");
        if self.retry_after {
            builder = builder.header(RETRY_AFTER, RETRY_AFTER_SECS.to_string());
        }
        if self.status == StatusCode::METHOD_NOT_ALLOWED {
            builder = builder.header(ALLOW, self.allow);
        }
        builder.body(Body::from(format!("{}\n", self.message))).expect("static response parts are valid")
    }

    fn outcome(&self) -> &'static str {
        match self.status.as_u16() {
            400 => "bad_request",
            403 => "forbidden",
            404 => "not_found",
            405 => "method_not_allowed",
            410 => "gone",
            503 => "unavailable",
            _ => "error",
        }
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) => Failure::new(StatusCode::SERVICE_UNAVAILABLE, "storage unavailable, retry later"),
            StoreError::Conflict(_) => Failure::new(StatusCode::SERVICE_UNAVAILABLE, "concurrent update, retry later"),
            StoreError::InvalidKey(_) => Failure::new(StatusCode::INTERNAL_SERVER_ERROR, "record invalid; see server logs"),
        }
    }
}

impl From<RecordError> for Failure {
    fn from(e: RecordError) -> Self {
        match e {
            RecordError::Store(s) => s.into(),
            // A configuration error: retrying cannot help, so no 503 and no Retry-After.
            RecordError::Invalid { .. }
            | RecordError::BadName(_)
            | RecordError::ReleaseExists(_)
            | RecordError::UnknownRelease(_)
            | RecordError::AlreadyEnrolled(_)
            | RecordError::UnknownCertificate { .. }
            | RecordError::LastCertificate { .. } => Failure::new(StatusCode::INTERNAL_SERVER_ERROR, "record invalid; see server logs"),
        }
    }
}

impl From<&IdentityError> for Failure {
    fn from(e: &IdentityError) -> Self {
        match e {
            IdentityError::BadTrustBundle(_) => Failure::new(StatusCode::INTERNAL_SERVER_ERROR, "server misconfigured"),
            IdentityError::Missing => Failure::new(StatusCode::FORBIDDEN, "client certificate required"),
            other => Failure::new(StatusCode::FORBIDDEN, format!("client certificate refused: {other}")),
        }
    }
}

impl From<QueryError> for Failure {
    fn from(e: QueryError) -> Self {
        Failure::new(StatusCode::BAD_REQUEST, e.to_string())
    }
}

impl From<BootError> for Failure {
    fn from(e: BootError) -> Self {
        match e {
            BootError::UnknownGateway => Failure::new(StatusCode::FORBIDDEN, "gateway not enrolled"),
            BootError::Revoked(_) | BootError::Disabled(_) => Failure::new(StatusCode::FORBIDDEN, "gateway not allowed to boot"),
            BootError::NoAssetsForArch { .. } => Failure::new(StatusCode::NOT_FOUND, e.to_string()),
            BootError::Record(r) => r.into(),
            BootError::ChannelMissing { .. } | BootError::ReleaseMissing(_) | BootError::SecretsMissing(_) | BootError::Render(_) | BootError::Mint(_) => {
                Failure::new(StatusCode::INTERNAL_SERVER_ERROR, "boot configuration error; see server logs")
            }
        }
    }
}

impl From<RedeemError> for Failure {
    fn from(e: RedeemError) -> Self {
        match e {
            RedeemError::Token(TokenError::Malformed) => Failure::new(StatusCode::BAD_REQUEST, "malformed token"),
            RedeemError::Token(TokenError::Forged) => Failure::new(StatusCode::FORBIDDEN, "invalid token"),
            RedeemError::Token(TokenError::Expired) => Failure::new(StatusCode::GONE, "token expired"),
            RedeemError::Replayed(_) => Failure::new(StatusCode::GONE, "token already used"),
            RedeemError::SecretsGone(_) => Failure::new(StatusCode::NOT_FOUND, "no secrets for this gateway"),
            RedeemError::Record(r) => r.into(),
            RedeemError::GatewayNotEnabled(_) => Failure::new(StatusCode::FORBIDDEN, "gateway not enabled"),
            RedeemError::ScratchNotConfigured => Failure::new(StatusCode::INTERNAL_SERVER_ERROR, "secrets configuration error; see server logs"),
            RedeemError::ScratchUnavailable(_) => Failure::new(StatusCode::SERVICE_UNAVAILABLE, "scratch storage unavailable, retry later"),
        }
    }
}

impl From<RenewalError> for Failure {
    fn from(e: RenewalError) -> Self {
        match e {
            RenewalError::Token(TokenError::Malformed) => Failure::new(StatusCode::BAD_REQUEST, "malformed token"),
            RenewalError::Token(TokenError::Forged) => Failure::new(StatusCode::FORBIDDEN, "invalid token"),
            RenewalError::Token(TokenError::Expired) => Failure::new(StatusCode::GONE, "token expired"),
            RenewalError::Replayed(_) => Failure::new(StatusCode::GONE, "token already used"),
            RenewalError::Gone(_) => Failure::new(StatusCode::GONE, "no renewal pending for this token"),
            RenewalError::GatewayNotEnabled(_) => Failure::new(StatusCode::FORBIDDEN, "gateway not enabled"),
            RenewalError::Record(r) => r.into(),
        }
    }
}

impl From<CheckinError> for Failure {
    fn from(e: CheckinError) -> Self {
        match e {
            CheckinError::Token(TokenError::Malformed) => Failure::new(StatusCode::BAD_REQUEST, "malformed token"),
            CheckinError::Token(TokenError::Forged) => Failure::new(StatusCode::FORBIDDEN, "invalid token"),
            CheckinError::Token(TokenError::Expired) => Failure::new(StatusCode::GONE, "token expired"),
            CheckinError::Refused { .. } => Failure::new(StatusCode::GONE, "check-in already recorded or no longer accepted"),
            CheckinError::NotRecorded => Failure::new(StatusCode::NOT_FOUND, "check-ins are not recorded by this deployment"),
            CheckinError::GatewayNotEnabled(_) => Failure::new(StatusCode::FORBIDDEN, "gateway not enabled"),
            CheckinError::Record(r) => r.into(),
            CheckinError::Store(s) => s.into(),
        }
    }
}

fn request_id(req: &Request) -> String {
    if let Some(ctx) = req.lambda_context_ref() {
        return ctx.request_id.clone();
    }
    match req.request_context_ref() {
        Some(RequestContext::ApiGatewayV2(ctx)) => ctx.request_id.clone().unwrap_or_default(),
        Some(RequestContext::ApiGatewayV1(ctx)) => ctx.request_id.clone().unwrap_or_default(),
        _ => String::new(),
    }
}

/// The request path without the API Gateway stage that lambda_http puts in front of it for
/// named stages (REST APIs, HTTP APIs with stages), so routes match however they are deployed.
pub fn route_path(req: &Request) -> &str {
    let path = req.uri().path();
    let stage = match req.request_context_ref() {
        Some(RequestContext::ApiGatewayV2(ctx)) => ctx.stage.as_deref(),
        Some(RequestContext::ApiGatewayV1(ctx)) => ctx.stage.as_deref(),
        _ => None,
    };
    match stage {
        Some(stage) if stage != "$default" && !stage.is_empty() => {
            path.strip_prefix('/').and_then(|p| p.strip_prefix(stage)).filter(|rest| rest.starts_with('/')).unwrap_or(path)
        }
        _ => path,
    }
}

/// `https://<domain>[/<stage>]` of the API Gateway API the request came through, from the
/// request context API Gateway writes (a domain it serves, not a client's Host header), when it
/// is a plain host name.
pub fn request_base_url(req: &Request) -> Option<String> {
    let (domain, stage) = match req.request_context_ref() {
        Some(RequestContext::ApiGatewayV2(ctx)) => (ctx.domain_name.as_deref()?, ctx.stage.as_deref()),
        Some(RequestContext::ApiGatewayV1(ctx)) => (ctx.domain_name.as_deref()?, ctx.stage.as_deref()),
        _ => return None,
    };
    let host_ok = !domain.is_empty() && domain.len() <= 253 && domain.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    if !host_ok {
        return None;
    }
    match stage {
        Some(stage) if stage != "$default" && !stage.is_empty() => {
            stage.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-').then(|| format!("https://{domain}/{stage}"))
        }
        _ => Some(format!("https://{domain}")),
    }
}

fn text_response(body: impl Into<Body>) -> Response<Body> {
    Response::builder()
        .status(StatusCode::OK)
        .header(CONTENT_TYPE, "text/plain; charset=utf-8")
        .header(CACHE_CONTROL, "no-store")
        .body(body.into())
        .expect("static response parts are valid")
}

/// The client certificate PEM of a request: from the API Gateway event (HTTP API's
/// `authentication.clientCert`, REST API's `identity.clientCert`), or from the trusted proxy
/// header when, and only when, the deployment enables it.
pub fn client_cert_pem(req: &Request, header: &CertHeader) -> Result<Vec<u8>, IdentityError> {
    let from_event = match req.request_context_ref() {
        Some(RequestContext::ApiGatewayV2(ctx)) => ctx.authentication.as_ref().and_then(|a| a.client_cert.as_ref()).and_then(|c| c.client_cert_pem.clone()),
        Some(RequestContext::ApiGatewayV1(ctx)) => {
            ctx.identity.other.get("clientCert").and_then(|c| c.get("clientCertPem")).and_then(|p| p.as_str()).map(str::to_string)
        }
        _ => None,
    };
    if let Some(pem) = from_event.filter(|p| !p.trim().is_empty()) {
        return Ok(pem.into_bytes());
    }
    if let CertHeader::Trusted(name) = header {
        let mut values = req.headers().get_all(name).iter();
        if let Some(value) = values.next() {
            if values.next().is_some() {
                return Err(IdentityError::Malformed("client certificate header repeated".into()));
            }
            let text = value.to_str().map_err(|_| IdentityError::Malformed("header is not ASCII".into()))?;
            if !text.is_empty() {
                return decode_escaped_pem(text);
            }
        }
    }
    Err(IdentityError::Missing)
}

/// `GET /boot.ipxe`: the boot script of the gateway presenting the client certificate.
pub async fn boot_handler(app: &BootApp, req: Request) -> Response<Body> {
    let started = Instant::now();
    let rid = request_id(&req);
    let mut identity: Option<ClientIdentity> = None;
    let result = handle_boot(app, &req, &mut identity).await;
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    let fingerprint = identity.as_ref().map(|i| i.fingerprint.as_str()).unwrap_or("");
    match result {
        Ok(script) => {
            tracing::info!(
                request_id = %rid, route = "boot", fingerprint, gateway = %script.gateway, release = %script.release,
                reason = script.reason.as_str(), arch = script.arch, token_id = %script.token_id.map(|t| t.to_string()).unwrap_or_default(),
                outcome = "ok", status = 200u16, latency_ms, "boot script served"
            );
            let mut counters = vec![Counter::Boots];
            if script.reason == BootReason::Fallback {
                tracing::warn!(
                    request_id = %rid, route = "boot", boot_event = "fallback", fingerprint, gateway = %script.gateway,
                    from = %script.target, to = %script.release, failures = script.failures,
                    reason = %format!("{} consecutive failed boots of {}", script.failures, script.target),
                    "gateway falls back to its last known good release"
                );
                counters.push(Counter::Fallbacks);
            }
            if let Some(why) = &script.fallback_refused {
                tracing::warn!(
                    request_id = %rid, route = "boot", boot_event = "fallback_refused", fingerprint, gateway = %script.gateway,
                    target = %script.target, failures = script.failures, detail = %why, "no usable last known good release: the target is served"
                );
            }
            if script.cert.expiring {
                tracing::warn!(
                    request_id = %rid, route = "boot", boot_event = "cert_expiring", fingerprint, gateway = %script.gateway,
                    days_left = script.cert.days_left, "the gateway's certificate expires soon: renew it (ipxe-edge gateway renew)"
                );
                counters.push(Counter::CertExpiring);
            }
            if let Some(old) = &script.cert.renewed_from {
                let retired: Vec<&str> = script.cert.retired.iter().map(|f| f.as_str()).collect();
                tracing::info!(
                    request_id = %rid, route = "boot", boot_event = "cert_renewed", fingerprint, gateway = %script.gateway,
                    renews = old.as_str(), retired = %retired.join(","), days_left = script.cert.days_left,
                    "first boot with a renewed certificate"
                );
            }
            if let Some(why) = &script.cert.retire_error {
                tracing::error!(request_id = %rid, route = "boot", fingerprint, gateway = %script.gateway, detail = %why, "older certificates not retired; retire them with gateway revoke-cert");
            }
            if let Some(why) = &script.journal_error {
                tracing::error!(request_id = %rid, route = "boot", fingerprint, gateway = %script.gateway, detail = %why, "boot not recorded; the script was served");
                counters.push(Counter::JournalFailures);
            }
            app.metrics.record("ok", &counters);
            // The answer names the gateway and the certificate it was given for (a gateway
            // holds two during a renewal). Gateway names are plain ASCII by the naming rules.
            let mut response = text_response(script.script);
            for (name, value) in [(GATEWAY_HEADER, script.gateway.as_str()), (FINGERPRINT_HEADER, script.cert.fingerprint.as_str())] {
                if let Ok(value) = lambda_http::http::HeaderValue::from_str(value) {
                    response.headers_mut().insert(name, value);
                }
            }
            response
        }
        Err((failure, detail)) => {
            if failure.status == StatusCode::FORBIDDEN {
                app.metrics.record(failure.outcome(), &[Counter::Boots, Counter::RefusedCertificates]);
            } else {
                app.metrics.record(failure.outcome(), &[Counter::Boots]);
            }
            let subject = identity.as_ref().map(|i| i.subject.as_str()).unwrap_or("");
            let status = failure.status.as_u16();
            if failure.status.is_server_error() {
                tracing::error!(request_id = %rid, route = "boot", fingerprint, subject, outcome = failure.outcome(), status, latency_ms, detail = %detail, "boot refused");
            } else {
                tracing::warn!(request_id = %rid, route = "boot", fingerprint, subject, outcome = failure.outcome(), status, latency_ms, detail = %detail, "boot refused");
            }
            failure.into_response()
        }
    }
}

async fn handle_boot(app: &BootApp, req: &Request, identity: &mut Option<ClientIdentity>) -> Result<BootScript, (Failure, String)> {
    if route_path(req) != BOOT_PATH {
        return Err((Failure::new(StatusCode::NOT_FOUND, "not found"), "unknown path".into()));
    }
    if req.method() != Method::GET {
        return Err((Failure::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"), format!("method {}", req.method())));
    }
    let now = clock::unix_now();
    let verified = match req.extensions().get::<VerifiedClient>() {
        Some(VerifiedClient(client)) => client.clone(),
        None => {
            let pem = client_cert_pem(req, &app.cert_header).map_err(|e| ((&e).into(), e.to_string()))?;
            app.verifier.verify_pem(&pem, now as i64).map_err(|e| {
                let detail = match pem_certificates(&pem).ok().and_then(|ders| ders.first().and_then(|d| describe_der(d))) {
                    Some((subject, issuer)) => format!("{e} (subject {subject}, issuer {issuer})"),
                    None => e.to_string(),
                };
                (Failure::from(&e), detail)
            })?
        }
    };
    *identity = Some(verified.clone());
    let query = match req.query_string_parameters_ref() {
        Some(params) => BootQuery::from_pairs(params.iter()),
        None => Ok(BootQuery::default()),
    }
    .map_err(|e| (Failure::from(e.clone()), e.to_string()))?;
    app.service.boot(&verified, &query, now).await.map_err(|e| {
        let detail = match &e {
            BootError::UnknownGateway => "unknown gateway: enroll this fingerprint to let it boot".to_string(),
            other => other.to_string(),
        };
        (Failure::from(e), detail)
    })
}

/// The secrets API: `GET /secrets/{token}`, the gateway's secrets, exactly once per token; and
/// `POST /checkin/{token}` ([`checkin_handler`]).
pub async fn redeem_handler(app: &RedeemApp, req: Request) -> Response<Body> {
    if route_path(&req).starts_with(CHECKIN_PREFIX) {
        return checkin_handler(app, req).await;
    }
    if route_path(&req).starts_with(RENEWAL_PREFIX) {
        return renewal_handler(app, req).await;
    }
    let started = Instant::now();
    let rid = request_id(&req);
    let mut security = None;
    let token = route_path(&req).strip_prefix(SECRETS_PREFIX).filter(|t| !t.is_empty() && !t.contains('/'));
    let result = match token {
        None => Err(None),
        // Checked before anything else so that HEAD and friends never touch the ledger.
        Some(_) if req.method() != Method::GET => Err(Some(Failure::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed"))),
        Some(token) => app.service.redeem_at(token, clock::unix_now(), request_base_url(&req).as_deref()).await.map_err(|e| {
            match &e {
                RedeemError::Replayed(_) => security = Some(Counter::TokenReplays),
                RedeemError::Token(TokenError::Forged) => security = Some(Counter::ForgedTokens),
                _ => {}
            }
            Some(log_redeem_error(&rid, e))
        }),
    };
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    match result {
        Ok(redeemed) => {
            let boot_outcome = match &redeemed.signal {
                SignalOutcome::NotRecorded => "not_recorded".to_string(),
                SignalOutcome::Recorded(boot) => boot.outcome.as_str().to_string(),
                SignalOutcome::Ignored(why) => format!("unchanged: {why}"),
                SignalOutcome::Failed(_) => "journal_failed".to_string(),
            };
            tracing::info!(
                request_id = %rid, route = "redeem", token_id = %redeemed.claims.id,
                fingerprint = redeemed.claims.fingerprint.as_str(), boot_outcome, outcome = "ok", status = 200u16, latency_ms,
                "secrets served"
            );
            if let SignalOutcome::Failed(why) = &redeemed.signal {
                tracing::error!(request_id = %rid, route = "redeem", token_id = %redeemed.claims.id, detail = %why, "boot outcome not recorded; the secret was served");
                app.metrics.record("ok", &[Counter::Redemptions, Counter::JournalFailures]);
            } else {
                app.metrics.record("ok", &[Counter::Redemptions]);
            }
            text_response(redeemed.secret)
        }
        Err(failure) => {
            let failure = failure.unwrap_or_else(|| Failure::new(StatusCode::NOT_FOUND, "not found"));
            tracing::info!(request_id = %rid, route = "redeem", outcome = failure.outcome(), status = failure.status.as_u16(), latency_ms, "secrets not served");
            match security {
                Some(counter) => app.metrics.record(failure.outcome(), &[Counter::Redemptions, counter]),
                None => app.metrics.record(failure.outcome(), &[Counter::Redemptions]),
            }
            failure.into_response()
        }
    }
}

/// `POST /checkin/{token}`: the booted system's services are up. `204` once; `410` for a
/// replay, a superseded boot or a late check-in; `403` for a forged token; none of them
/// changes any record.
pub async fn checkin_handler(app: &RedeemApp, req: Request) -> Response<Body> {
    let started = Instant::now();
    let rid = request_id(&req);
    let token = route_path(&req).strip_prefix(CHECKIN_PREFIX).filter(|t| !t.is_empty() && !t.contains('/'));
    let result = match token {
        None => Err(Failure::new(StatusCode::NOT_FOUND, "not found")),
        Some(_) if req.method() != Method::POST => Err(Failure { allow: "POST", ..Failure::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed") }),
        Some(token) => app.service.checkin(token, clock::unix_now()).await.map_err(|e| {
            match &e {
                CheckinError::Token(TokenError::Forged) => tracing::warn!(
                    request_id = %rid, route = "checkin", security_event = "token_forged", outcome = "forbidden",
                    "check-in token with an invalid signature refused"
                ),
                CheckinError::Refused { id, why } => {
                    tracing::warn!(request_id = %rid, route = "checkin", token_id = %id, outcome = "gone", detail = %why, "check-in refused")
                }
                CheckinError::Store(s) => {
                    tracing::error!(request_id = %rid, route = "checkin", outcome = "unavailable", detail = %s, "check-in not recorded; it can be retried")
                }
                CheckinError::GatewayNotEnabled(name) => tracing::warn!(
                    request_id = %rid, route = "checkin", security_event = "gateway_not_enabled", gateway = %name, outcome = "forbidden",
                    "check-in of a disabled or revoked gateway refused"
                ),
                _ => {}
            }
            Failure::from(e)
        }),
    };
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    match result {
        Ok(done) => {
            tracing::info!(
                request_id = %rid, route = "checkin", token_id = %done.claims.id, fingerprint = done.claims.fingerprint.as_str(),
                release = %done.boot.release, boot_outcome = done.boot.outcome.as_str(), outcome = "ok", status = 204u16, latency_ms,
                "check-in recorded"
            );
            app.metrics.record("ok", &[Counter::Checkins]);
            Response::builder().status(StatusCode::NO_CONTENT).header(CACHE_CONTROL, "no-store").body(Body::Empty).expect("static response parts are valid")
        }
        Err(failure) => {
            tracing::info!(request_id = %rid, route = "checkin", outcome = failure.outcome(), status = failure.status.as_u16(), latency_ms, "check-in not recorded");
            app.metrics.record(failure.outcome(), &[Counter::Checkins]);
            failure.into_response()
        }
    }
}

/// What a renewal fetch answers: the gateway's new `autoexec.ipxe`, or its certificate and key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RenewalFormat {
    Autoexec,
    Pem,
}

fn renewal_format(req: &Request) -> Result<RenewalFormat, Failure> {
    let params = req.query_string_parameters_ref();
    let mut values = params.map(|p| p.all("format").unwrap_or_default()).unwrap_or_default().into_iter();
    let format = match (values.next(), values.next()) {
        (None, _) => RenewalFormat::Autoexec,
        (Some("ipxe"), None) => RenewalFormat::Autoexec,
        (Some("pem"), None) => RenewalFormat::Pem,
        _ => return Err(Failure::new(StatusCode::BAD_REQUEST, "format must be ipxe or pem")),
    };
    Ok(format)
}

/// `GET /renewal/{token}`: the gateway's renewed identity, exactly once: its `autoexec.ipxe`,
/// or with `?format=pem` its certificate and private key. `410` once fetched (or replaced or
/// retired), `403` when forged; a refusal spends nothing.
pub async fn renewal_handler(app: &RedeemApp, req: Request) -> Response<Body> {
    let started = Instant::now();
    let rid = request_id(&req);
    let token = route_path(&req).strip_prefix(RENEWAL_PREFIX).filter(|t| !t.is_empty() && !t.contains('/'));
    let mut security = None;
    let result = match token {
        None => Err(Failure::new(StatusCode::NOT_FOUND, "not found")),
        Some(_) if req.method() != Method::GET => Err(Failure::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed")),
        Some(token) => match renewal_format(&req) {
            Err(failure) => Err(failure),
            Ok(format) => app.service.fetch_renewal(token, clock::unix_now()).await.map(|f| (f, format)).map_err(|e| {
                match &e {
                    RenewalError::Token(TokenError::Forged) => {
                        security = Some(Counter::ForgedTokens);
                        tracing::warn!(
                            request_id = %rid, route = "renewal", security_event = "token_forged", outcome = "forbidden",
                            "renewal token with an invalid signature refused"
                        )
                    }
                    RenewalError::Replayed(id) => {
                        security = Some(Counter::TokenReplays);
                        tracing::warn!(
                            request_id = %rid, route = "renewal", security_event = "token_replay", token_id = %id, outcome = "replay",
                            "replayed renewal token refused"
                        )
                    }
                    RenewalError::Record(r) => {
                        tracing::error!(request_id = %rid, route = "renewal", outcome = "unavailable", detail = %r, "renewal not served, token left redeemable")
                    }
                    _ => {}
                }
                Failure::from(e)
            }),
        },
    };
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    match result {
        Ok((fetched, format)) => {
            tracing::info!(
                request_id = %rid, route = "renewal", token_id = %fetched.claims.id, gateway = %fetched.gateway,
                fingerprint = fetched.claims.fingerprint.as_str(), renewed = fetched.renewal.fingerprint.as_str(),
                format = if format == RenewalFormat::Pem { "pem" } else { "ipxe" }, outcome = "ok", status = 200u16, latency_ms,
                "renewal handed over"
            );
            if let Some(why) = &fetched.delete_error {
                tracing::error!(request_id = %rid, route = "renewal", gateway = %fetched.gateway, detail = %why, "pending renewal not deleted after hand-over; its token is spent");
            }
            app.metrics.record("ok", &[Counter::Renewals]);
            let (body, content_type) = match format {
                RenewalFormat::Autoexec => (fetched.renewal.autoexec, "text/plain; charset=utf-8"),
                RenewalFormat::Pem => (format!("{}{}", fetched.renewal.cert_pem, fetched.renewal.key_pem), "application/x-pem-file"),
            };
            Response::builder()
                .status(StatusCode::OK)
                .header(CONTENT_TYPE, content_type)
                .header(CACHE_CONTROL, "no-store")
                .body(body.into())
                .expect("static response parts are valid")
        }
        Err(failure) => {
            tracing::info!(request_id = %rid, route = "renewal", outcome = failure.outcome(), status = failure.status.as_u16(), latency_ms, "renewal not served");
            match security {
                Some(counter) => app.metrics.record(failure.outcome(), &[Counter::Renewals, counter]),
                None => app.metrics.record(failure.outcome(), &[Counter::Renewals]),
            }
            failure.into_response()
        }
    }
}

/// Security-relevant redeem failures get their own log line; replays are warnings (an alarm
/// watches for them). The line names the token id, never the token.
fn log_redeem_error(rid: &str, e: RedeemError) -> Failure {
    match &e {
        RedeemError::Replayed(id) => tracing::warn!(
            request_id = %rid, route = "redeem", security_event = "token_replay", token_id = %id, outcome = "replay",
            "replayed secrets token refused"
        ),
        RedeemError::Token(TokenError::Forged) => tracing::warn!(
            request_id = %rid, route = "redeem", security_event = "token_forged", outcome = "forbidden",
            "secrets token with an invalid signature refused"
        ),
        RedeemError::SecretsGone(id) => tracing::error!(
            request_id = %rid, route = "redeem", token_id = %id, outcome = "not_found",
            "secrets object missing for a valid token, token left redeemable"
        ),
        RedeemError::Record(s) => tracing::error!(
            request_id = %rid, route = "redeem", outcome = "unavailable", detail = %s,
            "secrets not served, token left redeemable"
        ),
        RedeemError::GatewayNotEnabled(name) => tracing::warn!(
            request_id = %rid, route = "redeem", gateway = %name, outcome = "forbidden",
            "no scratch key for a gateway that is not enabled, token left redeemable"
        ),
        RedeemError::ScratchNotConfigured | RedeemError::ScratchUnavailable(_) => tracing::error!(
            request_id = %rid, route = "redeem", outcome = "unavailable", detail = %e,
            "scratch key not minted, secrets not served, token left redeemable"
        ),
        RedeemError::Token(_) => {}
    }
    Failure::from(e)
}
