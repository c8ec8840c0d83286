//! Signing in with an upstream over HTTP: the "Continue with …" buttons' target,
//! the callback, the page that offers to link an existing account, the
//! upstream's back-channel logout, and /account/connections. Extract, call
//! `auth::federation`, render.

use actix_web::http::{StatusCode, header};
use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use askama::Template;
use serde::Deserialize;

use crate::auth::RequestContext;
use crate::auth::describe::when;
use crate::auth::federation::{self, Callback, CallbackParams, Refusal, linking, logout};
use crate::auth::login::SignInOutcome;
use crate::error::{AppError, human_wait};
use crate::state::AppState;
use crate::store::{SessionRecord, Upstream};
use crate::web::edge::CspNonce;
use crate::web::extract::{Csrf, CurrentSession, MaybeSession};
use crate::web::forms::{StrictForm, StrictQuery};
use crate::web::pages::{
    ErrorTemplate, NoticeTemplate, PageCtx, UnverifiedTemplate, html, safe_return_to, see_other,
    signed_in,
};

/// One "Continue with …" button.
pub struct UpstreamButton {
    pub name: String,
    pub label: String,
}

/// The buttons for /login and /register, one form per upstream.
pub async fn buttons(state: &AppState) -> Result<Vec<UpstreamButton>, AppError> {
    Ok(federation::buttons(state)
        .await?
        .into_iter()
        .map(|u| UpstreamButton {
            name: u.name,
            label: u.label,
        })
        .collect())
}

/// What pages call an upstream: its label, or its name if it is gone.
async fn label_of(state: &AppState, name: &str) -> String {
    match state.store.upstream_by_name(name).await {
        Ok(Some((up, _))) => up.label,
        _ => name.to_string(),
    }
}

/// The page for a refusal. Nothing was created or linked.
fn refusal_page(
    state: &AppState,
    nonce: &CspNonce,
    refusal: &Refusal,
    label: &str,
) -> Result<HttpResponse, AppError> {
    let back_to_sign_in = ("Back to sign in", "/login");
    let back_to_connections = ("Back to connections", linking::PAGE);
    let (status, title, message, action) = match refusal {
        Refusal::BadState => (
            StatusCode::BAD_REQUEST,
            "This sign-in cannot be finished".to_string(),
            "It was already used, it took longer than 10 minutes, or it was started in another browser. Nothing was changed. Start again from the sign-in page.".to_string(),
            back_to_sign_in,
        ),
        Refusal::Cancelled => (
            StatusCode::BAD_REQUEST,
            "Sign-in cancelled".to_string(),
            format!("The sign-in with {label} was cancelled, so nothing was changed. You can try again or sign in another way."),
            back_to_sign_in,
        ),
        Refusal::Unreachable => (
            StatusCode::BAD_GATEWAY,
            format!("{label} did not answer"),
            format!("{label} could not be reached, so nothing was changed. Try again in a moment, or sign in another way."),
            back_to_sign_in,
        ),
        Refusal::Rejected => (
            StatusCode::BAD_REQUEST,
            format!("Signing in with {label} did not work"),
            format!("The answer from {label} could not be accepted, so nothing was changed. Start again from the sign-in page."),
            back_to_sign_in,
        ),
        Refusal::NoAddress => (
            StatusCode::BAD_REQUEST,
            "No e-mail address".to_string(),
            format!("{label} did not tell us an e-mail address, which a new account needs. Nothing was created."),
            back_to_sign_in,
        ),
        Refusal::TakenByOther => (
            StatusCode::CONFLICT,
            "Connected to another account".to_string(),
            format!("This {label} account is already connected to a different Gatehouse account, so it was not connected to yours."),
            back_to_connections,
        ),
        Refusal::AlreadyLinked => (
            StatusCode::CONFLICT,
            format!("Already connected to {label}"),
            format!("This account already has a {label} account connected. Remove that one first to connect a different one."),
            back_to_connections,
        ),
        Refusal::WrongSession => (
            StatusCode::BAD_REQUEST,
            "Nothing was connected".to_string(),
            "This browser is not signed in to the account the connection was for, or signed in to it before the connection was started. Nothing was connected; start again.".to_string(),
            back_to_sign_in,
        ),
        Refusal::AccountUnavailable => (
            StatusCode::FORBIDDEN,
            "This account cannot sign in".to_string(),
            format!("Signing in with {label} is not possible for this account."),
            back_to_sign_in,
        ),
        Refusal::Throttled { retry_after_secs } => (
            StatusCode::TOO_MANY_REQUESTS,
            "Too many new accounts".to_string(),
            format!(
                "Too many accounts were created from your network. Please wait {} and try again.",
                human_wait(*retry_after_secs)
            ),
            back_to_sign_in,
        ),
    };
    let mut page = ErrorTemplate::new(state, nonce, &title, &message, status);
    page.action = Some(action);
    let mut res = html(status, &page)?;
    if let Refusal::Throttled { retry_after_secs } = refusal
        && let Ok(v) = header::HeaderValue::from_str(&retry_after_secs.to_string())
    {
        res.headers_mut().insert(header::RETRY_AFTER, v);
    }
    Ok(res)
}

#[derive(Deserialize)]
pub struct StartForm {
    #[serde(default)]
    csrf_token: String,
    return_to: Option<String>,
}

/// `POST /login/upstream/{name}`: a CSRF-protected form (a third site cannot start a
/// sign-in, checklist U8) that sends the browser to the upstream.
pub async fn start(
    state: web::Data<AppState>,
    csrf: Csrf,
    nonce: CspNonce,
    path: web::Path<String>,
    StrictForm(form): StrictForm<StartForm>,
) -> Result<HttpResponse, AppError> {
    csrf.verify(&form.csrf_token)?;
    let name = path.into_inner();
    let return_to = safe_return_to(form.return_to.as_deref());
    match federation::start(&state, &name, return_to, None).await? {
        Ok(started) => Ok(leave_for(&state, started)),
        Err(refusal) => refusal_page(&state, &nonce, &refusal, &label_of(&state, &name).await),
    }
}

/// To the upstream, with the round trip's cookie.
fn leave_for(state: &AppState, started: federation::Started) -> HttpResponse {
    let mut res = see_other(&started.location);
    let _ = res.add_cookie(
        &state
            .cookies
            .upstream_cookie(state.cookies.upstream_name, &started.cookie),
    );
    res
}

/// What an upstream puts on the callback (RFC 6749 §4.1.2, RFC 9207 `iss`); other
/// parameters some upstreams add (`session_state`, `scope`) are ignored.
#[derive(Deserialize)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    iss: Option<String>,
    error: Option<String>,
}

#[derive(Template)]
#[template(path = "pages/upstream_link.html")]
struct LinkOfferTemplate {
    ctx: PageCtx,
    email: String,
    label: String,
    /// Where signing in returns: the page that makes the link.
    finish: String,
    passkeys: bool,
}

/// `GET /login/upstream/{name}/callback`.
#[allow(clippy::too_many_arguments)]
pub async fn callback(
    req: HttpRequest,
    state: web::Data<AppState>,
    session: MaybeSession,
    csrf: Csrf,
    nonce: CspNonce,
    ctx: RequestContext,
    path: web::Path<String>,
    StrictQuery(q): StrictQuery<CallbackQuery>,
) -> Result<HttpResponse, AppError> {
    let name = path.into_inner();
    let cookie = req
        .cookie(state.cookies.upstream_name)
        .map(|c| c.value().to_string())
        .filter(|v| !v.is_empty());
    let params = CallbackParams {
        code: q.code,
        state: q.state,
        iss: q.iss,
        error: q.error,
    };
    let outcome = federation::callback(
        &state,
        &name,
        params,
        cookie.as_deref(),
        session.0.as_ref(),
        &ctx,
    )
    .await?;
    let mut res = match outcome {
        Callback::SignIn { outcome, return_to } => {
            sign_in_outcome(&state, &nonce, &csrf, outcome, return_to.as_deref(), &name).await?
        }
        Callback::CheckInbox { email } => {
            let page = NoticeTemplate {
                ctx: PageCtx::new(&state, &nonce, &csrf, None),
                title: "Check your inbox",
                paragraphs: vec![
                    format!("We sent a message to {email}. Open the link in it to confirm the address and finish creating your account."),
                    "The link works for 24 hours. Nothing arrived? Check your spam folder, or try signing in to get a new link.".into(),
                ],
                link: Some(("Go to sign in", "/login")),
            };
            html(StatusCode::OK, &page)?
        }
        Callback::OfferLink { cookie, email, .. } => {
            let page = LinkOfferTemplate {
                ctx: PageCtx::new(&state, &nonce, &csrf, None),
                email,
                label: label_of(&state, &name).await,
                finish: format!("/login/upstream/{name}/link"),
                passkeys: crate::auth::passkeys::available(&state),
            };
            let mut res = html(StatusCode::OK, &page)?;
            let _ = res.add_cookie(
                &state
                    .cookies
                    .upstream_cookie(state.cookies.link_name, &cookie),
            );
            res
        }
        Callback::Connected => see_other(&format!("{}?connected={name}", linking::PAGE)),
        Callback::Refused(refusal) => {
            refusal_page(&state, &nonce, &refusal, &label_of(&state, &name).await)?
        }
    };
    // Single use: the round trip's cookie is spent whatever happened.
    let _ = res.add_cookie(&state.cookies.clear_upstream(state.cookies.upstream_name));
    Ok(res)
}

/// A sign-in's outcome, told exactly as `/login` tells it (same cookies, same
/// redirects, same pages).
async fn sign_in_outcome(
    state: &AppState,
    nonce: &CspNonce,
    csrf: &Csrf,
    outcome: SignInOutcome,
    return_to: Option<&str>,
    name: &str,
) -> Result<HttpResponse, AppError> {
    let (status, message) = match outcome {
        SignInOutcome::SignedIn(new) => return Ok(signed_in(state, new, return_to)),
        SignInOutcome::SecondFactor(pending) => {
            // Not signed in yet: Gatehouse's own second factor, at /login/verify.
            let mut res = see_other("/login/verify");
            let _ = res.add_cookie(&state.cookies.pending_cookie(&pending.token));
            return Ok(res);
        }
        SignInOutcome::Unverified { email } => {
            let via = Some(label_of(state, name).await);
            let page = UnverifiedTemplate::new(PageCtx::new(state, nonce, csrf, None), email, via);
            return html(StatusCode::FORBIDDEN, &page);
        }
        SignInOutcome::Throttled { retry_after_secs } => {
            return Err(AppError::RateLimited { retry_after_secs });
        }
        SignInOutcome::Denied => (
            StatusCode::FORBIDDEN,
            crate::auth::login::DENIED.to_string(),
        ),
        SignInOutcome::Failed | SignInOutcome::Malformed(_) => (
            StatusCode::FORBIDDEN,
            format!(
                "Signing in with {} is not possible for this account.",
                label_of(state, name).await
            ),
        ),
    };
    let mut page = ErrorTemplate::new(state, nonce, "Sign-in refused", &message, status);
    page.action = Some(("Back to sign in", "/login"));
    html(status, &page)
}

/// `GET /login/upstream/{name}/link`: where signing in to the offered account
/// returns. Links only if this browser now holds a session of that account begun
/// after the offer (checklist U1).
pub async fn link_finish(
    req: HttpRequest,
    state: web::Data<AppState>,
    session: MaybeSession,
    nonce: CspNonce,
    ctx: RequestContext,
    path: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    let name = path.into_inner();
    let cookie = req
        .cookie(state.cookies.link_name)
        .map(|c| c.value().to_string())
        .filter(|v| !v.is_empty());
    let mut res =
        match linking::finish_pending(&state, &name, cookie.as_deref(), session.0.as_ref(), &ctx)
            .await?
        {
            Ok(return_to) => match safe_return_to(return_to.as_deref()) {
                Some(to) => see_other(&to),
                None => see_other(&format!("{}?connected={name}", linking::PAGE)),
            },
            Err(refusal) => refusal_page(&state, &nonce, &refusal, &label_of(&state, &name).await)?,
        };
    let _ = res.add_cookie(&state.cookies.clear_upstream(state.cookies.link_name));
    Ok(res)
}

#[derive(Deserialize)]
pub struct LogoutForm {
    #[serde(default)]
    logout_token: String,
}

/// `POST /login/upstream/{name}/backchannel-logout`: called by the upstream, not a
/// browser (no session, no CSRF). 200 when the token is good, whether or not a
/// session matched; 400 with JSON when not (Back-Channel Logout 1.0 §2.8).
pub async fn backchannel_logout(
    state: web::Data<AppState>,
    path: web::Path<String>,
    StrictForm(form): StrictForm<LogoutForm>,
) -> HttpResponse {
    let mut res = match logout::receive(&state, &path.into_inner(), &form.logout_token).await {
        Ok(_) => HttpResponse::Ok().finish(),
        Err(e) => e.error_response(),
    };
    res.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    res
}

/// One linked upstream as the page shows it.
struct LinkedView {
    name: String,
    label: String,
    email: Option<String>,
    last_used: String,
}

#[derive(Template)]
#[template(path = "pages/account_connections.html")]
struct ConnectionsTemplate {
    ctx: PageCtx,
    linked: Vec<LinkedView>,
    others: Vec<UpstreamButton>,
    fresh: bool,
    info: Option<String>,
}

async fn connections_page(
    state: &AppState,
    session: &SessionRecord,
    csrf: &Csrf,
    nonce: &CspNonce,
    info: Option<String>,
) -> Result<ConnectionsTemplate, AppError> {
    let found = linking::connections(state, session).await?;
    Ok(ConnectionsTemplate {
        ctx: PageCtx::new(state, nonce, csrf, Some(session.email.clone())),
        linked: found
            .linked
            .into_iter()
            .map(|c| LinkedView {
                name: c.upstream_name,
                label: c.label,
                email: c.email,
                last_used: when(c.last_used_at),
            })
            .collect(),
        others: found
            .others
            .into_iter()
            .map(|u: Upstream| UpstreamButton {
                name: u.name,
                label: u.label,
            })
            .collect(),
        fresh: crate::auth::second_factor::is_fresh(state, session).await?,
        info,
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectionsQuery {
    connected: Option<String>,
}

/// `GET /account/connections`.
pub async fn connections(
    state: web::Data<AppState>,
    CurrentSession(session): CurrentSession,
    csrf: Csrf,
    nonce: CspNonce,
    StrictQuery(q): StrictQuery<ConnectionsQuery>,
) -> Result<HttpResponse, AppError> {
    let info = match q.connected {
        Some(name) => Some(format!(
            "{} is connected: you can sign in with it from now on.",
            label_of(&state, &name).await
        )),
        None => None,
    };
    let page = connections_page(&state, &session, &csrf, &nonce, info).await?;
    html(StatusCode::OK, &page)
}

#[derive(Deserialize)]
pub struct ConnectionForm {
    #[serde(default)]
    csrf_token: String,
}

/// `POST /account/connections/{name}/connect`: the round trip, for this account,
/// after a recent second factor (checklist U7).
pub async fn connect(
    state: web::Data<AppState>,
    CurrentSession(session): CurrentSession,
    csrf: Csrf,
    nonce: CspNonce,
    path: web::Path<String>,
    StrictForm(form): StrictForm<ConnectionForm>,
) -> Result<HttpResponse, AppError> {
    csrf.verify(&form.csrf_token)?;
    let name = path.into_inner();
    match linking::start_connect(&state, &session, &name).await? {
        Ok(started) => Ok(leave_for(&state, started)),
        Err(refusal) => refusal_page(&state, &nonce, &refusal, &label_of(&state, &name).await),
    }
}

/// `POST /account/connections/{name}/remove`: after a recent second factor; never
/// the last way to sign in (409, checklist U7).
pub async fn remove(
    state: web::Data<AppState>,
    CurrentSession(session): CurrentSession,
    csrf: Csrf,
    nonce: CspNonce,
    ctx: RequestContext,
    path: web::Path<String>,
    StrictForm(form): StrictForm<ConnectionForm>,
) -> Result<HttpResponse, AppError> {
    csrf.verify(&form.csrf_token)?;
    let label = linking::unlink(&state, &session, &path.into_inner(), &ctx).await?;
    let info =
        format!("{label} is no longer connected: it cannot sign in to this account any more.");
    let page = connections_page(&state, &session, &csrf, &nonce, Some(info)).await?;
    html(StatusCode::OK, &page)
}
