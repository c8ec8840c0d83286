//! Accounts from an upstream: an address the upstream did not verify waits for the
//! verification mail, an upstream without an address makes nothing, and a person
//! with an authenticator app still gives it after the upstream (Gatehouse's own
//! second factor, U5).

use serde_json::json;

use crate::helpers::Options;
use crate::otp::{enrol, totp};
use crate::upstream_rig::{StandInOp, UP, Visitor, counts, downstream, query_of, rig, rig_with};

const DANA: &str = "dana@example.com";

#[tokio::test]
async fn an_address_the_upstream_did_not_verify_waits_for_the_verification_mail() {
    let rig = rig_with(
        Options {
            require_verified_email: true,
            ..Options::default()
        },
        &[],
    )
    .await;
    rig.up.person(DANA, false);
    let before = counts(&rig.down).await;
    let v = Visitor::new(&rig.down);
    let r = v.sign_in_with(UP, DANA).await;
    assert_eq!(r.status, 200, "{} {}", r.location(), r.body);
    assert!(r.body.contains("Check your inbox"), "{}", r.body);
    assert_eq!(
        v.down.get("/account").await.status,
        303,
        "not signed in yet"
    );
    let after = counts(&rig.down).await;
    assert_eq!(after.users, before.users + 1);
    assert_eq!(after.sessions, before.sessions, "the sign-in waits");

    // The mailed link confirms the address; then the upstream signs her in.
    let mail = rig.down.mail.wait_for(DANA, 1).await.remove(0).text();
    let at = mail
        .find("/verify-email?token=")
        .expect("a verification link");
    let link: String = mail[at..]
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != '"' && *c != '<')
        .collect();
    assert!(query_of(&link).contains_key("token"), "{link}");
    let r = v.down.open_link(&link).await;
    assert!(r.status < 400, "{} {}", r.status, r.body);
    let again = Visitor::new(&rig.down);
    let r = again.sign_in_with(UP, DANA).await;
    assert_eq!(r.location(), "/account", "{}", r.body);
}

#[tokio::test]
async fn an_upstream_that_gives_no_address_creates_nothing() {
    let down = downstream().await;
    let op = StandInOp::start().await;
    op.set(|c| c.email = None);
    op.edit(|c| {
        c.as_object_mut().unwrap().remove("email");
        c["email_verified"] = json!(false);
    });
    op.register(&down, "op", &[]).await;
    let before = counts(&down).await;
    let v = Visitor::new(&down);
    let authorize = v.begin("op").await;
    let callback = v.through_upstream(&authorize, None).await;
    let r = v.open(&callback).await;
    assert!(r.status >= 400 && r.status < 500, "{} {}", r.status, r.body);
    assert_eq!(counts(&down).await, before);
    assert_eq!(v.down.get("/account").await.status, 303);
}

#[tokio::test]
async fn a_person_with_an_authenticator_app_gives_it_after_the_upstream() {
    // U5: the upstream alone is one factor; Gatehouse's own second factor follows.
    let rig = rig(&[]).await;
    rig.up.person(DANA, true);
    let first = Visitor::new(&rig.down);
    assert_eq!(first.sign_in_with(UP, DANA).await.location(), "/account");
    let enrolled = enrol(&rig.down, &first.down, DANA).await;

    let v = Visitor::new(&rig.down);
    let r = v.sign_in_with(UP, DANA).await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(
        r.location(),
        "/login/verify",
        "the authenticator app is asked for"
    );
    assert_eq!(v.down.get("/account").await.status, 303);
    let page = v.down.get("/login/verify").await;
    assert_eq!(page.status, 200, "{}", page.body);
    let code = totp(&enrolled.secret, rig.down.clock.now().unix_timestamp() + 30);
    let r = v
        .down
        .post_form(
            "/login/verify",
            &[
                ("csrf_token", &page.csrf()),
                ("action", "verify"),
                ("code", &code),
            ],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(v.down.get("/account").await.status, 200);
    let token = v.down.cookie(rig.down.session_cookie_name()).unwrap();
    let (aal, amr, upstream): (String, Vec<String>, bool) = sqlx::query_as(
        "SELECT aal, amr, upstream_id IS NOT NULL FROM sessions WHERE token_hash = $1",
    )
    .bind(gatehouse::crypto::token_hash(&token))
    .fetch_one(&rig.down.db)
    .await
    .unwrap();
    assert_eq!(aal, "aal2");
    assert_eq!(amr, vec!["fed".to_string(), "otp".to_string()]);
    assert!(
        upstream,
        "the session still records the upstream it came from"
    );
}
