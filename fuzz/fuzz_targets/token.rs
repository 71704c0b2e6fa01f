//! Secrets tokens: decoding and verifying hostile text never panics, and no token the fuzzer
//! makes up verifies (it cannot know the key). Tokens we mint always verify.
#![no_main]

use ipxe_edge_core::domain::identity::Fingerprint;
use ipxe_edge_core::domain::token::{Grant, Keyring};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn keyring() -> &'static Keyring {
    static K: OnceLock<Keyring> = OnceLock::new();
    K.get_or_init(|| Keyring::parse(&Keyring::generate_entry("k1")).unwrap())
}

fuzz_target!(|data: &[u8]| {
    let now = 1_795_682_400;
    if let Ok(text) = std::str::from_utf8(data) {
        assert!(keyring().verify(text, now).is_err(), "a made-up token verified");
        let _ = Keyring::parse(text);
    }
    // Round trip with fuzz-chosen claims: every grant we can mint verifies as itself.
    if data.len() >= 66 {
        let fp = Fingerprint::from_bytes(data[..32].try_into().unwrap());
        let expires = now + 1 + u64::from(data[32]);
        let grant = match data[33] % 3 {
            0 => Grant::Secrets,
            1 => Grant::Checkin { boot_id: String::from_utf8_lossy(&data[34..]).into_owned() },
            _ => Grant::Renewal { renewed: Fingerprint::from_bytes(data[34..66].try_into().unwrap()) },
        };
        let Ok((id, token)) = keyring().mint(&fp, &grant, expires) else {
            assert!(matches!(grant, Grant::Checkin { .. }), "only a boot id can be refused");
            return;
        };
        let claims = keyring().verify(&token, now).expect("minted token verifies");
        assert_eq!(claims.id, id);
        assert_eq!(claims.fingerprint, fp);
        assert_eq!(claims.grant, grant);
        assert!(keyring().verify(&token, expires + 1).is_err(), "expired token verified");
    }
});
