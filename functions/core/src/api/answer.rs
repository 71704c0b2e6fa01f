//! What a handler returns: the response, and what happened as data ([`Record`]) for the one
//! wrapper to log and count. Every error's status is decided here, in one table ([`Failure`]).

use crate::api::metrics::Counter;
use crate::domain::identity::IdentityError;
use crate::domain::query::QueryError;
use crate::domain::token::TokenError;
use crate::service::boot::BootError;
use crate::service::redeem::{CheckinError, RedeemError, RenewalError};
use crate::storage::records::RecordError;
use crate::storage::StoreError;
use bytes::Bytes;
use http::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use http::{Response, StatusCode};

/// Seconds a client should wait before retrying after a storage outage.
pub const RETRY_AFTER_SECS: u64 = 5;

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
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Failure {
            status,
            message: message.into(),
            retry_after: status == StatusCode::SERVICE_UNAVAILABLE,
            allow: "GET",
        }
    }

    pub fn not_found() -> Self {
        Failure::new(StatusCode::NOT_FOUND, "not found")
    }

    pub fn method_not_allowed(allow: &'static str) -> Self {
        Failure { allow, ..Failure::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed") }
    }

    pub fn response(&self) -> Response<Bytes> {
        let mut builder = Response::builder()
            .status(self.status)
            .header(CONTENT_TYPE, "text/plain; charset=utf-8")
            .header(CACHE_CONTROL, "no-store");
        if self.retry_after {
            builder = builder.header(RETRY_AFTER, RETRY_AFTER_SECS.to_string());
        }
        if self.status == StatusCode::METHOD_NOT_ALLOWED {
            builder = builder.header(ALLOW, self.allow);
        }
        builder.body(Bytes::from(format!("{}\n", self.message))).expect("static response parts are valid")
    }

    /// The outcome label of logs and metrics.
    pub fn outcome(&self) -> &'static str {
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

/// A `200` with a plain-text body, never cached.
pub fn text(body: impl Into<Bytes>) -> Response<Bytes> {
    typed(body, "text/plain; charset=utf-8")
}

pub fn typed(body: impl Into<Bytes>, content_type: &'static str) -> Response<Bytes> {
    Response::builder()
        .status(StatusCode::OK)
        .header(CONTENT_TYPE, content_type)
        .header(CACHE_CONTROL, "no-store")
        .body(body.into())
        .expect("static response parts are valid")
}

pub fn no_content() -> Response<Bytes> {
    Response::builder()
        .status(StatusCode::NO_CONTENT)
        .header(CACHE_CONTROL, "no-store")
        .body(Bytes::new())
        .expect("static response parts are valid")
}

/// How a token that does not verify is answered, whatever it was for.
fn token_failure(e: &TokenError) -> Failure {
    match e {
        TokenError::Malformed => Failure::new(StatusCode::BAD_REQUEST, "malformed token"),
        TokenError::Forged => Failure::new(StatusCode::FORBIDDEN, "invalid token"),
        TokenError::Expired => Failure::new(StatusCode::GONE, "token expired"),
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) => {
                Failure::new(StatusCode::SERVICE_UNAVAILABLE, "storage unavailable, retry later")
            }
            StoreError::Conflict(_) => Failure::new(StatusCode::SERVICE_UNAVAILABLE, "concurrent update, retry later"),
            StoreError::InvalidKey(_) => {
                Failure::new(StatusCode::INTERNAL_SERVER_ERROR, "record invalid; see server logs")
            }
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
            | RecordError::LastCertificate { .. }
            | RecordError::Refused(_) => {
                Failure::new(StatusCode::INTERNAL_SERVER_ERROR, "record invalid; see server logs")
            }
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
            BootError::Revoked(_) | BootError::Disabled(_) => {
                Failure::new(StatusCode::FORBIDDEN, "gateway not allowed to boot")
            }
            BootError::NoAssetsForArch { .. } => Failure::new(StatusCode::NOT_FOUND, e.to_string()),
            BootError::Record(r) => r.into(),
            BootError::ChannelMissing { .. }
            | BootError::ReleaseMissing(_)
            | BootError::SecretsMissing(_)
            | BootError::Render(_)
            | BootError::Mint(_) => {
                Failure::new(StatusCode::INTERNAL_SERVER_ERROR, "boot configuration error; see server logs")
            }
        }
    }
}

impl From<RedeemError> for Failure {
    fn from(e: RedeemError) -> Self {
        match e {
            RedeemError::Token(t) => token_failure(&t),
            RedeemError::Replayed(_) => Failure::new(StatusCode::GONE, "token already used"),
            RedeemError::SecretsGone(_) => Failure::new(StatusCode::NOT_FOUND, "no secrets for this gateway"),
            RedeemError::Record(r) => r.into(),
            RedeemError::GatewayNotEnabled(_) => Failure::new(StatusCode::FORBIDDEN, "gateway not enabled"),
            RedeemError::ScratchNotConfigured => {
                Failure::new(StatusCode::INTERNAL_SERVER_ERROR, "secrets configuration error; see server logs")
            }
            RedeemError::ScratchUnavailable(_) => {
                Failure::new(StatusCode::SERVICE_UNAVAILABLE, "scratch storage unavailable, retry later")
            }
        }
    }
}

impl From<RenewalError> for Failure {
    fn from(e: RenewalError) -> Self {
        match e {
            RenewalError::Token(t) => token_failure(&t),
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
            CheckinError::Token(t) => token_failure(&t),
            CheckinError::Refused { .. } => {
                Failure::new(StatusCode::GONE, "check-in already recorded or no longer accepted")
            }
            CheckinError::NotRecorded => {
                Failure::new(StatusCode::NOT_FOUND, "check-ins are not recorded by this deployment")
            }
            CheckinError::GatewayNotEnabled(_) => Failure::new(StatusCode::FORBIDDEN, "gateway not enabled"),
            CheckinError::Record(r) => r.into(),
            CheckinError::Store(s) => s.into(),
        }
    }
}

/// How loud a log line is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
    Error,
}

/// The fields a log line may carry; unset ones are left out of the line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fields {
    pub security_event: Option<&'static str>,
    pub boot_event: Option<&'static str>,
    pub fingerprint: Option<String>,
    pub subject: Option<String>,
    pub gateway: Option<String>,
    pub release: Option<String>,
    pub reason: Option<String>,
    pub arch: Option<String>,
    pub token_id: Option<String>,
    pub boot_outcome: Option<String>,
    pub renewed: Option<String>,
    pub renews: Option<String>,
    pub retired: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub target: Option<String>,
    pub failures: Option<u32>,
    pub days_left: Option<i64>,
    pub format: Option<&'static str>,
    /// The iPXE version a gateway reported, and whether its script checks image digests.
    pub ipxe_version: Option<String>,
    pub digests_checked: Option<bool>,
    pub detail: Option<String>,
    /// An event line's own outcome (the request's is [`Record::outcome`]).
    pub outcome: Option<&'static str>,
}

/// A log line besides the request's own: a security or boot event, or a failure worth its own
/// line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    pub level: Level,
    pub message: &'static str,
    pub fields: Fields,
}

/// What happened to one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Level and message of the request's line.
    pub level: Level,
    pub message: &'static str,
    pub outcome: &'static str,
    /// Counted once each, with the outcome.
    pub counters: Vec<Counter>,
    pub fields: Fields,
    /// Written before the request's line.
    pub events: Vec<Event>,
}

impl Record {
    pub fn new(
        level: Level,
        message: &'static str,
        outcome: &'static str,
        counters: Vec<Counter>,
        fields: Fields,
    ) -> Self {
        Record { level, message, outcome, counters, fields, events: Vec::new() }
    }

    pub fn event(&mut self, level: Level, message: &'static str, fields: Fields) {
        self.events.push(Event { level, message, fields });
    }
}

/// A handler's answer: the response and its record.
#[derive(Debug)]
pub struct Handled {
    pub response: Response<Bytes>,
    pub record: Record,
}

impl Handled {
    /// An error answer recorded at `level` with `message`, counted in `counters`.
    pub fn failed(
        failure: Failure,
        level: Level,
        message: &'static str,
        counters: Vec<Counter>,
        fields: Fields,
    ) -> Self {
        let record = Record::new(level, message, failure.outcome(), counters, fields);
        Handled { response: failure.response(), record }
    }
}
