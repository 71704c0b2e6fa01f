//! Releases: immutable kernels and initrds per architecture, content-addressed in the store.

use super::upload::Progress;
use super::{check_name, file_error, Deployment, OpError};
use ipxe_edge_core::domain::clock::rfc3339_now;
use ipxe_edge_core::domain::journal::HealthGate;
use ipxe_edge_core::domain::model::{ArchAssets, KernelSignature, ReleaseManifest, SigningCertificate};
use ipxe_edge_core::domain::query::{KNOWN_ARCHES, KNOWN_PLATFORMS};
use ipxe_edge_core::storage::records::RecordError;
use ipxe_edge_pki::authenticode::{self, PeSignature};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// A release to create.
pub struct CreateRequest {
    pub id: String,
    /// `(arch, kernel, initrd)`, in command-line order.
    pub arches: Vec<(String, PathBuf, PathBuf)>,
    pub cmdline: String,
    /// Boot script template text.
    pub template: Option<String>,
    pub description: Option<String>,
    pub health_gate: HealthGate,
    /// `--no-verify-digests`: gateways are not given the script that checks image digests.
    pub skip_digest_check: bool,
}

fn check_arch_key(arch: &str) -> Result<(), OpError> {
    if ipxe_edge_core::domain::query::valid_arch_key(arch) {
        Ok(())
    } else {
        Err(OpError::Invalid(format!(
            "invalid architecture {arch:?}: one of {} (optionally -{})",
            KNOWN_ARCHES.join(", "),
            KNOWN_PLATFORMS.join("/-")
        )))
    }
}

/// Uploads the assets, then writes the manifest last: an interrupted upload leaves no release.
pub async fn create(
    ctx: &Deployment,
    request: CreateRequest,
    progress: &dyn Progress,
) -> Result<ReleaseManifest, OpError> {
    check_name("release id", &request.id)?;
    if ctx.records.release_exists(&request.id).await? {
        return Err(OpError::Refused(format!(
            "release {} exists already (releases are immutable; pick a new id)",
            request.id
        )));
    }
    // Check everything that can be checked before uploading anything.
    for (arch, kernel, initrd) in &request.arches {
        check_arch_key(arch)?;
        for path in [kernel, initrd] {
            let meta = std::fs::metadata(path).map_err(file_error(path))?;
            // An empty or truncated copy is the usual mistake; no gateway boots it.
            if !meta.is_file() || meta.len() == 0 {
                let what = if meta.is_file() { "is empty" } else { "is not a regular file" };
                return Err(OpError::Invalid(format!(
                    "{} {what}: a release needs a kernel and an initrd with content",
                    path.display()
                )));
            }
        }
    }
    let template = request.template.clone();
    let mut manifest = ReleaseManifest {
        id: request.id.clone(),
        cmdline: request.cmdline.clone(),
        template,
        arches: BTreeMap::new(),
        created_at: Some(rfc3339_now()),
        description: request.description.clone(),
        health_gate: request.health_gate,
        skip_digest_check: request.skip_digest_check,
    };
    if request.arches.is_empty() {
        return Err(OpError::Invalid("a release needs --kernel and --initrd".into()));
    }
    // The manifest's own rules (the ones every read checks too), before anything is uploaded:
    // placeholder assets stand in for the ones not uploaded yet.
    let mut draft = manifest.clone();
    for (arch, _, _) in &request.arches {
        let placeholder = ipxe_edge_core::domain::model::Asset {
            key: ipxe_edge_core::storage::keys::asset(&"0".repeat(64)),
            sha256: "0".repeat(64),
            size: 0,
        };
        draft.arches.insert(
            arch.clone(),
            ArchAssets { kernel: placeholder.clone(), initrd: placeholder, kernel_signature: None },
        );
    }
    draft.validate().map_err(|e| OpError::Invalid(format!("release {}: {e}", request.id)))?;
    for (arch, kernel_path, initrd) in &request.arches {
        let kernel = super::upload::upload(ctx, kernel_path, progress).await?;
        let initrd = super::upload::upload(ctx, initrd, progress).await?;
        let kernel_signature = Some(kernel_signature(&std::fs::read(kernel_path).map_err(file_error(kernel_path))?));
        if manifest.arches.insert(arch.clone(), ArchAssets { kernel, initrd, kernel_signature }).is_some() {
            return Err(OpError::Invalid(format!("architecture {arch} is given twice")));
        }
    }
    match ctx.records.put_release(&manifest).await {
        Err(RecordError::ReleaseExists(id)) => {
            return Err(OpError::Refused(format!(
                "release {id} exists already (releases are immutable; pick a new id)"
            )))
        }
        other => other?,
    }
    Ok(manifest)
}

/// What a kernel's Authenticode certificate table holds, each signature checked.
pub fn kernel_signature(kernel: &[u8]) -> KernelSignature {
    match authenticode::examine(kernel) {
        PeSignature::NotPe(reason) => KernelSignature::NotPe { reason },
        PeSignature::Unsigned => KernelSignature::Unsigned,
        PeSignature::Invalid(reason) => KernelSignature::Invalid { reason },
        PeSignature::Signed(signers) => {
            KernelSignature::Signed { signers: signers.iter().map(signing_certificate).collect() }
        }
    }
}

pub fn signing_certificate(signer: &authenticode::Signer) -> SigningCertificate {
    use base64::Engine;
    SigningCertificate {
        subject: signer.subject.clone(),
        issuer: signer.issuer.clone(),
        sha256: signer.sha256.clone(),
        der: base64::engine::general_purpose::STANDARD.encode(&signer.der),
    }
}

/// Refuses a release whose kernels, for some architecture, are not signed by `required` (that
/// certificate or one it issued); the error names the release, the architecture and what the
/// kernel carries.
pub fn check_signed_by(manifest: &ReleaseManifest, required: &SigningCertificate) -> Result<(), String> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let required_der = b64.decode(&required.der).unwrap_or_default();
    for (arch, assets) in &manifest.arches {
        let release = &manifest.id;
        let found = match &assets.kernel_signature {
            None => "was created before kernel signatures were recorded (create it again)".to_string(),
            Some(KernelSignature::NotPe { reason }) => format!("is not a PE image ({reason})"),
            Some(KernelSignature::Unsigned) => "is unsigned".to_string(),
            Some(KernelSignature::Invalid { reason }) => format!("has a signature that does not hold: {reason}"),
            Some(KernelSignature::Signed { signers }) => {
                if signers
                    .iter()
                    .any(|s| b64.decode(&s.der).is_ok_and(|der| authenticode::issued_by(&der, &required_der)))
                {
                    continue;
                }
                let names: Vec<_> = signers.iter().map(|s| s.to_string()).collect();
                format!("is signed by {}", names.join(", "))
            }
        };
        return Err(format!("release {release}'s {arch} kernel {found}, not by {required}"));
    }
    Ok(())
}
