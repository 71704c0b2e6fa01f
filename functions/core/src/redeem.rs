//! Redeeming a one-time secrets token.

use crate::model::layout;
use crate::store::{LedgerOutcome, ObjectStore, StoreError, TokenLedger};
use crate::token::{Keyring, TokenClaims, TokenError, TokenId};
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
    Storage(#[from] StoreError),
}

#[derive(Debug)]
pub struct Redeemed {
    pub secret: Vec<u8>,
    pub claims: TokenClaims,
}

pub struct RedeemService {
    store: Arc<dyn ObjectStore>,
    ledger: Arc<dyn TokenLedger>,
    keyring: Arc<Keyring>,
}

impl RedeemService {
    pub fn new(store: Arc<dyn ObjectStore>, ledger: Arc<dyn TokenLedger>, keyring: Arc<Keyring>) -> Self {
        RedeemService { store, ledger, keyring }
    }

    /// Verifies the token, reads the secret, then records the token as used. The token is
    /// spent only when the secret was read and the ledger accepted it, so any failure before
    /// that leaves it redeemable.
    pub async fn redeem(&self, token: &str, now: u64) -> Result<Redeemed, RedeemError> {
        let claims = self.keyring.verify(token, now)?;
        // Tokens only ever name the secrets object of the gateway they were minted for.
        if claims.secrets_key != layout::secrets(&claims.fingerprint) {
            return Err(RedeemError::Token(TokenError::Forged));
        }
        let secret = self.store.get(&claims.secrets_key).await?.ok_or(RedeemError::SecretsGone(claims.id))?.body;
        let id = claims.id.to_string();
        match self.ledger.record_use(&id, claims.fingerprint.as_str(), claims.expires_at).await? {
            LedgerOutcome::Recorded => Ok(Redeemed { secret, claims }),
            LedgerOutcome::AlreadyUsed => Err(RedeemError::Replayed(claims.id)),
        }
    }
}
