//! W1: state-changing forms need the session-bound token and a same-site origin.

use crate::helpers::{PASSWORD, PUBLIC_URL, spawn_app};

#[tokio::test]
async fn sign_out_without_a_valid_token_or_from_another_site_is_refused_and_changes_nothing() {
    // W1
    let app = spawn_app().await;
    let b = app.signed_in("w1@example.com").await;
    let csrf = b.get("/account").await.csrf();

    type Pairs<'a> = Vec<(&'a str, &'a str)>;
    let attempts: Vec<(&str, Pairs, Pairs)> = vec![
        ("no token", vec![], vec![]),
        ("wrong token", vec![("csrf_token", "forged")], vec![]),
        (
            "foreign origin",
            vec![("csrf_token", csrf.as_str())],
            vec![("origin", "https://evil.test")],
        ),
        (
            "cross-site fetch",
            vec![("csrf_token", csrf.as_str())],
            vec![("sec-fetch-site", "cross-site")],
        ),
        (
            "null origin",
            vec![("csrf_token", csrf.as_str())],
            vec![("origin", "null")],
        ),
    ];
    for (what, form, headers) in attempts {
        let mut rb = b.request(reqwest::Method::POST, "/logout").form(&form);
        for (k, v) in headers {
            rb = rb.header(k, v);
        }
        let r = b.send(rb).await;
        assert_eq!(r.status, 403, "{what}");
        assert!(r.body.contains("<h1>"), "a page for the person: {what}");
        assert_eq!(
            b.get("/account").await.status,
            200,
            "still signed in after {what}"
        );
    }
    assert_eq!(
        app.count("SELECT count(*) FROM sessions WHERE revoked_at IS NULL")
            .await,
        1
    );

    let r = b.get("/logout").await;
    assert_eq!(r.status, 405, "GET never signs out");
    assert_eq!(b.get("/account").await.status, 200);

    // What a real browser sends for its own form under `Referrer-Policy: no-referrer`:
    // `Origin: null` vouched for by `Sec-Fetch-Site: same-origin`. Without the token it
    // is still refused; with it, it works.
    let r = b
        .send(
            b.request(reqwest::Method::POST, "/logout")
                .form(&[("csrf_token", "forged")])
                .header("origin", "null")
                .header("sec-fetch-site", "same-origin"),
        )
        .await;
    assert_eq!(r.status, 403);
    let second = app.browser();
    assert_eq!(
        app.login(&second, "w1@example.com", PASSWORD).await.status,
        303
    );
    let csrf2 = second.get("/account").await.csrf();
    let r = second
        .send(
            second
                .request(reqwest::Method::POST, "/logout")
                .form(&[("csrf_token", &csrf2)])
                .header("origin", "null")
                .header("sec-fetch-site", "same-origin"),
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert!(second.get("/account").await.is_sign_in_redirect());

    // The same-origin form with its token works.
    let r = b
        .send(
            b.request(reqwest::Method::POST, "/logout")
                .form(&[("csrf_token", &csrf)])
                .header("origin", PUBLIC_URL)
                .header("sec-fetch-site", "same-origin"),
        )
        .await;
    assert_eq!(r.status, 303);
    assert!(b.get("/account").await.is_sign_in_redirect());
}

#[tokio::test]
async fn sign_in_without_the_pre_session_token_makes_no_session() {
    // W1 (login)
    let app = spawn_app().await;
    app.user("w1login@example.com").await;

    // No token at all.
    let b = app.browser();
    b.get("/login").await;
    let r = b
        .post_form(
            "/login",
            &[("email", "w1login@example.com"), ("password", PASSWORD)],
        )
        .await;
    assert_eq!(r.status, 403);
    // A token from another browser's pre-session.
    let other = app.browser();
    let foreign = other.get("/login").await.csrf();
    let r = b
        .post_form(
            "/login",
            &[
                ("csrf_token", &foreign),
                ("email", "w1login@example.com"),
                ("password", PASSWORD),
            ],
        )
        .await;
    assert_eq!(r.status, 403);
    // No pre-session cookie at all.
    let bare = app.browser();
    let r = bare
        .post_form(
            "/login",
            &[
                ("csrf_token", &foreign),
                ("email", "w1login@example.com"),
                ("password", PASSWORD),
            ],
        )
        .await;
    assert_eq!(r.status, 403);
    // A correct token, but posted from another site.
    let own = b.get("/login").await.csrf();
    let r = b
        .send(
            b.request(reqwest::Method::POST, "/login")
                .form(&[
                    ("csrf_token", own.as_str()),
                    ("email", "w1login@example.com"),
                    ("password", PASSWORD),
                ])
                .header("origin", "https://evil.test"),
        )
        .await;
    assert_eq!(r.status, 403);
    assert!(app.session_cookie(&b).is_none());
    assert_eq!(
        app.count("SELECT count(*) FROM sessions WHERE revoked_at IS NULL")
            .await,
        0
    );
}

#[tokio::test]
async fn registration_needs_its_token_too() {
    // W1 (register)
    let app = spawn_app().await;
    let b = app.browser();
    b.get("/register").await;
    let r = b
        .post_form(
            "/register",
            &[
                ("csrf_token", "nope"),
                ("email", "csrf@example.com"),
                ("password", PASSWORD),
            ],
        )
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(app.count("SELECT count(*) FROM users").await, 0);
}
