//! Deciding what a verified gateway boots, and writing its boot script.

use crate::domain::health::{BootPlan, BootReason, BootRecord, Choice, Outcome};
use crate::domain::identity::{ClientIdentity, Fingerprint, DEFAULT_CLOCK_SKEW};
use crate::domain::model::{days_until, GatewayRecord, GatewayState, ReleaseManifest};
use crate::domain::query::BootQuery;
use crate::domain::render::{self, RenderError, Vars, DEFAULT_TEMPLATE};
use crate::domain::token::{Keyring, MintError, TokenId};
use crate::storage::keys;
use crate::storage::records::{RecordError, Records};
use crate::storage::{BootJournal, Presigner, StoreError, StoredHealth, HEALTH_UPDATE_ATTEMPTS};
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Duration;

/// Variables every template can use; a gateway's own variables cannot override them.
pub const RESERVED_VARS: &[&str] =
    &["kernel_url", "initrd_url", "secrets_url", "secrets_arg", "checkin_url", "cmdline", "gateway", "fingerprint", "release", "arch", "platform"];

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
    /// Check-in URLs live there too.
    pub secrets_base_url: String,
    /// Consecutive failed boots of a gateway's target after which it boots its last known good
    /// release (0: never). A channel may set its own.
    pub fallback_after: u32,
    /// Time a boot has to reach its health gate; also the lifetime of its check-in URL.
    pub health_deadline: Duration,
    /// A gateway booting with a certificate that expires within this window is logged
    /// (`cert_expiring`) and counted, and is due for renewal.
    pub renewal_window: Duration,
    /// On the first boot with a renewed certificate, retire the gateway's other certificates.
    pub retire_old_after_first_boot: bool,
}

impl BootSettings {
    pub const DEFAULT_PRESIGN_TTL_SECS: u64 = 300;
    pub const DEFAULT_TOKEN_TTL_SECS: u64 = 120;
    pub const PRESIGN_TTL_RANGE: RangeInclusive<u64> = 10..=3600;
    pub const TOKEN_TTL_RANGE: RangeInclusive<u64> = 10..=3600;
    pub const CLOCK_SKEW_RANGE: RangeInclusive<u64> = 0..=3600;
    pub const DEFAULT_FALLBACK_AFTER: u32 = 2;
    pub const FALLBACK_AFTER_RANGE: RangeInclusive<u64> = 0..=100;
    pub const DEFAULT_HEALTH_DEADLINE_SECS: u64 = 600;
    pub const HEALTH_DEADLINE_RANGE: RangeInclusive<u64> = 10..=86_400;
    pub const DEFAULT_RENEWAL_WINDOW_DAYS: u64 = 60;
    pub const RENEWAL_WINDOW_DAYS_RANGE: RangeInclusive<u64> = 1..=3650;

    /// The defaults, with the one value that has none.
    pub fn new(secrets_base_url: impl Into<String>) -> Self {
        BootSettings {
            presign_ttl: Duration::from_secs(Self::DEFAULT_PRESIGN_TTL_SECS),
            token_ttl: Duration::from_secs(Self::DEFAULT_TOKEN_TTL_SECS),
            clock_skew: DEFAULT_CLOCK_SKEW,
            secrets_base_url: secrets_base_url.into(),
            fallback_after: Self::DEFAULT_FALLBACK_AFTER,
            health_deadline: Duration::from_secs(Self::DEFAULT_HEALTH_DEADLINE_SECS),
            renewal_window: Duration::from_secs(Self::DEFAULT_RENEWAL_WINDOW_DAYS * 86_400),
            retire_old_after_first_boot: false,
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
    /// Why this release: pin, channel or fallback.
    pub reason: BootReason,
    /// What the gateway is meant to boot (differs from `release` on a fallback).
    pub target: String,
    /// Consecutive failed boots of the target before this one.
    pub failures: u32,
    /// Why the boot could not be recorded, when it could not (the script is served anyway).
    pub journal_error: Option<String>,
    /// Why a planned fallback was not served.
    pub fallback_refused: Option<String>,
    /// The certificate the gateway presented, and what its dates say.
    pub cert: CertificateUse,
}

/// The client certificate a boot used: which one, how long it has left, whether it is the
/// first boot with a renewed one.
#[derive(Debug, Clone)]
pub struct CertificateUse {
    pub fingerprint: Fingerprint,
    pub days_left: i64,
    /// It expires within the renewal window.
    pub expiring: bool,
    /// The gateway's first boot with this renewed certificate: the certificate it renews.
    pub renewed_from: Option<Fingerprint>,
    /// Certificates retired on this boot (`retire_old_after_first_boot`).
    pub retired: Vec<Fingerprint>,
    /// Why the older certificates could not be retired (the boot is served anyway).
    pub retire_error: Option<String>,
}

/// The release a gateway is meant to boot, and the fallback threshold that applies to it.
#[derive(Debug, Clone)]
pub struct Target {
    pub manifest: ReleaseManifest,
    pub reason: BootReason,
    pub fallback_after: u32,
}

pub struct BootService {
    records: Records,
    presigner: Arc<dyn Presigner>,
    keyring: Arc<Keyring>,
    settings: BootSettings,
    journal: Option<Arc<dyn BootJournal>>,
}

impl BootService {
    pub fn new(records: Records, presigner: Arc<dyn Presigner>, keyring: Arc<Keyring>, settings: BootSettings) -> Self {
        BootService { records, presigner, keyring, settings, journal: None }
    }

    /// Records every boot and falls back on failures (without a journal, neither happens).
    pub fn with_journal(mut self, journal: Arc<dyn BootJournal>) -> Self {
        self.journal = Some(journal);
        self
    }

    pub fn settings(&self) -> &BootSettings {
        &self.settings
    }

    /// The release a gateway is meant to boot now: its pin, else its channel's release.
    pub async fn resolve_target(&self, gateway: &GatewayRecord) -> Result<Target, BootError> {
        let (release_id, reason, fallback_after) = match &gateway.pinned_release {
            Some(pin) => (pin.clone(), BootReason::Pin, self.settings.fallback_after),
            None => {
                let channel = self
                    .records
                    .channel(gateway.channel())
                    .await?
                    .ok_or_else(|| BootError::ChannelMissing { gateway: gateway.name.clone(), channel: gateway.channel().to_string() })?;
                (channel.release, BootReason::Channel, channel.fallback_after.unwrap_or(self.settings.fallback_after))
            }
        };
        let manifest = self.records.release(&release_id).await?.ok_or(BootError::ReleaseMissing(release_id))?;
        Ok(Target { manifest, reason, fallback_after })
    }

    /// The release a gateway boots now, fallback aside.
    pub async fn resolve_release(&self, gateway: &GatewayRecord) -> Result<ReleaseManifest, BootError> {
        Ok(self.resolve_target(gateway).await?.manifest)
    }

    /// The gateway's boot state; a journal that cannot be read does not stop the boot.
    async fn load_health(&self, gateway: &GatewayRecord) -> (Option<StoredHealth>, Option<String>) {
        match &self.journal {
            None => (None, None),
            Some(journal) => match journal.load(&gateway.fingerprint).await {
                Ok(stored) => (Some(stored), None),
                Err(e) => (None, Some(e.to_string())),
            },
        }
    }

    /// Writes the boot and closes the previous one. On a lost race (another boot or a signal
    /// of this gateway), the state is read again and the same boot applied to it.
    async fn record_boot(
        &self,
        gateway: &GatewayRecord,
        mut stored: StoredHealth,
        mut plan: BootPlan,
        boot: BootRecord,
        fallback_after: u32,
    ) -> Result<(), String> {
        let Some(journal) = &self.journal else { return Ok(()) };
        let fp = &gateway.fingerprint;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let next = stored.health.after_boot(&plan, boot.clone());
            let mut boots: Vec<&BootRecord> = plan.closed.iter().collect();
            boots.extend(next.latest.as_ref());
            match journal.commit(fp, stored.version.as_deref(), &next, &boots).await {
                Ok(()) => return Ok(()),
                Err(StoreError::Conflict(_)) if attempt < HEALTH_UPDATE_ATTEMPTS => {
                    stored = journal.load(fp).await.map_err(|e| e.to_string())?;
                    plan = stored.health.plan(&boot.target, fallback_after, boot.issued_at);
                }
                Err(e) => return Err(e.to_string()),
            }
        }
    }

    /// The boot script for a verified client, as of `now` (unix seconds).
    pub async fn boot(&self, client: &ClientIdentity, query: &BootQuery, now: u64) -> Result<BootScript, BootError> {
        let presented = &client.fingerprint;
        let gateway = self.records.gateway_for_certificate(presented).await?.ok_or(BootError::UnknownGateway)?;
        // Everything else is kept under the gateway's own fingerprint, whichever certificate
        // it booted with.
        let home = gateway.fingerprint.clone();
        let fp = &home;
        let cert_entry = gateway.certificate(presented).ok_or(BootError::UnknownGateway)?;
        match gateway.state {
            GatewayState::Enabled => {}
            GatewayState::Disabled => return Err(BootError::Disabled(gateway.name)),
            GatewayState::Revoked => return Err(BootError::Revoked(gateway.name)),
        }
        let secrets_key = keys::secrets(fp);
        let (target, has_secrets, (stored, mut journal_error)) =
            tokio::try_join!(self.resolve_target(&gateway), async { Ok::<_, BootError>(self.records.has_secrets(fp).await?) }, async {
                Ok::<_, BootError>(self.load_health(&gateway).await)
            },)?;
        let arch = query.arch();
        let target_id = target.manifest.id.clone();
        let plan = stored.as_ref().map(|s| s.health.plan(&target_id, target.fallback_after, now));

        // A planned fallback is served only if its release still exists and boots this arch.
        let mut manifest = target.manifest;
        let mut reason = target.reason;
        let mut fallback_refused = None;
        if let Some(Choice::Fallback { release }) = plan.as_ref().map(|p| &p.choice) {
            match self.records.release(release).await {
                Ok(Some(good)) if good.assets_for(arch, query.platform).is_some() => {
                    manifest = good;
                    reason = BootReason::Fallback;
                }
                Ok(Some(_)) => fallback_refused = Some(format!("release {release} has no assets for {arch}")),
                Ok(None) => fallback_refused = Some(format!("release {release} no longer exists")),
                Err(e) => fallback_refused = Some(format!("release {release} cannot be read: {e}")),
            }
        }
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
        vars.set_own("fingerprint", presented.as_str())?;
        vars.set_own("release", manifest.id.as_str())?;
        vars.set_own("arch", arch)?;
        vars.set_own("platform", query.platform.unwrap_or("unknown"))?;

        let base = self.settings.secrets_base_url.trim_end_matches('/');
        let mut token_id = None;
        if has_secrets {
            let expires_at = now + self.settings.token_ttl.as_secs();
            let (id, token) = self.keyring.mint(fp, &secrets_key, expires_at)?;
            let url = format!("{base}/secrets/{token}");
            vars.set_own("secrets_arg", if wants_secrets { String::new() } else { format!(" b2c.extra_args_url=\"{url}\"") })?;
            vars.set_own("secrets_url", url)?;
            token_id = Some(id);
        } else if wants_secrets {
            return Err(BootError::SecretsMissing(manifest.id));
        } else {
            vars.set_own("secrets_arg", "")?;
        }
        // Check-ins can only be recorded with a journal; without one the URL is empty.
        let deadline = now + self.settings.health_deadline.as_secs();
        let boot_id = TokenId::random().to_string();
        if plan.is_some() {
            let (_, token) = self.keyring.mint(fp, &keys::checkin(fp, &boot_id), deadline)?;
            vars.set_own("checkin_url", format!("{base}/checkin/{token}"))?;
        } else {
            vars.set_own("checkin_url", "")?;
        }

        let script = render::render(&template, &vars)?;

        let days_left = days_until(client.not_after, now);
        let mut cert = CertificateUse {
            fingerprint: presented.clone(),
            days_left,
            expiring: client.not_after - (now as i64) <= self.settings.renewal_window.as_secs() as i64,
            renewed_from: None,
            retired: Vec::new(),
            retire_error: None,
        };
        // The first boot with a renewed certificate: the previous boot used another one.
        let previous_cert = stored.as_ref().and_then(|s| s.health.latest.as_ref()).and_then(|b| b.cert.as_ref());
        if cert_entry.first_boot_at.is_none() && previous_cert != Some(presented) {
            cert.renewed_from = cert_entry.renews.clone();
        }
        if cert.renewed_from.is_some() && self.settings.retire_old_after_first_boot {
            match self.retire_others(&gateway, presented, now).await {
                Ok(retired) => cert.retired = retired,
                Err(e) => cert.retire_error = Some(e.to_string()),
            }
        }

        let mut failures = 0;
        if let (Some(stored), Some(plan)) = (stored, plan) {
            failures = plan.failures;
            let boot = BootRecord {
                id: boot_id,
                seq: 0,
                release: manifest.id.clone(),
                target: target_id.clone(),
                reason,
                gate: manifest.health_gate,
                arch: arch.to_string(),
                platform: query.platform.map(str::to_string),
                mac: query.mac.clone(),
                cert: Some(presented.clone()),
                issued_at: now,
                deadline,
                secrets_token: token_id.map(|t| t.to_string()),
                outcome: Outcome::Issued,
                reached_linux_at: None,
                healthy_at: None,
                failed_at: None,
                fail_reason: None,
            };
            if let Err(e) = self.record_boot(&gateway, stored, plan, boot, target.fallback_after).await {
                journal_error = Some(e);
            }
        }
        Ok(BootScript {
            script,
            gateway: gateway.name,
            release: manifest.id,
            arch,
            token_id,
            reason,
            target: target_id,
            failures,
            journal_error,
            fallback_refused,
            cert,
        })
    }

    /// Marks the first boot with `presented` and retires the gateway's other certificates.
    async fn retire_others(&self, gateway: &GatewayRecord, presented: &Fingerprint, now: u64) -> Result<Vec<Fingerprint>, RecordError> {
        let mut retired = Vec::new();
        self.records
            .update_gateway::<RecordError>(&gateway.fingerprint, |record| {
                let mut certs = record.certificates();
                retired = certs.iter().filter(|c| &c.fingerprint != presented).map(|c| c.fingerprint.clone()).collect();
                certs.retain(|c| &c.fingerprint == presented);
                if let Some(c) = certs.first_mut() {
                    c.first_boot_at = Some(now);
                }
                record.certificates = certs;
                Ok(())
            })
            .await?;
        for fp in &retired {
            if fp != &gateway.fingerprint {
                self.records.store().delete(&keys::alias(fp)).await?;
            }
        }
        Ok(retired)
    }
}
