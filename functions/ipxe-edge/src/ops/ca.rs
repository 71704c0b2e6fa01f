//! The deployment CA and the trust bundle client certificates must chain to.

use super::{file_error, Deployment, OpError};
use crate::datadir::{self, write_atomic, DataDir, DataDirError};
use ipxe_edge_core::domain::identity::{der_to_pem, pem_certificates, TrustBundle};
use ipxe_edge_core::storage::keys;
use ipxe_edge_core::storage::records::{Change, Records, UPDATE_ATTEMPTS};
use ipxe_edge_pki::{CertificateAuthority, KeyType};
use std::path::{Path, PathBuf};
use x509_parser::prelude::{FromDer, X509Certificate};

/// Default CA lifetime: ten years (gateways are re-imaged rarely).
pub const CA_DAYS: u32 = 3650;

/// Where the CA of `key_type` keeps its certificate and key.
fn paths(dir: &DataDir, key_type: KeyType) -> (PathBuf, PathBuf) {
    match key_type {
        KeyType::Rsa2048 => (dir.ca_cert(), dir.ca_key()),
        KeyType::EcdsaP256 => (dir.ca_ecdsa_cert(), dir.ca_ecdsa_key()),
    }
}

/// Creates the CA in the data directory; refuses to overwrite an existing one.
pub fn create(dir: &DataDir, days: u32) -> Result<CertificateAuthority, OpError> {
    create_with(dir, days, KeyType::Rsa2048)
}

/// Creates the CA of `key_type`; refuses to overwrite an existing one.
pub fn create_with(dir: &DataDir, days: u32, key_type: KeyType) -> Result<CertificateAuthority, OpError> {
    let (cert_path, key_path) = paths(dir, key_type);
    for path in [&cert_path, &key_path] {
        if path.exists() {
            return Err(OpError::Refused(format!(
                "a CA exists already at {}; refusing to overwrite it",
                path.display()
            )));
        }
    }
    let name = match key_type {
        KeyType::Rsa2048 => "ipxe-edge CA",
        KeyType::EcdsaP256 => "ipxe-edge ECDSA CA",
    };
    let ca = CertificateAuthority::generate_with(name, days, key_type).map_err(|e| OpError::Pki(e.to_string()))?;
    write_atomic(&key_path, ca.key_pem().as_bytes(), 0o600)?;
    write_atomic(&cert_path, ca.cert_pem().as_bytes(), 0o600)?;
    Ok(ca)
}

/// The CA that issues certificates with keys of `key_type`: the RSA CA, or the ECDSA one.
pub fn load_for(dir: &DataDir, key_type: KeyType) -> Result<CertificateAuthority, OpError> {
    match key_type {
        KeyType::Rsa2048 => load(dir),
        KeyType::EcdsaP256 => {
            let (cert_path, key_path) = paths(dir, key_type);
            if !cert_path.exists() {
                return Err(OpError::Refused(format!(
                    "no ECDSA CA in {} (enroll an ECDSA gateway, or start serve once)",
                    dir.pki().display()
                )));
            }
            let cert = datadir::read_string(&cert_path)?;
            let key = datadir::read_private_string(&key_path)?;
            CertificateAuthority::from_pem(&cert, &key)
                .map_err(|e| DataDirError::Corrupt { path: cert_path, reason: e.to_string() }.into())
        }
    }
}

/// Creates the ECDSA CA, if there is none yet, and trusts it; `true` when it was created.
pub async fn ensure_ecdsa(dir: &DataDir, records: &Records, days: u32) -> Result<bool, OpError> {
    if dir.ca_ecdsa_cert().exists() {
        return Ok(false);
    }
    let ca = create_with(dir, days, KeyType::EcdsaP256)?;
    add_to_bundle(records, ca.cert_pem().as_bytes()).await?;
    Ok(true)
}

/// Loads the CA of the data directory.
pub fn load(dir: &DataDir) -> Result<CertificateAuthority, OpError> {
    let (cert_path, key_path) = (dir.ca_cert(), dir.ca_key());
    match (cert_path.exists(), key_path.exists()) {
        (true, true) => {}
        (false, false) => {
            return Err(OpError::Refused(format!("no CA in {} (run: ipxe-edge ca init)", dir.pki().display())))
        }
        (true, false) => {
            return Err(DataDirError::Corrupt {
                path: key_path,
                reason: "the CA certificate exists but its key is missing".into(),
            }
            .into())
        }
        (false, true) => {
            return Err(DataDirError::Corrupt {
                path: cert_path,
                reason: "the CA key exists but its certificate is missing".into(),
            }
            .into())
        }
    }
    let cert = datadir::read_string(&cert_path)?;
    let key = datadir::read_private_string(&key_path)?;
    CertificateAuthority::from_pem(&cert, &key)
        .map_err(|e| DataDirError::Corrupt { path: cert_path, reason: e.to_string() }.into())
}

/// Adds CA certificates to the trust bundle object (deduplicated), with the records layer's
/// conditional read-modify-write so that concurrent additions are not lost. Returns how many
/// were new.
pub async fn add_to_bundle(records: &Records, pem: &[u8]) -> Result<usize, OpError> {
    let new = pem_certificates(pem)?;
    let mut added = 0;
    records
        .update_raw::<OpError>(keys::TRUST_BUNDLE, UPDATE_ATTEMPTS, |current| {
            let (mut text, mut ders) = match current {
                Some(body) => (String::from_utf8_lossy(body).into_owned(), pem_certificates(body).unwrap_or_default()),
                None => (String::new(), Vec::new()),
            };
            added = 0;
            for der in &new {
                if !ders.contains(der) {
                    text.push_str(&der_to_pem(der));
                    ders.push(der.clone());
                    added += 1;
                }
            }
            Ok(if added == 0 { Change::Keep } else { Change::Write(text.into_bytes()) })
        })
        .await?;
    Ok(added)
}

/// The trust bundle as stored.
pub async fn bundle(deployment: &Deployment) -> Result<TrustBundle, OpError> {
    Ok(TrustBundle::from_pem(&bundle_pem(deployment).await?)?)
}

pub async fn bundle_pem(deployment: &Deployment) -> Result<Vec<u8>, OpError> {
    deployment
        .records
        .trust_bundle(keys::TRUST_BUNDLE)
        .await?
        .ok_or_else(|| OpError::Refused("no trust bundle yet (run: ipxe-edge ca init)".into()))
}

/// Creates the CAs (RSA, and ECDSA for ECDSA gateways) and adds them to the trust bundle.
pub async fn init(deployment: &Deployment, days: u32) -> Result<(), OpError> {
    let ca = create(&deployment.dir, days)?;
    add_to_bundle(&deployment.records, ca.cert_pem().as_bytes()).await?;
    ensure_ecdsa(&deployment.dir, &deployment.records, days).await?;
    Ok(())
}

/// Adds the CA certificates of `file` to the trust bundle, refusing anything that is not a CA
/// certificate. Returns how many were new.
pub async fn trust(deployment: &Deployment, file: &Path) -> Result<usize, OpError> {
    let pem = std::fs::read(file).map_err(file_error(file))?;
    let ders = pem_certificates(&pem)?;
    for der in &ders {
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|e| OpError::Invalid(format!("{}: not a certificate: {e}", file.display())))?;
        let is_ca = matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca);
        let self_signed_v1 = cert.version() == x509_parser::x509::X509Version::V1 && cert.subject() == cert.issuer();
        if !is_ca && !self_signed_v1 {
            return Err(OpError::Invalid(format!("{}: {} is not a CA certificate", file.display(), cert.subject())));
        }
    }
    add_to_bundle(&deployment.records, &pem).await
}
