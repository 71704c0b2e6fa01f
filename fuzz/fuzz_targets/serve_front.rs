//! `serve`'s request front: raw HTTP/1.1 request heads from the network, parsed as hyper's
//! parser would and turned into the request the pipeline sees. Never panics, and
//! the client's Host and X-Forwarded-* never reach the request.
#![no_main]

use ipxe_edge::serve::front::request_for_fuzzing;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut parsed = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(head_len)) = parsed.parse(data) else { return };
    let mut builder = http::Request::builder().method(parsed.method.unwrap_or("GET")).uri(parsed.path.unwrap_or("/"));
    for h in parsed.headers.iter() {
        builder = builder.header(h.name, h.value);
    }
    let Ok(request) = builder.body(()) else { return };
    let (parts, ()) = request.into_parts();
    let body = bytes::Bytes::copy_from_slice(&data[head_len..]);
    if let Ok(request) = request_for_fuzzing(&parts, body) {
        assert!(request.headers().get("host").is_none());
        assert!(!request.headers().keys().any(|k| k.as_str().starts_with("x-forwarded-")));
    }
});
