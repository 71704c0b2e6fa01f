//! Settings read from environment variables (documented in the README), once at start-up.

use std::time::Duration;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("environment variable {0} is required")]
    Missing(&'static str),
    #[error("environment variable {name} is invalid: {reason}")]
    Invalid { name: &'static str, reason: String },
}

/// Everything both functions may need; each function checks the parts it uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    /// `BUCKET`: the bucket holding records, assets and secrets.
    pub bucket: Option<String>,
    /// `TABLE`: the DynamoDB table of used tokens.
    pub table: Option<String>,
    /// `SECRETS_BASE_URL`: base URL of the redeem endpoint.
    pub secrets_base_url: Option<String>,
    /// `TOKEN_KEYS`: the keyring inline (local use and tests only).
    pub token_keys_inline: bool,
    /// `TOKEN_KEYS_SSM_PARAMETER`: name of the SecureString holding the keyring.
    pub token_keys_ssm_parameter: Option<String>,
    /// `PRESIGN_TTL_SECONDS` (300).
    pub presign_ttl: Duration,
    /// `TOKEN_TTL_SECONDS` (120).
    pub token_ttl: Duration,
    /// `CLOCK_SKEW_SECONDS` (60): tolerance on certificate validity dates.
    pub clock_skew_secs: u64,
    /// `CLIENT_CERT_HEADER`: trusted proxy header carrying the client certificate (off when unset).
    pub client_cert_header: Option<String>,
    /// `TRUST_BUNDLE_KEY` (`pki/truststore.pem`): object holding the CA bundle.
    pub trust_bundle_key: String,
    /// `S3_FORCE_PATH_STYLE` (false): path-style addressing for S3-compatible servers.
    pub s3_force_path_style: bool,
}

fn seconds(
    lookup: &dyn Fn(&str) -> Option<String>,
    name: &'static str,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, ConfigError> {
    match lookup(name) {
        None => Ok(default),
        Some(raw) => {
            let value: u64 = raw.trim().parse().map_err(|_| ConfigError::Invalid { name, reason: format!("{raw:?} is not a number") })?;
            if range.contains(&value) {
                Ok(value)
            } else {
                Err(ConfigError::Invalid { name, reason: format!("{value} is outside {}..={}", range.start(), range.end()) })
            }
        }
    }
}

impl Settings {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(&|name| std::env::var(name).ok().filter(|v| !v.is_empty()))
    }

    pub fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let secrets_base_url = lookup("SECRETS_BASE_URL");
        if let Some(url) = &secrets_base_url {
            if !(url.starts_with("https://") || url.starts_with("http://")) || url.chars().any(|c| c.is_whitespace() || c == '"') {
                return Err(ConfigError::Invalid { name: "SECRETS_BASE_URL", reason: "must be an http(s) URL".into() });
            }
        }
        let client_cert_header = lookup("CLIENT_CERT_HEADER");
        if let Some(h) = &client_cert_header {
            if lambda_http::http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                return Err(ConfigError::Invalid { name: "CLIENT_CERT_HEADER", reason: "not a header name".into() });
            }
        }
        let bool_var = |name: &'static str| -> Result<bool, ConfigError> {
            match lookup(name).as_deref().map(str::to_ascii_lowercase).as_deref() {
                None | Some("0") | Some("false") | Some("no") => Ok(false),
                Some("1") | Some("true") | Some("yes") => Ok(true),
                Some(other) => Err(ConfigError::Invalid { name, reason: format!("{other:?} is not a boolean") }),
            }
        };
        Ok(Settings {
            bucket: lookup("BUCKET"),
            table: lookup("TABLE"),
            secrets_base_url,
            token_keys_inline: lookup("TOKEN_KEYS").is_some(),
            token_keys_ssm_parameter: lookup("TOKEN_KEYS_SSM_PARAMETER"),
            presign_ttl: Duration::from_secs(seconds(lookup, "PRESIGN_TTL_SECONDS", 300, 10..=3600)?),
            token_ttl: Duration::from_secs(seconds(lookup, "TOKEN_TTL_SECONDS", 120, 10..=3600)?),
            clock_skew_secs: seconds(lookup, "CLOCK_SKEW_SECONDS", 60, 0..=3600)?,
            client_cert_header,
            trust_bundle_key: lookup("TRUST_BUNDLE_KEY").unwrap_or_else(|| crate::model::layout::TRUST_BUNDLE.to_string()),
            s3_force_path_style: bool_var("S3_FORCE_PATH_STYLE")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn settings(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Settings::from_lookup(&|name| map.get(name).cloned())
    }

    #[test]
    fn defaults() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.presign_ttl, Duration::from_secs(300));
        assert_eq!(s.token_ttl, Duration::from_secs(120));
        assert_eq!(s.clock_skew_secs, 60);
        assert_eq!(s.trust_bundle_key, "pki/truststore.pem");
        assert!(s.client_cert_header.is_none());
        assert!(!s.s3_force_path_style);
    }

    #[test]
    fn invalid_values_are_named() {
        assert!(matches!(settings(&[("PRESIGN_TTL_SECONDS", "abc")]), Err(ConfigError::Invalid { name: "PRESIGN_TTL_SECONDS", .. })));
        assert!(matches!(settings(&[("TOKEN_TTL_SECONDS", "0")]), Err(ConfigError::Invalid { name: "TOKEN_TTL_SECONDS", .. })));
        assert!(matches!(settings(&[("SECRETS_BASE_URL", "ftp://x")]), Err(ConfigError::Invalid { .. })));
        assert!(matches!(settings(&[("CLIENT_CERT_HEADER", "bad header")]), Err(ConfigError::Invalid { .. })));
        assert!(matches!(settings(&[("S3_FORCE_PATH_STYLE", "maybe")]), Err(ConfigError::Invalid { .. })));
    }
}
