//! Device-bound sessions (DBSC) with a client written here from the draft: an ES256
//! key made by the test, proofs signed as a browser signs them (`typ: dbsc+jwt`, the
//! public key in the registration proof's `jwk`), the registration and refresh
//! exchanges over HTTP, and what a copied cookie can and cannot do afterwards.

use std::time::Duration;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{Jwk, ThumbprintHash};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

use crate::backchannel::{Receiver, validate_logout_token};
use crate::helpers::{Browser, Options, PASSWORD, Resp, TestApp, spawn_app_with};
use crate::oauth_helpers::{
    Client, Tokens, create_client, inactive, introspect, jwt_parts, sign_in_app,
};

/// A browser's hardware key, played by a P-256 key pair made here.
struct DeviceKey {
    pkcs8: Vec<u8>,
    jwk: Value,
}

impl DeviceKey {
    fn new() -> Self {
        let doc =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .expect("a P-256 key");
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, doc.as_ref()).unwrap();
        // Uncompressed point: 0x04 ‖ x ‖ y.
        let point = pair.public_key().as_ref().to_vec();
        let jwk = json!({
            "kty": "EC",
            "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        });
        Self {
            pkcs8: doc.as_ref().to_vec(),
            jwk,
        }
    }

    /// A proof for `challenge` (`jti`), with the public key in the header when
    /// registering.
    fn proof(&self, challenge: &str, authorization: Option<&str>, with_key: bool) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.typ = Some("dbsc+jwt".into());
        if with_key {
            header.jwk = Some(serde_json::from_value(self.jwk.clone()).unwrap());
        }
        let mut claims = json!({ "jti": challenge });
        if let Some(a) = authorization {
            claims["authorization"] = json!(a);
        }
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ec_der(&self.pkcs8)).unwrap()
    }

    fn thumbprint(&self) -> String {
        serde_json::from_value::<Jwk>(self.jwk.clone())
            .unwrap()
            .thumbprint(ThumbprintHash::SHA256)
            .unwrap()
    }
}

/// `name="value"` out of a structured header.
fn param(header: &str, name: &str) -> String {
    let marker = format!("{name}=\"");
    let start = header
        .find(&marker)
        .unwrap_or_else(|| panic!("{name} in {header}"))
        + marker.len();
    header[start..].split('"').next().unwrap().to_string()
}

async fn dbsc_app() -> TestApp {
    spawn_app_with(Options {
        frozen_clock: true,
        ..Options::default()
    })
    .await
}

fn bound_name(app: &TestApp) -> &'static str {
    if app.settings.insecure_cookies() {
        "gatehouse_bound"
    } else {
        "__Host-gatehouse_bound"
    }
}

async fn post_with(b: &Browser, path: &str, headers: &[(&str, &str)]) -> Resp {
    let mut rb = b.request(reqwest::Method::POST, path);
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    b.send(rb).await
}

/// Signs alice in (registration) and binds her session to `key`; returns the
/// browser, the offer header and the registration answer.
async fn bound_alice(app: &TestApp, key: &DeviceKey) -> (Browser, String, Resp) {
    let b = app.browser();
    let r = app.register(&b, "alice@example.com", PASSWORD).await;
    assert_eq!(r.status, 303);
    let offer = r
        .header("secure-session-registration")
        .expect("a new session is offered binding");
    let proof = key.proof(
        &param(&offer, "challenge"),
        Some(&param(&offer, "authorization")),
        true,
    );
    let registered = post_with(&b, "/dbsc/register", &[("secure-session-response", &proof)]).await;
    (b, offer, registered)
}

/// The live session of `email` (each test's users have one at a time).
async fn session_of(app: &TestApp, email: &str) -> String {
    let id: uuid::Uuid = sqlx::query_scalar(
        "SELECT s.id FROM sessions s JOIN users u ON u.id = s.user_id
         WHERE u.email = $1 AND s.revoked_at IS NULL",
    )
    .bind(email)
    .fetch_one(&app.db)
    .await
    .unwrap();
    id.to_string()
}

/// Refreshes as a browser does: ask, get a challenge (403), answer it.
async fn refresh(b: &Browser, id: &str, key: &DeviceKey) -> Resp {
    let asked = post_with(b, "/dbsc/refresh", &[("sec-secure-session-id", id)]).await;
    assert_eq!(asked.status, 403, "{}", asked.body);
    let challenge = asked
        .header("secure-session-challenge")
        .expect("a challenge");
    assert!(challenge.contains(&format!(r#";id="{id}""#)), "{challenge}");
    let c = challenge.split('"').nth(1).unwrap().to_string();
    post_with(
        b,
        "/dbsc/refresh",
        &[
            ("sec-secure-session-id", id),
            ("secure-session-response", &key.proof(&c, None, false)),
        ],
    )
    .await
}

#[tokio::test]
async fn a_browser_binds_its_session_to_its_key_and_a_copied_session_cookie_alone_is_refused() {
    let app = dbsc_app().await;
    let key = DeviceKey::new();
    let (b, offer, registered) = bound_alice(&app, &key).await;
    assert!(offer.starts_with("(ES256 RS256);"), "{offer}");
    assert_eq!(param(&offer, "path"), "/dbsc/register");
    assert_eq!(registered.status, 200, "{}", registered.body);
    let config: Value = serde_json::from_str(&registered.body).unwrap();
    let id = session_of(&app, "alice@example.com").await;
    assert_eq!(config["session_identifier"], id.as_str());
    assert_eq!(config["refresh_url"], "/dbsc/refresh");
    assert_eq!(config["scope"]["origin"], "https://gatehouse.test");
    assert_eq!(config["credentials"][0]["type"], "cookie");
    assert_eq!(config["credentials"][0]["name"], bound_name(&app));
    // The configuration states the attributes its Set-Cookie really has.
    let set = registered
        .raw_set_cookie(bound_name(&app))
        .expect("a bound cookie");
    for attr in [
        "Path=/",
        "Secure",
        "HttpOnly",
        "SameSite=Lax",
        "Max-Age=600",
    ] {
        assert!(set.contains(attr), "{set}");
    }
    assert_eq!(
        config["credentials"][0]["attributes"],
        "Path=/; Secure; HttpOnly; SameSite=Lax"
    );
    // The key is stored with its RFC 7638 thumbprint.
    let stored: String =
        sqlx::query_scalar("SELECT dbsc_thumbprint FROM sessions WHERE id = $1::uuid")
            .bind(&id)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(stored, key.thumbprint());

    // The browser itself carries on; the device list says so.
    let page = b.get("/account/devices").await;
    assert_eq!(page.status, 200);
    assert!(
        page.body
            .contains("Protected by this device&#x27;s security chip")
            || page
                .body
                .contains("Protected by this device's security chip"),
        "{}",
        page.body
    );

    // A copy of the session cookie alone (what an info-stealer lifts, later on) is
    // refused. Claiming to have skipped a refresh gets no further, and is not
    // reported (a browser that really could not refresh says the same).
    app.clock.advance(Duration::from_secs(31));
    let mut excuse = app.browser();
    excuse.set_cookie(app.session_cookie_name(), &app.session_cookie(&b).unwrap());
    excuse
        .extra_headers
        .push(("secure-session-skipped".into(), "unreachable".into()));
    assert!(excuse.get("/account").await.is_sign_in_redirect());
    assert_eq!(
        app.count("SELECT count(*) FROM sessions WHERE risk_flagged")
            .await,
        0
    );
    let thief = app.browser();
    thief.set_cookie(app.session_cookie_name(), &app.session_cookie(&b).unwrap());
    assert!(thief.get("/account").await.is_sign_in_redirect());
    // Nor does it get a code for an app: to the authorization endpoint it is nobody.
    let client = crate::oauth_helpers::app_client(&app);
    let r = thief
        .get(&crate::oauth_helpers::authorize_url(&client, &[]))
        .await;
    assert_eq!(r.status, 303);
    assert!(r.location().starts_with("/login"), "{}", r.location());
    let r = b
        .get(&crate::oauth_helpers::authorize_url(&client, &[]))
        .await;
    // The owner's browser, now that a copy is known to be out there, proves a second
    // factor before an app gets a code from this session.
    assert!(r.location().starts_with("/step-up?"), "{}", r.location());
    assert_eq!(
        app.count(
            "SELECT count(*) FROM sessions WHERE risk_reason = 'Used without its device key'"
        )
        .await,
        1
    );
    app.mail
        .wait_for_subject("alice@example.com", "Unusual activity on your account")
        .await;
    assert!(app.metric("gatehouse_dbsc_total{event=\"refused\"}").await >= 1.0);
    assert_eq!(
        app.metric("gatehouse_dbsc_total{event=\"registered\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_copy_of_both_cookies_dies_when_the_bound_cookie_lapses_and_only_the_key_renews_it() {
    let app = dbsc_app().await;
    let key = DeviceKey::new();
    let (b, _, registered) = bound_alice(&app, &key).await;
    assert_eq!(registered.status, 200);
    let id = session_of(&app, "alice@example.com").await;
    let thief = app.browser();
    thief.set_cookie(app.session_cookie_name(), &app.session_cookie(&b).unwrap());
    thief.set_cookie(bound_name(&app), &b.cookie(bound_name(&app)).unwrap());
    assert_eq!(
        thief.get("/account").await.status,
        200,
        "a fresh copy works, for now"
    );

    // Ten minutes on, the owner's browser refreshes with its key; the copy cannot.
    app.clock.advance(Duration::from_secs(601));
    let r = refresh(&b, &id, &key).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        serde_json::from_str::<Value>(&r.body).unwrap()["session_identifier"],
        id.as_str()
    );
    assert_eq!(b.get("/account").await.status, 200);
    let stolen_key = DeviceKey::new();
    let asked = post_with(&thief, "/dbsc/refresh", &[("sec-secure-session-id", &id)]).await;
    let c = asked.header("secure-session-challenge").unwrap();
    let c = c.split('"').nth(1).unwrap();
    let forged = post_with(
        &thief,
        "/dbsc/refresh",
        &[
            ("sec-secure-session-id", &id),
            ("secure-session-response", &stolen_key.proof(c, None, false)),
        ],
    )
    .await;
    assert_eq!(forged.status, 400, "another key's proof: {}", forged.body);
    assert!(
        thief.get("/account").await.is_sign_in_redirect(),
        "the copy lapsed"
    );
    assert!(
        app.metric("gatehouse_dbsc_total{event=\"refreshed\"}")
            .await
            >= 1.0
    );
}

#[tokio::test]
async fn refresh_challenges_are_single_use_and_bound_to_their_session() {
    let app = dbsc_app().await;
    let key = DeviceKey::new();
    let (b, _, _) = bound_alice(&app, &key).await;
    let id = session_of(&app, "alice@example.com").await;
    let asked = post_with(&b, "/dbsc/refresh", &[("sec-secure-session-id", &id)]).await;
    let c = asked.header("secure-session-challenge").unwrap();
    let c = c.split('"').nth(1).unwrap().to_string();
    let proof = key.proof(&c, None, false);
    let headers = [
        ("sec-secure-session-id", id.as_str()),
        ("secure-session-response", proof.as_str()),
    ];
    assert_eq!(post_with(&b, "/dbsc/refresh", &headers).await.status, 200);
    let replay = post_with(&b, "/dbsc/refresh", &headers).await;
    assert_eq!(replay.status, 400, "a replayed challenge: {}", replay.body);
    assert!(replay.body.contains("already used"), "{}", replay.body);
    // A challenge older than five minutes is refused too.
    let asked = post_with(&b, "/dbsc/refresh", &[("sec-secure-session-id", &id)]).await;
    let old = asked.header("secure-session-challenge").unwrap();
    let old = old.split('"').nth(1).unwrap().to_string();
    app.clock.advance(Duration::from_secs(301));
    let r = post_with(
        &b,
        "/dbsc/refresh",
        &[
            ("sec-secure-session-id", &id),
            ("secure-session-response", &key.proof(&old, None, false)),
        ],
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);

    // bob's challenge does not refresh alice's session.
    let bob = app.browser();
    let bob_key = DeviceKey::new();
    let offer_r = app.register(&bob, "bob@example.com", PASSWORD).await;
    let offer = offer_r.header("secure-session-registration").unwrap();
    let proof = bob_key.proof(
        &param(&offer, "challenge"),
        Some(&param(&offer, "authorization")),
        true,
    );
    assert_eq!(
        post_with(
            &bob,
            "/dbsc/register",
            &[("secure-session-response", &proof)]
        )
        .await
        .status,
        200
    );
    let bob_id = session_of(&app, "bob@example.com").await;
    let asked = post_with(&bob, "/dbsc/refresh", &[("sec-secure-session-id", &bob_id)]).await;
    let bc = asked.header("secure-session-challenge").unwrap();
    let bc = bc.split('"').nth(1).unwrap().to_string();
    let r = post_with(
        &b,
        "/dbsc/refresh",
        &[
            ("sec-secure-session-id", &id),
            ("secure-session-response", &key.proof(&bc, None, false)),
        ],
    )
    .await;
    assert_eq!(r.status, 400, "another session's challenge: {}", r.body);
}

#[tokio::test]
async fn registration_refuses_bad_proofs_and_changes_nothing() {
    let app = dbsc_app().await;
    let b = app.browser();
    let r = app.register(&b, "alice@example.com", PASSWORD).await;
    let offer = r.header("secure-session-registration").unwrap();
    let (challenge, authorization) = (param(&offer, "challenge"), param(&offer, "authorization"));
    let key = DeviceKey::new();
    let register = |proof: String| {
        let b = b.clone();
        async move { post_with(&b, "/dbsc/register", &[("secure-session-response", &proof)]).await }
    };
    // No proof, garbage, the wrong authorization, no key in the header, an HMAC
    // "signature" with a key of the sender's choosing, alg none.
    let hmac = {
        let mut h = Header::new(Algorithm::HS256);
        h.typ = Some("dbsc+jwt".into());
        h.jwk = Some(serde_json::from_value(json!({"kty": "oct", "k": "c2VjcmV0"})).unwrap());
        jsonwebtoken::encode(
            &h,
            &json!({"jti": challenge, "authorization": authorization}),
            &EncodingKey::from_secret(b"secret"),
        )
        .unwrap()
    };
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD
            .encode(json!({"alg": "none", "typ": "dbsc+jwt", "jwk": key.jwk}).to_string()),
        URL_SAFE_NO_PAD
            .encode(json!({"jti": challenge, "authorization": authorization}).to_string())
    );
    // HS256 named over an EC public key (the classic confusion): the key decides.
    let confused = {
        let mut h = Header::new(Algorithm::HS256);
        h.typ = Some("dbsc+jwt".into());
        h.jwk = Some(serde_json::from_value(key.jwk.clone()).unwrap());
        let x = key.jwk["x"].as_str().unwrap().to_string();
        jsonwebtoken::encode(
            &h,
            &json!({"jti": challenge, "authorization": authorization}),
            &EncodingKey::from_secret(x.as_bytes()),
        )
        .unwrap()
    };
    // A challenge that is ours but another session's, and a refresh challenge.
    let other = app.browser();
    let theirs = app.register(&other, "bob@example.com", PASSWORD).await;
    let their_challenge = param(
        &theirs.header("secure-session-registration").unwrap(),
        "challenge",
    );
    let bad = [
        (None, "no proof"),
        (Some("not a jws".to_string()), "not a dbsc+jwt"),
        (
            Some(key.proof(&challenge, Some("someone-else"), true)),
            "authorization value",
        ),
        (
            Some(key.proof(&challenge, Some(&authorization), false)),
            "not a dbsc+jwt",
        ),
        (
            Some(key.proof(&their_challenge, Some(&authorization), true)),
            "challenge is unknown",
        ),
        (
            Some(key.proof("AAAA.1.AAAA", Some(&authorization), true)),
            "challenge is unknown",
        ),
        (Some(hmac), "not a dbsc+jwt"),
        (Some(confused), "not a dbsc+jwt"),
        (Some(none), "not a dbsc+jwt"),
    ];
    for (proof, why) in bad {
        let r = match &proof {
            Some(p) => register(p.clone()).await,
            None => post_with(&b, "/dbsc/register", &[]).await,
        };
        assert_eq!(r.status, 400, "{proof:?}: {}", r.body);
        assert!(r.body.contains(why), "{why}: {}", r.body);
        assert!(r.raw_set_cookie(bound_name(&app)).is_none());
    }
    assert_eq!(
        app.count("SELECT count(*) FROM sessions WHERE dbsc_jwk IS NOT NULL")
            .await,
        0
    );
    // Without the session's cookie there is nothing to bind.
    let stranger = app.browser();
    let r = post_with(
        &stranger,
        "/dbsc/register",
        &[(
            "secure-session-response",
            &key.proof(&challenge, Some(&authorization), true),
        )],
    )
    .await;
    assert_eq!(r.status, 401);
    // The right proof binds; the same proof again changes nothing.
    let good = key.proof(&challenge, Some(&authorization), true);
    assert_eq!(register(good.clone()).await.status, 200);
    let replay = register(good).await;
    assert_eq!(replay.status, 400, "a replayed registration");
    assert!(replay.body.contains("already used"), "{}", replay.body);
    assert_eq!(
        app.count("SELECT count(*) FROM sessions WHERE dbsc_jwk IS NOT NULL")
            .await,
        1
    );
}

#[tokio::test]
async fn a_revoked_session_tells_the_browser_to_stop_and_browsers_without_dbsc_are_unaffected() {
    let app = dbsc_app().await;
    let key = DeviceKey::new();
    let (b, _, _) = bound_alice(&app, &key).await;
    let id = session_of(&app, "alice@example.com").await;
    let csrf = b.get("/account").await.csrf();
    b.post_form("/logout", &[("csrf_token", &csrf)]).await;
    let r = post_with(&b, "/dbsc/refresh", &[("sec-secure-session-id", &id)]).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        serde_json::from_str::<Value>(&r.body).unwrap(),
        json!({"continue": false})
    );
    // Unknown or malformed ids get the same answer.
    for unknown in [uuid::Uuid::new_v4().to_string(), "garbage".to_string()] {
        let r = post_with(&b, "/dbsc/refresh", &[("sec-secure-session-id", &unknown)]).await;
        assert_eq!(
            serde_json::from_str::<Value>(&r.body).unwrap(),
            json!({"continue": false})
        );
    }

    // A browser that ignores the offer works exactly as before, with no bound cookie.
    let plain = app.browser();
    let r = app.login(&plain, "alice@example.com", PASSWORD).await;
    assert!(r.header("secure-session-registration").is_some());
    for _ in 0..3 {
        assert_eq!(plain.get("/account").await.status, 200);
    }
    app.clock.advance(Duration::from_secs(20 * 60));
    assert_eq!(plain.get("/account/devices").await.status, 200);
    // A skipped refresh is counted, never a lock-out for an unbound session.
    let mut skipping = plain.clone();
    skipping
        .extra_headers
        .push(("secure-session-skipped".into(), "unreachable".into()));
    assert_eq!(skipping.get("/account").await.status, 200);
    assert_eq!(
        app.metric("gatehouse_dbsc_total{event=\"skipped_unreachable\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn an_operator_can_require_binding_for_administrators() {
    let app = spawn_app_with(Options {
        frozen_clock: true,
        extra: vec![("GATEHOUSE_DBSC_REQUIRE_FOR_ADMINS", "true".into())],
        ..Options::default()
    })
    .await;
    // An administrator whose browser does not bind: a minute's grace, then refused.
    let admin = app.browser();
    app.register(&admin, "root@example.com", PASSWORD).await;
    sqlx::query("UPDATE users SET is_admin = true WHERE email = 'root@example.com'")
        .execute(&app.db)
        .await
        .unwrap();
    assert_eq!(admin.get("/account").await.status, 200);
    // One whose browser binds, and a user who is not an administrator.
    let key = DeviceKey::new();
    let bound = app.browser();
    let r = app.login(&bound, "root@example.com", PASSWORD).await;
    let offer = r.header("secure-session-registration").unwrap();
    let proof = key.proof(
        &param(&offer, "challenge"),
        Some(&param(&offer, "authorization")),
        true,
    );
    assert_eq!(
        post_with(
            &bound,
            "/dbsc/register",
            &[("secure-session-response", &proof)]
        )
        .await
        .status,
        200
    );
    let user = app.browser();
    app.register(&user, "someone@example.com", PASSWORD).await;
    app.clock.advance(Duration::from_secs(61));
    assert!(admin.get("/account").await.is_sign_in_redirect());
    assert_eq!(bound.get("/account").await.status, 200);
    assert_eq!(user.get("/account").await.status, 200);
    assert_eq!(
        app.metric("gatehouse_dbsc_total{event=\"required\"}").await,
        1.0
    );
}

/// Binds the session `b` just signed in with (`signed_in`: the answer that offered
/// it) to `key`.
async fn bind(b: &Browser, signed_in: &Resp, key: &DeviceKey) {
    let offer = signed_in
        .header("secure-session-registration")
        .expect("a new session is offered binding");
    let proof = key.proof(
        &param(&offer, "challenge"),
        Some(&param(&offer, "authorization")),
        true,
    );
    let r = post_with(b, "/dbsc/register", &[("secure-session-response", &proof)]).await;
    assert_eq!(r.status, 200, "{}", r.body);
}

/// A copy of `b`'s session cookie alone, in a browser of its own.
fn copy_of(app: &TestApp, b: &Browser) -> Browser {
    let copy = app.browser();
    copy.set_cookie(app.session_cookie_name(), &app.session_cookie(b).unwrap());
    copy
}

/// What ending a session must reach (the normal revocation path): the row revoked,
/// the app's access token inactive at introspection, its refresh token refused, and
/// one back-channel logout token for the session's `sid`.
async fn assert_ended(
    app: &TestApp,
    client: &Client,
    receiver: &Receiver,
    sid: &str,
    tokens: &Tokens,
) {
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) FROM sessions WHERE id = '{sid}' AND revoked_at IS NOT NULL"
        ))
        .await,
        1,
        "the session {sid} is revoked"
    );
    assert_eq!(
        introspect(app, client, &tokens.access).await,
        inactive(),
        "the app's access token died with the session"
    );
    let (status, body) = crate::oauth_helpers::refresh(app, client, &tokens.refresh).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"], "invalid_grant");
    let mut delivered = false;
    for _ in 0..100 {
        for token in receiver.received() {
            if validate_logout_token(app, client, &token).await["sid"] == sid {
                delivered = true;
            }
        }
        if delivered {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(delivered, "a back-channel logout token for {sid}");
}

/// Issue 24 item 4: a device-bound session's request without its bound cookie is
/// refused everything signed in, but ending the session is protective: `/logout`,
/// `/oauth2/logout` with an `id_token_hint` naming it, and the confirmation page all
/// end it, through the same revocation as any sign-out (DESIGN.md "A copied
/// device-bound cookie").
#[tokio::test]
async fn whoever_holds_a_bound_sessions_cookie_can_end_it_without_the_bound_cookie() {
    let app = dbsc_app().await;
    let receiver = Receiver::start().await;
    let client = create_client(
        &app,
        &["--first-party", "--backchannel-logout-uri", &receiver.uri],
    );
    app.user("alice@example.com").await;
    for way in [
        "/logout",
        "/logout from a page shown while the session was live",
        "/oauth2/logout with a hint",
        "the confirmation page",
    ] {
        let b = app.browser();
        let r = app.login(&b, "alice@example.com", PASSWORD).await;
        assert_eq!(r.status, 303, "{way}: {}", r.body);
        bind(&b, &r, &DeviceKey::new()).await;
        let tokens = sign_in_app(&app, &b, &client, &[]).await;
        // The owner's own sign-out button, on a page shown before the bound cookie
        // lapsed: its form token is bound to the session.
        let owner_csrf = b.get("/account").await.csrf();
        let sid = jwt_parts(&tokens.access).1["sid"]
            .as_str()
            .unwrap()
            .to_string();
        // Past the moments after binding when a request without the bound cookie
        // may still be the browser's own.
        app.clock.advance(Duration::from_secs(31));
        let copy = copy_of(&app, &b);
        assert!(copy.get("/account").await.is_sign_in_redirect(), "{way}");
        match way {
            "/logout" => {
                // A signed-out page's form token (the pre-session's), as any page
                // this request may see carries.
                let csrf = copy.get("/login").await.csrf();
                let r = copy.post_form("/logout", &[("csrf_token", &csrf)]).await;
                assert_eq!(r.status, 303, "{}", r.body);
                assert_eq!(r.location(), "/login");
            }
            "/logout from a page shown while the session was live" => {
                let r = copy
                    .post_form("/logout", &[("csrf_token", &owner_csrf)])
                    .await;
                assert_eq!(r.status, 303, "{}", r.body);
                assert_eq!(r.location(), "/login");
            }
            "/oauth2/logout with a hint" => {
                let hint = tokens.id.clone().expect("an ID token");
                let r = copy
                    .get(&format!("/oauth2/logout?id_token_hint={hint}"))
                    .await;
                assert_eq!(r.status, 200, "{}", r.body);
                assert!(r.body.contains("You are signed out"), "{}", r.body);
            }
            _ => {
                let asked = copy.get("/oauth2/logout").await;
                assert_eq!(asked.status, 200, "{}", asked.body);
                assert!(
                    asked.body.contains("Sign out of Gatehouse?"),
                    "{}",
                    asked.body
                );
                // Nothing signed in shows: not even whose session it is.
                assert!(!asked.body.contains("alice@example.com"), "{}", asked.body);
                let r = copy
                    .post_form(
                        "/oauth2/logout",
                        &[("csrf_token", &asked.csrf()), ("request", "")],
                    )
                    .await;
                assert_eq!(r.status, 200, "{}", r.body);
                assert!(r.body.contains("You are signed out"), "{}", r.body);
            }
        }
        assert_ended(&app, &client, &receiver, &sid, &tokens).await;
        // The owner's browser, with both cookies, is signed out too.
        assert!(b.get("/account").await.is_sign_in_redirect(), "{way}");
    }
    // A wrong form token still ends nothing.
    let b = app.browser();
    let r = app.login(&b, "alice@example.com", PASSWORD).await;
    bind(&b, &r, &DeviceKey::new()).await;
    app.clock.advance(Duration::from_secs(31));
    let copy = copy_of(&app, &b);
    let r = copy.post_form("/logout", &[("csrf_token", "forged")]).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(
        app.count("SELECT count(*) FROM sessions WHERE revoked_at IS NULL")
            .await,
        1,
        "the session lives on"
    );
}

/// Issue 24 item 5: `Secure-Session-Skipped` is the requester's word. A copied bound
/// session cookie replayed with it from another address is refused, flagged and its
/// owner mailed once; the same header from the session's own address, once, is
/// refused and nothing more (a real browser whose refresh failed says the same).
#[tokio::test]
async fn a_copied_bound_cookie_claiming_a_skipped_refresh_from_another_address_is_flagged_and_mailed_once()
 {
    let app = spawn_app_with(Options {
        frozen_clock: true,
        trusted_proxies: Some("127.0.0.1/32".into()),
        ..Options::default()
    })
    .await;
    let at = |b: &mut Browser, ip: &str| {
        b.extra_headers.push(("x-forwarded-for".into(), ip.into()));
    };
    let mut b = app.browser();
    at(&mut b, "198.51.100.20");
    let r = app.register(&b, "alice@example.com", PASSWORD).await;
    assert_eq!(r.status, 303);
    bind(&b, &r, &DeviceKey::new()).await;
    app.clock.advance(Duration::from_secs(31));
    let skipping = |ip: &str| {
        let mut copy = copy_of(&app, &b);
        at(&mut copy, ip);
        copy.extra_headers
            .push(("secure-session-skipped".into(), "unreachable".into()));
        copy
    };
    let flagged = "SELECT count(*) FROM sessions
                   WHERE risk_flagged AND risk_reason = 'Used without its device key'";

    // From the session's own address, once: refused, not reported.
    assert!(
        skipping("198.51.100.20")
            .get("/account")
            .await
            .is_sign_in_redirect()
    );
    assert_eq!(app.count(flagged).await, 0);

    // From another address, whatever the header says: refused, flagged, mailed.
    let thief = skipping("203.0.113.77");
    assert!(thief.get("/account").await.is_sign_in_redirect());
    assert_eq!(app.count(flagged).await, 1);
    app.mail
        .wait_for_subject("alice@example.com", "Unusual activity on your account")
        .await;
    // Again: still refused, no second mail.
    assert!(thief.get("/account/devices").await.is_sign_in_redirect());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let notices = app
        .mail
        .to("alice@example.com")
        .into_iter()
        .filter(|m| m.subject() == "Unusual activity on your account")
        .count();
    assert_eq!(notices, 1, "the owner is mailed once");
    // The owner's device list (from a new sign-in) says what happened.
    let mut owner = app.browser();
    at(&mut owner, "198.51.100.20");
    let r = app.login(&owner, "alice@example.com", PASSWORD).await;
    assert_eq!(r.status, 303, "{}", r.body);
    let page = owner.get("/account/devices").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        page.body
            .contains("Used without its device key, from another address than its own"),
        "{}",
        page.body
    );
}

/// Issue 24 item 5: skipped refusals from the session's own address that repeat
/// beyond what a real browser sends (more than `SKIPPED_REFUSALS_LIMIT`, 20, in ten
/// minutes) flag the session too.
#[tokio::test]
async fn skipped_refusals_that_repeat_beyond_a_real_browsers_flag_the_session() {
    let app = dbsc_app().await;
    let key = DeviceKey::new();
    let (b, _, registered) = bound_alice(&app, &key).await;
    assert_eq!(registered.status, 200);
    app.clock.advance(Duration::from_secs(31));
    let mut copy = copy_of(&app, &b);
    copy.extra_headers
        .push(("secure-session-skipped".into(), "server_error".into()));
    let flagged = "SELECT count(*) FROM sessions WHERE risk_flagged";
    for _ in 0..20 {
        assert!(copy.get("/account").await.is_sign_in_redirect());
    }
    assert_eq!(app.count(flagged).await, 0, "20 in ten minutes: a browser");
    // Ten minutes on, the window starts again.
    app.clock.advance(Duration::from_secs(601));
    for _ in 0..20 {
        assert!(copy.get("/account").await.is_sign_in_redirect());
    }
    assert_eq!(app.count(flagged).await, 0);
    assert!(copy.get("/account").await.is_sign_in_redirect());
    assert_eq!(app.count(flagged).await, 1, "the 21st in one window");
    app.mail
        .wait_for_subject("alice@example.com", "Unusual activity on your account")
        .await;
}
