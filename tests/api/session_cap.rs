//! The per-person cap on live sessions (`GATEHOUSE_MAX_SESSIONS_PER_USER`).

use crate::helpers::{Options, PASSWORD, spawn_app, spawn_app_with};

#[tokio::test]
async fn a_sign_in_past_the_cap_ends_the_least_recently_active_session_and_says_so() {
    let app = spawn_app_with(Options {
        extra: vec![("GATEHOUSE_MAX_SESSIONS_PER_USER", "2".to_string())],
        ..Options::default()
    })
    .await;
    let email = "capped@example.com";
    let first = app.signed_in(email).await;
    let second = app.browser();
    assert_eq!(app.login(&second, email, PASSWORD).await.status, 303);
    assert_eq!(first.get("/account").await.status, 200);
    assert_eq!(second.get("/account").await.status, 200);

    // The first browser is the least recently active (last-seen times move in
    // steps, so both were last seen when they signed in); a third sign-in passes the
    // cap of two.
    let third = app.browser();
    assert_eq!(app.login(&third, email, PASSWORD).await.status, 303);

    assert!(first.get("/account").await.is_sign_in_redirect());
    assert_eq!(second.get("/account").await.status, 200);
    assert_eq!(third.get("/account").await.status, 200);
    assert_eq!(
        app.count("SELECT count(*) FROM sessions WHERE revoked_reason = 'session limit reached'")
            .await,
        1
    );

    // The device list says so, once.
    let page = third.get("/account/devices").await;
    assert_eq!(page.status, 200);
    assert!(
        page.body
            .contains("because you reached the limit of 2 sessions"),
        "{}",
        page.body
    );
    let again = second.get("/account/devices").await;
    assert!(!again.body.contains("reached the limit"), "{}", again.body);
}

#[tokio::test]
async fn without_a_cap_every_session_stays() {
    let app = spawn_app().await;
    let email = "uncapped@example.com";
    let browsers = [app.signed_in(email).await, app.browser(), app.browser()];
    for b in &browsers[1..] {
        assert_eq!(app.login(b, email, PASSWORD).await.status, 303);
    }
    for b in &browsers {
        assert_eq!(b.get("/account").await.status, 200);
    }
}
