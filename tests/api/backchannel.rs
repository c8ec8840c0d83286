//! OpenID Connect Back-Channel Logout 1.0 (issue "revocation reach", item 1): every
//! way a session ends sends each client that held tokens from it one logout token,
//! validated here against the JWKS as a relying party would; clients that never held
//! tokens from that session get none; a receiver that is down loses nothing; two
//! nodes never deliver one twice.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{Browser, Options, PASSWORD, PUBLIC_URL, TestApp, spawn_app_with};
use crate::nodes::second_node;
use crate::oauth_helpers::*;
use crate::otp::step_up_by_email;

const EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

/// A relying party's back-channel endpoint: plain HTTP/1.1 on loopback, recording
/// every `logout_token` it is sent, answering with `status` (0: drops the
/// connection without an answer, as a receiver that is down would).
pub struct Receiver {
    pub uri: String,
    received: Arc<Mutex<Vec<String>>>,
    status: Arc<AtomicU16>,
}

impl Receiver {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let uri = format!("http://{}/backchannel", listener.local_addr().unwrap());
        let received: Arc<Mutex<Vec<String>>> = Arc::default();
        let status = Arc::new(AtomicU16::new(200));
        let (rec, st) = (received.clone(), status.clone());
        tokio::spawn(async move {
            while let Ok((mut sock, _)) = listener.accept().await {
                let (rec, st) = (rec.clone(), st.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let (head_end, length) = loop {
                        let Ok(n) = sock.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..i]).to_lowercase();
                            let length = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse::<usize>().ok())
                                .unwrap_or(0);
                            break (i + 4, length);
                        }
                    };
                    while buf.len() < head_end + length {
                        let Ok(n) = sock.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                    }
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
                    let body = String::from_utf8_lossy(&buf[head_end..head_end + length]);
                    if head.contains("content-type: application/x-www-form-urlencoded") {
                        for (k, v) in url::form_urlencoded::parse(body.as_bytes()) {
                            if k == "logout_token" {
                                rec.lock().unwrap().push(v.into_owned());
                            }
                        }
                    }
                    let status = st.load(Ordering::SeqCst);
                    if status == 0 {
                        return;
                    }
                    let reply = format!(
                        "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n"
                    );
                    let _ = sock.write_all(reply.as_bytes()).await;
                });
            }
        });
        Self {
            uri,
            received,
            status,
        }
    }

    pub fn answer(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    pub fn received(&self) -> Vec<String> {
        self.received.lock().unwrap().clone()
    }
}

/// Validates a logout token as OIDC Back-Channel Logout §2.6 tells a relying party
/// to: signature by a key of the OP's JWKS (RS256), `iss`, `aud`, `iat`, `exp`, the
/// event, `sid` or `sub`, no `nonce`, `typ` `logout+jwt`. Returns the claims.
pub async fn validate_logout_token(app: &TestApp, client: &Client, token: &str) -> Value {
    let header = jsonwebtoken::decode_header(token).expect("a JWS");
    assert_eq!(header.alg, Algorithm::RS256);
    assert_eq!(header.typ.as_deref(), Some("logout+jwt"));
    let kid = header.kid.expect("a kid");
    let jwks: Value = serde_json::from_str(
        &reqwest::get(format!("{}/jwks.json", app.address))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    let key = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kid"] == kid.as_str())
        .expect("the token's key is in the JWKS");
    let key =
        DecodingKey::from_rsa_components(key["n"].as_str().unwrap(), key["e"].as_str().unwrap())
            .unwrap();
    let mut v = Validation::new(Algorithm::RS256);
    v.set_audience(&[client.id.as_str()]);
    v.set_issuer(&[PUBLIC_URL]);
    v.set_required_spec_claims(&["iss", "aud", "exp", "iat", "sub"]);
    let claims = jsonwebtoken::decode::<Value>(token, &key, &v)
        .expect("the logout token validates")
        .claims;
    assert!(claims["events"][EVENT].is_object(), "{claims}");
    assert!(claims.get("nonce").is_none(), "§2.4: no nonce");
    assert!(claims["jti"].is_string());
    assert!(claims["sid"].is_string());
    claims
}

/// One app with three back-channel clients: `a` and `b` get tokens from the session
/// under test, `c` only from another session of the same user.
struct Rig {
    app: TestApp,
    a: (Client, Receiver),
    b: (Client, Receiver),
    c: (Client, Receiver),
}

async fn rig(options: Options) -> Rig {
    let app = spawn_app_with(options).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        let r = Receiver::start().await;
        let c = create_client(&app, &["--first-party", "--backchannel-logout-uri", &r.uri]);
        clients.push((c, r));
    }
    let c = clients.pop().unwrap();
    let b = clients.pop().unwrap();
    let a = clients.pop().unwrap();
    Rig { app, a, b, c }
}

const EMAIL: &str = "alice@example.com";

impl Rig {
    /// A new session of the user with tokens for `a` and `b`; `c` gets tokens from
    /// a second session. Returns the browser, its `sid` and `a`'s tokens.
    async fn session(&self) -> (Browser, String, Tokens) {
        let app = &self.app;
        if app.count("SELECT count(*) FROM users").await == 0 {
            app.user(EMAIL).await;
        }
        let x = app.browser();
        app.login(&x, EMAIL, PASSWORD).await;
        let t = sign_in_app(app, &x, &self.a.0, &[]).await;
        sign_in_app(app, &x, &self.b.0, &[]).await;
        let other = app.browser();
        app.login(&other, EMAIL, PASSWORD).await;
        sign_in_app(app, &other, &self.c.0, &[]).await;
        let sid = jwt_parts(&t.access).1["sid"].as_str().unwrap().to_string();
        (x, sid, t)
    }

    /// A further session of the user, holding no tokens.
    async fn another_session(&self) -> Browser {
        let b = self.app.browser();
        self.app.login(&b, EMAIL, PASSWORD).await;
        b
    }

    /// Both `a` and `b` get exactly one valid logout token for `sid`; `c` none.
    async fn expect_logout(&self, sid: &str) {
        for (client, receiver) in [&self.a, &self.b] {
            let mut found = Vec::new();
            for _ in 0..100 {
                found.clear();
                for token in receiver.received() {
                    let claims = validate_logout_token(&self.app, client, &token).await;
                    if claims["sid"] == sid {
                        found.push(claims);
                    }
                }
                if !found.is_empty() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // And no second one a moment later.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let mut count = 0;
            for token in receiver.received() {
                if validate_logout_token(&self.app, client, &token).await["sid"] == sid {
                    count += 1;
                }
            }
            assert_eq!(count, 1, "one logout token for {sid}, not {count}");
            assert_eq!(found.len(), 1, "one logout token for {sid}: {found:?}");
            assert_eq!(found[0]["aud"], client.id.as_str());
            let owner: String =
                sqlx::query_scalar("SELECT user_id::text FROM sessions WHERE id = $1::uuid")
                    .bind(sid)
                    .fetch_one(&self.app.db)
                    .await
                    .unwrap();
            assert_eq!(found[0]["sub"], owner.as_str());
        }
        // `c` held no tokens from this session: nothing queued, nothing received.
        let queued = self
            .app
            .count(&format!(
                "SELECT count(*) FROM backchannel_outbox WHERE session_id = '{sid}' AND client_id = '{}'",
                self.c.0.id
            ))
            .await;
        assert_eq!(queued, 0);
        for token in self.c.1.received() {
            let claims = validate_logout_token(&self.app, &self.c.0, &token).await;
            assert_ne!(claims["sid"], sid);
        }
    }
}

#[tokio::test]
async fn signing_out_sends_a_logout_token_to_each_app_of_that_session_only() {
    let rig = rig(Options::default()).await;
    let (x, sid, _) = rig.session().await;
    let csrf = x.get("/account").await.csrf();
    assert_eq!(
        x.post_form("/logout", &[("csrf_token", &csrf)])
            .await
            .status,
        303
    );
    rig.expect_logout(&sid).await;
}

#[tokio::test]
async fn an_app_initiated_logout_sends_logout_tokens_too() {
    let rig = rig(Options::default()).await;
    let (x, sid, t) = rig.session().await;
    let r = x
        .get(&format!("/oauth2/logout?id_token_hint={}", t.id.unwrap()))
        .await;
    assert!(r.status == 200 || r.status == 303, "{}", r.body);
    rig.expect_logout(&sid).await;
}

#[tokio::test]
async fn revoking_the_device_from_another_session_sends_logout_tokens() {
    let rig = rig(Options::default()).await;
    let (_x, sid, _) = rig.session().await;
    let owner = rig.another_session().await;
    let page = owner.get("/account/devices").await;
    let r = owner
        .post_form(
            &format!("/account/devices/{sid}/revoke"),
            &[("csrf_token", &page.csrf())],
        )
        .await;
    assert_eq!(r.status, 303);
    rig.expect_logout(&sid).await;
}

#[tokio::test]
async fn revoking_the_others_and_revoking_all_send_logout_tokens() {
    let rig = rig(Options::default()).await;
    let (_x, sid, _) = rig.session().await;
    let owner = rig.another_session().await;
    let page = owner.get("/account/devices").await;
    let r = owner
        .post_form(
            "/account/devices/revoke-others",
            &[("csrf_token", &page.csrf())],
        )
        .await;
    assert_eq!(r.status, 303);
    rig.expect_logout(&sid).await;

    let (x, sid, _) = rig.session().await;
    let page = x.get("/account/devices").await;
    let r = x
        .post_form(
            "/account/devices/revoke-all",
            &[("csrf_token", &page.csrf())],
        )
        .await;
    assert_eq!(r.status, 303);
    rig.expect_logout(&sid).await;
}

#[tokio::test]
async fn a_password_change_sends_logout_tokens_for_the_other_sessions() {
    let rig = rig(Options::default()).await;
    let (_x, sid, _) = rig.session().await;
    let owner = rig.another_session().await;
    step_up_by_email(&rig.app, &owner, EMAIL, "/account/password").await;
    let page = owner.get("/account/password").await;
    assert_eq!(page.status, 200, "{}", page.body);
    let r = owner
        .post_form(
            "/account/password",
            &[
                ("csrf_token", &page.csrf()),
                ("current_password", PASSWORD),
                ("new_password", "a brand new passphrase"),
                ("new_password_again", "a brand new passphrase"),
            ],
        )
        .await;
    assert!(r.status < 400, "{}", r.body);
    rig.expect_logout(&sid).await;
}

#[tokio::test]
async fn a_password_reset_sends_logout_tokens() {
    let rig = rig(Options::default()).await;
    let (_x, sid, _) = rig.session().await;
    let asker = rig.app.browser();
    let csrf = asker.get("/password/forgot").await.csrf();
    asker
        .post_form(
            "/password/forgot",
            &[("csrf_token", &csrf), ("email", EMAIL)],
        )
        .await;
    let reset = rig
        .app
        .mail
        .wait_for_subject(EMAIL, "Reset your password")
        .await
        .token("/password/reset");
    let form = asker.get(&format!("/password/reset?token={reset}")).await;
    let r = asker
        .post_form(
            "/password/reset",
            &[
                ("csrf_token", &form.csrf()),
                ("token", &reset),
                ("password", "the owner's new passphrase"),
            ],
        )
        .await;
    assert_eq!(r.status, 200);
    rig.expect_logout(&sid).await;
}

#[tokio::test]
async fn refresh_token_reuse_sends_logout_tokens() {
    let rig = rig(Options::default()).await;
    let (_x, sid, t) = rig.session().await;
    let (s, _) = refresh(&rig.app, &rig.a.0, &t.refresh).await;
    assert_eq!(s, 200);
    // The spent one again: theft, the session ends.
    let (s, _) = refresh(&rig.app, &rig.a.0, &t.refresh).await;
    assert_eq!(s, 400);
    rig.expect_logout(&sid).await;
}

#[tokio::test]
async fn an_operator_revoke_and_disabling_the_user_send_logout_tokens() {
    let rig = rig(Options::default()).await;
    let (_x, sid, _) = rig.session().await;
    let (ok, _, err) = rig.app.cli(&["sessions", "revoke", "--user", EMAIL], &[]);
    assert!(ok, "{err}");
    rig.expect_logout(&sid).await;

    let (_x, sid, _) = rig.session().await;
    let (ok, _, err) = rig.app.cli(&["user", "disable", "--email", EMAIL], &[]);
    assert!(ok, "{err}");
    rig.expect_logout(&sid).await;
}

#[tokio::test]
async fn discovery_advertises_back_channel_logout_with_sessions() {
    let rig = rig(Options::default()).await;
    let d: Value = serde_json::from_str(
        &reqwest::get(format!(
            "{}/.well-known/openid-configuration",
            rig.app.address
        ))
        .await
        .unwrap()
        .text()
        .await
        .unwrap(),
    )
    .unwrap();
    assert_eq!(d["backchannel_logout_supported"], true);
    assert_eq!(d["backchannel_logout_session_supported"], true);
}

#[tokio::test]
async fn a_receiver_that_is_down_gets_its_logout_later_with_the_same_jti() {
    let rig = rig(Options {
        frozen_clock: true,
        ..Options::default()
    })
    .await;
    let (x, sid, _) = rig.session().await;
    let (client, receiver) = &rig.a;
    receiver.answer(0);
    let csrf = x.get("/account").await.csrf();
    x.post_form("/logout", &[("csrf_token", &csrf)]).await;
    let attempts = format!(
        "SELECT attempts::bigint FROM backchannel_outbox WHERE client_id = '{}' AND session_id = '{sid}'",
        client.id
    );
    rig.app.wait_until(&attempts, 1).await;
    // Then an error answer; each retry waits for its backoff (2 s, then 4 s).
    receiver.answer(503);
    rig.app.clock.advance(Duration::from_secs(2));
    rig.app.wait_until(&attempts, 2).await;
    receiver.answer(200);
    rig.app.clock.advance(Duration::from_secs(1));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rig.app.count(&attempts).await, 2, "not before its backoff");
    rig.app.clock.advance(Duration::from_secs(3));
    rig.app.wait_until(&attempts, 3).await;
    rig.app
        .wait_until(
            &format!(
                "SELECT count(*) FROM backchannel_outbox WHERE client_id = '{}' AND delivered_at IS NOT NULL",
                client.id
            ),
            1,
        )
        .await;
    let tokens = receiver.received();
    assert_eq!(tokens.len(), 3, "three attempts reached it");
    let mut jtis = Vec::new();
    for t in &tokens {
        let claims = validate_logout_token(&rig.app, client, t).await;
        assert_eq!(claims["sid"], sid.as_str());
        jtis.push(claims["jti"].as_str().unwrap().to_string());
    }
    jtis.dedup();
    assert_eq!(jtis.len(), 1, "one jti on every attempt");
    // Delivered: nothing more is sent.
    rig.app.clock.advance(Duration::from_secs(3600));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.received().len(), 3);
}

#[tokio::test]
async fn two_nodes_deliver_each_logout_exactly_once() {
    let app = spawn_app_with(Options::default()).await;
    let receiver = Receiver::start().await;
    let client = create_client(
        &app,
        &["--first-party", "--backchannel-logout-uri", &receiver.uri],
    );
    let _node_b = second_node(&app).await;
    app.user(EMAIL).await;
    let mut sids = Vec::new();
    for _ in 0..24 {
        let b = app.browser();
        app.login(&b, EMAIL, PASSWORD).await;
        let t = sign_in_app(&app, &b, &client, &[]).await;
        sids.push(jwt_parts(&t.access).1["sid"].as_str().unwrap().to_string());
    }
    // One command ends them all: 24 rows, two nodes' workers draining them at once.
    let (ok, _, err) = app.cli(&["sessions", "revoke", "--user", EMAIL], &[]);
    assert!(ok, "{err}");
    app.wait_until(
        "SELECT count(*) FROM backchannel_outbox WHERE delivered_at IS NOT NULL",
        24,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut by_sid: HashMap<String, usize> = HashMap::new();
    for t in receiver.received() {
        let claims = validate_logout_token(&app, &client, &t).await;
        *by_sid
            .entry(claims["sid"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    for sid in &sids {
        assert_eq!(by_sid.get(sid), Some(&1), "{sid}: {by_sid:?}");
    }
    assert_eq!(by_sid.len(), 24);
}

#[tokio::test]
async fn a_receiver_that_refuses_with_a_4xx_gets_exactly_one_attempt() {
    // Back-Channel Logout 1.0 §2.8: a 4xx (other than 408 and 429) is the receiver's
    // final word; Apache's mod_auth_openidc answers 400 to a repeated jti, so retrying
    // would only warn for half an hour.
    let rig = rig(Options {
        frozen_clock: true,
        ..Options::default()
    })
    .await;
    let (x, sid, _) = rig.session().await;
    let (client, receiver) = &rig.a;
    receiver.answer(400);
    let csrf = x.get("/account").await.csrf();
    x.post_form("/logout", &[("csrf_token", &csrf)]).await;
    let row = format!(
        "SELECT count(*) FROM backchannel_outbox WHERE client_id = '{}' AND session_id = '{sid}' \
         AND failed_at IS NOT NULL AND attempts = 1",
        client.id
    );
    rig.app.wait_until(&row, 1).await;
    assert_eq!(receiver.received().len(), 1);
    // It would take it now, but it is not asked again, however long we wait.
    receiver.answer(200);
    for _ in 0..3 {
        rig.app.clock.advance(Duration::from_secs(3600));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(receiver.received().len(), 1, "exactly one delivery attempt");
    assert_eq!(
        rig.app
            .metric("gatehouse_backchannel_logouts_total{outcome=\"refused\"}")
            .await,
        1.0
    );
    // b's receiver answered 200 as usual.
    assert_eq!(rig.b.1.received().len(), 1);
}

#[tokio::test]
async fn timeouts_and_too_many_requests_are_still_retried() {
    let rig = rig(Options {
        frozen_clock: true,
        ..Options::default()
    })
    .await;
    let (x, sid, _) = rig.session().await;
    let (client, receiver) = &rig.a;
    receiver.answer(429);
    let csrf = x.get("/account").await.csrf();
    x.post_form("/logout", &[("csrf_token", &csrf)]).await;
    let attempts = format!(
        "SELECT attempts::bigint FROM backchannel_outbox WHERE client_id = '{}' AND session_id = '{sid}' \
         AND failed_at IS NULL",
        client.id
    );
    rig.app.wait_until(&attempts, 1).await;
    receiver.answer(408);
    rig.app.clock.advance(Duration::from_secs(2));
    rig.app.wait_until(&attempts, 2).await;
    receiver.answer(200);
    rig.app.clock.advance(Duration::from_secs(4));
    rig.app
        .wait_until(
            &format!(
                "SELECT count(*) FROM backchannel_outbox WHERE client_id = '{}' AND delivered_at IS NOT NULL",
                client.id
            ),
            1,
        )
        .await;
    assert_eq!(receiver.received().len(), 3);
}
