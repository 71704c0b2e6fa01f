//! `ipxe-edge release …`: immutable releases of kernels and initrds per architecture.

use super::progress::TerminalProgress;
use crate::ops::release::{self, CreateRequest};
use crate::ops::{check_name, file_error, Deployment, OpError};
use ipxe_edge_core::domain::journal::HealthGate;
use ipxe_edge_core::domain::model::DEFAULT_ARCH;
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
        /// Do not give gateways on iPXE 2.0 or newer the default script that checks each image's
        /// SHA-256 before booting it (custom templates are served as written either way).
        #[arg(long)]
        no_verify_digests: bool,
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

pub async fn run(ctx: &Deployment, command: ReleaseCommand) -> Result<(), OpError> {
    match command {
        ReleaseCommand::Create {
            id,
            arch,
            kernel,
            initrd,
            cmdline,
            template,
            description,
            health_gate,
            no_verify_digests,
        } => {
            if kernel.len() != initrd.len() || (!arch.is_empty() && arch.len() != kernel.len()) {
                return Err(OpError::Invalid(
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
            let skip_digest_check = no_verify_digests;
            let request = CreateRequest { id, arches, cmdline, template, description, health_gate, skip_digest_check };
            let manifest = release::create(ctx, request, &TerminalProgress::default()).await?;
            let arches: Vec<&str> = manifest.arches.keys().map(String::as_str).collect();
            println!("created release {} ({})", manifest.id, arches.join(", "));
            Ok(())
        }
        ReleaseCommand::List => list(ctx).await,
        ReleaseCommand::Show { id } => show(ctx, &id).await,
    }
}

pub async fn list(ctx: &Deployment) -> Result<(), OpError> {
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

pub async fn show(ctx: &Deployment, id: &str) -> Result<(), OpError> {
    check_name("release id", id)?;
    let manifest = ctx
        .records
        .release(id)
        .await?
        .ok_or_else(|| OpError::Refused(format!("unknown release {id:?} (see: ipxe-edge release list)")))?;
    println!("{}", serde_json::to_string_pretty(&manifest).expect("manifest serialises"));
    Ok(())
}
