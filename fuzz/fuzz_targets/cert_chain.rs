//! Client certificate parsing and chain verification: PEM text and DER chains from a hostile
//! client (or a hostile proxy header) never panic, and nothing but a chain to the trusted CA
//! verifies.
#![no_main]

use ipxe_edge_core::domain::identity::{
    decode_escaped_pem, pem_certificates, ChainVerifier, TrustBundle, DEFAULT_CLOCK_SKEW,
};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn verifier() -> &'static ChainVerifier {
    static V: OnceLock<ChainVerifier> = OnceLock::new();
    V.get_or_init(|| {
        ChainVerifier::new(TrustBundle::from_pem(include_bytes!("../fixtures/ca.pem")).unwrap(), DEFAULT_CLOCK_SKEW)
    })
}

fuzz_target!(|data: &[u8]| {
    let now = 1_795_682_400;
    let _ = verifier().verify_pem(data, now);
    if let Ok(ders) = pem_certificates(data) {
        let _ = verifier().verify_der_chain(&ders, now);
    }
    // The bytes as a DER chain split at a fuzz-chosen point.
    if data.len() > 2 {
        let cut = (data[0] as usize * 256 + data[1] as usize) % data.len();
        let chain = vec![data[2..cut.max(2)].to_vec(), data[cut.max(2)..].to_vec()];
        // The fixture CA signed nothing the fuzzer can produce: no chain may verify.
        assert!(verifier().verify_der_chain(&chain, now).is_err());
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = decode_escaped_pem(text);
    }
});
