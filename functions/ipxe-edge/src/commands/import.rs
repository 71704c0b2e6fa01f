//! `ipxe-edge import valve-infra`: migrates a farm from the reference deployment in one command.

use super::progress::TerminalProgress;
use crate::ops::import;
use crate::ops::{Deployment, OpError};
use std::path::PathBuf;

#[derive(clap::Subcommand)]
pub enum ImportCommand {
    /// Migrate a valve-infra ipxe-boot-server farm (dry run unless --apply).
    ///
    /// Example: ipxe-edge import valve-infra --files /srv/ipxe --certs ./certs --ca ./ca_cert/ca.crt --apply
    ValveInfra {
        /// Its data root (holding files/<sha1>/…) or the files folder itself.
        #[arg(long)]
        files: PathBuf,
        /// Folder of ci-gateway-NAME.iso.crt certificates.
        #[arg(long)]
        certs: PathBuf,
        /// Its CA certificate (ca_cert/ca.crt).
        #[arg(long)]
        ca: PathBuf,
        #[arg(long)]
        apply: bool,
    },
}

pub async fn run(ctx: &Deployment, command: ImportCommand) -> Result<(), OpError> {
    let ImportCommand::ValveInfra { files, certs, ca, apply } = command;
    let plan = import::plan(&files, &certs, &ca)?;
    println!(
        "{} import of {} gateway(s) from {}",
        if apply { "applying" } else { "dry run:" },
        plan.planned.len(),
        plan.root.display()
    );
    for p in &plan.planned {
        println!(
            "  {:<20} {}  release valve-{}  template {}  secrets {}",
            p.name,
            &p.fingerprint.as_str()[..16],
            p.name,
            if p.template.is_some() { "converted" } else { "default" },
            match (p.has_secrets, p.scratch) {
                (true, true) => "yes, ${s3_*} mapped to per-boot scratch keys",
                (true, false) => "yes",
                _ => "no",
            }
        );
    }
    for problem in &plan.problems {
        println!("  not mapped: {problem}");
    }
    if !apply {
        println!("nothing written; run again with --apply");
        return Ok(());
    }
    for gateway in import::apply(ctx, plan, &TerminalProgress::default()).await? {
        println!("imported {} ({}) pinned to {}", gateway.name, gateway.fingerprint, gateway.release);
    }
    Ok(())
}
