//! The person-facing OAuth pages: `/oauth2/authorize`, `/oauth2/consent` and
//! `/oauth2/logout`. Their errors are HTML pages and none of them restricts CSP
//! `form-action` (their route-table rows say `leaves_site`): their forms end in redirects to apps.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, web};
use askama::Template;
use serde::Deserialize;

use crate::auth::{RequestContext, sessions};
use crate::domain::oauth::Params;
use crate::error::AppError;
use crate::oauth::authorize::{self, Answer, ConsentView, Outcome, describe_scope};
use crate::oauth::logout;
use crate::state::AppState;
use crate::store::SessionRecord;
use crate::web::edge::CspNonce;
use crate::web::extract::{Csrf, MaybeSession, SessionToEnd};
use crate::web::forms::{RawForm, StrictForm};
use crate::web::pages::{NoticeTemplate, PageCtx, html, see_other};

#[derive(Template)]
#[template(path = "pages/consent.html")]
struct ConsentTemplate<'a> {
    ctx: PageCtx,
    client_name: &'a str,
    scopes: Vec<&'static str>,
    email: &'a str,
    request: &'a str,
}

fn encoded(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// Turns an outcome into the browser's next step. The consent question is shown only
/// on the consent page (`csrf` for its form); elsewhere the browser is sent there.
fn respond(
    state: &AppState,
    nonce: &CspNonce,
    csrf: Option<&Csrf>,
    session: Option<&SessionRecord>,
    outcome: Outcome,
) -> Result<HttpResponse, AppError> {
    Ok(match outcome {
        Outcome::ToClient(url) => see_other(&url),
        Outcome::SignIn { return_to, force } => {
            let mut to = format!("/login?return_to={}", encoded(&return_to));
            if force {
                to.push_str("&prompt=login");
            }
            see_other(&to)
        }
        Outcome::StepUp { return_to } => see_other(&crate::error::step_up_location(&return_to)),
        Outcome::Consent(view) if let Some(csrf) = csrf => {
            consent_page(state, nonce, csrf, session, &view)?
        }
        Outcome::Consent(view) => see_other(&format!("/oauth2/consent?{}", view.request)),
    })
}

fn consent_page(
    state: &AppState,
    nonce: &CspNonce,
    csrf: &Csrf,
    session: Option<&SessionRecord>,
    view: &ConsentView,
) -> Result<HttpResponse, AppError> {
    let email = session.map(|s| s.email.as_str()).unwrap_or("");
    let page = ConsentTemplate {
        ctx: PageCtx::new(state, nonce, csrf, session.map(|s| s.email.clone())),
        client_name: &view.client_name,
        scopes: view.scopes.iter().map(|s| describe_scope(s)).collect(),
        email,
        request: &view.request,
    };
    html(StatusCode::OK, &page)
}

/// `GET /oauth2/authorize` and `GET /oauth2/consent` judge the same request; only
/// the consent page itself shows the question (authorize redirects to it).
pub async fn authorize_page(
    state: web::Data<AppState>,
    req: HttpRequest,
    session: MaybeSession,
    csrf: Csrf,
    nonce: CspNonce,
) -> Result<HttpResponse, AppError> {
    let on_consent_page = req.path() == "/oauth2/consent";
    let outcome =
        authorize::authorize(&state, session.0.as_ref(), req.query_string(), Answer::None).await?;
    respond(
        &state,
        &nonce,
        on_consent_page.then_some(&csrf),
        session.0.as_ref(),
        outcome,
    )
}

/// `POST /oauth2/authorize` (OIDC Core §3.1.2.1: GET and POST). The app's page
/// posts it cross-site, and browsers do not send the `SameSite=Lax` session cookie
/// with a cross-site POST; the same request is answered as a GET instead (303),
/// which is a top-level navigation that carries it. It changes nothing itself, so
/// it needs no CSRF token.
pub async fn authorize_post(RawForm(body): RawForm) -> Result<HttpResponse, AppError> {
    let params = Params::parse(&body).map_err(AppError::Validation)?;
    Ok(see_other(&format!(
        "/oauth2/authorize?{}",
        params.encode_without(&[])
    )))
}

#[derive(Deserialize)]
pub struct ConsentForm {
    #[serde(default)]
    csrf_token: String,
    request: String,
    decision: String,
}

pub async fn consent_post(
    state: web::Data<AppState>,
    session: MaybeSession,
    csrf: Csrf,
    nonce: CspNonce,
    StrictForm(form): StrictForm<ConsentForm>,
) -> Result<HttpResponse, AppError> {
    csrf.verify(&form.csrf_token)?;
    let answer = match form.decision.as_str() {
        "allow" => Answer::Allow,
        "deny" => Answer::Deny,
        _ => return Err(AppError::Validation("Choose Allow or Deny.".into())),
    };
    // Signed out meanwhile: the request goes through sign-in again, unanswered.
    let answer = if session.0.is_some() {
        answer
    } else {
        Answer::None
    };
    let outcome = authorize::authorize(&state, session.0.as_ref(), &form.request, answer).await?;
    respond(&state, &nonce, Some(&csrf), session.0.as_ref(), outcome)
}

#[derive(Template)]
#[template(path = "pages/logout_confirm.html")]
struct LogoutTemplate<'a> {
    ctx: PageCtx,
    request: &'a str,
}

fn signed_out(
    state: &AppState,
    nonce: &CspNonce,
    redirect: Option<String>,
) -> Result<HttpResponse, AppError> {
    let mut res = match redirect {
        Some(url) => see_other(&url),
        None => {
            let csrf_less = PageCtx {
                dev: state.settings.dev,
                nonce: nonce.0.clone(),
                csrf: String::new(),
                user_email: None,
            };
            html(
                StatusCode::OK,
                &NoticeTemplate {
                    ctx: csrf_less,
                    title: "You are signed out",
                    paragraphs: vec!["This browser is no longer signed in to Gatehouse.".into()],
                    link: Some(("Sign in again", "/login")),
                },
            )?
        }
    };
    let _ = res.add_cookie(&state.cookies.clear_session());
    Ok(res)
}

/// `GET /oauth2/logout`. The session it ends is the one the cookie names, live or
/// (device-bound, without its bound cookie) refused: ending is protective. A refused
/// one is asked about without its address on the page (nothing signed in shows).
pub async fn logout_get(
    state: web::Data<AppState>,
    req: HttpRequest,
    session: SessionToEnd,
    live: MaybeSession,
    csrf: Csrf,
    nonce: CspNonce,
    ctx: RequestContext,
) -> Result<HttpResponse, AppError> {
    let checked = logout::check(&state, session.0.as_ref(), req.query_string()).await?;
    match &session.0 {
        None => signed_out(&state, &nonce, checked.redirect),
        Some(current) if checked.hint_matches_session => {
            sessions::sign_out(&state, current.id, &ctx).await?;
            tracing::info!(session_id = %current.id, "signed out by the application");
            signed_out(&state, &nonce, checked.redirect)
        }
        Some(_) => {
            let page = LogoutTemplate {
                ctx: PageCtx::new(&state, &nonce, &csrf, live.0.map(|s| s.email)),
                request: &checked.query,
            };
            html(StatusCode::OK, &page)
        }
    }
}

#[derive(Deserialize)]
pub struct LogoutForm {
    #[serde(default)]
    csrf_token: String,
    #[serde(default)]
    request: String,
}

pub async fn logout_post(
    state: web::Data<AppState>,
    session: SessionToEnd,
    csrf: Csrf,
    nonce: CspNonce,
    ctx: RequestContext,
    StrictForm(form): StrictForm<LogoutForm>,
) -> Result<HttpResponse, AppError> {
    let checked = logout::check(&state, session.0.as_ref(), &form.request).await?;
    if let Some(current) = &session.0 {
        csrf.verify(&form.csrf_token)?;
        sessions::sign_out(&state, current.id, &ctx).await?;
        tracing::info!(session_id = %current.id, "signed out");
    }
    signed_out(&state, &nonce, checked.redirect)
}
