//! A stand-in OpenID provider in the test process, whose answers a test crafts: its
//! discovery document (with or without RFC 9207's flag), its JWKS, an authorization
//! endpoint that approves at once (or says `error=`), a token endpoint that checks
//! client authentication, code and PKCE and returns an ID token made right and then
//! edited, signed well or badly; and the JWS helpers the stand-ins share.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::helpers::TestApp;
use crate::upstream_rig::add_upstream;

// ---------------------------------------------------------------------------------
// Keys and JWS, for the stand-ins.

/// An RSA key of the stand-in provider.
#[derive(Clone)]
pub struct RsaKey {
    pub kid: String,
    pkcs8: Vec<u8>,
    n: Vec<u8>,
    e: Vec<u8>,
}

impl RsaKey {
    pub fn generate(kid: &str) -> Self {
        let k = gatehouse::signing::generate_key().expect("an RSA key");
        Self {
            kid: kid.to_string(),
            pkcs8: k.pkcs8,
            n: k.n,
            e: k.e,
        }
    }

    pub fn jwk(&self) -> Value {
        json!({
            "kty": "RSA", "use": "sig", "alg": "RS256", "kid": self.kid,
            "n": URL_SAFE_NO_PAD.encode(&self.n), "e": URL_SAFE_NO_PAD.encode(&self.e),
        })
    }

    /// A compact JWS over `header` and `claims` with this key (RS256).
    pub fn sign(&self, header: &Value, claims: &Value) -> String {
        use aws_lc_rs::rand::SystemRandom;
        use aws_lc_rs::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
        let pair = RsaKeyPair::from_pkcs8(&self.pkcs8).expect("the key parses");
        let message = signing_input(header, claims);
        let mut signature = vec![0; pair.public_modulus_len()];
        pair.sign(
            &RSA_PKCS1_SHA256,
            &SystemRandom::new(),
            message.as_bytes(),
            &mut signature,
        )
        .expect("signing");
        format!("{message}.{}", URL_SAFE_NO_PAD.encode(signature))
    }
}

fn signing_input(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

/// An HS256 JWS keyed with `secret` (what a confused verifier might accept).
pub fn sign_hs256(secret: &[u8], claims: &Value) -> String {
    use hmac::{Hmac, KeyInit, Mac};
    let header = json!({"alg": "HS256", "typ": "JWT"});
    let message = signing_input(&header, claims);
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("any key length");
    mac.update(message.as_bytes());
    format!(
        "{message}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    )
}

/// An unsecured JWS (`alg: none`, RFC 7519 §6).
pub fn unsigned(claims: &Value) -> String {
    format!(
        "{}.",
        signing_input(&json!({"alg": "none", "typ": "JWT"}), claims)
    )
}

pub fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

pub(crate) fn random_token() -> String {
    URL_SAFE_NO_PAD.encode(uuid::Uuid::new_v4().as_bytes())
}

pub(crate) fn s256(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// The `client_id` and `client_secret` a token request authenticated with: HTTP
/// Basic (RFC 6749 §2.3.1, form-encoded parts) or the form.
pub(crate) fn client_auth(req: &HttpRequest, form: &HashMap<String, String>) -> (String, String) {
    if let Some(basic) = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        && let Ok(raw) = STANDARD.decode(basic.trim())
    {
        let raw = String::from_utf8_lossy(&raw).into_owned();
        let (id, secret) = raw.split_once(':').unwrap_or((&raw, ""));
        let decode = |s: &str| {
            url::form_urlencoded::parse(format!("x={s}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        };
        return (decode(id), decode(secret));
    }
    (
        form.get("client_id").cloned().unwrap_or_default(),
        form.get("client_secret").cloned().unwrap_or_default(),
    )
}

pub(crate) fn redirect(to: &str) -> HttpResponse {
    HttpResponse::Found()
        .insert_header(("location", to))
        .finish()
}

/// Starts `server` (made on `listener`) in this runtime; returns its handle.
pub(crate) fn run(server: actix_web::dev::Server) -> actix_web::dev::ServerHandle {
    let handle = server.handle();
    tokio::spawn(server);
    handle
}

/// A loopback port for a stand-in, and its base URL.
pub(crate) fn stand_in_listener() -> (std::net::TcpListener, String) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let address = format!("http://{}", listener.local_addr().expect("bound"));
    (listener, address)
}

// ---------------------------------------------------------------------------------
// A stand-in OpenID provider whose answers a test crafts.

/// How the stand-in signs its ID tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signing {
    /// RS256 with the key its JWKS publishes.
    Good,
    /// RS256 with another key, under the published key's `kid`.
    ForgedSameKid,
    /// RS256 with another key under a `kid` the JWKS does not have.
    UnknownKid,
    /// `alg: none`.
    None,
    /// HS256 keyed with the client secret.
    Hs256ClientSecret,
    /// HS256 keyed with the published key's modulus (the key-confusion attack).
    Hs256PublicKey,
    /// RS256 with a new key (`NEXT_KID`), published once `publish_next` is set: a
    /// provider rotating its keys.
    NextKey,
}

/// The `kid` of the stand-in's next key.
pub const NEXT_KID: &str = "op-key-2";

/// What the stand-in puts in the authorization response's `iss` (RFC 9207).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IssParam {
    Right,
    Wrong,
    Missing,
}

type Edit = Arc<dyn Fn(&mut Value) + Send + Sync>;

pub struct OpConfig {
    pub client_id: String,
    pub client_secret: String,
    pub subject: String,
    pub email: Option<String>,
    pub email_verified: bool,
    pub sid: Option<String>,
    pub signing: Signing,
    pub advertise_iss: bool,
    /// The JWKS also lists the next key.
    pub publish_next: bool,
    /// How many times the JWKS was fetched.
    pub jwks_fetches: usize,
    pub iss_param: IssParam,
    /// Edits the ID token's claims after they are made right.
    pub edit: Option<Edit>,
    /// The authorization endpoint answers `error=…` instead of a code.
    pub deny: Option<String>,
    /// The token endpoint answers this status with no token (a provider in trouble).
    pub token_status: Option<u16>,
    /// Every authorization request's parameters, in order.
    pub authorizations: Vec<HashMap<String, String>>,
    /// Every token request: its form, and whether it was accepted.
    pub token_requests: Vec<(HashMap<String, String>, bool)>,
    codes: HashMap<String, HashMap<String, String>>,
}

pub struct StandInOp {
    pub issuer: String,
    pub key: RsaKey,
    pub config: Arc<Mutex<OpConfig>>,
    handle: actix_web::dev::ServerHandle,
}

impl Drop for StandInOp {
    fn drop(&mut self) {
        drop(self.handle.stop(false));
    }
}

struct OpShared {
    issuer: Arc<Mutex<String>>,
    key: RsaKey,
    other_key: RsaKey,
    config: Arc<Mutex<OpConfig>>,
}

impl StandInOp {
    pub async fn start() -> Self {
        let key = RsaKey::generate("op-key-1");
        let other_key = RsaKey::generate("op-key-1");
        let config = Arc::new(Mutex::new(OpConfig {
            client_id: "downstream".into(),
            client_secret: "s3cret-of-the-downstream".into(),
            subject: "op-user-1".into(),
            email: Some("carol@example.com".into()),
            email_verified: true,
            sid: Some("op-session-1".into()),
            signing: Signing::Good,
            advertise_iss: false,
            publish_next: false,
            jwks_fetches: 0,
            iss_param: IssParam::Right,
            edit: None,
            deny: None,
            token_status: None,
            authorizations: Vec::new(),
            token_requests: Vec::new(),
            codes: HashMap::new(),
        }));
        let issuer: Arc<Mutex<String>> = Arc::default();
        let shared = web::Data::new(OpShared {
            issuer: issuer.clone(),
            key: key.clone(),
            other_key,
            config: config.clone(),
        });
        let (listener, address) = stand_in_listener();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(shared.clone())
                .route(
                    "/.well-known/openid-configuration",
                    web::get().to(op_discovery),
                )
                .route("/jwks", web::get().to(op_jwks))
                .route("/authorize", web::get().to(op_authorize))
                .route("/token", web::post().to(op_token))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .expect("listening")
        .run();
        let handle = run(server);
        *issuer.lock().unwrap() = address.clone();
        Self {
            issuer: address,
            key,
            config,
            handle,
        }
    }

    /// The provider goes away: nothing answers at its address any more.
    pub async fn stop(&self) {
        self.handle.stop(false).await;
    }

    pub fn set(&self, f: impl FnOnce(&mut OpConfig)) {
        f(&mut self.config.lock().unwrap());
    }

    /// Claims the ID token gets edited with from now on.
    pub fn edit(&self, f: impl Fn(&mut Value) + Send + Sync + 'static) {
        self.config.lock().unwrap().edit = Some(Arc::new(f));
    }

    pub fn last_authorization(&self) -> HashMap<String, String> {
        self.config
            .lock()
            .unwrap()
            .authorizations
            .last()
            .cloned()
            .expect("an authorization request reached the stand-in")
    }

    /// Registers this stand-in on `down` as upstream `name` (`flags` on top).
    pub async fn register(&self, down: &TestApp, name: &str, flags: &[&str]) {
        let (id, secret) = {
            let c = self.config.lock().unwrap();
            (c.client_id.clone(), c.client_secret.clone())
        };
        let mut args = vec![
            "--kind",
            "oidc",
            "--issuer",
            &self.issuer,
            "--client-id",
            &id,
        ];
        args.extend_from_slice(flags);
        add_upstream(down, name, &args, &secret).await;
    }

    /// The claims of a logout token (Back-Channel Logout 1.0 §2.4) for this
    /// provider's client, `edit` applied.
    pub fn logout_claims(&self, edit: impl Fn(&mut Value)) -> Value {
        let c = self.config.lock().unwrap();
        let mut claims = json!({
            "iss": self.issuer,
            "aud": c.client_id,
            "iat": now(),
            "exp": now() + 120,
            "jti": uuid::Uuid::new_v4().to_string(),
            "sub": c.subject,
            "sid": c.sid,
            "events": { "http://schemas.openid.net/event/backchannel-logout": {} },
        });
        edit(&mut claims);
        claims
    }

    /// A logout token signed with the published key.
    pub fn logout_token(&self, edit: impl Fn(&mut Value)) -> String {
        self.key.sign(
            &json!({"alg": "RS256", "typ": "logout+jwt", "kid": self.key.kid}),
            &self.logout_claims(edit),
        )
    }
}

async fn op_discovery(op: web::Data<OpShared>) -> HttpResponse {
    let iss = op.issuer.lock().unwrap().clone();
    let advertise = op.config.lock().unwrap().advertise_iss;
    HttpResponse::Ok().json(json!({
        "issuer": iss,
        "authorization_endpoint": format!("{iss}/authorize"),
        "token_endpoint": format!("{iss}/token"),
        "jwks_uri": format!("{iss}/jwks"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "backchannel_logout_supported": true,
        "backchannel_logout_session_supported": true,
        "authorization_response_iss_parameter_supported": advertise,
    }))
}

async fn op_jwks(op: web::Data<OpShared>) -> HttpResponse {
    let mut c = op.config.lock().unwrap();
    c.jwks_fetches += 1;
    let mut keys = vec![op.key.jwk()];
    if c.publish_next {
        keys.push(op.next_key().jwk());
    }
    HttpResponse::Ok().json(json!({ "keys": keys }))
}

impl OpShared {
    fn next_key(&self) -> RsaKey {
        RsaKey {
            kid: NEXT_KID.into(),
            ..self.other_key.clone()
        }
    }
}

async fn op_authorize(
    op: web::Data<OpShared>,
    q: web::Query<HashMap<String, String>>,
) -> HttpResponse {
    let q = q.into_inner();
    let iss = op.issuer.lock().unwrap().clone();
    let mut c = op.config.lock().unwrap();
    c.authorizations.push(q.clone());
    let Some(redirect_uri) = q.get("redirect_uri") else {
        return HttpResponse::BadRequest().body("no redirect_uri");
    };
    let mut pairs: Vec<(String, String)> = Vec::new();
    if let Some(error) = c.deny.clone() {
        pairs.push(("error".into(), error));
    } else {
        let code = random_token();
        c.codes.insert(code.clone(), q.clone());
        pairs.push(("code".into(), code));
    }
    if let Some(state) = q.get("state") {
        pairs.push(("state".into(), state.clone()));
    }
    match c.iss_param {
        IssParam::Right => pairs.push(("iss".into(), iss)),
        IssParam::Wrong => pairs.push(("iss".into(), "https://attacker.example".into())),
        IssParam::Missing => {}
    }
    let mut url = url::Url::parse(redirect_uri).expect("an absolute redirect URI");
    url.query_pairs_mut().extend_pairs(pairs);
    redirect(url.as_str())
}

async fn op_token(
    op: web::Data<OpShared>,
    req: HttpRequest,
    form: web::Form<HashMap<String, String>>,
) -> HttpResponse {
    let form = form.into_inner();
    let iss = op.issuer.lock().unwrap().clone();
    let mut c = op.config.lock().unwrap();
    if let Some(status) = c.token_status {
        c.token_requests.push((form, false));
        return HttpResponse::build(
            actix_web::http::StatusCode::from_u16(status).expect("a status"),
        )
        .body("the provider is having a bad day");
    }
    let (id, secret) = client_auth(&req, &form);
    let grant = form
        .get("code")
        .and_then(|code| c.codes.remove(code))
        .filter(|_| form.get("grant_type").map(String::as_str) == Some("authorization_code"));
    let ok = id == c.client_id
        && secret == c.client_secret
        && grant.as_ref().is_some_and(|g| {
            g.get("client_id") == Some(&id)
                && g.get("redirect_uri") == form.get("redirect_uri")
                && g.get("code_challenge_method").map(String::as_str) == Some("S256")
                && form.get("code_verifier").map(|v| s256(v)).as_ref() == g.get("code_challenge")
        });
    c.token_requests.push((form, ok));
    let Some(grant) = grant.filter(|_| ok) else {
        return HttpResponse::BadRequest().json(json!({"error": "invalid_grant"}));
    };
    let mut claims = json!({
        "iss": iss,
        "sub": c.subject,
        "aud": c.client_id,
        "azp": c.client_id,
        "iat": now(),
        "exp": now() + 300,
        "auth_time": now(),
        "nonce": grant.get("nonce"),
        "email": c.email,
        "email_verified": c.email_verified,
        "sid": c.sid,
    });
    if let Some(edit) = &c.edit {
        edit(&mut claims);
    }
    let rs = |key: &RsaKey, kid: &str| {
        key.sign(&json!({"alg": "RS256", "typ": "JWT", "kid": kid}), &claims)
    };
    let id_token = match c.signing {
        Signing::Good => rs(&op.key, &op.key.kid),
        Signing::ForgedSameKid => rs(&op.other_key, &op.key.kid),
        Signing::UnknownKid => rs(&op.other_key, "a-kid-nobody-published"),
        Signing::None => unsigned(&claims),
        Signing::Hs256ClientSecret => sign_hs256(c.client_secret.as_bytes(), &claims),
        Signing::Hs256PublicKey => sign_hs256(&op.key.n, &claims),
        Signing::NextKey => rs(&op.next_key(), NEXT_KID),
    };
    HttpResponse::Ok()
        .insert_header(("cache-control", "no-store"))
        .json(json!({
            "access_token": random_token(),
            "token_type": "Bearer",
            "expires_in": 300,
            "id_token": id_token,
        }))
}
