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
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, ServerConfig, SignatureScheme};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};
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
        cipher_suites: vec![
            TLS13_AES_256_GCM_SHA384,
            TLS13_AES_128_GCM_SHA256,
            TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        ],
        ..aws_lc_rs::default_provider()
    }
}

pub fn load_certs(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsSetupError::Pem { what: what.into(), reason: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsSetupError::Pem { what: what.into(), reason: "no certificate".into() });
    }
    Ok(certs)
}

pub fn load_key(pem: &[u8], what: &str) -> Result<PrivateKeyDer<'static>, TlsSetupError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| TlsSetupError::Pem { what: what.into(), reason: e.to_string() })
}

/// The ALPN protocol of ACME's TLS-ALPN-01 validation (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Server configuration presenting `cert`; with a verifier, a client certificate is asked for
/// (required unless the verifier allows ACME validations, see [`GatewayCertVerifier::allowing_acme`]).
/// With `acme`, the listener also answers TLS-ALPN-01 validations.
pub fn server_config(
    cert: Arc<ServerCert>,
    client_verifier: Option<Arc<GatewayCertVerifier>>,
    acme: bool,
) -> Result<Arc<ServerConfig>, TlsSetupError> {
    let builder = ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match client_verifier {
        Some(v) => builder.with_client_cert_verifier(v),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_cert_resolver(cert);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    if acme {
        config.alpn_protocols.push(ACME_TLS_ALPN.to_vec());
    }
    Ok(Arc::new(config))
}

/// What identifies a file's version: modification time, size and inode (certbot replaces the
/// files behind its `live/` links, which changes all three).
type FileStamp = (SystemTime, u64, u64);

fn stamp(path: &Path) -> std::io::Result<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)?;
    Ok((meta.modified()?, meta.len(), meta.ino()))
}

/// The server certificates every listener presents: an RSA one for every client, and an ECDSA
/// one for clients that can use it (iPXE 2.0, browsers, curl), picked per handshake. From files
/// (`--tls-cert`, `--tls-key`, once per pair) they are reloaded when they change, without a
/// restart; a broken new pair is refused and the current ones kept.
#[derive(Debug)]
pub struct ServerCert {
    current: RwLock<Presented>,
    /// TLS-ALPN-01 answers by domain, presented only to clients that ask for `acme-tls/1`.
    challenges: RwLock<HashMap<String, Arc<CertifiedKey>>>,
    files: Vec<(PathBuf, PathBuf)>,
    stamps: Mutex<Option<Vec<(FileStamp, FileStamp)>>>,
}

/// At most one certificate per key type.
#[derive(Clone, Debug, Default)]
struct Presented {
    rsa: Option<Arc<CertifiedKey>>,
    ecdsa: Option<Arc<CertifiedKey>>,
}

impl Presented {
    fn from_pairs(pairs: Vec<Arc<CertifiedKey>>) -> Result<Self, TlsSetupError> {
        let mut presented = Presented::default();
        for pair in pairs {
            presented.put(pair)?;
        }
        if presented.rsa.is_none() && presented.ecdsa.is_none() {
            return Err(TlsSetupError::Pem { what: "server certificate".into(), reason: "none given".into() });
        }
        Ok(presented)
    }

    /// Puts `pair` in the slot of its key type; two pairs of one type are refused.
    fn put(&mut self, pair: Arc<CertifiedKey>) -> Result<(), TlsSetupError> {
        let slot = match pair.key.algorithm() {
            rustls::SignatureAlgorithm::RSA => &mut self.rsa,
            rustls::SignatureAlgorithm::ECDSA => &mut self.ecdsa,
            other => {
                return Err(TlsSetupError::Pem {
                    what: "server certificate".into(),
                    reason: format!("{other:?} keys are not supported: give RSA and/or ECDSA pairs"),
                })
            }
        };
        if slot.is_some() {
            return Err(TlsSetupError::Pem {
                what: "server certificate".into(),
                reason: "two certificates with the same key type: give at most one RSA and one ECDSA pair".into(),
            });
        }
        *slot = Some(pair);
        Ok(())
    }

    /// ECDSA when the client can verify an ECDSA signature and agree on a suite for it (any
    /// TLS 1.3 suite, or an ECDHE-ECDSA one for TLS 1.2); RSA otherwise (iPXE before 2.0).
    fn choose(&self, hello: &ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let ecdsa_ok = hello.signature_schemes().iter().any(|s| {
            matches!(s, rustls::SignatureScheme::ECDSA_NISTP256_SHA256 | rustls::SignatureScheme::ECDSA_NISTP384_SHA384)
        }) && hello.cipher_suites().iter().any(|suite| {
            let name = format!("{suite:?}");
            name.starts_with("TLS13_") || name.starts_with("TLS_ECDHE_ECDSA_")
        });
        match (&self.ecdsa, &self.rsa) {
            (Some(ecdsa), _) if ecdsa_ok => Some(ecdsa.clone()),
            (_, Some(rsa)) => Some(rsa.clone()),
            (Some(ecdsa), None) => Some(ecdsa.clone()),
            (None, None) => None,
        }
    }

    fn leaves(&self) -> Vec<CertificateDer<'static>> {
        [&self.rsa, &self.ecdsa].into_iter().flatten().map(|pair| pair.cert[0].clone()).collect()
    }
}

fn certified(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    what: &str,
) -> Result<Arc<CertifiedKey>, TlsSetupError> {
    let certified = CertifiedKey::from_der(chain, key, &provider())
        .map_err(|e| TlsSetupError::Pem { what: what.into(), reason: e.to_string() })?;
    Ok(Arc::new(certified))
}

/// A certificate chain and its key.
pub type Pair = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

impl ServerCert {
    /// Certificates that never change (the ones `serve` makes itself), at most one per key type.
    pub fn fixed(pairs: Vec<Pair>) -> Result<Arc<Self>, TlsSetupError> {
        let pairs = pairs
            .into_iter()
            .map(|(chain, key)| certified(chain, key, "server certificate"))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Arc::new(ServerCert {
            current: RwLock::new(Presented::from_pairs(pairs)?),
            challenges: RwLock::default(),
            files: Vec::new(),
            stamps: Mutex::new(None),
        }))
    }

    /// Certificate chains and keys read from PEM files, reloaded by [`ServerCert::reload_if_changed`].
    pub fn from_files(files: &[(PathBuf, PathBuf)]) -> Result<Arc<Self>, TlsSetupError> {
        let (loaded, stamps) = Self::load(files)?;
        Ok(Arc::new(ServerCert {
            current: RwLock::new(loaded),
            challenges: RwLock::default(),
            files: files.to_vec(),
            stamps: Mutex::new(Some(stamps)),
        }))
    }

    fn load(files: &[(PathBuf, PathBuf)]) -> Result<(Presented, Vec<(FileStamp, FileStamp)>), TlsSetupError> {
        fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TlsSetupError + '_ {
            move |e| TlsSetupError::Pem { what: path.display().to_string(), reason: e.to_string() }
        }
        let mut pairs = Vec::new();
        let mut stamps = Vec::new();
        for (cert, key) in files {
            stamps.push((stamp(cert).map_err(io(cert))?, stamp(key).map_err(io(key))?));
            let chain = load_certs(&std::fs::read(cert).map_err(io(cert))?, &cert.display().to_string())?;
            let private = load_key(&std::fs::read(key).map_err(io(key))?, &key.display().to_string())?;
            pairs.push(certified(chain, private, &cert.display().to_string())?);
        }
        Ok((Presented::from_pairs(pairs)?, stamps))
    }

    /// Presents `chain` and `key` from now on in place of the pair of the same key type (a
    /// certificate obtained over ACME); a pair whose key does not match is refused and the
    /// current one kept.
    pub fn replace(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<(), TlsSetupError> {
        let loaded = certified(chain, key, "ACME certificate")?;
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        match loaded.key.algorithm() {
            rustls::SignatureAlgorithm::ECDSA => current.ecdsa = Some(loaded),
            _ => current.rsa = Some(loaded),
        }
        Ok(())
    }

    /// Answers TLS-ALPN-01 validations of `domain` with `chain`/`key` until cleared.
    pub fn set_challenge(
        &self,
        domain: &str,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<(), TlsSetupError> {
        // Not `certified`: its key check parses the certificate with WebPKI, which refuses the
        // critical acmeIdentifier extension every challenge certificate carries.
        let signing = provider()
            .key_provider
            .load_private_key(key)
            .map_err(|e| TlsSetupError::Pem { what: "ACME challenge key".into(), reason: e.to_string() })?;
        let answer = Arc::new(CertifiedKey::new(chain, signing));
        self.challenges.write().unwrap_or_else(|p| p.into_inner()).insert(domain.to_ascii_lowercase(), answer);
        Ok(())
    }

    pub fn clear_challenges(&self) {
        self.challenges.write().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// The leaf certificates presented now, RSA first.
    pub fn leaves(&self) -> Vec<CertificateDer<'static>> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).leaves()
    }

    /// Reads the files again if they changed since the last load; `Ok(true)` when the new pairs
    /// are now presented.
    pub fn reload_if_changed(&self) -> Result<bool, TlsSetupError> {
        if self.files.is_empty() {
            return Ok(false);
        }
        let now: Option<Vec<(FileStamp, FileStamp)>> =
            self.files.iter().map(|(cert, key)| Some((stamp(cert).ok()?, stamp(key).ok()?))).collect();
        let mut stamps = self.stamps.lock().unwrap_or_else(|p| p.into_inner());
        if now.is_some() && *stamps == now {
            return Ok(false);
        }
        match Self::load(&self.files) {
            Ok((loaded, new_stamps)) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = loaded;
                *stamps = Some(new_stamps);
                Ok(true)
            }
            Err(e) => {
                // Do not retry the same broken files every tick: wait for the next change.
                if now.is_some() {
                    *stamps = now;
                }
                Err(e)
            }
        }
    }
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // An ACME validation asks for `acme-tls/1` alone and gets the challenge certificate
        // of the name it sent, or no handshake; nobody else ever sees a challenge certificate.
        if hello.alpn().is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN)) {
            let name = hello.server_name()?.to_ascii_lowercase();
            return self.challenges.read().unwrap_or_else(|p| p.into_inner()).get(&name).cloned();
        }
        self.current.read().unwrap_or_else(|p| p.into_inner()).choose(&hello)
    }
}

/// Checks the certificate files every `every` and swaps in a changed pair, with one log line.
pub async fn watch(cert: Arc<ServerCert>, every: Duration) {
    let mut interval = tokio::time::interval(every);
    loop {
        interval.tick().await;
        let cert = cert.clone();
        match tokio::task::spawn_blocking(move || cert.reload_if_changed().map(|changed| (changed, cert.leaves())))
            .await
        {
            Ok(Ok((true, leaves))) => {
                for leaf in leaves {
                    let (subject, not_after) = X509Certificate::from_der(leaf.as_ref())
                        .map(|(_, c)| (c.subject().to_string(), c.validity().not_after.to_string()))
                        .unwrap_or_default();
                    tracing::info!(subject, not_after, "server certificate reloaded")
                }
            }
            Ok(Ok((false, _))) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, "new server certificate refused; still presenting the previous one")
            }
            Err(e) => tracing::error!(error = %e, "certificate reload task failed"),
        }
    }
}

/// Accepts client certificates the core chain verifier accepts, v1 included.
#[derive(Debug)]
pub struct GatewayCertVerifier {
    chain: ChainVerifier,
    /// Whether a handshake without a client certificate may complete: only so that an ACME
    /// validation server can reach the challenge certificate; the front then closes every such
    /// connection that is not a validation.
    optional: bool,
    hints: Vec<DistinguishedName>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl GatewayCertVerifier {
    pub fn new(chain: ChainVerifier) -> Self {
        let hints = chain
            .bundle()
            .anchors()
            .iter()
            .filter_map(|der| {
                X509Certificate::from_der(der).ok().map(|(_, c)| DistinguishedName::from(c.subject().as_raw().to_vec()))
            })
            .collect();
        GatewayCertVerifier {
            chain,
            hints,
            algorithms: aws_lc_rs::default_provider().signature_verification_algorithms,
            optional: false,
        }
    }

    /// Lets handshakes without a client certificate complete, for ACME's TLS-ALPN-01.
    pub fn allowing_acme(mut self) -> Self {
        self.optional = true;
        self
    }

    fn verify_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let (_, parsed) = X509Certificate::from_der(cert.as_ref())
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        let public_key = parsed.public_key().subject_public_key.data.as_ref();
        let candidates =
            self.algorithms.mapping.iter().find(|(scheme, _)| *scheme == dss.scheme).map(|(_, algs)| *algs).ok_or(
                rustls::Error::PeerMisbehaved(rustls::PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme),
            )?;
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
    fn client_auth_mandatory(&self) -> bool {
        !self.optional
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let chain: Vec<Vec<u8>> =
            std::iter::once(end_entity).chain(intermediates).map(|c| c.as_ref().to_vec()).collect();
        self.chain.verify_der_chain(&chain, now.as_secs() as i64).map_err(certificate_error)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.verify_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // TLS 1.3 forbids PKCS#1 v1.5 signatures in CertificateVerify.
        if matches!(
            dss.scheme,
            SignatureScheme::RSA_PKCS1_SHA256 | SignatureScheme::RSA_PKCS1_SHA384 | SignatureScheme::RSA_PKCS1_SHA512
        ) {
            return Err(rustls::Error::PeerMisbehaved(
                rustls::PeerMisbehaved::SignedHandshakeWithUnadvertisedSigScheme,
            ));
        }
        self.verify_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ipxe_edge_core::domain::identity::{TrustBundle, DEFAULT_CLOCK_SKEW};
    use ipxe_edge_pki::validity_days;
    use ipxe_edge_tests::{chain_intermediate, chain_leaf, chain_root, ChainCa};

    fn verifiers(root: &ChainCa) -> (ChainVerifier, GatewayCertVerifier) {
        let chain = ChainVerifier::new(TrustBundle::from_pem(root.cert.pem().as_bytes()).unwrap(), DEFAULT_CLOCK_SKEW);
        (chain.clone(), GatewayCertVerifier::new(chain))
    }

    /// The TLS verifier of `serve` and the handler's verifier accept exactly the same chains.
    #[test]
    fn tls_and_handler_verifiers_agree() {
        let now = ipxe_edge_core::domain::clock::unix_now();
        let root = chain_root("agree root", None);
        let strict_root = chain_root("agree strict root", Some(0));
        let expired = (
            time::OffsetDateTime::now_utc() - time::Duration::days(30),
            time::OffsetDateTime::now_utc() - time::Duration::days(1),
        );
        let good_int = chain_intermediate(&root, "good intermediate", true, validity_days(10));
        let not_ca = chain_intermediate(&root, "not a CA", false, validity_days(10));
        let old_int = chain_intermediate(&root, "expired intermediate", true, expired);
        let under_strict = chain_intermediate(&strict_root, "too deep", true, validity_days(10));

        struct Case<'a> {
            what: &'a str,
            root: &'a ChainCa,
            chain: Vec<Vec<u8>>,
            accepted: bool,
        }
        let leaf_of = |ca: &ChainCa, cn: &str| chain_leaf(ca, cn).cert_der;
        let cases = vec![
            Case { what: "leaf alone", root: &root, chain: vec![leaf_of(&root, "alone")], accepted: true },
            Case {
                what: "leaf + intermediate",
                root: &root,
                chain: vec![leaf_of(&good_int, "via int"), good_int.cert.der().to_vec()],
                accepted: true,
            },
            Case {
                what: "leaf without its intermediate",
                root: &root,
                chain: vec![leaf_of(&good_int, "no int")],
                accepted: false,
            },
            Case {
                what: "intermediate that is not a CA",
                root: &root,
                chain: vec![leaf_of(&not_ca, "bad int"), not_ca.cert.der().to_vec()],
                accepted: false,
            },
            Case {
                what: "expired intermediate",
                root: &root,
                chain: vec![leaf_of(&old_int, "old int"), old_int.cert.der().to_vec()],
                accepted: false,
            },
            Case {
                what: "intermediate under a root with path length 0",
                root: &strict_root,
                chain: vec![leaf_of(&under_strict, "deep"), under_strict.cert.der().to_vec()],
                accepted: false,
            },
        ];
        for case in &cases {
            let (chain, tls) = verifiers(case.root);
            let handler = chain.verify_der_chain(&case.chain, now as i64).is_ok();
            let ders: Vec<CertificateDer<'static>> =
                case.chain.iter().map(|d| CertificateDer::from(d.clone())).collect();
            let handshake = tls
                .verify_client_cert(
                    &ders[0],
                    &ders[1..],
                    UnixTime::since_unix_epoch(std::time::Duration::from_secs(now)),
                )
                .is_ok();
            assert_eq!(handler, case.accepted, "{}: handler", case.what);
            assert_eq!(handshake, case.accepted, "{}: TLS", case.what);
        }
        // A v1 leaf (no extensions) from an openssl-made chain: accepted by both.
        let v1_ca = ipxe_edge_pki::CertificateAuthority::generate("v1 farm", 10).unwrap();
        let legacy = ipxe_edge_pki::issue_v1_client_with_openssl(&v1_ca, "legacy-gw", 10).unwrap();
        let chain = ChainVerifier::new(TrustBundle::from_pem(v1_ca.cert_pem().as_bytes()).unwrap(), DEFAULT_CLOCK_SKEW);
        let tls = GatewayCertVerifier::new(chain.clone());
        assert!(chain.verify_der_chain(std::slice::from_ref(&legacy.cert_der), now as i64).is_ok());
        let der = CertificateDer::from(legacy.cert_der.clone());
        assert!(tls
            .verify_client_cert(&der, &[], UnixTime::since_unix_epoch(std::time::Duration::from_secs(now)))
            .is_ok());
    }
}
