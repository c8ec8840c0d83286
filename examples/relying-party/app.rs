//! An app that signs its users in through Gatehouse, calls its own API with their
//! access token, and ends its own session when Gatehouse says theirs ended.
//!
//! - `/login` → Gatehouse's `/oauth2/authorize` (code + PKCE S256, `state`, `nonce`);
//!   `/login?assurance=aal2` asks for a second factor (`acr_values`);
//! - `/callback` checks `state` and `iss`, exchanges the code (confidential client,
//!   HTTP Basic), validates the ID token against the JWKS, starts an app session;
//! - `/` shows who is signed in; `/call` calls `/api/me` with the access token;
//! - `/api/me` is the app's protected API: it introspects every bearer token at
//!   Gatehouse, so a revoked device is refused at once;
//! - `/backchannel-logout` validates Gatehouse's logout token and ends every app
//!   session of that Gatehouse session (`sid`).
//!
//! State lives in memory: one process, for the example's sake.

use std::collections::HashMap;
use std::sync::Mutex;

use actix_web::cookie::{Cookie, SameSite};
use actix_web::http::header;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub struct Config {
    /// Gatehouse's issuer URL (its `GATEHOUSE_PUBLIC_URL`).
    pub issuer: String,
    pub client_id: String,
    pub client_secret: String,
    /// Where this app is reached, e.g. `http://127.0.0.1:9000`.
    pub url: String,
}

/// A login in progress, keyed by its `state`.
struct Pending {
    verifier: String,
    nonce: String,
    started: std::time::Instant,
}

/// An app session: who, which Gatehouse session, and the tokens.
#[derive(Clone)]
struct Session {
    sub: String,
    email: Option<String>,
    sid: String,
    /// The assurance Gatehouse vouched for (`acr` in the ID token).
    acr: String,
    access_token: String,
}

struct Rp {
    config: Config,
    http: reqwest::Client,
    discovery: Value,
    pending: Mutex<HashMap<String, Pending>>,
    sessions: Mutex<HashMap<String, Session>>,
    /// The JWKS, fetched again only for a `kid` it does not name (a rotation).
    jwks: Mutex<Value>,
}

/// Logins in progress kept at most (anyone can start one): beyond, the oldest go.
const MAX_PENDING: usize = 10_000;

const SESSION_COOKIE: &str = "rp_session";
const LOGIN_COOKIE: &str = "rp_login";
const BACKCHANNEL_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

fn random() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the system's random numbers");
    URL_SAFE_NO_PAD.encode(bytes)
}

async fn json(r: reqwest::Response) -> Option<Value> {
    serde_json::from_slice(&r.bytes().await.ok()?).ok()
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn page(body: &str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(format!(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Example app</title></head><body>{body}</body></html>"
        ))
}

fn see_other(to: &str) -> actix_web::HttpResponseBuilder {
    let mut r = HttpResponse::SeeOther();
    r.insert_header((header::LOCATION, to.to_string()));
    r
}

impl Rp {
    fn endpoint(&self, name: &str) -> String {
        self.discovery[name]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn session(&self, req: &HttpRequest) -> Option<Session> {
        let id = req.cookie(SESSION_COOKIE)?.value().to_string();
        self.sessions.lock().ok()?.get(&id).cloned()
    }

    /// The JWKS key a token names; the JWKS is fetched again when it names none.
    async fn key_for(&self, token: &str) -> Result<DecodingKey, String> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| e.to_string())?;
        let kid = header.kid.ok_or("no kid")?;
        let find = |jwks: &Value| {
            jwks["keys"]
                .as_array()
                .and_then(|keys| keys.iter().find(|k| k["kid"] == kid.as_str()))
                .cloned()
        };
        let cached = self.jwks.lock().ok().and_then(|j| find(&j));
        let key = match cached {
            Some(k) => k,
            None => {
                let jwks = self.fetch_jwks().await?;
                let key = find(&jwks).ok_or("unknown kid")?;
                if let Ok(mut j) = self.jwks.lock() {
                    *j = jwks;
                }
                key
            }
        };
        DecodingKey::from_rsa_components(
            key["n"].as_str().unwrap_or_default(),
            key["e"].as_str().unwrap_or_default(),
        )
        .map_err(|e| e.to_string())
    }

    async fn fetch_jwks(&self) -> Result<Value, String> {
        self.http
            .get(self.endpoint("jwks_uri"))
            .send()
            .await
            .map_err(|e| e.to_string())
            .map(json)?
            .await
            .ok_or_else(|| "no JWKS".to_string())
    }

    /// Cookies are `Secure` whenever the app is served over HTTPS.
    fn cookie(&self, name: &'static str, value: String) -> Cookie<'static> {
        Cookie::build(name, value)
            .path("/")
            .http_only(true)
            .secure(self.config.url.starts_with("https://"))
            .same_site(SameSite::Lax)
            .finish()
    }

    /// RS256 by a JWKS key, our issuer, us as audience, unexpired.
    async fn validate(&self, token: &str, typ: Option<&str>) -> Result<Value, String> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| e.to_string())?;
        if typ.is_some() && header.typ.as_deref() != typ {
            return Err("wrong typ".into());
        }
        let key = self.key_for(token).await?;
        let mut v = Validation::new(Algorithm::RS256);
        v.set_audience(&[self.config.client_id.as_str()]);
        v.set_issuer(&[self.config.issuer.as_str()]);
        v.set_required_spec_claims(&["iss", "aud", "exp", "iat", "sub"]);
        jsonwebtoken::decode::<Value>(token, &key, &v)
            .map(|d| d.claims)
            .map_err(|e| e.to_string())
    }
}

async fn home(rp: web::Data<Rp>, req: HttpRequest) -> HttpResponse {
    match rp.session(&req) {
        Some(s) => page(&format!(
            "<h1>Example app</h1><p>Signed in as <strong>{}</strong> (subject {}).</p>\
             <p>Assurance: <code>{}</code></p>\
             <p><a href=\"/call\">Call the API</a></p>\
             <form method=\"post\" action=\"/logout\"><button>Sign out of this app</button></form>",
            escape(s.email.as_deref().unwrap_or("(no e-mail)")),
            escape(&s.sub),
            escape(&s.acr)
        )),
        None => page(
            "<h1>Example app</h1><p>Not signed in.</p><p><a href=\"/login\">Sign in with Gatehouse</a></p>\
             <p><a href=\"/login?assurance=aal2\">Sign in with a second factor</a></p>",
        ),
    }
}

#[derive(Deserialize)]
struct LoginQuery {
    /// `aal2`: the app wants a second factor proven (`acr_values`).
    assurance: Option<String>,
}

async fn login(rp: web::Data<Rp>, q: web::Query<LoginQuery>) -> HttpResponse {
    let (state, nonce, verifier) = (random(), random(), random());
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    let mut url = match url::Url::parse(&rp.endpoint("authorization_endpoint")) {
        Ok(u) => u,
        Err(_) => {
            return HttpResponse::BadGateway()
                .body("Gatehouse's discovery has no authorization endpoint");
        }
    };
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &rp.config.client_id)
        .append_pair("redirect_uri", &format!("{}/callback", rp.config.url))
        .append_pair("scope", "openid email")
        .append_pair("state", &state)
        .append_pair("nonce", &nonce)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256");
    if q.assurance.as_deref() == Some("aal2") {
        url.query_pairs_mut()
            .append_pair("acr_values", "urn:gatehouse:aal2");
    }
    if let Ok(mut p) = rp.pending.lock() {
        // Logins not finished in 10 minutes are abandoned; a flood drops the oldest.
        p.retain(|_, v| v.started.elapsed() < std::time::Duration::from_secs(600));
        if p.len() >= MAX_PENDING
            && let Some(oldest) = p
                .iter()
                .min_by_key(|(_, v)| v.started)
                .map(|(k, _)| k.clone())
        {
            p.remove(&oldest);
        }
        p.insert(
            state.clone(),
            Pending {
                verifier,
                nonce,
                started: std::time::Instant::now(),
            },
        );
    }
    // The state is also bound to this browser: a code can only finish the login
    // of the browser that started it.
    let cookie = rp.cookie(LOGIN_COOKIE, state);
    see_other(url.as_str()).cookie(cookie).finish()
}

#[derive(Deserialize)]
struct Callback {
    code: Option<String>,
    state: Option<String>,
    iss: Option<String>,
    error: Option<String>,
}

async fn callback(rp: web::Data<Rp>, req: HttpRequest, q: web::Query<Callback>) -> HttpResponse {
    // Nothing is believed, not even an error, unless it answers this browser's login.
    let bound = req.cookie(LOGIN_COOKIE).map(|c| c.value().to_string());
    let Some(state) = &q.state else {
        return HttpResponse::BadRequest().body("missing state");
    };
    if bound.as_deref() != Some(state.as_str()) {
        return HttpResponse::BadRequest().body("this sign-in was not started in this browser");
    }
    if let Some(e) = &q.error {
        return page(&format!(
            "<p>Sign-in did not happen: {}</p><p><a href=\"/\">Back</a></p>",
            escape(e)
        ));
    }
    let Some(code) = &q.code else {
        return HttpResponse::BadRequest().body("missing code");
    };
    // RFC 9207: the answer must come from our issuer.
    if q.iss.as_deref() != Some(rp.config.issuer.as_str()) {
        return HttpResponse::BadRequest().body("wrong issuer");
    }
    let Some(pending) = rp.pending.lock().ok().and_then(|mut p| p.remove(state)) else {
        return HttpResponse::BadRequest().body("unknown or used state");
    };
    let res = rp
        .http
        .post(rp.endpoint("token_endpoint"))
        .basic_auth(&rp.config.client_id, Some(&rp.config.client_secret))
        .form(&[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", &format!("{}/callback", rp.config.url)),
            ("code_verifier", &pending.verifier),
        ])
        .send()
        .await;
    let tokens: Value = match res {
        Ok(r) if r.status().is_success() => json(r).await.unwrap_or_default(),
        _ => return HttpResponse::BadGateway().body("the code exchange failed"),
    };
    let (Some(id_token), Some(access)) =
        (tokens["id_token"].as_str(), tokens["access_token"].as_str())
    else {
        return HttpResponse::BadGateway().body("no tokens");
    };
    let claims = match rp.validate(id_token, None).await {
        Ok(c) if c["nonce"] == pending.nonce.as_str() => c,
        _ => return HttpResponse::BadGateway().body("the ID token does not validate"),
    };
    let session = Session {
        sub: claims["sub"].as_str().unwrap_or_default().to_string(),
        email: claims["email"].as_str().map(str::to_string),
        sid: claims["sid"].as_str().unwrap_or_default().to_string(),
        acr: claims["acr"].as_str().unwrap_or_default().to_string(),
        access_token: access.to_string(),
    };
    let id = random();
    if let Ok(mut s) = rp.sessions.lock() {
        s.insert(id.clone(), session);
    }
    let cookie = rp.cookie(SESSION_COOKIE, id);
    let mut gone = Cookie::new(LOGIN_COOKIE, "");
    gone.set_path("/");
    gone.make_removal();
    see_other("/").cookie(cookie).cookie(gone).finish()
}

/// The app's page calls its own API, as a browser app or another service would.
async fn call(rp: web::Data<Rp>, req: HttpRequest) -> HttpResponse {
    let Some(s) = rp.session(&req) else {
        return see_other("/").finish();
    };
    let res = rp
        .http
        .get(format!("{}/api/me", rp.config.url))
        .bearer_auth(&s.access_token)
        .send()
        .await;
    match res {
        Ok(r) => {
            let status = r.status().as_u16();
            let body = r.text().await.unwrap_or_default();
            page(&format!(
                "<h1>API answer</h1><p>HTTP {status}</p><pre>{}</pre><p><a href=\"/\">Back</a></p>",
                escape(&body)
            ))
        }
        Err(_) => HttpResponse::BadGateway().body("the API did not answer"),
    }
}

/// The protected API: every bearer token is introspected at Gatehouse.
async fn api_me(rp: web::Data<Rp>, req: HttpRequest) -> HttpResponse {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let refuse = || {
        HttpResponse::Unauthorized()
            .insert_header((header::WWW_AUTHENTICATE, "Bearer error=\"invalid_token\""))
            .json(json!({ "error": "invalid_token" }))
    };
    let Some(token) = token else {
        return refuse();
    };
    let answer = rp
        .http
        .post(rp.endpoint("introspection_endpoint"))
        .basic_auth(&rp.config.client_id, Some(&rp.config.client_secret))
        .form(&[("token", token)])
        .send()
        .await;
    let v: Value = match answer {
        Ok(r) if r.status().is_success() => json(r).await.unwrap_or_default(),
        // Gatehouse unreachable: fail closed.
        _ => {
            return HttpResponse::ServiceUnavailable()
                .json(json!({ "error": "temporarily_unavailable" }));
        }
    };
    // Active, and meant for this API (RFC 9068 / checklist T4): an `--introspect-any`
    // API would otherwise accept every app's tokens.
    if v["active"] != true || v["client_id"] != rp.config.client_id.as_str() {
        return refuse();
    }
    HttpResponse::Ok().json(json!({
        "sub": v["sub"], "scope": v["scope"], "sid": v["sid"], "client_id": v["client_id"],
    }))
}

#[derive(Deserialize)]
struct LogoutForm {
    logout_token: Option<String>,
}

/// OpenID Connect Back-Channel Logout §2.6: validate, then end the app's sessions.
async fn backchannel_logout(rp: web::Data<Rp>, form: web::Form<LogoutForm>) -> HttpResponse {
    let bad = |why: &str| {
        HttpResponse::BadRequest()
            .insert_header((header::CACHE_CONTROL, "no-store"))
            .json(json!({ "error": "invalid_request", "error_description": why }))
    };
    let Some(token) = &form.logout_token else {
        return bad("logout_token is required");
    };
    let claims = match rp.validate(token, Some("logout+jwt")).await {
        Ok(c) => c,
        Err(_) => return bad("the logout token does not validate"),
    };
    if !claims["events"][BACKCHANNEL_EVENT].is_object() || claims.get("nonce").is_some() {
        return bad("not a logout token");
    }
    let Some(sid) = claims["sid"].as_str() else {
        return bad("no sid");
    };
    if let Ok(mut sessions) = rp.sessions.lock() {
        sessions.retain(|_, s| s.sid != sid);
    }
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .finish()
}

async fn logout(rp: web::Data<Rp>, req: HttpRequest) -> HttpResponse {
    if let (Some(c), Ok(mut s)) = (req.cookie(SESSION_COOKIE), rp.sessions.lock()) {
        s.remove(c.value());
    }
    see_other("/").finish()
}

/// Discovers Gatehouse and starts serving on `listener`.
pub async fn serve(
    config: Config,
    listener: std::net::TcpListener,
) -> anyhow::Result<actix_web::dev::Server> {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let discovery: Value = serde_json::from_slice(
        &http
            .get(format!(
                "{}/.well-known/openid-configuration",
                config.issuer
            ))
            .send()
            .await?
            .error_for_status()?
            .bytes()
            .await?,
    )?;
    anyhow::ensure!(
        discovery["issuer"] == config.issuer.as_str(),
        "the discovery document names another issuer"
    );
    let rp = web::Data::new(Rp {
        config,
        http,
        discovery,
        pending: Mutex::default(),
        sessions: Mutex::default(),
        jwks: Mutex::new(Value::Null),
    });
    Ok(HttpServer::new(move || {
        App::new()
            .app_data(rp.clone())
            .route("/", web::get().to(home))
            .route("/login", web::get().to(login))
            .route("/callback", web::get().to(callback))
            .route("/call", web::get().to(call))
            .route("/logout", web::post().to(logout))
            .route("/api/me", web::get().to(api_me))
            .route("/backchannel-logout", web::post().to(backchannel_logout))
    })
    .workers(1)
    .listen(listener)?
    .run())
}
