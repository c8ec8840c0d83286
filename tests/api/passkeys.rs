//! Passkeys over HTTP (DESIGN.md "Passkeys and device-bound sessions"; checklist
//! P1–P4): both WebAuthn ceremonies driven by a software authenticator written in the
//! tests (`soft_passkey`), against the real server and PostgreSQL.

use serde_json::{Value, json};

use crate::helpers::{Browser, PUBLIC_URL, Resp, TestApp, spawn_app};
use crate::oauth_helpers::{app_client, introspect, sign_in_app};
use crate::otp::{enrol, password_step, step_up_by_email, totp};
use crate::soft_passkey::SoftPasskey;

/// A way the authenticator lies.
type Lie = fn(&mut SoftPasskey);

pub(crate) async fn post_json(b: &Browser, path: &str, body: &Value) -> Resp {
    b.send(
        b.request(reqwest::Method::POST, path)
            .header("content-type", "application/json")
            .header("accept", "application/json")
            .body(body.to_string()),
    )
    .await
}

pub(crate) fn json_of(r: &Resp) -> Value {
    serde_json::from_str(&r.body).unwrap_or_else(|_| panic!("JSON expected: {}", r.body))
}

/// An RFC 9457 problem with `status`, and its words.
fn problem(r: &Resp, status: u16) -> String {
    assert_eq!(r.status, status, "{}", r.body);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/problem+json"),
        "{}",
        r.body
    );
    json_of(r)["detail"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Registration options for a browser that has stepped up on the passkeys page; its
/// CSRF token and the options.
pub(crate) async fn register_options(b: &Browser) -> (String, Value) {
    let page = b.get("/account/passkeys").await;
    assert_eq!(page.status, 200, "{}", page.body);
    let csrf = page.csrf();
    let r = post_json(
        b,
        "/webauthn/register/options",
        &json!({ "csrf_token": csrf }),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    (csrf, json_of(&r))
}

pub(crate) async fn finish_registration(
    b: &Browser,
    csrf: &str,
    options: &Value,
    name: &str,
    credential: Value,
) -> Resp {
    post_json(
        b,
        "/webauthn/register",
        &json!({
            "csrf_token": csrf,
            "ceremony": options["ceremony"],
            "name": name,
            "credential": credential,
        }),
    )
    .await
}

/// Adds a passkey through the pages (stepping up by e-mail first).
pub(crate) async fn add_passkey(
    app: &TestApp,
    b: &Browser,
    email: &str,
    name: &str,
) -> SoftPasskey {
    step_up_by_email(app, b, email, "/account/passkeys").await;
    let (csrf, options) = register_options(b).await;
    let mut key = SoftPasskey::new(PUBLIC_URL);
    let credential = key.register(&options);
    let r = finish_registration(b, &csrf, &options, name, credential).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(json_of(&r)["redirect"], "/account/passkeys?added=1");
    key
}

/// Sign-in options on `/login`: (csrf, options).
async fn sign_in_options(b: &Browser) -> (String, Value) {
    let page = b.get("/login").await;
    assert_eq!(page.status, 200, "{}", page.body);
    let csrf = page.csrf();
    let r = post_json(
        b,
        "/webauthn/sign-in/options",
        &json!({ "csrf_token": csrf }),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    (csrf, json_of(&r))
}

async fn finish_sign_in(b: &Browser, csrf: &str, options: &Value, credential: Value) -> Resp {
    post_json(
        b,
        "/webauthn/sign-in",
        &json!({ "csrf_token": csrf, "ceremony": options["ceremony"], "credential": credential }),
    )
    .await
}

async fn passkey_sign_in(b: &Browser, key: &mut SoftPasskey) -> Resp {
    let (csrf, options) = sign_in_options(b).await;
    let credential = key.assert(&options);
    finish_sign_in(b, &csrf, &options, credential).await
}

/// Steps a signed-in browser up with its passkey; the answer.
pub(crate) async fn passkey_step_up(b: &Browser, key: &mut SoftPasskey) -> Resp {
    let page = b.get("/step-up").await;
    assert_eq!(page.status, 200, "{}", page.body);
    let csrf = page.csrf();
    let r = post_json(
        b,
        "/webauthn/step-up/options",
        &json!({ "csrf_token": csrf }),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let options = json_of(&r);
    let credential = key.assert(&options);
    post_json(
        b,
        "/webauthn/step-up",
        &json!({ "csrf_token": csrf, "ceremony": options["ceremony"], "credential": credential }),
    )
    .await
}

async fn sessions_of(app: &TestApp, email: &str) -> i64 {
    app.count(&format!(
        "SELECT count(*) FROM sessions s JOIN users u ON u.id = s.user_id
         WHERE u.email = '{email}' AND s.revoked_at IS NULL"
    ))
    .await
}

/// The claims of a JWT, unverified (the server's own signature is checked elsewhere).
fn claims(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).expect("a JWT");
    serde_json::from_slice(&crate::soft_passkey::unb64(payload)).expect("JSON claims")
}

#[tokio::test]
async fn a_passkey_is_added_after_step_up_and_signs_in_as_aal2() {
    let app = spawn_app().await;
    let email = "pia@example.com";
    let b = app.signed_in(email).await;
    let mut key = add_passkey(&app, &b, email, "MacBook Touch ID").await;
    // The notice, the history, the list.
    app.mail
        .wait_for_subject(email, "A passkey was added to your account")
        .await;
    let page = b.get("/account/passkeys?added=1").await;
    assert!(page.body.contains("MacBook Touch ID"), "{}", page.body);
    assert!(page.body.contains("never used"), "{}", page.body);
    assert!(
        page.body.contains("Your passkey was added"),
        "{}",
        page.body
    );
    assert_eq!(app.count("SELECT count(*) FROM passkeys").await, 1);
    // Its ceremony worked once and is gone.
    assert_eq!(
        app.count("SELECT count(*) FROM passkey_ceremonies").await,
        0
    );

    // A new browser signs in with it alone: aal2, amr hwk + user (RFC 8176).
    let other = app.browser();
    let r = passkey_sign_in(&other, &mut key).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(json_of(&r)["redirect"], "/account");
    assert!(app.session_cookie(&other).is_some());
    let (aal, amr): (String, Vec<String>) = sqlx::query_as(
        "SELECT aal, amr FROM sessions WHERE passkey_id IS NOT NULL AND revoked_at IS NULL",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(aal, "aal2");
    assert_eq!(amr, vec!["hwk", "user"]);
    let account = other.get("/account").await;
    assert_eq!(account.status, 200);
    assert!(account.body.contains("with passkey"), "{}", account.body);
    // The device list says how the session was proven.
    let devices = other.get("/account/devices").await;
    assert!(
        devices
            .body
            .contains("<dt>Proved with</dt><dd>Passkey</dd>"),
        "{}",
        devices.body
    );
    // Its use is recorded.
    let (count, used): (i64, bool) =
        sqlx::query_as("SELECT sign_count, last_used_at IS NOT NULL FROM passkeys")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!((count, used), (1, true));

    // An app signed in through this session learns it truthfully.
    let client = app_client(&app);
    let tokens = sign_in_app(&app, &other, &client, &[]).await;
    let id = claims(tokens.id.as_deref().expect("an ID token"));
    assert_eq!(id["acr"], "urn:gatehouse:aal2");
    assert_eq!(id["amr"], json!(["hwk", "user"]));
    let seen = introspect(&app, &client, &tokens.access).await;
    assert_eq!(seen["active"], true);
    assert_eq!(seen["acr"], "urn:gatehouse:aal2");
    assert_eq!(seen["amr"], json!(["hwk", "user"]));
}

#[tokio::test]
async fn a_synced_passkey_signs_in_as_swk() {
    let app = spawn_app().await;
    let email = "sam@example.com";
    let b = app.signed_in(email).await;
    step_up_by_email(&app, &b, email, "/account/passkeys").await;
    let (csrf, options) = register_options(&b).await;
    let mut key = SoftPasskey::new(PUBLIC_URL);
    key.synced = true;
    let credential = key.register(&options);
    let r = finish_registration(&b, &csrf, &options, "Phone", credential).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let page = b.get("/account/passkeys").await;
    assert!(page.body.contains("Synced"), "{}", page.body);
    // A synced passkey has no counter (0 each time): the single-use ceremony is what
    // stops a replay.
    let other = app.browser();
    let r = passkey_sign_in(&other, &mut key).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let amr: Vec<String> =
        sqlx::query_scalar("SELECT amr FROM sessions WHERE passkey_id IS NOT NULL")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(amr, vec!["swk", "user"]);
    let again = app.browser();
    let r = passkey_sign_in(&again, &mut key).await;
    assert_eq!(r.status, 200, "a second sign-in works too: {}", r.body);
}

#[tokio::test]
async fn adding_a_passkey_needs_a_recent_second_factor() {
    // P4: adding needs step-up.
    let app = spawn_app().await;
    let b = app.signed_in("pat@example.com").await;
    let page = b.get("/account/passkeys").await;
    assert_eq!(page.status, 200);
    assert!(
        page.body
            .contains("Confirm it's you to add or change passkeys"),
        "{}",
        page.body
    );
    let r = post_json(
        &b,
        "/webauthn/register/options",
        &json!({ "csrf_token": page.csrf() }),
    )
    .await;
    problem(&r, 403);
    assert_eq!(
        app.count("SELECT count(*) FROM passkey_ceremonies").await,
        0
    );
}

#[tokio::test]
async fn registration_from_another_origin_rp_id_or_without_verification_is_refused() {
    // P1: origin and RP id exact, user verification required; nothing is stored.
    let app = spawn_app().await;
    let email = "pam@example.com";
    let b = app.signed_in(email).await;
    step_up_by_email(&app, &b, email, "/account/passkeys").await;
    let cases: [(&str, Lie); 4] = [
        ("another origin", |k| k.origin = "https://evil.test".into()),
        ("another port", |k| {
            k.origin = format!("{PUBLIC_URL}:8443");
        }),
        ("another RP id", |k| k.rp_id = "evil.test".into()),
        ("no user verification", |k| k.user_verified = false),
    ];
    for (what, lie) in cases {
        let (csrf, options) = register_options(&b).await;
        let mut key = SoftPasskey::new(PUBLIC_URL);
        lie(&mut key);
        let credential = key.register(&options);
        let r = finish_registration(&b, &csrf, &options, "Evil", credential).await;
        let words = problem(&r, 400);
        assert!(words.contains("could not be verified"), "{what}: {words}");
    }
    assert_eq!(app.count("SELECT count(*) FROM passkeys").await, 0);
    assert_eq!(
        app.mail
            .to(email)
            .iter()
            .filter(|m| m.subject().contains("passkey"))
            .count(),
        0
    );
}

#[tokio::test]
async fn a_sign_in_for_another_origin_rp_id_or_without_verification_is_refused() {
    // P1 at sign-in: nothing signs in, nothing changes.
    let app = spawn_app().await;
    let email = "pol@example.com";
    let b = app.signed_in(email).await;
    let mut key = add_passkey(&app, &b, email, "Key").await;
    let before = sessions_of(&app, email).await;
    let cases: [(&str, Lie); 3] = [
        ("another origin", |k| {
            k.origin = "https://gatehouse.test.evil.test".into()
        }),
        ("another RP id", |k| k.rp_id = "test".into()),
        ("no user verification", |k| k.user_verified = false),
    ];
    for (what, lie) in cases {
        let other = app.browser();
        let (csrf, options) = sign_in_options(&other).await;
        let (origin, rp_id, uv) = (key.origin.clone(), key.rp_id.clone(), key.user_verified);
        lie(&mut key);
        let credential = key.assert(&options);
        (key.origin, key.rp_id, key.user_verified) = (origin, rp_id, uv);
        let r = finish_sign_in(&other, &csrf, &options, credential).await;
        let words = problem(&r, 400);
        assert!(words.contains("could not be verified"), "{what}: {words}");
        assert!(app.session_cookie(&other).is_none(), "{what}");
    }
    assert_eq!(sessions_of(&app, email).await, before);
    let unused: bool = sqlx::query_scalar("SELECT last_used_at IS NULL FROM passkeys")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert!(unused, "a refused assertion is not a use");
}

#[tokio::test]
async fn a_ceremony_answers_once() {
    // P2: a replayed registration or authentication response is refused.
    let app = spawn_app().await;
    let email = "rey@example.com";
    let b = app.signed_in(email).await;
    step_up_by_email(&app, &b, email, "/account/passkeys").await;
    let (csrf, options) = register_options(&b).await;
    let mut key = SoftPasskey::new(PUBLIC_URL);
    let credential = key.register(&options);
    let r = finish_registration(&b, &csrf, &options, "Once", credential.clone()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    // (Adding a passkey gave the session a new cookie token, and so a new CSRF token.)
    let csrf = b.get("/account/passkeys").await.csrf();
    let r = finish_registration(&b, &csrf, &options, "Twice", credential).await;
    assert!(problem(&r, 400).contains("expired or was already used"));
    assert_eq!(app.count("SELECT count(*) FROM passkeys").await, 1);

    let other = app.browser();
    let (csrf, options) = sign_in_options(&other).await;
    let credential = key.assert(&options);
    let r = finish_sign_in(&other, &csrf, &options, credential.clone()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    // The same answer again, from another browser: the ceremony is spent.
    let thief = app.browser();
    let (csrf2, options2) = sign_in_options(&thief).await;
    let r = finish_sign_in(&thief, &csrf2, &options, credential.clone()).await;
    assert!(problem(&r, 400).contains("expired or was already used"));
    // The old answer offered to a new ceremony: signed over another challenge.
    let r = finish_sign_in(&thief, &csrf2, &options2, credential).await;
    assert!(problem(&r, 400).contains("could not be verified"));
    assert!(app.session_cookie(&thief).is_none());
    // A ceremony older than five minutes is void.
    let late = app.browser();
    let (csrf, options) = sign_in_options(&late).await;
    app.clock.advance(std::time::Duration::from_secs(301));
    let credential = key.assert(&options);
    let r = finish_sign_in(&late, &csrf, &options, credential).await;
    assert!(problem(&r, 400).contains("expired"));
}

#[tokio::test]
async fn a_counter_that_goes_backwards_flags_the_passkey_and_its_sessions() {
    // P3: the credential and the sessions it proved are flagged; it signs in no more.
    let app = spawn_app().await;
    let email = "cloe@example.com";
    let b = app.signed_in(email).await;
    let mut key = add_passkey(&app, &b, email, "Old laptop").await;
    let first = app.browser();
    assert_eq!(passkey_sign_in(&first, &mut key).await.status, 200);
    assert_eq!(passkey_sign_in(&app.browser(), &mut key).await.status, 200);
    // A copy of the key made after its first use answers with an older counter.
    let copy_browser = app.browser();
    let (csrf, options) = sign_in_options(&copy_browser).await;
    key.counter = 1;
    let credential = key.assertion(options["publicKey"]["challenge"].as_str().unwrap());
    let r = finish_sign_in(&copy_browser, &csrf, &options, credential).await;
    assert!(problem(&r, 403).contains("may have been copied"));
    assert!(app.session_cookie(&copy_browser).is_none());
    assert_eq!(
        app.count("SELECT count(*) FROM passkeys WHERE clone_suspected_at IS NOT NULL")
            .await,
        1
    );
    // Both sessions it signed in must prove themselves again; the owner is told.
    assert_eq!(
        app.count(
            "SELECT count(*) FROM sessions WHERE passkey_id IS NOT NULL
             AND risk_flagged AND risk_needs_proof AND risk_reason = 'Passkey may be copied'"
        )
        .await,
        2
    );
    app.mail
        .wait_for_subject(email, "One of your passkeys may have been copied")
        .await;
    let r = first.get("/account").await;
    assert_eq!(r.status, 303, "a flagged session must step up first");
    assert!(r.location().starts_with("/step-up"), "{}", r.location());
    // The device list and the history show it to the owner.
    let devices = b.get("/account/devices").await;
    assert!(
        devices.body.contains("it may have been copied"),
        "{}",
        devices.body
    );
    let activity = b.get("/account/activity").await;
    assert!(
        activity.body.contains("A passkey may have been copied"),
        "{}",
        activity.body
    );
    let page = b.get("/account/passkeys").await;
    assert!(page.body.contains("May be copied"), "{}", page.body);
    // The real key, counting on, is refused too: the credential is suspended.
    key.counter = 10;
    let r = passkey_sign_in(&app.browser(), &mut key).await;
    assert!(problem(&r, 403).contains("may have been copied"));
    // One notice, however many copies try.
    assert_eq!(
        app.mail
            .to(email)
            .iter()
            .filter(|m| m.subject() == "One of your passkeys may have been copied")
            .count(),
        1
    );
}

#[tokio::test]
async fn another_users_credential_never_signs_in() {
    // P4: another account's credential is refused, whatever the authenticator claims.
    let app = spawn_app().await;
    let alice = app.signed_in("alice@example.com").await;
    let mut alices = add_passkey(&app, &alice, "alice@example.com", "Alice's").await;
    let bob = app.signed_in("bob@example.com").await;
    let bobs = add_passkey(&app, &bob, "bob@example.com", "Bob's").await;

    // Alice's credential claiming to be Bob's account (his user handle).
    let other = app.browser();
    let (csrf, options) = sign_in_options(&other).await;
    alices.user_handle = bobs.user_handle.clone();
    let credential = alices.assert(&options);
    let r = finish_sign_in(&other, &csrf, &options, credential).await;
    assert!(problem(&r, 400).contains("not registered"));
    assert!(app.session_cookie(&other).is_none());

    // Alice's credential at Bob's step-up.
    app.clock.advance(std::time::Duration::from_secs(700));
    let page = bob.get("/step-up").await;
    assert_eq!(page.status, 200);
    let csrf = page.csrf();
    let r = post_json(
        &bob,
        "/webauthn/step-up/options",
        &json!({ "csrf_token": csrf }),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let options = json_of(&r);
    // Only Bob's credential is offered.
    let allowed = options["publicKey"]["allowCredentials"].as_array().unwrap();
    assert_eq!(allowed.len(), 1);
    assert_eq!(
        allowed[0]["id"],
        crate::soft_passkey::b64(&bobs.credential_id)
    );
    let credential = alices.assert(&options);
    let r = post_json(
        &bob,
        "/webauthn/step-up",
        &json!({ "csrf_token": csrf, "ceremony": options["ceremony"], "credential": credential }),
    )
    .await;
    assert!(problem(&r, 400).contains("not registered"));
    let stepped: i64 = app
        .count("SELECT count(*) FROM security_events WHERE kind = 'stepped_up'")
        .await;
    assert_eq!(stepped, 2, "only the two step-ups by e-mail");
}

#[tokio::test]
async fn a_passkey_steps_up_a_password_session() {
    let app = spawn_app().await;
    let email = "stu@example.com";
    let b = app.signed_in(email).await;
    let mut key = add_passkey(&app, &b, email, "Key").await;
    // Later, the step-up has gone stale.
    app.clock.advance(std::time::Duration::from_secs(700));
    let page = b.get("/step-up?return_to=%2Faccount%2Fpasskeys").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("Use a passkey"), "{}", page.body);
    assert!(
        page.body.contains("/static/js/passkeys.js"),
        "{}",
        page.body
    );
    let csrf = page.csrf();
    let r = post_json(
        &b,
        "/webauthn/step-up/options",
        &json!({ "csrf_token": csrf }),
    )
    .await;
    let options = json_of(&r);
    let credential = key.assert(&options);
    let old_cookie = app.session_cookie(&b).unwrap();
    let r = post_json(
        &b,
        "/webauthn/step-up",
        &json!({
            "csrf_token": csrf,
            "ceremony": options["ceremony"],
            "credential": credential,
            "return_to": "/account/passkeys",
        }),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(json_of(&r)["redirect"], "/account/passkeys");
    // A new cookie token (S2), aal2 with the passkey's methods added.
    assert_ne!(app.session_cookie(&b).unwrap(), old_cookie);
    let amr: Vec<String> = sqlx::query_scalar(
        "SELECT amr FROM sessions WHERE revoked_at IS NULL AND passkey_id IS NOT NULL",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(amr, vec!["pwd", "email", "hwk", "user"]);
    let page = b.get("/account/passkeys").await;
    assert!(page.body.contains("Remove “Key”"), "fresh: {}", page.body);
}

#[tokio::test]
async fn a_passkey_is_the_second_factor_after_a_password() {
    // A user with an authenticator app may finish a sign-in with a passkey instead.
    let app = spawn_app().await;
    let email = "tia@example.com";
    let b = app.signed_in(email).await;
    // The app first; then a step-up with it, and the passkey.
    let enrolled = enrol(&app, &b, email).await;
    app.clock.advance(std::time::Duration::from_secs(700));
    let page = b.get("/step-up").await;
    let code = totp(&enrolled.secret, app.clock.now().unix_timestamp());
    let r = b
        .post_form("/step-up", &[("csrf_token", &page.csrf()), ("code", &code)])
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let (csrf, options) = register_options(&b).await;
    let mut key = SoftPasskey::new(PUBLIC_URL);
    let credential = key.register(&options);
    let r = finish_registration(&b, &csrf, &options, "Key", credential).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let other = app.browser();
    let page = password_step(&app, &other, email).await;
    assert!(page.body.contains("Use a passkey"), "{}", page.body);
    let csrf = page.csrf();
    let r = post_json(
        &other,
        "/webauthn/verify/options",
        &json!({ "csrf_token": csrf }),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let options = json_of(&r);
    let credential = key.assert(&options);
    let r = post_json(
        &other,
        "/webauthn/verify",
        &json!({ "csrf_token": csrf, "ceremony": options["ceremony"], "credential": credential }),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(json_of(&r)["redirect"], "/account");
    let account = other.get("/account").await;
    assert_eq!(account.status, 200);
    assert!(
        account.body.contains("with password + passkey"),
        "{}",
        account.body
    );
    // The half-finished sign-in is spent: its cookie finishes nothing again.
    assert_eq!(
        app.count("SELECT count(*) FROM mfa_challenges WHERE kind = 'sign_in'")
            .await,
        0
    );
}

#[tokio::test]
async fn removing_a_passkey_needs_step_up_and_mails_a_notice() {
    // P4: removal needs step-up and mails a notice.
    let app = spawn_app().await;
    let email = "rem@example.com";
    let b = app.signed_in(email).await;
    let mut key = add_passkey(&app, &b, email, "Spare key").await;
    // A browser signed in with it (the one that was lost, say).
    let lost = app.browser();
    assert_eq!(passkey_sign_in(&lost, &mut key).await.status, 200);
    let id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM passkeys")
        .fetch_one(&app.db)
        .await
        .unwrap();
    app.clock.advance(std::time::Duration::from_secs(700));
    let page = b.get("/account/passkeys").await;
    assert!(!page.body.contains("Remove “Spare key”"), "{}", page.body);
    let r = b
        .post_form(
            "/account/passkeys",
            &[
                ("csrf_token", &page.csrf()),
                ("action", "remove"),
                ("id", &id.to_string()),
            ],
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(app.count("SELECT count(*) FROM passkeys").await, 1);
    // Renaming waits for a step-up too.
    let r = b
        .post_form(
            "/account/passkeys",
            &[
                ("csrf_token", &page.csrf()),
                ("action", "rename"),
                ("id", &id.to_string()),
                ("name", "Renamed"),
            ],
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.body);

    // With a passkey set up, the mailbox no longer steps up: the passkey does.
    let page = b.get("/step-up").await;
    assert!(!page.body.contains("Send the code"), "{}", page.body);
    assert!(
        page.body
            .contains("Confirm it's you with one of your passkeys")
    );
    let r = b
        .post_form(
            "/step-up",
            &[("csrf_token", &page.csrf()), ("action", "email")],
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(passkey_step_up(&b, &mut key).await.status, 200);
    let page = b.get("/account/passkeys").await;
    let r = b
        .post_form(
            "/account/passkeys",
            &[
                ("csrf_token", &page.csrf()),
                ("action", "rename"),
                ("id", &id.to_string()),
                ("name", "  Yubikey 5C  "),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("is now called “Yubikey 5C”"), "{}", r.body);
    // A bad name changes nothing.
    let r = b
        .post_form(
            "/account/passkeys",
            &[
                ("csrf_token", &page.csrf()),
                ("action", "rename"),
                ("id", &id.to_string()),
                ("name", &"x".repeat(65)),
            ],
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    // Someone else's id is not found.
    let r = b
        .post_form(
            "/account/passkeys",
            &[
                ("csrf_token", &page.csrf()),
                ("action", "remove"),
                ("id", &uuid::Uuid::new_v4().to_string()),
            ],
        )
        .await;
    assert_eq!(r.status, 404, "{}", r.body);
    let r = b
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
    assert!(r.body.contains("“Yubikey 5C” was removed"), "{}", r.body);
    assert_eq!(app.count("SELECT count(*) FROM passkeys").await, 0);
    // The session it signed in ended with it; the one that removed it lives on.
    assert!(lost.get("/account").await.is_sign_in_redirect());
    assert_eq!(b.get("/account").await.status, 200);
    assert_eq!(
        app.count("SELECT count(*) FROM sessions WHERE revoked_reason = 'passkey removed'")
            .await,
        1
    );
    app.mail
        .wait_for_subject(email, "A passkey was removed from your account")
        .await;
    assert_eq!(
        app.count("SELECT count(*) FROM security_events WHERE kind = 'passkey_removed'")
            .await,
        1
    );
}

#[tokio::test]
async fn bad_input_to_the_ceremonies_is_a_clear_error_and_changes_nothing() {
    let app = spawn_app().await;
    let b = app.browser();
    let page = b.get("/login").await;
    let csrf = page.csrf();
    // Not JSON; the wrong media type; no CSRF token; an unknown field; a ceremony id
    // that is not one.
    let r = b
        .send(
            b.request(reqwest::Method::POST, "/webauthn/sign-in/options")
                .header("content-type", "application/json")
                .body("{not json"),
        )
        .await;
    problem(&r, 400);
    let r = b
        .send(
            b.request(reqwest::Method::POST, "/webauthn/sign-in/options")
                .header("content-type", "text/plain")
                .body("{}"),
        )
        .await;
    problem(&r, 415);
    let r = post_json(
        &b,
        "/webauthn/sign-in/options",
        &json!({ "csrf_token": "nope" }),
    )
    .await;
    problem(&r, 403);
    let r = post_json(
        &b,
        "/webauthn/sign-in/options",
        &json!({ "csrf_token": csrf, "extra": 1 }),
    )
    .await;
    problem(&r, 400);
    let r = post_json(
        &b,
        "/webauthn/sign-in",
        &json!({ "csrf_token": csrf, "ceremony": "../../etc", "credential": {
            "id": "AA", "rawId": "AA", "type": "public-key",
            "response": { "authenticatorData": "AA", "clientDataJSON": "AA", "signature": "AA" }
        }}),
    )
    .await;
    problem(&r, 400);
    let r = post_json(
        &b,
        "/webauthn/sign-in",
        &json!({ "csrf_token": csrf, "ceremony": uuid::Uuid::new_v4(), "credential": "x" }),
    )
    .await;
    problem(&r, 400);
    // Signed out, the account-side ceremonies answer 401.
    let r = post_json(
        &b,
        "/webauthn/register/options",
        &json!({ "csrf_token": csrf }),
    )
    .await;
    problem(&r, 401);
    let r = post_json(
        &b,
        "/webauthn/step-up/options",
        &json!({ "csrf_token": csrf }),
    )
    .await;
    problem(&r, 401);
    // No half-finished sign-in: nothing to verify.
    let r = post_json(
        &b,
        "/webauthn/verify/options",
        &json!({ "csrf_token": csrf }),
    )
    .await;
    problem(&r, 400);
    // A cross-site request is refused before anything else.
    let r = b
        .send(
            b.request(reqwest::Method::POST, "/webauthn/sign-in/options")
                .header("content-type", "application/json")
                .header("origin", "https://evil.test")
                .body(json!({ "csrf_token": csrf }).to_string()),
        )
        .await;
    problem(&r, 403);
    assert_eq!(
        app.count("SELECT count(*) FROM passkey_ceremonies").await,
        0
    );
    assert_eq!(app.count("SELECT count(*) FROM sessions").await, 0);
}

#[tokio::test]
async fn the_login_page_offers_passkeys_only_where_the_server_can() {
    let app = spawn_app().await;
    let page = app.browser().get("/login").await;
    assert!(
        page.body.contains("Sign in with a passkey"),
        "{}",
        page.body
    );
    assert!(page.body.contains(r#"autocomplete="username webauthn""#));
    let script = app.browser().get("/static/js/passkeys.js").await;
    assert_eq!(script.status, 200);
    assert!(script.body.contains("navigator.credentials.get"));
    // A server whose public URL is an address (no RP id possible) offers none, and
    // its ceremony endpoints say so.
    let bare = crate::helpers::spawn_app_with(crate::helpers::Options {
        issuer_is_address: true,
        ..Default::default()
    })
    .await;
    let b = bare.browser();
    let page = b.get("/login").await;
    assert!(
        !page.body.contains("Sign in with a passkey"),
        "{}",
        page.body
    );
    let r = post_json(
        &b,
        "/webauthn/sign-in/options",
        &json!({ "csrf_token": page.csrf() }),
    )
    .await;
    problem(&r, 404);
}

/// Behind a trusted proxy (the test client), with the GeoIP fixture (Berlin
/// 192.0.2.0/24, Sydney 198.51.100.0/24) and a clock the test moves.
async fn risk_app(extra: Vec<(&'static str, String)>) -> TestApp {
    let mut all = vec![(
        "GATEHOUSE_GEOIP_DB",
        crate::geoip_fixture::write_fixture().display().to_string(),
    )];
    all.extend(extra);
    crate::helpers::spawn_app_with(crate::helpers::Options {
        trusted_proxies: Some("127.0.0.1/32".into()),
        frozen_clock: true,
        extra: all,
        ..Default::default()
    })
    .await
}

const FIREFOX: &str =
    "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";
const IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1";

#[tokio::test]
async fn a_passkey_is_the_second_factor_the_contextual_checks_ask_for() {
    // M7 with a passkey: a new device in another country, ten minutes after Berlin,
    // would need a code after a password; the passkey proves it, and the session is
    // born flagged with the reasons (and proven).
    let app = risk_app(vec![]).await;
    let email = "alice@example.com";
    let home = crate::devices::browser_at(&app, FIREFOX, "192.0.2.10");
    assert_eq!(
        app.register(&home, email, crate::helpers::PASSWORD)
            .await
            .status,
        303
    );
    let mut key = add_passkey(&app, &home, email, "Phone").await;
    app.clock.advance(std::time::Duration::from_secs(600));
    let far = crate::devices::browser_at(&app, IPHONE, "198.51.100.7");
    let r = passkey_sign_in(&far, &mut key).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let (flagged, needs_proof, aal): (bool, bool, String) = sqlx::query_as(
        "SELECT risk_flagged, risk_needs_proof, aal FROM sessions
         WHERE passkey_id IS NOT NULL AND revoked_at IS NULL",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert!(flagged, "born flagged with the checks' reasons");
    assert!(!needs_proof, "and proven by the passkey");
    assert_eq!(aal, "aal2");
    assert_eq!(far.get("/account").await.status, 200);
    let activity = home.get("/account/activity").await;
    assert!(
        activity
            .body
            .contains("Passkey; flagged: Second factor demanded"),
        "{}",
        activity.body
    );
}

#[tokio::test]
async fn a_passkey_sign_in_the_checks_deny_stays_denied() {
    // M7 (deny) with a passkey: an address that failed on other accounts, in a
    // country the owner has never been to. No session; the owner is told.
    let app = risk_app(vec![("GATEHOUSE_RISK_IP_FAILURES", "3".into())]).await;
    let email = "alice@example.com";
    let home = crate::devices::browser_at(&app, FIREFOX, "192.0.2.10");
    assert_eq!(
        app.register(&home, email, crate::helpers::PASSWORD)
            .await
            .status,
        303
    );
    let mut key = add_passkey(&app, &home, email, "Stolen phone").await;
    app.clock.advance(std::time::Duration::from_secs(6 * 3600));
    let bot = crate::devices::browser_at(&app, IPHONE, "198.51.100.7");
    for victim in ["bob@example.com", "carol@example.com", "dave@example.com"] {
        assert_eq!(app.login(&bot, victim, "Summer2026!").await.status, 401);
    }
    let before = sessions_of(&app, email).await;
    let r = passkey_sign_in(&bot, &mut key).await;
    assert!(problem(&r, 403).contains("This sign-in was blocked"));
    assert!(app.session_cookie(&bot).is_none());
    assert_eq!(sessions_of(&app, email).await, before);
    app.mail
        .wait_for_subject(email, "We blocked a sign-in to your account")
        .await;
}

#[tokio::test]
async fn a_copy_used_at_step_up_after_the_key_moved_on_is_flagged() {
    // P3 on the step-up path: the options were made before the key was used again;
    // the answer's counter is above the one in the ceremony but not above the stored
    // one.
    let app = spawn_app().await;
    let email = "sue@example.com";
    let b = app.signed_in(email).await;
    let mut key = add_passkey(&app, &b, email, "Laptop").await;
    app.clock.advance(std::time::Duration::from_secs(700));
    let page = b.get("/step-up").await;
    let csrf = page.csrf();
    let r = post_json(
        &b,
        "/webauthn/step-up/options",
        &json!({ "csrf_token": csrf }),
    )
    .await;
    let options = json_of(&r);
    // The key signs in elsewhere twice meanwhile (counter 1, 2)...
    assert_eq!(passkey_sign_in(&app.browser(), &mut key).await.status, 200);
    assert_eq!(passkey_sign_in(&app.browser(), &mut key).await.status, 200);
    // ...and a copy taken at counter 0 answers the step-up with counter 1.
    key.counter = 1;
    let credential = key.assertion(options["publicKey"]["challenge"].as_str().unwrap());
    let r = post_json(
        &b,
        "/webauthn/step-up",
        &json!({ "csrf_token": csrf, "ceremony": options["ceremony"], "credential": credential }),
    )
    .await;
    assert!(problem(&r, 403).contains("may have been copied"));
    assert_eq!(
        app.count("SELECT count(*) FROM passkeys WHERE clone_suspected_at IS NOT NULL")
            .await,
        1
    );
    // The session that tried it, and the two the key signed in, must prove
    // themselves again.
    assert_eq!(
        app.count("SELECT count(*) FROM sessions WHERE risk_needs_proof")
            .await,
        3
    );
}
