//! `ipxe-edge release …`: immutable releases of kernels and initrds per architecture.

use super::context::{check_name, file_error, CliError, Context};
use ipxe_edge_core::domain::clock::rfc3339_now;
use ipxe_edge_core::domain::health::HealthGate;
use ipxe_edge_core::domain::model::{ArchAssets, ReleaseManifest, DEFAULT_ARCH};
use ipxe_edge_core::domain::query::{KNOWN_ARCHES, KNOWN_PLATFORMS};
use ipxe_edge_core::storage::records::RecordError;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum ReleaseCommand {
    /// Upload a kernel and initrd (content-addressed, skipped when already stored) and write
    /// the release manifest last, so an interrupted upload leaves no release.
    ///
    /// Repeat --arch/--kernel/--initrd for several architectures.
    ///
    /// Example: ipxe-edge release create 2026-11-26.1 --kernel vmlinuz --initrd initrd.img --cmdline "console=ttyS0 b2c.container=docker://x"
    Create {
        id: String,
        /// Architecture of each kernel/initrd pair (x86_64, arm64, …, optionally -efi/-pcbios).
        #[arg(long)]
        arch: Vec<String>,
        #[arg(long, required = true)]
        kernel: Vec<PathBuf>,
        #[arg(long, required = true)]
        initrd: Vec<PathBuf>,
        #[arg(long, default_value = "")]
        cmdline: String,
        /// Boot script template (iPXE syntax with ${kernel_url}, ${initrd_url}, ${secrets_url}, …).
        #[arg(long)]
        template: Option<PathBuf>,
        #[arg(long)]
        description: Option<String>,
        /// What a boot of this release must reach to count as good: reached_linux (its secrets
        /// were fetched) or checkin (its check-in URL was posted). Failed boots lead to the
        /// automatic fallback.
        #[arg(long, default_value = "reached_linux", value_parser = ["reached_linux", "checkin"])]
        health_gate: String,
    },
    /// Table of releases.
    ///
    /// Example: ipxe-edge release list
    List,
    /// A release's manifest.
    ///
    /// Example: ipxe-edge release show 2026-11-26.1
    Show { id: String },
}

pub async fn run(ctx: &Context, command: ReleaseCommand) -> Result<(), CliError> {
    match command {
        ReleaseCommand::Create { id, arch, kernel, initrd, cmdline, template, description, health_gate } => {
            if kernel.len() != initrd.len() || (!arch.is_empty() && arch.len() != kernel.len()) {
                return Err(CliError::Usage(
                    "give one --kernel and one --initrd (and one --arch, if any) per architecture".into(),
                ));
            }
            let arches: Vec<String> = if arch.is_empty() { vec![DEFAULT_ARCH.to_string(); kernel.len()] } else { arch };
            let template = match template {
                Some(path) => Some(std::fs::read_to_string(&path).map_err(file_error(&path))?),
                None => None,
            };
            let arches = arches.into_iter().zip(kernel).zip(initrd).map(|((a, k), i)| (a, k, i)).collect();
            let health_gate = if health_gate == "checkin" { HealthGate::Checkin } else { HealthGate::ReachedLinux };
            create(ctx, CreateRequest { id, arches, cmdline, template, description, health_gate }).await.map(|_| ())
        }
        ReleaseCommand::List => list(ctx).await,
        ReleaseCommand::Show { id } => show(ctx, &id).await,
    }
}

pub struct CreateRequest {
    pub id: String,
    /// `(arch, kernel, initrd)`, in command-line order.
    pub arches: Vec<(String, PathBuf, PathBuf)>,
    pub cmdline: String,
    /// Boot script template text.
    pub template: Option<String>,
    pub description: Option<String>,
    pub health_gate: HealthGate,
}

fn check_arch_key(arch: &str) -> Result<(), CliError> {
    if ipxe_edge_core::domain::query::valid_arch_key(arch) {
        Ok(())
    } else {
        Err(CliError::Usage(format!(
            "invalid architecture {arch:?}: one of {} (optionally -{})",
            KNOWN_ARCHES.join(", "),
            KNOWN_PLATFORMS.join("/-")
        )))
    }
}

/// Uploads the assets, then writes the manifest last: an interrupted upload leaves no release.
pub async fn create(ctx: &Context, request: CreateRequest) -> Result<ReleaseManifest, CliError> {
    check_name("release id", &request.id)?;
    if ctx.records.release_exists(&request.id).await? {
        return Err(CliError::Refused(format!(
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
                return Err(CliError::Usage(format!(
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
    };
    if request.arches.is_empty() {
        return Err(CliError::Usage("a release needs --kernel and --initrd".into()));
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
        draft.arches.insert(arch.clone(), ArchAssets { kernel: placeholder.clone(), initrd: placeholder });
    }
    draft.validate().map_err(|e| CliError::Usage(format!("release {}: {e}", request.id)))?;
    for (arch, kernel, initrd) in &request.arches {
        let kernel = super::upload::upload(ctx, kernel).await?;
        let initrd = super::upload::upload(ctx, initrd).await?;
        if manifest.arches.insert(arch.clone(), ArchAssets { kernel, initrd }).is_some() {
            return Err(CliError::Usage(format!("architecture {arch} is given twice")));
        }
    }
    match ctx.records.put_release(&manifest).await {
        Err(RecordError::ReleaseExists(id)) => {
            return Err(CliError::Refused(format!(
                "release {id} exists already (releases are immutable; pick a new id)"
            )))
        }
        other => other?,
    }
    println!("created release {} ({})", manifest.id, manifest.arches.keys().cloned().collect::<Vec<_>>().join(", "));
    Ok(manifest)
}

pub async fn list(ctx: &Context) -> Result<(), CliError> {
    println!("{:<32} {:<26} ARCHITECTURES", "RELEASE", "CREATED");
    for manifest in ctx.records.releases().await? {
        println!(
            "{:<32} {:<26} {}",
            manifest.id,
            manifest.created_at.as_deref().unwrap_or("-"),
            manifest.arches.keys().cloned().collect::<Vec<_>>().join(",")
        );
    }
    Ok(())
}

pub async fn show(ctx: &Context, id: &str) -> Result<(), CliError> {
    check_name("release id", id)?;
    let manifest = ctx
        .records
        .release(id)
        .await?
        .ok_or_else(|| CliError::Refused(format!("unknown release {id:?} (see: ipxe-edge release list)")))?;
    println!("{}", serde_json::to_string_pretty(&manifest).expect("manifest serialises"));
    Ok(())
}
