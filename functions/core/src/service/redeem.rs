//! Redeeming a one-time secrets token, and the booted system's check-in: the two signals that
//! a boot came up.

use crate::domain::health::{BootRecord, Signal, SignalRefused};
use crate::domain::token::{Keyring, TokenClaims, TokenError, TokenId};
use crate::storage::records::{RecordError, Records};
use crate::storage::{keys, update_health, BootJournal, LedgerOutcome, StoreError, TokenLedger};
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
}

impl From<StoreError> for RedeemError {
    fn from(e: StoreError) -> Self {
        RedeemError::Record(e.into())
    }
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
}

/// The placeholder a secret may hold for its boot's check-in URL.
pub const CHECKIN_URL_PLACEHOLDER: &[u8] = b"${checkin_url}";

/// `secret` with every check-in placeholder replaced by `url`.
fn fill_checkin_url(secret: Vec<u8>, url: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(secret.len() + url.len());
    let mut rest = secret.as_slice();
    while let Some(at) = rest.windows(CHECKIN_URL_PLACEHOLDER.len()).position(|w| w == CHECKIN_URL_PLACEHOLDER) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(url.as_bytes());
        rest = &rest[at + CHECKIN_URL_PLACEHOLDER.len()..];
    }
    out.extend_from_slice(rest);
    out
}

impl RedeemService {
    pub fn new(records: Records, ledger: Arc<dyn TokenLedger>, keyring: Arc<Keyring>) -> Self {
        RedeemService { records, ledger, keyring, journal: None, checkin_base_url: None }
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
        match self.keyring.mint(&claims.fingerprint, &keys::checkin(&claims.fingerprint, &boot.id), boot.deadline) {
            Ok((_, token)) => format!("{base}/checkin/{token}"),
            Err(_) => String::new(),
        }
    }

    /// Records redemptions and check-ins as boot outcomes.
    pub fn with_journal(mut self, journal: Arc<dyn BootJournal>) -> Self {
        self.journal = Some(journal);
        self
    }

    /// Applies a signal to the gateway's latest boot, retrying lost races. `key`: the secrets
    /// token id, or the boot id of a check-in.
    async fn signal(&self, claims: &TokenClaims, key: &str, signal: Signal, now: u64) -> Result<BootRecord, SignalError> {
        let Some(journal) = &self.journal else { return Err(SignalError::Store(StoreError::Unavailable("no journal".into()))) };
        update_health(journal.as_ref(), &claims.fingerprint, |health| {
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
        let Some(boot_id) = keys::checkin_boot(&claims.fingerprint, &claims.secrets_key).map(str::to_string) else {
            return Err(CheckinError::Token(TokenError::Forged));
        };
        if self.journal.is_none() {
            return Err(CheckinError::NotRecorded);
        }
        match self.signal(&claims, &boot_id, Signal::Checkin, now).await {
            Ok(boot) => Ok(CheckedIn { claims, boot }),
            Err(SignalError::Refused(why)) => Err(CheckinError::Refused { id: claims.id, why }),
            Err(SignalError::Store(e)) => Err(CheckinError::Store(e)),
        }
    }

    /// Verifies the token, reads the secret, then records the token as used. The token is
    /// spent only when the secret was read and the ledger accepted it, so any failure before
    /// that leaves it redeemable.
    pub async fn redeem(&self, token: &str, now: u64) -> Result<Redeemed, RedeemError> {
        self.redeem_at(token, now, None).await
    }

    /// [`Self::redeem`], with the base URL of check-in URLs put in the secret when none was
    /// configured (the API Gateway domain the request came through).
    pub async fn redeem_at(&self, token: &str, now: u64, request_base_url: Option<&str>) -> Result<Redeemed, RedeemError> {
        let claims = self.keyring.verify(token, now)?;
        // Tokens only ever name the secrets object of the gateway they were minted for.
        if claims.secrets_key != keys::secrets(&claims.fingerprint) {
            return Err(RedeemError::Token(TokenError::Forged));
        }
        let secret = self.records.secrets(&claims.fingerprint).await?.ok_or(RedeemError::SecretsGone(claims.id))?;
        let id = claims.id.to_string();
        match self.ledger.record_use(&id, claims.fingerprint.as_str(), now, claims.expires_at).await? {
            LedgerOutcome::Recorded => {
                // The secret goes out whatever the journal says: the boot's outcome is a record,
                // not a condition.
                let signal = match &self.journal {
                    None => SignalOutcome::NotRecorded,
                    Some(_) => match self.signal(&claims, &id, Signal::ReachedLinux, now).await {
                        Ok(boot) => SignalOutcome::Recorded(Box::new(boot)),
                        Err(SignalError::Refused(why)) => SignalOutcome::Ignored(why),
                        Err(SignalError::Store(e)) => SignalOutcome::Failed(e.to_string()),
                    },
                };
                let secret = if secret.windows(CHECKIN_URL_PLACEHOLDER.len()).any(|w| w == CHECKIN_URL_PLACEHOLDER) {
                    let url = match &signal {
                        SignalOutcome::Recorded(boot) => self.checkin_url(&claims, boot, request_base_url),
                        _ => String::new(),
                    };
                    fill_checkin_url(secret, &url)
                } else {
                    secret
                };
                Ok(Redeemed { secret, claims, signal })
            }
            LedgerOutcome::AlreadyUsed => Err(RedeemError::Replayed(claims.id)),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn fills_every_checkin_placeholder_and_nothing_else() {
        let out = super::fill_checkin_url(b"a=${checkin_url} b=${checkin_url}\n${other}".to_vec(), "https://x/checkin/T");
        assert_eq!(out, b"a=https://x/checkin/T b=https://x/checkin/T\n${other}");
        assert_eq!(super::fill_checkin_url(b"plain".to_vec(), "u"), b"plain");
    }
}
