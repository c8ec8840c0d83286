//! Page handlers: extract, call one service, render. No SQL and no rules here.

use actix_web::http::{StatusCode, header};
use actix_web::{HttpResponse, web};
use askama::Template;
use serde::Deserialize;

use crate::auth::RequestContext;
use crate::auth::login::{self, NewBrowserSession, RegisterOutcome, SignInOutcome};
use crate::auth::sessions;
use crate::error::{AppError, human_wait};
use crate::state::AppState;
use crate::web::edge::CspNonce;
use crate::web::extract::{Csrf, MaybeSession, SessionToEnd};
use crate::web::forms::{StrictForm, StrictQuery};
use crate::web::upstreams::{UpstreamButton, buttons as upstream_buttons};

/// What every page's layout needs.
pub struct PageCtx {
    pub dev: bool,
    pub nonce: String,
    pub csrf: String,
    pub user_email: Option<String>,
}

impl PageCtx {
    pub fn new(
        state: &AppState,
        nonce: &CspNonce,
        csrf: &Csrf,
        user_email: Option<String>,
    ) -> Self {
        Self {
            dev: state.settings.dev,
            nonce: nonce.0.clone(),
            csrf: csrf.token().to_string(),
            user_email,
        }
    }
}

pub fn html(status: StatusCode, page: &impl Template) -> Result<HttpResponse, AppError> {
    let body = page.render().map_err(|e| AppError::Unexpected(e.into()))?;
    Ok(HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .body(body))
}

pub fn see_other(location: &str) -> HttpResponse {
    // 303, never 307/308: the browser must not re-send the credentials (RFC 9700 §4.12).
    HttpResponse::SeeOther()
        .insert_header((header::LOCATION, location))
        .finish()
}

/// `return_to` is honoured only as a path on this site: anything that could leave it
/// (`//evil`, `/\\evil`, `https:`, `javascript:`) falls back to the account page
/// (RFC 9700 §4.11, checklist W6).
pub fn safe_return_to(raw: Option<&str>) -> Option<String> {
    let raw = raw?;
    if !raw.starts_with('/') || raw.contains('\\') || raw.chars().any(char::is_control) {
        return None;
    }
    let base = url::Url::parse("https://gatehouse.invalid/").ok()?;
    let joined = base.join(raw).ok()?;
    let local = joined[url::Position::BeforePath..].to_string();
    // Judge the normalised result, not the input: dot-segments can turn `/.//evil`
    // into `//evil`, which a browser reads as another host. The result must also
    // resolve to this site when read again.
    if joined.origin() != base.origin()
        || local.starts_with("//")
        || base.join(&local).ok()?.origin() != base.origin()
    {
        return None;
    }
    Some(local)
}

/// Completes a sign-in in the browser: the session cookie, the device cookie, and
/// the pre-session and pending cookies spent.
pub fn signed_in(
    state: &AppState,
    new: NewBrowserSession,
    return_to: Option<&str>,
) -> HttpResponse {
    let target = safe_return_to(return_to).unwrap_or_else(|| "/account".into());
    let mut res = see_other(&target);
    set_signed_in_cookies(state, &mut res, new);
    res
}

pub fn set_signed_in_cookies(state: &AppState, res: &mut HttpResponse, new: NewBrowserSession) {
    let _ = res.add_cookie(&state.cookies.session_cookie(&new.token, new.persist_for));
    offer_binding(state, res, &new.token);
    // The device cookie outlives sign-outs: it is how the next sign-in from this
    // browser is recognised.
    let _ = res.add_cookie(&state.cookies.device_cookie(&new.device.0));
    // The pre-session that protected the form is spent.
    let mut spent = state.cookies.pre_session_cookie(String::new());
    spent.set_max_age(time::Duration::ZERO);
    let _ = res.add_cookie(&spent);
    let _ = res.add_cookie(&state.cookies.clear_pending());
}

/// Offers a browser that supports DBSC to bind the session behind `token` to a key
/// it keeps in hardware (`auth::dbsc`); others ignore the header.
pub fn offer_binding(
    state: &AppState,
    res: &mut HttpResponse,
    token: &crate::domain::SessionToken,
) {
    if let Ok(v) =
        header::HeaderValue::from_str(&crate::auth::dbsc::registration_header(state, token))
    {
        res.headers_mut().insert(
            header::HeaderName::from_static("secure-session-registration"),
            v,
        );
    }
}

#[derive(Template)]
#[template(path = "pages/error.html")]
pub struct ErrorTemplate<'a> {
    ctx: PageCtx,
    title: &'a str,
    message: &'a str,
    status: u16,
    /// A button on: label and link.
    pub action: Option<(&'a str, &'a str)>,
}

impl<'a> ErrorTemplate<'a> {
    pub fn new(
        state: &AppState,
        nonce: &CspNonce,
        title: &'a str,
        message: &'a str,
        status: StatusCode,
    ) -> Self {
        let ctx = PageCtx {
            dev: state.settings.dev,
            nonce: nonce.0.clone(),
            csrf: String::new(),
            user_email: None,
        };
        Self {
            ctx,
            title,
            message,
            status: status.as_u16(),
            action: None,
        }
    }
}

#[derive(Template)]
#[template(path = "pages/notice.html")]
pub struct NoticeTemplate<'a> {
    pub ctx: PageCtx,
    pub title: &'a str,
    pub paragraphs: Vec<String>,
    pub link: Option<(&'a str, &'a str)>,
}

pub async fn not_found() -> Result<HttpResponse, AppError> {
    Err(AppError::NotFound)
}

pub async fn home(session: MaybeSession) -> HttpResponse {
    see_other(if session.0.is_some() {
        "/account"
    } else {
        "/login"
    })
}

#[derive(Deserialize)]
pub struct ReturnToQuery {
    return_to: Option<String>,
    /// `login`: an app asked for a fresh sign-in (OIDC `prompt=login`, `max_age`),
    /// so the form is shown even to a signed-in browser.
    prompt: Option<String>,
}

#[derive(Template)]
#[template(path = "pages/login.html")]
struct LoginTemplate<'a> {
    ctx: PageCtx,
    email: &'a str,
    remember: bool,
    return_to: Option<String>,
    error: Option<String>,
    /// Whether "Sign in with a passkey" is offered (the server has a host name).
    passkeys: bool,
    /// "Continue with …", one form per upstream.
    upstreams: Vec<UpstreamButton>,
}

pub async fn login_page(
    state: web::Data<AppState>,
    session: MaybeSession,
    csrf: Csrf,
    nonce: CspNonce,
    StrictQuery(q): StrictQuery<ReturnToQuery>,
) -> Result<HttpResponse, AppError> {
    let return_to = safe_return_to(q.return_to.as_deref());
    let again = q.prompt.as_deref() == Some("login");
    if session.0.is_some() && !again {
        return Ok(see_other(return_to.as_deref().unwrap_or("/account")));
    }
    let page = LoginTemplate {
        ctx: PageCtx::new(&state, &nonce, &csrf, None),
        email: "",
        remember: false,
        return_to,
        error: None,
        passkeys: crate::auth::passkeys::available(&state),
        upstreams: upstream_buttons(&state).await?,
    };
    html(StatusCode::OK, &page)
}

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    csrf_token: String,
    email: String,
    password: String,
    remember: Option<String>,
    return_to: Option<String>,
}

pub async fn login_submit(
    state: web::Data<AppState>,
    previous: MaybeSession,
    csrf: Csrf,
    nonce: CspNonce,
    ctx: RequestContext,
    StrictForm(form): StrictForm<LoginForm>,
) -> Result<HttpResponse, AppError> {
    csrf.verify(&form.csrf_token)?;
    let remember = form.remember.is_some();
    let replaces = previous.0.map(|s| s.id);
    let outcome = login::sign_in(
        &state,
        &form.email,
        &form.password,
        remember,
        &ctx,
        replaces,
        safe_return_to(form.return_to.as_deref()),
    )
    .await?;
    let (status, error, retry_after) = match outcome {
        SignInOutcome::SignedIn(new) => {
            return Ok(signed_in(&state, new, form.return_to.as_deref()));
        }
        SignInOutcome::SecondFactor(pending) => {
            // Not signed in yet: the pending cookie names the half-finished sign-in,
            // which grants nothing until the second factor is proven.
            let mut res = see_other("/login/verify");
            let _ = res.add_cookie(&state.cookies.pending_cookie(&pending.token));
            return Ok(res);
        }
        SignInOutcome::Failed => (
            StatusCode::UNAUTHORIZED,
            "Incorrect e-mail address or password.".to_string(),
            None,
        ),
        SignInOutcome::Throttled { retry_after_secs } => (
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "Too many failed attempts. Please wait {} and try again.",
                human_wait(retry_after_secs)
            ),
            Some(retry_after_secs),
        ),
        SignInOutcome::Malformed(e) => (StatusCode::BAD_REQUEST, e.to_string(), None),
        SignInOutcome::Denied => (
            StatusCode::FORBIDDEN,
            crate::auth::login::DENIED.to_string(),
            None,
        ),
        SignInOutcome::Unverified { email } => {
            let page =
                UnverifiedTemplate::new(PageCtx::new(&state, &nonce, &csrf, None), email, None);
            return html(StatusCode::FORBIDDEN, &page);
        }
    };
    let page = LoginTemplate {
        ctx: PageCtx::new(&state, &nonce, &csrf, None),
        email: form.email.trim(),
        remember,
        return_to: safe_return_to(form.return_to.as_deref()),
        error: Some(error),
        passkeys: crate::auth::passkeys::available(&state),
        upstreams: upstream_buttons(&state).await?,
    };
    let mut res = html(status, &page)?;
    if let Some(secs) = retry_after
        && let Ok(v) = header::HeaderValue::from_str(&secs.to_string())
    {
        res.headers_mut().insert(header::RETRY_AFTER, v);
    }
    Ok(res)
}

#[derive(Template)]
#[template(path = "pages/unverified.html")]
pub struct UnverifiedTemplate {
    ctx: PageCtx,
    email: String,
    /// The upstream the person came through (`None`: a password).
    via: Option<String>,
}

impl UnverifiedTemplate {
    pub fn new(ctx: PageCtx, email: String, via: Option<String>) -> Self {
        Self { ctx, email, via }
    }
}

#[derive(Template)]
#[template(path = "pages/register.html")]
struct RegisterTemplate<'a> {
    ctx: PageCtx,
    email: &'a str,
    email_error: Option<String>,
    password_error: Option<String>,
    error: Option<String>,
    upstreams: Vec<UpstreamButton>,
}

pub async fn register_page(
    state: web::Data<AppState>,
    session: MaybeSession,
    csrf: Csrf,
    nonce: CspNonce,
) -> Result<HttpResponse, AppError> {
    if session.0.is_some() {
        return Ok(see_other("/account"));
    }
    let page = RegisterTemplate {
        ctx: PageCtx::new(&state, &nonce, &csrf, None),
        email: "",
        email_error: None,
        password_error: None,
        error: None,
        upstreams: upstream_buttons(&state).await?,
    };
    html(StatusCode::OK, &page)
}

#[derive(Deserialize)]
pub struct RegisterForm {
    #[serde(default)]
    csrf_token: String,
    email: String,
    password: String,
}

pub async fn register_submit(
    state: web::Data<AppState>,
    previous: MaybeSession,
    csrf: Csrf,
    nonce: CspNonce,
    ctx: RequestContext,
    StrictForm(form): StrictForm<RegisterForm>,
) -> Result<HttpResponse, AppError> {
    csrf.verify(&form.csrf_token)?;
    let mut page = RegisterTemplate {
        ctx: PageCtx::new(&state, &nonce, &csrf, None),
        email: form.email.trim(),
        email_error: None,
        password_error: None,
        error: None,
        upstreams: upstream_buttons(&state).await?,
    };
    let replaces = previous.0.map(|s| s.id);
    let status = match login::register(&state, &form.email, &form.password, &ctx, replaces).await? {
        RegisterOutcome::SignedIn(new) => return Ok(signed_in(&state, new, None)),
        RegisterOutcome::BadEmail(e) => {
            page.email_error = Some(e.to_string());
            StatusCode::BAD_REQUEST
        }
        RegisterOutcome::BadPassword(e) => {
            page.password_error = Some(e.to_string());
            StatusCode::BAD_REQUEST
        }
        RegisterOutcome::CheckInbox => {
            let page = NoticeTemplate {
                ctx: PageCtx::new(&state, &nonce, &csrf, None),
                title: "Check your inbox",
                paragraphs: vec![
                    format!("We sent a message to {}. Open the link in it to confirm the address and finish creating your account.", page.email),
                    "The link works for 24 hours. Nothing arrived? Check your spam folder, or try signing in to get a new link.".into(),
                ],
                link: Some(("Go to sign in", "/login")),
            };
            return html(StatusCode::OK, &page);
        }
        RegisterOutcome::Throttled { retry_after_secs } => {
            return Err(AppError::RateLimited { retry_after_secs });
        }
        RegisterOutcome::Taken => {
            page.error =
                Some("An account with this e-mail address already exists. Sign in instead.".into());
            StatusCode::CONFLICT
        }
    };
    html(status, &page)
}

#[derive(Deserialize)]
pub struct CsrfOnlyForm {
    #[serde(default)]
    pub csrf_token: String,
}

/// `POST /logout`. A device-bound session's request without its bound cookie ends
/// the session too: whoever holds the session cookie may end it.
pub async fn logout(
    state: web::Data<AppState>,
    session: SessionToEnd,
    csrf: Csrf,
    ctx: RequestContext,
    StrictForm(form): StrictForm<CsrfOnlyForm>,
) -> Result<HttpResponse, AppError> {
    let mut res = see_other("/login");
    if let Some(current) = session.0 {
        csrf.verify(&form.csrf_token)?;
        sessions::sign_out(&state, current.id, &ctx).await?;
        tracing::info!(session_id = %current.id, "signed out");
    }
    let _ = res.add_cookie(&state.cookies.clear_session());
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::safe_return_to;

    #[test]
    fn return_to_stays_on_this_site() {
        // W6
        assert_eq!(
            safe_return_to(Some("/account")).as_deref(),
            Some("/account")
        );
        assert_eq!(
            safe_return_to(Some("/account?tab=1")).as_deref(),
            Some("/account?tab=1")
        );
        for bad in [
            "https://evil.test",
            "//evil.test",
            "/\\evil.test",
            "javascript:alert(1)",
            "evil.test",
            "/\tevil",
            "",
            "\\\\evil.test",
            "/.//evil.test",
            "/x/..//evil.test",
            "/%2e//evil.test",
            "/..//evil.test",
        ] {
            assert_eq!(safe_return_to(Some(bad)), None, "{bad:?}");
        }
        assert_eq!(safe_return_to(Some("/../../x")).as_deref(), Some("/x"));
    }

    mod properties {
        use super::safe_return_to;
        use proptest::prelude::*;

        /// Strings built from the pieces open redirects are made of.
        fn hostile() -> impl Strategy<Value = String> {
            let piece = prop_oneof![
                Just("/"),
                Just("//"),
                Just("\\"),
                Just("."),
                Just(".."),
                Just("%2f"),
                Just("%2F"),
                Just("%5c"),
                Just("%2e"),
                Just("%00"),
                Just("@"),
                Just(":"),
                Just("http:"),
                Just("https://"),
                Just("evil.test"),
                Just("\t"),
                Just("\n"),
                Just("\r"),
                Just("#"),
                Just("?"),
                Just("&"),
                Just("="),
                Just("\u{3002}"),
                Just("\u{ff0f}"),
                Just("account"),
                Just(" "),
                Just("javascript:"),
                Just("\u{202e}"),
                Just("%09"),
            ];
            prop::collection::vec(piece, 0..10).prop_map(|v| v.concat())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4096))]

            /// W6: whatever is accepted is a path on this site, read again by a
            /// browser or by the URL standard.
            #[test]
            fn return_to_never_leaves_the_site(raw in prop_oneof![hostile(), any::<String>()]) {
                if let Some(local) = safe_return_to(Some(&raw)) {
                    prop_assert!(local.starts_with('/'), "{local:?}");
                    prop_assert!(!local.starts_with("//"), "{local:?}");
                    prop_assert!(!local.contains('\\'), "{local:?}");
                    prop_assert!(!local.chars().any(char::is_control), "{local:?}");
                    let base = url::Url::parse("https://gatehouse.test/").unwrap();
                    let again = base.join(&local).unwrap();
                    prop_assert_eq!(again.origin(), base.origin());
                    // And it is a fixed point: accepted once, it reads the same.
                    prop_assert_eq!(safe_return_to(Some(&local)), Some(local.clone()));
                }
            }
        }
    }
}
