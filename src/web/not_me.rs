//! "This wasn't me" (`/not-me?token=…`), the link in a new-sign-in notice: its GET
//! only shows a button (mail scanners prefetch links), its POST ends the session the
//! notice was about, at once and for every app, and asks for a new password.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};

use crate::auth::{RequestContext, risk};
use crate::error::AppError;
use crate::state::AppState;
use crate::web::edge::CspNonce;
use crate::web::extract::Csrf;
use crate::web::forms::{StrictForm, StrictQuery};
use crate::web::mail_pages::{LinkForm, LinkPage, TokenQuery, dead_link, link_page, notice};

const AGAIN: (&str, &str) = ("Review your devices", "/account/devices");

pub async fn not_me_page(
    state: web::Data<AppState>,
    csrf: Csrf,
    nonce: CspNonce,
    StrictQuery(q): StrictQuery<TokenQuery>,
) -> Result<HttpResponse, AppError> {
    let live = risk::not_me_link_is_live(&state, &q.token).await?;
    link_page(
        &state,
        &nonce,
        &csrf,
        live,
        &q.token,
        LinkPage {
            title: "This wasn't me",
            explanation: "Press the button to sign that device out of your account at once. Apps it signed in to lose access too. Then choose a new password: whoever it was may know yours.",
            action: "/not-me",
            button: "Sign that device out",
            what: "\"This wasn't me\"",
            again: AGAIN,
        },
    )
}

pub async fn not_me(
    state: web::Data<AppState>,
    csrf: Csrf,
    nonce: CspNonce,
    ctx: RequestContext,
    StrictForm(form): StrictForm<LinkForm>,
) -> Result<HttpResponse, AppError> {
    csrf.verify(&form.csrf_token)?;
    let Some(revoked) = risk::report_not_me(&state, &form.token, &ctx).await? else {
        return dead_link(&state, &nonce, &csrf, "\"This wasn't me\"", AGAIN);
    };
    let first = if revoked {
        "That device is signed out, and the apps it signed in to have lost access."
    } else {
        "That session had already ended; we noted your report all the same."
    };
    notice(
        &state,
        &nonce,
        &csrf,
        StatusCode::OK,
        "Thanks for telling us",
        vec![
            first.to_string(),
            "Whoever signed in had your password. Choose a new one now: it signs out every other device too.".to_string(),
        ],
        Some(("Choose a new password", "/password/forgot")),
    )
}
