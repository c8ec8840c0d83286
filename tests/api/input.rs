//! H1–H3, R5: oversized, malformed and hostile input gets a clear 4xx and changes nothing.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{PASSWORD, spawn_app};

#[tokio::test]
async fn oversized_bodies_are_refused_quickly() {
    // H1
    let app = spawn_app().await;
    let b = app.browser();
    let csrf = b.get("/login").await.csrf();
    let huge = format!(
        "csrf_token={csrf}&email=a%40b.co&password={}",
        "x".repeat(10 * 1024 * 1024)
    );
    let started = std::time::Instant::now();
    let r = b
        .send(
            b.request(reqwest::Method::POST, "/login")
                .header("content-type", "application/x-www-form-urlencoded")
                .body(huge),
        )
        .await;
    assert_eq!(r.status, 413);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert!(r.body.contains("Too large"));

    // Just over the limit, chunked (no Content-Length): counted the same.
    let body = format!(
        "csrf_token={csrf}&email=a%40b.co&password={}",
        "y".repeat(64 * 1024)
    );
    let stream = futures_util::stream::iter(
        body.into_bytes()
            .chunks(8192)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    let r = b
        .send(
            b.request(reqwest::Method::POST, "/login")
                .header("content-type", "application/x-www-form-urlencoded")
                .body(reqwest::Body::wrap_stream(stream)),
        )
        .await;
    assert_eq!(r.status, 413);
}

#[tokio::test]
async fn a_huge_cookie_header_is_refused() {
    // H1
    let app = spawn_app().await;
    let b = app.browser();
    b.set_cookie("big", &"c".repeat(9 * 1024));
    let r = b.get("/login").await;
    assert_eq!(r.status, 431);
    // 100 KB: refused by the HTTP layer itself, still not a 500.
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", app.port))
        .await
        .unwrap();
    let req = format!(
        "GET /login HTTP/1.1\r\nHost: x\r\nCookie: a={}\r\n\r\n",
        "c".repeat(100 * 1024)
    );
    let _ = s.write_all(req.as_bytes()).await;
    let mut buf = vec![0; 256];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(
        head.starts_with("HTTP/1.1 431") || head.starts_with("HTTP/1.1 400") || n == 0,
        "{head}"
    );
}

#[tokio::test]
async fn malformed_forms_get_400_or_415_never_500_never_success() {
    // H2
    let app = spawn_app().await;
    app.user("h2@example.com").await;
    let b = app.browser();
    let csrf = b.get("/login").await.csrf();
    let send = |ct: &'static str, body: String| {
        let b = b.clone();
        async move {
            b.send(
                b.request(reqwest::Method::POST, "/login")
                    .header("content-type", ct)
                    .body(body),
            )
            .await
        }
    };
    let form = "application/x-www-form-urlencoded";
    let cases = vec![
        (
            "json",
            send(
                "application/json",
                format!(r#"{{"csrf_token":"{csrf}","email":"h2@example.com","password":123}}"#),
            )
            .await,
            415,
        ),
        (
            "no content type",
            b.send(b.request(reqwest::Method::POST, "/login").body("email=x"))
                .await,
            415,
        ),
        (
            "missing password",
            send(form, format!("csrf_token={csrf}&email=h2%40example.com")).await,
            400,
        ),
        (
            "duplicated field",
            send(
                form,
                format!("csrf_token={csrf}&email=h2%40example.com&password=x&password=y"),
            )
            .await,
            400,
        ),
        (
            "truncated escape",
            send(
                form,
                format!("csrf_token={csrf}&email=h2%40example.com&password=%4"),
            )
            .await,
            400,
        ),
        (
            "array syntax",
            send(
                form,
                format!("csrf_token={csrf}&email[]=h2%40example.com&password=x"),
            )
            .await,
            400,
        ),
    ];
    for (what, r, want) in cases {
        assert_eq!(r.status, want, "{what}: {}", r.body);
        assert!(app.session_cookie(&b).is_none(), "{what} signed someone in");
    }
    assert_eq!(
        app.count("SELECT count(*) FROM sessions").await,
        1,
        "only the registration's session"
    );
}

#[tokio::test]
async fn bad_percent_encoding_fails_closed() {
    // H3
    let app = spawn_app().await;
    app.user("h3@example.com").await;
    let b = app.browser();
    for path in [
        "/account%zz",
        "/%c0%af",
        "/account%00",
        "/login?return_to=%zz",
        "/login?return_to=%c0%af",
    ] {
        let r = b.get(path).await;
        assert_eq!(r.status, 400, "{path}");
    }
    let csrf = b.get("/login").await.csrf();
    for email in [
        "h3%zz%40example.com",
        "h3%c0%af%40example.com",
        "h3%40example.com%00",
    ] {
        let r = b
            .send(
                b.request(reqwest::Method::POST, "/login")
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(format!(
                        "csrf_token={csrf}&email={email}&password=correct+horse+battery+staple"
                    )),
            )
            .await;
        assert_eq!(r.status, 400, "{email}");
        assert!(app.session_cookie(&b).is_none());
    }
    let _ = PASSWORD;
}

#[tokio::test]
async fn unknown_routes_and_methods_get_generic_pages_and_the_server_lives_on() {
    // R5
    let app = spawn_app().await;
    let b = app.browser();
    let r = b.get("/admin/../../etc/passwd").await;
    assert_eq!(r.status, 404);
    assert!(r.body.contains("Page not found"));
    let r = b.send(b.request(reqwest::Method::DELETE, "/account")).await;
    assert_eq!(r.status, 405);
    assert!(r.body.contains("Method not allowed"));
    let r = b
        .send(b.request(reqwest::Method::PUT, "/login").body("x"))
        .await;
    assert_eq!(r.status, 405);
    for r in [
        b.get("/nope").await,
        b.send(b.request(reqwest::Method::PATCH, "/register")).await,
    ] {
        assert!(!r.body.contains("panicked") && !r.body.contains("src/"));
    }
    assert_eq!(b.get("/healthz").await.status, 200);
}
