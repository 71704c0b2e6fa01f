//! The records kept in the bucket and the rules every one of them must follow.
//!
//! Every record is one JSON object, so changing what a gateway boots is one object write (a
//! channel or a gateway record). Assets are immutable and content-addressed, releases are
//! immutable once written. Where each record lives is [`crate::storage::keys`]' business.
//!
//! Each record type has a `validate` method: the same rules apply to a name an operator types
//! and to a name read back from the bucket, so a hand-edited record cannot smuggle `../x` into
//! an object key.

use crate::domain::identity::Fingerprint;
use crate::domain::journal::HealthGate;
use crate::domain::{query, render};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Channel a gateway follows when its record names none.
pub const DEFAULT_CHANNEL: &str = "stable";
/// Architecture booted when the client does not say (`buildarch` missing).
pub const DEFAULT_ARCH: &str = "x86_64";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum GatewayState {
    #[default]
    Enabled,
    /// Temporarily refused (maintenance); can be enabled again.
    Disabled,
    /// Refused for good: the certificate is considered compromised.
    Revoked,
}

/// One enrolled gateway, keyed by its certificate fingerprint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayRecord {
    pub name: String,
    pub fingerprint: Fingerprint,
    /// Channel followed when no release is pinned; [`DEFAULT_CHANNEL`] when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    /// A release that overrides the channel (canaries, holds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinned_release: Option<String>,
    /// Extra template variables for this gateway's boot script.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vars: BTreeMap<String, String>,
    #[serde(default)]
    pub state: GatewayState,
    /// The gateway's architecture, so that promotions and pins can check a release serves it;
    /// [`DEFAULT_ARCH`] when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    /// Certificate subject at enrollment, for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// The certificates this gateway boots with. Empty on records written before renewals
    /// existed: then the one accepted certificate is `fingerprint`, expiry unknown.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<GatewayCertificate>,
    /// Whether secrets are stored for the gateway (set with them), so that a boot need not list
    /// the gateway's objects to know. Absent on records written before: a listing decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub has_secrets: Option<bool>,
}

/// One certificate a gateway may boot with. During a renewal the gateway holds two: the one
/// in its image and the renewed one it has been handed, until the old one is retired.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayCertificate {
    pub fingerprint: Fingerprint,
    /// End of validity (unix seconds), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<i64>,
    /// When it was enrolled (unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub added_at: Option<u64>,
    /// The certificate this one renews.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renews: Option<Fingerprint>,
    /// The first boot with it (set when the older certificates are retired on that boot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_boot_at: Option<u64>,
}

impl GatewayCertificate {
    pub fn new(fingerprint: Fingerprint, not_after: Option<i64>, added_at: Option<u64>) -> Self {
        GatewayCertificate { fingerprint, not_after, added_at, renews: None, first_boot_at: None }
    }

    /// Whole days of validity left at `now` (negative once expired), when the expiry is known.
    pub fn days_left(&self, now: u64) -> Option<i64> {
        self.not_after.map(|t| days_until(t, now))
    }
}

/// The certificate valid longest (latest added among equals), if any.
pub fn newest(certs: impl IntoIterator<Item = GatewayCertificate>) -> Option<GatewayCertificate> {
    certs.into_iter().max_by_key(|c| (c.not_after.unwrap_or(i64::MIN), c.added_at.unwrap_or(0)))
}

/// Whole days from `now` until `not_after`, rounded down (negative once past).
pub fn days_until(not_after: i64, now: u64) -> i64 {
    (not_after - now as i64).div_euclid(86_400)
}

/// Where a renewed certificate's fingerprint points: the record of the gateway it belongs to,
/// stored at `gateways/<new fingerprint>/alias.json` so a boot finds its gateway in one read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateAlias {
    /// The fingerprint the gateway's record is kept under.
    pub gateway: Fingerprint,
}

/// A renewed certificate and key waiting for the gateway to fetch them in band, once. Only the
/// redeem side reads it, like secrets: it holds a private key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PendingRenewal {
    /// The renewed certificate (enrolled before this record is written).
    pub fingerprint: Fingerprint,
    /// The certificate it renews.
    pub renews: Fingerprint,
    pub not_after: i64,
    pub created_at: u64,
    pub cert_pem: String,
    pub key_pem: String,
    /// The gateway's new `autoexec.ipxe` (what `image script` prints), holding the new identity.
    pub autoexec: String,
}

impl std::fmt::Debug for PendingRenewal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingRenewal")
            .field("fingerprint", &self.fingerprint)
            .field("renews", &self.renews)
            .finish_non_exhaustive()
    }
}

impl PendingRenewal {
    pub fn validate(&self) -> Result<(), String> {
        if !self.autoexec.starts_with("#!ipxe") {
            return Err("autoexec is not an iPXE script".into());
        }
        if !self.cert_pem.contains("BEGIN CERTIFICATE") || !self.key_pem.contains("PRIVATE KEY") {
            return Err("certificate or key is not PEM".into());
        }
        Ok(())
    }
}

impl GatewayRecord {
    /// Checks every name the record holds; the error says which field is wrong.
    pub fn validate(&self) -> Result<(), String> {
        check_name("name", &self.name)?;
        if let Some(channel) = &self.channel {
            check_name("channel", channel)?;
        }
        if let Some(release) = &self.pinned_release {
            check_name("pinned_release", release)?;
        }
        if let Some(arch) = &self.arch {
            if !query::KNOWN_ARCHES.contains(&arch.as_str()) {
                return Err(format!("arch {arch:?} is not one of {}", query::KNOWN_ARCHES.join(", ")));
            }
        }
        for name in self.vars.keys() {
            if !render::valid_var_name(name) {
                return Err(format!("variable name {name:?} is invalid"));
            }
        }
        for (i, cert) in self.certificates.iter().enumerate() {
            if self.certificates[..i].iter().any(|c| c.fingerprint == cert.fingerprint) {
                return Err(format!("certificate {} is listed twice", cert.fingerprint));
            }
        }
        Ok(())
    }

    /// The certificates the gateway boots with (the record's own fingerprint for older records).
    pub fn certificates(&self) -> Vec<GatewayCertificate> {
        if self.certificates.is_empty() {
            vec![GatewayCertificate::new(self.fingerprint.clone(), None, None)]
        } else {
            self.certificates.clone()
        }
    }

    /// The accepted certificate with this fingerprint; `None` once it is retired.
    pub fn certificate(&self, fp: &Fingerprint) -> Option<GatewayCertificate> {
        self.certificates().into_iter().find(|c| &c.fingerprint == fp)
    }

    /// The certificate a renewal replaces: the one valid longest (the newest).
    pub fn newest_certificate(&self) -> GatewayCertificate {
        newest(self.certificates()).expect("at least one certificate")
    }

    pub fn channel(&self) -> &str {
        self.channel.as_deref().unwrap_or(DEFAULT_CHANNEL)
    }

    pub fn arch(&self) -> &str {
        self.arch.as_deref().unwrap_or(DEFAULT_ARCH)
    }
}

/// An immutable, content-addressed boot asset.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Asset {
    pub key: String,
    pub sha256: String,
    pub size: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchAssets {
    pub kernel: Asset,
    pub initrd: Asset,
    /// What the kernel's Authenticode certificate table held when the release was created;
    /// absent in releases made before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_signature: Option<KernelSignature>,
}

/// A kernel's Authenticode signatures, each checked against the kernel's bytes: what UEFI
/// firmware checks before it starts the kernel under Secure Boot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case", deny_unknown_fields)]
pub enum KernelSignature {
    /// Not a PE image (no EFI stub): firmware never starts it under Secure Boot.
    NotPe {
        reason: String,
    },
    Unsigned,
    /// Every signature holds; at least one signer.
    Signed {
        signers: Vec<SigningCertificate>,
    },
    /// A signature is there but does not hold (the kernel changed after signing).
    Invalid {
        reason: String,
    },
}

/// A certificate that signs boot binaries: an image's signer, or what a channel requires its
/// kernels to be signed by (that certificate itself, or one it issued).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigningCertificate {
    pub subject: String,
    pub issuer: String,
    /// SHA-256 of the certificate's DER, lowercase hex.
    pub sha256: String,
    /// The certificate's DER, base64.
    pub der: String,
}

impl std::fmt::Display for SigningCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (sha256 {})", self.subject, &self.sha256[..self.sha256.len().min(16)])
    }
}

/// What a release boots, per architecture. Keys of `arches` are an architecture (`x86_64`,
/// `arm64`, …) or an architecture and platform (`x86_64-efi`), the more specific one winning.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseManifest {
    pub id: String,
    #[serde(default)]
    pub cmdline: String,
    /// Boot script template; [`crate::domain::render::DEFAULT_TEMPLATE`] when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    pub arches: BTreeMap<String, ArchAssets>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// What a boot of this release must reach to count as good (automatic fallback).
    #[serde(default, skip_serializing_if = "HealthGate::is_default")]
    pub health_gate: HealthGate,
    /// Leave out the digest check of the default script on gateways whose iPXE could do it
    /// (`release create --no-verify-digests`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skip_digest_check: bool,
}

impl ReleaseManifest {
    /// Whether gateways that can check image digests are given the script that does.
    pub fn verifies_digests(&self) -> bool {
        !self.skip_digest_check
    }

    /// Checks a manifest, before it is written and whenever it is read: its id, architectures,
    /// template, command line and asset keys.
    pub fn validate(&self) -> Result<(), String> {
        check_name("id", &self.id)?;
        if self.arches.is_empty() {
            return Err("it has no architecture".into());
        }
        for (arch, assets) in &self.arches {
            if !query::valid_arch_key(arch) {
                return Err(format!("unknown architecture {arch:?}"));
            }
            for asset in [&assets.kernel, &assets.initrd] {
                if !valid_sha256_hex(&asset.sha256) || asset.key != format!("{ASSET_PREFIX}{}", asset.sha256) {
                    return Err(format!("asset {:?} of {arch} is not a content-addressed key", asset.key));
                }
            }
        }
        if let Some(template) = &self.template {
            render::check_template(template).map_err(|e| e.to_string())?;
        }
        render::check_fragment("cmdline", &self.cmdline).map_err(|e| e.to_string())?;
        Ok(())
    }

    /// The assets for an architecture, preferring an entry specific to the platform.
    pub fn assets_for(&self, arch: &str, platform: Option<&str>) -> Option<&ArchAssets> {
        platform.and_then(|p| self.arches.get(&format!("{arch}-{p}"))).or_else(|| self.arches.get(arch))
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelEntry {
    pub release: String,
    pub at: String,
}

/// A named pointer to a release, with the releases it pointed to before (newest last).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Channel {
    pub name: String,
    pub release: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<ChannelEntry>,
    /// Consecutive failed boots of this channel's release after which a gateway boots its last
    /// known good release (0: never); the server's setting when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback_after: Option<u32>,
    /// Every release this channel points at must have kernels signed by this certificate (or
    /// one it issued): an unsigned release cannot reach a Secure Boot farm by mistake.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub require_signed: Option<SigningCertificate>,
}

impl Channel {
    pub fn validate(&self) -> Result<(), String> {
        check_name("name", &self.name)?;
        check_name("release", &self.release)?;
        for entry in &self.history {
            check_name("history release", &entry.release)?;
        }
        Ok(())
    }
}

/// Where content-addressed assets live: `assets/sha256/<hex>`.
pub const ASSET_PREFIX: &str = "assets/sha256/";

fn valid_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn check_name(field: &str, value: &str) -> Result<(), String> {
    if valid_name(value) {
        Ok(())
    } else {
        Err(format!("{field} {value:?} is not a valid name (1-64 characters of [A-Za-z0-9._-])"))
    }
}

/// Names of releases, channels and gateways: short, printable, safe in object keys and scripts.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && !name.starts_with('-')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// A gateway record for tests and enrollment.
pub fn new_gateway(name: &str, fingerprint: Fingerprint) -> GatewayRecord {
    GatewayRecord {
        name: name.to_string(),
        fingerprint,
        channel: None,
        pinned_release: None,
        vars: BTreeMap::new(),
        state: GatewayState::Enabled,
        arch: None,
        subject: None,
        certificates: Vec::new(),
        has_secrets: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_refuse_path_tricks() {
        for bad in ["", "..", ".hidden", "a/b", "a b", "a\nb", "-x", &"x".repeat(65), "ré"] {
            assert!(!valid_name(bad), "{bad:?} accepted");
        }
        for good in ["r1", "2026-11-26.1", "stable", "demo_gw"] {
            assert!(valid_name(good), "{good:?} refused");
        }
    }

    #[test]
    fn records_naming_path_tricks_are_invalid() {
        let mut gw = new_gateway("gw", Fingerprint::of_der(b"x"));
        assert!(gw.validate().is_ok());
        gw.pinned_release = Some("../x".into());
        assert!(gw.validate().unwrap_err().contains("pinned_release"));
        gw.pinned_release = None;
        gw.channel = Some("../x".into());
        assert!(gw.validate().unwrap_err().contains("channel"));
        let ch = Channel {
            name: "stable".into(),
            release: "../x".into(),
            history: vec![],
            fallback_after: None,
            require_signed: None,
        };
        assert!(ch.validate().unwrap_err().contains("release"));
        let ch = Channel {
            name: "stable".into(),
            release: "r1".into(),
            history: vec![ChannelEntry { release: "a/b".into(), at: String::new() }],
            fallback_after: None,
            require_signed: None,
        };
        assert!(ch.validate().is_err());
    }

    #[test]
    fn platform_specific_assets_win() {
        let asset = |k: &str| Asset { key: k.into(), sha256: "00".repeat(32), size: 1 };
        let mut arches = BTreeMap::new();
        arches.insert(
            "x86_64".into(),
            ArchAssets { kernel: asset("generic"), initrd: asset("i"), kernel_signature: None },
        );
        arches.insert(
            "x86_64-efi".into(),
            ArchAssets { kernel: asset("efi"), initrd: asset("i"), kernel_signature: None },
        );
        let m = ReleaseManifest {
            id: "r".into(),
            cmdline: String::new(),
            template: None,
            arches,
            created_at: None,
            description: None,
            health_gate: Default::default(),
            skip_digest_check: false,
        };
        assert_eq!(m.assets_for("x86_64", Some("efi")).unwrap().kernel.key, "efi");
        assert_eq!(m.assets_for("x86_64", Some("pcbios")).unwrap().kernel.key, "generic");
        assert_eq!(m.assets_for("x86_64", None).unwrap().kernel.key, "generic");
        assert!(m.assets_for("arm64", None).is_none());
    }

    #[test]
    fn gateway_record_rejects_unknown_fields_and_bad_fingerprints() {
        let ok = format!(r#"{{"name":"gw","fingerprint":"{}"}}"#, "AB".repeat(32));
        let rec: GatewayRecord = serde_json::from_str(&ok).unwrap();
        assert_eq!(rec.fingerprint.as_str(), "ab".repeat(32));
        assert_eq!(rec.channel(), DEFAULT_CHANNEL);
        assert_eq!(rec.state, GatewayState::Enabled);
        assert!(serde_json::from_str::<GatewayRecord>(r#"{"name":"gw","fingerprint":"zz"}"#).is_err());
        let extra = format!(r#"{{"name":"gw","fingerprint":"{}","admin":true}}"#, "ab".repeat(32));
        assert!(serde_json::from_str::<GatewayRecord>(&extra).is_err());
    }
}
