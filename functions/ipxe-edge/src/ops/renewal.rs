//! Gateway certificate renewal with the local CA: issue a new certificate, enroll it beside the
//! old one, and stage it as a pending renewal that the gateway fetches in band, once. Used by
//! `gateway renew` and by `serve --auto-renew`; the CA key never leaves the data directory.

use super::image::{autoexec_script, ipxe_private_key_der, ScriptOptions};
use super::OpError;
use crate::datadir::{write_atomic, DataDir};
use ipxe_edge_core::domain::identity::Fingerprint;
use ipxe_edge_core::domain::model::{newest, GatewayCertificate, GatewayRecord, GatewayState, PendingRenewal};
use ipxe_edge_core::storage::records::{RecordError, Records};
use ipxe_edge_pki::KeyType;
use ipxe_edge_pki::{validity_days, CertificateAuthority};
use std::time::Duration;

/// Default validity of a renewed certificate, as `gateway enroll`'s.
pub const DEFAULT_DAYS: u32 = 365;

/// How renewed certificates are made and what their `autoexec.ipxe` chains to.
#[derive(Clone, Debug)]
pub struct RenewOptions {
    pub boot_url: String,
    /// What the renewed `autoexec.ipxe` does besides carrying the new identity.
    pub script: ScriptOptions,
    pub days: u32,
    /// The new key's type; `None` keeps the type of the key the gateway holds now.
    pub key_type: Option<KeyType>,
    /// Replace a pending renewal the gateway has not fetched (otherwise it is left alone).
    pub replace: bool,
}

/// What one renewal staged.
#[derive(Debug)]
pub struct Renewed {
    pub gateway: String,
    pub renews: Fingerprint,
    pub fingerprint: Fingerprint,
    pub not_after: i64,
    /// A pending renewal that was never fetched and is now replaced (its certificate retired).
    pub replaced: Option<Fingerprint>,
}

/// A gateway's certificate standing: the certificate it holds (the newest one not waiting to
/// be fetched) and whether a renewal is pending.
#[derive(Debug, Clone)]
pub struct Standing {
    pub gateway: GatewayRecord,
    pub holds: GatewayCertificate,
    pub pending: bool,
}

impl Standing {
    pub fn days_left(&self, now: u64) -> Option<i64> {
        self.holds.days_left(now)
    }

    /// Whether the certificate it holds ends within `window` of `now` (unknown expiry: no).
    pub fn expires_within(&self, window: Duration, now: u64) -> bool {
        self.holds.not_after.is_some_and(|t| t - (now as i64) <= window.as_secs() as i64)
    }
}

/// Every enrolled gateway's standing, sorted by name.
pub async fn standings(records: &Records) -> Result<Vec<Standing>, RecordError> {
    let mut out = Vec::new();
    for gateway in records.gateways().await? {
        out.push(standing(records, gateway).await?);
    }
    Ok(out)
}

pub async fn standing(records: &Records, gateway: GatewayRecord) -> Result<Standing, RecordError> {
    let pending = records.renewal(&gateway.fingerprint).await?.map(|r| r.fingerprint);
    let held = gateway.certificates().into_iter().filter(|c| Some(&c.fingerprint) != pending.as_ref());
    let holds = newest(held).unwrap_or_else(|| gateway.newest_certificate());
    Ok(Standing { holds, pending: pending.is_some(), gateway })
}

/// Renews the certificate the gateway of `standing` holds: issues a new one with the local CA,
/// writes it and its key to the data directory (the pair there before kept, named by its own
/// fingerprint), enrolls it, then stages the pending renewal. A pending renewal that was never
/// fetched is refused, or with `replace` replaced and its certificate retired.
///
/// Renewals are serialized by the data directory's `renew` lock, and the gateway is read again
/// under it: of runs started together, one renews and the others find its renewal pending
/// (`Ok(None)`: nothing was done).
pub async fn renew(
    records: &Records,
    dir: &DataDir,
    ca: &CertificateAuthority,
    standing: &Standing,
    options: &RenewOptions,
    now: u64,
) -> Result<Option<Renewed>, OpError> {
    let _lock = dir.lock("renew").await?;
    let fresh = match records.gateway(&standing.gateway.fingerprint).await? {
        Some(gateway) => self::standing(records, gateway).await?,
        None => return Err(OpError::Refused(format!("gateway {} is no longer enrolled", standing.gateway.name))),
    };
    let standing = &fresh;
    let gateway = &standing.gateway;
    if standing.pending && !options.replace {
        return Ok(None);
    }
    if gateway.state == GatewayState::Revoked {
        return Err(OpError::Refused(format!("gateway {} is revoked; enroll a new certificate instead", gateway.name)));
    }
    let key_type = match options.key_type {
        Some(key_type) => key_type,
        None => held_key_type(dir, &gateway.name)?,
    };
    // ECDSA gateways get certificates signed by the ECDSA CA (what iPXE 2.0 needs).
    let ecdsa_ca;
    let ca = match key_type {
        KeyType::Rsa2048 => ca,
        KeyType::EcdsaP256 => {
            ecdsa_ca = super::ca::load_for(dir, key_type)?;
            &ecdsa_ca
        }
    };
    let issued = ca
        .issue_client_with(&gateway.name, validity_days(options.days), key_type)
        .map_err(|e| OpError::Pki(e.to_string()))?;
    let fingerprint = Fingerprint::of_der(&issued.cert_der);
    let not_after = ipxe_edge_core::domain::identity::not_after_der(&issued.cert_der)
        .ok_or_else(|| OpError::Pki("the issued certificate cannot be read back".into()))?;
    let (_, key_der) = ipxe_private_key_der(&issued.key_pem, &dir.gateway_key(&gateway.name))?;
    let autoexec = autoexec_script(&issued.cert_der, &key_der, &options.boot_url, &options.script);
    let replaced = match records.renewal(&gateway.fingerprint).await? {
        Some(previous) => Some(previous.fingerprint),
        None => None,
    };

    keep_files(dir, &gateway.name, &issued.cert_pem, &issued.key_pem)?;
    // Enrolled before it can be fetched: whatever the gateway does with it, it boots.
    let mut cert = GatewayCertificate::new(fingerprint.clone(), Some(not_after), Some(now));
    cert.renews = Some(standing.holds.fingerprint.clone());
    records.add_certificate(&gateway.fingerprint, cert).await?;
    let pending = PendingRenewal {
        fingerprint: fingerprint.clone(),
        renews: standing.holds.fingerprint.clone(),
        not_after,
        created_at: now,
        cert_pem: issued.cert_pem,
        key_pem: issued.key_pem,
        autoexec,
    };
    records.put_renewal(&gateway.fingerprint, &pending).await?;
    if let Some(old) = &replaced {
        match records.retire_certificate(&gateway.fingerprint, old).await {
            Ok(_) | Err(RecordError::UnknownCertificate { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Some(Renewed {
        gateway: gateway.name.clone(),
        renews: standing.holds.fingerprint.clone(),
        fingerprint,
        not_after,
        replaced,
    }))
}

/// Writes the new pair where `image build` finds it. The pair there before is kept beside it
/// as `NAME.<fingerprint>.crt/.key`, named by the certificate the file holds (not the one the
/// records say the gateway holds: after a replaced renewal they differ), and a kept pair is
/// never overwritten: the gateway may still boot with it.
/// The type of the key the gateway holds now (RSA when its key is not kept here).
fn held_key_type(dir: &DataDir, name: &str) -> Result<KeyType, OpError> {
    let path = dir.gateway_key(name);
    if !path.exists() {
        return Ok(KeyType::Rsa2048);
    }
    Ok(ipxe_private_key_der(&crate::datadir::read_private_string(&path)?, &path)?.0)
}

fn keep_files(dir: &DataDir, name: &str, cert_pem: &str, key_pem: &str) -> Result<(), OpError> {
    let (cert_path, key_path) = (dir.gateway_cert(name), dir.gateway_key(name));
    if cert_path.exists() {
        let current = crate::datadir::read(&cert_path)?;
        let fingerprint = ipxe_edge_core::domain::identity::pem_certificates(&current)
            .ok()
            .and_then(|certs| certs.into_iter().next())
            .map(|der| Fingerprint::of_der(&der).to_string())
            .ok_or_else(|| {
                OpError::Refused(format!("{} holds no certificate: move it aside, then renew", cert_path.display()))
            })?;
        for path in [&cert_path, &key_path] {
            let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("pem");
            let kept = path.with_file_name(format!("{name}.{fingerprint}.{ext}"));
            keep_once(path, &kept)?;
        }
    }
    write_atomic(&key_path, key_pem.as_bytes(), 0o600)?;
    write_atomic(&cert_path, cert_pem.as_bytes(), 0o600)?;
    Ok(())
}

/// Moves `path` to `kept` unless `kept` exists already (then `path` is a copy of it, written
/// from the same pair, and is removed). A link cannot replace a file: nothing kept is lost to
/// a race either.
fn keep_once(path: &std::path::Path, kept: &std::path::Path) -> Result<(), OpError> {
    if !path.exists() {
        return Ok(());
    }
    match std::fs::hard_link(path, kept) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            if std::fs::read(path).ok() != std::fs::read(kept).ok() {
                return Err(OpError::Refused(format!(
                    "{} exists and differs from {}: move one aside, then renew",
                    kept.display(),
                    path.display()
                )));
            }
        }
        Err(e) => return Err(super::file_error(kept)(e)),
    }
    std::fs::remove_file(path).map_err(super::file_error(path))
}

/// Days left as a table cell.
pub fn days_cell(days: Option<i64>) -> String {
    match days {
        Some(d) if d < 0 => "expired".into(),
        Some(d) => d.to_string(),
        None => "-".into(),
    }
}

/// `YYYY-MM-DD` of a unix time.
pub fn date(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t).map(|d| d.date().to_string()).unwrap_or_else(|_| "-".into())
}

/// Parses a window such as `60d`, `12h` or `3600` (seconds).
pub fn parse_window(text: &str) -> Result<Duration, String> {
    let (number, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = number.parse().map_err(|_| format!("{text:?} is not a duration like 60d, 12h or 3600"))?;
    let secs = match unit {
        "d" => n.checked_mul(86_400),
        "h" => n.checked_mul(3_600),
        "m" => n.checked_mul(60),
        "s" => Some(n),
        _ => None,
    }
    .filter(|s| *s <= 3650 * 86_400)
    .ok_or_else(|| format!("{text:?} is not a duration like 60d, 12h or 3600 (at most 3650d)"))?;
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_parse_with_units() {
        assert_eq!(parse_window("60d").unwrap(), Duration::from_secs(60 * 86_400));
        assert_eq!(parse_window("12h").unwrap(), Duration::from_secs(12 * 3_600));
        assert_eq!(parse_window("90").unwrap(), Duration::from_secs(90));
        for bad in ["", "d", "60x", "-1d", "99999d", "1.5d"] {
            assert!(parse_window(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn days_cells_say_expired() {
        assert_eq!(days_cell(Some(-1)), "expired");
        assert_eq!(days_cell(Some(29)), "29");
        assert_eq!(days_cell(None), "-");
        assert_eq!(date(0), "1970-01-01");
    }
}
