//! What the upstream sign-in must not leave behind: links made before the address
//! was proven (pre-hijacking), sessions of a removed link or upstream, a replayed
//! logout, and a `prompt=login` satisfied by the upstream's silent sign-in.

use crate::helpers::{Browser, Options, TestApp};
use crate::upstream_rig::{LABEL, UP, Visitor, rig_with};

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
