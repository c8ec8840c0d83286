//! Driving the OAuth endpoints as an app does: clients made with the command line,
//! authorization requests in a signed-in browser, token calls as plain HTTP.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::helpers::{Browser, Resp, TestApp};

pub const CB: &str = "https://rp.test/cb";

#[derive(Clone, Debug)]
pub struct Client {
    pub id: String,
    pub secret: Option<String>,
}

/// `gatehouse client create` with `args` after the name; the redirect URI is `CB`
/// unless `args` names one.
pub fn create_client(app: &TestApp, args: &[&str]) -> Client {
    let mut all = vec!["client", "create", "--name", "Test app"];
    if !args.contains(&"--redirect-uri") {
        all.extend(["--redirect-uri", CB]);
    }
    all.extend_from_slice(args);
    let (ok, out, err) = app.cli(&all, &[]);
    assert!(ok, "client create failed: {err}");
    let v: Value = serde_json::from_str(out.trim()).expect("client create prints JSON");
    Client {
        id: v["client_id"].as_str().expect("client_id").to_string(),
        secret: v["client_secret"].as_str().map(str::to_string),
    }
}

/// A first-party confidential client (no consent page).
pub fn app_client(app: &TestApp) -> Client {
    create_client(app, &["--first-party"])
}

/// RFC 7636: a verifier and its S256 challenge.
pub fn pkce() -> (String, String) {
    let verifier = URL_SAFE_NO_PAD.encode(uuid::Uuid::new_v4().as_bytes().repeat(2));
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    (verifier, challenge)
}

/// `/oauth2/authorize?…` for `client` with `params` on top of the usual ones
/// (`response_type=code`, `redirect_uri=CB`, `scope=openid email`, `state`); a pair
/// whose value is empty removes that parameter.
pub fn authorize_url(client: &Client, params: &[(&str, &str)]) -> String {
    let mut pairs: Vec<(String, String)> = vec![
        ("response_type".into(), "code".into()),
        ("client_id".into(), client.id.clone()),
        ("redirect_uri".into(), CB.into()),
        ("scope".into(), "openid email".into()),
        ("state".into(), "st-123".into()),
    ];
    for (k, v) in params {
        pairs.retain(|(n, _)| n != k);
        if !v.is_empty() {
            pairs.push((k.to_string(), v.to_string()));
        }
    }
    let mut ser = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in &pairs {
        ser.append_pair(k, v);
    }
    format!("/oauth2/authorize?{}", ser.finish())
}

/// The query parameters of a redirect's `Location`.
pub fn location_params(resp: &Resp) -> Vec<(String, String)> {
    let loc = resp.location();
    let url = url::Url::parse(&loc).unwrap_or_else(|_| panic!("absolute Location, got {loc}"));
    url.query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

pub fn param(pairs: &[(String, String)], name: &str) -> Option<String> {
    pairs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
}

/// Authorizes in `b` and returns the code (asserting a redirect to `CB`).
pub async fn code_for(b: &Browser, client: &Client, params: &[(&str, &str)]) -> String {
    let r = b.get(&authorize_url(client, params)).await;
    assert_eq!(r.status, 303, "authorize: {}", r.body);
    assert!(
        r.location().starts_with(CB),
        "redirected to {}",
        r.location()
    );
    param(&location_params(&r), "code").expect("a code")
}

/// POSTs a form to an OAuth endpoint, authenticating a confidential client with HTTP
/// Basic and a public one by `client_id`. Returns status, headers and JSON body.
pub async fn post(
    app: &TestApp,
    path: &str,
    client: &Client,
    form: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, Value) {
    let http = reqwest::Client::new();
    let mut form: Vec<(&str, &str)> = form.to_vec();
    let mut rb = http.post(format!("{}{path}", app.address));
    match &client.secret {
        Some(secret) => rb = rb.basic_auth(&client.id, Some(secret)),
        None => form.push(("client_id", &client.id)),
    }
    let res = rb
        .form(&form)
        .send()
        .await
        .expect("request reaches the server");
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let text = res.text().await.unwrap_or_default();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("{path} answered non-JSON: {text}"))
    };
    (status, headers, body)
}

/// Tokens from one code exchange.
pub struct Tokens {
    pub access: String,
    pub refresh: String,
    pub id: Option<String>,
}

pub async fn exchange(
    app: &TestApp,
    client: &Client,
    code: &str,
    verifier: Option<&str>,
) -> (u16, Value) {
    let mut form = vec![
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", CB),
    ];
    if let Some(v) = verifier {
        form.push(("code_verifier", v));
    }
    let (s, _, b) = post(app, "/oauth2/token", client, &form).await;
    (s, b)
}

/// The whole code flow with PKCE for a signed-in browser.
pub async fn sign_in_app(
    app: &TestApp,
    b: &Browser,
    client: &Client,
    extra: &[(&str, &str)],
) -> Tokens {
    let (verifier, challenge) = pkce();
    let mut params = vec![
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
    ];
    params.extend_from_slice(extra);
    let code = code_for(b, client, &params).await;
    let (status, body) = exchange(app, client, &code, Some(&verifier)).await;
    assert_eq!(status, 200, "token: {body}");
    Tokens {
        access: body["access_token"]
            .as_str()
            .expect("access_token")
            .to_string(),
        refresh: body["refresh_token"]
            .as_str()
            .expect("refresh_token")
            .to_string(),
        id: body["id_token"].as_str().map(str::to_string),
    }
}

pub async fn introspect(app: &TestApp, caller: &Client, token: &str) -> Value {
    let (status, _, body) = post(app, "/oauth2/introspect", caller, &[("token", token)]).await;
    assert_eq!(status, 200, "introspect: {body}");
    body
}

pub async fn refresh(app: &TestApp, client: &Client, token: &str) -> (u16, Value) {
    let (s, _, b) = post(
        app,
        "/oauth2/token",
        client,
        &[("grant_type", "refresh_token"), ("refresh_token", token)],
    )
    .await;
    (s, b)
}

pub async fn userinfo(app: &TestApp, token: &str) -> (u16, reqwest::header::HeaderMap, String) {
    let res = reqwest::Client::new()
        .get(format!("{}/oauth2/userinfo", app.address))
        .bearer_auth(token)
        .send()
        .await
        .expect("userinfo reaches the server");
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    (status, headers, res.text().await.unwrap_or_default())
}

/// A JWT's header and claims, unverified (what an attacker can read and edit).
pub fn jwt_parts(token: &str) -> (Value, Value) {
    let mut it = token.split('.');
    let h = URL_SAFE_NO_PAD.decode(it.next().unwrap()).unwrap();
    let c = URL_SAFE_NO_PAD.decode(it.next().unwrap()).unwrap();
    (
        serde_json::from_slice(&h).unwrap(),
        serde_json::from_slice(&c).unwrap(),
    )
}

pub fn inactive() -> Value {
    serde_json::json!({ "active": false })
}
