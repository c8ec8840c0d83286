//! A stand-in for GitHub in the test process: OAuth 2.0 at the base URL
//! (`/login/oauth/authorize`, `/login/oauth/access_token`), the REST API under `/api`
//! (`/user`, `/user/emails`), as GitHub Enterprise lays them out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use serde_json::{Value, json};

use crate::helpers::TestApp;
use crate::upstream_op::{client_auth, random_token, redirect, run, s256, stand_in_listener};
use crate::upstream_rig::add_upstream;

// ---------------------------------------------------------------------------------
// A stand-in for GitHub: OAuth 2.0 at the base URL, the REST API under `/api`.

pub struct GithubConfig {
    pub client_id: String,
    pub client_secret: String,
    pub user_id: u64,
    pub login: String,
    pub emails: Vec<Value>,
    pub authorizations: Vec<HashMap<String, String>>,
    /// Every token request: its form, and whether it was accepted.
    pub token_requests: Vec<(HashMap<String, String>, bool)>,
    /// Requests to the API that lacked a good token or a User-Agent (GitHub refuses).
    pub refused_api_calls: Vec<String>,
    codes: HashMap<String, HashMap<String, String>>,
    tokens: Vec<String>,
}

pub struct StandInGithub {
    pub base_url: String,
    pub api_url: String,
    pub config: Arc<Mutex<GithubConfig>>,
    handle: actix_web::dev::ServerHandle,
}

impl Drop for StandInGithub {
    fn drop(&mut self) {
        drop(self.handle.stop(false));
    }
}

impl StandInGithub {
    pub async fn start() -> Self {
        let config = Arc::new(Mutex::new(GithubConfig {
            client_id: "Iv1.downstream".into(),
            client_secret: "github-secret-of-the-downstream".into(),
            user_id: 12345,
            login: "octocat".into(),
            emails: vec![
                json!({"email": "old@example.com", "primary": false, "verified": true, "visibility": null}),
                json!({"email": "octo@example.com", "primary": true, "verified": true, "visibility": "private"}),
                json!({"email": "typo@example.com", "primary": false, "verified": false, "visibility": null}),
            ],
            authorizations: Vec::new(),
            token_requests: Vec::new(),
            refused_api_calls: Vec::new(),
            codes: HashMap::new(),
            tokens: Vec::new(),
        }));
        let shared = web::Data::new(config.clone());
        let (listener, address) = stand_in_listener();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(shared.clone())
                .route("/login/oauth/authorize", web::get().to(gh_authorize))
                .route("/login/oauth/access_token", web::post().to(gh_token))
                .route("/api/user", web::get().to(gh_user))
                .route("/api/user/emails", web::get().to(gh_emails))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .expect("listening")
        .run();
        let handle = run(server);
        Self {
            api_url: format!("{address}/api"),
            base_url: address,
            config,
            handle,
        }
    }

    pub fn set(&self, f: impl FnOnce(&mut GithubConfig)) {
        f(&mut self.config.lock().unwrap());
    }

    /// Registers this stand-in on `down` as upstream `name` of kind `github`.
    pub async fn register(&self, down: &TestApp, name: &str, flags: &[&str]) {
        let (id, secret) = {
            let c = self.config.lock().unwrap();
            (c.client_id.clone(), c.client_secret.clone())
        };
        let mut args = vec![
            "--kind",
            "github",
            "--base-url",
            &self.base_url,
            "--api-url",
            &self.api_url,
            "--client-id",
            &id,
        ];
        args.extend_from_slice(flags);
        add_upstream(down, name, &args, &secret).await;
    }
}

type GhShared = web::Data<Arc<Mutex<GithubConfig>>>;

async fn gh_authorize(gh: GhShared, q: web::Query<HashMap<String, String>>) -> HttpResponse {
    let q = q.into_inner();
    let mut c = gh.lock().unwrap();
    c.authorizations.push(q.clone());
    if q.get("client_id") != Some(&c.client_id) {
        return HttpResponse::NotFound().body("unknown client");
    }
    let Some(redirect_uri) = q.get("redirect_uri") else {
        return HttpResponse::BadRequest().body("no redirect_uri");
    };
    let code = random_token();
    c.codes.insert(code.clone(), q.clone());
    let mut url = url::Url::parse(redirect_uri).expect("an absolute redirect URI");
    url.query_pairs_mut().append_pair("code", &code);
    if let Some(state) = q.get("state") {
        url.query_pairs_mut().append_pair("state", state);
    }
    redirect(url.as_str())
}

async fn gh_token(
    gh: GhShared,
    req: HttpRequest,
    form: web::Form<HashMap<String, String>>,
) -> HttpResponse {
    let form = form.into_inner();
    let mut c = gh.lock().unwrap();
    let (id, secret) = client_auth(&req, &form);
    let grant = form.get("code").and_then(|code| c.codes.remove(code));
    let ok = id == c.client_id
        && secret == c.client_secret
        && grant.as_ref().is_some_and(|g| {
            g.get("redirect_uri")
                .is_none_or(|r| Some(r) == form.get("redirect_uri"))
                && g.get("code_challenge_method").map(String::as_str) == Some("S256")
                && form.get("code_verifier").map(|v| s256(v)).as_ref() == g.get("code_challenge")
        });
    c.token_requests.push((form, ok));
    let json_wanted = req
        .headers()
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json"));
    // GitHub answers a bad code with 200 and an error in the body.
    let body = if ok {
        let token = format!("gho_{}", random_token());
        c.tokens.push(token.clone());
        json!({"access_token": token, "token_type": "bearer", "scope": "read:user,user:email"})
    } else {
        json!({"error": "bad_verification_code", "error_description": "The code passed is incorrect or expired."})
    };
    if json_wanted {
        HttpResponse::Ok().json(body)
    } else {
        let pairs: Vec<(String, String)> = body
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
            .collect();
        HttpResponse::Ok()
            .content_type("application/x-www-form-urlencoded")
            .body(serde_urlencoded::to_string(pairs).unwrap_or_default())
    }
}

/// GitHub's API takes `Authorization: Bearer T` (or `token T`) and refuses a
/// request without a `User-Agent`.
fn gh_authorised(c: &mut GithubConfig, req: &HttpRequest) -> bool {
    let token = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("token "))
        })
        .map(str::to_string);
    let has_agent = req.headers().contains_key("user-agent");
    let ok = has_agent && token.is_some_and(|t| c.tokens.contains(&t));
    if !ok {
        c.refused_api_calls
            .push(format!("{} (user-agent: {has_agent})", req.path()));
    }
    ok
}

async fn gh_user(gh: GhShared, req: HttpRequest) -> HttpResponse {
    let mut c = gh.lock().unwrap();
    if !gh_authorised(&mut c, &req) {
        return HttpResponse::Unauthorized().json(json!({"message": "Bad credentials"}));
    }
    HttpResponse::Ok().json(json!({
        "id": c.user_id,
        "login": c.login,
        "name": "The Octocat",
        "email": null,
    }))
}

async fn gh_emails(gh: GhShared, req: HttpRequest) -> HttpResponse {
    let mut c = gh.lock().unwrap();
    if !gh_authorised(&mut c, &req) {
        return HttpResponse::Unauthorized().json(json!({"message": "Bad credentials"}));
    }
    HttpResponse::Ok().json(Value::Array(c.emails.clone()))
}
