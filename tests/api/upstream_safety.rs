//! What the upstream sign-in must not leave behind: links made before the address
//! was proven (pre-hijacking), sessions of a removed link or upstream, a replayed
//! logout, and a `prompt=login` satisfied by the upstream's silent sign-in.

use serde_json::json;

use crate::helpers::{Browser, Options, PASSWORD, TestApp};
use crate::oauth_helpers::{CB, app_client, authorize_url, pkce};
use crate::otp::{enrol, step_up_by_email, totp};
use crate::upstream_rig::{
    LABEL, StandInOp, UP, Visitor, create_user, downstream, now, query_of, rig_with,
};

const VICTIM: &str = "victim@example.com";
const NEW_PASSWORD: &str = "a brand new passphrase 42";

/// The mailbox's owner chooses a new password with "Forgot your password?".
async fn reset_by_mail(app: &TestApp, email: &str) {
    let b = app.browser();
    let page = b.get("/password/forgot").await;
    b.post_form(
        "/password/forgot",
        &[("csrf_token", &page.csrf()), ("email", email)],
    )
    .await;
    let mail = app
        .mail
        .wait_for_subject(email, "Reset your password")
        .await
        .text();
    let marker = "/password/reset?token=";
    let at = mail.find(marker).expect("a reset link") + marker.len();
    let token: String = mail[at..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect();
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

async fn signed_in(b: &Browser) -> bool {
    b.get("/account").await.status == 200
}

#[tokio::test]
async fn a_password_reset_removes_a_link_made_before_the_address_was_proven() {
    // U1: an upstream account claiming the victim's address (unverified there) made
    // the account; once the victim proves the mailbox, it reaches it no more.
    let rig = rig_with(Options::default(), &[]).await;
    rig.up.person(VICTIM, false);
    let attacker = Visitor::new(&rig.down);
    let r = attacker.sign_in_with(UP, VICTIM).await;
    assert_eq!(r.location(), "/account", "{}", r.body);
    assert!(signed_in(&attacker.down).await);

    reset_by_mail(&rig.down, VICTIM).await;

    assert!(
        !signed_in(&attacker.down).await,
        "the session from the link ended"
    );
    let again = Visitor::new(&rig.down);
    let r = again.sign_in_with(UP, VICTIM).await;
    assert_ne!(r.location(), "/account", "{}", r.body);
    assert!(
        !signed_in(&again.down).await,
        "the upstream account no longer reaches the victim's account"
    );
    assert_eq!(
        rig.down
            .count("SELECT count(*) FROM federated_identities")
            .await,
        0
    );
    let told = rig
        .down
        .count(
            "SELECT count(*) FROM security_events WHERE kind = 'upstream_unlinked'
               AND detail LIKE 'Connections made before your address was confirmed were removed%'",
        )
        .await;
    assert_eq!(told, 1, "the account's history says why");
}

#[tokio::test]
async fn the_confirmation_mail_of_an_account_from_an_upstream_names_it_and_says_to_ignore_it() {
    // U1: the mailbox's owner learns the account came from a sign-in elsewhere.
    let rig = rig_with(
        Options {
            require_verified_email: true,
            ..Options::default()
        },
        &[],
    )
    .await;
    rig.up.person(VICTIM, false);
    let v = Visitor::new(&rig.down);
    let r = v.sign_in_with(UP, VICTIM).await;
    assert!(r.body.contains("Check your inbox"), "{}", r.body);
    let mail = rig
        .down
        .mail
        .wait_for_subject(VICTIM, "Confirm your e-mail address")
        .await
        .text();
    assert!(
        mail.contains(&format!("made by a sign-in with {LABEL}")),
        "{mail}"
    );
    assert!(
        mail.contains(&format!(
            "If you did not sign in with {LABEL}, ignore this message"
        )),
        "{mail}"
    );
}

const CAROL: &str = "carol@example.com";

/// A downstream with the crafted provider as upstream `op`, and a browser signed in
/// through it (upstream session `op-session-1`).
async fn through_stand_in() -> (TestApp, StandInOp, Visitor) {
    let down = downstream().await;
    let op = StandInOp::start().await;
    op.register(&down, "op", &[]).await;
    let v = Visitor::new(&down);
    assert_eq!(sign_in_at_op(&v).await, "/account");
    (down, op, v)
}

/// A sign-in through the crafted provider; where the downstream sends the browser.
async fn sign_in_at_op(v: &Visitor) -> String {
    let authorize = v.begin("op").await;
    let callback = v.through_upstream(&authorize, None).await;
    v.open(&callback).await.location()
}

async fn post_logout(down: &TestApp, token: &str) -> (u16, String) {
    let res = reqwest::Client::new()
        .post(format!(
            "{}/login/upstream/op/backchannel-logout",
            down.address
        ))
        .form(&[("logout_token", token)])
        .send()
        .await
        .unwrap();
    (res.status().as_u16(), res.text().await.unwrap_or_default())
}

#[tokio::test]
async fn a_logout_that_failed_halfway_ends_the_sessions_when_the_upstream_retries() {
    // U6: the jti is spent with the sessions' end, not before it; a failure in
    // between leaves the retry a fresh token, and a replay after success ends nothing.
    let (down, op, v) = through_stand_in().await;
    sqlx::query(
        "CREATE FUNCTION fail_upstream_end() RETURNS trigger LANGUAGE plpgsql AS
         $$ BEGIN RAISE EXCEPTION 'the disk is full'; END $$",
    )
    .execute(&down.db)
    .await
    .unwrap();
    sqlx::query(
        "CREATE TRIGGER fail_upstream_end BEFORE UPDATE ON sessions FOR EACH ROW
         WHEN (NEW.revoked_reason = 'signed out at the upstream')
         EXECUTE FUNCTION fail_upstream_end()",
    )
    .execute(&down.db)
    .await
    .unwrap();
    let token = op.logout_token(|_| {});
    let (status, _) = post_logout(&down, &token).await;
    assert!(status >= 500, "the failure is not a refusal: {status}");
    assert!(signed_in(&v.down).await, "nothing ended");

    sqlx::query("DROP TRIGGER fail_upstream_end ON sessions")
        .execute(&down.db)
        .await
        .unwrap();
    let (status, body) = post_logout(&down, &token).await;
    assert_eq!(status, 200, "the upstream's retry is not a replay: {body}");
    assert!(!signed_in(&v.down).await, "the session ended");

    let again = Visitor::new(&down);
    assert_eq!(sign_in_at_op(&again).await, "/account");
    let (status, _) = post_logout(&down, &token).await;
    assert_eq!(status, 400, "a jti is single use");
    assert!(signed_in(&again.down).await, "a replay ends nothing");
}

#[tokio::test]
async fn a_sign_in_waiting_for_its_second_factor_ends_with_the_upstream_session() {
    // U6: the upstream session ended while Gatehouse asked for its own second
    // factor: the code then makes no session.
    let (down, op, v) = through_stand_in().await;
    let enrolled = enrol(&down, &v.down, CAROL).await;
    let w = Visitor::new(&down);
    assert_eq!(sign_in_at_op(&w).await, "/login/verify");
    let page = w.down.get("/login/verify").await;
    assert_eq!(page.status, 200, "{}", page.body);

    let (status, body) = post_logout(&down, &op.logout_token(|_| {})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        down.count("SELECT count(*) FROM mfa_challenges WHERE upstream_id IS NOT NULL")
            .await,
        0
    );
    let code = totp(&enrolled.secret, down.clock.now().unix_timestamp() + 30);
    w.down
        .post_form(
            "/login/verify",
            &[
                ("csrf_token", &page.csrf()),
                ("action", "verify"),
                ("code", &code),
            ],
        )
        .await;
    assert!(
        !signed_in(&w.down).await,
        "no session after the upstream ended it"
    );
}

const DANA: &str = "dana@example.com";

/// Dana, with a password here, signed in once through the upstream (linked at once:
/// `--trust-email` and a verified address on both sides) and once with her password.
async fn signed_in_both_ways() -> (crate::upstream_rig::Rig, Visitor, Visitor) {
    let rig = rig_with(Options::default(), &["--trust-email"]).await;
    create_user(&rig.down, DANA, true);
    rig.up.person(DANA, true);
    let through = Visitor::new(&rig.down);
    assert_eq!(through.sign_in_with(UP, DANA).await.location(), "/account");
    let owner = Visitor::new(&rig.down);
    let r = rig.down.login(&owner.down, DANA, PASSWORD).await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert!(signed_in(&through.down).await && signed_in(&owner.down).await);
    (rig, through, owner)
}

#[tokio::test]
async fn removing_a_connection_ends_the_sessions_made_through_it() {
    // U7: what the link let in goes with it.
    let (rig, through, owner) = signed_in_both_ways().await;
    step_up_by_email(&rig.down, &owner.down, DANA, "/account/connections").await;
    let page = owner.down.get("/account/connections").await;
    let removed = owner
        .down
        .post_form(
            &format!("/account/connections/{UP}/remove"),
            &[("csrf_token", &page.csrf())],
        )
        .await;
    assert_eq!(removed.status, 200, "{}", removed.body);
    assert!(
        !signed_in(&through.down).await,
        "the session from the upstream ended"
    );
    assert!(signed_in(&owner.down).await, "the password session stays");
    assert_eq!(
        rig.down
            .count(
                "SELECT count(*) FROM sessions
                 WHERE revoked_reason = 'upstream unlinked' AND upstream_id IS NOT NULL"
            )
            .await,
        1
    );
}

#[tokio::test]
async fn deleting_an_upstream_ends_the_sessions_made_from_it() {
    // U6: an operator removing an upstream removes what it let in.
    let (rig, through, owner) = signed_in_both_ways().await;
    let (ok, _, err) = rig.down.cli(&["upstream", "delete", UP], &[]);
    assert!(ok, "{err}");
    assert!(
        !signed_in(&through.down).await,
        "the session from the upstream ended"
    );
    assert!(signed_in(&owner.down).await, "the password session stays");
    assert_eq!(
        rig.down
            .count("SELECT count(*) FROM sessions WHERE revoked_reason = 'upstream deleted'")
            .await,
        1
    );
}

/// An app asks for `prompt=login` while the browser holds a session from the
/// crafted provider; the person takes "Continue with" on the sign-in page. Returns
/// what the provider was asked and where the app's request ends: its redirect URI
/// (a code) or another sign-in.
async fn prompt_login_through_op(down: &TestApp, v: &Visitor) -> (String, String) {
    let client = app_client(down);
    let r = v
        .down
        .get(&authorize_url(&client, &[("prompt", "login")]))
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let login = r.location();
    assert!(login.starts_with("/login?return_to="), "{login}");
    let out = v.press(&login, "op").await;
    assert_eq!(out.status, 303, "{}", out.body);
    let asked = out.location();
    let callback = v.through_upstream(&asked, None).await;
    let back = v.open(&callback).await;
    assert_eq!(back.status, 303, "{}", back.body);
    assert!(
        back.location().starts_with("/oauth2/authorize?"),
        "{}",
        back.location()
    );
    let (_, challenge) = pkce();
    let r = v
        .down
        .get(&format!(
            "{}&code_challenge={challenge}&code_challenge_method=S256",
            back.location()
        ))
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    (asked, r.location())
}

#[tokio::test]
async fn prompt_login_is_not_answered_by_the_upstreams_silent_sign_in() {
    // U5: the upstream is asked to authenticate afresh; an ID token whose auth_time
    // predates the round trip (or has none) does not count as a new sign-in.
    let (down, op, v) = through_stand_in().await;
    for stale in [Some(now() - 3600), None] {
        op.edit(move |c| match stale {
            Some(t) => c["auth_time"] = json!(t),
            None => {
                c.as_object_mut().unwrap().remove("auth_time");
            }
        });
        let (asked, ended) = prompt_login_through_op(&down, &v).await;
        let q = query_of(&asked);
        assert_eq!(
            q.get("prompt").map(String::as_str),
            Some("login"),
            "{asked}"
        );
        assert_eq!(q.get("max_age").map(String::as_str), Some("0"), "{asked}");
        assert!(
            ended.starts_with("/login?"),
            "auth_time {stale:?}: the app's prompt=login still wants a sign-in, got {ended}"
        );
    }
}

#[tokio::test]
async fn prompt_login_is_answered_by_a_fresh_authentication_at_the_upstream() {
    // U5
    let (down, op, v) = through_stand_in().await;
    op.edit(|c| c["auth_time"] = json!(now()));
    let (_, ended) = prompt_login_through_op(&down, &v).await;
    assert!(ended.starts_with(CB), "a code for the app, got {ended}");
}

#[tokio::test]
async fn an_ordinary_sign_in_does_not_ask_the_upstream_to_authenticate_again() {
    // U5: single sign-on at the upstream still works when nothing demands more.
    let (_down, op, _v) = through_stand_in().await;
    let asked = op.last_authorization();
    assert!(!asked.contains_key("prompt"), "{asked:?}");
    assert!(!asked.contains_key("max_age"), "{asked:?}");
}
