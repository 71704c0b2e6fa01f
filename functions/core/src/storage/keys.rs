//! Object keys of the bucket layout, built here and nowhere else.
//!
//! ```text
//! gateways/<fingerprint>/gateway.json   gateway record
//! gateways/<fingerprint>/secrets        the gateway's secrets (redeem side only)
//! gateways/<fingerprint>/renewal.json   a renewed certificate and key to hand over (redeem side only)
//! gateways/<fingerprint>/alias.json     a renewed certificate's fingerprint -> its gateway's record
//! releases/<id>/manifest.json           immutable release manifest
//! channels/<name>.json                  channel: current release and history
//! assets/sha256/<hex>                   content-addressed kernels and initrds
//! pki/truststore.pem                    CA bundle client certificates must chain to
//! ```
//! Names given here have been validated (records are checked when read, operator input when
//! typed), so no key can leave its prefix.

use crate::domain::identity::Fingerprint;
use crate::domain::model::ASSET_PREFIX;

pub const GATEWAYS_PREFIX: &str = "gateways/";
pub const RELEASES_PREFIX: &str = "releases/";
pub const CHANNELS_PREFIX: &str = "channels/";
const GATEWAY_FILE: &str = "gateway.json";
const RELEASE_FILE: &str = "manifest.json";

/// The CA bundle the boot function verifies client certificates against (default key).
pub const TRUST_BUNDLE: &str = "pki/truststore.pem";

/// Everything stored for one gateway.
pub fn gateway_prefix(fp: &Fingerprint) -> String {
    format!("{GATEWAYS_PREFIX}{fp}/")
}
pub fn gateway(fp: &Fingerprint) -> String {
    format!("{GATEWAYS_PREFIX}{fp}/{GATEWAY_FILE}")
}
pub fn secrets(fp: &Fingerprint) -> String {
    format!("{GATEWAYS_PREFIX}{fp}/secrets")
}
/// A renewed certificate's pointer to its gateway's record.
pub fn alias(fp: &Fingerprint) -> String {
    format!("{GATEWAYS_PREFIX}{fp}/alias.json")
}
/// The gateway's pending renewal (redeem side only: it holds a private key).
pub fn renewal(fp: &Fingerprint) -> String {
    format!("{GATEWAYS_PREFIX}{fp}/renewal.json")
}
pub fn release(id: &str) -> String {
    format!("{RELEASES_PREFIX}{id}/{RELEASE_FILE}")
}
pub fn channel(name: &str) -> String {
    format!("{CHANNELS_PREFIX}{name}.json")
}
pub fn asset(sha256_hex: &str) -> String {
    format!("{ASSET_PREFIX}{sha256_hex}")
}

/// Whether a listed key is a gateway record (and not the gateway's secrets or anything else).
pub fn is_gateway_record(key: &str) -> bool {
    key.starts_with(GATEWAYS_PREFIX) && key.ends_with(&format!("/{GATEWAY_FILE}"))
}

/// Whether an object holds secrets or a private key: caches must not keep it.
pub fn holds_key_material(key: &str) -> bool {
    key.starts_with(GATEWAYS_PREFIX) && (key.ends_with("/secrets") || key.ends_with("/renewal.json"))
}

/// Whether a listed key is a release manifest.
pub fn is_release_manifest(key: &str) -> bool {
    key.starts_with(RELEASES_PREFIX) && key.ends_with(&format!("/{RELEASE_FILE}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_their_recognisers_agree() {
        let fp = Fingerprint::of_der(b"cert");
        assert!(is_gateway_record(&gateway(&fp)));
        assert!(!is_gateway_record(&secrets(&fp)));
        assert!(gateway(&fp).starts_with(&gateway_prefix(&fp)));
        assert!(is_release_manifest(&release("r1")));
        assert!(!is_gateway_record(&alias(&fp)) && !is_gateway_record(&renewal(&fp)));
        assert_eq!(channel("stable"), "channels/stable.json");
        assert_eq!(asset("ab"), "assets/sha256/ab");
    }
}
