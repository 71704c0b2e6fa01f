//! The embedded S3 endpoint's key resolver on hostile request paths: a path decoded once (as
//! the endpoint decodes it) into bucket and key; whatever `locate` allows resolves, by the file
//! store's own resolver too, to a file under that bucket and the key's first folder, and the
//! store's second wall (`confined`) answers every input without panicking.
#![no_main]

use ipxe_edge::embedded::s3_location::{confined, locate};
use libfuzzer_sys::fuzz_target;
use path_absolutize::Absolutize;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else { return };
    let Ok(path) = urlencoding::decode(raw) else { return };
    let path = path.trim_start_matches('/');
    let (bucket, key) = path.split_once('/').unwrap_or((path, ""));
    let root = Path::new("/srv/ipxe-edge/s3");
    let walled = confined(root, bucket, key);
    let Ok(file) = locate(root, bucket, key) else { return };
    let folder = key.split('/').next().unwrap_or_default();
    assert!(!folder.is_empty(), "an allowed key has a first segment: {key:?}");
    assert!(file.starts_with(root.join(bucket).join(folder)), "{bucket:?}/{key:?} resolves to {}", file.display());
    // The file store resolves the same path by its own rules.
    let store = Path::new(bucket).join(key).absolutize_virtually(root).map(|p| p.into_owned());
    assert_eq!(store.ok().as_ref(), Some(&file), "{bucket:?}/{key:?}: the store's resolver disagrees");
    assert_eq!(walled.as_ref(), Ok(&file), "the second wall refuses what the first allows: {bucket:?}/{key:?}");
});
