//! Deciding what a verified gateway boots, and writing its boot script.

use crate::domain::identity::{ClientIdentity, Fingerprint, DEFAULT_CLOCK_SKEW};
use crate::domain::journal::{BootPlan, BootReason, BootRecord, Choice, Outcome};
use crate::domain::model::{days_until, GatewayCertificate, GatewayRecord, GatewayState, ReleaseManifest};
use crate::domain::query::{BootQuery, IpxeVersion};
use crate::domain::render::{self, RenderError, Vars, DEFAULT_TEMPLATE, VERIFYING_TEMPLATE};
use crate::domain::token::{Grant, Keyring, MintError, TokenId};
use crate::storage::records::{RecordError, Records};
use crate::storage::{update_journal_from, BootJournal, Presigner, StoreError, StoredJournal};
use std::ops::RangeInclusive;
use std::sync::Arc;
use std::time::Duration;

/// Variables every template can use; a gateway's own variables cannot override them.
pub const RESERVED_VARS: &[&str] = &[
    "kernel_url",
    "initrd_url",
    "kernel_sha256",
    "initrd_sha256",
    "secrets_url",
    "secrets_arg",
    "checkin_url",
    "cmdline",
    "gateway",
    "fingerprint",
    "release",
    "arch",
    "platform",
];

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
        (url.starts_with("https://") || url.starts_with("http://"))
            && !url.chars().any(|c| c.is_whitespace() || c.is_control() || c == '"' || c == '$')
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
    /// The iPXE version the gateway reported.
    pub ipxe_version: Option<IpxeVersion>,
    /// The script checks each image's SHA-256 before booting it.
    pub digests_checked: bool,
}

/// Whether the gateway gets the script that checks image digests: the release uses the default
/// script and has not opted out, and the gateway's iPXE can check (2.0 and newer).
pub fn checks_digests(manifest: &ReleaseManifest, query: &BootQuery) -> bool {
    manifest.template.is_none() && manifest.verifies_digests() && query.version.is_some_and(|v| v >= IpxeVersion::V2)
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

/// The release a boot serves, and why.
struct Chosen {
    manifest: ReleaseManifest,
    reason: BootReason,
    /// Why a planned fallback was not served.
    fallback_refused: Option<String>,
}

/// The tokens a boot's script carries.
struct Tokens {
    has_secrets: bool,
    /// Boots are recorded, so a check-in can be.
    check_in: bool,
    boot_id: String,
    /// The boot's health deadline, which its check-in token shares.
    deadline: u64,
}

/// One served boot, as the journal records it.
struct Boot<'a> {
    chosen: &'a Chosen,
    target: &'a Target,
    query: &'a BootQuery,
    client: &'a ClientIdentity,
    tokens: Tokens,
    token_id: Option<TokenId>,
    now: u64,
}

impl Boot<'_> {
    fn record(&self) -> BootRecord {
        BootRecord {
            id: self.tokens.boot_id.clone(),
            seq: 0,
            release: self.chosen.manifest.id.clone(),
            target: self.target.manifest.id.clone(),
            reason: self.chosen.reason,
            gate: self.chosen.manifest.health_gate,
            arch: self.query.arch().to_string(),
            platform: self.query.platform.map(str::to_string),
            mac: self.query.mac.clone(),
            cert: Some(self.client.fingerprint.clone()),
            issued_at: self.now,
            deadline: self.tokens.deadline,
            secrets_token: self.token_id.as_ref().map(|t| t.to_string()),
            outcome: Outcome::Issued,
            reached_linux_at: None,
            healthy_at: None,
            failed_at: None,
            fail_reason: None,
        }
    }
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
    booting: BootingGateways,
}

/// One lock per gateway booting in this process, held from reading its boot state to writing the
/// next one. Boots of one gateway arriving together (a tight iPXE loop, a test rig) then take
/// turns instead of all reading the same state, all but one losing the conditional write, and
/// reading and computing again; boots of different gateways never wait for each other. Writers
/// in other processes still meet the conditional write.
#[derive(Default)]
struct BootingGateways {
    locks: std::sync::Mutex<std::collections::HashMap<Fingerprint, Arc<tokio::sync::Mutex<()>>>>,
}

/// A gateway's turn; its lock is dropped from the map once nobody holds or waits for it.
struct Turn<'a> {
    gateways: &'a BootingGateways,
    fp: Fingerprint,
    lock: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl BootingGateways {
    async fn turn(&self, fp: &Fingerprint) -> Turn<'_> {
        let lock = self.locks.lock().unwrap().entry(fp.clone()).or_default().clone();
        Turn { gateways: self, fp: fp.clone(), lock: Some(lock.lock_owned().await) }
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        self.lock.take();
        let mut locks = self.gateways.locks.lock().unwrap();
        if locks.get(&self.fp).is_some_and(|lock| Arc::strong_count(lock) == 1) {
            locks.remove(&self.fp);
        }
    }
}

impl BootService {
    pub fn new(records: Records, presigner: Arc<dyn Presigner>, keyring: Arc<Keyring>, settings: BootSettings) -> Self {
        BootService { records, presigner, keyring, settings, journal: None, booting: BootingGateways::default() }
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
                let channel = self.records.channel(gateway.channel()).await?.ok_or_else(|| {
                    BootError::ChannelMissing { gateway: gateway.name.clone(), channel: gateway.channel().to_string() }
                })?;
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
    async fn load_journal(&self, gateway: &GatewayRecord) -> (Option<StoredJournal>, Option<String>) {
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
        stored: StoredJournal,
        plan: BootPlan,
        boot: BootRecord,
        fallback_after: u32,
    ) -> Result<(), String> {
        let Some(journal) = &self.journal else { return Ok(()) };
        let mut first_plan = Some(plan);
        update_journal_from(journal.as_ref(), &gateway.fingerprint, Some(stored), |health| {
            let plan = first_plan.take().unwrap_or_else(|| health.plan(&boot.target, fallback_after, boot.issued_at));
            let next = health.after_boot(&plan, boot.clone());
            let mut boots: Vec<BootRecord> = plan.closed.iter().cloned().collect();
            boots.extend(next.latest.clone());
            Ok::<_, StoreError>((next, boots, ()))
        })
        .await
        .map_err(|e| e.to_string())
    }

    /// The boot script for a verified client, as of `now` (unix seconds): admit the gateway,
    /// choose the release, write the script, then note what its certificate says and record
    /// the boot.
    pub async fn boot(&self, client: &ClientIdentity, query: &BootQuery, now: u64) -> Result<BootScript, BootError> {
        let (gateway, cert_entry) = self.admit(client).await?;
        let _turn = match &self.journal {
            Some(_) => Some(self.booting.turn(&gateway.fingerprint).await),
            None => None,
        };
        let (target, has_secrets, (stored, journal_error)) = tokio::try_join!(
            self.resolve_target(&gateway),
            async { Ok::<_, BootError>(self.records.has_secrets(&gateway).await?) },
            async { Ok::<_, BootError>(self.load_journal(&gateway).await) },
        )?;
        let plan = stored.as_ref().map(|s| s.health.plan(&target.manifest.id, target.fallback_after, now));
        let chosen = self.choose(&target, plan.as_ref(), query).await;
        let tokens = Tokens {
            has_secrets,
            check_in: plan.is_some(),
            boot_id: TokenId::random().to_string(),
            deadline: now + self.settings.health_deadline.as_secs(),
        };
        let (script, token_id) = self.write_script(&gateway, client, &chosen.manifest, query, &tokens, now).await?;
        let cert = self.certificate_use(client, &gateway, cert_entry, stored.as_ref(), now).await;
        let boot = Boot { chosen: &chosen, target: &target, query, client, tokens, token_id, now };
        let (failures, journal_error) = match (stored, plan) {
            (Some(stored), Some(plan)) => (
                plan.failures,
                self.record_boot(&gateway, stored, plan, boot.record(), target.fallback_after)
                    .await
                    .err()
                    .or(journal_error),
            ),
            _ => (0, journal_error),
        };
        Ok(BootScript {
            digests_checked: checks_digests(&chosen.manifest, query),
            ipxe_version: query.version,
            script,
            gateway: gateway.name.clone(),
            release: chosen.manifest.id,
            arch: query.arch(),
            token_id,
            reason: chosen.reason,
            target: target.manifest.id,
            failures,
            journal_error,
            fallback_refused: chosen.fallback_refused,
            cert,
        })
    }

    /// The enrolled, enabled gateway that holds the presented certificate, and that
    /// certificate's entry. Everything else is kept under the gateway's own fingerprint,
    /// whichever certificate it booted with.
    async fn admit(&self, client: &ClientIdentity) -> Result<(GatewayRecord, GatewayCertificate), BootError> {
        let gateway =
            self.records.gateway_for_certificate(&client.fingerprint).await?.ok_or(BootError::UnknownGateway)?;
        let cert_entry = gateway.certificate(&client.fingerprint).ok_or(BootError::UnknownGateway)?.clone();
        match gateway.state {
            GatewayState::Enabled => Ok((gateway, cert_entry)),
            GatewayState::Disabled => Err(BootError::Disabled(gateway.name)),
            GatewayState::Revoked => Err(BootError::Revoked(gateway.name)),
        }
    }

    /// The target, or the planned fallback when its release still exists and boots this
    /// architecture.
    async fn choose(&self, target: &Target, plan: Option<&BootPlan>, query: &BootQuery) -> Chosen {
        let serve_target =
            |fallback_refused| Chosen { manifest: target.manifest.clone(), reason: target.reason, fallback_refused };
        let Some(Choice::Fallback { release }) = plan.map(|p| &p.choice) else { return serve_target(None) };
        let arch = query.arch();
        match self.records.release(release).await {
            Ok(Some(good)) if good.assets_for(arch, query.platform).is_some() => {
                Chosen { manifest: good, reason: BootReason::Fallback, fallback_refused: None }
            }
            Ok(Some(_)) => serve_target(Some(format!("release {release} has no assets for {arch}"))),
            Ok(None) => serve_target(Some(format!("release {release} no longer exists"))),
            Err(e) => serve_target(Some(format!("release {release} cannot be read: {e}"))),
        }
    }

    /// The rendered script for `manifest`, with its presigned URLs and the tokens it carries;
    /// the secrets token's id.
    async fn write_script(
        &self,
        gateway: &GatewayRecord,
        client: &ClientIdentity,
        manifest: &ReleaseManifest,
        query: &BootQuery,
        tokens: &Tokens,
        now: u64,
    ) -> Result<(String, Option<TokenId>), BootError> {
        let arch = query.arch();
        let assets = manifest
            .assets_for(arch, query.platform)
            .ok_or_else(|| BootError::NoAssetsForArch { release: manifest.id.clone(), arch: arch.to_string() })?;
        let (kernel_url, initrd_url) = tokio::try_join!(
            self.presigner.presign_get(&assets.kernel.key, self.settings.presign_ttl),
            self.presigner.presign_get(&assets.initrd.key, self.settings.presign_ttl),
        )?;
        // The records layer validated the template and command line when it read the manifest.
        let default = if checks_digests(manifest, query) { VERIFYING_TEMPLATE } else { DEFAULT_TEMPLATE };
        let template = manifest.template.as_deref().unwrap_or(default);
        // The command line is part of the template: it may use our variables and iPXE's.
        let template = template.replacen("${cmdline}", &manifest.cmdline, 1);
        let mut vars = Vars::new();
        for (name, value) in &gateway.vars {
            if !RESERVED_VARS.contains(&name.as_str()) {
                vars.set(name, value.as_str())?;
            }
        }
        vars.set_own("kernel_url", kernel_url)?;
        vars.set_own("initrd_url", initrd_url)?;
        vars.set_own("kernel_sha256", assets.kernel.sha256.as_str())?;
        vars.set_own("initrd_sha256", assets.initrd.sha256.as_str())?;
        vars.set_own("gateway", gateway.name.as_str())?;
        vars.set_own("fingerprint", client.fingerprint.as_str())?;
        vars.set_own("release", manifest.id.as_str())?;
        vars.set_own("arch", arch)?;
        vars.set_own("platform", query.platform.unwrap_or("unknown"))?;
        let token_id = self.token_urls(
            &mut vars,
            &gateway.fingerprint,
            template.contains("${secrets_url}"),
            manifest,
            tokens,
            now,
        )?;
        Ok((render::render(&template, &vars)?, token_id))
    }

    /// The secrets URL (when the gateway has secrets) and the check-in URL (when boots are
    /// recorded; empty otherwise), each with a token of its own.
    fn token_urls(
        &self,
        vars: &mut Vars,
        fp: &Fingerprint,
        wants_secrets: bool,
        manifest: &ReleaseManifest,
        tokens: &Tokens,
        now: u64,
    ) -> Result<Option<TokenId>, BootError> {
        let base = self.settings.secrets_base_url.trim_end_matches('/');
        let mut token_id = None;
        if tokens.has_secrets {
            let (id, token) = self.keyring.mint(fp, &Grant::Secrets, now + self.settings.token_ttl.as_secs())?;
            let url = Grant::Secrets.url(base, &token);
            vars.set_own(
                "secrets_arg",
                if wants_secrets { String::new() } else { format!(" b2c.extra_args_url=\"{url}\"") },
            )?;
            vars.set_own("secrets_url", url)?;
            token_id = Some(id);
        } else if wants_secrets {
            return Err(BootError::SecretsMissing(manifest.id.clone()));
        } else {
            vars.set_own("secrets_arg", "")?;
        }
        if tokens.check_in {
            let grant = Grant::Checkin { boot_id: tokens.boot_id.clone() };
            let (_, token) = self.keyring.mint(fp, &grant, tokens.deadline)?;
            vars.set_own("checkin_url", grant.url(base, &token))?;
        } else {
            vars.set_own("checkin_url", "")?;
        }
        Ok(token_id)
    }

    /// What the presented certificate's dates say, and on the first boot with a renewed one,
    /// the certificates it retires (when the deployment retires them then).
    async fn certificate_use(
        &self,
        client: &ClientIdentity,
        gateway: &GatewayRecord,
        entry: GatewayCertificate,
        stored: Option<&StoredJournal>,
        now: u64,
    ) -> CertificateUse {
        let presented = &client.fingerprint;
        let mut cert = CertificateUse {
            fingerprint: presented.clone(),
            days_left: days_until(client.not_after, now),
            expiring: client.not_after - (now as i64) <= self.settings.renewal_window.as_secs() as i64,
            renewed_from: None,
            retired: Vec::new(),
            retire_error: None,
        };
        // The first boot with a renewed certificate: the previous boot used another one.
        let previous_cert = stored.and_then(|s| s.health.latest.as_ref()).and_then(|b| b.cert.as_ref());
        if entry.first_boot_at.is_none() && previous_cert != Some(presented) {
            cert.renewed_from = entry.renews.clone();
        }
        if cert.renewed_from.is_some() && self.settings.retire_old_after_first_boot {
            match self.retire_others(gateway, presented, now).await {
                Ok(retired) => cert.retired = retired,
                Err(e) => cert.retire_error = Some(e.to_string()),
            }
        }
        cert
    }

    /// Marks the first boot with `presented` and retires the gateway's other certificates.
    async fn retire_others(
        &self,
        gateway: &GatewayRecord,
        presented: &Fingerprint,
        now: u64,
    ) -> Result<Vec<Fingerprint>, RecordError> {
        self.records.retire_all_but(&gateway.fingerprint, presented, now).await
    }
}
