//! Sessions as DESIGN.md "Sessions" describes them.

use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::helpers::{Options, PASSWORD, spawn_app, spawn_app_with};

#[tokio::test]
async fn production_session_cookie_is_host_prefixed_and_hardened() {
    // S1
    let app = spawn_app().await;
    app.user("s1@example.com").await;
    let b = app.browser();
    let r = app.login(&b, "s1@example.com", PASSWORD).await;
    let raw = r
        .raw_set_cookie("__Host-gatehouse_session")
        .expect("session cookie set");
    for attr in ["; HttpOnly", "; SameSite=Lax", "; Secure", "; Path=/"] {
        assert!(raw.contains(attr), "{raw} lacks {attr}");
    }
    assert!(!raw.to_ascii_lowercase().contains("domain"), "{raw}");
    assert!(
        !raw.contains("Max-Age"),
        "without 'keep me signed in' the cookie dies with the browser"
    );
    let value = app.session_cookie(&b).unwrap();
    assert_eq!(value.len(), 43, "32 bytes, base64url");
    assert!(
        !raw.contains("s1@example.com"),
        "no personal data in cookies"
    );
}

#[tokio::test]
async fn dev_mode_over_plain_http_drops_the_prefix_and_secure() {
    let app = spawn_app_with(Options {
        dev: true,
        ..Default::default()
    })
    .await;
    app.user("dev@example.com").await;
    let b = app.browser();
    let r = app.login(&b, "dev@example.com", PASSWORD).await;
    let raw = r
        .raw_set_cookie("gatehouse_session")
        .expect("dev session cookie");
    assert!(!raw.contains("Secure"), "{raw}");
    assert!(
        raw.contains("HttpOnly") && raw.contains("SameSite=Lax"),
        "{raw}"
    );
    let page = b.get("/account").await;
    assert!(
        page.body.contains("Development mode"),
        "the dev banner is on every page"
    );
    assert!(
        app.browser()
            .get("/login")
            .await
            .body
            .contains("Development mode")
    );
    assert!(
        page.header("strict-transport-security").is_none(),
        "no HSTS on plain-HTTP dev"
    );
}

#[tokio::test]
async fn keep_me_signed_in_makes_a_persistent_cookie_with_longer_lifetimes() {
    let app = spawn_app().await;
    app.user("keep@example.com").await;
    let b = app.browser();
    let r = app
        .login_with(&b, "keep@example.com", PASSWORD, &[("remember", "1")])
        .await;
    let raw = r.raw_set_cookie("__Host-gatehouse_session").unwrap();
    assert!(raw.contains(&format!("Max-Age={}", 30 * 86400)), "{raw}");
    // Idle for a day: still signed in (the short session would have ended).
    app.clock.advance(Duration::from_secs(86400));
    assert_eq!(b.get("/account").await.status, 200);
    let remembered: bool =
        sqlx::query_scalar("SELECT remember_me FROM sessions WHERE revoked_at IS NULL")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert!(remembered);
}

#[tokio::test]
async fn sign_in_issues_a_new_cookie_and_a_planted_one_never_authenticates() {
    // S2
    let app = spawn_app().await;
    app.user("fix@example.com").await;
    let b = app.browser();
    let planted = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    b.set_cookie(app.session_cookie_name(), planted);
    let r = app.login(&b, "fix@example.com", PASSWORD).await;
    assert_eq!(r.status, 303);
    let issued = app.session_cookie(&b).unwrap();
    assert_ne!(issued, planted);
    let attacker = app.browser();
    attacker.set_cookie(app.session_cookie_name(), planted);
    assert!(attacker.get("/account").await.is_sign_in_redirect());
    assert_eq!(b.get("/account").await.status, 200);

    // Signing in again from a signed-in browser replaces the session: the old cookie dies.
    let old = issued.clone();
    let again = b
        .post_form(
            "/login",
            &[
                ("csrf_token", &b.get("/account").await.csrf()),
                ("email", "fix@example.com"),
                ("password", PASSWORD),
            ],
        )
        .await;
    assert_eq!(again.status, 303);
    let newer = app.session_cookie(&b).unwrap();
    assert_ne!(newer, old);
    let replay = app.browser();
    replay.set_cookie(app.session_cookie_name(), &old);
    assert!(replay.get("/account").await.is_sign_in_redirect());
}

#[tokio::test]
async fn only_the_cookie_carries_a_session() {
    // S3
    let app = spawn_app().await;
    let b = app.signed_in("strict@example.com").await;
    let token = app.session_cookie(&b).unwrap();
    let name = app.session_cookie_name();

    let random = app.browser();
    random.set_cookie(name, "x9Yq2lqjLrL1m4XbY8W0f4N0dYQn3c2Z0oF9a7K1s5E");
    let r = random.get("/account").await;
    assert!(r.is_sign_in_redirect(), "{r:?}");
    assert!(
        r.raw_set_cookie(name)
            .is_some_and(|c| c.contains("Max-Age=0")),
        "an unknown cookie is cleared"
    );
    assert_eq!(
        app.count("SELECT count(*) FROM sessions").await,
        1,
        "nothing adopted"
    );

    let anon = app.browser();
    assert!(
        anon.get(&format!("/account?session={token}"))
            .await
            .is_sign_in_redirect()
    );
    let r = anon
        .send(
            anon.request(reqwest::Method::GET, "/account")
                .header("authorization", format!("Bearer {token}")),
        )
        .await;
    assert!(r.is_sign_in_redirect(), "{r:?}");
    let r = anon
        .send(
            anon.request(reqwest::Method::GET, "/account")
                .header("x-session", token.as_str()),
        )
        .await;
    assert!(
        r.is_sign_in_redirect(),
        "a person is offered the way back in: {r:?}"
    );
}

#[tokio::test]
async fn tokens_are_unique_256_bit_random_values() {
    // S4
    let app = spawn_app().await;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..1000 {
        let b = app.browser();
        let r = b.get("/login").await;
        let cookie = r
            .set_cookies()
            .into_iter()
            .find(|c| c.name() == "__Host-gatehouse_presession")
            .unwrap();
        let value = cookie.value().to_string();
        assert_eq!(value.len(), 43);
        assert!(seen.insert(value), "a pre-session value repeated");
    }
    app.user("s4@example.com").await;
    let mut sessions = std::collections::HashSet::new();
    for _ in 0..50 {
        let b = app.browser();
        app.login(&b, "s4@example.com", PASSWORD).await;
        let token = app.session_cookie(&b).unwrap();
        let bytes =
            base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, &token)
                .unwrap();
        assert_eq!(bytes.len(), 32);
        assert!(
            !String::from_utf8_lossy(&bytes).contains("s4@"),
            "nothing decodable"
        );
        assert!(sessions.insert(token));
    }
    let ids: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT id FROM sessions")
        .fetch_all(&app.db)
        .await
        .unwrap();
    assert!(
        ids.iter().all(|id| id.get_version_num() == 4),
        "public ids are random v4 UUIDs"
    );
}

#[tokio::test]
async fn the_database_keeps_only_a_hash_of_the_token_and_sealed_personal_data() {
    let app = spawn_app().await;
    let mut b = app.browser();
    let agent = "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";
    b.extra_headers.push(("user-agent".into(), agent.into()));
    assert_eq!(
        app.register(&b, "stored@example.com", crate::helpers::PASSWORD)
            .await
            .status,
        303
    );
    let token = app.session_cookie(&b).unwrap();
    let (hash, ip, ua): (Vec<u8>, Vec<u8>, Option<Vec<u8>>) =
        sqlx::query_as("SELECT token_hash, ip_enc, user_agent_enc FROM sessions")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(hash, Sha256::digest(token.as_bytes()).to_vec());
    assert!(
        !String::from_utf8_lossy(&ip).contains("127.0.0.1"),
        "the IP is sealed"
    );
    // The user agent that was sent is stored, sealed: absent or readable would fail.
    let ua = ua.expect("the user agent is kept");
    assert!(!String::from_utf8_lossy(&ua).contains("Firefox"), "sealed");
    let keys = app.keys();
    assert_eq!(
        keys.open("sessions.user_agent", &ua).unwrap(),
        agent.as_bytes(),
        "and opens to what the browser sent"
    );
    assert_eq!(keys.open("sessions.ip", &ip).unwrap(), b"127.0.0.1");
    let (aal, amr): (String, Vec<String>) = sqlx::query_as("SELECT aal, amr FROM sessions")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(aal, "aal1");
    assert_eq!(amr, vec!["pwd".to_string()]);
}

#[tokio::test]
async fn sign_out_revokes_the_row_and_an_old_cookie_is_refused() {
    // S5
    let app = spawn_app().await;
    let b = app.signed_in("bye@example.com").await;
    let copy = app.session_cookie(&b).unwrap();
    let csrf = b.get("/account").await.csrf();
    let r = b.post_form("/logout", &[("csrf_token", &csrf)]).await;
    assert_eq!(r.status, 303);
    let cleared = r.raw_set_cookie(app.session_cookie_name()).unwrap();
    assert!(cleared.contains("Max-Age=0"), "{cleared}");
    let replay = app.browser();
    replay.set_cookie(app.session_cookie_name(), &copy);
    assert!(replay.get("/account").await.is_sign_in_redirect());
    let reason: Option<String> = sqlx::query_scalar("SELECT revoked_reason FROM sessions")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(reason.as_deref(), Some("signed out"));
}

#[tokio::test]
async fn an_idle_session_ends_after_thirty_minutes() {
    // S6 (idle)
    let app = spawn_app().await;
    let b = app.signed_in("idle@example.com").await;
    app.clock.advance(Duration::from_secs(29 * 60));
    assert_eq!(
        b.get("/account").await.status,
        200,
        "activity within the idle limit keeps it alive"
    );
    app.clock.advance(Duration::from_secs(29 * 60));
    assert_eq!(b.get("/account").await.status, 200);
    app.clock.advance(Duration::from_secs(31 * 60));
    let r = b.get("/account").await;
    assert!(r.is_sign_in_redirect(), "{r:?}");
    assert!(
        r.raw_set_cookie(app.session_cookie_name())
            .unwrap()
            .contains("Max-Age=0")
    );
}

#[tokio::test]
async fn an_active_session_still_ends_at_the_absolute_cap() {
    // S6 (absolute)
    let app = spawn_app().await;
    let b = app.signed_in("busy@example.com").await;
    for _ in 0..(12 * 3 - 1) {
        app.clock.advance(Duration::from_secs(20 * 60));
        assert_eq!(b.get("/account").await.status, 200);
    }
    app.clock.advance(Duration::from_secs(21 * 60));
    assert!(
        b.get("/account").await.is_sign_in_redirect(),
        "12 hours after sign-in, however busy"
    );
}

#[tokio::test]
async fn last_seen_is_written_at_most_once_a_minute() {
    let app = spawn_app().await;
    let b = app.signed_in("seen@example.com").await;
    let read = || async {
        let t: time::OffsetDateTime = sqlx::query_scalar("SELECT last_seen_at FROM sessions")
            .fetch_one(&app.db)
            .await
            .unwrap();
        t
    };
    let first = read().await;
    app.clock.advance(Duration::from_secs(30));
    b.get("/account").await;
    assert_eq!(
        read().await,
        first,
        "a request within the minute writes nothing"
    );
    app.clock.advance(Duration::from_secs(31));
    b.get("/account").await;
    assert!(read().await > first);
}

#[tokio::test]
async fn a_disabled_user_is_signed_out_on_the_next_request() {
    let app = spawn_app().await;
    let b = app.signed_in("gone@example.com").await;
    sqlx::query("UPDATE users SET disabled_at = now()")
        .execute(&app.db)
        .await
        .unwrap();
    assert!(b.get("/account").await.is_sign_in_redirect());
}

#[tokio::test]
async fn account_pages_are_never_cached() {
    // S7
    let app = spawn_app().await;
    let b = app.signed_in("cache@example.com").await;
    for path in ["/account", "/login", "/register"] {
        let r = if path == "/account" {
            b.get(path).await
        } else {
            app.browser().get(path).await
        };
        assert_eq!(
            r.header("cache-control").as_deref(),
            Some("no-store"),
            "{path}"
        );
    }
    let r = app
        .login(&app.browser(), "cache@example.com", PASSWORD)
        .await;
    assert_eq!(
        r.header("cache-control").as_deref(),
        Some("no-store"),
        "the sign-in response sets a cookie"
    );
}
