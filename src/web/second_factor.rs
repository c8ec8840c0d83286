//! The second-factor pages: `/login/verify` (finishing a sign-in) and `/step-up`
//! (proving a second factor again for a sensitive action). Extract, call the
//! second-factor service, render.

use actix_web::http::{StatusCode, header};
use actix_web::{HttpResponse, web};
use askama::Template;
use serde::Deserialize;

use crate::auth::RequestContext;
use crate::auth::second_factor::{self, CodeOutcome, SendOutcome};
use crate::error::{AppError, human_wait};
use crate::state::AppState;
use crate::store::ChallengeRecord;
use crate::web::account::set_rotated_cookie;
use crate::web::edge::CspNonce;
use crate::web::extract::{Csrf, CurrentSession, MaybeSession, PendingCookie};
use crate::web::forms::{StrictForm, StrictQuery};
use crate::web::pages::{
    NoticeTemplate, PageCtx, html, safe_return_to, see_other, set_signed_in_cookies,
};

/// "a•••@example.com": enough to recognise one's own address on a shared screen.
fn masked(email: &str) -> String {
    match email.split_once('@') {
        Some((local, domain)) => {
            let first: String = local.chars().take(1).collect();
            format!("{first}•••@{domain}")
        }
        None => "your address".into(),
    }
}

#[derive(Template)]
#[template(path = "pages/login_verify.html")]
struct VerifyTemplate {
    ctx: PageCtx,
    /// `/login/verify` or `/step-up`.
    action: &'static str,
    title: &'static str,
    has_totp: bool,
    /// Whether "e-mail me a code" is offered: never to a person with an
    /// authenticator app or a passkey (checklist L7).
    offer_email: bool,
    email_code_live: bool,
    to: String,
    return_to: Option<String>,
    error: Option<String>,
    info: Option<String>,
    /// "30 days": the "Trust this browser" option, offered when finishing a sign-in
    /// (and turned on in the settings).
    trust_for: Option<String>,
    /// Whether the user has a passkey to use instead of a code.
    passkey: bool,
}

/// "30 days", "12 hours": how long trust lasts, as the checkbox says it.
fn trust_words(d: std::time::Duration) -> String {
    let days = d.as_secs() / 86400;
    match (days, d.as_secs() / 3600) {
        (1, _) => "1 day".into(),
        (d, _) if d > 1 => format!("{d} days"),
        (_, 1) => "1 hour".into(),
        (_, h) => format!("{} hours", h.max(1)),
    }
}

impl VerifyTemplate {
    fn new(ctx: PageCtx, action: &'static str, ch: &ChallengeRecord) -> Self {
        Self {
            ctx,
            action,
            title: if action == "/step-up" {
                "Confirm it's you"
            } else {
                "Two-step verification"
            },
            has_totp: ch.has_totp,
            offer_email: !second_factor::offers_stronger(ch),
            email_code_live: ch.email_code_live,
            // Before sign-in the address is masked (a shared screen); a signed-in
            // person sees their own address in full anyway.
            to: if action == "/step-up" {
                ch.email.clone()
            } else {
                masked(&ch.email)
            },
            return_to: None,
            error: None,
            info: None,
            trust_for: None,
            passkey: ch.has_passkey,
        }
    }

    /// The page that finishes a sign-in, with the trust option when it is on.
    fn sign_in(ctx: PageCtx, state: &AppState, ch: &ChallengeRecord) -> Self {
        let mut page = Self::new(ctx, "/login/verify", ch);
        page.trust_for = state.settings.mfa_trust_device.map(trust_words);
        page
    }
}

fn with_retry_after(mut res: HttpResponse, secs: u64) -> HttpResponse {
    if let Ok(v) = header::HeaderValue::from_str(&secs.to_string()) {
        res.headers_mut().insert(header::RETRY_AFTER, v);
    }
    res
}

/// The sign-in this browser was finishing is gone: start again.
fn start_again(
    state: &AppState,
    nonce: &CspNonce,
    csrf: &Csrf,
    why: &str,
) -> Result<HttpResponse, AppError> {
    let page = NoticeTemplate {
        ctx: PageCtx::new(state, nonce, csrf, None),
        title: "Please sign in again",
        paragraphs: vec![why.to_string()],
        link: Some(("Sign in", "/login")),
    };
    let mut res = html(StatusCode::BAD_REQUEST, &page)?;
    let _ = res.add_cookie(&state.cookies.clear_pending());
    Ok(res)
}

const EXPIRED: &str = "This sign-in was not finished in time, or was cancelled. Nothing was signed in; start again with your password.";
const TOO_MANY: &str =
    "Too many wrong codes for this sign-in, so it was cancelled. Start again with your password.";

pub async fn verify_page(
    state: web::Data<AppState>,
    PendingCookie(pending): PendingCookie,
    csrf: Csrf,
    nonce: CspNonce,
) -> Result<HttpResponse, AppError> {
    let found = match &pending {
        Some(token) => second_factor::pending(&state, token).await?,
        None => None,
    };
    let Some(ch) = found else {
        let mut res = see_other("/login");
        let _ = res.add_cookie(&state.cookies.clear_pending());
        return Ok(res);
    };
    let page = VerifyTemplate::sign_in(PageCtx::new(&state, &nonce, &csrf, None), &state, &ch);
    html(StatusCode::OK, &page)
}

#[derive(Deserialize)]
pub struct CodeForm {
    #[serde(default)]
    csrf_token: String,
    #[serde(default)]
    code: String,
    /// `verify` (the default) or `email` ("e-mail me a code").
    #[serde(default)]
    action: String,
    return_to: Option<String>,
    /// "Trust this browser" (at `/login/verify`).
    trust_browser: Option<String>,
}

pub async fn verify_submit(
    state: web::Data<AppState>,
    previous: MaybeSession,
    PendingCookie(pending): PendingCookie,
    csrf: Csrf,
    nonce: CspNonce,
    ctx: RequestContext,
    StrictForm(form): StrictForm<CodeForm>,
) -> Result<HttpResponse, AppError> {
    csrf.verify(&form.csrf_token)?;
    let found = match &pending {
        Some(token) => second_factor::pending(&state, token).await?,
        None => None,
    };
    let Some(ch) = found else {
        return start_again(&state, &nonce, &csrf, EXPIRED);
    };
    let mut page = VerifyTemplate::sign_in(PageCtx::new(&state, &nonce, &csrf, None), &state, &ch);
    if form.action == "email" {
        return send_code(&state, &ch, page).await;
    }
    let replaces = previous.0.map(|s| s.id);
    let trust = form.trust_browser.is_some();
    let (status, retry) = match second_factor::finish_sign_in(
        &state, &ch, &form.code, &ctx, replaces, trust,
    )
    .await?
    {
        CodeOutcome::Proven { done, completed } => {
            let target = safe_return_to(done.return_to.as_deref());
            if let Some(left) = completed.recovery_codes_left {
                // Worth a pause: the person should know how many are left.
                let target = target.unwrap_or_else(|| "/account".into());
                let paragraphs = vec![
                    format!("You signed in with a recovery code. It will not work again; {left} of ten are left."),
                    "If your authenticator app is lost, set it up again and make new recovery codes on the two-step verification page.".into(),
                ];
                let csrf = Csrf::for_rotated(&state, &done.session.token);
                let page = NoticeTemplate {
                    ctx: PageCtx::new(&state, &nonce, &csrf, Some(ch.email.clone())),
                    title: "Recovery code used",
                    paragraphs,
                    link: Some(("Continue", &target)),
                };
                let mut res = html(StatusCode::OK, &page)?;
                set_signed_in_cookies(&state, &mut res, done.session);
                return Ok(res);
            }
            let mut res = see_other(target.as_deref().unwrap_or("/account"));
            set_signed_in_cookies(&state, &mut res, done.session);
            return Ok(res);
        }
        CodeOutcome::Void => return start_again(&state, &nonce, &csrf, TOO_MANY),
        outcome => code_error(&mut page, outcome),
    };
    let res = html(status, &page)?;
    Ok(match retry {
        Some(secs) => with_retry_after(res, secs),
        None => res,
    })
}

/// The page's words for a code that did not work.
fn code_error<T>(page: &mut VerifyTemplate, outcome: CodeOutcome<T>) -> (StatusCode, Option<u64>) {
    match outcome {
        CodeOutcome::Wrong { tries_left } => {
            page.error = Some(format!(
                "That code is not right. {tries_left} {} left.",
                if tries_left == 1 { "try" } else { "tries" }
            ));
            (StatusCode::UNAUTHORIZED, None)
        }
        CodeOutcome::Throttled { retry_after_secs } => {
            page.error = Some(format!(
                "Too many wrong codes. Please wait {} and try again.",
                human_wait(retry_after_secs)
            ));
            (StatusCode::TOO_MANY_REQUESTS, Some(retry_after_secs))
        }
        CodeOutcome::PasskeyOnly => {
            page.error = Some(
                "This account proves itself with a passkey: use “Use a passkey” to continue."
                    .into(),
            );
            (StatusCode::BAD_REQUEST, None)
        }
        CodeOutcome::Malformed => {
            page.error = Some(if page.has_totp {
                "Enter the 6-digit code from your authenticator app, or a recovery code (xxxxx-xxxxx).".into()
            } else {
                "Enter the 6-digit code we e-mailed you.".into()
            });
            (StatusCode::BAD_REQUEST, None)
        }
        CodeOutcome::Proven { .. } | CodeOutcome::Void => (StatusCode::OK, None),
    }
}

async fn send_code(
    state: &AppState,
    ch: &ChallengeRecord,
    mut page: VerifyTemplate,
) -> Result<HttpResponse, AppError> {
    match second_factor::send_code(state, ch).await? {
        SendOutcome::Sent => {
            page.email_code_live = true;
            page.info = Some(format!(
                "We sent a 6-digit code to {}. It works for 10 minutes; a new one replaces it.",
                page.to
            ));
            html(StatusCode::OK, &page)
        }
        SendOutcome::Throttled { retry_after_secs } => {
            page.error = Some(format!(
                "We have sent several codes already. Please wait {} before asking for another.",
                human_wait(retry_after_secs)
            ));
            let res = html(StatusCode::TOO_MANY_REQUESTS, &page)?;
            Ok(with_retry_after(res, retry_after_secs))
        }
        SendOutcome::NotOffered => {
            page.error = Some(if page.has_totp {
                "No code is sent by e-mail to an account with an authenticator app: use a code from the app, or one of your recovery codes.".into()
            } else {
                "No code is sent by e-mail to an account with a passkey: use your passkey.".into()
            });
            html(StatusCode::BAD_REQUEST, &page)
        }
        SendOutcome::Void => Err(AppError::Validation(EXPIRED.into())),
    }
}

#[derive(Deserialize)]
pub struct StepUpQuery {
    return_to: Option<String>,
}

pub async fn step_up_page(
    state: web::Data<AppState>,
    CurrentSession(session): CurrentSession,
    csrf: Csrf,
    nonce: CspNonce,
    StrictQuery(q): StrictQuery<StepUpQuery>,
) -> Result<HttpResponse, AppError> {
    let ch = second_factor::step_up_challenge(&state, &session).await?;
    let mut page = VerifyTemplate::new(
        PageCtx::new(&state, &nonce, &csrf, Some(session.email.clone())),
        "/step-up",
        &ch,
    );
    page.return_to = safe_return_to(q.return_to.as_deref());
    html(StatusCode::OK, &page)
}

pub async fn step_up_submit(
    state: web::Data<AppState>,
    CurrentSession(session): CurrentSession,
    csrf: Csrf,
    nonce: CspNonce,
    ctx: RequestContext,
    StrictForm(form): StrictForm<CodeForm>,
) -> Result<HttpResponse, AppError> {
    csrf.verify(&form.csrf_token)?;
    let return_to = safe_return_to(form.return_to.as_deref());
    if form.action == "email" {
        let ch = second_factor::step_up_challenge(&state, &session).await?;
        let mut page = VerifyTemplate::new(
            PageCtx::new(&state, &nonce, &csrf, Some(session.email.clone())),
            "/step-up",
            &ch,
        );
        page.return_to = return_to;
        return send_code(&state, &ch, page).await;
    }
    let outcome = second_factor::step_up(&state, &session, &form.code, &ctx).await?;
    if let CodeOutcome::Proven {
        done: token,
        completed,
    } = outcome
    {
        let target = return_to.unwrap_or_else(|| "/account".into());
        if let Some(left) = completed.recovery_codes_left {
            // Worth a pause: the person should know how many are left.
            let csrf = Csrf::for_rotated(&state, &token);
            let page = NoticeTemplate {
                ctx: PageCtx::new(&state, &nonce, &csrf, Some(session.email.clone())),
                title: "Recovery code used",
                paragraphs: vec![format!(
                    "You confirmed it's you with a recovery code. It will not work again; {left} of ten are left."
                )],
                link: Some(("Continue", &target)),
            };
            let mut res = html(StatusCode::OK, &page)?;
            set_rotated_cookie(&state, &mut res, &session, &token);
            return Ok(res);
        }
        // Back to the page that asked, with a GET: the person submits again there.
        let mut res = see_other(&target);
        set_rotated_cookie(&state, &mut res, &session, &token);
        return Ok(res);
    }
    let ch = second_factor::step_up_challenge(&state, &session).await?;
    let mut page = VerifyTemplate::new(
        PageCtx::new(&state, &nonce, &csrf, Some(session.email.clone())),
        "/step-up",
        &ch,
    );
    page.return_to = return_to;
    if let CodeOutcome::Void = outcome {
        page.error = Some("Too many wrong codes. Wait a few minutes, then try again.".into());
        return html(StatusCode::UNAUTHORIZED, &page);
    }
    let (status, retry) = code_error(&mut page, outcome);
    let res = html(status, &page)?;
    Ok(match retry {
        Some(secs) => with_retry_after(res, secs),
        None => res,
    })
}
