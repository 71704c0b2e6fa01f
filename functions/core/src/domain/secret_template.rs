//! Secrets are templates, rendered when a secret is released: `${name}` is replaced by the
//! value of a known variable; anything else is left byte for byte (a secret without
//! variables is served exactly as stored). valve-infra's names work unchanged.

use std::collections::BTreeMap;

/// The scratch-storage variables (valve-infra's names). A secret that uses any of them gets a
/// freshly minted key at each redemption.
pub const SCRATCH_VARIABLES: [&str; 4] = ["s3_endpoint", "s3_access_key_id", "s3_access_key", "s3_bucket_name"];

/// Variables filled by the service itself, besides the gateway's own `vars`.
pub const BUILT_IN_VARIABLES: [&str; 5] =
    ["fingerprint", "client_cert_fingerprint", "gateway", "checkin_url", "renewal_url"];

/// Every `${name}` in `secret` (name: ASCII letters, digits, `_`), in order of appearance,
/// each once.
pub fn variables(secret: &[u8]) -> Vec<String> {
    let mut found: Vec<String> = Vec::new();
    for (_, name) in placeholders(secret) {
        if !found.iter().any(|f| f == name) {
            found.push(name.to_string());
        }
    }
    found
}

/// Whether the secret asks for scratch-storage credentials.
pub fn uses_scratch(secret: &[u8]) -> bool {
    placeholders(secret).any(|(_, name)| SCRATCH_VARIABLES.contains(&name))
}

/// Whether the secret uses `${name}`.
pub fn uses(secret: &[u8], variable: &str) -> bool {
    placeholders(secret).any(|(_, name)| name == variable)
}

/// The variables of `secret` that nothing fills: neither built in, nor scratch, nor in `vars`.
/// They stay in the served secret as they are; operators are told at upload and import.
pub fn unknown_variables(secret: &[u8], vars: &BTreeMap<String, String>) -> Vec<String> {
    variables(secret)
        .into_iter()
        .filter(|v| {
            !SCRATCH_VARIABLES.contains(&v.as_str())
                && !BUILT_IN_VARIABLES.contains(&v.as_str())
                && !vars.contains_key(v)
        })
        .collect()
}

/// `secret` with each `${name}` that `value` knows replaced; one pass, so a value that itself
/// contains `${…}` is never expanded again.
pub fn render(secret: &[u8], value: impl Fn(&str) -> Option<String>) -> Vec<u8> {
    let mut out = Vec::with_capacity(secret.len());
    let mut copied = 0;
    for (at, name) in placeholders(secret) {
        if let Some(v) = value(name) {
            out.extend_from_slice(&secret[copied..at]);
            out.extend_from_slice(v.as_bytes());
            copied = at + name.len() + 3;
        }
    }
    out.extend_from_slice(&secret[copied..]);
    out
}

/// `(offset, name)` of each well-formed `${name}`.
fn placeholders(secret: &[u8]) -> impl Iterator<Item = (usize, &str)> {
    let mut from = 0;
    std::iter::from_fn(move || {
        while let Some(rel) = secret[from..].windows(2).position(|w| w == b"${") {
            let at = from + rel;
            let body = &secret[at + 2..];
            let len = body.iter().take_while(|b| b.is_ascii_alphanumeric() || **b == b'_').count();
            if len > 0 && body.get(len) == Some(&b'}') {
                from = at + len + 3;
                // ASCII by construction.
                return Some((at, std::str::from_utf8(&body[..len]).unwrap_or_default()));
            }
            from = at + 2;
        }
        None
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(name: &str) -> Option<String> {
        match name {
            "s3_endpoint" => Some("https://s3.example.org".into()),
            "s3_access_key_id" => Some("AKID".into()),
            "gateway" => Some("gw-1".into()),
            "loop" => Some("${gateway}".into()),
            _ => None,
        }
    }

    #[test]
    fn known_variables_are_filled_and_the_rest_kept() {
        let secret = br#"b2c.minio="bbz,${s3_endpoint},${s3_access_key_id},${nope}" ${gateway}${gateway} $gateway ${ gateway} ${} ${"#;
        let out = render(secret, values);
        assert_eq!(
            out,
            br#"b2c.minio="bbz,https://s3.example.org,AKID,${nope}" gw-1gw-1 $gateway ${ gateway} ${} ${"#.to_vec()
        );
        assert_eq!(render(b"${loop}", values), b"${gateway}", "values are not expanded again");
    }

    #[test]
    fn a_secret_without_variables_is_served_byte_for_byte() {
        let binary: Vec<u8> = (0..=255u8).chain(b"$${x".iter().copied()).collect();
        assert_eq!(render(&binary, values), binary);
        assert!(!uses_scratch(&binary));
    }

    #[test]
    fn variables_are_listed_and_classified() {
        let secret = b"${s3_access_key} ${gateway} ${site} ${mystery} ${site} ${client_cert_fingerprint}";
        assert_eq!(variables(secret), ["s3_access_key", "gateway", "site", "mystery", "client_cert_fingerprint"]);
        assert!(uses_scratch(secret));
        let vars = BTreeMap::from([("site".to_string(), "x".to_string())]);
        assert_eq!(unknown_variables(secret, &vars), ["mystery"]);
        assert!(uses(secret, "gateway") && !uses(secret, "checkin_url"));
    }
}
