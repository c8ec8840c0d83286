//! What a person holding only the mailbox can reach, and what a change of second
//! factors or a protective action ends (DESIGN.md "Second factor at sign-in",
//! "Password change", "Wrong second-factor codes per client address"; checklist L7,
//! S8): the reviews' reproductions, over HTTP against the real server.

use std::time::Duration;

use crate::helpers::{Browser, Options, PASSWORD, PUBLIC_URL, TestApp, spawn_app_with};
use crate::oauth_helpers::{app_client, authorize_url, inactive, introspect, refresh, sign_in_app};
use crate::otp::{
    base32_decode, between, code_mails, enrol, password_step, step_up_by_email, totp, wait_code,
};
use crate::passkeys::{add_passkey, finish_registration, passkey_step_up, register_options};
use crate::soft_passkey::SoftPasskey;

const ALICE: &str = "alice@example.com";
const INTRUDER: &str = "intruder@example.com";
const NEW_PASSWORD: &str = "a passphrase the intruder chose";

fn frozen() -> Options {
    Options {
        frozen_clock: true,
        ..Options::default()
    }
}

fn now(app: &TestApp) -> i64 {
    app.clock.now().unix_timestamp()
}

/// A six-digit code that is not valid for any step near `t`.
fn wrong_code(secret: &[u8], t: i64) -> String {
    let near: Vec<String> = (-3..=3).map(|k| totp(secret, t + 30 * k)).collect();
    (0..1000)
        .map(|i| format!("{:06}", 123_457 + i * 7919))
        .find(|c| !near.contains(c))
        .unwrap()
}

/// A second browser signed in as alice with her password alone.
async fn second_session(app: &TestApp) -> Browser {
    let b = app.browser();
    let r = app.login(&b, ALICE, PASSWORD).await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.location(), "/account");
    b
}

/// From a session that proved a second factor just now, asks to move alice's account
/// to the intruder's address; returns the confirmation link (path and query).
async fn ask_to_move(app: &TestApp, b: &Browser) -> String {
    let page = b.get("/account/email").await;
    assert_eq!(page.status, 200, "{}", page.body);
    let r = b
        .post_form(
            "/account/email",
            &[
                ("csrf_token", &page.csrf()),
                ("new_email", INTRUDER),
                ("current_password", PASSWORD),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let token = app.mail.wait_for(INTRUDER, 1).await[0].token("/account/email/confirm");
    format!("/account/email/confirm?token={token}")
}

/// The link is dead (400) and the account still has alice's address.
async fn link_is_dead(app: &TestApp, link: &str) {
    let r = app.browser().open_link(link).await;
    assert_eq!(r.status, 400, "the change link still works: {}", r.body);
    assert_eq!(
        app.count("SELECT count(*) FROM users WHERE email = 'alice@example.com'")
            .await,
        1,
        "the address is unchanged"
    );
}

/// What a factor change must end, set up: the other session `b` has a step-up under
/// way, and every browser of alice's is trusted to skip the code.
async fn things_to_end(app: &TestApp, b: &Browser) {
    assert_eq!(b.get("/step-up").await.status, 200);
    sqlx::query(
        "UPDATE devices SET trusted_at = now(), trusted_until = now() + interval '30 days'",
    )
    .execute(&app.db)
    .await
    .unwrap();
    assert!(
        app.count("SELECT count(*) FROM devices WHERE trusted_until IS NOT NULL")
            .await
            > 0
    );
    assert!(app.count("SELECT count(*) FROM mfa_challenges").await > 0);
}

/// After a change of second factors in `a` (whose cookie was `a_before`): the other
/// session is signed out, `a` goes on under a new cookie, no browser is trusted, no
/// challenge waits, and the change of address asked for from `b` is dead.
async fn ended_all_but_this(app: &TestApp, a: &Browser, a_before: &str, b: &Browser, link: &str) {
    assert!(
        b.get("/account").await.is_sign_in_redirect(),
        "the other session is signed out"
    );
    let a_now = app.session_cookie(a).expect("this session keeps a cookie");
    assert_ne!(a_now, a_before, "this session has a new cookie token");
    assert_eq!(a.get("/account").await.status, 200, "and keeps working");
    let old = app.browser();
    old.set_cookie(app.session_cookie_name(), a_before);
    assert!(old.get("/account").await.is_sign_in_redirect());
    assert_eq!(
        app.count("SELECT count(*) FROM devices WHERE trusted_until IS NOT NULL")
            .await,
        0,
        "browser trust withdrawn"
    );
    assert_eq!(
        app.count("SELECT count(*) FROM mfa_challenges").await,
        0,
        "pending challenges voided"
    );
    link_is_dead(app, link).await;
}

/// alice with an authenticator app (in `a`), and a second browser `b` signed in with
/// her password and a code from the app.
async fn alice_with_an_app(app: &TestApp) -> (Browser, Vec<u8>, Browser) {
    let a = app.signed_in(ALICE).await;
    let secret = enrol(app, &a, ALICE).await.secret;
    app.clock.advance(Duration::from_secs(30));
    let b = app.browser();
    let page = password_step(app, &b, ALICE).await;
    let r = b
        .post_form(
            "/login/verify",
            &[
                ("csrf_token", &page.csrf()),
                ("code", &totp(&secret, now(app))),
            ],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    (a, secret, b)
}

#[tokio::test]
async fn setting_up_an_authenticator_app_ends_everything_else() {
    // S8 (TOTP confirmed)
    let app = spawn_app_with(frozen()).await;
    let a = app.signed_in(ALICE).await;
    let b = second_session(&app).await;
    step_up_by_email(&app, &b, ALICE, "/account/email").await;
    let link = ask_to_move(&app, &b).await;
    things_to_end(&app, &b).await;

    step_up_by_email(&app, &a, ALICE, "/account/mfa").await;
    let page = a.get("/account/mfa").await;
    let r = a
        .post_form(
            "/account/mfa",
            &[("csrf_token", &page.csrf()), ("action", "start")],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let page = a.get("/account/mfa").await;
    let key = between(&page.body, r#"<code class="secret">"#, "</code>")
        .unwrap()
        .replace(' ', "");
    let before = app.session_cookie(&a).unwrap();
    let r = a
        .post_form(
            "/account/mfa",
            &[
                ("csrf_token", &page.csrf()),
                ("action", "confirm"),
                ("code", &totp(&base32_decode(&key), now(&app))),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    ended_all_but_this(&app, &a, &before, &b, &link).await;
}

#[tokio::test]
async fn removing_the_authenticator_app_ends_everything_else() {
    // S8 (TOTP disabled)
    let app = spawn_app_with(frozen()).await;
    let (a, _, b) = alice_with_an_app(&app).await;
    let link = ask_to_move(&app, &b).await;
    things_to_end(&app, &b).await;
    let before = app.session_cookie(&a).unwrap();
    let csrf = a.get("/account/mfa").await.csrf();
    let r = a
        .post_form(
            "/account/mfa",
            &[("csrf_token", &csrf), ("action", "remove")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    ended_all_but_this(&app, &a, &before, &b, &link).await;
}

#[tokio::test]
async fn new_recovery_codes_end_everything_else() {
    // S8 (recovery codes regenerated)
    let app = spawn_app_with(frozen()).await;
    let (a, _, b) = alice_with_an_app(&app).await;
    let link = ask_to_move(&app, &b).await;
    things_to_end(&app, &b).await;
    let before = app.session_cookie(&a).unwrap();
    let csrf = a.get("/account/mfa").await.csrf();
    let r = a
        .post_form(
            "/account/mfa",
            &[("csrf_token", &csrf), ("action", "regenerate")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(crate::otp::recovery_codes_on(&r.body).len(), 10);
    ended_all_but_this(&app, &a, &before, &b, &link).await;
    // The page answered with the new cookie carries forms that work with it.
    let again = a
        .post_form(
            "/account/mfa",
            &[("csrf_token", &r.csrf()), ("action", "regenerate")],
        )
        .await;
    assert_eq!(again.status, 200, "{}", again.body);
}

#[tokio::test]
async fn adding_a_passkey_ends_everything_else() {
    // S8 (passkey added): the other session's app tokens die with it too.
    let app = spawn_app_with(frozen()).await;
    let client = app_client(&app);
    let a = app.signed_in(ALICE).await;
    let b = second_session(&app).await;
    let tokens = sign_in_app(&app, &b, &client, &[]).await;
    step_up_by_email(&app, &b, ALICE, "/account/email").await;
    let link = ask_to_move(&app, &b).await;
    things_to_end(&app, &b).await;

    step_up_by_email(&app, &a, ALICE, "/account/passkeys").await;
    let before = app.session_cookie(&a).unwrap();
    let (csrf, options) = register_options(&a).await;
    let mut key = SoftPasskey::new(PUBLIC_URL);
    let credential = key.register(&options);
    let r = finish_registration(&a, &csrf, &options, "Phone", credential).await;
    assert_eq!(r.status, 200, "{}", r.body);
    ended_all_but_this(&app, &a, &before, &b, &link).await;
    assert_eq!(app.count("SELECT count(*) FROM passkeys").await, 1);
    let (status, body) = refresh(&app, &client, &tokens.refresh).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_grant");
    assert_eq!(introspect(&app, &client, &tokens.access).await, inactive());
}

#[tokio::test]
async fn a_passkey_added_from_a_session_signed_out_meanwhile_is_not_added() {
    // S8: the acting session is re-checked inside add_passkey's transaction.
    let app = spawn_app_with(frozen()).await;
    let a = app.signed_in(ALICE).await;
    let b = second_session(&app).await;
    step_up_by_email(&app, &a, ALICE, "/account/passkeys").await;
    let (csrf, options) = register_options(&a).await;
    // "Sign out everywhere" from the other browser lands while the key is made.
    let page = b.get("/account/devices").await;
    let r = b
        .post_form(
            "/account/devices/revoke-all",
            &[("csrf_token", &page.csrf())],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let mut key = SoftPasskey::new(PUBLIC_URL);
    let credential = key.register(&options);
    let r = finish_registration(&a, &csrf, &options, "Phone", credential).await;
    assert!(
        r.status == 401 || r.status == 403,
        "{} {}",
        r.status,
        r.body
    );
    assert_eq!(app.count("SELECT count(*) FROM passkeys").await, 0);
}

#[tokio::test]
async fn removing_a_passkey_ends_everything_else() {
    // S8 (passkey removed)
    let app = spawn_app_with(frozen()).await;
    let a = app.signed_in(ALICE).await;
    let mut key = add_passkey(&app, &a, ALICE, "Phone").await;
    let b = second_session(&app).await;
    assert_eq!(passkey_step_up(&b, &mut key).await.status, 200);
    let link = ask_to_move(&app, &b).await;
    things_to_end(&app, &b).await;
    // alice proves the passkey in A (her e-mailed step-up no longer counts) and
    // removes it.
    assert_eq!(passkey_step_up(&a, &mut key).await.status, 200);
    let before = app.session_cookie(&a).unwrap();
    let id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM passkeys")
        .fetch_one(&app.db)
        .await
        .unwrap();
    let page = a.get("/account/passkeys").await;
    let r = a
        .post_form(
            "/account/passkeys",
            &[
                ("csrf_token", &page.csrf()),
                ("action", "remove"),
                ("id", &id.to_string()),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("was removed"), "{}", r.body);
    ended_all_but_this(&app, &a, &before, &b, &link).await;
    assert_eq!(app.count("SELECT count(*) FROM passkeys").await, 0);
    // The page answered with the new cookie carries forms that work with it.
    let out = a.post_form("/logout", &[("csrf_token", &r.csrf())]).await;
    assert_eq!(out.status, 303);
}

/// alice (in `owner`) and a phished session that asked to move her account to the
/// intruder's address; the link.
async fn phished(app: &TestApp) -> (Browser, Browser, String) {
    let owner = app.signed_in(ALICE).await;
    let phished = second_session(app).await;
    step_up_by_email(app, &phished, ALICE, "/account/email").await;
    let link = ask_to_move(app, &phished).await;
    // The notice to alice recommends changing the password and signing the other
    // devices out.
    let notice = app
        .mail
        .wait_for_subject(ALICE, "A change of your e-mail address was requested")
        .await;
    assert!(notice.text().contains("sign out"), "{}", notice.text());
    (owner, phished, link)
}

#[tokio::test]
async fn a_phished_change_of_address_dies_when_the_owner_changes_the_password() {
    let app = spawn_app_with(frozen()).await;
    let (owner, phished, link) = phished(&app).await;
    step_up_by_email(&app, &owner, ALICE, "/account/password").await;
    let page = owner.get("/account/password").await;
    let r = owner
        .post_form(
            "/account/password",
            &[
                ("csrf_token", &page.csrf()),
                ("current_password", PASSWORD),
                ("new_password", "the owner's new passphrase"),
                ("new_password_again", "the owner's new passphrase"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(phished.get("/account").await.is_sign_in_redirect());
    link_is_dead(&app, &link).await;
}

#[tokio::test]
async fn a_phished_change_of_address_dies_when_the_owner_signs_the_other_devices_out() {
    for action in ["revoke-others", "revoke-all"] {
        let app = spawn_app_with(frozen()).await;
        let (owner, phished, link) = phished(&app).await;
        let page = owner.get("/account/devices").await;
        let r = owner
            .post_form(
                &format!("/account/devices/{action}"),
                &[("csrf_token", &page.csrf())],
            )
            .await;
        assert_eq!(r.status, 303, "{action}: {}", r.body);
        assert!(phished.get("/account").await.is_sign_in_redirect());
        link_is_dead(&app, &link).await;
    }
}

#[tokio::test]
async fn a_phished_change_of_address_dies_when_the_owner_says_this_wasnt_me() {
    // The new-device notice's "This wasn't me" is the remedy a person reaches first.
    let app = spawn_app_with(frozen()).await;
    let (_, phished, link) = phished(&app).await;
    let token = app
        .mail
        .wait_for_subject(ALICE, "New sign-in to your account")
        .await
        .token("/not-me");
    let owner_elsewhere = app.browser();
    let r = owner_elsewhere
        .open_link(&format!("/not-me?token={token}"))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(phished.get("/account").await.is_sign_in_redirect());
    link_is_dead(&app, &link).await;
}

#[tokio::test]
async fn a_change_of_address_does_not_outlive_disabling_the_account() {
    let app = spawn_app_with(frozen()).await;
    let (_, _, link) = phished(&app).await;
    for command in ["disable", "enable"] {
        let (ok, _, err) = app.cli(&["user", command, "--email", ALICE], &[]);
        assert!(ok, "user {command}: {err}");
    }
    link_is_dead(&app, &link).await;
}

/// Someone holding only alice's mailbox chooses a new password by mail.
async fn reset_by_mail(app: &TestApp, b: &Browser) {
    let page = b.get("/password/forgot").await;
    b.post_form(
        "/password/forgot",
        &[("csrf_token", &page.csrf()), ("email", ALICE)],
    )
    .await;
    let token = app
        .mail
        .wait_for_subject(ALICE, "Reset your password")
        .await
        .token("/password/reset");
    let page = b.get(&format!("/password/reset?token={token}")).await;
    let r = b
        .post_form(
            "/password/reset",
            &[
                ("csrf_token", &page.csrf()),
                ("token", &token),
                ("password", NEW_PASSWORD),
                ("password_again", NEW_PASSWORD),
            ],
        )
        .await;
    assert!(r.status < 400, "{}", r.body);
}

#[tokio::test]
async fn the_mailbox_alone_never_reaches_aal2_for_a_person_with_an_authenticator_app() {
    // L7: after a reset, alice still needs her app; the e-mailed code is neither
    // offered nor accepted, "trust this browser" is out of reach, and an app asking
    // for aal2 gets nothing.
    let app = spawn_app_with(frozen()).await;
    let client = app_client(&app);
    let owner = app.signed_in(ALICE).await;
    let secret = enrol(&app, &owner, ALICE).await.secret;
    let mallory = app.browser();
    reset_by_mail(&app, &mallory).await;

    let url = authorize_url(&client, &[("acr_values", "urn:gatehouse:aal2")]);
    let r = mallory.get(&url).await;
    assert_eq!(r.status, 303);
    assert!(r.location().starts_with("/login"), "{}", r.location());
    let r = app.login(&mallory, ALICE, NEW_PASSWORD).await;
    assert_eq!(r.location(), "/login/verify", "{}", r.body);
    let page = mallory.get("/login/verify").await;
    assert_eq!(page.status, 200);
    assert!(!page.body.contains("E-mail me"), "{}", page.body);
    assert!(!page.body.contains(r#"value="email""#), "{}", page.body);
    assert!(!page.body.contains("e-mailed"), "{}", page.body);

    // Asking for a code by mail anyway: 400, nothing sent, no try spent.
    let mails = code_mails(&app, ALICE);
    let r = mallory
        .post_form(
            "/login/verify",
            &[("csrf_token", &page.csrf()), ("action", "email")],
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(
        app.count(
            "SELECT count(*) FROM mfa_challenges WHERE attempts = 0 AND email_code_mac IS NULL"
        )
        .await,
        1
    );
    // A guess with "Trust this browser" ticked signs nothing in and trusts nothing.
    let r = mallory
        .post_form(
            "/login/verify",
            &[
                ("csrf_token", &page.csrf()),
                ("code", &wrong_code(&secret, now(&app))),
                ("trust_browser", "on"),
            ],
        )
        .await;
    assert_eq!(r.status, 401, "{}", r.body);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(code_mails(&app, ALICE), mails, "no code was mailed");
    assert!(app.session_cookie(&mallory).is_none());
    assert_eq!(
        app.count("SELECT count(*) FROM sessions WHERE revoked_at IS NULL")
            .await,
        0,
        "no session at all, let alone aal2"
    );
    assert_eq!(
        app.count("SELECT count(*) FROM devices WHERE trusted_until IS NOT NULL")
            .await,
        0
    );
    assert_eq!(app.count("SELECT count(*) FROM oauth_codes").await, 0);
    assert!(mallory.get(&url).await.location().starts_with("/login"));
}

#[tokio::test]
async fn the_mailbox_alone_never_reaches_aal2_for_a_person_with_a_passkey() {
    // L7 with a passkey: when the checks demand a second factor, or an app asks for
    // aal2, only the passkey proves it; no code is mailed.
    let app = spawn_app_with(frozen()).await;
    let client = app_client(&app);
    let owner = app.signed_in(ALICE).await;
    add_passkey(&app, &owner, ALICE, "Phone").await;
    let mallory = app.browser();
    reset_by_mail(&app, &mallory).await;
    let mails = code_mails(&app, ALICE);

    // Three failures, then the right password from a new browser: the contextual
    // checks demand a second factor.
    for _ in 0..3 {
        let r = app.login(&app.browser(), ALICE, "not the password").await;
        assert_eq!(r.status, 401);
    }
    let r = app.login(&mallory, ALICE, NEW_PASSWORD).await;
    assert_eq!(r.location(), "/login/verify", "{}", r.body);
    let page = mallory.get("/login/verify").await;
    assert!(
        page.body
            .contains("Confirm it's you with one of your passkeys"),
        "{}",
        page.body
    );
    assert!(!page.body.contains(r#"value="email""#), "{}", page.body);
    // (The page's only form is the passkey's, whose script reads this token.)
    let csrf = between(&page.body, r#"data-csrf=""#, "\"").unwrap();
    let r = mallory
        .post_form(
            "/login/verify",
            &[("csrf_token", csrf), ("action", "email")],
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    // Digits typed anyway are refused as no code of this person's, and cost nothing:
    // more of them than a sign-in's five tries leave the sign-in waiting.
    for _ in 0..6 {
        let r = mallory
            .post_form("/login/verify", &[("csrf_token", csrf), ("code", "123456")])
            .await;
        assert_eq!(r.status, 400, "{}", r.body);
        assert!(r.body.contains("passkey"), "{}", r.body);
    }
    assert_eq!(
        app.count("SELECT count(*) FROM mfa_challenges WHERE attempts > 0")
            .await,
        0,
        "nothing was counted"
    );

    // Once the failures age out the password alone signs in, at aal1; an app asking
    // for aal2 sends the browser to a step-up that only the passkey passes.
    app.clock.advance(Duration::from_secs(16 * 60));
    let other = app.browser();
    let r = app.login(&other, ALICE, NEW_PASSWORD).await;
    assert_eq!(r.location(), "/account", "{}", r.body);
    let url = authorize_url(&client, &[("acr_values", "urn:gatehouse:aal2")]);
    let r = other.get(&url).await;
    assert!(r.location().starts_with("/step-up"), "{}", r.location());
    let page = other.get(&r.location()).await;
    assert_eq!(page.status, 200);
    assert!(!page.body.contains(r#"value="email""#), "{}", page.body);
    let r = other
        .post_form(
            "/step-up",
            &[("csrf_token", &page.csrf()), ("action", "email")],
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(code_mails(&app, ALICE), mails, "no code was mailed");
    assert_eq!(app.count("SELECT count(*) FROM oauth_codes").await, 0);
    assert_eq!(
        app.count("SELECT count(*) FROM sessions WHERE revoked_at IS NULL AND aal = 'aal2'")
            .await,
        0
    );
}

#[tokio::test]
async fn setting_up_an_app_voids_a_sign_in_waiting_for_an_emailed_code() {
    // L7: enrolling TOTP voids the person's pending e-mailed-code challenges.
    let app = spawn_app_with(frozen()).await;
    let owner = app.signed_in(ALICE).await;
    for _ in 0..3 {
        let r = app.login(&app.browser(), ALICE, "not the password").await;
        assert_eq!(r.status, 401);
    }
    let waiting = app.browser();
    let before = code_mails(&app, ALICE);
    let page = password_step(&app, &waiting, ALICE).await;
    let code = wait_code(&app, ALICE, before + 1).await;
    enrol(&app, &owner, ALICE).await;
    let r = waiting
        .post_form(
            "/login/verify",
            &[("csrf_token", &page.csrf()), ("code", &code)],
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(app.session_cookie(&waiting).is_none());
}

#[tokio::test]
async fn wrong_codes_from_one_address_stop_at_thirty_across_accounts() {
    // DESIGN.md "Wrong second-factor codes per client address": an address holding
    // four accounts' passwords gets 30 wrong codes in 15 minutes, then 429 with
    // Retry-After; another address is not affected.
    let app = spawn_app_with(frozen()).await;
    let mut accounts = Vec::new();
    for i in 0..4 {
        let email = format!("user{i}@example.com");
        let b = app.signed_in(&email).await;
        let secret = enrol(&app, &b, &email).await.secret;
        accounts.push((email, secret));
    }
    let t = now(&app);
    // Ten wrong codes for each of three accounts (two sign-ins of five each, as many
    // as the per-sign-in and per-person limits allow).
    for (email, secret) in &accounts[..3] {
        for _ in 0..2 {
            let b = app.browser();
            let csrf = password_step(&app, &b, email).await.csrf();
            for n in 1..=5 {
                let r = b
                    .post_form(
                        "/login/verify",
                        &[("csrf_token", &csrf), ("code", &wrong_code(secret, t))],
                    )
                    .await;
                assert_eq!(r.status, if n < 5 { 401 } else { 400 }, "{}", r.body);
            }
        }
    }
    // The fourth account, fresh on its own counts, from the same address: refused
    // before any code is checked, the right one included.
    app.clock.advance(Duration::from_secs(30));
    let (email, secret) = &accounts[3];
    let b = app.browser();
    let csrf = password_step(&app, &b, email).await.csrf();
    for code in [wrong_code(secret, now(&app)), totp(secret, now(&app))] {
        let r = b
            .post_form("/login/verify", &[("csrf_token", &csrf), ("code", &code)])
            .await;
        assert_eq!(r.status, 429, "{}", r.body);
        let wait: u64 = r
            .header("retry-after")
            .expect("Retry-After")
            .parse()
            .unwrap();
        assert!(wait > 0 && wait <= 900, "{wait}");
    }
    assert!(app.session_cookie(&b).is_none());
    // Another address is not affected.
    let elsewhere = Browser::from_address(&app.address, "127.0.0.2".parse().unwrap());
    let csrf = password_step(&app, &elsewhere, email).await.csrf();
    let r = elsewhere
        .post_form(
            "/login/verify",
            &[("csrf_token", &csrf), ("code", &totp(secret, now(&app)))],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    // Fifteen minutes later the first address may try again.
    app.clock.advance(Duration::from_secs(15 * 60));
    let csrf = password_step(&app, &b, email).await.csrf();
    let r = b
        .post_form(
            "/login/verify",
            &[("csrf_token", &csrf), ("code", &totp(secret, now(&app)))],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
}
