//! The account overview and the password page: extract, call one service, render.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use askama::Template;
use serde::Deserialize;

use crate::auth::describe::{self, when};
use crate::auth::password::{self, ChangeOutcome};
use crate::auth::{RequestContext, mfa, second_factor};
use crate::domain::SessionToken;
use crate::error::AppError;
use crate::state::AppState;
use crate::store::SessionRecord;
use crate::web::edge::CspNonce;
use crate::web::extract::{Csrf, CurrentSession};
use crate::web::forms::StrictForm;
use crate::web::pages::{NoticeTemplate, PageCtx, html};

/// Sets the session's new cookie token after a change of privilege (step-up,
/// password or factor change): same lifetime as before.
pub fn set_rotated_cookie(
    state: &AppState,
    res: &mut HttpResponse,
    session: &SessionRecord,
    token: &SessionToken,
) {
    let persist_for = session.remember_me.then(|| {
        let left = (session.absolute_expires_at - state.clock.now()).max(time::Duration::ZERO);
        std::time::Duration::from_secs(u64::try_from(left.whole_seconds()).unwrap_or(0))
    });
    let _ = res.add_cookie(&state.cookies.session_cookie(token, persist_for));
    // A new token for a session not bound yet: the browser may bind it now.
    if session.dbsc.is_none() {
        crate::web::pages::offer_binding(state, res, token);
    }
}

#[derive(Template)]
#[template(path = "pages/account.html")]
struct AccountTemplate {
    ctx: PageCtx,
    email: String,
    signed_in_at: String,
    expires_at: String,
    remembered: bool,
    methods: String,
    totp_on: bool,
    recovery_left: i64,
    passkeys: i64,
    has_password: bool,
    apps: Vec<crate::oauth::consents::AllowedApp>,
}

pub async fn account(
    state: web::Data<AppState>,
    CurrentSession(session): CurrentSession,
    csrf: Csrf,
    nonce: CspNonce,
) -> Result<HttpResponse, AppError> {
    let factors = mfa::factors(&state, &session).await?;
    let methods = describe::methods(&session.amr).to_lowercase();
    let apps = crate::oauth::consents::allowed_apps(&state, session.user_id).await?;
    let page = AccountTemplate {
        ctx: PageCtx::new(&state, &nonce, &csrf, Some(session.email.clone())),
        email: session.email,
        signed_in_at: when(session.auth_time),
        expires_at: when(session.idle_expires_at.min(session.absolute_expires_at)),
        remembered: session.remember_me,
        methods,
        totp_on: factors.totp_confirmed_at.is_some(),
        recovery_left: factors.recovery_codes_left,
        passkeys: factors.passkeys,
        has_password: factors.has_password,
        apps,
    };
    html(StatusCode::OK, &page)
}

#[derive(Deserialize)]
pub struct WithdrawForm {
    #[serde(default)]
    csrf_token: String,
}

/// `POST /account/apps/{client_id}/withdraw`: the app loses its permission and tokens.
pub async fn withdraw_app(
    state: web::Data<AppState>,
    CurrentSession(session): CurrentSession,
    csrf: Csrf,
    path: web::Path<String>,
    StrictForm(form): StrictForm<WithdrawForm>,
) -> Result<HttpResponse, AppError> {
    csrf.verify(&form.csrf_token)?;
    crate::oauth::consents::withdraw(&state, session.user_id, &path.into_inner()).await?;
    Ok(crate::web::pages::see_other("/account"))
}

#[derive(Template)]
#[template(path = "pages/account_password.html")]
struct PasswordTemplate {
    ctx: PageCtx,
    error: Option<String>,
    /// Whether the person has a password to change (else the page sets a first one,
    /// and asks for no current password).
    has_password: bool,
}

pub async fn password_page(
    state: web::Data<AppState>,
    CurrentSession(session): CurrentSession,
    csrf: Csrf,
    nonce: CspNonce,
) -> Result<HttpResponse, AppError> {
    second_factor::require_fresh(&state, &session, password::PAGE, true).await?;
    let page = PasswordTemplate {
        ctx: PageCtx::new(&state, &nonce, &csrf, Some(session.email.clone())),
        error: None,
        has_password: password::has_password(&state, session.user_id).await?,
    };
    html(StatusCode::OK, &page)
}

#[derive(Deserialize)]
pub struct PasswordForm {
    #[serde(default)]
    csrf_token: String,
    /// Absent when the person has no password yet (the page does not ask for one).
    #[serde(default)]
    current_password: String,
    new_password: String,
    new_password_again: String,
}

pub async fn password_submit(
    state: web::Data<AppState>,
    CurrentSession(session): CurrentSession,
    csrf: Csrf,
    nonce: CspNonce,
    ctx: RequestContext,
    StrictForm(form): StrictForm<PasswordForm>,
) -> Result<HttpResponse, AppError> {
    csrf.verify(&form.csrf_token)?;
    let outcome = password::change(
        &state,
        &session,
        &form.current_password,
        &form.new_password,
        &form.new_password_again,
        &ctx,
    )
    .await?;
    let (status, error) = match outcome {
        ChangeOutcome::Changed(token) => {
            let csrf = Csrf::for_rotated(&state, &token);
            let page = NoticeTemplate {
                ctx: PageCtx::new(&state, &nonce, &csrf, Some(session.email.clone())),
                title: "Password changed",
                paragraphs: vec![
                    "Your password is changed. Every other device was signed out; this one stays signed in.".into(),
                    format!("We sent a notice to {}.", session.email),
                ],
                link: Some(("Back to your account", "/account")),
            };
            let mut res = html(StatusCode::OK, &page)?;
            set_rotated_cookie(&state, &mut res, &session, &token);
            return Ok(res);
        }
        ChangeOutcome::Throttled { retry_after_secs } => {
            return Err(AppError::RateLimited { retry_after_secs });
        }
        ChangeOutcome::WrongPassword => (
            StatusCode::BAD_REQUEST,
            "Your current password is not right.".to_string(),
        ),
        ChangeOutcome::Mismatch => (
            StatusCode::BAD_REQUEST,
            "The two new passwords are not the same.".to_string(),
        ),
        ChangeOutcome::Weak(m) => (StatusCode::BAD_REQUEST, m),
        ChangeOutcome::Stale => (
            StatusCode::CONFLICT,
            "Your password was changed meanwhile (perhaps by a reset link). Nothing was changed now."
                .to_string(),
        ),
    };
    let page = PasswordTemplate {
        ctx: PageCtx::new(&state, &nonce, &csrf, Some(session.email.clone())),
        error: Some(error),
        has_password: password::has_password(&state, session.user_id).await?,
    };
    html(status, &page)
}
