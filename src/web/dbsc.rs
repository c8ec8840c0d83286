//! The DBSC endpoints (`auth::dbsc`): registration and refresh. Browsers call them on
//! their own, with headers rather than forms; a proof by the session's key is what
//! authorises them (no CSRF token: a cross-site request cannot make one).

use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::json;

use crate::auth::dbsc::{self, Bound, Refresh};
use crate::domain::SessionToken;
use crate::error::AppError;
use crate::state::AppState;

fn header_text(req: &HttpRequest, name: &str) -> Option<String> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// 200 with the session configuration and the new bound cookie.
fn configured(state: &AppState, bound: Bound) -> HttpResponse {
    let mut res = HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(dbsc::session_config(state, bound.id));
    let _ = res.add_cookie(
        &state
            .cookies
            .bound_cookie(&bound.cookie, state.settings.dbsc_cookie_ttl),
    );
    res
}

/// `POST /dbsc/register` with `Secure-Session-Response`: binds the session whose
/// cookie comes with it.
pub async fn register(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, AppError> {
    let token = req
        .cookie(state.cookies.session_name)
        .and_then(|c| SessionToken::parse(c.value()))
        .ok_or(AppError::Unauthorized)?;
    let proof = header_text(&req, "secure-session-response");
    let bound = dbsc::register(&state, &token, proof.as_deref()).await?;
    Ok(configured(&state, bound))
}

/// `POST /dbsc/refresh` with `Sec-Secure-Session-Id` (and, the second time,
/// `Secure-Session-Response`).
pub async fn refresh(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, AppError> {
    let id = header_text(&req, "sec-secure-session-id");
    let proof = header_text(&req, "secure-session-response");
    Ok(
        match dbsc::refresh(&state, id.as_deref(), proof.as_deref()).await? {
            Refresh::Challenge { id, challenge } => HttpResponse::build(StatusCode::FORBIDDEN)
                .insert_header((
                    "Secure-Session-Challenge",
                    format!(r#""{challenge}";id="{id}""#),
                ))
                .insert_header((header::CACHE_CONTROL, "no-store"))
                .finish(),
            Refresh::Refreshed(bound) => configured(&state, bound),
            Refresh::End => HttpResponse::Ok()
                .insert_header((header::CACHE_CONTROL, "no-store"))
                .json(json!({ "continue": false })),
        },
    )
}
