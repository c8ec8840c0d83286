//! Sign-in throttling (DESIGN.md "Precise rules"): counted in PostgreSQL, before the
//! password is checked, so parallel attempts get no more tries than sequential ones.

use std::time::Duration;

use crate::helpers::{Options, PASSWORD, spawn_app, spawn_app_with};

/// The per-account limit on its own: every attempt comes from an address of its own
/// (through a trusted proxy), so the per-address limit never binds; the clock stands
/// still, so no backoff lapses while the burst is in flight.
fn account_only() -> Options {
    Options {
        trusted_proxies: Some("127.0.0.1/32".into()),
        frozen_clock: true,
        ..Default::default()
    }
}

fn from(app: &crate::helpers::TestApp, n: u32) -> crate::helpers::Browser {
    let mut b = app.browser();
    b.extra_headers.push((
        "x-forwarded-for".into(),
        format!("198.51.{}.{}", n / 250, n % 250 + 1),
    ));
    b
}

#[tokio::test]
async fn fifty_parallel_wrong_passwords_get_at_most_five_evaluations() {
    // L3 (ZITADEL CVE-2023-47111)
    let app = spawn_app_with(account_only()).await;
    app.user("alice@example.com").await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let b = from(&app, i);
        let csrf = b.get("/login").await.csrf();
        tasks.push(tokio::spawn(async move {
            b.post_form(
                "/login",
                &[
                    ("csrf_token", &csrf),
                    ("email", "alice@example.com"),
                    ("password", "wrong wrong wrong"),
                ],
            )
            .await
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap().status);
    }
    let evaluated = statuses.iter().filter(|s| **s == 401).count();
    let throttled = statuses.iter().filter(|s| **s == 429).count();
    // Exactly the limit: no more (counted before checking), and no fewer (the
    // address limit is not what stopped them).
    assert_eq!(evaluated, 5, "{statuses:?}");
    assert_eq!(throttled, 45, "{statuses:?}");
    assert_eq!(
        app.metric(r#"gatehouse_sign_ins_total{outcome="failure"}"#)
            .await,
        5.0
    );

    // The right password, from an address that has never failed, is not even
    // checked during the wait: the account itself is locked.
    let b = from(&app, 900);
    let r = app.login(&b, "alice@example.com", PASSWORD).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after").as_deref(), Some("1"));
    assert!(r.body.contains("Too many failed attempts"), "{}", r.body);
    assert_eq!(
        app.metric(r#"gatehouse_sign_ins_total{outcome="success"}"#)
            .await,
        0.0
    );

    app.clock.advance(Duration::from_secs(2));
    let r = app.login(&b, "alice@example.com", PASSWORD).await;
    assert_eq!(r.status, 303, "the lock is temporary");
}

#[tokio::test]
async fn backoff_doubles_after_the_limit_and_success_resets_it() {
    let app = spawn_app_with(account_only()).await;
    app.user("bo@example.com").await;
    let mut n = 0;
    let mut attempt = |password: &'static str| {
        n += 1;
        let b = from(&app, n);
        let app = &app;
        async move { app.login(&b, "bo@example.com", password).await }
    };
    for _ in 0..5 {
        assert_eq!(attempt("nope nope nope").await.status, 401);
    }
    let r = attempt("nope nope nope").await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after").as_deref(), Some("1"));
    assert_eq!(
        attempt(PASSWORD).await.status,
        429,
        "right password, locked"
    );
    app.clock.advance(Duration::from_secs(1));
    assert_eq!(attempt("nope nope nope").await.status, 401);
    let r = attempt("nope nope nope").await;
    assert_eq!(
        r.header("retry-after").as_deref(),
        Some("2"),
        "6 failures: 2 s"
    );
    app.clock.advance(Duration::from_secs(1));
    assert_eq!(attempt(PASSWORD).await.status, 429, "still 1 s to go");
    app.clock.advance(Duration::from_secs(1));
    assert_eq!(attempt(PASSWORD).await.status, 303);
    assert_eq!(
        attempt("nope nope nope").await.status,
        401,
        "the count starts again"
    );
}

#[tokio::test]
async fn the_backoff_is_capped_at_fifteen_minutes() {
    let app = spawn_app_with(Options {
        frozen_clock: true,
        ..Default::default()
    })
    .await;
    let b = app.browser();
    let mut last = 0;
    for _ in 0..40 {
        let r = app.login(&b, "cap@example.com", "nope nope nope").await;
        if r.status == 429 {
            last = r.header("retry-after").unwrap().parse::<u64>().unwrap();
            app.clock.advance(Duration::from_secs(last + 1));
        }
    }
    assert_eq!(last, 900);
}

#[tokio::test]
async fn an_unknown_account_locks_exactly_like_a_real_one() {
    // L4 (no enumeration through the throttle)
    let app = spawn_app().await;
    app.user("real@example.com").await;
    let b = app.browser();
    let run = |email: &'static str| {
        let app = &app;
        let b = b.clone();
        async move {
            let mut s = Vec::new();
            for _ in 0..7 {
                let r = app.login(&b, email, "nope nope nope").await;
                s.push((r.status, r.header("retry-after")));
            }
            s
        }
    };
    assert_eq!(
        run("real@example.com").await,
        run("ghost@example.com").await
    );
}

#[tokio::test]
async fn one_address_trying_many_accounts_is_throttled_temporarily() {
    // L4 (credential stuffing)
    let app = spawn_app_with(Options {
        trusted_proxies: Some("127.0.0.1/32".into()),
        frozen_clock: true,
        ..Default::default()
    })
    .await;
    app.user("victim@example.com").await;
    let mut attacker = app.browser();
    attacker
        .extra_headers
        .push(("x-forwarded-for".into(), "203.0.113.50".into()));
    let mut first_429 = None;
    for i in 0..40 {
        let r = app
            .login(&attacker, &format!("user{i}@example.com"), "Summer2024!")
            .await;
        if r.status == 429 {
            first_429 = Some((i, r.header("retry-after").unwrap()));
            break;
        }
        assert_eq!(r.status, 401);
    }
    let (at, retry) = first_429.expect("the address was throttled");
    assert_eq!(at, 30, "after 30 failures in 5 minutes");
    assert!(retry.parse::<u64>().unwrap() <= 300);

    // Another address is unaffected, even for the same accounts.
    let mut other = app.browser();
    other
        .extra_headers
        .push(("x-forwarded-for".into(), "198.51.100.7".into()));
    assert_eq!(
        app.login(&other, "victim@example.com", PASSWORD)
            .await
            .status,
        303
    );
    // The attacker's address, even with the right password, waits.
    assert_eq!(
        app.login(&attacker, "victim@example.com", PASSWORD)
            .await
            .status,
        429
    );
    app.clock.advance(Duration::from_secs(301));
    assert_eq!(
        app.login(&attacker, "victim@example.com", PASSWORD)
            .await
            .status,
        303,
        "the lock is temporary"
    );
}

#[tokio::test]
async fn forwarded_headers_from_untrusted_peers_are_ignored() {
    // M8 precondition: the client cannot choose its own address.
    let app = spawn_app().await;
    let mut b = app.browser();
    for i in 0..31 {
        b.extra_headers = vec![("x-forwarded-for".into(), format!("10.9.8.{i}"))];
        let r = app
            .login(&b, &format!("spoof{i}@example.com"), "nope nope nope")
            .await;
        if i < 30 {
            assert_eq!(r.status, 401);
        } else {
            assert_eq!(
                r.status, 429,
                "rotating X-Forwarded-For does not escape the per-IP limit"
            );
        }
    }
}

#[tokio::test]
async fn parallel_guesses_across_many_accounts_cannot_outrun_the_per_address_limit() {
    // L4 under concurrency: attempts count before the password is checked.
    let app = spawn_app_with(Options {
        trusted_proxies: Some("127.0.0.1/32".into()),
        ..Default::default()
    })
    .await;
    let mut tasks = Vec::new();
    for i in 0..80 {
        let mut b = app.browser();
        b.extra_headers
            .push(("x-forwarded-for".into(), "203.0.113.77".into()));
        let csrf = b.get("/login").await.csrf();
        tasks.push(tokio::spawn(async move {
            b.post_form(
                "/login",
                &[
                    ("csrf_token", &csrf),
                    ("email", &format!("p{i}@example.com")),
                    ("password", "guess guess guess"),
                ],
            )
            .await
            .status
        }));
    }
    let mut evaluated = 0;
    for t in tasks {
        if t.await.unwrap() == 401 {
            evaluated += 1;
        }
    }
    assert!(evaluated <= 30, "{evaluated} guesses were evaluated");
    assert!(
        app.metric(r#"gatehouse_sign_ins_total{outcome="failure"}"#)
            .await
            <= 30.0
    );
}
