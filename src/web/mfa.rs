//! `/account/mfa`: the authenticator app and recovery codes. Extract, call the mfa
//! service, render.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use askama::Template;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::auth::describe::when;
use crate::auth::mfa::{self, ConfirmOutcome};
use crate::auth::{RequestContext, second_factor};
use crate::error::AppError;
use crate::state::AppState;
use crate::store::SessionRecord;
use crate::web::account::set_rotated_cookie;
use crate::web::edge::CspNonce;
use crate::web::extract::{Csrf, CurrentSession};
use crate::web::forms::StrictForm;
use crate::web::pages::{PageCtx, html, see_other};

/// The enrolment step, shown while a secret waits for its first code.
struct EnrolView {
    qr_svg: String,
    secret: String,
    uri: String,
}

#[derive(Template)]
#[template(path = "pages/account_mfa.html")]
struct MfaTemplate {
    ctx: PageCtx,
    totp_on: bool,
    totp_since: String,
    recovery_left: i64,
    enrol: Option<EnrolView>,
    /// Recovery codes to show once (after enrolment or regeneration).
    codes: Vec<String>,
    fresh: bool,
    error: Option<String>,
    info: Option<String>,
}

async fn page(
    state: &AppState,
    session: &SessionRecord,
    csrf: &Csrf,
    nonce: &CspNonce,
    codes: Vec<SecretString>,
    error: Option<String>,
    info: Option<String>,
) -> Result<MfaTemplate, AppError> {
    let factors = mfa::factors(state, session).await?;
    // Codes just shown stand in for the enrolment form.
    let enrol = if codes.is_empty() {
        mfa::enrolment(state, session).await?.map(|e| EnrolView {
            qr_svg: e.qr_svg,
            // Groups of four, as people read and type it.
            secret: e
                .base32
                .expose_secret()
                .as_bytes()
                .chunks(4)
                .map(|c| String::from_utf8_lossy(c).into_owned())
                .collect::<Vec<_>>()
                .join(" "),
            uri: e.uri.expose_secret().to_string(),
        })
    } else {
        None
    };
    Ok(MfaTemplate {
        ctx: PageCtx::new(state, nonce, csrf, Some(session.email.clone())),
        totp_on: factors.totp_confirmed_at.is_some(),
        totp_since: factors.totp_confirmed_at.map(when).unwrap_or_default(),
        recovery_left: factors.recovery_codes_left,
        enrol,
        codes: codes
            .iter()
            .map(|c| c.expose_secret().to_string())
            .collect(),
        fresh: second_factor::is_fresh(state, session).await?,
        error,
        info,
    })
}

/// The page after a committed change, made from what is known in memory: nothing
/// here can fail once the change (with its new cookie, or its codes shown once) is
/// done.
fn after_change(
    state: &AppState,
    session: &SessionRecord,
    csrf: &Csrf,
    nonce: &CspNonce,
    totp_on: bool,
    codes: Vec<SecretString>,
    info: &str,
) -> MfaTemplate {
    MfaTemplate {
        ctx: PageCtx::new(state, nonce, csrf, Some(session.email.clone())),
        totp_on,
        totp_since: String::new(),
        recovery_left: if totp_on { 10 } else { 0 },
        enrol: None,
        codes: codes
            .iter()
            .map(|c| c.expose_secret().to_string())
            .collect(),
        fresh: true,
        error: None,
        info: Some(info.to_string()),
    }
}

pub async fn mfa_page(
    state: web::Data<AppState>,
    CurrentSession(session): CurrentSession,
    csrf: Csrf,
    nonce: CspNonce,
) -> Result<HttpResponse, AppError> {
    let page = page(&state, &session, &csrf, &nonce, Vec::new(), None, None).await?;
    let mut res = html(StatusCode::OK, &page)?;
    // The secret is on this page: never stored by a cache.
    res.headers_mut().insert(
        actix_web::http::header::CACHE_CONTROL,
        actix_web::http::header::HeaderValue::from_static("no-store"),
    );
    Ok(res)
}

#[derive(Deserialize)]
pub struct MfaForm {
    #[serde(default)]
    csrf_token: String,
    action: String,
    #[serde(default)]
    code: String,
}

pub async fn mfa_submit(
    state: web::Data<AppState>,
    CurrentSession(session): CurrentSession,
    csrf: Csrf,
    nonce: CspNonce,
    ctx: RequestContext,
    StrictForm(form): StrictForm<MfaForm>,
) -> Result<HttpResponse, AppError> {
    csrf.verify(&form.csrf_token)?;
    let render = |status: StatusCode, p: MfaTemplate| {
        let mut res = html(status, &p)?;
        res.headers_mut().insert(
            actix_web::http::header::CACHE_CONTROL,
            actix_web::http::header::HeaderValue::from_static("no-store"),
        );
        Ok::<_, AppError>(res)
    };
    match form.action.as_str() {
        "start" => {
            mfa::start(&state, &session).await?;
            Ok(see_other(mfa::PAGE))
        }
        "confirm" => match mfa::confirm(&state, &session, &form.code, &ctx).await? {
            ConfirmOutcome::Confirmed { codes, token } => {
                let info = "Two-step verification is on. Your other devices were signed out.";
                let csrf = Csrf::for_rotated(&state, &token);
                let p = after_change(&state, &session, &csrf, &nonce, true, codes, info);
                let mut res = render(StatusCode::OK, p)?;
                set_rotated_cookie(&state, &mut res, &session, &token);
                Ok(res)
            }
            ConfirmOutcome::Throttled { retry_after_secs } => {
                Err(AppError::RateLimited { retry_after_secs })
            }
            refused => {
                let (status, error) = match refused {
                    ConfirmOutcome::Wrong => (
                        StatusCode::BAD_REQUEST,
                        "That code is not right. Check that your app shows the code for this account, and that your phone's clock is right.",
                    ),
                    ConfirmOutcome::Gone => {
                        (StatusCode::CONFLICT, "The set-up timed out. Start again.")
                    }
                    _ => (
                        StatusCode::BAD_REQUEST,
                        "Enter the 6-digit code your authenticator app shows.",
                    ),
                };
                let p = page(
                    &state,
                    &session,
                    &csrf,
                    &nonce,
                    Vec::new(),
                    Some(error.into()),
                    None,
                )
                .await?;
                render(status, p)
            }
        },
        "remove" => {
            let token = mfa::remove(&state, &session, &ctx).await?;
            let info = "Two-step verification is off. Your other devices were signed out.";
            let csrf = Csrf::for_rotated(&state, &token);
            let p = after_change(&state, &session, &csrf, &nonce, false, Vec::new(), info);
            let mut res = render(StatusCode::OK, p)?;
            set_rotated_cookie(&state, &mut res, &session, &token);
            Ok(res)
        }
        "regenerate" => {
            let (codes, token) = mfa::regenerate(&state, &session, &ctx).await?;
            let info = "New recovery codes are ready. The old ones no longer work, and your other devices were signed out.";
            let csrf = Csrf::for_rotated(&state, &token);
            let p = after_change(&state, &session, &csrf, &nonce, true, codes, info);
            let mut res = render(StatusCode::OK, p)?;
            set_rotated_cookie(&state, &mut res, &session, &token);
            Ok(res)
        }
        _ => Err(AppError::Validation("Unknown action.".into())),
    }
}
