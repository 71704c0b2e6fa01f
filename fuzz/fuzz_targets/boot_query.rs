//! The boot query parser (`mac`, `platform`, `buildarch`) on hostile query strings.
#![no_main]

use ipxe_edge_core::domain::query::BootQuery;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(query) = BootQuery::parse(text) {
        // Whatever was accepted is one of the known architectures.
        assert!(ipxe_edge_core::domain::query::KNOWN_ARCHES.contains(&query.arch()));
    }
    let pairs: Vec<(&str, &str)> = text.split('&').map(|p| p.split_once('=').unwrap_or((p, ""))).collect();
    let _ = BootQuery::from_pairs(pairs);
});
