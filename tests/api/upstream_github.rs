//! The GitHub side of the upstream client against a small stand-in for GitHub's
//! OAuth and REST endpoints (laid out as GitHub Enterprise: API under /api/v3):
//! state and PKCE S256 sent, the code redeemed with the verifier, the identity is
//! the numeric id, the address only the primary verified one.

use std::sync::{Arc, Mutex};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use gatehouse::clock::Clock;
use gatehouse::store::{Upstream, UpstreamKind};
use gatehouse::upstream::{self, UpstreamError, UpstreamIdentity};
use secrecy::SecretString;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::oauth_helpers::{CB, pkce};

const TOKEN: &str = "gho_stand_in_token";

#[derive(Default)]
struct Hub {
    /// The code_challenge of the last authorization request.
    challenge: Mutex<Option<String>>,
    emails: Mutex<Value>,
    /// Answer every call with a 503, as GitHub down would.
    down: Mutex<bool>,
}

async fn access_token(
    hub: web::Data<Arc<Hub>>,
    req: HttpRequest,
    form: web::Form<Vec<(String, String)>>,
) -> HttpResponse {
    if *hub.down.lock().unwrap() {
        return HttpResponse::ServiceUnavailable().finish();
    }
    let get = |k: &str| {
        form.iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let verifier_ok = hub.challenge.lock().unwrap().as_deref()
        == Some(
            URL_SAFE_NO_PAD
                .encode(Sha256::digest(get("code_verifier")))
                .as_str(),
        );
    let json_asked = req
        .headers()
        .get("accept")
        .is_some_and(|v| v == "application/json");
    if get("client_id") == "gh-client"
        && get("client_secret") == "gh-secret"
        && get("code") == "good-code"
        && get("redirect_uri") == CB
        && verifier_ok
        && json_asked
    {
        HttpResponse::Ok().json(
            json!({"access_token": TOKEN, "token_type": "bearer", "scope": "read:user,user:email"}),
        )
    } else {
        // GitHub answers a bad exchange with 200 and an `error` member.
        HttpResponse::Ok().json(json!({"error": "bad_verification_code"}))
    }
}

fn authorized(req: &HttpRequest) -> bool {
    req.headers()
        .get("authorization")
        .is_some_and(|v| v == format!("Bearer {TOKEN}").as_str())
}

async fn user(req: HttpRequest) -> HttpResponse {
    if !authorized(&req) {
        return HttpResponse::Unauthorized().finish();
    }
    HttpResponse::Ok()
        .json(json!({"id": 583231, "login": "octocat", "email": "public@example.com"}))
}

async fn emails(hub: web::Data<Arc<Hub>>, req: HttpRequest) -> HttpResponse {
    if !authorized(&req) {
        return HttpResponse::Unauthorized().finish();
    }
    HttpResponse::Ok().json(hub.emails.lock().unwrap().clone())
}

async fn stand_in() -> (String, Arc<Hub>) {
    let hub = Arc::new(Hub::default());
    let data = web::Data::new(hub.clone());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .route("/login/oauth/access_token", web::post().to(access_token))
            .route("/api/v3/user", web::get().to(user))
            .route("/api/v3/user/emails", web::get().to(emails))
    })
    .workers(1)
    .bind("127.0.0.1:0")
    .unwrap();
    let base = format!("http://{}", server.addrs()[0]);
    tokio::spawn(server.run());
    (base, hub)
}

fn github(base: &str) -> Upstream {
    Upstream {
        id: uuid::Uuid::new_v4(),
        name: "ghe".into(),
        kind: UpstreamKind::Github,
        preset: None,
        label: "GitHub Enterprise".into(),
        trust_email: false,
        issuer: None,
        base_url: Some(base.to_string()),
        api_url: Some(format!("{base}/api/v3")),
        client_id: "gh-client".into(),
        scopes: "read:user user:email".into(),
        created_at: time::OffsetDateTime::now_utc(),
    }
}

/// The authorization URL our client builds (recording its challenge at the stand-in)
/// and the verifier to redeem with.
async fn authorize(rp: &upstream::Client, up: &Upstream, hub: &Hub) -> String {
    let (verifier, challenge) = pkce();
    let url = rp
        .authorization_url(up, CB, "state-9", "unused-nonce", &challenge)
        .await
        .unwrap();
    let base = up.base_url.as_deref().unwrap();
    assert!(
        url.as_str()
            .starts_with(&format!("{base}/login/oauth/authorize?")),
        "{url}"
    );
    let q: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    for (k, v) in [
        ("client_id", "gh-client"),
        ("redirect_uri", CB),
        ("scope", "read:user user:email"),
        ("state", "state-9"),
        ("code_challenge_method", "S256"),
    ] {
        assert!(q.contains(&(k.into(), v.into())), "{k} in {url}");
    }
    let sent = q.iter().find(|(k, _)| k == "code_challenge").unwrap();
    *hub.challenge.lock().unwrap() = Some(sent.1.clone());
    verifier
}

async fn redeem(
    rp: &upstream::Client,
    up: &Upstream,
    code: &str,
    verifier: &str,
) -> Result<UpstreamIdentity, UpstreamError> {
    let secret = SecretString::from("gh-secret");
    rp.redeem(up, &secret, code, None, CB, "unused-nonce", verifier)
        .await
}

#[tokio::test]
async fn github_gives_its_numeric_id_and_only_the_primary_verified_address() {
    let (base, hub) = stand_in().await;
    let up = github(&base);
    let rp = upstream::Client::new(Clock::system(), true).unwrap();
    *hub.emails.lock().unwrap() = json!([
        {"email": "other@example.com", "primary": false, "verified": true, "visibility": null},
        {"email": "octo@example.com", "primary": true, "verified": true, "visibility": "private"},
    ]);
    let verifier = authorize(&rp, &up, &hub).await;
    let id = redeem(&rp, &up, "good-code", &verifier).await.unwrap();
    assert_eq!(
        id,
        UpstreamIdentity {
            subject: "583231".into(),
            email: Some("octo@example.com".into()),
            email_verified: true,
            sid: None,
            auth_time: None,
        }
    );

    // A primary address GitHub has not verified is no address at all.
    *hub.emails.lock().unwrap() = json!([
        {"email": "octo@example.com", "primary": true, "verified": false},
        {"email": "other@example.com", "primary": false, "verified": true},
    ]);
    let verifier = authorize(&rp, &up, &hub).await;
    let id = redeem(&rp, &up, "good-code", &verifier).await.unwrap();
    assert_eq!(id.subject, "583231");
    assert_eq!(id.email, None);
    assert!(!id.email_verified);
}

#[tokio::test]
async fn a_bad_code_or_verifier_is_refused_and_github_down_is_unreachable() {
    let (base, hub) = stand_in().await;
    let up = github(&base);
    let rp = upstream::Client::new(Clock::system(), true).unwrap();
    *hub.emails.lock().unwrap() = json!([]);
    let verifier = authorize(&rp, &up, &hub).await;
    let r = redeem(&rp, &up, "bad-code", &verifier).await;
    assert!(matches!(r, Err(UpstreamError::Refused(_))), "{r:?}");
    let r = redeem(
        &rp,
        &up,
        "good-code",
        "another-verifier-of-sufficient-length-000",
    )
    .await;
    assert!(matches!(r, Err(UpstreamError::Refused(_))), "{r:?}");
    // A mix-up: a response claiming another issuer.
    let secret = SecretString::from("gh-secret");
    let r = rp
        .redeem(
            &up,
            &secret,
            "good-code",
            Some("https://evil.example"),
            CB,
            "n",
            &verifier,
        )
        .await;
    assert!(matches!(r, Err(UpstreamError::Refused(_))), "{r:?}");
    *hub.down.lock().unwrap() = true;
    let r = redeem(&rp, &up, "good-code", &verifier).await;
    assert!(matches!(r, Err(UpstreamError::Unreachable(_))), "{r:?}");
}
