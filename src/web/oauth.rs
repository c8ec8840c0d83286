//! The machine-facing OAuth 2.0 / OIDC endpoints: discovery, JWKS, token,
//! introspection, revocation and userinfo. Each handler extracts, calls one service in
//! `oauth`, and answers JSON; errors become RFC 6749 §5.2 JSON in `web::edge`.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use base64::Engine;
use secrecy::SecretString;

use crate::domain::oauth::Params;
use crate::error::AppError;
use crate::oauth::clients::{self, Presented};
use crate::oauth::{discovery, introspect, token};
use crate::state::AppState;
use crate::store::ClientRecord;
use crate::web::cors;
use crate::web::forms::RawForm;

fn json(body: &impl serde::Serialize) -> HttpResponse {
    HttpResponse::Ok()
        // RFC 6749 §5.1: token responses must not be cached; nothing here should be.
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .insert_header((header::PRAGMA, "no-cache"))
        .json(body)
}

/// Public metadata: any origin may read it, without credentials (W4: `*` never
/// goes with credentials).
fn public_json(body: &serde_json::Value) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, "*"))
        .insert_header((header::CACHE_CONTROL, "public, max-age=60"))
        .json(body)
}

pub async fn openid_configuration(state: web::Data<AppState>) -> HttpResponse {
    public_json(&discovery::metadata(&state))
}

pub async fn jwks(state: web::Data<AppState>) -> HttpResponse {
    crate::oauth::keys::refresh_if_stale(&state).await;
    public_json(&discovery::jwks(&state))
}

fn form_decode(text: &str) -> Option<String> {
    // RFC 6749 §2.3.1: id and secret are form-urlencoded before Basic encoding.
    let plus_as_space = text.replace('+', " ");
    percent_encoding::percent_decode_str(&plus_as_space)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

/// The client credentials a request presents: HTTP Basic or the form, not both
/// (RFC 6749 §2.3.1 "MUST NOT use more than one authentication method").
fn presented(req: &HttpRequest, params: &Params) -> Result<Presented, AppError> {
    let basic = match req.headers().get(header::AUTHORIZATION) {
        None => None,
        Some(value) => {
            let value = value.to_str().map_err(|_| AppError::invalid_client())?;
            let Some(encoded) = value
                .split_once(' ')
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
                .map(|(_, rest)| rest.trim())
            else {
                return Err(AppError::invalid_client());
            };
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(AppError::invalid_client)?;
            let (id, secret) = decoded
                .split_once(':')
                .ok_or_else(AppError::invalid_client)?;
            Some((
                form_decode(id).ok_or_else(AppError::invalid_client)?,
                form_decode(secret).ok_or_else(AppError::invalid_client)?,
            ))
        }
    };
    if basic
        .as_ref()
        .is_some_and(|(id, _)| id.is_empty() || id.chars().any(char::is_control))
    {
        return Err(AppError::invalid_client());
    }
    match basic {
        Some((id, secret)) => {
            if params.get("client_secret").is_some() {
                return Err(AppError::oauth(
                    "invalid_request",
                    "Use one client authentication method, not two.",
                ));
            }
            if params.get("client_id").is_some_and(|c| c != id) {
                return Err(AppError::invalid_client());
            }
            Ok(Presented {
                client_id: id,
                secret: Some(SecretString::from(secret)),
            })
        }
        None => Ok(Presented {
            client_id: params
                .get("client_id")
                .ok_or_else(AppError::invalid_client)?
                .to_string(),
            secret: params.get("client_secret").map(SecretString::from),
        }),
    }
}

/// Whether the endpoint answers browser apps' pages (CORS, `web::cors`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pages {
    Answered,
    NotAnswered,
}

async fn authenticated(
    state: &AppState,
    req: &HttpRequest,
    body: &str,
    pages: Pages,
) -> Result<(ClientRecord, Params), AppError> {
    let params = Params::parse(body).map_err(|m| AppError::oauth("invalid_request", m))?;
    let presented = presented(req, &params)?;
    let client = clients::find(state, &presented.client_id)
        .await?
        .ok_or_else(AppError::invalid_client)?;
    // Known from here on: its pages may read the answer, refusals included.
    if pages == Pages::Answered {
        cors::allow(req, &client.web_origins);
    }
    let client = clients::verify(client, &presented)?;
    Ok((client, params))
}

pub async fn token_endpoint(
    state: web::Data<AppState>,
    req: HttpRequest,
    RawForm(body): RawForm,
) -> Result<HttpResponse, AppError> {
    let (client, params) = authenticated(&state, &req, &body, Pages::Answered).await?;
    let out = token::token(&state, &client, &params).await?;
    Ok(json(&out))
}

pub async fn introspect_endpoint(
    state: web::Data<AppState>,
    req: HttpRequest,
    RawForm(body): RawForm,
) -> Result<HttpResponse, AppError> {
    let (client, params) = authenticated(&state, &req, &body, Pages::NotAnswered).await?;
    // A public client has no secret: it cannot prove who is asking (RFC 7662 §2.1).
    if client.is_public() {
        return Err(AppError::invalid_client());
    }
    let token = params
        .get("token")
        .ok_or_else(|| AppError::oauth("invalid_request", "token is missing"))?;
    Ok(json(&introspect::introspect(&state, &client, token).await?))
}

pub async fn revoke_endpoint(
    state: web::Data<AppState>,
    req: HttpRequest,
    RawForm(body): RawForm,
) -> Result<HttpResponse, AppError> {
    let (client, params) = authenticated(&state, &req, &body, Pages::Answered).await?;
    let token = params
        .get("token")
        .ok_or_else(|| AppError::oauth("invalid_request", "token is missing"))?;
    introspect::revoke(&state, &client, token).await?;
    Ok(HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .finish())
}

/// RFC 6750 §2.1: `Authorization: Bearer …`.
fn bearer(req: &HttpRequest) -> Option<String> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
}

pub async fn userinfo_get(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, AppError> {
    let token = bearer(&req).ok_or(AppError::NoBearerToken)?;
    userinfo(&state, &req, &token).await
}

/// The answer, readable by the pages of the token's client (`web::cors`).
async fn userinfo(
    state: &AppState,
    req: &HttpRequest,
    token: &str,
) -> Result<HttpResponse, AppError> {
    if cors::asked(req) {
        cors::allow(req, &introspect::token_web_origins(state, token).await?);
    }
    Ok(json(&introspect::userinfo(state, token).await?))
}

/// POST: the token in the header or, RFC 6750 §2.2, the form (not both).
pub async fn userinfo_post(
    state: web::Data<AppState>,
    req: HttpRequest,
    mut payload: web::Payload,
) -> Result<HttpResponse, AppError> {
    let body = crate::web::forms::read_capped(&mut payload).await?;
    let from_header = bearer(&req);
    let is_form = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let from_form = if is_form {
        let text = std::str::from_utf8(&body).map_err(|_| AppError::InvalidToken)?;
        crate::web::forms::check_urlencoded(text.as_bytes())?;
        Params::parse(text)
            .map_err(|m| AppError::oauth("invalid_request", m))?
            .get("access_token")
            .map(str::to_string)
    } else {
        None
    };
    let token = match (from_header, from_form) {
        (Some(_), Some(_)) => {
            return Err(AppError::oauth(
                "invalid_request",
                "Send the token once: in the header or the form.",
            ));
        }
        (Some(t), None) | (None, Some(t)) => t,
        (None, None) => return Err(AppError::NoBearerToken),
    };
    userinfo(&state, &req, &token).await
}
