//! First start: everything a working local deployment needs, created once and reused after.

use super::ServeError;
use crate::datadir::{self, write_atomic, DataDir, DataDirError};
use crate::embedded::s3_endpoint::S3Credentials;
use ipxe_edge_core::domain::clock::rfc3339_now;
use ipxe_edge_core::domain::identity::Fingerprint;
use ipxe_edge_core::domain::model::{self, ArchAssets, ReleaseManifest};
use ipxe_edge_core::domain::token::Keyring;
use ipxe_edge_core::storage::keys;
use ipxe_edge_core::storage::records::{RecordError, Records};
use ipxe_edge_core::storage::WriteCondition;
use ipxe_edge_pki::KeyType;
use ipxe_edge_pki::{validity_days, CertificateAuthority};
use std::collections::BTreeMap;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

pub const DEMO_GATEWAY: &str = "demo";
pub const DEMO_RELEASE: &str = "demo-placeholder";
/// The default template appends ` b2c.extra_args_url="<one-time URL>"` for gateways with secrets.
pub const DEMO_CMDLINE: &str = "console=ttyS0 ipxe-edge.demo=placeholder-assets";
const SERVER_CERT_DAYS: u32 = 365;
const DEMO_CERT_DAYS: u32 = 365;

/// What this start created, to tell the operator.
#[derive(Default)]
pub struct Outcome {
    pub created: Vec<String>,
}

/// The embedded S3 endpoint's credentials, created on first use.
pub fn s3_credentials(dir: &DataDir) -> Result<S3Credentials, ServeError> {
    let path = dir.s3_credentials();
    if !path.exists() {
        let creds = S3Credentials::generate("IPXEEDGE");
        let text = format!("{}:{}\n", creds.access_key, creds.secret_key);
        write_atomic(&path, text.as_bytes(), 0o600)?;
    }
    let text = datadir::read_private_string(&path)?;
    let (access_key, secret_key) = text
        .trim()
        .split_once(':')
        .ok_or_else(|| DataDirError::Corrupt { path: path.clone(), reason: "expected ACCESS_KEY:SECRET_KEY".into() })?;
    Ok(S3Credentials { access_key: access_key.into(), secret_key: secret_key.into() })
}

fn corrupt(path: &std::path::Path, reason: impl ToString) -> ServeError {
    DataDirError::Corrupt { path: path.to_path_buf(), reason: reason.to_string() }.into()
}

/// The deployment CA: loaded, or created when the data directory has none.
pub fn load_or_create_ca(dir: &DataDir, outcome: &mut Outcome) -> Result<CertificateAuthority, ServeError> {
    let ca = if !dir.ca_cert().exists() && !dir.ca_key().exists() {
        let ca = crate::ops::ca::create(dir, crate::ops::ca::CA_DAYS)?;
        outcome.created.push(format!("CA certificate {}", dir.ca_cert().display()));
        ca
    } else {
        crate::ops::ca::load(dir)?
    };
    Ok(ca)
}

/// Whether a server certificate names every host and stays valid for a week.
fn server_cert_fits(pem: &[u8], hosts: &[String]) -> bool {
    let Ok(ders) = ipxe_edge_core::domain::identity::pem_certificates(pem) else { return false };
    let Some(Ok((_, cert))) = ders.first().map(|d| X509Certificate::from_der(d)) else { return false };
    let week = time::OffsetDateTime::now_utc().unix_timestamp() + 7 * 86_400;
    if cert.validity().not_after.timestamp() < week {
        return false;
    }
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => names.push(d.to_string()),
                GeneralName::IPAddress(ip) => match ip.len() {
                    4 => names.push(std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*ip).unwrap()).to_string()),
                    16 => names.push(std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*ip).unwrap()).to_string()),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    hosts.iter().all(|h| names.iter().any(|n| n.eq_ignore_ascii_case(h)))
}

pub async fn ensure(dir: &DataDir, records: &Records, public_host: &str) -> Result<Outcome, ServeError> {
    let mut outcome = Outcome::default();
    let ca = load_or_create_ca(dir, &mut outcome)?;

    let mut hosts = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    if !hosts.iter().any(|h| h == public_host) {
        hosts.push(public_host.trim_matches(|c| c == '[' || c == ']').to_string());
    }
    for (cert, key, key_type) in [
        (dir.server_cert(), dir.server_key(), KeyType::Rsa2048),
        (dir.server_ecdsa_cert(), dir.server_ecdsa_key(), KeyType::EcdsaP256),
    ] {
        let fits = cert.exists() && key.exists() && server_cert_fits(&datadir::read(&cert)?, &hosts);
        if !fits {
            let server = ca
                .issue_server_with(&hosts, SERVER_CERT_DAYS, key_type)
                .map_err(|e| ServeError::Bootstrap(e.to_string()))?;
            write_atomic(&key, server.key_pem.as_bytes(), 0o600)?;
            write_atomic(&cert, server.cert_pem.as_bytes(), 0o600)?;
            outcome.created.push(format!(
                "server certificate {} ({}) for {}",
                cert.display(),
                key_type.as_str(),
                hosts.join(", ")
            ));
        }
    }

    if !dir.token_keys().exists() {
        write_atomic(&dir.token_keys(), format!("{}\n", Keyring::generate_entry("k1")).as_bytes(), 0o600)?;
        outcome.created.push(format!("token HMAC key {}", dir.token_keys().display()));
    }

    let storage = |e: ipxe_edge_core::storage::StoreError| ServeError::Bootstrap(e.to_string());
    let record_err = |e: RecordError| ServeError::Bootstrap(e.to_string());
    let store = records.store();
    if !store.exists(keys::TRUST_BUNDLE).await.map_err(storage)? {
        store.put(keys::TRUST_BUNDLE, ca.cert_pem().into_bytes(), WriteCondition::Absent).await.map_err(storage)?;
        outcome.created.push(format!("trust bundle object {}", keys::TRUST_BUNDLE));
    }
    // The ECDSA CA signs ECDSA gateway certificates; it is trusted from the first start on.
    if crate::ops::ca::ensure_ecdsa(dir, records, crate::ops::ca::CA_DAYS).await? {
        outcome.created.push(format!("ECDSA CA certificate {}", dir.ca_ecdsa_cert().display()));
    }

    if records.channel(model::DEFAULT_CHANNEL).await.map_err(record_err)?.is_none() {
        if !records.release_exists(DEMO_RELEASE).await.map_err(record_err)? {
            let kernel = records
                .put_asset(
                    b"ipxe-edge PLACEHOLDER kernel: replace it with a real one (ipxe-edge release create)\n".to_vec(),
                )
                .await
                .map_err(record_err)?;
            let initrd = records
                .put_asset(
                    b"ipxe-edge PLACEHOLDER initrd: replace it with a real one (ipxe-edge release create)\n".to_vec(),
                )
                .await
                .map_err(record_err)?;
            let mut arches = BTreeMap::new();
            arches.insert(model::DEFAULT_ARCH.to_string(), ArchAssets { kernel, initrd, kernel_signature: None });
            let manifest = ReleaseManifest {
                id: DEMO_RELEASE.into(),
                cmdline: DEMO_CMDLINE.into(),
                template: None,
                arches,
                created_at: Some(rfc3339_now()),
                description: Some(
                    "PLACEHOLDER ASSETS: a demo release that cannot boot; publish a real kernel and initrd".into(),
                ),
                health_gate: Default::default(),
                skip_digest_check: false,
            };
            records.put_release(&manifest).await.map_err(record_err)?;
        }
        records
            .promote(model::DEFAULT_CHANNEL, DEMO_RELEASE, &rfc3339_now(), &Default::default())
            .await
            .map_err(record_err)?;
        outcome
            .created
            .push(format!("demo release {DEMO_RELEASE} (placeholder assets) on channel {}", model::DEFAULT_CHANNEL));
    }

    let (demo_cert, demo_key) = (dir.gateway_cert(DEMO_GATEWAY), dir.gateway_key(DEMO_GATEWAY));
    if !demo_cert.exists() {
        let issued = ca
            .issue_client(DEMO_GATEWAY, validity_days(DEMO_CERT_DAYS))
            .map_err(|e| ServeError::Bootstrap(e.to_string()))?;
        write_atomic(&demo_key, issued.key_pem.as_bytes(), 0o600)?;
        write_atomic(&demo_cert, issued.cert_pem.as_bytes(), 0o600)?;
        outcome.created.push(format!("gateway {DEMO_GATEWAY}: {} and {}", demo_cert.display(), demo_key.display()));
    }
    let demo_pem = datadir::read(&demo_cert)?;
    let demo_der =
        ipxe_edge_core::domain::identity::pem_certificates(&demo_pem).map_err(|e| corrupt(&demo_cert, e))?.remove(0);
    let fp = Fingerprint::of_der(&demo_der);
    if records.gateway(&fp).await.map_err(record_err)?.is_none() {
        let mut record = model::new_gateway(DEMO_GATEWAY, fp.clone());
        record.subject = ipxe_edge_core::domain::identity::describe_der(&demo_der).map(|(s, _)| s);
        // Its expiry is known like any enrolled gateway's: the metrics and renewals count it.
        let not_after = ipxe_edge_core::domain::identity::not_after_der(&demo_der);
        record.certificates = vec![model::GatewayCertificate::new(
            fp.clone(),
            not_after,
            Some(ipxe_edge_core::domain::clock::unix_now()),
        )];
        records.put_gateway(&record).await.map_err(record_err)?;
        records
            .put_secrets(
                &fp,
                b"b2c.minio=\"demo,http://127.0.0.1:9,DEMOKEY,DEMOSECRET\" ipxe-edge.demo-secret=1\n".to_vec(),
            )
            .await
            .map_err(record_err)?;
        outcome.created.push(format!("enrolled gateway {DEMO_GATEWAY} ({fp}) with demo secrets"));
    }
    Ok(outcome)
}

/// Tells the operator what happened and how to try it.
pub fn announce(dir: &DataDir, outcome: &Outcome, boot_url: &str, public_host: &str) {
    if outcome.created.is_empty() {
        println!("ipxe-edge: reusing {}", dir.root().display());
    } else {
        println!("ipxe-edge: bootstrapped {}:", dir.root().display());
        for line in &outcome.created {
            println!("  - created {line}");
        }
    }
    println!("ipxe-edge: boot URL {boot_url} (public host {public_host})");
    println!("ipxe-edge: try it:");
    println!(
        "  curl --cert {} --key {} --cacert {} '{boot_url}?buildarch=x86_64'",
        dir.gateway_cert(DEMO_GATEWAY).display(),
        dir.gateway_key(DEMO_GATEWAY).display(),
        dir.ca_cert().display()
    );
}
