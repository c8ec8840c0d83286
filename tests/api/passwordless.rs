//! People without a password (`users.password_hash` NULL: made from an upstream, or
//! by `user create --no-password`): every password path over HTTP. No password
//! matches theirs, and trying costs and answers exactly what a wrong one does; the
//! pages that ask for the current password ask them for none (a fresh second factor
//! is the proof); a reset link gives them one.

use crate::helpers::{Browser, Options, PASSWORD, TestApp, spawn_app, spawn_app_with};
use crate::otp::step_up_by_email;

const ALICE: &str = "alice@example.com";
const NEW_PASSWORD: &str = "a brand new passphrase";

/// Takes the account's password away, as an account made from an upstream has none.
async fn without_password(app: &TestApp, email: &str) {
    let done = sqlx::query("UPDATE users SET password_hash = NULL WHERE email = $1")
        .bind(email)
        .execute(&app.db)
        .await
        .expect("clearing the password");
    assert_eq!(done.rows_affected(), 1);
}

/// The failed sign-in page with the address taken out: what an attacker compares
/// (one browser, so one CSRF token on every page).
async fn failed_sign_in(app: &TestApp, b: &Browser, email: &str, password: &str) -> (u16, String) {
    let r = app.login(b, email, password).await;
    (r.status, r.page().replace(email, "EMAIL"))
}

#[tokio::test]
async fn no_password_signs_in_a_person_without_one_and_the_refusal_is_a_wrong_passwords() {
    // L1: the same status and page as a wrong password, and counted like one.
    let app = spawn_app().await;
    app.user(ALICE).await;
    app.user("bob@example.com").await;
    without_password(&app, ALICE).await;

    let b = app.browser();
    let wrong = failed_sign_in(&app, &b, "bob@example.com", "not the password").await;
    assert_eq!(wrong.0, 401);
    for password in [PASSWORD, "not the password"] {
        assert_eq!(
            failed_sign_in(&app, &b, ALICE, password).await,
            wrong,
            "{password:?}"
        );
    }
    assert_eq!(
        app.count(
            "SELECT count(*) FROM security_events e JOIN users u ON u.id = e.user_id
             WHERE u.email = 'alice@example.com' AND e.kind = 'sign_in_failed'"
        )
        .await,
        2,
        "counted like wrong passwords"
    );
    assert_eq!(
        app.count(
            "SELECT count(*) FROM sessions s JOIN users u ON u.id = s.user_id
             WHERE u.email = 'alice@example.com' AND s.revoked_at IS NULL"
        )
        .await,
        0
    );
}

#[tokio::test]
async fn a_person_without_a_password_costs_a_full_password_check_at_production_cost() {
    // L1 at the real argon2 cost: the dummy hash runs for an account without a
    // password as for an unknown one, so its answer takes as long as a wrong one.
    let app = spawn_app_with(Options {
        login_max_failures: 100,
        ip_max_failures: 100_000,
        argon2: gatehouse::settings::Argon2Cost::PRODUCTION,
        ..Default::default()
    })
    .await;
    app.user("real@example.com").await;
    app.user(ALICE).await;
    without_password(&app, ALICE).await;
    let b = app.browser();
    let csrf = b.get("/login").await.csrf();
    let mut with = Vec::new();
    let mut without = Vec::new();
    for i in 0..24 {
        let (email, times) = if i % 2 == 0 {
            ("real@example.com", &mut with)
        } else {
            (ALICE, &mut without)
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
    let (k, u) = (median(&mut with), median(&mut without));
    assert!(
        u >= 0.5 * k && k >= 0.5 * u,
        "no password {u:.4}s vs a wrong one {k:.4}s: both must cost a real hash"
    );
}

#[tokio::test]
async fn a_person_without_a_password_sets_one_after_a_step_up_without_being_asked_for_a_current_one()
 {
    let app = spawn_app().await;
    let b = app.signed_in(ALICE).await;
    without_password(&app, ALICE).await;
    let account = b.get("/account").await;
    assert!(account.body.contains("Set a password"), "{}", account.body);

    // The fresh second factor every password change needs comes first.
    assert!(
        b.get("/account/password")
            .await
            .location()
            .starts_with("/step-up")
    );
    step_up_by_email(&app, &b, ALICE, "/account/password").await;
    let page = b.get("/account/password").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("Set a password"), "{}", page.body);
    assert!(!page.body.contains("current_password"), "{}", page.body);
    let mismatch = b
        .post_form(
            "/account/password",
            &[
                ("csrf_token", &page.csrf()),
                ("new_password", NEW_PASSWORD),
                ("new_password_again", "something else entirely"),
            ],
        )
        .await;
    assert_eq!(mismatch.status, 400);
    let done = b
        .post_form(
            "/account/password",
            &[
                ("csrf_token", &page.csrf()),
                ("new_password", NEW_PASSWORD),
                ("new_password_again", NEW_PASSWORD),
            ],
        )
        .await;
    assert_eq!(done.status, 200, "{}", done.body);
    assert!(done.body.contains("Password changed"), "{}", done.body);
    assert_eq!(
        app.count(
            "SELECT count(*) FROM users WHERE email = 'alice@example.com'
             AND password_hash IS NOT NULL"
        )
        .await,
        1
    );
    // Now it signs in, and the page asks for it as the current one.
    assert_eq!(
        app.login(&app.browser(), ALICE, NEW_PASSWORD).await.status,
        303
    );
    let page = b.get("/account/password").await;
    assert!(page.body.contains("current_password"), "{}", page.body);
}

#[tokio::test]
async fn a_password_reset_gives_a_person_without_one_a_password() {
    let app = spawn_app().await;
    app.user(ALICE).await;
    without_password(&app, ALICE).await;
    let b = app.browser();
    let csrf = b.get("/password/forgot").await.csrf();
    b.post_form(
        "/password/forgot",
        &[("csrf_token", &csrf), ("email", ALICE)],
    )
    .await;
    let token = app
        .mail
        .wait_for_subject(ALICE, "Reset your password")
        .await
        .token("/password/reset");
    let form = b.get(&format!("/password/reset?token={token}")).await;
    assert_eq!(form.status, 200, "{}", form.body);
    let done = b
        .post_form(
            "/password/reset",
            &[
                ("csrf_token", &form.csrf()),
                ("token", &token),
                ("password", NEW_PASSWORD),
            ],
        )
        .await;
    assert_eq!(done.status, 200, "{}", done.body);
    assert_eq!(
        app.login(&app.browser(), ALICE, NEW_PASSWORD).await.status,
        303
    );
}

#[tokio::test]
async fn changing_the_address_asks_a_person_without_a_password_for_none_after_a_step_up() {
    let app = spawn_app().await;
    let b = app.signed_in(ALICE).await;
    without_password(&app, ALICE).await;
    step_up_by_email(&app, &b, ALICE, "/account/email").await;
    let page = b.get("/account/email").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(!page.body.contains("current_password"), "{}", page.body);
    let r = b
        .post_form(
            "/account/email",
            &[
                ("csrf_token", &page.csrf()),
                ("new_email", "new@example.com"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("Check your new inbox"), "{}", r.body);
    app.mail.wait_for("new@example.com", 1).await;
}

#[tokio::test]
async fn user_create_without_a_password_makes_an_account_no_password_opens() {
    let app = spawn_app().await;
    let (ok, out, err) = app.cli(
        &[
            "user",
            "create",
            "--email",
            "Ops@Example.com",
            "--verified",
            "--no-password",
        ],
        &[],
    );
    assert!(ok, "{err}");
    assert!(out.contains("ops@example.com"), "{out}");
    assert_eq!(
        app.count(
            "SELECT count(*) FROM users WHERE email = 'ops@example.com'
             AND password_hash IS NULL AND email_verified_at IS NOT NULL"
        )
        .await,
        1
    );
    assert_eq!(
        app.login(&app.browser(), "ops@example.com", PASSWORD)
            .await
            .status,
        401
    );
}
