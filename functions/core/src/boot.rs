//! Deciding what a verified gateway boots, and writing its boot script.

use crate::identity::{ClientIdentity, Fingerprint};
use crate::model::{layout, Channel, GatewayRecord, GatewayState, ReleaseManifest};
use crate::query::BootQuery;
use crate::render::{self, RenderError, Vars, DEFAULT_TEMPLATE};
use crate::store::{ObjectStore, Presigner, StoreError};
use crate::token::{Keyring, TokenId};
use serde::de::DeserializeOwned;
use std::sync::Arc;
use std::time::Duration;

/// Variables every template can use; a gateway's own variables cannot override them.
pub const RESERVED_VARS: &[&str] =
    &["kernel_url", "initrd_url", "secrets_url", "secrets_arg", "cmdline", "gateway", "fingerprint", "release", "arch", "platform"];

#[derive(Clone, Debug)]
pub struct BootSettings {
    /// Lifetime of the presigned kernel and initrd URLs.
    pub presign_ttl: Duration,
    /// Lifetime of the one-time secrets token.
    pub token_ttl: Duration,
    /// Where the redeem endpoint lives, without a trailing slash (`https://secrets.example.org`).
    pub secrets_base_url: String,
}

impl Default for BootSettings {
    fn default() -> Self {
        BootSettings {
            presign_ttl: Duration::from_secs(300),
            token_ttl: Duration::from_secs(120),
            secrets_base_url: "https://secrets.invalid".into(),
        }
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
    #[error("record {key} is invalid: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("boot script cannot be rendered: {0}")]
    Render(#[from] RenderError),
    #[error(transparent)]
    Storage(#[from] StoreError),
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
    store: Arc<dyn ObjectStore>,
    presigner: Arc<dyn Presigner>,
    keyring: Arc<Keyring>,
    settings: BootSettings,
}

impl BootService {
    pub fn new(store: Arc<dyn ObjectStore>, presigner: Arc<dyn Presigner>, keyring: Arc<Keyring>, settings: BootSettings) -> Self {
        BootService { store, presigner, keyring, settings }
    }

    /// The gateway record for a fingerprint, or `None` when it is not enrolled.
    pub async fn gateway(&self, fp: &Fingerprint) -> Result<Option<GatewayRecord>, BootError> {
        let key = layout::gateway(fp);
        let record: Option<GatewayRecord> = read_json(self.store.as_ref(), &key).await?;
        if let Some(record) = &record {
            if &record.fingerprint != fp {
                return Err(BootError::Corrupt { key, reason: "fingerprint does not match its key".into() });
            }
        }
        Ok(record)
    }

    /// The release a gateway boots now: its pin, else its channel's release.
    pub async fn resolve_release(&self, gateway: &GatewayRecord) -> Result<ReleaseManifest, BootError> {
        let release_id = match &gateway.pinned_release {
            Some(pin) => pin.clone(),
            None => {
                let channel: Channel = read_json(self.store.as_ref(), &layout::channel(gateway.channel()))
                    .await?
                    .ok_or_else(|| BootError::ChannelMissing { gateway: gateway.name.clone(), channel: gateway.channel().to_string() })?;
                channel.release
            }
        };
        let key = layout::release(&release_id);
        let manifest: ReleaseManifest = read_json(self.store.as_ref(), &key).await?.ok_or(BootError::ReleaseMissing(release_id.clone()))?;
        if manifest.id != release_id {
            return Err(BootError::Corrupt { key, reason: format!("manifest id {} differs from {release_id}", manifest.id) });
        }
        Ok(manifest)
    }

    /// The boot script for a verified client, as of `now` (unix seconds).
    pub async fn boot(&self, client: &ClientIdentity, query: &BootQuery, now: u64) -> Result<BootScript, BootError> {
        let fp = &client.fingerprint;
        let gateway = self.gateway(fp).await?.ok_or(BootError::UnknownGateway)?;
        match gateway.state {
            GatewayState::Enabled => {}
            GatewayState::Disabled => return Err(BootError::Disabled(gateway.name)),
            GatewayState::Revoked => return Err(BootError::Revoked(gateway.name)),
        }
        let secrets_key = layout::secrets(fp);
        // Listing the gateway's prefix tells whether secrets exist without the right to read
        // them: the boot function never needs read access to any secret.
        let gateway_prefix = format!("gateways/{fp}/");
        let (manifest, has_secrets) = tokio::try_join!(self.resolve_release(&gateway), async {
            let keys = self.store.list(&gateway_prefix).await?;
            Ok::<_, BootError>(keys.iter().any(|k| *k == secrets_key))
        })?;
        let arch = query.arch();
        let assets = manifest
            .assets_for(arch, query.platform)
            .ok_or_else(|| BootError::NoAssetsForArch { release: manifest.id.clone(), arch: arch.to_string() })?;

        let (kernel_url, initrd_url) = tokio::try_join!(
            self.presigner.presign_get(&assets.kernel.key, self.settings.presign_ttl),
            self.presigner.presign_get(&assets.initrd.key, self.settings.presign_ttl),
        )?;

        let template = manifest.template.as_deref().unwrap_or(DEFAULT_TEMPLATE);
        render::check_template(template)?;
        render::check_fragment("cmdline", &manifest.cmdline)?;
        // The command line is part of the template: it may use our variables and iPXE's.
        let template = template.replacen("${cmdline}", &manifest.cmdline, 1);
        let wants_secrets = template.contains("${secrets_url}");

        let mut vars = Vars::new();
        for (name, value) in &gateway.vars {
            if !RESERVED_VARS.contains(&name.as_str()) {
                vars.set(name, value.as_str())?;
            }
        }
        vars.set("kernel_url", kernel_url)?;
        vars.set("initrd_url", initrd_url)?;
        vars.set("gateway", gateway.name.as_str())?;
        vars.set("fingerprint", fp.as_str())?;
        vars.set("release", manifest.id.as_str())?;
        vars.set("arch", arch)?;
        vars.set("platform", query.platform.unwrap_or("unknown"))?;

        let mut token_id = None;
        if has_secrets {
            let expires_at = now + self.settings.token_ttl.as_secs();
            let (id, token) = self.keyring.mint(fp, &secrets_key, expires_at);
            let url = format!("{}/secrets/{token}", self.settings.secrets_base_url.trim_end_matches('/'));
            vars.set("secrets_arg", if wants_secrets { String::new() } else { format!(" b2c.extra_args_url=\"{url}\"") })?;
            vars.set("secrets_url", url)?;
            token_id = Some(id);
        } else if wants_secrets {
            return Err(BootError::SecretsMissing(manifest.id));
        } else {
            vars.set("secrets_arg", "")?;
        }

        let script = render::render(&template, &vars)?;
        Ok(BootScript { script, gateway: gateway.name, release: manifest.id, arch, token_id })
    }
}

/// Reads and parses a JSON record; `None` when it does not exist.
pub async fn read_json<T: DeserializeOwned>(store: &dyn ObjectStore, key: &str) -> Result<Option<T>, BootError> {
    match store.get(key).await? {
        None => Ok(None),
        Some(object) => serde_json::from_slice(&object.body)
            .map(Some)
            .map_err(|e| BootError::Corrupt { key: key.to_string(), reason: e.to_string() }),
    }
}
