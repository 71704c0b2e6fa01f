//! Authenticode signatures of PE images (`release create` reads every kernel's): hostile bytes
//! never panic, and an image read as signed names at least one signer by a well-formed
//! fingerprint. The seeds are a minimal PE image, unsigned and signed by sbsign.
#![no_main]

use ipxe_edge_pki::authenticode::{examine, issued_by, pe_machine, PeSignature};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = pe_machine(data);
    if let PeSignature::Signed(signers) = examine(data) {
        assert!(!signers.is_empty(), "signed without a signer");
        for signer in &signers {
            assert!(signer.sha256.len() == 64 && signer.sha256.bytes().all(|b| b.is_ascii_hexdigit()));
            assert!(issued_by(&signer.der, &signer.der), "a certificate is its own issuer for a db entry of itself");
        }
    }
});
