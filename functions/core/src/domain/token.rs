//! One-time secrets tokens: a compact payload and its HMAC-SHA256, base64url-encoded.
//!
//! Payload (version 1): `01 | kid_len u8 | kid | id[16] | expires_at u64 BE | fingerprint[32] |
//! key_len u16 BE | secrets object key`. The MAC covers every payload byte. Several keys can be
//! active: the first of the keyring signs, all of them verify (rotation).

use crate::domain::identity::Fingerprint;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use std::fmt;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

const VERSION: u8 = 1;
const MAC_LEN: usize = 32;
/// Longest encoded token accepted before any decoding work.
pub const MAX_TOKEN_CHARS: usize = 1024;
/// Shortest acceptable key (bytes); HMAC-SHA256 keys shorter than the hash weaken it.
pub const MIN_KEY_BYTES: usize = 32;
/// Longest secrets object key a token carries (ours are 81 bytes), so that every token we mint
/// stays within [`MAX_TOKEN_CHARS`] and verifies.
pub const MAX_SECRETS_KEY_BYTES: usize = 256;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MintError {
    #[error("secrets key of {0} bytes is longer than {MAX_SECRETS_KEY_BYTES}")]
    KeyTooLong(usize),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// Not a token at all: wrong characters, length or structure.
    #[error("token is malformed")]
    Malformed,
    /// Structurally fine but not ours: unknown key id or a MAC that does not verify.
    #[error("token signature is not valid")]
    Forged,
    #[error("token expired")]
    Expired,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyringError {
    #[error("token keyring is empty")]
    Empty,
    #[error("token key entry {0} must look like ID:BASE64URL")]
    BadEntry(usize),
    #[error("token key id {0:?} must be 1-16 characters of [A-Za-z0-9_-]")]
    BadId(String),
    #[error("token key {0:?} is shorter than {MIN_KEY_BYTES} bytes")]
    TooShort(String),
    #[error("token key id {0:?} is listed twice")]
    Duplicate(String),
}

/// A random 128-bit token id: what logs and the used-token ledger refer to.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenId(pub [u8; 16]);

impl TokenId {
    pub fn random() -> Self {
        let mut id = [0u8; 16];
        rand::rng().fill_bytes(&mut id);
        TokenId(id)
    }
}

impl fmt::Display for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TokenId({self})")
    }
}

/// What a token grants: one read of one secrets object, before a deadline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenClaims {
    pub id: TokenId,
    pub fingerprint: Fingerprint,
    pub secrets_key: String,
    /// Unix seconds.
    pub expires_at: u64,
    pub key_id: String,
}

struct TokenKey {
    id: String,
    secret: Vec<u8>,
}

/// The HMAC keys in force. The key bytes never leave this type and are never printed.
pub struct Keyring {
    keys: Vec<TokenKey>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|k| k.id.as_str()).collect();
        f.debug_struct("Keyring").field("key_ids", &ids).finish_non_exhaustive()
    }
}

impl Keyring {
    /// Parses `ID:BASE64URL[,ID:BASE64URL…]`; the first entry signs new tokens.
    pub fn parse(spec: &str) -> Result<Self, KeyringError> {
        let mut keys: Vec<TokenKey> = Vec::new();
        for (index, entry) in spec.split([',', '\n']).map(str::trim).filter(|e| !e.is_empty()).enumerate() {
            let (id, b64) = entry.split_once(':').ok_or(KeyringError::BadEntry(index))?;
            if id.is_empty()
                || id.len() > 16
                || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return Err(KeyringError::BadId(id.to_string()));
            }
            let secret =
                URL_SAFE_NO_PAD.decode(b64.trim_end_matches('=')).map_err(|_| KeyringError::BadEntry(index))?;
            if secret.len() < MIN_KEY_BYTES {
                return Err(KeyringError::TooShort(id.to_string()));
            }
            if keys.iter().any(|k| k.id == id) {
                return Err(KeyringError::Duplicate(id.to_string()));
            }
            keys.push(TokenKey { id: id.to_string(), secret });
        }
        if keys.is_empty() {
            return Err(KeyringError::Empty);
        }
        Ok(Keyring { keys })
    }

    /// A fresh keyring entry `ID:BASE64URL` with 32 random bytes.
    pub fn generate_entry(id: &str) -> String {
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut secret);
        format!("{id}:{}", URL_SAFE_NO_PAD.encode(secret))
    }

    pub fn signing_key_id(&self) -> &str {
        &self.keys[0].id
    }

    /// Mints a token for one read of `secrets_key`, valid until `expires_at`.
    pub fn mint(
        &self,
        fingerprint: &Fingerprint,
        secrets_key: &str,
        expires_at: u64,
    ) -> Result<(TokenId, String), MintError> {
        if secrets_key.len() > MAX_SECRETS_KEY_BYTES {
            return Err(MintError::KeyTooLong(secrets_key.len()));
        }
        let id = TokenId::random();
        let key = &self.keys[0];
        let mut payload = Vec::with_capacity(64 + key.id.len() + secrets_key.len());
        payload.push(VERSION);
        payload.push(key.id.len() as u8);
        payload.extend_from_slice(key.id.as_bytes());
        payload.extend_from_slice(&id.0);
        payload.extend_from_slice(&expires_at.to_be_bytes());
        payload.extend_from_slice(&fingerprint.to_bytes());
        payload.extend_from_slice(&(secrets_key.len() as u16).to_be_bytes());
        payload.extend_from_slice(secrets_key.as_bytes());
        let mac = mac_of(&key.secret, &payload);
        payload.extend_from_slice(&mac);
        Ok((id, URL_SAFE_NO_PAD.encode(payload)))
    }

    /// Checks syntax, key id, MAC (in constant time) and expiry, in that order.
    pub fn verify(&self, token: &str, now: u64) -> Result<TokenClaims, TokenError> {
        if token.is_empty() || token.len() > MAX_TOKEN_CHARS {
            return Err(TokenError::Malformed);
        }
        let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| TokenError::Malformed)?;
        if raw.len() < MAC_LEN + 1 {
            return Err(TokenError::Malformed);
        }
        let (payload, mac) = raw.split_at(raw.len() - MAC_LEN);
        let parsed = parse_payload(payload).ok_or(TokenError::Malformed)?;
        let key = self.keys.iter().find(|k| k.id == parsed.key_id).ok_or(TokenError::Forged)?;
        let expected = mac_of(&key.secret, payload);
        if !bool::from(expected.as_slice().ct_eq(mac)) {
            return Err(TokenError::Forged);
        }
        if now >= parsed.expires_at {
            return Err(TokenError::Expired);
        }
        Ok(parsed)
    }
}

fn mac_of(key: &[u8], payload: &[u8]) -> [u8; MAC_LEN] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(payload);
    mac.finalize().into_bytes().into()
}

/// Reads a payload; `None` for anything that is not exactly a version-1 payload.
fn parse_payload(payload: &[u8]) -> Option<TokenClaims> {
    let mut cursor = payload;
    let mut take = |n: usize| -> Option<&[u8]> {
        if cursor.len() < n {
            return None;
        }
        let (head, tail) = cursor.split_at(n);
        cursor = tail;
        Some(head)
    };
    if take(1)?[0] != VERSION {
        return None;
    }
    let kid_len = take(1)?[0] as usize;
    let key_id = std::str::from_utf8(take(kid_len)?).ok()?.to_string();
    let id: [u8; 16] = take(16)?.try_into().ok()?;
    let expires_at = u64::from_be_bytes(take(8)?.try_into().ok()?);
    let fingerprint: [u8; 32] = take(32)?.try_into().ok()?;
    let key_len = u16::from_be_bytes(take(2)?.try_into().ok()?) as usize;
    let secrets_key = std::str::from_utf8(take(key_len)?).ok()?.to_string();
    if !cursor.is_empty() {
        return None;
    }
    Some(TokenClaims {
        id: TokenId(id),
        fingerprint: Fingerprint::from_bytes(&fingerprint),
        secrets_key,
        expires_at,
        key_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the `token` fuzz target: a long secrets key made a token that did not verify.
    #[test]
    fn every_token_minted_verifies_and_long_keys_are_refused() {
        let k = Keyring::parse(&Keyring::generate_entry("abcdefghijklmnop")).unwrap();
        let longest = "é".repeat(MAX_SECRETS_KEY_BYTES / 2);
        let (_, token) = k.mint(&fp(), &longest, 1_000).unwrap();
        assert_eq!(k.verify(&token, 10).unwrap().secrets_key, longest);
        assert_eq!(
            k.mint(&fp(), &"x".repeat(MAX_SECRETS_KEY_BYTES + 1), 1_000),
            Err(MintError::KeyTooLong(MAX_SECRETS_KEY_BYTES + 1))
        );
    }

    fn fp() -> Fingerprint {
        Fingerprint::parse(&"ab".repeat(32)).unwrap()
    }

    fn ring(spec: &[&str]) -> Keyring {
        Keyring::parse(&spec.join(",")).unwrap()
    }

    #[test]
    fn round_trip() {
        let k = Keyring::parse(&Keyring::generate_entry("k1")).unwrap();
        let (id, token) = k.mint(&fp(), "gateways/x/secrets", 1_000).unwrap();
        let claims = k.verify(&token, 999).unwrap();
        assert_eq!(claims.id, id);
        assert_eq!(claims.fingerprint, fp());
        assert_eq!(claims.secrets_key, "gateways/x/secrets");
        assert_eq!(claims.expires_at, 1_000);
        assert_eq!(claims.key_id, "k1");
        assert!(token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
    }

    #[test]
    fn ids_are_random() {
        let k = Keyring::parse(&Keyring::generate_entry("k1")).unwrap();
        let (a, _) = k.mint(&fp(), "s", 10).unwrap();
        let (b, _) = k.mint(&fp(), "s", 10).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn expired_tokens_are_refused() {
        let k = Keyring::parse(&Keyring::generate_entry("k1")).unwrap();
        let (_, token) = k.mint(&fp(), "s", 1_000).unwrap();
        assert_eq!(k.verify(&token, 1_000), Err(TokenError::Expired));
        assert_eq!(k.verify(&token, 5_000), Err(TokenError::Expired));
    }

    #[test]
    fn tampering_any_byte_is_detected() {
        let k = Keyring::parse(&Keyring::generate_entry("k1")).unwrap();
        let (_, token) = k.mint(&fp(), "gateways/x/secrets", 1_000).unwrap();
        let raw = URL_SAFE_NO_PAD.decode(&token).unwrap();
        for i in 0..raw.len() {
            let mut bad = raw.clone();
            bad[i] ^= 0x01;
            let result = k.verify(&URL_SAFE_NO_PAD.encode(&bad), 10);
            assert!(matches!(result, Err(TokenError::Forged) | Err(TokenError::Malformed)), "byte {i}: {result:?}");
        }
    }

    #[test]
    fn tampering_each_field_is_forged() {
        let k = Keyring::parse(&Keyring::generate_entry("k1")).unwrap();
        let (_, token) = k.mint(&fp(), "gateways/x/secrets", 1_000).unwrap();
        let raw = URL_SAFE_NO_PAD.decode(&token).unwrap();
        // Offsets: version 0, kid_len 1, kid 2..4, id 4..20, expiry 20..28, fp 28..60, key 62..
        for (field, offset) in
            [("id", 4), ("expiry", 27), ("fingerprint", 30), ("secrets key", 62), ("mac", raw.len() - 1)]
        {
            let mut bad = raw.clone();
            bad[offset] ^= 0x01;
            assert_eq!(k.verify(&URL_SAFE_NO_PAD.encode(&bad), 10), Err(TokenError::Forged), "{field}");
        }
    }

    #[test]
    fn wrong_key_is_forged() {
        let a = ring(&[&Keyring::generate_entry("k1")]);
        let b = ring(&[&Keyring::generate_entry("k1")]);
        let (_, token) = a.mint(&fp(), "s", 1_000).unwrap();
        assert_eq!(b.verify(&token, 10), Err(TokenError::Forged));
        let c = ring(&[&Keyring::generate_entry("other")]);
        assert_eq!(c.verify(&token, 10), Err(TokenError::Forged));
    }

    #[test]
    fn rotation_signs_with_first_and_accepts_all() {
        let old = Keyring::generate_entry("old");
        let new = Keyring::generate_entry("new");
        let before = ring(&[&old]);
        let after = ring(&[&new, &old]);
        let (_, old_token) = before.mint(&fp(), "s", 1_000).unwrap();
        assert!(after.verify(&old_token, 10).is_ok());
        let (_, new_token) = after.mint(&fp(), "s", 1_000).unwrap();
        assert_eq!(after.verify(&new_token, 10).unwrap().key_id, "new");
        assert_eq!(before.verify(&new_token, 10), Err(TokenError::Forged));
    }

    #[test]
    fn malformed_tokens() {
        let k = Keyring::parse(&Keyring::generate_entry("k1")).unwrap();
        for bad in ["", "!!!", "abc", &"A".repeat(MAX_TOKEN_CHARS + 1), "AQ", &URL_SAFE_NO_PAD.encode([2u8; 80])] {
            assert_eq!(k.verify(bad, 10), Err(TokenError::Malformed), "{bad:?}");
        }
        // A valid token with bytes appended is no longer a token.
        let (_, token) = k.mint(&fp(), "s", 1_000).unwrap();
        let mut raw = URL_SAFE_NO_PAD.decode(&token).unwrap();
        raw.insert(raw.len() - MAC_LEN, 0);
        assert_eq!(k.verify(&URL_SAFE_NO_PAD.encode(&raw), 10), Err(TokenError::Malformed));
    }

    #[test]
    fn keyring_parsing() {
        assert_eq!(Keyring::parse("").unwrap_err(), KeyringError::Empty);
        assert_eq!(Keyring::parse("nocolon").unwrap_err(), KeyringError::BadEntry(0));
        assert_eq!(Keyring::parse("k:AAAA").unwrap_err(), KeyringError::TooShort("k".into()));
        assert!(matches!(Keyring::parse("bad id:AAAA"), Err(KeyringError::BadId(_))));
        let e = Keyring::generate_entry("k");
        assert_eq!(Keyring::parse(&format!("{e},{e}")).unwrap_err(), KeyringError::Duplicate("k".into()));
        let k = Keyring::parse(&format!(" {e} \n")).unwrap();
        assert_eq!(k.signing_key_id(), "k");
        assert!(!format!("{k:?}").contains(e.split(':').nth(1).unwrap()));
    }
}
