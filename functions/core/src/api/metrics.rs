//! Request counters that do not depend on log text. The Lambda functions write them as
//! CloudWatch Embedded Metric Format lines on stdout (CloudWatch turns each line into metric
//! values; the template's alarms watch them); `ipxe-edge serve` plugs in its own sink.

use std::io::Write;

/// Namespace of every metric.
pub const NAMESPACE: &str = "ipxe-edge";

/// What a request counts towards.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Every boot request, by outcome.
    Boots,
    /// Every secrets request, by outcome.
    Redemptions,
    /// Boot requests refused for their certificate or gateway (403).
    RefusedCertificates,
    /// Secrets tokens presented a second time.
    TokenReplays,
    /// Secrets tokens whose signature does not verify.
    ForgedTokens,
    /// Every check-in request, by outcome.
    Checkins,
    /// Boots answered with the gateway's last known good release instead of its target.
    Fallbacks,
    /// Boots or outcomes that could not be recorded (the answer went out anyway).
    JournalFailures,
    /// Boots with a certificate that expires within the renewal window.
    CertExpiring,
    /// Every renewal fetch, by outcome.
    Renewals,
}

impl Counter {
    pub fn name(self) -> &'static str {
        match self {
            Counter::Boots => "Boots",
            Counter::Redemptions => "Redemptions",
            Counter::RefusedCertificates => "RefusedCertificates",
            Counter::TokenReplays => "TokenReplays",
            Counter::ForgedTokens => "ForgedTokens",
            Counter::Checkins => "Checkins",
            Counter::Fallbacks => "Fallbacks",
            Counter::JournalFailures => "JournalFailures",
            Counter::CertExpiring => "CertExpiring",
            Counter::Renewals => "Renewals",
        }
    }

    /// Per-request totals carry the outcome as a dimension; security counters have none, so
    /// one alarm covers them whatever the outcome wording.
    fn has_outcome_dimension(self) -> bool {
        matches!(self, Counter::Boots | Counter::Redemptions | Counter::Checkins | Counter::Renewals)
    }
}

/// Where counters go.
pub trait Metrics: Send + Sync {
    /// One request with `outcome` (`ok`, `forbidden`, `gone`, …) counted once in each counter.
    fn record(&self, outcome: &'static str, counters: &[Counter]);
    /// How long the request on `route` took (sinks that keep latencies; CloudWatch has
    /// Lambda's own duration metric).
    fn observe(&self, _route: &'static str, _elapsed: std::time::Duration) {}
}

/// Counters dropped (tests, and servers that have no sink configured).
#[derive(Debug, Default)]
pub struct NoMetrics;

impl Metrics for NoMetrics {
    fn record(&self, _: &'static str, _: &[Counter]) {}
}

/// CloudWatch Embedded Metric Format on stdout: one JSON line per request.
#[derive(Debug, Default)]
pub struct EmfMetrics;

impl Metrics for EmfMetrics {
    fn record(&self, outcome: &'static str, counters: &[Counter]) {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let mut line = emf_line(outcome, counters, now_ms);
        line.push('\n');
        // One write of the whole line, so concurrent lines never interleave.
        let _ = std::io::stdout().lock().write_all(line.as_bytes());
    }
}

/// The EMF document for one request.
pub fn emf_line(outcome: &str, counters: &[Counter], timestamp_ms: u64) -> String {
    use serde_json::{json, Map, Value};
    let directive = |dimensions: Value, metrics: Vec<&Counter>| {
        json!({
            "Namespace": NAMESPACE,
            "Dimensions": dimensions,
            "Metrics": metrics.iter().map(|c| json!({"Name": c.name(), "Unit": "Count"})).collect::<Vec<_>>(),
        })
    };
    let (with_outcome, without): (Vec<&Counter>, Vec<&Counter>) =
        counters.iter().partition(|c| c.has_outcome_dimension());
    let mut directives = Vec::new();
    if !with_outcome.is_empty() {
        directives.push(directive(json!([["Outcome"]]), with_outcome));
    }
    if !without.is_empty() {
        directives.push(directive(json!([[]]), without));
    }
    let mut doc = Map::new();
    doc.insert("_aws".into(), json!({"Timestamp": timestamp_ms, "CloudWatchMetrics": directives}));
    doc.insert("Outcome".into(), Value::String(outcome.to_string()));
    for counter in counters {
        doc.insert(counter.name().into(), json!(1));
    }
    Value::Object(doc).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// The shape CloudWatch requires: every metric named in a directive is a top-level number,
    /// every dimension named is a top-level string, the timestamp is in milliseconds.
    fn check_emf(line: &str) -> Value {
        let doc: Value = serde_json::from_str(line).unwrap();
        let aws = &doc["_aws"];
        assert!(aws["Timestamp"].as_u64().unwrap() > 1_000_000_000_000, "milliseconds");
        let directives = aws["CloudWatchMetrics"].as_array().unwrap();
        assert!(!directives.is_empty());
        for d in directives {
            assert_eq!(d["Namespace"], NAMESPACE);
            for set in d["Dimensions"].as_array().unwrap() {
                for dim in set.as_array().unwrap() {
                    assert!(doc[dim.as_str().unwrap()].is_string(), "dimension {dim} missing");
                }
            }
            for m in d["Metrics"].as_array().unwrap() {
                assert_eq!(m["Unit"], "Count");
                assert!(doc[m["Name"].as_str().unwrap()].is_number(), "metric {m} missing");
            }
        }
        doc
    }

    #[test]
    fn boot_refusal_counts_the_boot_by_outcome_and_the_refused_certificate() {
        let doc = check_emf(&emf_line("forbidden", &[Counter::Boots, Counter::RefusedCertificates], 1_764_310_703_000));
        assert_eq!(doc["Outcome"], "forbidden");
        assert_eq!(doc["Boots"], 1);
        assert_eq!(doc["RefusedCertificates"], 1);
        let directives = doc["_aws"]["CloudWatchMetrics"].as_array().unwrap();
        assert_eq!(directives[0]["Dimensions"], serde_json::json!([["Outcome"]]));
        assert_eq!(directives[0]["Metrics"][0]["Name"], "Boots");
        assert_eq!(directives[1]["Dimensions"], serde_json::json!([[]]));
        assert_eq!(directives[1]["Metrics"][0]["Name"], "RefusedCertificates");
    }

    #[test]
    fn a_served_secret_is_one_redemption() {
        let doc = check_emf(&emf_line("ok", &[Counter::Redemptions], 1_764_310_703_000));
        assert_eq!(doc["_aws"]["CloudWatchMetrics"].as_array().unwrap().len(), 1);
        assert!(doc.get("TokenReplays").is_none());
    }
}
