//! Deciding what a verified gateway boots, and writing its boot script.

use crate::domain::identity::{ClientIdentity, DEFAULT_CLOCK_SKEW};
use crate::domain::model::{GatewayRecord, GatewayState, ReleaseManifest};
use crate::domain::query::BootQuery;
use crate::domain::render::{self, RenderError, Vars, DEFAULT_TEMPLATE};
use crate::domain::token::{Keyring, MintError, TokenId};
use crate::storage::keys;
use crate::storage::records::{RecordError, Records};
use crate::storage::{Presigner, StoreError};
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Duration;

/// Variables every template can use; a gateway's own variables cannot override them.
pub const RESERVED_VARS: &[&str] =
    &["kernel_url", "initrd_url", "secrets_url", "secrets_arg", "cmdline", "gateway", "fingerprint", "release", "arch", "platform"];

/// How boots are answered. Filled from the environment by the Lambda function and from flags
/// by `ipxe-edge serve`: one type, one set of defaults and limits.
#[derive(Clone, Debug)]
pub struct BootSettings {
    /// Lifetime of the presigned kernel and initrd URLs.
    pub presign_ttl: Duration,
    /// Lifetime of the one-time secrets token.
    pub token_ttl: Duration,
    /// Tolerance on certificate validity dates, for gateways whose clock is off.
    pub clock_skew: Duration,
    /// Where the redeem endpoint lives, without a trailing slash (`https://secrets.example.org`).
    pub secrets_base_url: String,
}

impl BootSettings {
    pub const DEFAULT_PRESIGN_TTL_SECS: u64 = 300;
    pub const DEFAULT_TOKEN_TTL_SECS: u64 = 120;
    pub const PRESIGN_TTL_RANGE: RangeInclusive<u64> = 10..=3600;
    pub const TOKEN_TTL_RANGE: RangeInclusive<u64> = 10..=3600;
    pub const CLOCK_SKEW_RANGE: RangeInclusive<u64> = 0..=3600;

    /// The defaults, with the one value that has none.
    pub fn new(secrets_base_url: impl Into<String>) -> Self {
        BootSettings {
            presign_ttl: Duration::from_secs(Self::DEFAULT_PRESIGN_TTL_SECS),
            token_ttl: Duration::from_secs(Self::DEFAULT_TOKEN_TTL_SECS),
            clock_skew: DEFAULT_CLOCK_SKEW,
            secrets_base_url: secrets_base_url.into(),
        }
    }

    /// Whether a secrets base URL can be written into kernel command lines.
    pub fn valid_secrets_base_url(url: &str) -> bool {
        (url.starts_with("https://") || url.starts_with("http://")) && !url.chars().any(|c| c.is_whitespace() || c.is_control() || c == '"' || c == '$')
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("no gateway is enrolled with this certificate")]
    UnknownGateway,
    #[error("gateway {0} is revoked")]
    Revoked(String),
    #[error("gateway {0} is disabled")]
    Disabled(String),
    #[error("channel {channel} of gateway {gateway} does not exist")]
    ChannelMissing { gateway: String, channel: String },
    #[error("release {0} does not exist")]
    ReleaseMissing(String),
    #[error("release {release} has no assets for architecture {arch}")]
    NoAssetsForArch { release: String, arch: String },
    #[error("the boot script of release {0} uses ${{secrets_url}} but the gateway has no secrets")]
    SecretsMissing(String),
    #[error("boot script cannot be rendered: {0}")]
    Render(#[from] RenderError),
    #[error("secrets token: {0}")]
    Mint(#[from] MintError),
    #[error(transparent)]
    Record(#[from] RecordError),
}

impl From<StoreError> for BootError {
    fn from(e: StoreError) -> Self {
        BootError::Record(e.into())
    }
}

/// A rendered boot script and what it was made of, for logs.
#[derive(Debug, Clone)]
pub struct BootScript {
    pub script: String,
    pub gateway: String,
    pub release: String,
    pub arch: &'static str,
    pub token_id: Option<TokenId>,
}

pub struct BootService {
    records: Records,
    presigner: Arc<dyn Presigner>,
    keyring: Arc<Keyring>,
    settings: BootSettings,
}

impl BootService {
    pub fn new(records: Records, presigner: Arc<dyn Presigner>, keyring: Arc<Keyring>, settings: BootSettings) -> Self {
        BootService { records, presigner, keyring, settings }
    }

    pub fn settings(&self) -> &BootSettings {
        &self.settings
    }

    /// The release a gateway boots now: its pin, else its channel's release.
    pub async fn resolve_release(&self, gateway: &GatewayRecord) -> Result<ReleaseManifest, BootError> {
        let release_id = match &gateway.pinned_release {
            Some(pin) => pin.clone(),
            None => {
                let channel = self
                    .records
                    .channel(gateway.channel())
                    .await?
                    .ok_or_else(|| BootError::ChannelMissing { gateway: gateway.name.clone(), channel: gateway.channel().to_string() })?;
                channel.release
            }
        };
        self.records.release(&release_id).await?.ok_or(BootError::ReleaseMissing(release_id))
    }

    /// The boot script for a verified client, as of `now` (unix seconds).
    pub async fn boot(&self, client: &ClientIdentity, query: &BootQuery, now: u64) -> Result<BootScript, BootError> {
        let fp = &client.fingerprint;
        let gateway = self.records.gateway(fp).await?.ok_or(BootError::UnknownGateway)?;
        match gateway.state {
            GatewayState::Enabled => {}
            GatewayState::Disabled => return Err(BootError::Disabled(gateway.name)),
            GatewayState::Revoked => return Err(BootError::Revoked(gateway.name)),
        }
        let secrets_key = keys::secrets(fp);
        let (manifest, has_secrets) = tokio::try_join!(self.resolve_release(&gateway), async { Ok::<_, BootError>(self.records.has_secrets(fp).await?) })?;
        let arch = query.arch();
        let assets =
            manifest.assets_for(arch, query.platform).ok_or_else(|| BootError::NoAssetsForArch { release: manifest.id.clone(), arch: arch.to_string() })?;

        let (kernel_url, initrd_url) = tokio::try_join!(
            self.presigner.presign_get(&assets.kernel.key, self.settings.presign_ttl),
            self.presigner.presign_get(&assets.initrd.key, self.settings.presign_ttl),
        )?;

        // The records layer validated the template and command line when it read the manifest.
        let template = manifest.template.as_deref().unwrap_or(DEFAULT_TEMPLATE);
        // The command line is part of the template: it may use our variables and iPXE's.
        let template = template.replacen("${cmdline}", &manifest.cmdline, 1);
        let wants_secrets = template.contains("${secrets_url}");

        let mut vars = Vars::new();
        for (name, value) in &gateway.vars {
            if !RESERVED_VARS.contains(&name.as_str()) {
                vars.set(name, value.as_str())?;
            }
        }
        vars.set_own("kernel_url", kernel_url)?;
        vars.set_own("initrd_url", initrd_url)?;
        vars.set_own("gateway", gateway.name.as_str())?;
        vars.set_own("fingerprint", fp.as_str())?;
        vars.set_own("release", manifest.id.as_str())?;
        vars.set_own("arch", arch)?;
        vars.set_own("platform", query.platform.unwrap_or("unknown"))?;

        let mut token_id = None;
        if has_secrets {
            let expires_at = now + self.settings.token_ttl.as_secs();
            let (id, token) = self.keyring.mint(fp, &secrets_key, expires_at)?;
            let url = format!("{}/secrets/{token}", self.settings.secrets_base_url.trim_end_matches('/'));
            vars.set_own("secrets_arg", if wants_secrets { String::new() } else { format!(" b2c.extra_args_url=\"{url}\"") })?;
            vars.set_own("secrets_url", url)?;
            token_id = Some(id);
        } else if wants_secrets {
            return Err(BootError::SecretsMissing(manifest.id));
        } else {
            vars.set_own("secrets_arg", "")?;
        }

        let script = render::render(&template, &vars)?;
        Ok(BootScript { script, gateway: gateway.name, release: manifest.id, arch, token_id })
    }
}
