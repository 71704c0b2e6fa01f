//! Settings of the two functions, read once from the environment at init (documented in the
//! README). Required values are plain fields: a missing one fails the init, naming the variable.
//! The tunables fill [`BootSettings`], the same type `ipxe-edge serve` fills from its flags.

use crate::lambda::http::CertHeader;
use crate::service::boot::BootSettings;
use crate::storage::keys;
use std::ops::RangeInclusive;
use std::time::Duration;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("environment variable {0} is required")]
    Missing(&'static str),
    #[error("environment variable {name} is invalid: {reason}")]
    Invalid { name: &'static str, reason: String },
}

/// Where the token keyring comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum KeyringSource {
    /// `TOKEN_KEYS_SSM_PARAMETER`: a SecureString parameter (deployments).
    Ssm(String),
    /// `TOKEN_KEYS`: the keyring itself (local runs and tests only).
    Inline(String),
}

impl std::fmt::Debug for KeyringSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyringSource::Ssm(name) => write!(f, "Ssm({name:?})"),
            KeyringSource::Inline(_) => f.write_str("Inline(<redacted>)"),
        }
    }
}

/// The boot function's settings.
#[derive(Clone, Debug)]
pub struct BootConfig {
    /// `BUCKET`: records and assets.
    pub bucket: String,
    pub keyring: KeyringSource,
    /// `SECRETS_BASE_URL`, `PRESIGN_TTL_SECONDS` (300), `TOKEN_TTL_SECONDS` (120),
    /// `CLOCK_SKEW_SECONDS` (60).
    pub boot: BootSettings,
    /// `TRUST_BUNDLE_KEY` (`pki/truststore.pem`): object holding the CA bundle.
    pub trust_bundle_key: String,
    /// `CLIENT_CERT_HEADER`: trusted proxy header carrying the client certificate (off when unset).
    pub cert_header: CertHeader,
    /// Path-style addressing for S3-compatible servers ([`s3_path_style`]).
    pub s3_force_path_style: bool,
    /// `TABLE`: the DynamoDB table where boots and outcomes are recorded (`gateway#` items);
    /// without it, boots are not recorded and nothing falls back.
    pub table: Option<String>,
    /// `BOOT_HISTORY_DAYS` (90): how long boot records are kept.
    pub boot_history: Duration,
    /// `CHANNEL_MAX_AGE_SECONDS` (10): how long a warm function boots from its copy of a
    /// channel before revalidating it, so the longest a promote or rollback takes to reach it.
    pub channel_max_age: Duration,
    /// `TRUST_MAX_AGE_SECONDS` (60): the same for the trust bundle (`ca trust`, `ca untrust`).
    pub trust_max_age: Duration,
}

impl BootConfig {
    pub const DEFAULT_CHANNEL_MAX_AGE_SECS: u64 = 10;
    pub const DEFAULT_TRUST_MAX_AGE_SECS: u64 = 60;
    pub const MAX_AGE_RANGE: RangeInclusive<u64> = 0..=3600;
}

/// The redeem function's settings.
#[derive(Clone, Debug)]
pub struct RedeemConfig {
    /// `BUCKET`: the gateways' secrets.
    pub bucket: String,
    /// `TABLE`: the DynamoDB table of used tokens.
    pub table: String,
    pub keyring: KeyringSource,
    pub s3_force_path_style: bool,
    /// `BOOT_HISTORY_DAYS` (90).
    pub boot_history: Duration,
    /// Per-gateway scratch storage, when `SCRATCH_BUCKET` is set.
    pub scratch: Option<ScratchConfig>,
}

/// `SCRATCH_BUCKET`, `SCRATCH_BOUNDARY_ARN` (both required together), `SCRATCH_USER_PATH`
/// (`/ipxe-edge/scratch/`), `SCRATCH_ENDPOINT` (the region's S3 endpoint).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScratchConfig {
    pub bucket: String,
    pub boundary_arn: String,
    pub user_path: String,
    pub endpoint: Option<String>,
}

fn scratch(lookup: Lookup) -> Result<Option<ScratchConfig>, ConfigError> {
    let Some(bucket) = lookup("SCRATCH_BUCKET") else { return Ok(None) };
    let boundary_arn = required(lookup, "SCRATCH_BOUNDARY_ARN")?;
    if !boundary_arn.starts_with("arn:") {
        return Err(ConfigError::Invalid { name: "SCRATCH_BOUNDARY_ARN", reason: "a policy ARN".into() });
    }
    let user_path =
        lookup("SCRATCH_USER_PATH").unwrap_or_else(|| crate::storage::adapters::iam::DEFAULT_USER_PATH.into());
    if !(user_path.starts_with('/') && user_path.ends_with('/')) {
        return Err(ConfigError::Invalid {
            name: "SCRATCH_USER_PATH",
            reason: "a path starting and ending with /".into(),
        });
    }
    Ok(Some(ScratchConfig { bucket, boundary_arn, user_path, endpoint: lookup("SCRATCH_ENDPOINT") }))
}

/// Range of `BOOT_HISTORY_DAYS`.
pub const BOOT_HISTORY_DAYS_RANGE: RangeInclusive<u64> = 1..=3650;
const DEFAULT_BOOT_HISTORY_DAYS: u64 = 90;

fn boot_history(lookup: Lookup) -> Result<Duration, ConfigError> {
    Ok(seconds(lookup, "BOOT_HISTORY_DAYS", DEFAULT_BOOT_HISTORY_DAYS, BOOT_HISTORY_DAYS_RANGE)?.saturating_mul(86_400))
}

pub type Lookup<'a> = &'a dyn Fn(&str) -> Option<String>;

fn env_lookup(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn required(lookup: Lookup, name: &'static str) -> Result<String, ConfigError> {
    lookup(name).ok_or(ConfigError::Missing(name))
}

fn seconds(
    lookup: Lookup,
    name: &'static str,
    default: u64,
    range: RangeInclusive<u64>,
) -> Result<Duration, ConfigError> {
    let Some(raw) = lookup(name) else { return Ok(Duration::from_secs(default)) };
    let value: u64 =
        raw.trim().parse().map_err(|_| ConfigError::Invalid { name, reason: format!("{raw:?} is not a number") })?;
    if range.contains(&value) {
        Ok(Duration::from_secs(value))
    } else {
        Err(ConfigError::Invalid { name, reason: format!("{value} is outside {}..={}", range.start(), range.end()) })
    }
}

fn boolean(lookup: Lookup, name: &'static str) -> Result<bool, ConfigError> {
    match lookup(name).as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("0") | Some("false") | Some("no") => Ok(false),
        Some("1") | Some("true") | Some("yes") => Ok(true),
        Some(other) => Err(ConfigError::Invalid { name, reason: format!("{other:?} is not a boolean") }),
    }
}

/// Path-style S3 addressing, by one rule for the functions, `serve` and the CLI: asked for with
/// `S3_FORCE_PATH_STYLE`, or implied by a custom S3 endpoint (`AWS_ENDPOINT_URL_S3`,
/// `AWS_ENDPOINT_URL`), since S3-compatible servers rarely route by bucket host name.
pub fn s3_path_style(lookup: Lookup) -> Result<bool, ConfigError> {
    Ok(boolean(lookup, "S3_FORCE_PATH_STYLE")?
        || lookup("AWS_ENDPOINT_URL_S3").is_some()
        || lookup("AWS_ENDPOINT_URL").is_some())
}

/// [`s3_path_style`] from the process environment.
pub fn s3_path_style_from_env() -> Result<bool, ConfigError> {
    s3_path_style(&env_lookup)
}

fn keyring(lookup: Lookup) -> Result<KeyringSource, ConfigError> {
    match (lookup("TOKEN_KEYS_SSM_PARAMETER"), lookup("TOKEN_KEYS")) {
        (Some(name), _) => Ok(KeyringSource::Ssm(name)),
        (None, Some(inline)) => Ok(KeyringSource::Inline(inline)),
        (None, None) => Err(ConfigError::Missing("TOKEN_KEYS_SSM_PARAMETER")),
    }
}

impl BootConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(&env_lookup)
    }

    pub fn from_lookup(lookup: Lookup) -> Result<Self, ConfigError> {
        let secrets_base_url = required(lookup, "SECRETS_BASE_URL")?;
        if !BootSettings::valid_secrets_base_url(&secrets_base_url) {
            return Err(ConfigError::Invalid { name: "SECRETS_BASE_URL", reason: "must be an http(s) URL".into() });
        }
        let cert_header = match lookup("CLIENT_CERT_HEADER") {
            None => CertHeader::Off,
            Some(h) => CertHeader::Trusted(h.parse().map_err(|_| ConfigError::Invalid {
                name: "CLIENT_CERT_HEADER",
                reason: "not a header name".into(),
            })?),
        };
        Ok(BootConfig {
            bucket: required(lookup, "BUCKET")?,
            keyring: keyring(lookup)?,
            boot: BootSettings {
                presign_ttl: seconds(
                    lookup,
                    "PRESIGN_TTL_SECONDS",
                    BootSettings::DEFAULT_PRESIGN_TTL_SECS,
                    BootSettings::PRESIGN_TTL_RANGE,
                )?,
                token_ttl: seconds(
                    lookup,
                    "TOKEN_TTL_SECONDS",
                    BootSettings::DEFAULT_TOKEN_TTL_SECS,
                    BootSettings::TOKEN_TTL_RANGE,
                )?,
                clock_skew: seconds(
                    lookup,
                    "CLOCK_SKEW_SECONDS",
                    crate::domain::identity::DEFAULT_CLOCK_SKEW.as_secs(),
                    BootSettings::CLOCK_SKEW_RANGE,
                )?,
                secrets_base_url,
                fallback_after: seconds(
                    lookup,
                    "FALLBACK_AFTER",
                    BootSettings::DEFAULT_FALLBACK_AFTER.into(),
                    BootSettings::FALLBACK_AFTER_RANGE,
                )?
                .as_secs() as u32,
                health_deadline: seconds(
                    lookup,
                    "HEALTH_DEADLINE_SECONDS",
                    BootSettings::DEFAULT_HEALTH_DEADLINE_SECS,
                    BootSettings::HEALTH_DEADLINE_RANGE,
                )?,
                renewal_window: seconds(
                    lookup,
                    "RENEWAL_WINDOW_DAYS",
                    BootSettings::DEFAULT_RENEWAL_WINDOW_DAYS,
                    BootSettings::RENEWAL_WINDOW_DAYS_RANGE,
                )? * 86_400,
                retire_old_after_first_boot: boolean(lookup, "RETIRE_OLD_AFTER_FIRST_BOOT")?,
            },
            trust_bundle_key: lookup("TRUST_BUNDLE_KEY").unwrap_or_else(|| keys::TRUST_BUNDLE.to_string()),
            cert_header,
            s3_force_path_style: s3_path_style(lookup)?,
            table: lookup("TABLE"),
            boot_history: boot_history(lookup)?,
            channel_max_age: seconds(
                lookup,
                "CHANNEL_MAX_AGE_SECONDS",
                Self::DEFAULT_CHANNEL_MAX_AGE_SECS,
                Self::MAX_AGE_RANGE,
            )?,
            trust_max_age: seconds(
                lookup,
                "TRUST_MAX_AGE_SECONDS",
                Self::DEFAULT_TRUST_MAX_AGE_SECS,
                Self::MAX_AGE_RANGE,
            )?,
        })
    }
}

impl RedeemConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(&env_lookup)
    }

    pub fn from_lookup(lookup: Lookup) -> Result<Self, ConfigError> {
        Ok(RedeemConfig {
            bucket: required(lookup, "BUCKET")?,
            table: required(lookup, "TABLE")?,
            keyring: keyring(lookup)?,
            s3_force_path_style: s3_path_style(lookup)?,
            boot_history: boot_history(lookup)?,
            scratch: scratch(lookup)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |name| map.get(name).cloned()
    }

    const BOOT_REQUIRED: &[(&str, &str)] =
        &[("BUCKET", "b"), ("SECRETS_BASE_URL", "https://s.example"), ("TOKEN_KEYS_SSM_PARAMETER", "/k")];

    fn boot(extra: &[(&str, &str)]) -> Result<BootConfig, ConfigError> {
        let pairs: Vec<_> = BOOT_REQUIRED.iter().chain(extra).copied().collect();
        BootConfig::from_lookup(&lookup(&pairs))
    }

    #[test]
    fn defaults() {
        let c = boot(&[]).unwrap();
        assert_eq!(c.boot.presign_ttl, Duration::from_secs(300));
        assert_eq!(c.boot.token_ttl, Duration::from_secs(120));
        assert_eq!(c.boot.clock_skew, Duration::from_secs(60));
        assert_eq!(c.trust_bundle_key, "pki/truststore.pem");
        assert!(matches!(c.cert_header, CertHeader::Off));
        assert_eq!(c.keyring, KeyringSource::Ssm("/k".into()));
        assert!(!c.s3_force_path_style);
        assert_eq!((c.boot.fallback_after, c.boot.health_deadline), (2, Duration::from_secs(600)));
        assert_eq!((c.table, c.boot_history), (None, Duration::from_secs(90 * 86_400)));
        let c = boot(&[
            ("FALLBACK_AFTER", "0"),
            ("HEALTH_DEADLINE_SECONDS", "86400"),
            ("TABLE", "t"),
            ("BOOT_HISTORY_DAYS", "7"),
        ])
        .unwrap();
        assert_eq!(
            (c.boot.fallback_after, c.boot.health_deadline.as_secs(), c.table.as_deref()),
            (0, 86_400, Some("t"))
        );
        assert_eq!(c.boot_history, Duration::from_secs(7 * 86_400));
    }

    #[test]
    fn scratch_storage_is_configured_as_a_whole() {
        let base = [("BUCKET", "b"), ("TABLE", "t"), ("TOKEN_KEYS_SSM_PARAMETER", "/k")];
        let redeem = |extra: &[(&str, &str)]| {
            let pairs: Vec<_> = base.iter().chain(extra).copied().collect();
            RedeemConfig::from_lookup(&lookup(&pairs))
        };
        assert_eq!(redeem(&[]).unwrap().scratch, None);
        assert!(matches!(redeem(&[("SCRATCH_BUCKET", "s")]), Err(ConfigError::Missing("SCRATCH_BOUNDARY_ARN"))));
        assert!(matches!(
            redeem(&[("SCRATCH_BUCKET", "s"), ("SCRATCH_BOUNDARY_ARN", "x")]),
            Err(ConfigError::Invalid { .. })
        ));
        let arn = "arn:aws:iam::123456789012:policy/b";
        let c = redeem(&[("SCRATCH_BUCKET", "s"), ("SCRATCH_BOUNDARY_ARN", arn)]).unwrap().scratch.unwrap();
        assert_eq!(
            (c.bucket.as_str(), c.boundary_arn.as_str(), c.user_path.as_str(), c.endpoint),
            ("s", arn, "/ipxe-edge/scratch/", None)
        );
        assert!(matches!(
            redeem(&[("SCRATCH_BUCKET", "s"), ("SCRATCH_BOUNDARY_ARN", arn), ("SCRATCH_USER_PATH", "x")]),
            Err(ConfigError::Invalid { .. })
        ));
    }

    #[test]
    fn missing_values_are_named() {
        for (i, (name, _)) in BOOT_REQUIRED.iter().enumerate() {
            let pairs: Vec<_> = BOOT_REQUIRED.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, p)| *p).collect();
            let err = BootConfig::from_lookup(&lookup(&pairs)).unwrap_err();
            assert_eq!(err, ConfigError::Missing(name), "{name}");
        }
        let err = RedeemConfig::from_lookup(&lookup(&[("BUCKET", "b"), ("TOKEN_KEYS", "x")])).unwrap_err();
        assert_eq!(err, ConfigError::Missing("TABLE"));
    }

    #[test]
    fn invalid_values_are_named() {
        assert!(matches!(
            boot(&[("PRESIGN_TTL_SECONDS", "abc")]),
            Err(ConfigError::Invalid { name: "PRESIGN_TTL_SECONDS", .. })
        ));
        assert!(matches!(
            boot(&[("TOKEN_TTL_SECONDS", "0")]),
            Err(ConfigError::Invalid { name: "TOKEN_TTL_SECONDS", .. })
        ));
        assert!(matches!(
            boot(&[("CLOCK_SKEW_SECONDS", "99999")]),
            Err(ConfigError::Invalid { name: "CLOCK_SKEW_SECONDS", .. })
        ));
        assert!(matches!(boot(&[("CLIENT_CERT_HEADER", "bad header")]), Err(ConfigError::Invalid { .. })));
        assert!(matches!(boot(&[("S3_FORCE_PATH_STYLE", "maybe")]), Err(ConfigError::Invalid { .. })));
        assert!(matches!(boot(&[("FALLBACK_AFTER", "101")]), Err(ConfigError::Invalid { name: "FALLBACK_AFTER", .. })));
        assert!(matches!(
            boot(&[("HEALTH_DEADLINE_SECONDS", "86401")]),
            Err(ConfigError::Invalid { name: "HEALTH_DEADLINE_SECONDS", .. })
        ));
        assert!(matches!(
            boot(&[("BOOT_HISTORY_DAYS", "0")]),
            Err(ConfigError::Invalid { name: "BOOT_HISTORY_DAYS", .. })
        ));
        for name in ["CHANNEL_MAX_AGE_SECONDS", "TRUST_MAX_AGE_SECONDS"] {
            for value in ["3601", "abc", "-1"] {
                assert!(
                    matches!(boot(&[(name, value)]), Err(ConfigError::Invalid { name: n, .. }) if n == name),
                    "{name}={value} must be refused"
                );
            }
        }
        let bad_url =
            BootConfig::from_lookup(&lookup(&[("BUCKET", "b"), ("SECRETS_BASE_URL", "ftp://x"), ("TOKEN_KEYS", "k")]));
        assert!(matches!(bad_url, Err(ConfigError::Invalid { name: "SECRETS_BASE_URL", .. })));
    }

    #[test]
    fn inline_keys_are_never_printed() {
        let c = RedeemConfig::from_lookup(&lookup(&[("BUCKET", "b"), ("TABLE", "t"), ("TOKEN_KEYS", "k1:c2VjcmV0")]))
            .unwrap();
        assert!(!format!("{c:?}").contains("c2VjcmV0"));
    }
}
