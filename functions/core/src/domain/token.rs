//! One-time tokens: a compact payload naming what it opens ([`Grant`]) and its HMAC-SHA256,
//! base64url-encoded.
//!
//! Payload (version 2): `02 | kid_len u8 | kid | id[16] | expires_at u64 BE | fingerprint[32] |
//! grant`, where grant is `01` (secrets), `02 boot_id[16]` (a boot's check-in) or
//! `03 fingerprint[32]` (a renewal). Version 1 tokens (the grant spelled as a key string) are
//! still accepted, so tokens handed out before an upgrade keep working. The MAC covers every
//! payload byte. Several keys can be active: the first of the keyring signs, all of them verify
//! (rotation).

use crate::domain::identity::Fingerprint;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use std::fmt;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

const VERSION_1: u8 = 1;
const VERSION: u8 = 2;
const MAC_LEN: usize = 32;
/// Longest encoded token accepted before any decoding work.
pub const MAX_TOKEN_CHARS: usize = 1024;
/// Shortest acceptable key (bytes); HMAC-SHA256 keys shorter than the hash weaken it.
pub const MIN_KEY_BYTES: usize = 32;

const GRANT_SECRETS: u8 = 1;
const GRANT_CHECKIN: u8 = 2;
const GRANT_RENEWAL: u8 = 3;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MintError {
    #[error("boot id {0:?} is not 32 hexadecimal digits")]
    BadBootId(String),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// Not a token at all: wrong characters, length or structure.
    #[error("token is malformed")]
    Malformed,
    /// Structurally fine but not ours: unknown key id, a MAC that does not verify, or a grant
    /// the endpoint does not serve.
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

/// What a token opens for the gateway it was minted for. Each public endpoint serves one kind
/// and refuses the others as forged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Grant {
    /// One read of the gateway's secrets (`/secrets/{token}`).
    Secrets,
    /// The check-in of one boot (`/checkin/{token}`); boot ids are 32 hexadecimal digits.
    Checkin { boot_id: String },
    /// Collecting, once, the certificate the gateway was renewed to (`/renewal/{token}`).
    Renewal { renewed: Fingerprint },
}

/// Public path prefix of each grant's endpoint: the only place these paths are spelled.
pub const SECRETS_PREFIX: &str = "/secrets/";
pub const CHECKIN_PREFIX: &str = "/checkin/";
pub const RENEWAL_PREFIX: &str = "/renewal/";

impl Grant {
    /// The path prefix of the endpoint this grant opens.
    pub fn path_prefix(&self) -> &'static str {
        match self {
            Grant::Secrets => SECRETS_PREFIX,
            Grant::Checkin { .. } => CHECKIN_PREFIX,
            Grant::Renewal { .. } => RENEWAL_PREFIX,
        }
    }

    /// The URL that redeems `token` (minted for this grant) under `base` (no trailing slash).
    pub fn url(&self, base: &str, token: &str) -> String {
        format!("{base}{}{token}", self.path_prefix())
    }
}

/// A verified token: who it was minted for, what it opens, until when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenClaims {
    pub id: TokenId,
    pub fingerprint: Fingerprint,
    pub grant: Grant,
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

    /// Mints a token opening `grant` for the gateway `fingerprint`, valid until `expires_at`.
    pub fn mint(
        &self,
        fingerprint: &Fingerprint,
        grant: &Grant,
        expires_at: u64,
    ) -> Result<(TokenId, String), MintError> {
        let mut encoded = Vec::with_capacity(33);
        match grant {
            Grant::Secrets => encoded.push(GRANT_SECRETS),
            Grant::Checkin { boot_id } => {
                let raw = boot_id_bytes(boot_id).ok_or_else(|| MintError::BadBootId(boot_id.clone()))?;
                encoded.push(GRANT_CHECKIN);
                encoded.extend_from_slice(&raw);
            }
            Grant::Renewal { renewed } => {
                encoded.push(GRANT_RENEWAL);
                encoded.extend_from_slice(&renewed.to_bytes());
            }
        }
        Ok(self.sign(VERSION, fingerprint, expires_at, &encoded))
    }

    /// A token of the version-1 format, whose grant is a key string. Only for tests that check
    /// tokens handed out before an upgrade still verify (and that a made-up key opens nothing).
    #[doc(hidden)]
    pub fn mint_v1(&self, fingerprint: &Fingerprint, key: &str, expires_at: u64) -> (TokenId, String) {
        let mut encoded = Vec::with_capacity(2 + key.len());
        encoded.extend_from_slice(&(key.len() as u16).to_be_bytes());
        encoded.extend_from_slice(key.as_bytes());
        self.sign(VERSION_1, fingerprint, expires_at, &encoded)
    }

    fn sign(&self, version: u8, fingerprint: &Fingerprint, expires_at: u64, grant: &[u8]) -> (TokenId, String) {
        let id = TokenId::random();
        let key = &self.keys[0];
        let mut payload = Vec::with_capacity(60 + key.id.len() + grant.len() + MAC_LEN);
        payload.push(version);
        payload.push(key.id.len() as u8);
        payload.extend_from_slice(key.id.as_bytes());
        payload.extend_from_slice(&id.0);
        payload.extend_from_slice(&expires_at.to_be_bytes());
        payload.extend_from_slice(&fingerprint.to_bytes());
        payload.extend_from_slice(grant);
        let mac = mac_of(&key.secret, &payload);
        payload.extend_from_slice(&mac);
        (id, URL_SAFE_NO_PAD.encode(payload))
    }

    /// Checks syntax, key id, MAC (in constant time), grant and expiry, in that order.
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
        // A version-1 key string that names no grant of this gateway was never ours to mint.
        let grant = parsed.grant.ok_or(TokenError::Forged)?;
        if now >= parsed.expires_at {
            return Err(TokenError::Expired);
        }
        Ok(TokenClaims {
            id: parsed.id,
            fingerprint: parsed.fingerprint,
            grant,
            expires_at: parsed.expires_at,
            key_id: parsed.key_id,
        })
    }
}

fn mac_of(key: &[u8], payload: &[u8]) -> [u8; MAC_LEN] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(payload);
    mac.finalize().into_bytes().into()
}

/// A boot id's 16 bytes; `None` unless it is exactly 32 lowercase hexadecimal digits (the form
/// [`TokenId`] prints, so the decoded id reads back the same).
fn boot_id_bytes(boot_id: &str) -> Option<[u8; 16]> {
    if boot_id.len() != 32 || !boot_id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return None;
    }
    hex::decode(boot_id).ok()?.try_into().ok()
}

/// A payload before its MAC is checked; `grant` is `None` for a well-formed version-1 key string
/// that names nothing this gateway could have been granted.
struct Payload {
    id: TokenId,
    fingerprint: Fingerprint,
    grant: Option<Grant>,
    expires_at: u64,
    key_id: String,
}

/// Reads a payload; `None` for anything that is not exactly a version-1 or version-2 payload.
fn parse_payload(payload: &[u8]) -> Option<Payload> {
    let mut cursor = payload;
    let mut take = |n: usize| -> Option<&[u8]> {
        if cursor.len() < n {
            return None;
        }
        let (head, tail) = cursor.split_at(n);
        cursor = tail;
        Some(head)
    };
    let version = take(1)?[0];
    if version != VERSION && version != VERSION_1 {
        return None;
    }
    let kid_len = take(1)?[0] as usize;
    let key_id = std::str::from_utf8(take(kid_len)?).ok()?.to_string();
    let id: [u8; 16] = take(16)?.try_into().ok()?;
    let expires_at = u64::from_be_bytes(take(8)?.try_into().ok()?);
    let fingerprint = Fingerprint::from_bytes(&take(32)?.try_into().ok()?);
    let grant = if version == VERSION_1 {
        let key_len = u16::from_be_bytes(take(2)?.try_into().ok()?) as usize;
        let key = std::str::from_utf8(take(key_len)?).ok()?;
        v1_grant(&fingerprint, key)
    } else {
        Some(match take(1)?[0] {
            GRANT_SECRETS => Grant::Secrets,
            GRANT_CHECKIN => Grant::Checkin { boot_id: hex::encode(take(16)?) },
            GRANT_RENEWAL => Grant::Renewal { renewed: Fingerprint::from_bytes(&take(32)?.try_into().ok()?) },
            _ => return None,
        })
    };
    if !cursor.is_empty() {
        return None;
    }
    Some(Payload { id: TokenId(id), fingerprint, grant, expires_at, key_id })
}

/// The grant a version-1 token spelled as `gateways/<fp>/secrets`, `gateways/<fp>/checkin/<boot>`
/// or `gateways/<fp>/renewal/<renewed fp>`, for the gateway it was minted for.
fn v1_grant(fingerprint: &Fingerprint, key: &str) -> Option<Grant> {
    let rest = key.strip_prefix("gateways/")?.strip_prefix(fingerprint.as_str())?;
    if rest == "/secrets" {
        return Some(Grant::Secrets);
    }
    if let Some(boot_id) = rest.strip_prefix("/checkin/") {
        return boot_id_bytes(boot_id).map(|_| Grant::Checkin { boot_id: boot_id.to_string() });
    }
    let renewed = rest.strip_prefix("/renewal/")?;
    Fingerprint::parse(renewed).ok().filter(|f| f.as_str() == renewed).map(|renewed| Grant::Renewal { renewed })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp() -> Fingerprint {
        Fingerprint::parse(&"ab".repeat(32)).unwrap()
    }

    fn ring(spec: &[&str]) -> Keyring {
        Keyring::parse(&spec.join(",")).unwrap()
    }

    fn checkin() -> Grant {
        Grant::Checkin { boot_id: "0123456789abcdef0123456789abcdef".into() }
    }

    #[test]
    fn round_trip_of_every_grant() {
        let k = Keyring::parse(&Keyring::generate_entry("k1")).unwrap();
        let renewal = Grant::Renewal { renewed: Fingerprint::of_der(b"renewed") };
        for grant in [Grant::Secrets, checkin(), renewal] {
            let (id, token) = k.mint(&fp(), &grant, 1_000).unwrap();
            let claims = k.verify(&token, 999).unwrap();
            assert_eq!(claims.id, id);
            assert_eq!(claims.fingerprint, fp());
            assert_eq!(claims.grant, grant);
            assert_eq!(claims.expires_at, 1_000);
            assert_eq!(claims.key_id, "k1");
            assert!(token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        }
    }

    #[test]
    fn boot_ids_that_would_not_read_back_are_refused() {
        let k = Keyring::parse(&Keyring::generate_entry("k1")).unwrap();
        for bad in ["", "0123", &"A".repeat(32), &"g".repeat(32), &"0".repeat(33)] {
            let grant = Grant::Checkin { boot_id: bad.to_string() };
            assert_eq!(k.mint(&fp(), &grant, 10), Err(MintError::BadBootId(bad.to_string())));
        }
    }

    /// Tokens handed out before the grant had its own encoding still open what they opened,
    /// and a key string naming anything else (or another gateway's objects) opens nothing.
    #[test]
    fn version_1_tokens_keep_their_grant() {
        let k = Keyring::parse(&Keyring::generate_entry("k1")).unwrap();
        let renewed = Fingerprint::of_der(b"renewed");
        let boot = "0123456789abcdef0123456789abcdef";
        for (key, grant) in [
            (format!("gateways/{}/secrets", fp()), Grant::Secrets),
            (format!("gateways/{}/checkin/{boot}", fp()), checkin()),
            (format!("gateways/{}/renewal/{renewed}", fp()), Grant::Renewal { renewed: renewed.clone() }),
        ] {
            let (id, token) = k.mint_v1(&fp(), &key, 1_000);
            let claims = k.verify(&token, 10).unwrap();
            assert_eq!((claims.id, claims.grant), (id, grant), "{key}");
        }
        let other = Fingerprint::of_der(b"other");
        for key in [
            "releases/r1/manifest.json".to_string(),
            format!("gateways/{other}/secrets"),
            format!("gateways/{}/checkin/XYZ", fp()),
            format!("gateways/{}/checkin/../x", fp()),
            format!("gateways/{}/renewal/{renewed}/../x", fp()),
            format!("gateways/{}/renewal/{}", fp(), "AB".repeat(32)),
        ] {
            let (_, token) = k.mint_v1(&fp(), &key, 1_000);
            assert_eq!(k.verify(&token, 10), Err(TokenError::Forged), "{key}");
        }
    }

    #[test]
    fn ids_are_random() {
        let k = Keyring::parse(&Keyring::generate_entry("k1")).unwrap();
        let (a, _) = k.mint(&fp(), &Grant::Secrets, 10).unwrap();
        let (b, _) = k.mint(&fp(), &Grant::Secrets, 10).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn expired_tokens_are_refused() {
        let k = Keyring::parse(&Keyring::generate_entry("k1")).unwrap();
        let (_, token) = k.mint(&fp(), &Grant::Secrets, 1_000).unwrap();
        assert_eq!(k.verify(&token, 1_000), Err(TokenError::Expired));
        assert_eq!(k.verify(&token, 5_000), Err(TokenError::Expired));
    }

    #[test]
    fn tampering_any_byte_is_detected() {
        let k = Keyring::parse(&Keyring::generate_entry("k1")).unwrap();
        let (_, token) = k.mint(&fp(), &checkin(), 1_000).unwrap();
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
        let (_, token) = k.mint(&fp(), &checkin(), 1_000).unwrap();
        let raw = URL_SAFE_NO_PAD.decode(&token).unwrap();
        // Offsets: version 0, kid_len 1, kid 2..4, id 4..20, expiry 20..28, fp 28..60, grant 60..77
        for (field, offset) in [("id", 4), ("expiry", 27), ("fingerprint", 30), ("boot id", 70), ("mac", raw.len() - 1)]
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
        let (_, token) = a.mint(&fp(), &Grant::Secrets, 1_000).unwrap();
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
        let (_, old_token) = before.mint(&fp(), &Grant::Secrets, 1_000).unwrap();
        assert!(after.verify(&old_token, 10).is_ok());
        let (_, new_token) = after.mint(&fp(), &Grant::Secrets, 1_000).unwrap();
        assert_eq!(after.verify(&new_token, 10).unwrap().key_id, "new");
        assert_eq!(before.verify(&new_token, 10), Err(TokenError::Forged));
    }

    #[test]
    fn malformed_tokens() {
        let k = Keyring::parse(&Keyring::generate_entry("k1")).unwrap();
        for bad in ["", "!!!", "abc", &"A".repeat(MAX_TOKEN_CHARS + 1), "AQ", &URL_SAFE_NO_PAD.encode([9u8; 80])] {
            assert_eq!(k.verify(bad, 10), Err(TokenError::Malformed), "{bad:?}");
        }
        // A valid token with bytes appended is no longer a token.
        let (_, token) = k.mint(&fp(), &Grant::Secrets, 1_000).unwrap();
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
