//! Browser apps (issue 24, item 11): a public client made with `--web-origin` is
//! answered with CORS on the token, revocation and userinfo endpoints for exactly
//! its origins, error answers included, never with credentials; discovery and the
//! JWKS answer any origin. (W4: nothing else reflects an origin.)

use reqwest::header::HeaderMap;
use serde_json::Value;

use crate::helpers::{TestApp, spawn_app};
use crate::oauth_helpers::*;

const SPA: &str = "https://spa.example";
const LOCAL_SPA: &str = "http://127.0.0.1:5173";
const CB_SPA: &str = "https://spa.example/callback";

fn spa_client(app: &TestApp) -> Client {
    create_client(
        app,
        &[
            "--public",
            "--first-party",
            "--redirect-uri",
            CB_SPA,
            "--web-origin",
            SPA,
            "--web-origin",
            LOCAL_SPA,
        ],
    )
}

/// A form POST from a page of `origin` (as `fetch` sends it).
async fn from_page(
    app: &TestApp,
    path: &str,
    origin: &str,
    form: &[(&str, &str)],
) -> (u16, HeaderMap, Value) {
    let r = reqwest::Client::new()
        .post(format!("{}{path}", app.address))
        .header("origin", origin)
        .form(form)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let text = r.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::Null);
    (status, headers, body)
}

fn acao(h: &HeaderMap) -> Option<&str> {
    h.get("access-control-allow-origin")
        .and_then(|v| v.to_str().ok())
}

fn varies_by_origin(h: &HeaderMap) -> bool {
    h.get_all("vary")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.split(',')
                .any(|p| p.trim().eq_ignore_ascii_case("origin"))
        })
}

/// Exactly `origin` may read it, with no credentials.
fn readable_by(h: &HeaderMap, origin: &str) {
    assert_eq!(acao(h), Some(origin), "{h:?}");
    assert!(varies_by_origin(h), "{h:?}");
    assert!(h.get("access-control-allow-credentials").is_none());
}

/// A code for the SPA client, redirected to its callback.
async fn spa_code(b: &crate::helpers::Browser, client: &Client, challenge: &str) -> String {
    let r = b
        .get(&authorize_url(
            client,
            &[
                ("redirect_uri", CB_SPA),
                ("code_challenge", challenge),
                ("code_challenge_method", "S256"),
            ],
        ))
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    param(&location_params(&r), "code").unwrap()
}

#[tokio::test]
async fn a_browser_apps_origins_read_token_revoke_and_userinfo_answers_and_no_other_origin_does() {
    let app = spawn_app().await;
    let client = spa_client(&app);
    let b = app.signed_in("alice@example.com").await;
    let (verifier, challenge) = pkce();
    let code = spa_code(&b, &client, &challenge).await;
    let exchange = [
        ("grant_type", "authorization_code"),
        ("client_id", client.id.as_str()),
        ("code", code.as_str()),
        ("redirect_uri", CB_SPA),
        ("code_verifier", verifier.as_str()),
    ];
    // Another site's page: the answer comes, but its browser may not read it.
    let (s, h, _) = from_page(
        &app,
        "/oauth2/token",
        "https://evil.example",
        &[
            ("grant_type", "authorization_code"),
            ("client_id", client.id.as_str()),
            ("code", "not-a-code"),
            ("redirect_uri", CB_SPA),
            ("code_verifier", verifier.as_str()),
        ],
    )
    .await;
    assert_eq!(s, 400);
    assert!(acao(&h).is_none(), "{h:?}");
    assert!(h.get("access-control-allow-credentials").is_none());
    // The app's own page reads its tokens.
    let (s, h, tokens) = from_page(&app, "/oauth2/token", SPA, &exchange).await;
    assert_eq!(s, 200, "{tokens}");
    readable_by(&h, SPA);
    assert_eq!(h["cache-control"], "no-store");
    // An error answer too (an unknown code; the real one is not replayed, which
    // would revoke its grant).
    let bogus = [
        ("grant_type", "authorization_code"),
        ("client_id", client.id.as_str()),
        ("code", "not-a-code"),
        ("redirect_uri", CB_SPA),
        ("code_verifier", verifier.as_str()),
    ];
    let (s, h, body) = from_page(&app, "/oauth2/token", LOCAL_SPA, &bogus).await;
    assert_eq!(s, 400);
    assert_eq!(body["error"], "invalid_grant");
    readable_by(&h, LOCAL_SPA);
    // A refresh, from the page.
    let refresh = tokens["refresh_token"].as_str().unwrap();
    let (s, h, tokens) = from_page(
        &app,
        "/oauth2/token",
        SPA,
        &[
            ("grant_type", "refresh_token"),
            ("client_id", client.id.as_str()),
            ("refresh_token", refresh),
        ],
    )
    .await;
    assert_eq!(s, 200, "{tokens}");
    readable_by(&h, SPA);
    let access = tokens["access_token"].as_str().unwrap().to_string();

    // Userinfo: the token's client decides.
    let get = |origin: &'static str, token: String| {
        let address = app.address.clone();
        async move {
            let r = reqwest::Client::new()
                .get(format!("{address}/oauth2/userinfo"))
                .header("origin", origin)
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.headers().clone())
        }
    };
    let (s, h) = get(SPA, access.clone()).await;
    assert_eq!(s, 200);
    readable_by(&h, SPA);
    assert_eq!(
        h.get("access-control-expose-headers").unwrap(),
        "WWW-Authenticate"
    );
    let (s, h) = get("https://evil.example", access.clone()).await;
    assert_eq!(s, 200);
    assert!(acao(&h).is_none());
    // Another app's token gets no CORS from the SPA's origin.
    let other = app_client(&app);
    let t = sign_in_app(&app, &b, &other, &[]).await;
    let (s, h) = get(SPA, t.access.clone()).await;
    assert_eq!(s, 200);
    assert!(acao(&h).is_none());

    // Revocation, then userinfo's refusal of the revoked token, both readable.
    let (s, h, _) = from_page(
        &app,
        "/oauth2/revoke",
        SPA,
        &[
            ("client_id", client.id.as_str()),
            ("token", access.as_str()),
        ],
    )
    .await;
    assert_eq!(s, 200);
    readable_by(&h, SPA);
    let (s, h) = get(SPA, access.clone()).await;
    assert_eq!(s, 401);
    readable_by(&h, SPA);
    assert!(h.get("www-authenticate").is_some());
    // Introspection is for APIs, never pages.
    let (_, h, _) = from_page(
        &app,
        "/oauth2/introspect",
        SPA,
        &[
            ("client_id", client.id.as_str()),
            ("token", access.as_str()),
        ],
    )
    .await;
    assert!(acao(&h).is_none());
    // The confidential app made without --web-origin: never reflected (W4).
    let (s, h, _) = from_page(
        &app,
        "/oauth2/revoke",
        SPA,
        &[
            ("client_id", other.id.as_str()),
            ("client_secret", other.secret.as_deref().unwrap()),
            ("token", "junk"),
        ],
    )
    .await;
    assert_eq!(s, 200);
    assert!(acao(&h).is_none());
}

#[tokio::test]
async fn preflights_are_granted_to_registered_web_origins_only() {
    let app = spawn_app().await;
    spa_client(&app);
    let preflight = |path: &'static str, origin: &'static str, method: &'static str| {
        let address = app.address.clone();
        async move {
            let r = reqwest::Client::new()
                .request(reqwest::Method::OPTIONS, format!("{address}{path}"))
                .header("origin", origin)
                .header("access-control-request-method", method)
                .header(
                    "access-control-request-headers",
                    "authorization, content-type",
                )
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.headers().clone())
        }
    };
    for (path, method, methods) in [
        ("/oauth2/token", "POST", "POST"),
        ("/oauth2/revoke", "POST", "POST"),
        ("/oauth2/userinfo", "GET", "GET, POST"),
    ] {
        let (s, h) = preflight(path, SPA, method).await;
        assert!((200..300).contains(&s), "{path}: {s}");
        readable_by(&h, SPA);
        assert_eq!(h["access-control-allow-methods"], methods, "{path}");
        let allowed = h["access-control-allow-headers"]
            .to_str()
            .unwrap()
            .to_lowercase();
        assert!(allowed.contains("authorization") && allowed.contains("content-type"));
        assert!(
            h["access-control-max-age"]
                .to_str()
                .unwrap()
                .parse::<u32>()
                .unwrap()
                > 0
        );
        let (s, h) = preflight(path, "https://evil.example", method).await;
        assert!((200..300).contains(&s), "{path}: {s}");
        assert!(acao(&h).is_none(), "{path}: {h:?}");
        assert!(h.get("access-control-allow-methods").is_none());
    }
    // Introspection takes no preflight (not a page's endpoint).
    let (s, h) = preflight("/oauth2/introspect", SPA, "POST").await;
    assert_eq!(s, 405);
    assert!(acao(&h).is_none());
}

#[tokio::test]
async fn discovery_and_the_jwks_answer_any_origin_without_credentials() {
    let app = spawn_app().await;
    for path in [
        "/.well-known/openid-configuration",
        "/.well-known/oauth-authorization-server",
        "/jwks.json",
    ] {
        let r = reqwest::Client::new()
            .get(format!("{}{path}", app.address))
            .header("origin", "https://anyone.example")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(acao(r.headers()), Some("*"), "{path}");
        assert!(
            r.headers()
                .get("access-control-allow-credentials")
                .is_none()
        );
    }
}

#[tokio::test]
async fn web_origins_are_checked_need_a_public_client_and_are_listed() {
    let app = spawn_app().await;
    for (args, says) in [
        (
            vec!["--public", "--web-origin", "http://spa.example"],
            "https://",
        ),
        (
            vec!["--public", "--web-origin", "https://spa.example/"],
            "write it as",
        ),
        (
            vec!["--public", "--web-origin", "https://spa.example/app"],
            "not an origin",
        ),
        (vec!["--public", "--web-origin", "*"], "not an origin"),
        (vec!["--web-origin", "https://spa.example"], "--public"),
    ] {
        let mut all = vec![
            "client",
            "create",
            "--name",
            "SPA",
            "--redirect-uri",
            CB_SPA,
        ];
        all.extend(args.iter());
        let (ok, _, err) = app.cli(&all, &[]);
        assert!(!ok, "{args:?} accepted");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    assert_eq!(app.count("SELECT count(*) FROM oauth_clients").await, 0);
    let client = spa_client(&app);
    let stored: Vec<String> =
        sqlx::query_scalar("SELECT unnest(web_origins) FROM oauth_clients WHERE id = $1")
            .bind(&client.id)
            .fetch_all(&app.db)
            .await
            .unwrap();
    assert_eq!(stored, vec![SPA.to_string(), LOCAL_SPA.to_string()]);
    let (ok, out, err) = app.cli(&["client", "list"], &[]);
    assert!(ok, "{err}");
    let listed: Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(listed["web_origins"], serde_json::json!([SPA, LOCAL_SPA]));
}
