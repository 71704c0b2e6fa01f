//! `ipxe-edge release …`: immutable releases of kernels and initrds per architecture.

use super::context::{file_error, now_rfc3339, CliError, Context};
use ipxe_edge_core::boot::read_json;
use ipxe_edge_core::model::{layout, valid_name, ArchAssets, ReleaseManifest};
use ipxe_edge_core::publish;
use ipxe_edge_core::query::{KNOWN_ARCHES, KNOWN_PLATFORMS};
use std::collections::BTreeMap;
use std::path::PathBuf;

pub struct CreateRequest {
    pub id: String,
    /// `(arch, kernel, initrd)`, in command-line order.
    pub arches: Vec<(String, PathBuf, PathBuf)>,
    pub cmdline: String,
    /// Boot script template text.
    pub template: Option<String>,
    pub description: Option<String>,
}

fn check_arch_key(arch: &str) -> Result<(), CliError> {
    if ipxe_edge_core::query::valid_arch_key(arch) {
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
    if !valid_name(&request.id) {
        return Err(CliError::Usage(format!("invalid release id {:?}: use 1-64 characters of [A-Za-z0-9._-]", request.id)));
    }
    if ctx.store.exists(&layout::release(&request.id)).await? {
        return Err(CliError::Usage(format!("release {} exists already (releases are immutable; pick a new id)", request.id)));
    }
    // Check everything that can be checked before uploading anything.
    for (arch, kernel, initrd) in &request.arches {
        check_arch_key(arch)?;
        for path in [kernel, initrd] {
            std::fs::metadata(path).map_err(file_error(path))?;
        }
    }
    let template = request.template.clone();
    let mut manifest = ReleaseManifest {
        id: request.id.clone(),
        cmdline: request.cmdline.clone(),
        template,
        arches: BTreeMap::new(),
        created_at: Some(now_rfc3339()),
        description: request.description.clone(),
    };
    let bad = |e: ipxe_edge_core::render::RenderError| CliError::Usage(format!("release {}: {e}", request.id));
    ipxe_edge_core::render::check_fragment("cmdline", &manifest.cmdline).map_err(bad)?;
    if let Some(template) = &manifest.template {
        ipxe_edge_core::render::check_template(template).map_err(bad)?;
    }
    if request.arches.is_empty() {
        return Err(CliError::Usage("a release needs --kernel and --initrd".into()));
    }
    for (arch, kernel, initrd) in &request.arches {
        let kernel = super::upload::upload(ctx, kernel).await?;
        let initrd = super::upload::upload(ctx, initrd).await?;
        if manifest.arches.insert(arch.clone(), ArchAssets { kernel, initrd }).is_some() {
            return Err(CliError::Usage(format!("architecture {arch} is given twice")));
        }
    }
    publish::put_release(ctx.store.as_ref(), &manifest).await?;
    println!("created release {} ({})", manifest.id, manifest.arches.keys().cloned().collect::<Vec<_>>().join(", "));
    Ok(manifest)
}

pub async fn list(ctx: &Context) -> Result<(), CliError> {
    println!("{:<32} {:<26} {}", "RELEASE", "CREATED", "ARCHITECTURES");
    for key in ctx.store.list("releases/").await? {
        if let Some(manifest) = read_json::<ReleaseManifest>(ctx.store.as_ref(), &key).await? {
            println!(
                "{:<32} {:<26} {}",
                manifest.id,
                manifest.created_at.as_deref().unwrap_or("-"),
                manifest.arches.keys().cloned().collect::<Vec<_>>().join(",")
            );
        }
    }
    Ok(())
}

pub async fn show(ctx: &Context, id: &str) -> Result<(), CliError> {
    let manifest: ReleaseManifest = read_json(ctx.store.as_ref(), &layout::release(id))
        .await?
        .ok_or_else(|| CliError::Usage(format!("unknown release {id:?} (see: ipxe-edge release list)")))?;
    println!("{}", serde_json::to_string_pretty(&manifest).expect("manifest serialises"));
    Ok(())
}
