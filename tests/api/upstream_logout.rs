//! The upstream's back-channel logout reaches here (OIDC Back-Channel Logout 1.0):
//! signing out at a real upstream Gatehouse, or revoking the device there, ends the
//! sessions made from that upstream session within a second, and their app tokens
//! with them; a logout token that fails any §2.6 check ends nothing.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::{Browser, PASSWORD, TestApp};
use crate::oauth_helpers::{app_client, inactive, introspect, sign_in_app};
use crate::upstream_rig::{RsaKey, StandInOp, UP, Visitor, downstream, now, rig, unsigned};

const DANA: &str = "dana@example.com";

async fn live_from_upstream(down: &TestApp) -> i64 {
    down.count("SELECT count(*) FROM sessions WHERE revoked_at IS NULL AND upstream_id IS NOT NULL")
        .await
}

/// Waits up to `limit` for the downstream session made from upstream session `sid`
/// to end; returns how long it took.
async fn ended_within(down: &TestApp, sid: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let live: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM sessions WHERE revoked_at IS NULL AND upstream_sid = $1",
        )
        .bind(sid)
        .fetch_one(&down.db)
        .await
        .unwrap();
        if live == 0 {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "the session from upstream session {sid} still lives after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn upstream_sid_of(down: &TestApp, v: &Visitor) -> String {
    let token = v
        .down
        .cookie(down.session_cookie_name())
        .expect("signed in here");
    let hash = gatehouse::crypto::token_hash(&token);
    sqlx::query_scalar::<_, Option<String>>(
        "SELECT upstream_sid FROM sessions WHERE token_hash = $1",
    )
    .bind(hash.as_slice())
    .fetch_one(&down.db)
    .await
    .unwrap()
    .expect("the session knows its upstream session")
}

#[tokio::test]
async fn signing_out_at_the_upstream_ends_the_session_here_within_a_second_and_its_app_tokens() {
    // U6
    let rig = rig(&[]).await;
    rig.up.person(DANA, true);
    let v = Visitor::new(&rig.down);
    assert_eq!(v.sign_in_with(UP, DANA).await.location(), "/account");
    let sid = upstream_sid_of(&rig.down, &v).await;
    let client = app_client(&rig.down);
    let tokens = sign_in_app(&rig.down, &v.down, &client, &[]).await;
    assert_eq!(
        introspect(&rig.down, &client, &tokens.access).await["active"],
        true
    );
    // Dana in another browser, from another upstream session: not touched.
    let other = Visitor::new(&rig.down);
    assert_eq!(other.sign_in_with(UP, DANA).await.location(), "/account");
    assert_eq!(live_from_upstream(&rig.down).await, 2);

    let r = v.sign_out_at(&rig.up.app).await;
    assert_eq!(r.status, 303, "{}", r.body);
    let took = ended_within(&rig.down, &sid, Duration::from_secs(1)).await;
    assert!(took < Duration::from_secs(1), "{took:?}");

    assert!(v.down.get("/account").await.is_sign_in_redirect());
    assert_eq!(
        introspect(&rig.down, &client, &tokens.access).await,
        inactive()
    );
    assert_eq!(
        other.down.get("/account").await.status,
        200,
        "the other one lives"
    );
    assert_eq!(live_from_upstream(&rig.down).await, 1);
}

#[tokio::test]
async fn revoking_the_device_at_the_upstream_ends_the_session_made_from_it() {
    // U6
    let rig = rig(&[]).await;
    rig.up.person(DANA, true);
    let v = Visitor::new(&rig.down);
    assert_eq!(v.sign_in_with(UP, DANA).await.location(), "/account");
    let sid = upstream_sid_of(&rig.down, &v).await;
    // Dana at the upstream itself, on another device, revokes the first one there.
    let elsewhere = Browser::new(&rig.up.app.address);
    let r = rig.up.app.login(&elsewhere, DANA, PASSWORD).await;
    assert_eq!(r.status, 303, "{}", r.body);
    let page = elsewhere.get("/account/devices").await;
    let r = elsewhere
        .post_form(
            &format!("/account/devices/{sid}/revoke"),
            &[("csrf_token", &page.csrf())],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    ended_within(&rig.down, &sid, Duration::from_secs(1)).await;
    assert!(v.down.get("/account").await.is_sign_in_redirect());
}

/// A downstream with the stand-in provider as upstream "op", and a visitor signed in
/// through it (its session has upstream session `op-session-1`).
async fn signed_in_through_stand_in() -> (TestApp, StandInOp, Visitor) {
    let down = downstream().await;
    let op = StandInOp::start().await;
    op.register(&down, "op", &[]).await;
    let v = Visitor::new(&down);
    let authorize = v.begin("op").await;
    let callback = v.through_upstream(&authorize, None).await;
    assert_eq!(v.open(&callback).await.location(), "/account");
    (down, op, v)
}

async fn post_logout(down: &TestApp, form: &[(&str, &str)]) -> (u16, String) {
    let res = reqwest::Client::new()
        .post(format!(
            "{}/login/upstream/op/backchannel-logout",
            down.address
        ))
        .form(form)
        .send()
        .await
        .unwrap();
    (res.status().as_u16(), res.text().await.unwrap_or_default())
}

#[tokio::test]
async fn a_logout_token_failing_any_check_is_refused_with_400_and_ends_nothing() {
    // U6: Back-Channel Logout 1.0 §2.6.
    let (down, op, v) = signed_in_through_stand_in().await;
    let good_header = json!({"alg": "RS256", "typ": "logout+jwt", "kid": op.key.kid});
    let claims = |edit: &dyn Fn(&mut Value)| op.logout_claims(edit);
    let forged_key = RsaKey::generate(&op.key.kid);
    let bad: Vec<(&str, String)> = vec![
        ("not a JWT", "not-a-jwt".into()),
        (
            "signed by another key",
            forged_key.sign(&good_header, &claims(&|_| {})),
        ),
        ("alg none", unsigned(&claims(&|_| {}))),
        (
            "HS256 with the client secret",
            crate::upstream_rig::sign_hs256(b"s3cret-of-the-downstream", &claims(&|_| {})),
        ),
        (
            "another issuer",
            op.logout_token(|c| c["iss"] = json!("https://other.example")),
        ),
        (
            "another audience",
            op.logout_token(|c| c["aud"] = json!("someone-else")),
        ),
        (
            "no events",
            op.logout_token(|c| {
                c.as_object_mut().unwrap().remove("events");
            }),
        ),
        (
            "the wrong event",
            op.logout_token(|c| {
                c["events"] = json!({"http://schemas.openid.net/event/something-else": {}})
            }),
        ),
        ("a nonce", op.logout_token(|c| c["nonce"] = json!("n-1"))),
        (
            "neither sid nor sub",
            op.logout_token(|c| {
                let o = c.as_object_mut().unwrap();
                o.remove("sid");
                o.remove("sub");
            }),
        ),
        (
            "no jti",
            op.logout_token(|c| {
                c.as_object_mut().unwrap().remove("jti");
            }),
        ),
        (
            "no iat",
            op.logout_token(|c| {
                c.as_object_mut().unwrap().remove("iat");
            }),
        ),
        (
            "issued an hour from now",
            op.logout_token(|c| {
                c["iat"] = json!(now() + 3600);
                c["exp"] = json!(now() + 3720);
            }),
        ),
        (
            "expired",
            op.logout_token(|c| {
                c["iat"] = json!(now() - 3600);
                c["exp"] = json!(now() - 3000);
            }),
        ),
    ];
    for (what, token) in &bad {
        let (status, body) = post_logout(&down, &[("logout_token", token)]).await;
        assert_eq!(status, 400, "{what}: {body}");
        assert_eq!(
            v.down.get("/account").await.status,
            200,
            "{what} ended the session"
        );
    }
    let (status, _) = post_logout(&down, &[]).await;
    assert_eq!(status, 400, "no token at all");
    assert_eq!(live_from_upstream(&down).await, 1);

    // The good one ends it at once; the same token again is spent.
    let good = op.logout_token(|_| {});
    let (status, body) = post_logout(&down, &[("logout_token", &good)]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(live_from_upstream(&down).await, 0);
    assert!(v.down.get("/account").await.is_sign_in_redirect());
    let (status, _) = post_logout(&down, &[("logout_token", &good)]).await;
    assert_eq!(status, 400, "a jti is single use");
}

#[tokio::test]
async fn a_logout_token_with_only_sub_ends_every_session_of_that_person_from_the_upstream() {
    // U6: without `sid`, every session of that `sub` from that upstream.
    let (down, op, v) = signed_in_through_stand_in().await;
    let second = Visitor::new(&down);
    let authorize = second.begin("op").await;
    let callback = second.through_upstream(&authorize, None).await;
    assert_eq!(second.open(&callback).await.location(), "/account");
    assert_eq!(live_from_upstream(&down).await, 2);
    let token = op.logout_token(|c| {
        c.as_object_mut().unwrap().remove("sid");
    });
    let (status, body) = post_logout(&down, &[("logout_token", &token)]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(live_from_upstream(&down).await, 0);
    assert!(v.down.get("/account").await.is_sign_in_redirect());
    assert!(second.down.get("/account").await.is_sign_in_redirect());
}
