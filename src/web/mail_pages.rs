//! Pages of the mail flows: verification, password reset, change of address.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use askama::Template;
use serde::Deserialize;

use crate::auth::mailflows::{self, ChangeOutcome, ChangeRequest, MailRequest, ResetOutcome};
use crate::auth::{RequestContext, password, second_factor};
use crate::error::AppError;
use crate::state::AppState;
use crate::web::edge::CspNonce;
use crate::web::extract::{Csrf, CurrentSession};
use crate::web::forms::{StrictForm, StrictQuery};
use crate::web::pages::{NoticeTemplate, PageCtx, html};

#[derive(Deserialize)]
pub struct TokenQuery {
    #[serde(default)]
    pub(super) token: String,
}

pub(super) fn notice(
    state: &AppState,
    nonce: &CspNonce,
    csrf: &Csrf,
    status: StatusCode,
    title: &str,
    paragraphs: Vec<String>,
    link: Option<(&str, &str)>,
) -> Result<HttpResponse, AppError> {
    let page = NoticeTemplate {
        ctx: PageCtx::new(state, nonce, csrf, None),
        title,
        paragraphs,
        link,
    };
    html(status, &page)
}

pub(super) fn dead_link(
    state: &AppState,
    nonce: &CspNonce,
    csrf: &Csrf,
    what: &str,
    again: (&str, &str),
) -> Result<HttpResponse, AppError> {
    notice(
        state,
        nonce,
        csrf,
        StatusCode::BAD_REQUEST,
        "This link does not work",
        vec![format!(
            "The {what} link is not valid: it may have been used already, have expired, or been copied incompletely."
        )],
        Some(again),
    )
}

/// The page a mailed link opens: it only shows a button. Mail-security scanners
/// fetch links before the person does (GET, never a form POST), so a link is used
/// only by the POST that button sends; a dead link says so at once (400).
#[derive(Template)]
#[template(path = "pages/use_link.html")]
struct UseLinkTemplate<'a> {
    ctx: PageCtx,
    title: &'a str,
    explanation: &'a str,
    action: &'a str,
    token: &'a str,
    button: &'a str,
}

#[derive(Deserialize)]
pub struct LinkForm {
    #[serde(default)]
    pub(super) csrf_token: String,
    #[serde(default)]
    pub(super) token: String,
}

/// What a mailed link's page says: its button, and where to go if the link is dead.
pub(super) struct LinkPage {
    pub(super) title: &'static str,
    pub(super) explanation: &'static str,
    pub(super) action: &'static str,
    pub(super) button: &'static str,
    pub(super) what: &'static str,
    pub(super) again: (&'static str, &'static str),
}

pub(super) fn link_page(
    state: &AppState,
    nonce: &CspNonce,
    csrf: &Csrf,
    live: bool,
    token: &str,
    p: LinkPage,
) -> Result<HttpResponse, AppError> {
    if !live {
        return dead_link(state, nonce, csrf, p.what, p.again);
    }
    let page = UseLinkTemplate {
        ctx: PageCtx::new(state, nonce, csrf, None),
        title: p.title,
        explanation: p.explanation,
        action: p.action,
        token,
        button: p.button,
    };
    html(StatusCode::OK, &page)
}

pub async fn verify_email_page(
    state: web::Data<AppState>,
    csrf: Csrf,
    nonce: CspNonce,
    StrictQuery(q): StrictQuery<TokenQuery>,
) -> Result<HttpResponse, AppError> {
    let live = mailflows::verify_link_is_live(&state, &q.token).await?;
    link_page(
        &state,
        &nonce,
        &csrf,
        live,
        &q.token,
        LinkPage {
            title: "Confirm your e-mail address",
            explanation: "Press the button to confirm this address and finish creating your account.",
            action: "/verify-email",
            button: "Confirm my address",
            what: "confirmation",
            again: ("Sign in to get a new link", "/login"),
        },
    )
}

pub async fn verify_email(
    state: web::Data<AppState>,
    csrf: Csrf,
    nonce: CspNonce,
    ctx: RequestContext,
    StrictForm(form): StrictForm<LinkForm>,
) -> Result<HttpResponse, AppError> {
    csrf.verify(&form.csrf_token)?;
    if mailflows::verify_email(&state, &form.token, &ctx).await? {
        notice(
            &state,
            &nonce,
            &csrf,
            StatusCode::OK,
            "Address confirmed",
            vec!["Your e-mail address is confirmed. You can sign in now.".into()],
            Some(("Sign in", "/login")),
        )
    } else {
        dead_link(
            &state,
            &nonce,
            &csrf,
            "confirmation",
            ("Sign in to get a new link", "/login"),
        )
    }
}

#[derive(Deserialize)]
pub struct EmailForm {
    #[serde(default)]
    csrf_token: String,
    email: String,
}

fn mail_request_answer(
    state: &AppState,
    nonce: &CspNonce,
    csrf: &Csrf,
    outcome: MailRequest,
    accepted: &str,
) -> Result<HttpResponse, AppError> {
    match outcome {
        MailRequest::Accepted => notice(
            state,
            nonce,
            csrf,
            StatusCode::OK,
            "Check your inbox",
            vec![
                accepted.to_string(),
                "The message can take a minute to arrive; check your spam folder too.".into(),
            ],
            Some(("Back to sign in", "/login")),
        ),
        MailRequest::Throttled { retry_after_secs } => {
            Err(AppError::RateLimited { retry_after_secs })
        }
        MailRequest::BadEmail(message) => Err(AppError::Validation(message)),
    }
}

pub async fn resend_verification(
    state: web::Data<AppState>,
    csrf: Csrf,
    nonce: CspNonce,
    ctx: RequestContext,
    StrictForm(form): StrictForm<EmailForm>,
) -> Result<HttpResponse, AppError> {
    csrf.verify(&form.csrf_token)?;
    let outcome = mailflows::resend_verification(&state, &form.email, &ctx).await?;
    mail_request_answer(
        &state,
        &nonce,
        &csrf,
        outcome,
        "If that address has an account waiting for confirmation, a new link is on its way.",
    )
}

#[derive(Template)]
#[template(path = "pages/forgot.html")]
struct ForgotTemplate<'a> {
    ctx: PageCtx,
    email: &'a str,
    error: Option<String>,
}

pub async fn forgot_page(
    state: web::Data<AppState>,
    csrf: Csrf,
    nonce: CspNonce,
) -> Result<HttpResponse, AppError> {
    html(
        StatusCode::OK,
        &ForgotTemplate {
            ctx: PageCtx::new(&state, &nonce, &csrf, None),
            email: "",
            error: None,
        },
    )
}

pub async fn forgot_submit(
    state: web::Data<AppState>,
    csrf: Csrf,
    nonce: CspNonce,
    ctx: RequestContext,
    StrictForm(form): StrictForm<EmailForm>,
) -> Result<HttpResponse, AppError> {
    csrf.verify(&form.csrf_token)?;
    match mailflows::forgot_password(&state, &form.email, &ctx).await? {
        MailRequest::BadEmail(message) => {
            let page = ForgotTemplate {
                ctx: PageCtx::new(&state, &nonce, &csrf, None),
                email: form.email.trim(),
                error: Some(message),
            };
            html(StatusCode::BAD_REQUEST, &page)
        }
        outcome => mail_request_answer(
            &state,
            &nonce,
            &csrf,
            outcome,
            "If an account uses that address, we sent it a link to choose a new password. The link works once, for 30 minutes.",
        ),
    }
}

#[derive(Template)]
#[template(path = "pages/reset.html")]
struct ResetTemplate<'a> {
    ctx: PageCtx,
    token: &'a str,
    error: Option<String>,
}

pub async fn reset_page(
    state: web::Data<AppState>,
    csrf: Csrf,
    nonce: CspNonce,
    StrictQuery(q): StrictQuery<TokenQuery>,
) -> Result<HttpResponse, AppError> {
    if !mailflows::reset_link_is_live(&state, &q.token).await? {
        return dead_link(
            &state,
            &nonce,
            &csrf,
            "password reset",
            ("Ask for a new link", "/password/forgot"),
        );
    }
    html(
        StatusCode::OK,
        &ResetTemplate {
            ctx: PageCtx::new(&state, &nonce, &csrf, None),
            token: &q.token,
            error: None,
        },
    )
}

#[derive(Deserialize)]
pub struct ResetForm {
    #[serde(default)]
    csrf_token: String,
    token: String,
    password: String,
}

pub async fn reset_submit(
    state: web::Data<AppState>,
    csrf: Csrf,
    nonce: CspNonce,
    ctx: RequestContext,
    StrictForm(form): StrictForm<ResetForm>,
) -> Result<HttpResponse, AppError> {
    csrf.verify(&form.csrf_token)?;
    match mailflows::reset_password(&state, &form.token, &form.password, &ctx).await? {
        ResetOutcome::Done => {
            let mut res = notice(&state, &nonce, &csrf, StatusCode::OK, "Password changed", vec!["Your password was changed and every session was signed out. Sign in with the new password.".into()], Some(("Sign in", "/login")))?;
            let _ = res.add_cookie(&state.cookies.clear_session());
            Ok(res)
        }
        ResetOutcome::BadPassword(e) => {
            let page = ResetTemplate {
                ctx: PageCtx::new(&state, &nonce, &csrf, None),
                token: &form.token,
                error: Some(e.to_string()),
            };
            html(StatusCode::BAD_REQUEST, &page)
        }
        ResetOutcome::DeadLink => dead_link(
            &state,
            &nonce,
            &csrf,
            "password reset",
            ("Ask for a new link", "/password/forgot"),
        ),
    }
}

#[derive(Template)]
#[template(path = "pages/account_email.html")]
struct ChangeEmailTemplate<'a> {
    ctx: PageCtx,
    current: &'a str,
    new_email: &'a str,
    error: Option<String>,
    /// Whether to ask for the current password (a person without one is not).
    has_password: bool,
}

pub async fn change_email_page(
    state: web::Data<AppState>,
    CurrentSession(session): CurrentSession,
    csrf: Csrf,
    nonce: CspNonce,
) -> Result<HttpResponse, AppError> {
    second_factor::require_fresh(&state, &session, "/account/email", true).await?;
    let page = ChangeEmailTemplate {
        ctx: PageCtx::new(&state, &nonce, &csrf, Some(session.email.clone())),
        current: &session.email,
        new_email: "",
        error: None,
        has_password: password::has_password(&state, session.user_id).await?,
    };
    html(StatusCode::OK, &page)
}

#[derive(Deserialize)]
pub struct ChangeEmailForm {
    #[serde(default)]
    csrf_token: String,
    new_email: String,
    /// Absent when the person has no password (the page does not ask for one).
    #[serde(default)]
    current_password: String,
}

pub async fn change_email_submit(
    state: web::Data<AppState>,
    CurrentSession(session): CurrentSession,
    csrf: Csrf,
    nonce: CspNonce,
    ctx: RequestContext,
    StrictForm(form): StrictForm<ChangeEmailForm>,
) -> Result<HttpResponse, AppError> {
    csrf.verify(&form.csrf_token)?;
    let outcome = mailflows::request_email_change(
        &state,
        &session,
        &form.current_password,
        &form.new_email,
        &ctx,
    )
    .await?;
    let error = match outcome {
        ChangeRequest::Sent { to } => {
            let page = NoticeTemplate {
                ctx: PageCtx::new(&state, &nonce, &csrf, Some(session.email.clone())),
                title: "Check your new inbox",
                paragraphs: vec![format!(
                    "We sent a link to {to}. Your address changes when you open it (within 24 hours). We also told {} about the request.",
                    session.email
                )],
                link: Some(("Back to your account", "/account")),
            };
            return html(StatusCode::OK, &page);
        }
        ChangeRequest::Throttled { retry_after_secs } => {
            return Err(AppError::RateLimited { retry_after_secs });
        }
        ChangeRequest::WrongPassword => "Your current password is not right.".to_string(),
        ChangeRequest::BadEmail(m) => m,
        ChangeRequest::SameAddress => "That is already your address.".to_string(),
    };
    let page = ChangeEmailTemplate {
        ctx: PageCtx::new(&state, &nonce, &csrf, Some(session.email.clone())),
        current: &session.email,
        new_email: form.new_email.trim(),
        error: Some(error),
        has_password: password::has_password(&state, session.user_id).await?,
    };
    html(StatusCode::BAD_REQUEST, &page)
}

pub async fn change_email_confirm_page(
    state: web::Data<AppState>,
    csrf: Csrf,
    nonce: CspNonce,
    StrictQuery(q): StrictQuery<TokenQuery>,
) -> Result<HttpResponse, AppError> {
    let live = mailflows::change_link_is_live(&state, &q.token).await?;
    link_page(
        &state,
        &nonce,
        &csrf,
        live,
        &q.token,
        LinkPage {
            title: "Change your e-mail address",
            explanation: "Press the button to make this the address of your account. Your old address will be told.",
            action: "/account/email/confirm",
            button: "Use this address",
            what: "address change",
            again: ("Go to your account", "/account"),
        },
    )
}

pub async fn change_email_confirm(
    state: web::Data<AppState>,
    csrf: Csrf,
    nonce: CspNonce,
    ctx: RequestContext,
    StrictForm(form): StrictForm<LinkForm>,
) -> Result<HttpResponse, AppError> {
    csrf.verify(&form.csrf_token)?;
    match mailflows::confirm_email_change(&state, &form.token, &ctx).await? {
        ChangeOutcome::Changed { to } => notice(
            &state,
            &nonce,
            &csrf,
            StatusCode::OK,
            "Address changed",
            vec![format!("Your e-mail address is now {to}.")],
            Some(("Go to your account", "/account")),
        ),
        ChangeOutcome::Taken => notice(
            &state,
            &nonce,
            &csrf,
            StatusCode::CONFLICT,
            "Address already in use",
            vec!["Another account uses that address now, so yours was not changed.".into()],
            Some(("Go to your account", "/account")),
        ),
        ChangeOutcome::DeadLink => dead_link(
            &state,
            &nonce,
            &csrf,
            "address change",
            ("Go to your account", "/account"),
        ),
    }
}
