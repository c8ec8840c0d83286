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

#[tokio::test]
async fn beyond_the_in_flight_bound_the_answer_is_503_with_retry_after_at_once() {
    // Overload: requests beyond GATEHOUSE_HTTP_MAX_IN_FLIGHT are not queued; health
    // checks are still answered.
    let app = crate::helpers::spawn_app_with(crate::helpers::Options {
        extra: vec![("GATEHOUSE_HTTP_MAX_IN_FLIGHT", "2".into())],
        argon2: gatehouse::settings::Argon2Cost {
            memory_kib: 32 * 1024,
            iterations: 3,
            parallelism: 1,
        },
        argon2_threads: 1,
        ..Default::default()
    })
    .await;
    app.user("load@example.com").await;
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let b = app.browser();
        tasks.push(tokio::spawn(async move {
            let csrf = loop {
                let page = b.get("/login").await;
                if page.status == 200 {
                    break page.csrf();
                }
            };
            b.post_form(
                "/login",
                &[
                    ("csrf_token", &csrf),
                    ("email", "load@example.com"),
                    ("password", PASSWORD),
                ],
            )
            .await
        }));
    }
    // While the burst is in progress, health checks are still answered.
    tokio::time::sleep(std::time::Duration::from_millis(30)).await;
    let health = app.browser().get("/healthz").await;
    assert_eq!(health.status, 200, "health is answered however busy");
    let mut refused = 0;
    let mut signed_in = 0;
    for t in tasks {
        let r = t.await.unwrap();
        match r.status {
            303 => signed_in += 1,
            503 => {
                refused += 1;
                assert_eq!(r.header("retry-after").as_deref(), Some("1"), "{}", r.body);
                assert!(r.body.contains("very busy"), "{}", r.body);
            }
            other => panic!("unexpected {other}: {}", r.body),
        }
    }
    assert!(refused >= 1, "nothing was refused ({signed_in} signed in)");
    assert!(signed_in >= 1, "nothing got through");
    // The bound frees up: once the burst is over, sign-in works.
    let r = app
        .login(&app.browser(), "load@example.com", PASSWORD)
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
}

#[tokio::test]
async fn a_trickled_request_head_is_cut_off() {
    // Slowloris: the head must arrive within GATEHOUSE_HTTP_REQUEST_TIMEOUT.
    let app = crate::helpers::spawn_app_with(crate::helpers::Options {
        extra: vec![("GATEHOUSE_HTTP_REQUEST_TIMEOUT", "1s".into())],
        ..Default::default()
    })
    .await;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", app.port))
        .await
        .unwrap();
    s.write_all(b"GET /login HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut cut = false;
    for i in 0..40 {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        if s.write_all(format!("X-Slow-{i}: y\r\n").as_bytes())
            .await
            .is_err()
        {
            cut = true;
            break;
        }
        let mut buf = [0u8; 256];
        match tokio::time::timeout(std::time::Duration::from_millis(10), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                cut = true;
                break;
            }
            Ok(Ok(n)) => {
                let text = String::from_utf8_lossy(&buf[..n]).to_string();
                assert!(text.starts_with("HTTP/1.1 408"), "{text}");
                cut = true;
                break;
            }
            Err(_) => {}
        }
    }
    assert!(cut, "ten seconds of trickled headers were still being read");
}

#[tokio::test]
async fn a_trickled_body_is_cut_off_with_408() {
    // Slowloris on the body: it must have arrived 10 s after its head, or the request
    // would hold a place among those in progress for as long as it liked.
    let app = spawn_app().await;
    let b = app.browser();
    let page = b.get("/login").await;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", app.port))
        .await
        .unwrap();
    let head = format!(
        "POST /login HTTP/1.1\r\nHost: x\r\nCookie: {}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\n",
        b.cookie_header()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let _ = page;
    let mut answer = String::new();
    for _ in 0..60 {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        if s.write_all(b"x").await.is_err() {
            break;
        }
        let mut buf = [0u8; 512];
        if let Ok(Ok(n)) =
            tokio::time::timeout(std::time::Duration::from_millis(10), s.read(&mut buf)).await
        {
            answer = String::from_utf8_lossy(&buf[..n]).to_string();
            break;
        }
    }
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
}
