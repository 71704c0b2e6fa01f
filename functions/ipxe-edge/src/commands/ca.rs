//! `ipxe-edge ca …`: the deployment CA and the trust bundle client certificates must chain to.

use super::context::{file_error, CliError, Context};
use crate::datadir::{self, write_atomic, DataDir, DataDirError};
use ipxe_edge_core::domain::identity::{der_to_pem, pem_certificates, TrustBundle};
use ipxe_edge_core::storage::keys;
use ipxe_edge_core::storage::records::{Change, Records, UPDATE_ATTEMPTS};
use ipxe_edge_pki::CertificateAuthority;
use std::path::{Path, PathBuf};
use x509_parser::prelude::{FromDer, X509Certificate};

/// Default CA lifetime: ten years (gateways are re-imaged rarely).
pub const CA_DAYS: u32 = 3650;

#[derive(clap::Subcommand)]
pub enum CaCommand {
    /// Create the deployment CA (RSA, as iPXE requires) and add it to the trust bundle.
    ///
    /// The key is written 0600 to DIR/pki/ca.key and never leaves this machine. Refuses to
    /// overwrite an existing CA.
    ///
    /// Example: ipxe-edge ca init
    Init {
        /// Validity in days (1 to 3650).
        #[arg(long, default_value_t = CA_DAYS, value_parser = clap::value_parser!(u32).range(1..=ipxe_edge_pki::MAX_VALIDITY_DAYS as i64))]
        days: u32,
    },
    /// Print (or write) the PEM bundle to upload as the API Gateway mTLS truststore.
    ///
    /// Example: ipxe-edge --bucket my-boot-bucket ca truststore --out truststore.pem
    Truststore {
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Trust another CA (e.g. an existing farm's), so that its gateways' certificates verify.
    ///
    /// Example: ipxe-edge ca trust ./valve-infra/ca_cert/ca.crt
    Trust { file: PathBuf },
}

pub async fn run(ctx: &Context, command: CaCommand) -> Result<(), CliError> {
    match command {
        CaCommand::Init { days } => init(ctx, days).await,
        CaCommand::Truststore { out } => truststore(ctx, out.as_deref()).await,
        CaCommand::Trust { file } => trust(ctx, &file).await,
    }
}

/// Creates the CA in the data directory; refuses to overwrite an existing one.
pub fn create(dir: &DataDir, days: u32) -> Result<CertificateAuthority, CliError> {
    for path in [dir.ca_cert(), dir.ca_key()] {
        if path.exists() {
            return Err(CliError::Refused(format!(
                "a CA exists already at {}; refusing to overwrite it",
                path.display()
            )));
        }
    }
    let ca = CertificateAuthority::generate("ipxe-edge CA", days).map_err(|e| CliError::Pki(e.to_string()))?;
    write_atomic(&dir.ca_key(), ca.key_pem().as_bytes(), 0o600)?;
    write_atomic(&dir.ca_cert(), ca.cert_pem().as_bytes(), 0o600)?;
    Ok(ca)
}

/// Loads the CA of the data directory.
pub fn load(dir: &DataDir) -> Result<CertificateAuthority, CliError> {
    let (cert_path, key_path) = (dir.ca_cert(), dir.ca_key());
    match (cert_path.exists(), key_path.exists()) {
        (true, true) => {}
        (false, false) => {
            return Err(CliError::Refused(format!("no CA in {} (run: ipxe-edge ca init)", dir.pki().display())))
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
pub async fn add_to_bundle(records: &Records, pem: &[u8]) -> Result<usize, CliError> {
    let new = pem_certificates(pem)?;
    let mut added = 0;
    records
        .update_raw::<CliError>(keys::TRUST_BUNDLE, UPDATE_ATTEMPTS, |current| {
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
pub async fn bundle(ctx: &Context) -> Result<TrustBundle, CliError> {
    Ok(TrustBundle::from_pem(&bundle_pem(ctx).await?)?)
}

async fn bundle_pem(ctx: &Context) -> Result<Vec<u8>, CliError> {
    ctx.records
        .trust_bundle(keys::TRUST_BUNDLE)
        .await?
        .ok_or_else(|| CliError::Refused("no trust bundle yet (run: ipxe-edge ca init)".into()))
}

pub async fn init(ctx: &Context, days: u32) -> Result<(), CliError> {
    let ca = create(&ctx.dir, days)?;
    add_to_bundle(&ctx.records, ca.cert_pem().as_bytes()).await?;
    println!("created CA {} (key {}, mode 0600)", ctx.dir.ca_cert().display(), ctx.dir.ca_key().display());
    println!("trust bundle updated: {}", keys::TRUST_BUNDLE);
    Ok(())
}

pub async fn truststore(ctx: &Context, out: Option<&Path>) -> Result<(), CliError> {
    let pem = bundle_pem(ctx).await?;
    match out {
        Some(path) => {
            write_atomic(path, &pem, 0o644)?;
            eprintln!(
                "wrote {} ({} certificates)",
                path.display(),
                pem_certificates(&pem).map(|c| c.len()).unwrap_or(0)
            );
        }
        None => print!("{}", String::from_utf8_lossy(&pem)),
    }
    Ok(())
}

pub async fn trust(ctx: &Context, file: &Path) -> Result<(), CliError> {
    let pem = std::fs::read(file).map_err(file_error(file))?;
    let ders = pem_certificates(&pem)?;
    for der in &ders {
        let (_, cert) = X509Certificate::from_der(der)
            .map_err(|e| CliError::Usage(format!("{}: not a certificate: {e}", file.display())))?;
        let is_ca = matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca);
        let self_signed_v1 = cert.version() == x509_parser::x509::X509Version::V1 && cert.subject() == cert.issuer();
        if !is_ca && !self_signed_v1 {
            return Err(CliError::Usage(format!("{}: {} is not a CA certificate", file.display(), cert.subject())));
        }
    }
    let added = add_to_bundle(&ctx.records, &pem).await?;
    println!("trusted {added} new CA certificate(s) from {}; upload the bundle as the API Gateway truststore: ipxe-edge ca truststore", file.display());
    Ok(())
}
