//! Server certificates from an ACME CA (RFC 8555), Let's Encrypt by default, so that stock
//! iPXE (which trusts public CAs) can boot from `serve` on the internet.
//!
//! Validation is TLS-ALPN-01 (RFC 8737) on `serve`'s own HTTPS listeners: the CA connects to
//! port 443 of the domain asking for the `acme-tls/1` protocol and receives a challenge
//! certificate; no port 80 listener is needed. The boot listener lets such handshakes finish
//! without a client certificate and closes every connection that is not a validation and has
//! no certificate (see `front`), so it still serves only enrolled gateways.
//!
//! The account key and the certificate (chain and key in one file, written atomically) are kept
//! under `DIR/acme/`, 0600. A certificate is renewed once a third of its lifetime remains;
//! failures are retried with backoff while the current certificate keeps being presented.

use crate::datadir::{self, DataDir};
use crate::serve::tls::{self, ServerCert};
use ipxe_edge_pki::KeyType;

/// The certificates ordered: RSA first (every client speaks it), then ECDSA.
const KEY_TYPES: [KeyType; 2] = [KeyType::Rsa2048, KeyType::EcdsaP256];
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus,
    RetryPolicy,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use x509_parser::prelude::{FromDer, X509Certificate};

pub const LETS_ENCRYPT_DIRECTORY: &str = "https://acme-v02.api.letsencrypt.org/directory";

/// Backoff between failed attempts to obtain a certificate: from one minute up to six hours.
const FIRST_RETRY: Duration = Duration::from_secs(60);
const LAST_RETRY: Duration = Duration::from_secs(6 * 3600);

#[derive(Debug, Clone, clap::Args)]
pub struct AcmeArgs {
    /// Obtain the server certificate from an ACME CA for this DNS name (repeatable; the first
    /// is also the default --public-host). The CA validates with TLS-ALPN-01 on port 443 of
    /// the name, which must reach the boot or secrets listener.
    #[arg(long = "acme-domain", value_name = "NAME", value_parser = parse_domain, conflicts_with = "tls_cert")]
    pub domains: Vec<String>,
    /// Contact address given to the ACME CA (expiry warnings, policy changes).
    #[arg(long = "acme-email", value_name = "ADDRESS", requires = "domains")]
    pub email: Option<String>,
    /// Directory URL of the ACME CA.
    #[arg(long = "acme-directory", value_name = "URL", default_value = LETS_ENCRYPT_DIRECTORY)]
    pub directory: String,
    /// Trust this CA certificate (PEM) for the ACME directory's own HTTPS, e.g. a test CA.
    #[arg(long = "acme-directory-ca", value_name = "FILE", requires = "domains")]
    pub directory_ca: Option<PathBuf>,
    /// Seconds between checks of the certificate's remaining lifetime.
    #[arg(long = "acme-check-interval", default_value_t = 12 * 3600, value_parser = clap::value_parser!(u64).range(1..=86_400), hide = true)]
    pub check_interval: u64,
    /// Renew this many days before expiry instead of at a third of the lifetime.
    #[arg(long = "acme-renew-before-days", hide = true)]
    pub renew_before_days: Option<u32>,
}

impl AcmeArgs {
    pub fn enabled(&self) -> bool {
        !self.domains.is_empty()
    }
}

/// A DNS name an ACME CA can validate with TLS-ALPN-01: no IP address, no wildcard.
fn parse_domain(value: &str) -> Result<String, String> {
    let name = value.trim_end_matches('.').to_ascii_lowercase();
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if name.len() > 253
        || !name.contains('.')
        || !name.split('.').all(label_ok)
        || name.parse::<std::net::IpAddr>().is_ok()
    {
        return Err("a DNS name such as boot.example.org (no IP address, no wildcard)".into());
    }
    Ok(name)
}

#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("ACME: {0}")]
    Protocol(#[from] instant_acme::Error),
    #[error("ACME authorization for {domain} is {status:?}")]
    Authorization { domain: String, status: AuthorizationStatus },
    #[error("the ACME CA offers no tls-alpn-01 challenge for {0}")]
    NoTlsAlpnChallenge(String),
    #[error("ACME order ended {0:?}")]
    Order(OrderStatus),
    #[error("certificate: {0}")]
    Pki(#[from] ipxe_edge_pki::PkiError),
    #[error(transparent)]
    Tls(#[from] tls::TlsSetupError),
    #[error(transparent)]
    DataDir(#[from] datadir::DataDirError),
    #[error("account file: {0}")]
    Account(#[from] serde_json::Error),
}

/// The account as stored: which directory it belongs to, and its credentials.
#[derive(Serialize, Deserialize)]
struct StoredAccount {
    directory: String,
    credentials: AccountCredentials,
}

/// A certificate read back from `DIR/acme/server.pem`.
pub struct StoredCertificate {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub names: Vec<String>,
    pub not_before: i64,
    pub not_after: i64,
}

impl StoredCertificate {
    fn parse(pem: &[u8]) -> Option<Self> {
        let chain = tls::load_certs(pem, "ACME certificate").ok()?;
        let key = PrivateKeyDer::from_pem_slice(pem).ok()?;
        let (_, leaf) = X509Certificate::from_der(chain[0].as_ref()).ok()?;
        let names = leaf
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let (not_before, not_after) = (leaf.validity().not_before.timestamp(), leaf.validity().not_after.timestamp());
        Some(StoredCertificate { chain, key, names, not_before, not_after })
    }

    fn covers(&self, domains: &[String]) -> bool {
        domains.iter().all(|d| self.names.contains(d))
    }

    /// When to renew: a third of the lifetime before expiry, or `before_days` if given.
    fn renew_at(&self, before_days: Option<u32>) -> i64 {
        let margin = match before_days {
            Some(days) => i64::from(days) * 86_400,
            None => (self.not_after - self.not_before) / 3,
        };
        self.not_after - margin
    }
}

/// Obtains and renews the server certificate that `cert` presents.
pub struct AcmeManager {
    args: AcmeArgs,
    dir: PathBuf,
    cert: Arc<ServerCert>,
}

impl AcmeManager {
    pub fn new(args: AcmeArgs, data: &DataDir, cert: Arc<ServerCert>) -> Self {
        AcmeManager { args, dir: data.root().join("acme"), cert }
    }

    /// Where the certificate of each key type is kept: an RSA one for every client, an ECDSA
    /// one for those that speak it.
    fn certificate_path(&self, key_type: KeyType) -> PathBuf {
        match key_type {
            KeyType::Rsa2048 => self.dir.join("server.pem"),
            KeyType::EcdsaP256 => self.dir.join("server-ecdsa.pem"),
        }
    }

    fn account_path(&self) -> PathBuf {
        self.dir.join("account.json")
    }

    /// The stored certificate of `key_type`, if it is readable and names every domain asked for.
    pub fn stored(&self, key_type: KeyType) -> Option<StoredCertificate> {
        let pem = datadir::read_private(&self.certificate_path(key_type)).ok()?;
        StoredCertificate::parse(&pem).filter(|c| c.covers(&self.args.domains))
    }

    /// Presents the stored certificates now, if there are; `true` when both were.
    pub fn present_stored(&self) -> bool {
        let mut all = true;
        for key_type in KEY_TYPES {
            let Some(stored) = self.stored(key_type) else {
                all = false;
                continue;
            };
            if let Err(e) = self.cert.replace(stored.chain, stored.key) {
                tracing::warn!(error = %e, key = key_type.as_str(), "stored ACME certificate refused; ordering a new one");
                all = false;
            }
        }
        all
    }

    /// Checks every `check_interval` whether the certificate needs renewing, and renews it.
    pub async fn run(self) {
        let mut retry = FIRST_RETRY;
        loop {
            let now = ipxe_edge_core::domain::clock::unix_now() as i64;
            let mut failed = None;
            // Each key type that is due, in turn: RSA first, so every client has one soonest.
            for key_type in KEY_TYPES {
                let due = self.stored(key_type).map(|c| c.renew_at(self.args.renew_before_days) <= now).unwrap_or(true);
                if !due {
                    continue;
                }
                if let Err(e) = self.obtain(key_type).await {
                    self.cert.clear_challenges();
                    tracing::error!(error = %e, key = key_type.as_str(), retry_in_seconds = retry.as_secs(), domains = ?self.args.domains, "could not obtain a certificate over ACME; still presenting the current one");
                    failed = Some(e);
                    break;
                }
            }
            let wait = match failed {
                None => {
                    retry = FIRST_RETRY;
                    Duration::from_secs(self.args.check_interval)
                }
                Some(_) => {
                    let wait = retry;
                    retry = (retry * 2).min(LAST_RETRY);
                    wait
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    async fn account(&self) -> Result<Account, AcmeError> {
        let builder = || match &self.args.directory_ca {
            Some(ca) => Account::builder_with_root(ca),
            None => Account::builder(),
        };
        if let Ok(text) = datadir::read_private(&self.account_path()) {
            match serde_json::from_slice::<StoredAccount>(&text) {
                Ok(stored) if stored.directory == self.args.directory => {
                    return Ok(builder()?.from_credentials(stored.credentials).await?)
                }
                Ok(_) => {
                    tracing::info!(directory = %self.args.directory, "new ACME directory: creating an account there")
                }
                Err(e) => tracing::warn!(error = %e, "unreadable ACME account file: creating a new account"),
            }
        }
        let contact = self.args.email.as_ref().map(|e| format!("mailto:{e}"));
        let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
        let (account, credentials) = builder()?
            .create(
                &NewAccount { contact: &contacts, terms_of_service_agreed: true, only_return_existing: false },
                self.args.directory.clone(),
                None,
            )
            .await?;
        let stored = StoredAccount { directory: self.args.directory.clone(), credentials };
        datadir::write_atomic(&self.account_path(), &serde_json::to_vec(&stored)?, 0o600)?;
        tracing::info!(directory = %self.args.directory, account = account.id(), "ACME account created");
        Ok(account)
    }

    /// One order: TLS-ALPN-01 for each domain, a key of `key_type` and its CSR, the certificate
    /// stored and presented.
    async fn obtain(&self, key_type: KeyType) -> Result<(), AcmeError> {
        let account = self.account().await?;
        let identifiers: Vec<Identifier> = self.args.domains.iter().cloned().map(Identifier::Dns).collect();
        let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
        let mut authorizations = order.authorizations();
        while let Some(authorization) = authorizations.next().await {
            let mut authorization = authorization?;
            let status = authorization.status;
            match status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                _ => {
                    let domain = authorization.identifier().to_string();
                    return Err(AcmeError::Authorization { domain, status });
                }
            }
            let domain = authorization.identifier().to_string();
            let mut challenge = authorization
                .challenge(ChallengeType::TlsAlpn01)
                .ok_or_else(|| AcmeError::NoTlsAlpnChallenge(domain.clone()))?;
            let answer =
                ipxe_edge_pki::acme_challenge_certificate(&domain, challenge.key_authorization().digest().as_ref())?;
            self.cert.set_challenge(
                &domain,
                vec![CertificateDer::from(answer.cert_der)],
                tls::load_key(answer.key_pem.as_bytes(), "challenge key")?,
            )?;
            challenge.set_ready().await?;
        }
        let polling = RetryPolicy::new().initial_delay(Duration::from_millis(500)).timeout(Duration::from_secs(120));
        let status = order.poll_ready(&polling).await?;
        self.cert.clear_challenges();
        if status != OrderStatus::Ready {
            return Err(AcmeError::Order(status));
        }
        let request = ipxe_edge_pki::acme_signing_request_with(&self.args.domains, key_type)?;
        order.finalize_csr(&request.csr_der).await?;
        let chain_pem = order.poll_certificate(&polling).await?;
        let file = format!("{}{}", request.key_pem, chain_pem);
        let obtained = StoredCertificate::parse(file.as_bytes()).ok_or_else(|| {
            AcmeError::Tls(tls::TlsSetupError::Pem {
                what: "ACME certificate".into(),
                reason: "unreadable chain".into(),
            })
        })?;
        let (not_after, names) = (obtained.not_after, obtained.names.clone());
        self.cert.replace(obtained.chain, obtained.key)?;
        datadir::write_atomic(&self.certificate_path(key_type), file.as_bytes(), 0o600)?;
        let not_after = time::OffsetDateTime::from_unix_timestamp(not_after).map(|t| t.to_string()).unwrap_or_default();
        tracing::info!(names = ?names, not_after, key = key_type.as_str(), directory = %self.args.directory, "server certificate obtained over ACME");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domains_must_be_dns_names() {
        assert_eq!(parse_domain("Boot.Example.org.").unwrap(), "boot.example.org");
        for bad in [
            "",
            "localhost",
            "192.0.2.1",
            "*.example.org",
            "-a.example.org",
            "a..example.org",
            "a b.example.org",
            "é.example.org",
        ] {
            assert!(parse_domain(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn renewal_is_due_at_a_third_of_the_lifetime() {
        let cert = StoredCertificate {
            chain: vec![],
            key: PrivateKeyDer::Pkcs8(vec![].into()),
            names: vec!["a.example.org".into()],
            not_before: 0,
            not_after: 90 * 86_400,
        };
        assert_eq!(cert.renew_at(None), 60 * 86_400);
        assert_eq!(cert.renew_at(Some(10)), 80 * 86_400);
        assert!(cert.covers(&["a.example.org".into()]));
        assert!(!cert.covers(&["a.example.org".into(), "b.example.org".into()]));
    }
}
