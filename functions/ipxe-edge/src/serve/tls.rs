//! TLS the way API Gateway's mTLS custom domain does it, for the clients iPXE is: RSA server
//! certificate, TLS 1.2 (ECDHE-RSA AES-GCM, what current iPXE offers) and 1.3, and on the boot
//! listener a client certificate that must chain to the deployment's CA bundle.
//!
//! The client certificate check reuses the core [`ChainVerifier`] instead of a WebPKI verifier:
//! gateways of existing farms hold X.509 v1 certificates that WebPKI refuses. For the same
//! reason the handshake signature is checked against the key read from the certificate by
//! x509-parser, not by WebPKI's certificate parser.

use ipxe_edge_core::domain::identity::{ChainVerifier, IdentityError};
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::{aws_lc_rs, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, ServerConfig, SignatureScheme};
use std::sync::Arc;
use x509_parser::prelude::{FromDer, X509Certificate};

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("{what}: {reason}")]
    Pem { what: String, reason: String },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The cipher suites offered: TLS 1.3's AES-GCM suites and TLS 1.2 ECDHE-RSA AES-GCM.
fn provider() -> CryptoProvider {
    use aws_lc_rs::cipher_suite::*;
    CryptoProvider {
        cipher_suites: vec![TLS13_AES_256_GCM_SHA384, TLS13_AES_128_GCM_SHA256, TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384, TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256],
        ..aws_lc_rs::default_provider()
    }
}

pub fn load_certs(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let certs: Vec<_> =
        CertificateDer::pem_slice_iter(pem).collect::<Result<_, _>>().map_err(|e| TlsSetupError::Pem { what: what.into(), reason: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsSetupError::Pem { what: what.into(), reason: "no certificate".into() });
    }
    Ok(certs)
}

pub fn load_key(pem: &[u8], what: &str) -> Result<PrivateKeyDer<'static>, TlsSetupError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| TlsSetupError::Pem { what: what.into(), reason: e.to_string() })
}

/// Server configuration; with a verifier, a client certificate is required.
pub fn server_config(
    cert_chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_verifier: Option<Arc<GatewayCertVerifier>>,
) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let builder = ServerConfig::builder_with_provider(Arc::new(provider())).with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match client_verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(cert_chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Accepts client certificates the core chain verifier accepts, v1 included.
#[derive(Debug)]
pub struct GatewayCertVerifier {
    chain: ChainVerifier,
    hints: Vec<DistinguishedName>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl GatewayCertVerifier {
    pub fn new(chain: ChainVerifier) -> Self {
        let hints = chain
            .bundle()
            .anchors()
            .iter()
            .filter_map(|der| X509Certificate::from_der(der).ok().map(|(_, c)| DistinguishedName::from(c.subject().as_raw().to_vec())))
            .collect();
        GatewayCertVerifier { chain, hints, algorithms: aws_lc_rs::default_provider().signature_verification_algorithms }
    }

    fn verify_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        let (_, parsed) = X509Certificate::from_der(cert.as_ref()).map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let public_key = parsed.public_key().subject_public_key.data.as_ref();
        let candidates = self
            .algorithms
            .mapping
            .iter()
            .find(|(scheme, _)| *scheme == dss.scheme)
            .map(|(_, algs)| *algs)
            .ok_or(rustls::Error::PeerMisbehaved(rustls::PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme))?;
        // The scheme fixes hash and padding; the key bytes only parse for their own key type.
        if candidates.iter().any(|alg| alg.verify_signature(public_key, message, dss.signature()).is_ok()) {
            Ok(HandshakeSignatureValid::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(CertificateError::BadSignature))
        }
    }
}

fn certificate_error(e: IdentityError) -> rustls::Error {
    rustls::Error::InvalidCertificate(match e {
        IdentityError::Expired { .. } => CertificateError::Expired,
        IdentityError::NotYetValid { .. } => CertificateError::NotValidYet,
        IdentityError::Untrusted => CertificateError::UnknownIssuer,
        IdentityError::Malformed(_) | IdentityError::Missing => CertificateError::BadEncoding,
        other => CertificateError::Other(OtherError(Arc::new(other))),
    })
}

impl ClientCertVerifier for GatewayCertVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let chain: Vec<Vec<u8>> = std::iter::once(end_entity).chain(intermediates).map(|c| c.as_ref().to_vec()).collect();
        self.chain.verify_der_chain(&chain, now.as_secs() as i64).map_err(certificate_error)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verify_signature(message, cert, dss)
    }

    fn verify_tls13_signature(&self, message: &[u8], cert: &CertificateDer<'_>, dss: &DigitallySignedStruct) -> Result<HandshakeSignatureValid, rustls::Error> {
        // TLS 1.3 forbids PKCS#1 v1.5 signatures in CertificateVerify.
        if matches!(dss.scheme, SignatureScheme::RSA_PKCS1_SHA256 | SignatureScheme::RSA_PKCS1_SHA384 | SignatureScheme::RSA_PKCS1_SHA512) {
            return Err(rustls::Error::PeerMisbehaved(rustls::PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme));
        }
        self.verify_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
