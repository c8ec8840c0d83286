//! Mail through a real SMTP server in the test process: verification, reset, change
//! of address, notices, and an outbox that loses nothing.

use std::time::Duration;

use gatehouse::domain::OutboundMail;
use gatehouse::mail::worker::Worker;
use gatehouse::store::{PgStore, Store};

use crate::helpers::{Browser, Options, PASSWORD, PUBLIC_URL, TestApp, spawn_app_with};

async fn app() -> TestApp {
    spawn_app_with(Options {
        require_verified_email: true,
        ..Default::default()
    })
    .await
}

/// Registers and confirms `email` through the mailbox.
async fn verified_user(app: &TestApp, email: &str) {
    let r = app.register(&app.browser(), email, PASSWORD).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let mail = app.mail.wait_for(email, 1).await;
    let token = mail.last().unwrap().token("/verify-email");
    assert_eq!(
        app.browser()
            .open_link(&format!("/verify-email?token={token}"))
            .await
            .status,
        200
    );
}

async fn signed_in(app: &TestApp, email: &str) -> Browser {
    verified_user(app, email).await;
    let b = app.browser();
    assert_eq!(app.login(&b, email, PASSWORD).await.status, 303);
    b
}

#[tokio::test]
async fn registration_mails_a_single_use_link_and_unconfirmed_accounts_cannot_sign_in() {
    let app = app().await;
    let b = app.browser();
    let r = app.register(&b, "new@example.com", PASSWORD).await;
    assert_eq!(r.status, 200);
    assert!(r.body.contains("Check your inbox"));
    assert!(
        app.session_cookie(&b).is_none(),
        "no session before confirmation"
    );

    let mail = app.mail.wait_for("new@example.com", 1).await;
    let m = &mail[0];
    assert_eq!(m.subject(), "Confirm your e-mail address");
    assert!(
        m.data.contains("multipart/alternative") && m.data.contains("text/html"),
        "text and HTML"
    );
    let token = m.token("/verify-email");

    // Signing in first: the page says why and offers a new link; no session.
    let r = app.login(&b, "new@example.com", PASSWORD).await;
    assert_eq!(r.status, 403);
    assert!(r.body.contains("Confirm your e-mail address first"));
    assert!(r.body.contains(r#"action="/verify-email/resend""#));
    assert!(app.session_cookie(&b).is_none());

    let r = b.open_link(&format!("/verify-email?token={token}")).await;
    assert_eq!(r.status, 200);
    assert!(r.body.contains("Address confirmed"));
    let again = b.open_link(&format!("/verify-email?token={token}")).await;
    assert_eq!(again.status, 400, "single use");
    assert!(again.body.contains("This link does not work"));
    assert_eq!(b.get("/verify-email?token=forged").await.status, 400);

    assert_eq!(app.login(&b, "new@example.com", PASSWORD).await.status, 303);
    let hashes: i64 = app
        .count("SELECT count(*) FROM email_tokens WHERE length(token_hash) = 32")
        .await;
    assert_eq!(hashes, 1, "only a hash of the link is stored");
}

#[tokio::test]
async fn a_verification_link_expires_after_a_day_and_a_new_one_can_be_asked_for() {
    let app = app().await;
    app.register(&app.browser(), "late@example.com", PASSWORD)
        .await;
    let token = app.mail.wait_for("late@example.com", 1).await[0].token("/verify-email");
    app.clock.advance(Duration::from_secs(25 * 3600));
    assert_eq!(
        app.browser()
            .open_link(&format!("/verify-email?token={token}"))
            .await
            .status,
        400
    );

    let b = app.browser();
    let csrf = b.get("/login").await.csrf();
    let r = b
        .post_form(
            "/verify-email/resend",
            &[("csrf_token", &csrf), ("email", "late@example.com")],
        )
        .await;
    assert_eq!(r.status, 200);
    let mails = app.mail.wait_for("late@example.com", 2).await;
    let fresh = mails[1].token("/verify-email");
    assert_eq!(
        b.open_link(&format!("/verify-email?token={fresh}"))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn resending_is_rate_limited_per_address() {
    let app = app().await;
    // One address waits for confirmation, the other is confirmed: each was registered
    // once, and the limit treats them alike.
    app.register(&app.browser(), "spam@example.com", PASSWORD)
        .await;
    verified_user(&app, "done@example.com").await;
    let b = app.browser();
    let csrf = b.get("/login").await.csrf();
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(
            b.post_form(
                "/verify-email/resend",
                &[("csrf_token", &csrf), ("email", "spam@example.com")],
            )
            .await
            .status,
        );
    }
    assert_eq!(
        statuses,
        vec![200, 200, 429],
        "3 mails an hour per address, registration included"
    );
    let mut other = Vec::new();
    for _ in 0..3 {
        other.push(
            b.post_form(
                "/verify-email/resend",
                &[("csrf_token", &csrf), ("email", "done@example.com")],
            )
            .await
            .status,
        );
    }
    assert_eq!(other, statuses);
    assert_eq!(app.mail.wait_for("spam@example.com", 3).await.len(), 3);
}

#[tokio::test]
async fn registering_a_taken_address_answers_the_same_and_mails_the_owner() {
    // L2 (registration)
    let app = app().await;
    verified_user(&app, "owner@example.com").await;
    let b1 = app.browser();
    let taken = app.register(&b1, "owner@example.com", PASSWORD).await;
    let b2 = app.browser();
    let fresh = app.register(&b2, "other@example.com", PASSWORD).await;
    assert_eq!(taken.status, fresh.status);
    assert_eq!(
        taken.page().replace("owner@example.com", "X"),
        fresh.page().replace("other@example.com", "X"),
        "the same page"
    );
    let mails = app.mail.wait_for("owner@example.com", 2).await;
    assert_eq!(
        mails[1].subject(),
        "Someone tried to sign up with your address"
    );
    assert_eq!(
        app.count("SELECT count(*) FROM users WHERE email = 'owner@example.com'")
            .await,
        1
    );
}

#[tokio::test]
async fn concurrent_registrations_of_one_address_make_one_account_and_one_answer() {
    // R4 (with verification, the product default)
    let app = app().await;
    let mut tasks = Vec::new();
    for _ in 0..30 {
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
    let mut bodies = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        bodies.push(r.page().replace(&r.csrf_or_empty(), "CSRF"));
    }
    assert!(
        bodies.windows(2).all(|w| w[0] == w[1]),
        "everyone gets the same response"
    );
    // The account is written after the answers (so their timing tells nothing).
    app.wait_until("SELECT count(*) FROM users", 1).await;
    app.wait_until("SELECT count(*) FROM mail_outbox WHERE sent_at IS NULL", 0)
        .await;
    assert_eq!(app.count("SELECT count(*) FROM users").await, 1);
}

#[tokio::test]
async fn forgot_password_answers_identically_and_links_use_the_public_url() {
    // L2 (reset), L8
    let app = app().await;
    verified_user(&app, "known@example.com").await;
    verified_user(&app, "sentinel@example.com").await;
    let ask = |email: &'static str| {
        let app = &app;
        async move {
            let mut b = app.browser();
            let csrf = b.get("/password/forgot").await.csrf();
            b.extra_headers = vec![
                ("host".into(), "evil.example".into()),
                ("x-forwarded-host".into(), "evil.example".into()),
            ];
            let r = b
                .post_form(
                    "/password/forgot",
                    &[("csrf_token", &csrf), ("email", email)],
                )
                .await;
            let mut headers: Vec<String> = r
                .headers
                .iter()
                .filter(|(k, _)| !["date", "content-security-policy"].contains(&k.as_str()))
                .map(|(k, v)| format!("{k}: {}", v.to_str().unwrap_or("")))
                .collect();
            headers.sort();
            (r.status, r.page().replace(&r.csrf_or_empty(), ""), headers)
        }
    };
    let known = ask("known@example.com").await;
    let unknown = ask("nobody@example.com").await;
    assert_eq!(known, unknown, "status, body and headers are identical");
    assert_eq!(known.0, 200);

    let mails = app.mail.wait_for("known@example.com", 2).await;
    let reset = &mails[1];
    assert_eq!(reset.subject(), "Reset your password");
    assert!(
        !reset.text().contains("evil.example"),
        "the link ignores Host and X-Forwarded-Host"
    );
    assert!(
        reset
            .text()
            .contains(&format!("{PUBLIC_URL}/password/reset?token="))
    );
    for pattern in ["a%@x.com", "_@example.com"] {
        let b = app.browser();
        let csrf = b.get("/password/forgot").await.csrf();
        b.post_form(
            "/password/forgot",
            &[("csrf_token", &csrf), ("email", pattern)],
        )
        .await;
    }
    // A last request for a real account: once its mail is out, the requests before
    // it have had their turn, and "nothing for the others" can be checked.
    ask("sentinel@example.com").await;
    app.mail.wait_for("sentinel@example.com", 2).await;
    app.wait_until("SELECT count(*) FROM mail_outbox WHERE sent_at IS NULL", 0)
        .await;
    assert!(
        app.mail.to("nobody@example.com").is_empty(),
        "an unknown address gets no mail"
    );
    assert_eq!(
        app.count("SELECT count(*) FROM mail_outbox").await,
        4,
        "two confirmations, two resets; H4: LIKE patterns mail no one"
    );
}

#[tokio::test]
async fn a_reset_link_works_once_revokes_every_session_and_sends_a_notice() {
    // S8 (reset), L7, L9 (mail side)
    let app = app().await;
    let a = signed_in(&app, "reset@example.com").await;
    let b = app.browser();
    assert_eq!(
        app.login(&b, "reset@example.com", PASSWORD).await.status,
        303
    );

    let asker = app.browser();
    let csrf = asker.get("/password/forgot").await.csrf();
    asker
        .post_form(
            "/password/forgot",
            &[("csrf_token", &csrf), ("email", "reset@example.com")],
        )
        .await;
    // (The second browser's sign-in also mailed a new-device notice.)
    let token = app
        .mail
        .wait_for_subject("reset@example.com", "Reset your password")
        .await
        .token("/password/reset");

    let form = asker.get(&format!("/password/reset?token={token}")).await;
    assert_eq!(form.status, 200);
    assert!(form.body.contains(r#"autocomplete="new-password""#));
    let weak = asker
        .post_form(
            "/password/reset",
            &[
                ("csrf_token", &form.csrf()),
                ("token", &token),
                ("password", "password123"),
            ],
        )
        .await;
    assert_eq!(weak.status, 400, "the policy applies");
    let new_password = "a brand new passphrase";
    let done = asker
        .post_form(
            "/password/reset",
            &[
                ("csrf_token", &form.csrf()),
                ("token", &token),
                ("password", new_password),
            ],
        )
        .await;
    assert_eq!(done.status, 200, "{}", done.body);
    assert!(done.body.contains("Password changed"));

    assert!(
        a.get("/account").await.is_sign_in_redirect(),
        "every session is revoked"
    );
    assert!(b.get("/account").await.is_sign_in_redirect());
    let again = asker
        .post_form(
            "/password/reset",
            &[
                ("csrf_token", &form.csrf()),
                ("token", &token),
                ("password", "yet another passphrase"),
            ],
        )
        .await;
    assert_eq!(again.status, 400, "single use");
    assert_eq!(
        asker
            .get(&format!("/password/reset?token={token}"))
            .await
            .status,
        400
    );

    assert_eq!(
        app.login(&app.browser(), "reset@example.com", PASSWORD)
            .await
            .status,
        401
    );
    assert_eq!(
        app.login(&app.browser(), "reset@example.com", new_password)
            .await
            .status,
        303
    );
    app.mail
        .wait_for_subject("reset@example.com", "Your password was changed")
        .await;
}

#[tokio::test]
async fn an_expired_reset_link_fails_clearly() {
    // L7
    let app = app().await;
    verified_user(&app, "slow@example.com").await;
    let b = app.browser();
    let csrf = b.get("/password/forgot").await.csrf();
    b.post_form(
        "/password/forgot",
        &[("csrf_token", &csrf), ("email", "slow@example.com")],
    )
    .await;
    let token = app.mail.wait_for("slow@example.com", 2).await[1].token("/password/reset");
    app.clock.advance(Duration::from_secs(31 * 60));
    let r = b.get(&format!("/password/reset?token={token}")).await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("expired"));
    let r = b
        .post_form(
            "/password/reset",
            &[
                ("csrf_token", &csrf),
                ("token", &token),
                ("password", "a brand new passphrase"),
            ],
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        app.login(&app.browser(), "slow@example.com", PASSWORD)
            .await
            .status,
        303,
        "nothing changed"
    );
}

#[tokio::test]
async fn changing_the_address_takes_effect_only_when_the_new_address_confirms() {
    // L9 (address change)
    let app = app().await;
    let b = signed_in(&app, "old@example.com").await;
    crate::otp::step_up_by_email(&app, &b, "old@example.com", "/account/email").await;
    let page = b.get("/account/email").await;
    assert_eq!(page.status, 200);
    let wrong = b
        .post_form(
            "/account/email",
            &[
                ("csrf_token", &page.csrf()),
                ("new_email", "new@example.com"),
                ("current_password", "not it at all"),
            ],
        )
        .await;
    assert_eq!(wrong.status, 400);
    let r = b
        .post_form(
            "/account/email",
            &[
                ("csrf_token", &page.csrf()),
                ("new_email", "New@Example.com"),
                ("current_password", PASSWORD),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("Check your new inbox"));

    let confirm = app.mail.wait_for("new@example.com", 1).await;
    app.mail
        .wait_for_subject(
            "old@example.com",
            "A change of your e-mail address was requested",
        )
        .await;
    assert_eq!(
        app.count("SELECT count(*) FROM users WHERE email = 'old@example.com'")
            .await,
        1,
        "not yet"
    );

    let token = confirm[0].token("/account/email/confirm");
    let r = app
        .browser()
        .open_link(&format!("/account/email/confirm?token={token}"))
        .await;
    assert_eq!(r.status, 200);
    assert!(r.body.contains("new@example.com"));
    assert_eq!(
        app.browser()
            .open_link(&format!("/account/email/confirm?token={token}"))
            .await
            .status,
        400
    );
    assert_eq!(
        app.count("SELECT count(*) FROM users WHERE email = 'new@example.com'")
            .await,
        1
    );
    app.mail
        .wait_for_subject("old@example.com", "Your e-mail address was changed")
        .await;
    assert_eq!(
        app.login(&app.browser(), "new@example.com", PASSWORD)
            .await
            .status,
        303
    );
    assert!(
        app.browser()
            .get("/account/email")
            .await
            .is_sign_in_redirect(),
        "signed-in only"
    );
}

#[tokio::test]
async fn mail_queued_while_smtp_is_down_is_delivered_exactly_once_when_it_returns() {
    let app = app().await;
    for i in 0..3 {
        verified_user(&app, &format!("u{i}@example.com")).await;
    }
    app.mail.stop();
    for i in 0..3 {
        let b = app.browser();
        let csrf = b.get("/password/forgot").await.csrf();
        let r = b
            .post_form(
                "/password/forgot",
                &[
                    ("csrf_token", &csrf),
                    ("email", &format!("u{i}@example.com")),
                ],
            )
            .await;
        assert_eq!(r.status, 200);
    }
    // The worker tries, fails and backs off; nothing is lost.
    let mut tried = false;
    for _ in 0..50 {
        if app
            .count("SELECT count(*) FROM mail_outbox WHERE sent_at IS NULL AND attempts > 0")
            .await
            == 3
        {
            tried = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(tried, "three failed attempts recorded");
    // The queued bodies carry reset links: sealed at rest, never in the clear.
    let bodies: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT text_body FROM mail_outbox WHERE sent_at IS NULL")
            .fetch_all(&app.db)
            .await
            .unwrap();
    assert_eq!(bodies.len(), 3);
    assert!(
        bodies
            .iter()
            .all(|b| !String::from_utf8_lossy(b).contains("token="))
    );
    assert!(
        app.count(
            "SELECT coalesce(sum(attempts), 0)::bigint FROM mail_outbox WHERE sent_at IS NULL"
        )
        .await
            >= 3
    );
    assert_eq!(
        app.count("SELECT count(*) FROM mail_outbox WHERE failed_at IS NOT NULL")
            .await,
        0
    );

    app.mail.resume();
    app.clock.advance(Duration::from_secs(3600));
    for i in 0..3 {
        app.mail.wait_for(&format!("u{i}@example.com"), 2).await;
    }
    // Once every row is marked sent no worker will send it again: wait for that,
    // then count what arrived.
    app.wait_until("SELECT count(*) FROM mail_outbox WHERE sent_at IS NULL", 0)
        .await;
    for i in 0..3 {
        assert_eq!(
            app.mail.to(&format!("u{i}@example.com")).len(),
            2,
            "exactly once"
        );
    }
    assert_eq!(
        app.count("SELECT count(*) FROM mail_outbox WHERE sent_at IS NULL")
            .await,
        0
    );
    assert_eq!(app.metric("gatehouse_mail_outbox_depth").await, 0.0);
}

#[tokio::test]
async fn two_workers_on_one_database_never_send_a_mail_twice() {
    let app = app().await;
    let keys = gatehouse::crypto::Keys::new(app.settings.secret_key.as_ref().unwrap(), &[]);
    let store: std::sync::Arc<dyn Store> =
        std::sync::Arc::new(PgStore::new(app.db.clone(), std::sync::Arc::new(keys)));
    let now = app.clock.now();
    for i in 0..40 {
        let mail = OutboundMail {
            to: format!("bulk{i}@example.com"),
            subject: format!("Message {i}"),
            text: "text".into(),
            html: "<p>html</p>".into(),
        };
        store.enqueue_mail(&mail, now).await.unwrap();
    }
    let worker = || Worker {
        store: store.clone(),
        transport: gatehouse::mail::Transport::from_settings(&app.settings).unwrap(),
        from: app.settings.mail_from.clone(),
        clock: app.clock.clone(),
        metrics: std::sync::Arc::new(gatehouse::metrics::Metrics::new().unwrap()),
    };
    let (w1, w2) = (worker(), worker());
    // Two extra workers race the application's own one.
    let a = tokio::spawn(async move { while w1.deliver_due().await.unwrap() > 0 {} });
    let b = tokio::spawn(async move { while w2.deliver_due().await.unwrap() > 0 {} });
    a.await.unwrap();
    b.await.unwrap();
    for _ in 0..50 {
        if app
            .count("SELECT count(*) FROM mail_outbox WHERE sent_at IS NULL")
            .await
            == 0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let messages = app.mail.messages();
    assert_eq!(messages.len(), 40, "every mail once, none twice");
    let mut recipients: Vec<String> = messages.iter().flat_map(|m| m.to.clone()).collect();
    recipients.sort();
    recipients.dedup();
    assert_eq!(recipients.len(), 40);
}

#[tokio::test]
async fn dev_mode_without_smtp_writes_mail_to_files() {
    let dir =
        std::env::temp_dir().join(format!("gatehouse-mail-{}", uuid::Uuid::new_v4().simple()));
    let app = spawn_app_with(Options {
        dev: true,
        require_verified_email: true,
        extra: vec![
            ("GATEHOUSE_SMTP_URL", String::new()),
            ("GATEHOUSE_MAIL_DIR", dir.display().to_string()),
        ],
        ..Default::default()
    })
    .await;
    app.register(&app.browser(), "dev@example.com", PASSWORD)
        .await;
    let mut files = Vec::new();
    for _ in 0..50 {
        files = std::fs::read_dir(&dir)
            .map(|d| d.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        if !files.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(files.len(), 1);
    let eml = std::fs::read_to_string(&files[0]).unwrap();
    assert!(eml.contains("To: dev@example.com"));
    assert!(eml.contains("/verify-email?token="));
    assert!(app.mail.messages().is_empty());
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn a_password_reset_kills_a_pending_change_of_address() {
    // An intruder who knew the password asks to move the account to their address;
    // the owner resets the password; the intruder's confirmation link must be dead.
    let app = app().await;
    let intruder = signed_in(&app, "victim@example.com").await;
    crate::otp::step_up_by_email(&app, &intruder, "victim@example.com", "/account/email").await;
    let page = intruder.get("/account/email").await;
    let r = intruder
        .post_form(
            "/account/email",
            &[
                ("csrf_token", &page.csrf()),
                ("new_email", "intruder@example.com"),
                ("current_password", PASSWORD),
            ],
        )
        .await;
    assert_eq!(r.status, 200);
    let link =
        app.mail.wait_for("intruder@example.com", 1).await[0].token("/account/email/confirm");

    let owner = app.browser();
    let csrf = owner.get("/password/forgot").await.csrf();
    owner
        .post_form(
            "/password/forgot",
            &[("csrf_token", &csrf), ("email", "victim@example.com")],
        )
        .await;
    let reset = app
        .mail
        .wait_for_subject("victim@example.com", "Reset your password")
        .await
        .token("/password/reset");
    let form = owner.get(&format!("/password/reset?token={reset}")).await;
    let r = owner
        .post_form(
            "/password/reset",
            &[
                ("csrf_token", &form.csrf()),
                ("token", &reset),
                ("password", "the owner's new passphrase"),
            ],
        )
        .await;
    assert_eq!(r.status, 200);

    let r = app
        .browser()
        .open_link(&format!("/account/email/confirm?token={link}"))
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(
        app.count("SELECT count(*) FROM users WHERE email = 'victim@example.com'")
            .await,
        1
    );
}

#[tokio::test]
async fn a_newer_change_request_replaces_an_older_one() {
    let app = app().await;
    let b = signed_in(&app, "typo@example.com").await;
    crate::otp::step_up_by_email(&app, &b, "typo@example.com", "/account/email").await;
    for to in ["typo@gmial.com", "right@example.com"] {
        let page = b.get("/account/email").await;
        let r = b
            .post_form(
                "/account/email",
                &[
                    ("csrf_token", &page.csrf()),
                    ("new_email", to),
                    ("current_password", PASSWORD),
                ],
            )
            .await;
        assert_eq!(r.status, 200);
    }
    let mistyped = app.mail.wait_for("typo@gmial.com", 1).await[0].token("/account/email/confirm");
    assert_eq!(
        app.browser()
            .open_link(&format!("/account/email/confirm?token={mistyped}"))
            .await
            .status,
        400
    );
    let right = app.mail.wait_for("right@example.com", 1).await[0].token("/account/email/confirm");
    assert_eq!(
        app.browser()
            .open_link(&format!("/account/email/confirm?token={right}"))
            .await
            .status,
        200
    );
}

#[tokio::test]
async fn the_change_of_address_form_is_not_a_password_oracle() {
    let app = app().await;
    let b = signed_in(&app, "oracle@example.com").await;
    crate::otp::step_up_by_email(&app, &b, "oracle@example.com", "/account/email").await;
    let mut statuses = Vec::new();
    for _ in 0..7 {
        let page = b.get("/account/email").await;
        let r = b
            .post_form(
                "/account/email",
                &[
                    ("csrf_token", &page.csrf()),
                    ("new_email", "x@example.com"),
                    ("current_password", "guess guess guess"),
                ],
            )
            .await;
        statuses.push(r.status);
    }
    assert_eq!(&statuses[..5], &[400, 400, 400, 400, 400]);
    assert_eq!(
        statuses[5], 429,
        "the sign-in throttle applies: {statuses:?}"
    );
}

#[tokio::test]
async fn public_metrics_do_not_tell_which_addresses_have_accounts() {
    // L2 (metrics side)
    let app = app().await;
    verified_user(&app, "exists@example.com").await;
    let before = app.metrics_text().await;
    app.register(&app.browser(), "exists@example.com", PASSWORD)
        .await;
    let after_taken = app.metrics_text().await;
    app.register(&app.browser(), "fresh@example.com", PASSWORD)
        .await;
    let after_fresh = app.metrics_text().await;
    let registrations = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|l| l.starts_with("gatehouse_registrations_total"))
            .map(str::to_string)
            .collect()
    };
    assert!(
        registrations(&before)
            .iter()
            .all(|l| !l.contains("taken") && !l.contains("created"))
    );
    assert!(
        registrations(&after_taken)
            .iter()
            .all(|l| l.contains("accepted"))
    );
    assert_eq!(
        registrations(&after_taken).len(),
        registrations(&after_fresh).len()
    );
}
