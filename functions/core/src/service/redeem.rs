//! Redeeming a one-time secrets token, and the booted system's check-in: the two signals that
//! a boot came up.

use crate::domain::identity::Fingerprint;
use crate::domain::journal::{BootRecord, Signal, SignalRefused};
use crate::domain::model::{GatewayRecord, GatewayState, PendingRenewal};
use crate::domain::secret_template;
use crate::domain::token::{Grant, Keyring, TokenClaims, TokenError, TokenId};
use crate::storage::records::{RecordError, Records};
use crate::storage::{
    update_journal_from, BootJournal, LedgerOutcome, ScratchKey, ScratchKeys, StoreError, StoredJournal, TokenLedger,
    TokenUse, UseCommit,
};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum RedeemError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("token {0} was already used")]
    Replayed(TokenId),
    #[error("the gateway's secrets no longer exist")]
    SecretsGone(TokenId),
    #[error(transparent)]
    Record(#[from] RecordError),
    /// The gateway is disabled or revoked: no scratch key is minted for it.
    #[error("gateway {0} is not enabled")]
    GatewayNotEnabled(String),
    /// The secret asks for scratch storage and this deployment has none.
    #[error("the secret uses scratch-storage variables but no scratch storage is configured")]
    ScratchNotConfigured,
    /// Minting the key failed; the token stays redeemable.
    #[error("scratch key service: {0}")]
    ScratchUnavailable(String),
}

impl From<StoreError> for RedeemError {
    fn from(e: StoreError) -> Self {
        RedeemError::Record(e.into())
    }
}

/// Why a renewal fetch was refused. None of these spends the token.
#[derive(Debug, thiserror::Error)]
pub enum RenewalError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("renewal token {0} was already used")]
    Replayed(TokenId),
    /// Nothing is pending for this token any more: fetched, replaced by a newer renewal, or
    /// its certificate retired.
    #[error("renewal of token {0} is no longer pending")]
    Gone(TokenId),
    #[error("gateway {0} is not enabled")]
    GatewayNotEnabled(String),
    #[error(transparent)]
    Record(#[from] RecordError),
}

impl From<StoreError> for RenewalError {
    fn from(e: StoreError) -> Self {
        RenewalError::Record(e.into())
    }
}

/// A renewal handed over: the token is spent and the pending renewal deleted (or, when the
/// delete failed, `delete_error` says why; the token is spent anyway).
#[derive(Debug)]
pub struct FetchedRenewal {
    pub claims: TokenClaims,
    pub gateway: String,
    pub renewal: PendingRenewal,
    pub delete_error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckinError {
    #[error(transparent)]
    Token(#[from] TokenError),
    /// A replay, a check-in of a superseded boot, or one after the deadline.
    #[error("check-in token {id}: {why}")]
    Refused { id: TokenId, why: SignalRefused },
    /// This deployment records no boots.
    #[error("check-ins are not recorded here")]
    NotRecorded,
    /// The gateway is disabled, revoked or gone: its check-in changes nothing.
    #[error("gateway {0} is not enabled")]
    GatewayNotEnabled(String),
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What became of the boot's `reached_linux` signal when its secret was served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignalOutcome {
    /// No journal: nothing is recorded.
    NotRecorded,
    Recorded(Box<BootRecord>),
    /// The token's boot is not the gateway's latest, or it signalled already, or too late.
    Ignored(SignalRefused),
    /// The journal could not be written; the secret is served anyway.
    Failed(String),
}

enum SignalError {
    Refused(SignalRefused),
    Store(StoreError),
}

impl From<StoreError> for SignalError {
    fn from(e: StoreError) -> Self {
        SignalError::Store(e)
    }
}

#[derive(Debug)]
pub struct Redeemed {
    pub secret: Vec<u8>,
    pub claims: TokenClaims,
    pub signal: SignalOutcome,
}

#[derive(Debug)]
pub struct CheckedIn {
    pub claims: TokenClaims,
    pub boot: BootRecord,
}

pub struct RedeemService {
    records: Records,
    ledger: Arc<dyn TokenLedger>,
    keyring: Arc<Keyring>,
    journal: Option<Arc<dyn BootJournal>>,
    /// Where check-in URLs put in secrets point (the secrets API's own base URL).
    checkin_base_url: Option<String>,
    scratch: Option<Arc<dyn ScratchKeys>>,
    renewal_ttl_secs: u64,
}

impl RedeemService {
    /// Lifetime of a `${renewal_url}`: the booted system fetches it soon after it got its secret.
    pub const DEFAULT_RENEWAL_TTL_SECS: u64 = 900;

    pub fn new(records: Records, ledger: Arc<dyn TokenLedger>, keyring: Arc<Keyring>) -> Self {
        RedeemService {
            records,
            ledger,
            keyring,
            journal: None,
            checkin_base_url: None,
            scratch: None,
            renewal_ttl_secs: Self::DEFAULT_RENEWAL_TTL_SECS,
        }
    }

    /// A one-time URL fetching the gateway's pending renewal, or empty when none is pending
    /// (or the URL cannot be made; the secret is served anyway).
    async fn renewal_url(&self, gateway: &GatewayRecord, now: u64, request_base_url: Option<&str>) -> String {
        let Some(base) = self.checkin_base_url.as_deref().or(request_base_url) else { return String::new() };
        if gateway.state != GatewayState::Enabled {
            return String::new();
        }
        let fp = &gateway.fingerprint;
        match self.records.renewal(fp).await {
            Ok(Some(renewal)) if gateway.certificate(&renewal.fingerprint).is_some() => {
                let grant = Grant::Renewal { renewed: renewal.fingerprint.clone() };
                match self.keyring.mint(fp, &grant, now + self.renewal_ttl_secs) {
                    Ok((_, token)) => grant.url(base, &token),
                    Err(_) => String::new(),
                }
            }
            Ok(_) => String::new(),
            Err(e) => {
                tracing::error!(gateway = %gateway.name, error = %e, "pending renewal cannot be read; the renewal URL is left empty");
                String::new()
            }
        }
    }

    /// `GET /renewal/{token}`: the gateway's renewed certificate, once. The new certificate is
    /// enrolled before a renewal is staged, so whatever the gateway does with it, both its old
    /// and its new certificate boot. Replays and fetches after the renewal was handed over,
    /// replaced or retired are refused (410); forged tokens 403; nothing is spent on a refusal.
    pub async fn fetch_renewal(&self, token: &str, now: u64) -> Result<FetchedRenewal, RenewalError> {
        let claims = self.keyring.verify(token, now)?;
        let Grant::Renewal { renewed } = claims.grant.clone() else {
            return Err(RenewalError::Token(TokenError::Forged));
        };
        let id = claims.id.to_string();
        if self.ledger.is_used(&id).await? {
            return Err(RenewalError::Replayed(claims.id));
        }
        let renewal = self.pending(&claims.fingerprint, &renewed).await?.ok_or(RenewalError::Gone(claims.id))?;
        let gateway = self.records.gateway(&claims.fingerprint).await?.ok_or(RenewalError::Gone(claims.id))?;
        if gateway.state != GatewayState::Enabled {
            return Err(RenewalError::GatewayNotEnabled(gateway.name));
        }
        if gateway.certificate(&renewed).is_none() {
            return Err(RenewalError::Gone(claims.id));
        }
        if self.ledger.record_use(&id, claims.fingerprint.as_str(), now, claims.expires_at).await?
            == LedgerOutcome::AlreadyUsed
        {
            return Err(RenewalError::Replayed(claims.id));
        }
        let delete_error = self.records.delete_renewal(&claims.fingerprint).await.err().map(|e| e.to_string());
        Ok(FetchedRenewal { claims, gateway: gateway.name, renewal, delete_error })
    }

    /// The gateway's pending renewal, if it is the one to `renewed`.
    async fn pending(&self, fp: &Fingerprint, renewed: &Fingerprint) -> Result<Option<PendingRenewal>, RecordError> {
        Ok(self.records.renewal(fp).await?.filter(|r| &r.fingerprint == renewed))
    }

    /// Lets secrets carry `${checkin_url}`: filled at redemption with a check-in URL of the
    /// boot, under this base URL (empty when the boot is not recorded).
    pub fn with_checkin_base_url(mut self, url: impl Into<String>) -> Self {
        self.checkin_base_url = Some(url.into().trim_end_matches('/').to_string());
        self
    }

    /// A check-in URL for `boot`, valid until its deadline.
    fn checkin_url(&self, claims: &TokenClaims, boot: &BootRecord, request_base_url: Option<&str>) -> String {
        let Some(base) = self.checkin_base_url.as_deref().or(request_base_url) else { return String::new() };
        let grant = Grant::Checkin { boot_id: boot.id.clone() };
        match self.keyring.mint(&claims.fingerprint, &grant, boot.deadline) {
            Ok((_, token)) => grant.url(base, &token),
            Err(_) => String::new(),
        }
    }

    /// Mints scratch-storage keys for secrets that use `${s3_…}`.
    pub fn with_scratch(mut self, scratch: Arc<dyn ScratchKeys>) -> Self {
        self.scratch = Some(scratch);
        self
    }

    /// Records redemptions and check-ins as boot outcomes.
    pub fn with_journal(mut self, journal: Arc<dyn BootJournal>) -> Self {
        self.journal = Some(journal);
        self
    }

    /// Applies a signal to the gateway's latest boot, retrying lost races. `key`: the secrets
    /// token id, or the boot id of a check-in.
    /// `first`: the state as read already, when it was.
    async fn signal(
        &self,
        claims: &TokenClaims,
        key: &str,
        signal: Signal,
        now: u64,
        first: Option<StoredJournal>,
    ) -> Result<BootRecord, SignalError> {
        let Some(journal) = &self.journal else {
            return Err(SignalError::Store(StoreError::Unavailable("no journal".into())));
        };
        update_journal_from(journal.as_ref(), &claims.fingerprint, first, |health| {
            // A refused signal writes nothing and changes no record.
            let (next, boot) = health.signal(key, signal, now).map_err(SignalError::Refused)?;
            Ok((next, vec![boot.clone()], boot))
        })
        .await
    }

    /// `POST /checkin/{token}`: the booted system says its services are up. Single use: the
    /// boot state itself remembers the check-in, written conditionally, so of two concurrent
    /// check-ins one wins and the other is refused; a refused or failed check-in changes nothing.
    pub async fn checkin(&self, token: &str, now: u64) -> Result<CheckedIn, CheckinError> {
        let claims = self.keyring.verify(token, now)?;
        let Grant::Checkin { boot_id } = claims.grant.clone() else {
            return Err(CheckinError::Token(TokenError::Forged));
        };
        if self.journal.is_none() {
            return Err(CheckinError::NotRecorded);
        }
        match self.records.gateway(&claims.fingerprint).await? {
            Some(gateway) if gateway.state == GatewayState::Enabled => {}
            Some(gateway) => return Err(CheckinError::GatewayNotEnabled(gateway.name)),
            None => return Err(CheckinError::GatewayNotEnabled(claims.fingerprint.to_string())),
        }
        match self.signal(&claims, &boot_id, Signal::Checkin, now, None).await {
            Ok(boot) => Ok(CheckedIn { claims, boot }),
            Err(SignalError::Refused(why)) => Err(CheckinError::Refused { id: claims.id, why }),
            Err(SignalError::Store(e)) => Err(CheckinError::Store(e)),
        }
    }

    /// Verifies the token, reads the secret, then records the token as used. The token is
    /// spent only when the secret was read (and its scratch key minted) and the ledger accepted
    /// it, so any failure before that leaves it redeemable.
    pub async fn redeem(&self, token: &str, now: u64) -> Result<Redeemed, RedeemError> {
        self.redeem_at(token, now, None).await
    }

    /// [`Self::redeem`], with the base URL of check-in URLs put in the secret when none was
    /// configured (the API Gateway domain the request came through).
    pub async fn redeem_at(
        &self,
        token: &str,
        now: u64,
        request_base_url: Option<&str>,
    ) -> Result<Redeemed, RedeemError> {
        let claims = self.keyring.verify(token, now)?;
        if claims.grant != Grant::Secrets {
            return Err(RedeemError::Token(TokenError::Forged));
        }
        // The boot state is read beside the secret (a read spends nothing); it is written only
        // once the ledger accepted the token.
        let (secret, mut journal_state) = tokio::join!(self.records.secrets(&claims.fingerprint), async {
            match &self.journal {
                Some(journal) => journal.load(&claims.fingerprint).await.ok(),
                None => None,
            }
        });
        let secret = secret?.ok_or(RedeemError::SecretsGone(claims.id))?;
        let id = claims.id.to_string();
        let variables = secret_template::variables(&secret);
        let needs_record =
            variables.iter().any(|v| !matches!(v.as_str(), "fingerprint" | "client_cert_fingerprint" | "checkin_url"));
        let gateway = match needs_record {
            true => Some(self.records.gateway(&claims.fingerprint).await?.ok_or(RedeemError::SecretsGone(claims.id))?),
            false => None,
        };
        let uses_scratch = variables.iter().any(|v| secret_template::SCRATCH_VARIABLES.contains(&v.as_str()));
        let minted = match (&gateway, uses_scratch) {
            (Some(gateway), true) => Some(self.mint_scratch(gateway, claims.id, now).await?),
            _ => None,
        };
        // Where the journal keeps the ledger, the token's use and the boot's next state (from
        // the state read beside the secret) are one write; otherwise, or when the state moved
        // since, the ledger decides first and the journal is written after.
        let token_use = TokenUse {
            token_id: &id,
            fingerprint: claims.fingerprint.as_str(),
            used_at: now,
            expires_at: claims.expires_at,
        };
        let together = match (&self.journal, &journal_state) {
            (Some(journal), Some(stored)) => match stored.health.signal(&id, Signal::ReachedLinux, now) {
                Ok((next, boot)) => journal
                    .commit_with_use(&claims.fingerprint, stored.version.as_deref(), &next, &[&boot], &token_use)
                    .await
                    .map(|written| (written, boot)),
                Err(_) => None,
            },
            _ => None,
        };
        let (outcome, recorded) = match together {
            Some((Ok(UseCommit::Recorded), boot)) => (LedgerOutcome::Recorded, Some(boot)),
            Some((Ok(UseCommit::AlreadyUsed), _)) => (LedgerOutcome::AlreadyUsed, None),
            Some((Err(e), _)) => {
                self.discard(gateway.as_ref(), minted.as_ref()).await;
                return Err(e.into());
            }
            moved_or_apart => {
                if matches!(moved_or_apart, Some((Ok(UseCommit::StateChanged), _))) {
                    journal_state = None;
                }
                match self.ledger.record_use(&id, claims.fingerprint.as_str(), now, claims.expires_at).await {
                    Ok(outcome) => (outcome, None),
                    Err(e) => {
                        self.discard(gateway.as_ref(), minted.as_ref()).await;
                        return Err(e.into());
                    }
                }
            }
        };
        if outcome == LedgerOutcome::AlreadyUsed {
            self.discard(gateway.as_ref(), minted.as_ref()).await;
            return Err(RedeemError::Replayed(claims.id));
        }
        if let (Some(gateway), Some(key), Some(scratch)) = (&gateway, &minted, &self.scratch) {
            // The keys minted before this one stop working now that it was delivered; a newer
            // redemption's key, minted while this one ran, stays.
            match scratch.revoke_older(&gateway.name, &key.access_key_id).await {
                Ok(revoked) => {
                    tracing::info!(gateway = %gateway.name, access_key_id = %key.access_key_id, revoked, "scratch key minted")
                }
                Err(e) => {
                    tracing::error!(gateway = %gateway.name, error = %e, "scratch key minted, but the previous keys could not be revoked; they stay valid until the next redemption or `gateway scratch --revoke-keys`")
                }
            }
        }
        // The secret goes out whatever the journal says: the boot's outcome is a record, not a
        // condition.
        let signal = match (&self.journal, recorded) {
            (None, _) => SignalOutcome::NotRecorded,
            (Some(_), Some(boot)) => SignalOutcome::Recorded(Box::new(boot)),
            (Some(_), None) => match self.signal(&claims, &id, Signal::ReachedLinux, now, journal_state).await {
                Ok(boot) => SignalOutcome::Recorded(Box::new(boot)),
                Err(SignalError::Refused(why)) => SignalOutcome::Ignored(why),
                Err(SignalError::Store(e)) => SignalOutcome::Failed(e.to_string()),
            },
        };
        let secret = if variables.is_empty() {
            secret
        } else {
            let checkin_url = match (&signal, variables.iter().any(|v| v == "checkin_url")) {
                (SignalOutcome::Recorded(boot), true) => self.checkin_url(&claims, boot, request_base_url),
                _ => String::new(),
            };
            let renewal_url = match (&gateway, variables.iter().any(|v| v == "renewal_url")) {
                (Some(gateway), true) => self.renewal_url(gateway, now, request_base_url).await,
                _ => String::new(),
            };
            secret_template::render(&secret, |name| match name {
                "fingerprint" | "client_cert_fingerprint" => Some(claims.fingerprint.to_string()),
                "checkin_url" => Some(checkin_url.clone()),
                "renewal_url" => Some(renewal_url.clone()),
                "gateway" => gateway.as_ref().map(|g| g.name.clone()),
                "s3_endpoint" => minted.as_ref().map(|k| k.endpoint.clone()),
                "s3_access_key_id" => minted.as_ref().map(|k| k.access_key_id.clone()),
                "s3_access_key" => minted.as_ref().map(|k| k.secret_access_key.clone()),
                "s3_bucket_name" => minted.as_ref().map(|k| k.bucket_name.clone()),
                other => gateway.as_ref().and_then(|g| g.vars.get(other).cloned()),
            })
        };
        Ok(Redeemed { secret, claims, signal })
    }

    /// A new scratch key, unless the token was used already (a replay mints nothing) or the
    /// gateway is not enabled.
    async fn mint_scratch(
        &self,
        gateway: &GatewayRecord,
        token_id: TokenId,
        now: u64,
    ) -> Result<ScratchKey, RedeemError> {
        let scratch = self.scratch.as_ref().ok_or(RedeemError::ScratchNotConfigured)?;
        if gateway.state != GatewayState::Enabled {
            return Err(RedeemError::GatewayNotEnabled(gateway.name.clone()));
        }
        if self.ledger.is_used(&token_id.to_string()).await? {
            return Err(RedeemError::Replayed(token_id));
        }
        scratch.mint(&gateway.name, now).await.map_err(|e| RedeemError::ScratchUnavailable(e.to_string()))
    }

    /// Deletes a key minted for a redemption that did not deliver it.
    async fn discard(&self, gateway: Option<&GatewayRecord>, minted: Option<&ScratchKey>) {
        let (Some(gateway), Some(key), Some(scratch)) = (gateway, minted, &self.scratch) else { return };
        if let Err(e) = scratch.revoke(&gateway.name, &key.access_key_id).await {
            tracing::error!(gateway = %gateway.name, access_key_id = %key.access_key_id, error = %e, "a scratch key nobody received could not be deleted; revoke it with `gateway scratch --revoke-keys`");
        }
    }
}
