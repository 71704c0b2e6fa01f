//! Gateway identity: a client certificate chain, verified against the deployment's CA bundle,
//! reduced to the SHA-256 fingerprint of the leaf certificate's DER.
//!
//! Chain verification is done here rather than by a WebPKI verifier because gateways enrolled by
//! older deployments hold X.509 v1 certificates (no extensions), which WebPKI verifiers refuse.

use sha2::{Digest, Sha256};
use std::fmt;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::ParsedExtension;
use x509_parser::prelude::{FromDer, Pem};
use x509_parser::x509::X509Version;

/// Longest chain accepted above the leaf (API Gateway's truststore limit is depth 4).
pub const MAX_CHAIN_DEPTH: usize = 4;
/// Largest PEM input accepted from a request (a leaf plus a few intermediates).
pub const MAX_PEM_BYTES: usize = 32 * 1024;

/// Lowercase hex SHA-256 of a certificate's DER: the gateway's identity.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Fingerprint(String);

impl Fingerprint {
    pub fn of_der(der: &[u8]) -> Self {
        Fingerprint(hex::encode(Sha256::digest(der)))
    }

    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        Fingerprint(hex::encode(bytes))
    }

    /// Parses a fingerprint written by an operator: hex, optionally with colons, any case.
    pub fn parse(text: &str) -> Result<Self, IdentityError> {
        let cleaned: String = text.chars().filter(|c| *c != ':').collect::<String>().to_ascii_lowercase();
        if cleaned.len() == 64 && cleaned.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(Fingerprint(cleaned))
        } else {
            Err(IdentityError::Malformed("fingerprint must be 64 hex digits".into()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn to_bytes(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        // Construction guarantees 64 hex digits.
        hex::decode_to_slice(&self.0, &mut out).expect("fingerprint holds 64 hex digits");
        out
    }
}

impl TryFrom<String> for Fingerprint {
    type Error = IdentityError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Fingerprint::parse(&value)
    }
}

impl From<Fingerprint> for String {
    fn from(value: Fingerprint) -> Self {
        value.0
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", self.0)
    }
}

#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("no client certificate was presented")]
    Missing,
    #[error("client certificate is malformed: {0}")]
    Malformed(String),
    #[error("client certificate is not valid before {not_before} (unix time)")]
    NotYetValid { not_before: i64 },
    #[error("client certificate expired at {not_after} (unix time)")]
    Expired { not_after: i64 },
    #[error("client certificate does not chain to a trusted CA")]
    Untrusted,
    #[error("client certificate is not usable for client authentication: {0}")]
    WrongUsage(&'static str),
    #[error("trust bundle is invalid: {0}")]
    BadTrustBundle(String),
}

/// A verified client: who it is and what its certificate says, for logs and enrollment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientIdentity {
    pub fingerprint: Fingerprint,
    pub subject: String,
    pub issuer: String,
    pub not_after: i64,
}

/// The CA certificates a deployment trusts for gateway client certificates.
#[derive(Clone, Debug, Default)]
pub struct TrustBundle {
    anchors: Vec<Vec<u8>>,
}

impl TrustBundle {
    /// Reads every certificate of a PEM bundle; an empty or unparsable bundle is an error so that
    /// a misconfigured deployment refuses everyone instead of trusting no one silently.
    pub fn from_pem(pem: &[u8]) -> Result<Self, IdentityError> {
        let ders = pem_certificates(pem).map_err(|e| IdentityError::BadTrustBundle(e.to_string()))?;
        if ders.is_empty() {
            return Err(IdentityError::BadTrustBundle("no certificate in bundle".into()));
        }
        for der in &ders {
            X509Certificate::from_der(der)
                .map_err(|e| IdentityError::BadTrustBundle(format!("unparsable CA certificate: {e}")))?;
        }
        Ok(TrustBundle { anchors: ders })
    }

    pub fn from_ders(ders: Vec<Vec<u8>>) -> Result<Self, IdentityError> {
        for der in &ders {
            X509Certificate::from_der(der)
                .map_err(|e| IdentityError::BadTrustBundle(format!("unparsable CA certificate: {e}")))?;
        }
        Ok(TrustBundle { anchors: ders })
    }

    pub fn anchors(&self) -> &[Vec<u8>] {
        &self.anchors
    }

    pub fn len(&self) -> usize {
        self.anchors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.anchors.is_empty()
    }
}

/// Default tolerance on certificate validity dates.
pub const DEFAULT_CLOCK_SKEW: std::time::Duration = std::time::Duration::from_secs(60);

/// Verifies client certificate chains: validity (with clock skew), signatures up to a trusted
/// anchor, and that the leaf is an end-entity certificate usable for client authentication.
#[derive(Clone, Debug)]
pub struct ChainVerifier {
    bundle: TrustBundle,
    clock_skew_secs: i64,
    /// Shared by clones (the TLS handshake's verifier and the handler's).
    verified: std::sync::Arc<VerifiedChains>,
}

/// Chains this verifier accepted, by SHA-256 of their bytes. A chain's signatures and usage
/// never change for a given trust bundle; only whether `now` falls in the validity of each
/// certificate on its path does, and every hit checks that again (a miss re-verifies in full).
/// It saves the RSA signature checks, most of a boot's CPU, on every boot after a gateway's first.
#[derive(Debug, Default)]
struct VerifiedChains {
    entries: std::sync::Mutex<std::collections::HashMap<[u8; 32], CachedPath>>,
}

/// At most this many chains are remembered (about 300 bytes each); all are forgotten when full.
const VERIFIED_CHAINS_CAPACITY: usize = 8192;

#[derive(Clone, Debug)]
struct CachedPath {
    identity: ClientIdentity,
    /// `(not_before, not_after)` of the leaf, the intermediates on the path and the anchor.
    validity: Vec<(i64, i64)>,
}

fn chain_key(chain: &[Vec<u8>]) -> [u8; 32] {
    let mut hash = Sha256::new();
    for der in chain {
        hash.update((der.len() as u64).to_be_bytes());
        hash.update(der);
    }
    hash.finalize().into()
}

fn validity_of(cert: &X509Certificate<'_>) -> (i64, i64) {
    (cert.validity().not_before.timestamp(), cert.validity().not_after.timestamp())
}

impl ChainVerifier {
    pub fn new(bundle: TrustBundle, clock_skew: std::time::Duration) -> Self {
        ChainVerifier { bundle, clock_skew_secs: clock_skew.as_secs().min(86_400) as i64, verified: Default::default() }
    }

    pub fn bundle(&self) -> &TrustBundle {
        &self.bundle
    }

    /// Verifies a PEM chain, leaf first.
    pub fn verify_pem(&self, pem: &[u8], now: i64) -> Result<ClientIdentity, IdentityError> {
        if pem.len() > MAX_PEM_BYTES {
            return Err(IdentityError::Malformed("certificate chain too large".into()));
        }
        let ders = pem_certificates(pem)?;
        self.verify_der_chain(&ders, now)
    }

    /// Verifies a DER chain, leaf first; the rest may hold intermediates in any order.
    pub fn verify_der_chain(&self, chain: &[Vec<u8>], now: i64) -> Result<ClientIdentity, IdentityError> {
        if chain.is_empty() {
            return Err(IdentityError::Missing);
        }
        if chain.len() > MAX_CHAIN_DEPTH + 1 {
            return Err(IdentityError::Malformed("certificate chain too long".into()));
        }
        let key = chain_key(chain);
        let cached = self.verified.entries.lock().unwrap_or_else(|p| p.into_inner()).get(&key).cloned();
        if let Some(path) = cached {
            if path.validity.iter().all(|v| self.check_window(*v, now).is_ok()) {
                return Ok(path.identity);
            }
        }
        let (identity, validity) = self.verify_uncached(chain, now)?;
        let mut entries = self.verified.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= VERIFIED_CHAINS_CAPACITY {
            entries.clear();
        }
        entries.insert(key, CachedPath { identity: identity.clone(), validity });
        Ok(identity)
    }

    /// The full verification; also returns the validity of every certificate on the path found.
    fn verify_uncached(&self, chain: &[Vec<u8>], now: i64) -> Result<(ClientIdentity, Vec<(i64, i64)>), IdentityError> {
        let leaf_der = &chain[0];
        let leaf = parse_der(leaf_der)?;
        check_leaf_usage(&leaf)?;
        let intermediates = chain[1..].iter().map(|d| parse_der(d)).collect::<Result<Vec<_>, _>>()?;
        let anchors = self
            .bundle
            .anchors
            .iter()
            .map(|d| parse_der(d))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| IdentityError::BadTrustBundle(e.to_string()))?;

        self.check_validity(&leaf, now)?;
        let mut current = &leaf;
        let mut validity = vec![validity_of(&leaf)];
        // Intermediate CAs between the leaf and the issuer being looked for, for path lengths.
        let mut below = 0u32;
        for _depth in 0..=MAX_CHAIN_DEPTH {
            if let Some(anchor) = anchors.iter().find(|anchor| {
                signed_by(current, anchor) && self.check_validity(anchor, now).is_ok() && path_len_allows(anchor, below)
            }) {
                validity.push(validity_of(anchor));
                let identity = ClientIdentity {
                    fingerprint: Fingerprint::of_der(leaf_der),
                    subject: leaf.subject().to_string(),
                    issuer: leaf.issuer().to_string(),
                    not_after: leaf.validity().not_after.timestamp(),
                };
                return Ok((identity, validity));
            }
            let next = intermediates.iter().find(|candidate| {
                is_ca(candidate)
                    && signed_by(current, candidate)
                    && self.check_validity(candidate, now).is_ok()
                    && path_len_allows(candidate, below)
            });
            match next {
                Some(intermediate) if !std::ptr::eq(intermediate, current) => {
                    current = intermediate;
                    validity.push(validity_of(intermediate));
                    below += 1;
                }
                _ => return Err(IdentityError::Untrusted),
            }
        }
        Err(IdentityError::Untrusted)
    }

    fn check_validity(&self, cert: &X509Certificate<'_>, now: i64) -> Result<(), IdentityError> {
        self.check_window(validity_of(cert), now)
    }

    /// Whether `now` is within `(not_before, not_after)`, give or take the clock skew.
    fn check_window(&self, (not_before, not_after): (i64, i64), now: i64) -> Result<(), IdentityError> {
        if now.saturating_add(self.clock_skew_secs) < not_before {
            return Err(IdentityError::NotYetValid { not_before });
        }
        if now.saturating_sub(self.clock_skew_secs) > not_after {
            return Err(IdentityError::Expired { not_after });
        }
        Ok(())
    }
}

fn parse_der(der: &[u8]) -> Result<X509Certificate<'_>, IdentityError> {
    let (rest, cert) = X509Certificate::from_der(der)
        .map_err(|e| IdentityError::Malformed(format!("not an X.509 certificate: {e}")))?;
    if !rest.is_empty() {
        return Err(IdentityError::Malformed("trailing bytes after certificate".into()));
    }
    Ok(cert)
}

/// Whether `issuer` issued `cert`: names match and the signature verifies with its key.
fn signed_by(cert: &X509Certificate<'_>, issuer: &X509Certificate<'_>) -> bool {
    cert.issuer().as_raw() == issuer.subject().as_raw() && cert.verify_signature(Some(issuer.public_key())).is_ok()
}

/// Whether a CA's path length constraint lets `below` intermediate CAs sit under it.
fn path_len_allows(ca: &X509Certificate<'_>, below: u32) -> bool {
    match ca.basic_constraints() {
        Ok(Some(bc)) => bc.value.path_len_constraint.is_none_or(|max| below <= max),
        _ => true,
    }
}

/// Intermediates must say they are CAs; a v1 certificate cannot, so it can only be a leaf or an
/// explicitly trusted anchor.
fn is_ca(cert: &X509Certificate<'_>) -> bool {
    matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca)
}

/// v1 leaves carry no extensions and are accepted as they are; a v3 leaf that states its usage
/// must allow client authentication and must not be a CA.
fn check_leaf_usage(leaf: &X509Certificate<'_>) -> Result<(), IdentityError> {
    if leaf.version() == X509Version::V1 {
        return Ok(());
    }
    if is_ca(leaf) {
        return Err(IdentityError::WrongUsage("a CA certificate cannot identify a gateway"));
    }
    for ext in leaf.extensions() {
        match ext.parsed_extension() {
            ParsedExtension::ExtendedKeyUsage(eku) if !(eku.client_auth || eku.any) => {
                return Err(IdentityError::WrongUsage("extended key usage lacks clientAuth"));
            }
            ParsedExtension::KeyUsage(ku) if !ku.digital_signature() && !ku.key_agreement() => {
                return Err(IdentityError::WrongUsage("key usage lacks digitalSignature"));
            }
            _ => {}
        }
    }
    Ok(())
}

/// The DER of every `CERTIFICATE` block in a PEM text, in order. Other blocks are ignored.
pub fn pem_certificates(pem: &[u8]) -> Result<Vec<Vec<u8>>, IdentityError> {
    let mut out = Vec::new();
    for block in Pem::iter_from_buffer(pem) {
        let block = block.map_err(|e| IdentityError::Malformed(format!("invalid PEM: {e}")))?;
        if block.label == "CERTIFICATE" {
            out.push(block.contents);
        }
    }
    if out.is_empty() {
        return Err(IdentityError::Malformed("no PEM certificate found".into()));
    }
    Ok(out)
}

/// A certificate's DER as PEM text.
pub fn der_to_pem(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> =
        b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).expect("base64 is ASCII")).collect();
    format!("-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n", lines.join("\n"))
}

/// Decodes a URL-encoded PEM chain as set by a TLS-terminating proxy (ALB's
/// `X-Amzn-Mtls-Clientcert`, nginx's `$ssl_client_escaped_cert`).
pub fn decode_escaped_pem(value: &str) -> Result<Vec<u8>, IdentityError> {
    if value.len() > MAX_PEM_BYTES * 3 {
        return Err(IdentityError::Malformed("certificate header too large".into()));
    }
    let decoded: Vec<u8> = percent_encoding::percent_decode_str(value).collect();
    Ok(decoded)
}

/// Subject and issuer of a certificate, for log lines about refused or unknown clients.
/// End of a certificate's validity (unix seconds), when it parses.
pub fn not_after_der(der: &[u8]) -> Option<i64> {
    X509Certificate::from_der(der).ok().map(|(_, c)| c.validity().not_after.timestamp())
}

pub fn describe_der(der: &[u8]) -> Option<(String, String)> {
    X509Certificate::from_der(der).ok().map(|(_, c)| (c.subject().to_string(), c.issuer().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipxe_edge_pki::{issue_v1_client_with_openssl, validity_days, CertificateAuthority};
    use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, PKCS_RSA_SHA256};
    use std::sync::OnceLock;
    use time::{Duration, OffsetDateTime};

    fn ca() -> &'static CertificateAuthority {
        static CA: OnceLock<CertificateAuthority> = OnceLock::new();
        CA.get_or_init(|| CertificateAuthority::generate("test CA", 30).unwrap())
    }

    fn verifier() -> ChainVerifier {
        ChainVerifier::new(TrustBundle::from_pem(ca().cert_pem().as_bytes()).unwrap(), DEFAULT_CLOCK_SKEW)
    }

    fn now() -> i64 {
        OffsetDateTime::now_utc().unix_timestamp()
    }

    #[test]
    fn valid_client_is_identified_by_sha256_of_der() {
        let gw = ca().issue_client("gw1", validity_days(10)).unwrap();
        let id = verifier().verify_pem(gw.cert_pem.as_bytes(), now()).unwrap();
        assert_eq!(id.fingerprint.as_str(), hex::encode(Sha256::digest(&gw.cert_der)));
        assert!(id.fingerprint.as_str().bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        assert!(id.subject.contains("CN=gw1"), "{}", id.subject);
    }

    #[test]
    fn garbage_is_malformed() {
        let v = verifier();
        for bad in [
            &b""[..],
            b"hello",
            b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
            b"-----BEGIN CERTIFICATE-----\n!!!\n",
        ] {
            assert!(
                matches!(v.verify_pem(bad, now()), Err(IdentityError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let huge = vec![b'A'; MAX_PEM_BYTES + 1];
        assert!(matches!(v.verify_pem(&huge, now()), Err(IdentityError::Malformed(_))));
    }

    #[test]
    fn other_ca_is_untrusted() {
        let other = CertificateAuthority::generate("test CA", 30).unwrap();
        let gw = other.issue_client("gw1", validity_days(10)).unwrap();
        assert_eq!(verifier().verify_pem(gw.cert_pem.as_bytes(), now()), Err(IdentityError::Untrusted));
    }

    #[test]
    fn validity_is_enforced_with_skew() {
        let t = OffsetDateTime::now_utc();
        let expired = ca().issue_client("old", (t - Duration::days(10), t - Duration::days(1))).unwrap();
        assert!(matches!(
            verifier().verify_pem(expired.cert_pem.as_bytes(), now()),
            Err(IdentityError::Expired { .. })
        ));
        let future = ca().issue_client("new", (t + Duration::days(1), t + Duration::days(10))).unwrap();
        assert!(matches!(
            verifier().verify_pem(future.cert_pem.as_bytes(), now()),
            Err(IdentityError::NotYetValid { .. })
        ));
        let just_expired = ca().issue_client("edge", (t - Duration::days(1), t - Duration::seconds(30))).unwrap();
        assert!(
            verifier().verify_pem(just_expired.cert_pem.as_bytes(), now()).is_ok(),
            "30 s late is within 60 s of skew"
        );
        let strict = ChainVerifier::new(verifier().bundle().clone(), std::time::Duration::ZERO);
        assert!(matches!(
            strict.verify_pem(just_expired.cert_pem.as_bytes(), now()),
            Err(IdentityError::Expired { .. })
        ));
    }

    #[test]
    fn x509_v1_certificates_from_existing_farms_are_accepted() {
        let legacy = issue_v1_client_with_openssl(ca(), "ci-gateway-old", 30).expect("openssl is installed");
        let (_, parsed) = X509Certificate::from_der(&legacy.cert_der).unwrap();
        assert_eq!(parsed.version(), X509Version::V1);
        let id = verifier().verify_pem(legacy.cert_pem.as_bytes(), now()).unwrap();
        assert_eq!(id.fingerprint, Fingerprint::of_der(&legacy.cert_der));
        let other = CertificateAuthority::generate("other", 30).unwrap();
        let bundle = TrustBundle::from_pem(other.cert_pem().as_bytes()).unwrap();
        assert_eq!(
            ChainVerifier::new(bundle, DEFAULT_CLOCK_SKEW).verify_pem(legacy.cert_pem.as_bytes(), now()),
            Err(IdentityError::Untrusted)
        );
    }

    #[test]
    fn intermediates_in_the_chain_are_followed() {
        let root_key = KeyPair::generate_for(&PKCS_RSA_SHA256).unwrap();
        let mut root_params = CertificateParams::default();
        root_params.distinguished_name.push(DnType::CommonName, "root");
        root_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let root = root_params.self_signed(&root_key).unwrap();
        let mid_key = KeyPair::generate_for(&PKCS_RSA_SHA256).unwrap();
        let mut mid_params = CertificateParams::default();
        mid_params.distinguished_name.push(DnType::CommonName, "intermediate");
        mid_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let mid = mid_params.signed_by(&mid_key, &root, &root_key).unwrap();
        let leaf_key = KeyPair::generate_for(&PKCS_RSA_SHA256).unwrap();
        let mut leaf_params = CertificateParams::default();
        leaf_params.distinguished_name.push(DnType::CommonName, "gw");
        leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let leaf = leaf_params.signed_by(&leaf_key, &mid, &mid_key).unwrap();

        let v = ChainVerifier::new(TrustBundle::from_pem(root.pem().as_bytes()).unwrap(), DEFAULT_CLOCK_SKEW);
        let chain = format!("{}{}", leaf.pem(), mid.pem());
        let id = v.verify_pem(chain.as_bytes(), now()).unwrap();
        assert_eq!(id.fingerprint, Fingerprint::of_der(leaf.der()));
        // Without the intermediate the leaf does not chain.
        assert_eq!(v.verify_pem(leaf.pem().as_bytes(), now()), Err(IdentityError::Untrusted));
    }

    /// A chain verified once is remembered, but time is checked on every call: the same bytes
    /// are refused once the leaf expires, before it is valid, and under another trust bundle.
    #[test]
    fn remembered_chains_are_still_checked_against_the_clock() {
        let v = verifier();
        let t = OffsetDateTime::now_utc();
        let gw = ca().issue_client("cached", (t - Duration::days(1), t + Duration::days(2))).unwrap();
        let chain = vec![gw.cert_der.clone()];
        let first = v.verify_der_chain(&chain, now()).unwrap();
        assert_eq!(v.verified.entries.lock().unwrap().len(), 1, "remembered");
        assert_eq!(v.clone().verify_der_chain(&chain, now()).unwrap(), first, "a clone shares what was verified");
        let later = now() + 3 * 86_400;
        assert!(matches!(v.verify_der_chain(&chain, later), Err(IdentityError::Expired { .. })));
        let earlier = now() - 2 * 86_400;
        assert!(matches!(v.verify_der_chain(&chain, earlier), Err(IdentityError::NotYetValid { .. })));
        assert_eq!(v.verify_der_chain(&chain, now()).unwrap(), first, "valid again at the right time");
        // An expired CA on the path makes a remembered chain fail too.
        let short_ca = CertificateAuthority::generate("short-lived CA", 1).unwrap();
        let under_short = short_ca.issue_client("gw", validity_days(30)).unwrap();
        let short =
            ChainVerifier::new(TrustBundle::from_pem(short_ca.cert_pem().as_bytes()).unwrap(), DEFAULT_CLOCK_SKEW);
        let chain = vec![under_short.cert_der.clone()];
        assert!(short.verify_der_chain(&chain, now()).is_ok());
        assert_eq!(
            short.verify_der_chain(&chain, now() + 2 * 86_400),
            Err(IdentityError::Untrusted),
            "the anchor expired"
        );
        // Another trust bundle does not see this verifier's memory.
        let other = CertificateAuthority::generate("other CA", 30).unwrap();
        let strangers =
            ChainVerifier::new(TrustBundle::from_pem(other.cert_pem().as_bytes()).unwrap(), DEFAULT_CLOCK_SKEW);
        assert_eq!(
            strangers.verify_der_chain(std::slice::from_ref(&gw.cert_der), now()),
            Err(IdentityError::Untrusted)
        );
    }

    #[test]
    fn ca_and_server_certificates_cannot_be_gateways() {
        assert!(matches!(verifier().verify_pem(ca().cert_pem().as_bytes(), now()), Err(IdentityError::WrongUsage(_))));
        let server = ca().issue_server(&["localhost".into()], 10).unwrap();
        assert!(matches!(verifier().verify_pem(server.cert_pem.as_bytes(), now()), Err(IdentityError::WrongUsage(_))));
    }

    #[test]
    fn trust_bundle_must_hold_certificates() {
        assert!(matches!(TrustBundle::from_pem(b""), Err(IdentityError::BadTrustBundle(_))));
        assert!(matches!(TrustBundle::from_pem(b"not pem"), Err(IdentityError::BadTrustBundle(_))));
    }

    #[test]
    fn escaped_header_pem_decodes() {
        let gw = ca().issue_client("gw1", validity_days(10)).unwrap();
        let escaped: String =
            percent_encoding::utf8_percent_encode(&gw.cert_pem, percent_encoding::NON_ALPHANUMERIC).to_string();
        let pem = decode_escaped_pem(&escaped).unwrap();
        assert_eq!(verifier().verify_pem(&pem, now()).unwrap().fingerprint, Fingerprint::of_der(&gw.cert_der));
    }

    #[test]
    fn fingerprint_parsing() {
        let fp = Fingerprint::parse(&"AB:".repeat(31).add_last("CD")).unwrap();
        assert_eq!(fp.as_str(), format!("{}cd", "ab".repeat(31)));
        assert!(Fingerprint::parse("abc").is_err());
        assert!(Fingerprint::parse(&"g".repeat(64)).is_err());
    }

    trait AddLast {
        fn add_last(self, s: &str) -> String;
    }
    impl AddLast for String {
        fn add_last(mut self, s: &str) -> String {
            self.push_str(s);
            self
        }
    }
}
