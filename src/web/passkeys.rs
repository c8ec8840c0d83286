//! Passkeys over HTTP: the `/account/passkeys` page (list, rename, remove), and the
//! JSON ceremony endpoints under `/webauthn/` that `static/js/passkeys.js` calls
//! (each pair: options, then the browser's answer). Every JSON endpoint takes the
//! page's CSRF token in its body and answers errors as RFC 9457 problem JSON.

use actix_web::http::{StatusCode, header};
use actix_web::{HttpResponse, web};
use askama::Template;
use serde::Deserialize;
use webauthn_rs::prelude::{PublicKeyCredential, RegisterPublicKeyCredential};

use crate::auth::describe::when;
use crate::auth::{RequestContext, passkeys, second_factor};
use crate::error::AppError;
use crate::state::AppState;
use crate::store::SessionRecord;
use crate::web::account::set_rotated_cookie;
use crate::web::edge::CspNonce;
use crate::web::extract::{Csrf, CurrentSession, MaybeSession, PendingCookie};
use crate::web::forms::{StrictForm, StrictJson, StrictQuery};
use crate::web::pages::{PageCtx, html, safe_return_to, set_signed_in_cookies};

/// One passkey as its page shows it.
struct PasskeyView {
    id: String,
    name: String,
    created: String,
    last_used: Option<String>,
    synced: bool,
    suspected: Option<String>,
}

#[derive(Template)]
#[template(path = "pages/account_passkeys.html")]
struct PasskeysTemplate {
    ctx: PageCtx,
    available: bool,
    passkeys: Vec<PasskeyView>,
    fresh: bool,
    error: Option<String>,
    info: Option<String>,
}

async fn page(
    state: &AppState,
    session: &SessionRecord,
    csrf: &Csrf,
    nonce: &CspNonce,
    error: Option<String>,
    info: Option<String>,
) -> Result<PasskeysTemplate, AppError> {
    let passkeys = passkeys::list(state, session.user_id)
        .await?
        .into_iter()
        .map(|p| PasskeyView {
            id: p.id.to_string(),
            name: p.name,
            created: when(p.created_at),
            last_used: p.last_used_at.map(when),
            synced: p.backup_state,
            suspected: p.clone_suspected_at.map(when),
        })
        .collect();
    Ok(PasskeysTemplate {
        ctx: PageCtx::new(state, nonce, csrf, Some(session.email.clone())),
        available: passkeys::available(state),
        passkeys,
        fresh: second_factor::is_fresh(state, session).await?,
        error,
        info,
    })
}

pub async fn passkeys_page(
    state: web::Data<AppState>,
    CurrentSession(session): CurrentSession,
    csrf: Csrf,
    nonce: CspNonce,
    StrictQuery(q): StrictQuery<AddedQuery>,
) -> Result<HttpResponse, AppError> {
    // After the script added one, it comes back here to show the list.
    let info = q
        .added
        .as_deref()
        .map(|_| "Your passkey was added. You can sign in with it from now on.".to_string());
    let p = page(&state, &session, &csrf, &nonce, None, info).await?;
    html(StatusCode::OK, &p)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddedQuery {
    added: Option<String>,
}

#[derive(Deserialize)]
pub struct PasskeyForm {
    #[serde(default)]
    csrf_token: String,
    /// `rename` or `remove`.
    action: String,
    id: String,
    #[serde(default)]
    name: String,
}

/// Rename or remove (each after a recent second factor).
pub async fn passkeys_submit(
    state: web::Data<AppState>,
    CurrentSession(session): CurrentSession,
    csrf: Csrf,
    nonce: CspNonce,
    ctx: RequestContext,
    StrictForm(form): StrictForm<PasskeyForm>,
) -> Result<HttpResponse, AppError> {
    csrf.verify(&form.csrf_token)?;
    let id = uuid::Uuid::parse_str(&form.id).map_err(|_| AppError::NotFound)?;
    let outcome = match form.action.as_str() {
        "rename" => passkeys::rename(&state, &session, id, &form.name)
            .await
            .map(|name| (format!("The passkey is now called “{name}”."), None)),
        "remove" => passkeys::remove(&state, &session, id, &ctx)
            .await
            .map(|(name, token)| {
                (
                    format!("The passkey “{name}” was removed. It no longer signs in, and your other devices were signed out."),
                    Some(token),
                )
            }),
        _ => Err(AppError::Validation("Unknown action.".into())),
    };
    match outcome {
        Ok((info, None)) => {
            let p = page(&state, &session, &csrf, &nonce, None, Some(info)).await?;
            html(StatusCode::OK, &p)
        }
        Ok((info, Some(token))) => {
            // The session has a new cookie token: the page's forms carry its CSRF.
            let csrf = Csrf::for_rotated(&state, &token);
            let p = page(&state, &session, &csrf, &nonce, None, Some(info)).await?;
            let mut res = html(StatusCode::OK, &p)?;
            set_rotated_cookie(&state, &mut res, &session, &token);
            Ok(res)
        }
        Err(AppError::Validation(message)) => {
            let p = page(&state, &session, &csrf, &nonce, Some(message), None).await?;
            html(StatusCode::BAD_REQUEST, &p)
        }
        Err(e) => Err(e),
    }
}

// ---------------------------------------------------------------- JSON ceremonies

fn json(value: &impl serde::Serialize) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(value)
}

/// Where the browser goes next.
#[derive(serde::Serialize)]
struct Next<'a> {
    redirect: &'a str,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptionsBody {
    csrf_token: String,
    /// For sign-in: the browser's autofill (conditional mediation) rather than a
    /// button.
    #[serde(default)]
    conditional: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterBody {
    csrf_token: String,
    ceremony: String,
    name: String,
    credential: RegisterPublicKeyCredential,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssertionBody {
    csrf_token: String,
    ceremony: String,
    credential: PublicKeyCredential,
    #[serde(default)]
    remember: bool,
    #[serde(default)]
    return_to: Option<String>,
    /// "Trust this browser", when finishing a sign-in.
    #[serde(default)]
    trust_browser: bool,
}

/// `POST /webauthn/register/options`
pub async fn register_options(
    state: web::Data<AppState>,
    CurrentSession(session): CurrentSession,
    csrf: Csrf,
    ctx: RequestContext,
    StrictJson(body): StrictJson<OptionsBody>,
) -> Result<HttpResponse, AppError> {
    csrf.verify(&body.csrf_token)?;
    Ok(json(
        &passkeys::registration_options(&state, &session, &ctx).await?,
    ))
}

/// `POST /webauthn/register`
pub async fn register(
    state: web::Data<AppState>,
    CurrentSession(session): CurrentSession,
    csrf: Csrf,
    ctx: RequestContext,
    StrictJson(body): StrictJson<RegisterBody>,
) -> Result<HttpResponse, AppError> {
    csrf.verify(&body.csrf_token)?;
    let (_, token) = passkeys::finish_registration(
        &state,
        &session,
        &body.ceremony,
        &body.name,
        &body.credential,
        &ctx,
    )
    .await?;
    let mut res = json(&Next {
        redirect: "/account/passkeys?added=1",
    });
    // A second-factor change gives this session a new cookie token.
    set_rotated_cookie(&state, &mut res, &session, &token);
    Ok(res)
}

/// `POST /webauthn/sign-in/options`
pub async fn sign_in_options(
    state: web::Data<AppState>,
    csrf: Csrf,
    ctx: RequestContext,
    StrictJson(body): StrictJson<OptionsBody>,
) -> Result<HttpResponse, AppError> {
    csrf.verify(&body.csrf_token)?;
    Ok(json(
        &passkeys::sign_in_options(&state, &ctx, body.conditional).await?,
    ))
}

/// `POST /webauthn/sign-in`: a new session for this browser (its earlier one ends).
pub async fn sign_in(
    state: web::Data<AppState>,
    previous: MaybeSession,
    csrf: Csrf,
    ctx: RequestContext,
    StrictJson(body): StrictJson<AssertionBody>,
) -> Result<HttpResponse, AppError> {
    csrf.verify(&body.csrf_token)?;
    let return_to = safe_return_to(body.return_to.as_deref());
    let new = passkeys::finish_sign_in(
        &state,
        passkeys::PasskeySignIn {
            ceremony: &body.ceremony,
            credential: &body.credential,
            remember_me: body.remember,
            return_to: return_to.clone(),
            replaces: previous.0.map(|s| s.id),
        },
        &ctx,
    )
    .await?;
    let target = return_to.unwrap_or_else(|| "/account".into());
    let mut res = json(&Next { redirect: &target });
    set_signed_in_cookies(&state, &mut res, new);
    Ok(res)
}

const EXPIRED_SIGN_IN: &str =
    "This sign-in was not finished in time, or was cancelled. Start again with your password.";

/// The half-finished sign-in this browser's pending cookie names.
async fn waiting_sign_in(
    state: &AppState,
    pending: Option<&crate::domain::PendingToken>,
) -> Result<crate::store::ChallengeRecord, AppError> {
    let found = match pending {
        Some(token) => second_factor::pending(state, token).await?,
        None => None,
    };
    found.ok_or_else(|| AppError::Validation(EXPIRED_SIGN_IN.into()))
}

/// `POST /webauthn/verify/options`: for the sign-in waiting at `/login/verify`.
pub async fn verify_options(
    state: web::Data<AppState>,
    PendingCookie(pending): PendingCookie,
    csrf: Csrf,
    ctx: RequestContext,
    StrictJson(body): StrictJson<OptionsBody>,
) -> Result<HttpResponse, AppError> {
    csrf.verify(&body.csrf_token)?;
    let ch = waiting_sign_in(&state, pending.as_ref()).await?;
    Ok(json(
        &passkeys::second_factor_options(&state, &ch, &ctx).await?,
    ))
}

/// `POST /webauthn/verify`
pub async fn verify(
    state: web::Data<AppState>,
    previous: MaybeSession,
    PendingCookie(pending): PendingCookie,
    csrf: Csrf,
    ctx: RequestContext,
    StrictJson(body): StrictJson<AssertionBody>,
) -> Result<HttpResponse, AppError> {
    csrf.verify(&body.csrf_token)?;
    let ch = waiting_sign_in(&state, pending.as_ref()).await?;
    let done = passkeys::finish_second_factor(
        &state,
        &ch,
        &body.ceremony,
        &body.credential,
        &ctx,
        previous.0.map(|s| s.id),
        body.trust_browser,
    )
    .await?;
    let target = safe_return_to(done.return_to.as_deref()).unwrap_or_else(|| "/account".into());
    let mut res = json(&Next { redirect: &target });
    set_signed_in_cookies(&state, &mut res, done.session);
    Ok(res)
}

/// `POST /webauthn/step-up/options`
pub async fn step_up_options(
    state: web::Data<AppState>,
    CurrentSession(session): CurrentSession,
    csrf: Csrf,
    ctx: RequestContext,
    StrictJson(body): StrictJson<OptionsBody>,
) -> Result<HttpResponse, AppError> {
    csrf.verify(&body.csrf_token)?;
    Ok(json(
        &passkeys::step_up_options(&state, &session, &ctx).await?,
    ))
}

/// `POST /webauthn/step-up`: the session is raised under a new cookie token.
pub async fn step_up(
    state: web::Data<AppState>,
    CurrentSession(session): CurrentSession,
    csrf: Csrf,
    ctx: RequestContext,
    StrictJson(body): StrictJson<AssertionBody>,
) -> Result<HttpResponse, AppError> {
    csrf.verify(&body.csrf_token)?;
    let token =
        passkeys::finish_step_up(&state, &session, &body.ceremony, &body.credential, &ctx).await?;
    let target = safe_return_to(body.return_to.as_deref()).unwrap_or_else(|| "/account".into());
    let mut res = json(&Next { redirect: &target });
    set_rotated_cookie(&state, &mut res, &session, &token);
    Ok(res)
}
