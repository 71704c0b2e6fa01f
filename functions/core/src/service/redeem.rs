//! Redeeming a one-time secrets token.

use crate::domain::token::{Keyring, TokenClaims, TokenError, TokenId};
use crate::storage::keys;
use crate::storage::records::{RecordError, Records};
use crate::storage::{LedgerOutcome, StoreError, TokenLedger};
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

#[derive(Debug)]
pub struct Redeemed {
    pub secret: Vec<u8>,
    pub claims: TokenClaims,
}

pub struct RedeemService {
    records: Records,
    ledger: Arc<dyn TokenLedger>,
    keyring: Arc<Keyring>,
}

impl RedeemService {
    pub fn new(records: Records, ledger: Arc<dyn TokenLedger>, keyring: Arc<Keyring>) -> Self {
        RedeemService { records, ledger, keyring }
    }

    /// Verifies the token, reads the secret, then records the token as used. The token is
    /// spent only when the secret was read and the ledger accepted it, so any failure before
    /// that leaves it redeemable.
    pub async fn redeem(&self, token: &str, now: u64) -> Result<Redeemed, RedeemError> {
        let claims = self.keyring.verify(token, now)?;
        // Tokens only ever name the secrets object of the gateway they were minted for.
        if claims.secrets_key != keys::secrets(&claims.fingerprint) {
            return Err(RedeemError::Token(TokenError::Forged));
        }
        let secret = self.records.secrets(&claims.fingerprint).await?.ok_or(RedeemError::SecretsGone(claims.id))?;
        let id = claims.id.to_string();
        match self.ledger.record_use(&id, claims.fingerprint.as_str(), now, claims.expires_at).await? {
            LedgerOutcome::Recorded => Ok(Redeemed { secret, claims }),
            LedgerOutcome::AlreadyUsed => Err(RedeemError::Replayed(claims.id)),
        }
    }
}
