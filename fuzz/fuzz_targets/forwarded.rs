//! The client address behind proxies: `X-Forwarded-For` and `Forwarded` (RFC 7239)
//! from a trusted or an untrusted peer. Never a panic; an untrusted peer is always
//! the client itself (checklist M8).
#![no_main]

use actix_web::test::TestRequest;
use gatehouse::web::client::client_ip;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (bool, &[u8], &[u8])| {
    let (trusted_peer, xff, forwarded) = input;
    let peer: std::net::SocketAddr = if trusted_peer {
        "10.0.0.1:4000".parse().unwrap()
    } else {
        "203.0.113.7:4000".parse().unwrap()
    };
    let mut req = TestRequest::default().peer_addr(peer);
    if let Ok(v) = actix_web::http::header::HeaderValue::from_bytes(xff) {
        req = req.insert_header(("x-forwarded-for", v));
    }
    if let Ok(v) = actix_web::http::header::HeaderValue::from_bytes(forwarded) {
        req = req.insert_header(("forwarded", v));
    }
    let req = req.to_http_request();
    let trusted = vec!["10.0.0.0/8".parse().unwrap()];
    let ip = client_ip(&req, &trusted);
    if !trusted_peer {
        assert_eq!(ip, peer.ip());
    }
});
