//! Certificate issuance for operators and tests: an RSA CA, gateway client certificates and
//! server certificates, each with an RSA-2048 key (every iPXE) or an ECDSA P-256 key (iPXE 2.0
//! and newer). And the other side of signing: [`authenticode`] reads who signed a PE image.

pub mod authenticode;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType, PKCS_RSA_SHA256,
};
use time::{Duration, OffsetDateTime};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("invalid subject alternative name {0:?}")]
    BadName(String),
}

/// A certificate with its private key, both PEM.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub cert_der: Vec<u8>,
    pub key_pem: String,
}

impl std::fmt::Debug for Issued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issued").field("cert_pem", &self.cert_pem).finish_non_exhaustive()
    }
}

pub struct CertificateAuthority {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn rsa_key() -> Result<KeyPair, PkiError> {
    Ok(KeyPair::generate_for(&PKCS_RSA_SHA256)?)
}

/// The key a certificate is issued with. RSA-2048 is what every iPXE speaks; ECDSA P-256 needs
/// iPXE 2.0 or newer and costs a fraction of an RSA signature per handshake.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum KeyType {
    #[default]
    Rsa2048,
    EcdsaP256,
}

impl KeyType {
    /// The names the command line takes.
    pub const NAMES: [&'static str; 2] = ["rsa-2048", "ecdsa-p256"];

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "rsa-2048" | "rsa" => Some(KeyType::Rsa2048),
            "ecdsa-p256" | "ecdsa" => Some(KeyType::EcdsaP256),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::Rsa2048 => "rsa-2048",
            KeyType::EcdsaP256 => "ecdsa-p256",
        }
    }

    fn generate(self) -> Result<KeyPair, PkiError> {
        match self {
            KeyType::Rsa2048 => rsa_key(),
            KeyType::EcdsaP256 => Ok(KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?),
        }
    }

    /// Key usages of a leaf: RSA keys also encipher (TLS 1.2 RSA key exchange); ECDSA keys only sign.
    fn leaf_usages(self) -> Vec<KeyUsagePurpose> {
        match self {
            KeyType::Rsa2048 => vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment],
            KeyType::EcdsaP256 => vec![KeyUsagePurpose::DigitalSignature],
        }
    }
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "ipxe-edge");
    dn.push(DnType::CommonName, common_name);
    dn
}

/// The longest validity the tools issue, in days (ten years).
pub const MAX_VALIDITY_DAYS: u32 = 3650;

/// Validity from a little before now (clock skew between machines) for `days` days.
pub fn validity_days(days: u32) -> (OffsetDateTime, OffsetDateTime) {
    let now = OffsetDateTime::now_utc();
    // Commands refuse longer validities; the clamp keeps any other caller from a date overflow.
    (now - Duration::minutes(5), now + Duration::days(days.min(MAX_VALIDITY_DAYS) as i64))
}

impl CertificateAuthority {
    /// A new self-signed RSA-2048 CA.
    pub fn generate(common_name: &str, days: u32) -> Result<Self, PkiError> {
        Self::generate_with(common_name, days, KeyType::Rsa2048)
    }

    /// A new self-signed CA with a key of `key_type`. What it issues is signed with that key:
    /// iPXE 2.0 uses an ECDSA client certificate only when its issuer signed it with ECDSA.
    pub fn generate_with(common_name: &str, days: u32, key_type: KeyType) -> Result<Self, PkiError> {
        let key = key_type.generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        (params.not_before, params.not_after) = validity_days(days);
        let cert = params.self_signed(&key)?;
        Ok(CertificateAuthority { cert, key })
    }

    /// A CA read back from its PEM certificate and key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(key_pem)?;
        let params = CertificateParams::from_ca_cert_pem(cert_pem)?;
        // Re-signing yields an issuer object with the same name and key; issued certificates
        // verify against the original certificate.
        let cert = params.self_signed(&key)?;
        Ok(CertificateAuthority { cert, key })
    }

    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    pub fn cert_der(&self) -> Vec<u8> {
        self.cert.der().to_vec()
    }

    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// A gateway client certificate (RSA-2048, clientAuth) valid over `validity`.
    pub fn issue_client(
        &self,
        common_name: &str,
        validity: (OffsetDateTime, OffsetDateTime),
    ) -> Result<Issued, PkiError> {
        self.issue_client_with(common_name, validity, KeyType::Rsa2048)
    }

    /// A gateway client certificate (clientAuth) with a key of `key_type`, valid over `validity`.
    pub fn issue_client_with(
        &self,
        common_name: &str,
        validity: (OffsetDateTime, OffsetDateTime),
        key_type: KeyType,
    ) -> Result<Issued, PkiError> {
        let key = key_type.generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(common_name);
        params.key_usages = key_type.leaf_usages();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        (params.not_before, params.not_after) = validity;
        params.serial_number = Some(random_serial());
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        Ok(Issued { cert_pem: cert.pem(), cert_der: cert.der().to_vec(), key_pem: key.serialize_pem() })
    }

    /// A TLS server certificate (RSA-2048) for host names and IP addresses.
    pub fn issue_server(&self, names: &[String], days: u32) -> Result<Issued, PkiError> {
        self.issue_server_with(names, days, KeyType::Rsa2048)
    }

    /// A TLS server certificate with a key of `key_type` for host names and IP addresses.
    pub fn issue_server_with(&self, names: &[String], days: u32, key_type: KeyType) -> Result<Issued, PkiError> {
        let key = key_type.generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(names.first().map(String::as_str).unwrap_or("ipxe-edge"));
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => n.clone().try_into().map(SanType::DnsName).map_err(|_| PkiError::BadName(n.clone())),
            })
            .collect::<Result<_, _>>()?;
        params.key_usages = key_type.leaf_usages();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        (params.not_before, params.not_after) = validity_days(days);
        params.serial_number = Some(random_serial());
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        Ok(Issued { cert_pem: cert.pem(), cert_der: cert.der().to_vec(), key_pem: key.serialize_pem() })
    }
}

/// A key and certificate signing request for an ACME order, the names as DNS subject
/// alternative names.
pub struct SigningRequest {
    pub csr_der: Vec<u8>,
    pub key_pem: String,
}

/// An RSA-2048 signing request (what iPXE before 2.0 speaks).
pub fn acme_signing_request(domains: &[String]) -> Result<SigningRequest, PkiError> {
    acme_signing_request_with(domains, KeyType::Rsa2048)
}

/// A signing request with a key of `key_type`.
pub fn acme_signing_request_with(domains: &[String], key_type: KeyType) -> Result<SigningRequest, PkiError> {
    let key = key_type.generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = domains
        .iter()
        .map(|d| d.clone().try_into().map(SanType::DnsName).map_err(|_| PkiError::BadName(d.clone())))
        .collect::<Result<_, _>>()?;
    let csr = params.serialize_request(&key)?;
    Ok(SigningRequest { csr_der: csr.der().to_vec(), key_pem: key.serialize_pem() })
}

/// The self-signed certificate that answers an ACME TLS-ALPN-01 challenge (RFC 8737): the
/// domain as its only name and the SHA-256 of the key authorization in the critical
/// `acmeIdentifier` extension. ECDSA P-256: only the validation server ever sees it.
pub fn acme_challenge_certificate(domain: &str, key_authorization_sha256: &[u8]) -> Result<Issued, PkiError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::new(vec![domain.to_string()]).map_err(|_| PkiError::BadName(domain.into()))?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(key_authorization_sha256)];
    let cert = params.self_signed(&key)?;
    Ok(Issued { cert_pem: cert.pem(), cert_der: cert.der().to_vec(), key_pem: key.serialize_pem() })
}

fn random_serial() -> rcgen::SerialNumber {
    use rand::RngCore;
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    bytes[0] &= 0x7f;
    rcgen::SerialNumber::from_slice(&bytes)
}

/// Issues an X.509 v1 client certificate the way older farms did (`openssl x509 -req` without
/// extensions), using the `openssl` command. Tests use it to prove such certificates work.
#[doc(hidden)]
pub fn issue_v1_client_with_openssl(
    ca: &CertificateAuthority,
    common_name: &str,
    days: u32,
) -> std::io::Result<Issued> {
    use std::process::Command;
    let dir = std::env::temp_dir().join(format!(
        "ipxe-edge-v1-{}-{}",
        std::process::id(),
        random_serial().to_bytes()[1..5].iter().map(|b| format!("{b:02x}")).collect::<String>()
    ));
    std::fs::create_dir_all(&dir)?;
    let path = |n: &str| dir.join(n);
    std::fs::write(path("ca.crt"), ca.cert_pem())?;
    std::fs::write(path("ca.key"), ca.key_pem())?;
    let run = |args: &[&str]| -> std::io::Result<()> {
        let out = Command::new("openssl").args(args).current_dir(&dir).output()?;
        if out.status.success() {
            Ok(())
        } else {
            Err(std::io::Error::other(format!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr))))
        }
    };
    let subject = format!("/O=legacy-farm/CN={common_name}");
    run(&["req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", "gw.key", "-out", "gw.csr", "-subj", &subject])?;
    run(&[
        "x509",
        "-req",
        "-in",
        "gw.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-set_serial",
        "4242",
        "-out",
        "gw.crt",
        "-days",
        &days.to_string(),
    ])?;
    let cert_pem = std::fs::read_to_string(path("gw.crt"))?;
    let key_pem = std::fs::read_to_string(path("gw.key"))?;
    let _ = std::fs::remove_dir_all(&dir);
    let (_, pem) =
        x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).map_err(|e| std::io::Error::other(e.to_string()))?;
    let cert_der = pem.contents;
    Ok(Issued { cert_pem, cert_der, key_pem })
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::{FromDer, X509Certificate, X509CertificationRequest};

    #[test]
    fn challenge_certificate_carries_the_key_authorization_digest() {
        let digest = [7u8; 32];
        let issued = acme_challenge_certificate("gw.example.org", &digest).unwrap();
        let (_, cert) = X509Certificate::from_der(&issued.cert_der).unwrap();
        let ext =
            cert.extensions().iter().find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31").expect("acmeIdentifier");
        assert!(ext.critical, "RFC 8737 requires the extension to be critical");
        // An OCTET STRING of 32 bytes wrapping the digest.
        assert_eq!(ext.value, [&[0x04, 0x20][..], &digest[..]].concat());
        let names: Vec<String> = cert
            .subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
            .iter()
            .map(|n| n.to_string())
            .collect();
        assert_eq!(names, vec!["DNSName(gw.example.org)".to_string()]);
    }

    #[test]
    fn signing_request_is_rsa_with_the_domains() {
        let request = acme_signing_request(&["a.example.org".into(), "b.example.org".into()]).unwrap();
        let (_, csr) = X509CertificationRequest::from_der(&request.csr_der).unwrap();
        assert_eq!(
            csr.certification_request_info.subject_pki.algorithm.algorithm.to_id_string(),
            "1.2.840.113549.1.1.1",
            "RSA key"
        );
        assert!(request.key_pem.contains("PRIVATE KEY"));
        assert!(acme_signing_request(&["gw-é.example.org".into()]).is_err());
    }
}
