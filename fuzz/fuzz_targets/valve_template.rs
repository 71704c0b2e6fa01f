//! The valve-infra `boot.ipxe` converter on hostile files: never panics, always yields an
//! iPXE script, and every unknown name it reports occurs in the input.
#![no_main]

use ipxe_edge::ops::import::convert_template;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (template, unknown) = convert_template(text);
    assert!(template.starts_with("#!ipxe"));
    for name in unknown {
        assert!(text.contains(&name), "{name:?} is not in the input");
    }
});
