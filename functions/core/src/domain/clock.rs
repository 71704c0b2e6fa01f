//! The one place the wall clock is read. Everything else takes `now` as an argument.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A Unix time as RFC 3339 (`2026-11-28T06:18:23Z`), for records and humans.
pub fn rfc3339(unix: u64) -> String {
    OffsetDateTime::from_unix_timestamp(unix as i64).ok().and_then(|t| t.format(&Rfc3339).ok()).unwrap_or_default()
}

/// Now, as RFC 3339.
pub fn rfc3339_now() -> String {
    rfc3339(unix_now())
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_rfc3339() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(1_764_310_703), "2025-11-28T06:18:23Z");
    }
}
