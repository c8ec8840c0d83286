//! Sign-in with another identity provider, end to end against a second, real
//! Gatehouse as the upstream: new people, returning people, the state that binds the
//! round trip to one browser, and a waiting app request that survives the trip.

use serde_json::json;

use crate::oauth_helpers::{
    CB, app_client, authorize_url, exchange, introspect, jwt_parts, location_params, param, pkce,
    sign_in_app,
};
use crate::upstream_rig::{LABEL, UP, Visitor, assert_refused, counts, query_of, rig, with_param};

const DANA: &str = "dana@example.com";

#[tokio::test]
async fn a_new_person_from_the_upstream_gets_an_account_without_a_password_and_a_federated_session()
{
    // U5: aal1, amr ["fed"]; the new-account rule.
    let rig = rig(&[]).await;
    rig.up.person(DANA, true);
    let before = counts(&rig.down).await;
    let v = Visitor::new(&rig.down);
    let r = v.sign_in_with(UP, DANA).await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.location(), "/account");
    assert_eq!(v.down.get("/account").await.status, 200);

    let after = counts(&rig.down).await;
    assert_eq!(after.users, before.users + 1, "one new account");
    assert_eq!(after.identities, before.identities + 1, "one link");
    let (hash, verified): (Option<String>, bool) = sqlx::query_as(
        "SELECT password_hash, email_verified_at IS NOT NULL FROM users WHERE email = $1",
    )
    .bind(DANA)
    .fetch_one(&rig.down.db)
    .await
    .unwrap();
    assert!(
        hash.is_none(),
        "no password for an account made from an upstream"
    );
    assert!(
        verified,
        "verified because the upstream says email_verified: true"
    );
    let (subject, upstream): (String, String) = sqlx::query_as(
        "SELECT f.subject, u.name FROM federated_identities f JOIN upstreams u ON u.id = f.upstream_id",
    )
    .fetch_one(&rig.down.db)
    .await
    .unwrap();
    assert_eq!(
        subject,
        rig.up.sub_of(DANA).await,
        "identity is the upstream's sub"
    );
    assert_eq!(upstream, UP);

    // The session: aal1, amr ["fed"], tied to the upstream session it came from.
    let (aal, amr, upstream_sid): (String, Vec<String>, Option<String>) = sqlx::query_as(
        "SELECT aal, amr, upstream_sid FROM sessions WHERE revoked_at IS NULL AND upstream_id IS NOT NULL",
    )
    .fetch_one(&rig.down.db)
    .await
    .unwrap();
    assert_eq!(aal, "aal1");
    assert_eq!(amr, vec!["fed".to_string()]);
    let upstream_session: uuid::Uuid =
        sqlx::query_scalar("SELECT id FROM sessions WHERE revoked_at IS NULL")
            .fetch_one(&rig.up.app.db)
            .await
            .unwrap();
    assert_eq!(upstream_sid, Some(upstream_session.to_string()));

    // What the person sees on the device list, and what an app is told.
    let devices = v.down.get("/account/devices").await;
    assert!(
        devices.body.contains(&format!("Signed in with {LABEL}")),
        "{}",
        devices.body
    );
    let client = app_client(&rig.down);
    let tokens = sign_in_app(&rig.down, &v.down, &client, &[]).await;
    let info = introspect(&rig.down, &client, &tokens.access).await;
    assert_eq!(info["active"], true, "{info}");
    assert_eq!(info["amr"], json!(["fed"]), "{info}");
    assert_eq!(info["acr"], "urn:gatehouse:aal1", "{info}");
}

#[tokio::test]
async fn a_returning_person_signs_in_to_the_same_account_from_another_browser() {
    let rig = rig(&[]).await;
    rig.up.person(DANA, true);
    let first = Visitor::new(&rig.down);
    assert_eq!(first.sign_in_with(UP, DANA).await.location(), "/account");
    let once = counts(&rig.down).await;

    let second = Visitor::new(&rig.down);
    let r = second.sign_in_with(UP, DANA).await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.location(), "/account");
    let twice = counts(&rig.down).await;
    assert_eq!(twice.users, once.users, "no second account");
    assert_eq!(twice.identities, once.identities, "no second link");
    assert_eq!(
        rig.down
            .count("SELECT count(DISTINCT user_id) FROM sessions WHERE revoked_at IS NULL")
            .await,
        1,
        "both sessions belong to one person"
    );
}

#[tokio::test]
async fn starting_an_upstream_sign_in_is_a_csrf_protected_post_that_sends_state_nonce_and_pkce() {
    // U8: a third site cannot start a sign-in.
    let rig = rig(&[]).await;
    let before = counts(&rig.down).await;
    let b = rig.down.browser();
    let get = b.get(&format!("/login/upstream/{UP}")).await;
    assert!(
        !(300..400).contains(&get.status),
        "a GET starts nothing: {} {}",
        get.status,
        get.location()
    );
    b.get("/login").await;
    let forged = b
        .post_form(
            &format!("/login/upstream/{UP}"),
            &[("csrf_token", "forged")],
        )
        .await;
    assert!(
        (400..500).contains(&forged.status),
        "a POST without the page's token is refused: {} {}",
        forged.status,
        forged.location()
    );
    let none = b.post_form(&format!("/login/upstream/{UP}"), &[]).await;
    assert!((400..500).contains(&none.status), "{}", none.status);
    let unknown = Visitor::new(&rig.down);
    let page = unknown.down.get("/login").await;
    let r = unknown
        .down
        .post_form("/login/upstream/nobody", &[("csrf_token", &page.csrf())])
        .await;
    assert_eq!(r.status, 404, "an unknown upstream: {}", r.body);

    // The real button: to the upstream's authorization endpoint with everything.
    let v = Visitor::new(&rig.down);
    let r = v.press("/login", UP).await;
    assert_eq!(r.status, 303, "{}", r.body);
    let to = r.location();
    assert!(
        to.starts_with(&format!("{}/oauth2/authorize?", rig.up.issuer())),
        "{to}"
    );
    let q = query_of(&to);
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["client_id"], rig.up.client.id);
    assert_eq!(
        q["redirect_uri"],
        format!("{}/login/upstream/{UP}/callback", rig.down.address)
    );
    assert!(q["scope"].split(' ').any(|s| s == "openid"), "{to}");
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["code_challenge"].len(), 43, "a SHA-256 challenge: {to}");
    assert!(q["state"].len() >= 22, "an unguessable state: {to}");
    assert!(q["nonce"].len() >= 22, "an unguessable nonce: {to}");
    assert_ne!(q["state"], q["nonce"]);
    // Kept in a short-lived, HttpOnly, SameSite=Lax cookie of this browser.
    let kept = r
        .set_cookies()
        .into_iter()
        .find(|c| {
            ![
                "gatehouse_presession",
                "gatehouse_device",
                "gatehouse_session",
            ]
            .contains(&c.name())
        })
        .unwrap_or_else(|| panic!("a cookie keeps the round trip: {:?}", r.headers));
    assert_eq!(kept.http_only(), Some(true), "{kept}");
    assert_eq!(kept.same_site(), Some(cookie::SameSite::Lax), "{kept}");
    let max_age = kept
        .max_age()
        .expect("the cookie has a lifetime")
        .whole_seconds();
    assert!((1..=600).contains(&max_age), "ten minutes at most: {kept}");
    assert_eq!(counts(&rig.down).await, before, "starting creates nothing");
}

#[tokio::test]
async fn a_forged_state_is_refused_and_nothing_is_created() {
    // U2
    let rig = rig(&[]).await;
    rig.up.person(DANA, true);
    let before = counts(&rig.down).await;
    let v = Visitor::new(&rig.down);
    let authorize = v.begin(UP).await;
    let callback = v
        .through_upstream(&authorize, Some((DANA, crate::helpers::PASSWORD)))
        .await;
    for forged in [
        with_param(&callback, "state", Some("forged-state-forged-state")),
        with_param(&callback, "state", None),
        with_param(&callback, "state", Some("")),
    ] {
        let r = v.open(&forged).await;
        assert_refused(&r, &rig.down);
    }
    assert_eq!(counts(&rig.down).await, before);
    assert_eq!(v.down.get("/account").await.status, 303, "not signed in");
}

#[tokio::test]
async fn a_replayed_callback_is_refused_and_creates_nothing_more() {
    // U2: the state is single use.
    let rig = rig(&[]).await;
    rig.up.person(DANA, true);
    let v = Visitor::new(&rig.down);
    let authorize = v.begin(UP).await;
    let callback = v
        .through_upstream(&authorize, Some((DANA, crate::helpers::PASSWORD)))
        .await;
    let first = v.open(&callback).await;
    assert_eq!(first.location(), "/account", "{}", first.body);
    let once = counts(&rig.down).await;

    let again = v.open(&callback).await;
    assert_refused(&again, &rig.down);
    // An attacker who saw the URL, in a browser of their own.
    let thief = Visitor::new(&rig.down);
    let stolen = thief.open(&callback).await;
    assert_refused(&stolen, &rig.down);
    assert_eq!(thief.down.get("/account").await.status, 303);
    assert_eq!(counts(&rig.down).await, once);
}

#[tokio::test]
async fn a_callback_opened_in_another_browser_is_refused_and_the_right_one_still_finishes() {
    // U2: the state is bound to the browser that started the sign-in.
    let rig = rig(&[]).await;
    rig.up.person(DANA, true);
    let before = counts(&rig.down).await;
    let v = Visitor::new(&rig.down);
    let authorize = v.begin(UP).await;
    let callback = v
        .through_upstream(&authorize, Some((DANA, crate::helpers::PASSWORD)))
        .await;
    let other = Visitor::new(&rig.down);
    // The other browser even started a sign-in of its own (a cookie of its own).
    other.begin(UP).await;
    let r = other.open(&callback).await;
    assert_refused(&r, &rig.down);
    assert_eq!(other.down.get("/account").await.status, 303);
    assert_eq!(counts(&rig.down).await, before, "nothing created or linked");

    // The code was never redeemed by the other browser: the right one finishes.
    let r = v.open(&callback).await;
    assert_eq!(r.location(), "/account", "{}", r.body);
}

#[tokio::test]
async fn an_upstream_that_answers_access_denied_creates_nothing() {
    // U8
    let rig = rig(&[]).await;
    let before = counts(&rig.down).await;
    let v = Visitor::new(&rig.down);
    let authorize = v.begin(UP).await;
    let state = query_of(&authorize)["state"].clone();
    let mut denied = url::Url::parse(&format!(
        "{}/login/upstream/{UP}/callback",
        rig.down.address
    ))
    .unwrap();
    denied
        .query_pairs_mut()
        .append_pair("error", "access_denied")
        .append_pair("error_description", "The user said no")
        .append_pair("state", &state)
        .append_pair("iss", &rig.up.issuer());
    let r = v.open(denied.as_str()).await;
    assert_refused(&r, &rig.down);
    assert!(
        !r.body.contains("The user said no"),
        "the upstream's words are not shown as ours"
    );
    assert_eq!(counts(&rig.down).await, before);
}

#[tokio::test]
async fn return_to_survives_the_round_trip() {
    let rig = rig(&[]).await;
    rig.up.person(DANA, true);
    let v = Visitor::new(&rig.down);
    let r = v.down.get("/account/devices").await;
    assert!(r.is_sign_in_redirect(), "{}", r.location());
    let r = v.press(&r.location(), UP).await;
    assert_eq!(r.status, 303, "{}", r.body);
    let callback = v
        .through_upstream(&r.location(), Some((DANA, crate::helpers::PASSWORD)))
        .await;
    let r = v.open(&callback).await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.location(), "/account/devices");
}

#[tokio::test]
async fn signing_in_to_an_app_with_the_upstream_works_end_to_end() {
    // A waiting /oauth2/authorize request survives the trip: "sign in to app X with
    // the upstream".
    let rig = rig(&[]).await;
    rig.up.person(DANA, true);
    let client = app_client(&rig.down);
    let v = Visitor::new(&rig.down);
    let (verifier, challenge) = pkce();
    let url = authorize_url(
        &client,
        &[
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
            ("nonce", "app-nonce-1"),
        ],
    );
    let r = v.down.get(&url).await;
    assert!(
        r.location().starts_with("/login?return_to="),
        "{}",
        r.location()
    );
    let r = v.press(&r.location(), UP).await;
    assert_eq!(r.status, 303, "{}", r.body);
    let callback = v
        .through_upstream(&r.location(), Some((DANA, crate::helpers::PASSWORD)))
        .await;
    let r = v.open(&callback).await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert!(
        r.location().starts_with("/oauth2/authorize?"),
        "back to the waiting request: {}",
        r.location()
    );
    let r = v.follow(&r).await;
    assert!(r.location().starts_with(CB), "{}", r.location());
    let params = location_params(&r);
    assert_eq!(param(&params, "state").as_deref(), Some("st-123"));
    let code = param(&params, "code").expect("a code for the app");
    let (status, body) = exchange(&rig.down, &client, &code, Some(&verifier)).await;
    assert_eq!(status, 200, "{body}");
    let (_, id) = jwt_parts(body["id_token"].as_str().unwrap());
    assert_eq!(id["nonce"], "app-nonce-1");
    assert_eq!(id["email"], DANA);
    assert_eq!(id["amr"], json!(["fed"]));
    assert_eq!(id["acr"], "urn:gatehouse:aal1");
    let local: uuid::Uuid = sqlx::query_scalar("SELECT id FROM users WHERE email = $1")
        .bind(DANA)
        .fetch_one(&rig.down.db)
        .await
        .unwrap();
    assert_eq!(
        id["sub"],
        local.to_string(),
        "the app sees the downstream's own sub"
    );
}

#[tokio::test]
async fn a_client_id_beginning_with_a_hyphen_is_taken_as_it_is() {
    // Another Gatehouse's client ids are random base64url: one in 64 begins with `-`.
    let down = crate::upstream_rig::downstream().await;
    let (ok, _, err) = crate::upstream_rig::upstream_add(
        &down,
        &[
            "--name",
            "hyphen",
            "--kind",
            "oidc",
            "--issuer",
            "http://127.0.0.1:9",
            "--client-id",
            "-e-Q8AmWe4ZD73wSP8QR6Q",
        ],
        "a-secret",
    );
    assert!(ok, "{err}");
    let id: String = sqlx::query_scalar("SELECT client_id FROM upstreams WHERE name = 'hyphen'")
        .fetch_one(&down.db)
        .await
        .unwrap();
    assert_eq!(id, "-e-Q8AmWe4ZD73wSP8QR6Q");
}
