//! /healthz, /readyz, /metrics, and behaviour while the database is away (R1, R3).

use std::time::Duration;

use crate::helpers::{Options, PASSWORD, spawn_app, spawn_app_with};

#[tokio::test]
async fn health_and_readiness_report_a_working_server() {
    let app = spawn_app().await;
    let b = app.browser();
    let r = b.get("/healthz").await;
    assert_eq!(r.status, 200);
    assert!(r.body.contains("ok"));
    let r = b.get("/readyz").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("ready"));
}

#[tokio::test]
async fn metrics_count_requests_sign_ins_and_expose_the_argon2_queue() {
    let app = spawn_app().await;
    app.user("m@example.com").await;
    let b = app.browser();
    app.login(&b, "m@example.com", PASSWORD).await;
    app.login(&app.browser(), "m@example.com", "wrong password!")
        .await;
    let text = b.get("/metrics").await;
    assert!(
        text.header("content-type")
            .unwrap()
            .starts_with("text/plain")
    );
    assert!(
        text.body
            .contains(r#"gatehouse_http_requests_total{method="GET",route="/login",status="200"}"#),
        "{}",
        text.body
    );
    assert!(
        text.body
            .contains("gatehouse_http_request_duration_seconds_bucket")
    );
    assert!(text.body.contains("gatehouse_argon2_queue_depth"));
    assert_eq!(
        app.metric(r#"gatehouse_sign_ins_total{outcome="success"}"#)
            .await,
        1.0
    );
    assert_eq!(
        app.metric(r#"gatehouse_sign_ins_total{outcome="failure"}"#)
            .await,
        1.0
    );
    assert!(!text.body.contains("m@example.com"));
}

async fn wait_for(app: &crate::helpers::TestApp, path: &str, status: u16) -> bool {
    for _ in 0..60 {
        if app.browser().get(path).await.status == status {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    false
}

#[tokio::test]
async fn a_database_outage_gives_plain_503s_and_fails_closed_then_recovers() {
    // R1, R3
    let app = spawn_app_with(Options {
        db_proxy: true,
        ..Default::default()
    })
    .await;
    let b = app.signed_in("outage@example.com").await;
    let login_csrf = app.browser();
    let csrf = login_csrf.get("/login").await.csrf();
    let account_csrf = b.get("/account").await.csrf();
    let proxy = app.proxy.as_ref().unwrap();

    proxy.cut();
    assert!(wait_for(&app, "/readyz", 503).await, "readyz goes 503");
    let r = b.get("/account").await;
    assert_eq!(r.status, 503, "a valid cookie is not trusted blindly");
    let r2 = login_csrf
        .post_form(
            "/login",
            &[
                ("csrf_token", &csrf),
                ("email", "outage@example.com"),
                ("password", PASSWORD),
            ],
        )
        .await;
    assert_eq!(
        r2.status, 503,
        "sign-in never succeeds without the database"
    );
    let r3 = b
        .post_form("/logout", &[("csrf_token", &account_csrf)])
        .await;
    assert_eq!(
        r3.status, 503,
        "sign-out does not claim success it did not have"
    );
    for r in [&r, &r2, &r3] {
        assert!(r.body.contains("Temporarily unavailable"), "{}", r.body);
        for leak in [
            "panicked",
            "sqlx",
            "SELECT",
            "src/",
            "postgres://",
            &app.db_name,
        ] {
            assert!(!r.body.contains(leak), "503 page leaks {leak}");
        }
        assert!(r.header("content-security-policy").is_some());
    }
    assert_eq!(
        app.browser().get("/healthz").await.status,
        200,
        "the process is alive"
    );

    proxy.restore();
    assert!(
        wait_for(&app, "/readyz", 200).await,
        "ready again without a restart"
    );
    assert_eq!(
        b.get("/account").await.status,
        200,
        "sessions made before the outage persist"
    );
    let r = b
        .post_form("/logout", &[("csrf_token", &account_csrf)])
        .await;
    assert_eq!(r.status, 303);
    assert!(b.get("/account").await.is_sign_in_redirect());
}

#[tokio::test]
async fn readiness_is_503_while_migrations_are_pending() {
    let app = spawn_app().await;
    sqlx::query("DELETE FROM _sqlx_migrations")
        .execute(&app.db)
        .await
        .unwrap();
    let r = app.browser().get("/readyz").await;
    assert_eq!(r.status, 503);
    assert!(r.body.contains("migrations pending"));
}
