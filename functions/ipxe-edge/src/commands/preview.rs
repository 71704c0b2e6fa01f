//! `ipxe-edge preview NAME`: the boot script a gateway would receive now, rendered by the boot
//! function's own code, with URLs and the token redacted.

use crate::ops::{Deployment, OpError};
use async_trait::async_trait;
use ipxe_edge_core::domain::clock;
use ipxe_edge_core::domain::identity::ClientIdentity;
use ipxe_edge_core::domain::query::BootQuery;
use ipxe_edge_core::domain::token::{Keyring, SECRETS_PREFIX};
use ipxe_edge_core::service::boot::{BootService, BootSettings};
use ipxe_edge_core::storage::{Presigner, StoreError};
use std::sync::Arc;
use std::time::Duration;

/// Shows which object a URL would open, not a usable URL.
struct RedactingPresigner;

#[async_trait]
impl Presigner for RedactingPresigner {
    async fn presign_get(&self, key: &str, ttl: Duration) -> Result<String, StoreError> {
        Ok(format!("<presigned-url:{key}:valid-{}s>", ttl.as_secs()))
    }
}

/// The boot script gateway NAME would receive now, URLs and token redacted.
///
/// Example: ipxe-edge preview gw-berlin-1
#[derive(clap::Args)]
pub struct PreviewArgs {
    name: String,
    /// Architecture to render for [default: the gateway's].
    #[arg(long)]
    arch: Option<String>,
    /// Platform (pcbios or efi).
    #[arg(long)]
    platform: Option<String>,
}

pub async fn run(ctx: &Deployment, args: PreviewArgs) -> Result<(), OpError> {
    print!("{}", preview(ctx, &args.name, args.arch.as_deref(), args.platform.as_deref()).await?);
    Ok(())
}

pub async fn preview(
    ctx: &Deployment,
    name: &str,
    arch: Option<&str>,
    platform: Option<&str>,
) -> Result<String, OpError> {
    let record = ctx.gateway(name).await?;
    let arch = arch.unwrap_or(record.arch());
    let pairs = std::iter::once(("buildarch", arch)).chain(platform.map(|p| ("platform", p)));
    let query = BootQuery::from_pairs(pairs).map_err(|e| OpError::Invalid(e.to_string()))?;
    // A throwaway key: the token in a preview must never be redeemable.
    let keyring = Arc::new(Keyring::parse(&Keyring::generate_entry("preview")).expect("generated keyring parses"));
    let service = BootService::new(
        ctx.records.clone(),
        Arc::new(RedactingPresigner),
        keyring,
        BootSettings::new("https://secrets-endpoint"),
    );
    let identity = ClientIdentity {
        fingerprint: record.fingerprint.clone(),
        subject: String::new(),
        issuer: String::new(),
        not_after: 0,
    };
    let script = service
        .boot(&identity, &query, clock::unix_now())
        .await
        .map_err(|e| OpError::Refused(format!("gateway {name} cannot boot: {e}")))?;
    Ok(redact_tokens(&script.script))
}

/// Replaces every secrets token with a marker.
pub fn redact_tokens(script: &str) -> String {
    let mut out = String::with_capacity(script.len());
    let mut rest = script;
    while let Some(i) = rest.find(SECRETS_PREFIX) {
        out.push_str(&rest[..i + SECRETS_PREFIX.len()]);
        rest = &rest[i + SECRETS_PREFIX.len()..];
        let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_')).unwrap_or(rest.len());
        out.push_str("<one-time-token>");
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}
