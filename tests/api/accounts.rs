//! Registration, sign-in and sign-out as a person does it.

use crate::helpers::{Options, PASSWORD, spawn_app, spawn_app_with};

#[tokio::test]
async fn register_sign_in_see_account_and_sign_out() {
    let app = spawn_app().await;
    let b = app.browser();

    let page = b.get("/register").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains(r#"autocomplete="new-password""#));
    assert!(page.body.contains(r#"autocomplete="username""#));
    assert!(page.body.contains("<label for=\"email\">"));

    let r = app.register(&b, "  Alice@Example.com ", PASSWORD).await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.location(), "/account");
    let account = b.get("/account").await;
    assert_eq!(account.status, 200);
    assert!(
        account.body.contains("alice@example.com"),
        "the address is shown in canonical form"
    );
    assert!(account.body.contains("Sign out"));

    // Sign out, then sign in again with the address typed differently.
    let out = b
        .post_form("/logout", &[("csrf_token", &account.csrf())])
        .await;
    assert_eq!(out.status, 303);
    assert_eq!(out.location(), "/login");
    assert!(b.get("/account").await.is_sign_in_redirect());

    let login_page = b.get("/login").await;
    assert!(
        login_page
            .body
            .contains(r#"autocomplete="current-password""#)
    );
    let r = app.login(&b, "ALICE@example.com", PASSWORD).await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(b.get("/account").await.status, 200);
    assert_eq!(app.count("SELECT count(*) FROM users").await, 1);
}

#[tokio::test]
async fn signed_in_visitors_are_sent_on_from_login_register_and_home() {
    let app = spawn_app().await;
    let b = app.signed_in("sent@example.com").await;
    assert_eq!(b.get("/login").await.location(), "/account");
    assert_eq!(b.get("/register").await.location(), "/account");
    assert_eq!(b.get("/").await.location(), "/account");
    assert_eq!(app.browser().get("/").await.location(), "/login");
}

#[tokio::test]
async fn unknown_email_and_wrong_password_get_the_same_answer() {
    // L1
    let app = spawn_app_with_room().await;
    for i in 0..4 {
        app.user(&format!("real{i}@example.com")).await;
    }
    let b = app.browser();
    let mut wrong_times = Vec::new();
    let mut unknown_times = Vec::new();
    let mut wrong_body = None;
    let mut unknown_body = None;
    let csrf = b.get("/login").await.csrf();
    for i in 0..200 {
        let (email, times, body) = if i % 2 == 0 {
            (
                format!("real{}@example.com", i % 4),
                &mut wrong_times,
                &mut wrong_body,
            )
        } else {
            (
                format!("gone{}@example.com", i % 4),
                &mut unknown_times,
                &mut unknown_body,
            )
        };
        let started = std::time::Instant::now();
        let r = b
            .post_form(
                "/login",
                &[
                    ("csrf_token", &csrf),
                    ("email", &email),
                    ("password", "not the password"),
                ],
            )
            .await;
        times.push(started.elapsed().as_secs_f64());
        assert_eq!(r.status, 401, "{}", r.body);
        let normalised = r.page().replace(&email, "EMAIL");
        let mut headers: Vec<String> = r
            .headers
            .iter()
            .filter(|(k, _)| !["date", "content-security-policy"].contains(&k.as_str()))
            .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap_or("")))
            .collect();
        headers.sort();
        let seen = (normalised, headers);
        match body {
            None => *body = Some(seen),
            Some(prev) => assert_eq!(*prev, seen),
        }
    }
    assert_eq!(
        wrong_body, unknown_body,
        "identical status, headers and page"
    );
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let gap = (median(&mut wrong_times) - median(&mut unknown_times)).abs();
    assert!(gap < 0.010, "median timing gap {gap:.4}s");
}

#[tokio::test]
async fn an_unknown_account_costs_a_full_password_check_at_production_cost() {
    // L1 at the real argon2 cost, where the dummy hash is what keeps the two alike:
    // without it an unknown address would answer in a fraction of the time.
    let app = spawn_app_with(Options {
        login_max_failures: 100,
        ip_max_failures: 100_000,
        argon2: gatehouse::settings::Argon2Cost::PRODUCTION,
        ..Default::default()
    })
    .await;
    app.user("real@example.com").await;
    let b = app.browser();
    let csrf = b.get("/login").await.csrf();
    let mut known = Vec::new();
    let mut unknown = Vec::new();
    for i in 0..40 {
        let (email, times) = if i % 2 == 0 {
            ("real@example.com", &mut known)
        } else {
            ("ghost@example.com", &mut unknown)
        };
        let started = std::time::Instant::now();
        let r = b
            .post_form(
                "/login",
                &[
                    ("csrf_token", &csrf),
                    ("email", email),
                    ("password", "not the password"),
                ],
            )
            .await;
        times.push(started.elapsed().as_secs_f64());
        assert_eq!(r.status, 401);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (k, u) = (median(&mut known), median(&mut unknown));
    assert!(
        u >= 0.5 * k && k >= 0.5 * u,
        "unknown {u:.4}s vs known {k:.4}s: an unknown address must cost a real hash"
    );
}

async fn spawn_app_with_room() -> crate::helpers::TestApp {
    spawn_app_with(Options {
        login_max_failures: 100,
        ip_max_failures: 100_000,
        ..Default::default()
    })
    .await
}

#[tokio::test]
async fn password_policy_is_length_and_commonness_only() {
    // L5
    let app = spawn_app().await;
    let b = app.browser();
    let r = app.register(&b, "short@example.com", "seven77").await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("at least 8 characters"), "{}", r.body);
    let r = app.register(&b, "common@example.com", "password123").await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("most common"));
    assert!(
        r.body.contains(r#"value="common@example.com""#),
        "what was typed is kept"
    );
    assert!(
        !r.body.contains("password123"),
        "the password is never echoed"
    );
    assert_eq!(app.count("SELECT count(*) FROM users").await, 0);

    let emoji = "🔐🦀 gate-house ключ 鍵 ".repeat(4);
    let r = app.register(&b, "emoji@example.com", &emoji).await;
    assert_eq!(r.status, 303, "{}", r.body);

    let long = "0123456789abcdefghij".repeat(4); // 80 characters
    app.register(&app.browser(), "long@example.com", &long)
        .await;
    let b = app.browser();
    assert_eq!(
        app.login(&b, "long@example.com", &long[..72]).await.status,
        401
    );
    assert_eq!(
        app.login(&b, "long@example.com", &long.to_uppercase())
            .await
            .status,
        401
    );
    assert_eq!(
        app.login(&b, "emoji@example.com", &emoji).await.status,
        303,
        "an emoji password round-trips"
    );
    assert_eq!(
        app.login(&app.browser(), "long@example.com", &long)
            .await
            .status,
        303
    );
}

#[tokio::test]
async fn successful_sign_in_answers_303_never_307_or_308() {
    // L6
    let app = spawn_app().await;
    app.user("see@example.com").await;
    let r = app.login(&app.browser(), "see@example.com", PASSWORD).await;
    assert_eq!(r.status, 303);
    let r = app
        .register(&app.browser(), "new@example.com", PASSWORD)
        .await;
    assert_eq!(r.status, 303);
}

#[tokio::test]
async fn after_sign_in_only_local_return_paths_are_followed() {
    // W6
    let app = spawn_app().await;
    app.user("ret@example.com").await;
    // Already signed in: the login page sends the person on at once.
    let signed = app.browser();
    app.login(&signed, "ret@example.com", PASSWORD).await;
    for evil in ["/.//evil.test", "/x/..//evil.test", "/%2e//evil.test"] {
        let r = signed.get(&format!("/login?return_to={evil}")).await;
        assert_eq!(r.location(), "/account", "{evil}");
    }
    for evil in [
        "https://evil.test",
        "//evil.test",
        "/\\evil.test",
        "javascript:alert(1)",
        "/\r\nSet-Cookie: x=1",
        "/.//evil.test",
        "/x/..//evil.test",
    ] {
        let b = app.browser();
        let r = app
            .login_with(&b, "ret@example.com", PASSWORD, &[("return_to", evil)])
            .await;
        assert!(r.status == 303 || r.status == 400, "{evil}: {}", r.status);
        if r.status == 303 {
            assert_eq!(r.location(), "/account", "{evil}");
        }
    }
    let b = app.browser();
    let page = b.get("/login?return_to=/account%3Ftab%3D1").await;
    assert!(
        page.body
            .contains(r#"name="return_to" value="/account?tab=1""#),
        "{}",
        page.body
    );
    let r = app
        .login_with(
            &b,
            "ret@example.com",
            PASSWORD,
            &[("return_to", "/account?tab=1")],
        )
        .await;
    assert_eq!(r.location(), "/account?tab=1");
}

#[tokio::test]
async fn fifty_concurrent_registrations_of_one_address_make_one_account() {
    // R4
    let app = spawn_app().await;
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let b = app.browser();
        let page = b.get("/register").await;
        tasks.push(tokio::spawn(async move {
            b.post_form(
                "/register",
                &[
                    ("csrf_token", &page.csrf()),
                    ("email", "race@example.com"),
                    ("password", PASSWORD),
                ],
            )
            .await
        }));
    }
    let mut created = 0;
    let mut refused = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        match r.status {
            303 => created += 1,
            409 => refused.push(r.page().replace(&r.csrf(), "CSRF")),
            other => panic!("unexpected {other}: {}", r.body),
        }
    }
    assert_eq!(created, 1);
    assert_eq!(
        app.count("SELECT count(*) FROM users WHERE email = 'race@example.com'")
            .await,
        1
    );
    assert_eq!(
        app.count("SELECT count(*) FROM sessions").await,
        1,
        "losers left no partial writes"
    );
    assert!(
        refused.windows(2).all(|w| w[0] == w[1]),
        "every refusal is the same page"
    );
}

#[tokio::test]
async fn registrations_are_limited_per_client_address() {
    let app = spawn_app_with(Options {
        registrations_per_ip_hour: 3,
        ..Default::default()
    })
    .await;
    for i in 0..3 {
        app.user(&format!("r{i}@example.com")).await;
    }
    let r = app
        .register(&app.browser(), "r9@example.com", PASSWORD)
        .await;
    assert_eq!(r.status, 429);
    assert!(r.header("retry-after").is_some());
    assert!(r.body.contains("Too many attempts"), "{}", r.body);
    assert_eq!(app.count("SELECT count(*) FROM users").await, 3);
    app.clock.advance(std::time::Duration::from_secs(3601));
    assert_eq!(
        app.register(&app.browser(), "r9@example.com", PASSWORD)
            .await
            .status,
        303
    );
}

#[tokio::test]
async fn look_alike_addresses_do_not_make_second_accounts() {
    // H5
    let app = spawn_app().await;
    app.user("alice@example.com").await;
    for twin in [
        "ALICE@example.com",
        "Ａlice@example.com",
        " alice@EXAMPLE.com",
    ] {
        let r = app.register(&app.browser(), twin, PASSWORD).await;
        assert_eq!(r.status, 409, "{twin}");
    }
    let r = app
        .register(&app.browser(), "\u{430}lice@example.com", PASSWORD)
        .await;
    assert_eq!(r.status, 400, "a Cyrillic look-alike is refused");
    assert_eq!(app.count("SELECT count(*) FROM users").await, 1);
}

#[tokio::test]
async fn typed_markup_is_escaped_on_every_page() {
    // W5
    let app = spawn_app().await;
    let payload = r#""><svg onload=alert(1)>"#;
    let b = app.browser();
    let r = app.login(&b, payload, "whatever-password").await;
    assert_eq!(r.status, 400);
    assert!(!r.body.contains("<svg"), "{}", r.body);
    assert!(
        r.body.contains("svg onload=alert(1)"),
        "shown, escaped: {}",
        r.body
    );
    let r = app.register(&app.browser(), payload, PASSWORD).await;
    assert_eq!(r.status, 400);
    assert!(!r.body.contains("<svg"));
    let r = app
        .browser()
        .get("/login?return_to=%2F%22%3E%3Csvg%20onload%3Dalert(1)%3E")
        .await;
    assert!(!r.body.contains("<svg"), "{}", r.body);
}

#[tokio::test]
async fn sql_metacharacters_are_inert() {
    // H4
    let app = spawn_app().await;
    app.user("alice@example.com").await;
    let b = app.browser();
    for email in [
        "' OR '1'='1",
        "alice@example.com'--",
        "alice@example.com' OR 1=1--",
        "\\",
        "%@example.com",
        "_@example.com",
        "a%@x.com",
    ] {
        let r = app.login(&b, email, "' OR '1'='1").await;
        assert!(r.status == 400 || r.status == 401, "{email}: {}", r.status);
        assert!(app.session_cookie(&b).is_none());
    }
    let r = app
        .register(
            &app.browser(),
            "x'); DROP TABLE users;--@example.com",
            PASSWORD,
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(app.count("SELECT count(*) FROM users").await, 1);
}
