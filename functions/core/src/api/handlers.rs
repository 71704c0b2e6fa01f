//! The four handlers. Each checks its inputs, calls its use case and returns the answer with
//! what happened ([`Handled`]); none logs or counts anything itself ([`super::pipeline`] does).

use super::answer::{no_content, text, typed, Failure, Fields, Handled, Level, Record};
use super::pipeline::{BootApp, ClientCert, RedeemApp, RequestInfo};
use crate::api::metrics::Counter;
use crate::domain::identity::{describe_der, pem_certificates, ClientIdentity, IdentityError};
use crate::domain::journal::BootReason;
use crate::domain::query::BootQuery;
use crate::domain::token::TokenError;
use crate::service::boot::{BootError, BootScript};
use crate::service::redeem::{CheckinError, RedeemError, RenewalError, SignalOutcome};
use http::StatusCode;

/// Response headers of a served boot script: the gateway, and the certificate used.
pub const GATEWAY_HEADER: &str = "x-ipxe-edge-gateway";
pub const FINGERPRINT_HEADER: &str = "x-ipxe-edge-fingerprint";

fn some(value: impl ToString) -> Option<String> {
    Some(value.to_string())
}

/// `GET /boot.ipxe`.
pub async fn boot(app: &BootApp, info: &RequestInfo, now: u64) -> Handled {
    let identity = match identify(app, &info.client, now).await {
        Ok(identity) => identity,
        Err((failure, detail, subject)) => {
            return boot_refused(failure, Fields { subject, detail: Some(detail), ..Fields::default() })
        }
    };
    let fields = Fields {
        fingerprint: some(identity.fingerprint.as_str()),
        subject: some(&identity.subject),
        ..Fields::default()
    };
    let query = match BootQuery::from_pairs(info.query.iter().map(|(k, v)| (k.as_str(), v.as_str()))) {
        Ok(query) => query,
        Err(e) => return boot_refused(Failure::from(e.clone()), Fields { detail: some(e), ..fields }),
    };
    match app.service.boot(&identity, &query, now).await {
        Ok(script) => boot_served(script, &identity),
        Err(e) => {
            let detail = match &e {
                BootError::UnknownGateway => "unknown gateway: enroll this fingerprint to let it boot".to_string(),
                other => other.to_string(),
            };
            boot_refused(Failure::from(e), Fields { detail: Some(detail), ..fields })
        }
    }
}

/// A request the boot function does not route.
pub fn boot_unrouted(failure: Failure, detail: String) -> Handled {
    boot_refused(failure, Fields { detail: Some(detail), ..Fields::default() })
}

/// The identity the server in front verified, or the one the presented chain proves.
async fn identify(
    app: &BootApp,
    client: &ClientCert,
    now: u64,
) -> Result<ClientIdentity, (Failure, String, Option<String>)> {
    let pem = match client {
        ClientCert::Verified(identity) => return Ok(identity.clone()),
        ClientCert::Presented(Ok(pem)) => pem,
        ClientCert::Presented(Err(e)) => return Err((Failure::from(e), e.to_string(), None)),
        ClientCert::None => {
            return Err((Failure::from(&IdentityError::Missing), IdentityError::Missing.to_string(), None))
        }
    };
    app.trust.verifier().await.verify_pem(pem, now as i64).map_err(|e| {
        let described = pem_certificates(pem).ok().and_then(|ders| ders.first().and_then(|d| describe_der(d)));
        let detail = match &described {
            Some((subject, issuer)) => format!("{e} (subject {subject}, issuer {issuer})"),
            None => e.to_string(),
        };
        (Failure::from(&e), detail, None)
    })
}

fn boot_refused(failure: Failure, fields: Fields) -> Handled {
    let mut counters = vec![Counter::Boots];
    if failure.status == StatusCode::FORBIDDEN {
        counters.push(Counter::RefusedCertificates);
    }
    let level = if failure.status.is_server_error() { Level::Error } else { Level::Warn };
    Handled::failed(failure, level, "boot refused", counters, fields)
}

fn boot_served(script: BootScript, identity: &ClientIdentity) -> Handled {
    let gateway = Fields {
        fingerprint: some(identity.fingerprint.as_str()),
        gateway: some(&script.gateway),
        ..Fields::default()
    };
    let mut counters = vec![Counter::Boots];
    let mut record = Record::new(
        Level::Info,
        "boot script served",
        "ok",
        Vec::new(),
        Fields {
            release: some(&script.release),
            reason: some(script.reason.as_str()),
            arch: some(script.arch),
            token_id: script.token_id.map(|t| t.to_string()),
            ipxe_version: script.ipxe_version.map(|v| v.to_string()),
            digests_checked: Some(script.digests_checked),
            ..gateway.clone()
        },
    );
    if script.reason == BootReason::Fallback {
        let fields = Fields {
            boot_event: Some("fallback"),
            from: some(&script.target),
            to: some(&script.release),
            failures: Some(script.failures),
            reason: Some(format!("{} consecutive failed boots of {}", script.failures, script.target)),
            ..gateway.clone()
        };
        record.event(Level::Warn, "gateway falls back to its last known good release", fields);
        counters.push(Counter::Fallbacks);
    }
    if let Some(why) = &script.fallback_refused {
        let fields = Fields {
            boot_event: Some("fallback_refused"),
            target: some(&script.target),
            failures: Some(script.failures),
            detail: some(why),
            ..gateway.clone()
        };
        record.event(Level::Warn, "no usable last known good release: the target is served", fields);
    }
    if script.cert.expiring {
        let fields =
            Fields { boot_event: Some("cert_expiring"), days_left: Some(script.cert.days_left), ..gateway.clone() };
        record.event(Level::Warn, "the gateway's certificate expires soon: renew it (ipxe-edge gateway renew)", fields);
        counters.push(Counter::CertExpiring);
    }
    if let Some(old) = &script.cert.renewed_from {
        let retired: Vec<&str> = script.cert.retired.iter().map(|f| f.as_str()).collect();
        let fields = Fields {
            boot_event: Some("cert_renewed"),
            renews: some(old.as_str()),
            retired: Some(retired.join(",")),
            days_left: Some(script.cert.days_left),
            ..gateway.clone()
        };
        record.event(Level::Info, "first boot with a renewed certificate", fields);
    }
    if let Some(why) = &script.cert.retire_error {
        record.event(
            Level::Error,
            "older certificates not retired; retire them with gateway revoke-cert",
            Fields { detail: some(why), ..gateway.clone() },
        );
    }
    if let Some(why) = &script.journal_error {
        record.event(
            Level::Error,
            "boot not recorded; the script was served",
            Fields { detail: some(why), ..gateway.clone() },
        );
        counters.push(Counter::JournalFailures);
    }
    record.counters = counters;
    // The answer names the gateway and the certificate it was given for (a gateway holds two
    // during a renewal). Gateway names are plain ASCII by the naming rules.
    let mut response = text(script.script);
    for (name, value) in
        [(GATEWAY_HEADER, script.gateway.as_str()), (FINGERPRINT_HEADER, script.cert.fingerprint.as_str())]
    {
        if let Ok(value) = http::HeaderValue::from_str(value) {
            response.headers_mut().insert(name, value);
        }
    }
    Handled { response, record }
}

/// `GET /secrets/{token}`: the gateway's secrets, exactly once per token.
pub async fn secrets(app: &RedeemApp, token: &str, info: &RequestInfo, now: u64) -> Handled {
    match app.service.redeem_at(token, now, info.base_url.as_deref()).await {
        Ok(redeemed) => {
            let boot_outcome = match &redeemed.signal {
                SignalOutcome::NotRecorded => "not_recorded".to_string(),
                SignalOutcome::Recorded(boot) => boot.outcome.as_str().to_string(),
                SignalOutcome::Ignored(why) => format!("unchanged: {why}"),
                SignalOutcome::Failed(_) => "journal_failed".to_string(),
            };
            let token_id = some(redeemed.claims.id);
            let fields = Fields {
                token_id: token_id.clone(),
                fingerprint: some(redeemed.claims.fingerprint.as_str()),
                boot_outcome: Some(boot_outcome),
                ..Fields::default()
            };
            let mut record = Record::new(Level::Info, "secrets served", "ok", vec![Counter::Redemptions], fields);
            if let SignalOutcome::Failed(why) = &redeemed.signal {
                record.event(
                    Level::Error,
                    "boot outcome not recorded; the secret was served",
                    Fields { token_id, detail: some(why), ..Fields::default() },
                );
                record.counters.push(Counter::JournalFailures);
            }
            Handled { response: text(redeemed.secret), record }
        }
        Err(e) => {
            let mut counters = vec![Counter::Redemptions];
            let event = redeem_event(&e, &mut counters);
            with_event(secrets_refused(Failure::from(e), counters), event)
        }
    }
}

pub fn secrets_refused(failure: Failure, counters: Vec<Counter>) -> Handled {
    Handled::failed(failure, Level::Info, "secrets not served", counters, Fields::default())
}

/// Security-relevant redeem failures get their own line; replays are warnings (an alarm
/// watches for them). The line names the token id, never the token.
fn redeem_event(e: &RedeemError, counters: &mut Vec<Counter>) -> Option<(Level, &'static str, Fields)> {
    let event = match e {
        RedeemError::Replayed(id) => {
            counters.push(Counter::TokenReplays);
            let fields = Fields {
                security_event: Some("token_replay"),
                token_id: some(id),
                outcome: Some("replay"),
                ..Fields::default()
            };
            (Level::Warn, "replayed secrets token refused", fields)
        }
        RedeemError::Token(TokenError::Forged) => {
            counters.push(Counter::ForgedTokens);
            (
                Level::Warn,
                "secrets token with an invalid signature refused",
                Fields { security_event: Some("token_forged"), outcome: Some("forbidden"), ..Fields::default() },
            )
        }
        RedeemError::SecretsGone(id) => {
            let fields = Fields { token_id: some(id), outcome: Some("not_found"), ..Fields::default() };
            (Level::Error, "secrets object missing for a valid token, token left redeemable", fields)
        }
        RedeemError::Record(s) => (
            Level::Error,
            "secrets not served, token left redeemable",
            Fields { outcome: Some("unavailable"), detail: some(s), ..Fields::default() },
        ),
        RedeemError::GatewayNotEnabled(name) => {
            let fields = Fields { gateway: some(name), outcome: Some("forbidden"), ..Fields::default() };
            (Level::Warn, "no scratch key for a gateway that is not enabled, token left redeemable", fields)
        }
        RedeemError::ScratchNotConfigured | RedeemError::ScratchUnavailable(_) => {
            let fields = Fields { outcome: Some("unavailable"), detail: some(e), ..Fields::default() };
            (Level::Error, "scratch key not minted, secrets not served, token left redeemable", fields)
        }
        RedeemError::Token(_) => return None,
    };
    Some(event)
}

/// `POST /checkin/{token}`: the booted system's services are up. `204` once; `410` for a
/// replay, a superseded boot or a late check-in; `403` for a forged token or a gateway that is
/// not enabled; none of them changes any record.
pub async fn checkin(app: &RedeemApp, token: &str, now: u64) -> Handled {
    match app.service.checkin(token, now).await {
        Ok(done) => {
            let fields = Fields {
                token_id: some(done.claims.id),
                fingerprint: some(done.claims.fingerprint.as_str()),
                release: some(&done.boot.release),
                boot_outcome: some(done.boot.outcome.as_str()),
                ..Fields::default()
            };
            Handled {
                response: no_content(),
                record: Record::new(Level::Info, "check-in recorded", "ok", vec![Counter::Checkins], fields),
            }
        }
        Err(e) => {
            let event = match &e {
                CheckinError::Token(TokenError::Forged) => Some((
                    Level::Warn,
                    "check-in token with an invalid signature refused",
                    Fields { security_event: Some("token_forged"), outcome: Some("forbidden"), ..Fields::default() },
                )),
                CheckinError::Refused { id, why } => Some((
                    Level::Warn,
                    "check-in refused",
                    Fields { token_id: some(id), outcome: Some("gone"), detail: some(why), ..Fields::default() },
                )),
                CheckinError::Store(s) => Some((
                    Level::Error,
                    "check-in not recorded; it can be retried",
                    Fields { outcome: Some("unavailable"), detail: some(s), ..Fields::default() },
                )),
                CheckinError::GatewayNotEnabled(name) => Some((
                    Level::Warn,
                    "check-in of a disabled or revoked gateway refused",
                    Fields {
                        security_event: Some("gateway_not_enabled"),
                        gateway: some(name),
                        outcome: Some("forbidden"),
                        ..Fields::default()
                    },
                )),
                _ => None,
            };
            with_event(checkin_refused(Failure::from(e)), event)
        }
    }
}

pub fn checkin_refused(failure: Failure) -> Handled {
    Handled::failed(failure, Level::Info, "check-in not recorded", vec![Counter::Checkins], Fields::default())
}

/// What a renewal fetch answers: the gateway's new `autoexec.ipxe`, or its certificate and key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RenewalFormat {
    Autoexec,
    Pem,
}

fn renewal_format(query: &[(String, String)]) -> Result<RenewalFormat, Failure> {
    let mut values = query.iter().filter(|(k, _)| k == "format").map(|(_, v)| v.as_str());
    match (values.next(), values.next()) {
        (None, _) | (Some("ipxe"), None) => Ok(RenewalFormat::Autoexec),
        (Some("pem"), None) => Ok(RenewalFormat::Pem),
        _ => Err(Failure::new(StatusCode::BAD_REQUEST, "format must be ipxe or pem")),
    }
}

/// `GET /renewal/{token}`: the gateway's renewed identity, exactly once: its `autoexec.ipxe`,
/// or with `?format=pem` its certificate and private key. `410` once fetched (or replaced or
/// retired), `403` when forged; a refusal spends nothing.
pub async fn renewal(app: &RedeemApp, token: &str, info: &RequestInfo, now: u64) -> Handled {
    let format = match renewal_format(&info.query) {
        Ok(format) => format,
        Err(failure) => return renewal_refused(failure, vec![Counter::Renewals]),
    };
    match app.service.fetch_renewal(token, now).await {
        Ok(fetched) => {
            let fields = Fields {
                token_id: some(fetched.claims.id),
                gateway: some(&fetched.gateway),
                fingerprint: some(fetched.claims.fingerprint.as_str()),
                renewed: some(fetched.renewal.fingerprint.as_str()),
                format: Some(if format == RenewalFormat::Pem { "pem" } else { "ipxe" }),
                ..Fields::default()
            };
            let mut record = Record::new(Level::Info, "renewal handed over", "ok", vec![Counter::Renewals], fields);
            if let Some(why) = &fetched.delete_error {
                let fields = Fields { gateway: some(&fetched.gateway), detail: some(why), ..Fields::default() };
                record.event(Level::Error, "pending renewal not deleted after hand-over; its token is spent", fields);
            }
            let response = match format {
                RenewalFormat::Autoexec => typed(fetched.renewal.autoexec, "text/plain; charset=utf-8"),
                RenewalFormat::Pem => {
                    typed(format!("{}{}", fetched.renewal.cert_pem, fetched.renewal.key_pem), "application/x-pem-file")
                }
            };
            Handled { response, record }
        }
        Err(e) => {
            let mut counters = vec![Counter::Renewals];
            let event = match &e {
                RenewalError::Token(TokenError::Forged) => {
                    counters.push(Counter::ForgedTokens);
                    Some((
                        Level::Warn,
                        "renewal token with an invalid signature refused",
                        Fields {
                            security_event: Some("token_forged"),
                            outcome: Some("forbidden"),
                            ..Fields::default()
                        },
                    ))
                }
                RenewalError::Replayed(id) => {
                    counters.push(Counter::TokenReplays);
                    let fields = Fields {
                        security_event: Some("token_replay"),
                        token_id: some(id),
                        outcome: Some("replay"),
                        ..Fields::default()
                    };
                    Some((Level::Warn, "replayed renewal token refused", fields))
                }
                RenewalError::Record(r) => Some((
                    Level::Error,
                    "renewal not served, token left redeemable",
                    Fields { outcome: Some("unavailable"), detail: some(r), ..Fields::default() },
                )),
                _ => None,
            };
            with_event(renewal_refused(Failure::from(e), counters), event)
        }
    }
}

pub fn renewal_refused(failure: Failure, counters: Vec<Counter>) -> Handled {
    Handled::failed(failure, Level::Info, "renewal not served", counters, Fields::default())
}

fn with_event(mut handled: Handled, event: Option<(Level, &'static str, Fields)>) -> Handled {
    if let Some((level, message, fields)) = event {
        handled.record.event(level, message, fields);
    }
    handled
}
