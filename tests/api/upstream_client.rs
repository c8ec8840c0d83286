//! The upstream protocol client against a real OpenID provider: a second Gatehouse
//! whose issuer is its own address. Discovery, JWKS, the code exchange with client
//! authentication and PKCE, ID-token checks, RFC 9207 `iss`, logout tokens.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use gatehouse::clock::Clock;
use gatehouse::store::{
    NewEvent, PgStore, Upstream, UpstreamFlowStore, UpstreamLogout, UpstreamSessions, UpstreamStore,
};
use gatehouse::upstream::{self, UpstreamError};
use secrecy::SecretString;
use serde_json::Value;

use crate::backchannel::Receiver;
use crate::helpers::{Browser, Options, TestApp, spawn_app_with};
use crate::oauth_helpers::{CB, Client, create_client, exchange, location_params, param, pkce};
use crate::upstream_cli::add_upstream;

const EMAIL: &str = "alice@example.com";

/// `idp`: the upstream; `us`: the Gatehouse that signs in with it (its database
/// holds the upstream and the spent logout `jti`s).
struct Rig {
    idp: TestApp,
    app: Client,
    receiver: Receiver,
    us: TestApp,
    store: PgStore,
    up: Upstream,
    secret: SecretString,
    rp: upstream::Client,
}

async fn rig() -> Rig {
    let idp = spawn_app_with(Options {
        issuer_is_address: true,
        ..Options::default()
    })
    .await;
    let receiver = Receiver::start().await;
    let app = create_client(
        &idp,
        &["--first-party", "--backchannel-logout-uri", &receiver.uri],
    );
    let us = spawn_app_with(Options {
        dev: true,
        ..Options::default()
    })
    .await;
    let secret = app.secret.clone().expect("a confidential client");
    add_upstream(
        &us,
        &[
            "--name",
            "idp",
            "--kind",
            "oidc",
            "--issuer",
            &idp.address,
            "--client-id",
            &app.id,
        ],
        &secret,
        &[("GATEHOUSE_DEV", "true")],
    );
    let store = PgStore::new(us.db.clone(), Arc::new(us.keys()));
    let (up, sealed) = store.upstream_by_name("idp").await.unwrap().unwrap();
    let secret = upstream::open_client_secret(&us.keys(), &sealed).unwrap();
    Rig {
        idp,
        app,
        receiver,
        us,
        store,
        up,
        secret,
        rp: upstream::Client::new(Clock::system(), true).unwrap(),
    }
}

/// What the browser brings back from the upstream.
struct Callback {
    code: String,
    state: String,
    iss: Option<String>,
    verifier: String,
}

impl Rig {
    /// Sends the signed-in browser `b` to the URL our client builds, as a browser
    /// would follow it, and reads the redirect back to us.
    async fn authorize(&self, b: &Browser, nonce: &str) -> Callback {
        let (verifier, challenge) = pkce();
        let url = self
            .rp
            .authorization_url(&self.up, CB, "state-1", nonce, &challenge)
            .await
            .expect("discovery works");
        assert!(
            url.as_str()
                .starts_with(&format!("{}/oauth2/authorize?", self.idp.address)),
            "{url}"
        );
        let r = b.get(&url[url::Position::BeforePath..]).await;
        assert_eq!(r.status, 303, "authorize: {}", r.body);
        assert!(r.location().starts_with(CB), "{}", r.location());
        let p = location_params(&r);
        Callback {
            code: param(&p, "code").expect("a code"),
            state: param(&p, "state").expect("the state"),
            iss: param(&p, "iss"),
            verifier,
        }
    }

    async fn redeem(
        &self,
        cb: &Callback,
        iss: Option<&str>,
        nonce: &str,
    ) -> Result<upstream::UpstreamIdentity, UpstreamError> {
        self.rp
            .redeem(
                &self.up,
                &self.secret,
                &cb.code,
                iss,
                CB,
                nonce,
                &cb.verifier,
            )
            .await
    }

    /// An ID token straight from the upstream's token endpoint, for tampering with.
    async fn id_token(&self, b: &Browser, nonce: &str) -> String {
        let cb = self.authorize(b, nonce).await;
        let (status, body) = exchange(&self.idp, &self.app, &cb.code, Some(&cb.verifier)).await;
        assert_eq!(status, 200, "{body}");
        body["id_token"].as_str().expect("an id_token").to_string()
    }
}

fn refused<T: std::fmt::Debug>(r: Result<T, UpstreamError>) -> bool {
    matches!(r, Err(UpstreamError::Refused(_)))
}

/// A token with its header or claims replaced, the signature kept.
fn reshaped(token: &str, header: Option<Value>, claims: Option<Value>) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    let enc = |v: Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(&v).unwrap());
    format!(
        "{}.{}.{}",
        header.map_or(parts[0].to_string(), enc),
        claims.map_or(parts[1].to_string(), enc),
        parts[2]
    )
}

fn claims_of(token: &str) -> Value {
    let part = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

#[tokio::test]
async fn a_real_upstream_round_trip_gives_its_subject_address_and_session() {
    let rig = rig().await;
    let b = rig.idp.signed_in(EMAIL).await;
    let cb = rig.authorize(&b, "nonce-1").await;
    assert_eq!(cb.state, "state-1");
    // RFC 9207: this upstream names itself in the response.
    assert_eq!(cb.iss.as_deref(), Some(rig.idp.address.as_str()));
    let id = rig
        .redeem(&cb, cb.iss.as_deref(), "nonce-1")
        .await
        .expect("the code redeems and the ID token verifies");
    let user_id: String = sqlx::query_scalar("SELECT id::text FROM users WHERE email = $1")
        .bind(EMAIL)
        .fetch_one(&rig.idp.db)
        .await
        .unwrap();
    assert_eq!(id.subject, user_id);
    assert_eq!(id.email.as_deref(), Some(EMAIL));
    let sid: String = sqlx::query_scalar("SELECT id::text FROM sessions WHERE user_id = $1::uuid")
        .bind(&user_id)
        .fetch_one(&rig.idp.db)
        .await
        .unwrap();
    assert_eq!(id.sid.as_deref(), Some(sid.as_str()));
    // The code is single use at the upstream: a replay is refused, not a new sign-in.
    assert!(refused(rig.redeem(&cb, cb.iss.as_deref(), "nonce-1").await));
}

#[tokio::test]
async fn a_wrong_or_missing_iss_in_the_response_is_refused_before_the_code_is_spent() {
    // U4
    let rig = rig().await;
    let b = rig.idp.signed_in(EMAIL).await;
    let cb = rig.authorize(&b, "n").await;
    // The upstream advertises authorization_response_iss_parameter_supported.
    assert!(refused(rig.redeem(&cb, None, "n").await));
    assert!(refused(
        rig.redeem(&cb, Some("https://evil.example"), "n").await
    ));
    // Neither reached the token endpoint: the code still works.
    assert!(rig.redeem(&cb, cb.iss.as_deref(), "n").await.is_ok());
}

#[tokio::test]
async fn a_tampered_forged_or_misaddressed_id_token_is_refused() {
    // U3
    let rig = rig().await;
    let b = rig.idp.signed_in(EMAIL).await;
    let token = rig.id_token(&b, "nonce-2").await;
    let good = rig.rp.verify_id_token(&rig.up, &token, "nonce-2").await;
    assert!(good.is_ok(), "{good:?}");

    assert!(refused(
        rig.rp.verify_id_token(&rig.up, &token, "nonce-3").await
    ));
    let mut claims = claims_of(&token);
    claims["sub"] = "someone-else".into();
    let tampered = reshaped(&token, None, Some(claims));
    assert!(refused(
        rig.rp.verify_id_token(&rig.up, &tampered, "nonce-2").await
    ));
    let header = |alg: &str| Some(serde_json::json!({"alg": alg, "typ": "JWT"}));
    let none = reshaped(&token, header("none"), None);
    assert!(refused(
        rig.rp.verify_id_token(&rig.up, &none, "nonce-2").await
    ));
    // HS256 with the client secret as key: a signature anyone with the secret can make.
    let hs = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims_of(&token),
        &jsonwebtoken::EncodingKey::from_secret(rig.app.secret.as_deref().unwrap().as_bytes()),
    )
    .unwrap();
    assert!(refused(
        rig.rp.verify_id_token(&rig.up, &hs, "nonce-2").await
    ));
    // A kid the upstream never had: refetched once, still unknown.
    let unknown = reshaped(
        &token,
        Some(serde_json::json!({"alg": "RS256", "kid": "no-such-key"})),
        None,
    );
    assert!(refused(
        rig.rp.verify_id_token(&rig.up, &unknown, "nonce-2").await
    ));
    // Issued to another client: `aud` is not ours.
    let other = Upstream {
        client_id: "another-client".into(),
        ..rig.up.clone()
    };
    assert!(refused(
        rig.rp.verify_id_token(&other, &token, "nonce-2").await
    ));
    // And the real token still passes: nothing above poisoned the caches.
    assert!(
        rig.rp
            .verify_id_token(&rig.up, &token, "nonce-2")
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn a_key_the_upstream_rotated_in_is_fetched_on_first_sight() {
    let rig = rig().await;
    let b = rig.idp.signed_in(EMAIL).await;
    let first = rig.id_token(&b, "n").await;
    assert!(rig.rp.verify_id_token(&rig.up, &first, "n").await.is_ok());
    let old_kid = jsonwebtoken::decode_header(&first).unwrap().kid;
    let (ok, _, err) = rig.idp.cli(&["keys", "rotate"], &[]);
    assert!(ok, "{err}");
    // The upstream signs with the new key once its node has loaded it.
    let mut token = first.clone();
    for _ in 0..100 {
        token = rig.id_token(&b, "n").await;
        if jsonwebtoken::decode_header(&token).unwrap().kid != old_kid {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_ne!(jsonwebtoken::decode_header(&token).unwrap().kid, old_kid);
    let r = rig.rp.verify_id_token(&rig.up, &token, "n").await;
    assert!(
        r.is_ok(),
        "the cached key set is refetched for the new kid: {r:?}"
    );
}

#[tokio::test]
async fn a_discovery_document_naming_another_issuer_and_an_upstream_that_is_down_are_told_apart() {
    let rig = rig().await;
    // Same document (the trailing slash is dropped to find it), but its issuer is
    // not exactly the configured one.
    let slash = Upstream {
        issuer: Some(format!("{}/", rig.idp.address)),
        ..rig.up.clone()
    };
    let r = rig.rp.authorization_url(&slash, CB, "s", "n", "c").await;
    assert!(refused(r));
    // Nobody listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let down = Upstream {
        issuer: Some(format!("http://127.0.0.1:{port}")),
        ..rig.up.clone()
    };
    let r = rig.rp.authorization_url(&down, CB, "s", "n", "c").await;
    assert!(matches!(r, Err(UpstreamError::Unreachable(_))), "{r:?}");
}

#[tokio::test]
async fn the_upstreams_logout_token_verifies_once_and_names_the_session() {
    // U6
    let rig = rig().await;
    let b = rig.idp.signed_in(EMAIL).await;
    let cb = rig.authorize(&b, "n").await;
    let id = rig.redeem(&cb, cb.iss.as_deref(), "n").await.unwrap();
    // Signing out at the upstream sends its logout token to the registered URI.
    let csrf = b.get("/account").await.csrf();
    let r = b.post_form("/logout", &[("csrf_token", &csrf)]).await;
    assert_eq!(r.status, 303);
    let mut tokens = Vec::new();
    for _ in 0..100 {
        tokens = rig.receiver.received();
        if !tokens.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let token = tokens.first().expect("a logout token arrives");
    let claims = rig
        .rp
        .verify_logout_token(&rig.store, &rig.up, token)
        .await
        .expect("the logout token verifies");
    assert_eq!(claims.sid, id.sid);
    assert_eq!(claims.sub.as_deref(), Some(id.subject.as_str()));
    // Checking spends nothing: the receiver spends the jti with the sessions' end.
    assert_eq!(
        rig.us
            .count("SELECT count(*) FROM upstream_logout_jtis")
            .await,
        0
    );
    rig.store
        .end_upstream_sessions(
            &UpstreamLogout {
                upstream_id: rig.up.id,
                which: UpstreamSessions::Subject(&id.subject),
                jti: &claims.jti,
                keep_until: claims.keep_until,
                reason: "signed out at the upstream",
            },
            &NewEvent {
                kind: "session_revoked",
                actor: "system",
                at: rig.us.clock.now(),
                ip_enc: None,
                user_agent_enc: None,
                location_enc: None,
                detail: None,
            },
        )
        .await
        .unwrap()
        .expect("the first time is no replay");
    // §2.6: its jti is spent; the same token again is refused.
    assert!(refused(
        rig.rp.verify_logout_token(&rig.store, &rig.up, token).await
    ));
    // An ID token is not a logout token (a nonce, no event).
    let bob = rig.idp.signed_in("bob@example.com").await;
    let id_token = rig.id_token(&bob, "n").await;
    assert!(refused(
        rig.rp
            .verify_logout_token(&rig.store, &rig.up, &id_token)
            .await
    ));
    // A fresh logout token (Bob signs out), checked as if addressed to another
    // client: refused, and its jti not spent.
    let csrf = bob.get("/account").await.csrf();
    assert_eq!(
        bob.post_form("/logout", &[("csrf_token", &csrf)])
            .await
            .status,
        303
    );
    let mut fresh = None;
    for _ in 0..100 {
        fresh = rig.receiver.received().into_iter().find(|t| t != token);
        if fresh.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let fresh = fresh.expect("Bob's logout token arrives");
    let other = Upstream {
        client_id: "another-client".into(),
        ..rig.up.clone()
    };
    let spent = "SELECT count(*) FROM upstream_logout_jtis";
    let before = rig.us.count(spent).await;
    assert!(refused(
        rig.rp.verify_logout_token(&rig.store, &other, &fresh).await
    ));
    assert_eq!(rig.us.count(spent).await, before, "no jti spent");
    // Addressed to us it still verifies: nothing above used it up.
    let claims = rig
        .rp
        .verify_logout_token(&rig.store, &rig.up, &fresh)
        .await
        .expect("the fresh logout token verifies for its own client");
    assert!(claims.sid.is_some());
}

/// A bare OpenID provider that counts how often its discovery document and key set
/// are fetched (its key set is empty: every `kid` is unknown to it).
async fn counting_provider() -> (String, Arc<[std::sync::atomic::AtomicUsize; 2]>) {
    use actix_web::{App, HttpResponse, HttpServer, web};
    use std::sync::atomic::Ordering;
    let hits: Arc<[std::sync::atomic::AtomicUsize; 2]> = Arc::default();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (h, b) = (hits.clone(), base.clone());
    let server = HttpServer::new(move || {
        let (h1, h2, b) = (h.clone(), h.clone(), b.clone());
        App::new()
            .route(
                "/.well-known/openid-configuration",
                web::get().to(move || {
                    h1[0].fetch_add(1, Ordering::SeqCst);
                    let b = b.clone();
                    async move {
                        HttpResponse::Ok().json(serde_json::json!({
                            "issuer": b,
                            "authorization_endpoint": format!("{b}/authorize"),
                            "token_endpoint": format!("{b}/token"),
                            "jwks_uri": format!("{b}/jwks"),
                        }))
                    }
                }),
            )
            .route(
                "/jwks",
                web::get().to(move || {
                    h2[1].fetch_add(1, Ordering::SeqCst);
                    async { HttpResponse::Ok().json(serde_json::json!({"keys": []})) }
                }),
            )
    })
    .workers(1)
    .listen(listener)
    .unwrap();
    tokio::spawn(server.run());
    (base, hits)
}

#[tokio::test]
async fn discovery_is_cached_and_unknown_kids_refetch_the_keys_at_most_once_in_a_while() {
    use std::sync::atomic::Ordering;
    let (base, hits) = counting_provider().await;
    let rig_up = Upstream {
        id: uuid::Uuid::new_v4(),
        name: "bare".into(),
        kind: gatehouse::store::UpstreamKind::Oidc,
        preset: None,
        label: "Bare".into(),
        trust_email: false,
        issuer: Some(base.clone()),
        base_url: None,
        api_url: None,
        client_id: "c".into(),
        scopes: "openid".into(),
        created_at: time::OffsetDateTime::now_utc(),
    };
    let rp = upstream::Client::new(Clock::system(), true).unwrap();
    let enc = |v: Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(&v).unwrap());
    for i in 0..10 {
        let token = format!(
            "{}.{}.{}",
            enc(serde_json::json!({"alg": "RS256", "kid": format!("made-up-{i}")})),
            enc(serde_json::json!({"iss": base, "sub": "x", "aud": "c"})),
            URL_SAFE_NO_PAD.encode([0u8; 256]),
        );
        assert!(refused(rp.verify_id_token(&rig_up, &token, "n").await));
    }
    assert_eq!(hits[0].load(Ordering::SeqCst), 1, "one discovery fetch");
    assert_eq!(
        hits[1].load(Ordering::SeqCst),
        2,
        "the key set once, and once more for the first unknown kid only"
    );
}

#[tokio::test]
async fn outside_dev_mode_a_plain_http_issuer_is_refused_without_being_asked_anything() {
    // The row may come from a dev-mode `upstream add`; the server checks again.
    use std::sync::atomic::Ordering;
    let (base, hits) = counting_provider().await;
    let up = Upstream {
        id: uuid::Uuid::new_v4(),
        name: "plain".into(),
        kind: gatehouse::store::UpstreamKind::Oidc,
        preset: None,
        label: "Plain".into(),
        trust_email: false,
        issuer: Some(base.clone()),
        base_url: None,
        api_url: None,
        client_id: "c".into(),
        scopes: "openid".into(),
        created_at: time::OffsetDateTime::now_utc(),
    };
    let rp = upstream::Client::new(Clock::system(), false).unwrap();
    assert!(refused(rp.authorization_url(&up, CB, "s", "n", "c").await));
    assert_eq!(hits[0].load(Ordering::SeqCst), 0, "no discovery fetched");
    // In dev mode the same loopback issuer is used.
    let dev = upstream::Client::new(Clock::system(), true).unwrap();
    assert!(dev.authorization_url(&up, CB, "s", "n", "c").await.is_ok());
    assert_eq!(hits[0].load(Ordering::SeqCst), 1);
}
