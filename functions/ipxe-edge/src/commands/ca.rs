//! `ipxe-edge ca …`: the deployment CA and the trust bundle client certificates must chain to.

use crate::datadir::write_atomic;
use crate::ops::ca::{self, CA_DAYS};
use crate::ops::{Deployment, OpError};
use ipxe_edge_core::domain::identity::pem_certificates;
use ipxe_edge_core::storage::keys;
use std::path::{Path, PathBuf};

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

pub async fn run(ctx: &Deployment, command: CaCommand) -> Result<(), OpError> {
    match command {
        CaCommand::Init { days } => init(ctx, days).await,
        CaCommand::Truststore { out } => truststore(ctx, out.as_deref()).await,
        CaCommand::Trust { file } => trust(ctx, &file).await,
    }
}

pub async fn init(ctx: &Deployment, days: u32) -> Result<(), OpError> {
    ca::init(ctx, days).await?;
    println!("created CA {} (key {}, mode 0600)", ctx.dir.ca_cert().display(), ctx.dir.ca_key().display());
    println!("trust bundle updated: {}", keys::TRUST_BUNDLE);
    Ok(())
}

pub async fn truststore(ctx: &Deployment, out: Option<&Path>) -> Result<(), OpError> {
    let pem = ca::bundle_pem(ctx).await?;
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

pub async fn trust(ctx: &Deployment, file: &Path) -> Result<(), OpError> {
    let added = ca::trust(ctx, file).await?;
    println!("trusted {added} new CA certificate(s) from {}; upload the bundle as the API Gateway truststore: ipxe-edge ca truststore", file.display());
    Ok(())
}
