//! The fuzz targets' rules, replayed in the test command over every input in the
//! checked-in corpus (`fuzz/corpus/<target>/`): the seeds, and every input a fuzz run
//! found worth keeping or that crashed a target once (a crash is added there as a
//! file, and so becomes a regression test here). `scripts/fuzz` runs the real fuzzer.

use std::path::PathBuf;

use gatehouse::auth::dbsc::{proof_by_key, self_signed_proof};
use gatehouse::domain::oauth::{check_redirect_uri, client_and_redirect, redirect_registered};
use gatehouse::domain::{DeviceToken, PendingToken, SessionToken};
use gatehouse::signing::SigningKeys;
use gatehouse::web::forms::{check_urlencoded, decode_strict};
use gatehouse::web::pages::safe_return_to;

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut inputs: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|_| panic!("{} is missing", dir.display()))
        // (A fuzz run going on at the same time may replace files as we read.)
        .filter_map(|e| std::fs::read(e.ok()?.path()).ok())
        .collect();
    assert!(!inputs.is_empty(), "{target}: an empty corpus");
    // Every input also cut at each length: the shapes a fuzzer reaches first.
    let cuts: Vec<Vec<u8>> = inputs
        .iter()
        .flat_map(|i| (0..i.len()).map(|n| i[..n].to_vec()))
        .collect();
    inputs.extend(cuts);
    inputs
}

#[test]
fn form_decoder_corpus() {
    for data in corpus("form_decoder") {
        let accepted = check_urlencoded(&data).is_ok();
        for plus in [true, false] {
            if let Ok(text) = decode_strict(&data, plus) {
                assert_eq!(decode_strict(&data, plus).ok(), Some(text));
            }
        }
        if accepted {
            for pair in data.split(|b| *b == b'&').filter(|p| !p.is_empty()) {
                let mut parts = pair.splitn(2, |b| *b == b'=');
                assert!(decode_strict(parts.next().unwrap_or_default(), true).is_ok());
                assert!(decode_strict(parts.next().unwrap_or_default(), true).is_ok());
            }
        }
    }
}

#[test]
fn return_to_corpus() {
    for data in corpus("return_to") {
        let raw = String::from_utf8_lossy(&data);
        if let Some(local) = safe_return_to(Some(&raw)) {
            assert!(
                local.starts_with('/') && !local.starts_with("//"),
                "{local:?}"
            );
            let base = url::Url::parse("https://gatehouse.test/").unwrap();
            assert_eq!(base.join(&local).unwrap().origin(), base.origin());
            assert_eq!(safe_return_to(Some(&local)), Some(local.clone()));
        }
    }
    // The seeds hold a known open-redirect shape: it must stay refused.
    assert_eq!(safe_return_to(Some("/.//evil.test")), None);
}

#[test]
fn redirect_uri_corpus() {
    for data in corpus("redirect_uri") {
        let raw = String::from_utf8_lossy(&data);
        if check_redirect_uri(&raw).is_ok() {
            let parsed = url::Url::parse(&raw).unwrap();
            assert!(parsed.fragment().is_none() && parsed.username().is_empty());
        }
        if let Ok((_, _, redirect)) = client_and_redirect(&raw) {
            let registered = vec!["https://rp.test/cb".to_string()];
            assert_eq!(
                redirect_registered(&registered, &redirect),
                redirect == "https://rp.test/cb"
            );
        }
    }
}

#[test]
fn forwarded_corpus() {
    use actix_web::test::TestRequest;
    use gatehouse::web::client::client_ip;
    let trusted = vec!["10.0.0.0/8".parse().unwrap()];
    for data in corpus("forwarded") {
        let (xff, fwd) = data.split_at(data.len() / 2);
        for peer in ["10.0.0.1:4000", "203.0.113.7:4000"] {
            let peer: std::net::SocketAddr = peer.parse().unwrap();
            let mut req = TestRequest::default().peer_addr(peer);
            if let Ok(v) = actix_web::http::header::HeaderValue::from_bytes(xff) {
                req = req.insert_header(("x-forwarded-for", v));
            }
            if let Ok(v) = actix_web::http::header::HeaderValue::from_bytes(fwd) {
                req = req.insert_header(("forwarded", v));
            }
            let ip = client_ip(&req.to_http_request(), &trusted);
            if !trusted[0].contains(&peer.ip()) {
                assert_eq!(ip, peer.ip(), "an untrusted peer chose its address");
            }
        }
    }
}

#[test]
fn tokens_corpus() {
    let keys = SigningKeys::default();
    for data in corpus("tokens") {
        let raw = String::from_utf8_lossy(&data);
        if let Some(t) = SessionToken::parse(&raw) {
            assert_eq!(t.expose(), raw);
        }
        let _ = PendingToken::parse(&raw);
        let _ = DeviceToken::parse(&raw);
        assert!(
            keys.verify::<serde_json::Value>(&raw, Some("at+jwt"))
                .is_err()
        );
    }
}

#[test]
fn dbsc_proof_corpus() {
    const STORED: &str = r#"{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}"#;
    for data in corpus("dbsc_proof") {
        let raw = String::from_utf8_lossy(&data);
        assert!(
            self_signed_proof(&raw).is_none(),
            "an unsigned seed verified"
        );
        assert!(proof_by_key(&raw, STORED).is_none());
        let _ = proof_by_key(&raw, &raw);
    }
}
