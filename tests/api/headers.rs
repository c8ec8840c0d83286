//! W2–W4: headers on every response, errors included.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{Resp, spawn_app};

fn assert_baseline(r: &Resp, what: &str) {
    let csp = r
        .header("content-security-policy")
        .unwrap_or_else(|| panic!("{what}: no CSP"));
    for directive in [
        "default-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
        "script-src 'nonce-",
    ] {
        assert!(
            csp.contains(directive),
            "{what}: CSP {csp} lacks {directive}"
        );
    }
    assert_eq!(
        r.header("x-content-type-options").as_deref(),
        Some("nosniff"),
        "{what}"
    );
    assert_eq!(
        r.header("referrer-policy").as_deref(),
        Some("no-referrer"),
        "{what}"
    );
    let hsts = r.header("strict-transport-security").unwrap_or_default();
    assert!(
        hsts.contains("max-age=31536000") && hsts.contains("includeSubDomains"),
        "{what}: HSTS {hsts}"
    );
    assert!(r.header("server").is_none(), "{what}: no Server header");
    let ct = r.header("content-type").unwrap_or_default();
    // JSON is UTF-8 by definition (RFC 8259 §8.1); text types must say so. A bare
    // redirect has no body to label.
    assert!(
        ct.contains("charset=utf-8")
            || ct == "application/json"
            || (r.status == 303 && r.body.is_empty()),
        "{what}: content type {ct}"
    );
}

#[tokio::test]
async fn every_page_and_error_carries_the_baseline_headers() {
    // W2, W3
    let app = spawn_app().await;
    let b = app.signed_in("w3@example.com").await;
    let anon = app.browser();
    let cases = vec![
        ("login 200", anon.get("/login").await),
        ("account 200", b.get("/account").await),
        ("404", anon.get("/no/such/page").await),
        ("401", anon.post_form("/account/email", &[]).await),
        ("303 to sign in", anon.get("/account").await),
        ("405", anon.get("/logout").await),
        ("403", b.post_form("/logout", &[("csrf_token", "x")]).await),
        ("400", anon.get("/login?a=%zz").await),
        ("healthz", anon.get("/healthz").await),
    ];
    for (what, r) in &cases {
        assert_baseline(r, what);
    }
    let nonce_of = |r: &Resp| r.header("content-security-policy").unwrap();
    assert_ne!(
        nonce_of(&cases[0].1),
        nonce_of(&anon.get("/login").await),
        "a fresh nonce per response"
    );
    // The page's one script (progressive enhancement) carries the response's nonce,
    // and nothing else on the page is a script.
    let login = anon.get("/login").await;
    let csp = login.header("content-security-policy").unwrap();
    let nonce = csp
        .split("'nonce-")
        .nth(1)
        .and_then(|s| s.split('\'').next())
        .unwrap();
    assert!(
        login.body.contains(&format!(
            r#"<script src="/static/js/gatehouse.js" nonce="{nonce}" defer></script>"#
        )),
        "{}",
        login.body
    );
    // The passkey ceremonies' script, with the same nonce; no other script.
    assert!(
        login.body.contains(&format!(
            r#"<script src="/static/js/passkeys.js" nonce="{nonce}" defer></script>"#
        )),
        "{}",
        login.body
    );
    assert_eq!(login.body.matches("<script").count(), 2);
    let js = anon.get("/static/js/gatehouse.js").await;
    assert_eq!(js.status, 200);
    assert_eq!(
        js.header("content-type").as_deref(),
        Some("text/javascript; charset=utf-8")
    );
    let not_found = &cases[2].1;
    assert_eq!(not_found.status, 404);
    assert!(
        not_found.body.contains("Page not found"),
        "a real page: {}",
        not_found.body
    );
}

#[tokio::test]
async fn trace_is_refused() {
    // W3
    let app = spawn_app().await;
    let b = app.browser();
    let r = b.send(b.request(reqwest::Method::TRACE, "/login")).await;
    assert_eq!(r.status, 405);
    assert_baseline(&r, "TRACE");
}

#[tokio::test]
async fn origins_are_never_reflected() {
    // W4
    let app = spawn_app().await;
    let b = app.signed_in("w4@example.com").await;
    for path in ["/account", "/login", "/healthz"] {
        let r = b
            .send(
                b.request(reqwest::Method::GET, path)
                    .header("origin", "https://evil.test"),
            )
            .await;
        assert!(r.header("access-control-allow-origin").is_none(), "{path}");
        assert!(
            r.header("access-control-allow-credentials").is_none(),
            "{path}"
        );
        let r = b
            .send(
                b.request(reqwest::Method::OPTIONS, path)
                    .header("origin", "https://evil.test")
                    .header("access-control-request-method", "POST"),
            )
            .await;
        assert!(
            r.header("access-control-allow-origin").is_none(),
            "preflight {path}"
        );
    }
}

#[tokio::test]
async fn a_request_with_both_content_length_and_chunked_encoding_is_refused() {
    // H6 (smuggling)
    let app = spawn_app().await;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", app.port))
        .await
        .unwrap();
    s.write_all(
        b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    .await
    .unwrap();
    let mut buf = vec![0; 1024];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
}

#[tokio::test]
async fn header_injection_through_return_to_is_impossible() {
    // H6 (CRLF)
    let app = spawn_app().await;
    let b = app.browser();
    let r = b
        .get("/login?return_to=/%0d%0aSet-Cookie:%20injected=1")
        .await;
    assert!(r.status == 200 || r.status == 400, "{}", r.status);
    assert!(r.set_cookies().iter().all(|c| c.name() != "injected"));
    assert!(
        r.headers
            .get("set-cookie")
            .iter()
            .all(|v| !v.to_str().unwrap_or("").contains("injected"))
    );
}
