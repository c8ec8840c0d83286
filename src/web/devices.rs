//! The device list and the activity history: extract, call the devices service,
//! render.

use actix_web::http::{StatusCode, header};
use actix_web::{HttpResponse, web};
use askama::Template;
use serde::Deserialize;

use crate::auth::devices::{self, DeviceRow, Revoked};
use crate::auth::{RequestContext, activity, describe};
use crate::domain::DeviceKind;
use crate::error::AppError;
use crate::state::AppState;
use crate::web::edge::CspNonce;
use crate::web::extract::{Csrf, CurrentSession};
use crate::web::forms::{StrictForm, StrictQuery};
use crate::web::pages::{CsrfOnlyForm, PageCtx, html};

fn iso(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// A row as the page prints it.
struct DeviceView {
    session_id: String,
    label: String,
    kind: &'static str,
    user_agent: Option<String>,
    place: String,
    ip: String,
    signed_in: String,
    signed_in_iso: String,
    signed_in_ago: String,
    last_active_iso: String,
    last_active_ago: String,
    methods: String,
    /// "Second factor proven 2026-12-02 09:30 UTC (aal2)", or "Password only (aal1)".
    assurance: String,
    current: bool,
    risk: Option<String>,
    /// "until 2027-01-05 09:30 UTC" for a trusted browser.
    trusted_until: Option<String>,
    device_bound: bool,
    /// "Signed in with Google", for a session made through an upstream.
    signed_in_with: Option<String>,
}

/// A trusted browser as the page prints it.
struct TrustedView {
    device_id: String,
    label: String,
    since: String,
    until: String,
    until_iso: String,
    last_seen_ago: String,
}

fn view(now: time::OffsetDateTime, d: DeviceRow) -> DeviceView {
    DeviceView {
        session_id: d.session_id.to_string(),
        label: d.label,
        kind: match d.kind {
            DeviceKind::Desktop => "Computer",
            DeviceKind::Phone => "Phone",
            DeviceKind::Tablet => "Tablet",
            DeviceKind::Other => "Other device",
        },
        user_agent: d.user_agent,
        place: d.place,
        ip: d.ip.unwrap_or_else(|| "unknown".into()),
        signed_in: describe::when(d.signed_in_at),
        signed_in_iso: iso(d.signed_in_at),
        signed_in_ago: describe::ago(now, d.signed_in_at),
        last_active_iso: iso(d.last_active_at),
        last_active_ago: if d.current {
            "Now (this browser)".into()
        } else {
            describe::ago(now, d.last_active_at)
        },
        methods: d.methods.clone(),
        // "Password only (aal1)", "Google only (aal1)".
        assurance: match d.second_factor_at {
            Some(t) => format!("Second factor proven {} (aal2)", describe::when(t)),
            None => format!("{} only (aal1)", d.methods),
        },
        current: d.current,
        risk: d.risk,
        trusted_until: d.trusted_until.map(describe::when),
        device_bound: d.device_bound,
        signed_in_with: d.upstream.map(|label| format!("Signed in with {label}")),
    }
}

#[derive(Template)]
#[template(path = "pages/devices.html")]
struct DevicesTemplate {
    ctx: PageCtx,
    devices: Vec<DeviceView>,
    trusted: Vec<TrustedView>,
    notice: Option<&'static str>,
    /// Sessions the cap on live sessions ended since the list was last opened.
    cap_notices: Vec<String>,
}

#[derive(Deserialize)]
pub struct DevicesQuery {
    done: Option<String>,
}

pub async fn devices_page(
    state: web::Data<AppState>,
    CurrentSession(session): CurrentSession,
    csrf: Csrf,
    nonce: CspNonce,
    StrictQuery(q): StrictQuery<DevicesQuery>,
) -> Result<HttpResponse, AppError> {
    let rows = devices::list(&state, &session).await?;
    let now = state.clock.now();
    // Fixed messages chosen by a code: nothing from the URL is echoed.
    let notice = match q.done.as_deref() {
        Some("revoked") => Some("The device was signed out."),
        Some("others") => Some("All other devices were signed out."),
        Some("untrusted") => {
            Some("That browser is no longer trusted: it will be asked for a code again.")
        }
        _ => None,
    };
    let cap_notices = devices::cap_notices(&state, session.user_id).await?;
    let trusted = devices::trusted(&state, session.user_id)
        .await?
        .into_iter()
        .map(|t| TrustedView {
            device_id: t.device_id.0.to_string(),
            label: t.label,
            since: describe::when(t.trusted_at),
            until: describe::when(t.trusted_until),
            until_iso: iso(t.trusted_until),
            last_seen_ago: describe::ago(now, t.last_seen_at),
        })
        .collect();
    let page = DevicesTemplate {
        ctx: PageCtx::new(&state, &nonce, &csrf, Some(session.email.clone())),
        devices: rows.into_iter().map(|d| view(now, d)).collect(),
        trusted,
        notice,
        cap_notices,
    };
    html(StatusCode::OK, &page)
}

fn after_revoke(state: &AppState, outcome: Revoked, done: &str) -> HttpResponse {
    match outcome {
        Revoked::Others(_) => HttpResponse::SeeOther()
            .insert_header((header::LOCATION, format!("/account/devices?done={done}")))
            .finish(),
        Revoked::IncludingThisOne(_) => {
            let mut res = HttpResponse::SeeOther()
                .insert_header((header::LOCATION, "/login"))
                .finish();
            let _ = res.add_cookie(&state.cookies.clear_session());
            res
        }
    }
}

pub async fn revoke_device(
    state: web::Data<AppState>,
    CurrentSession(session): CurrentSession,
    csrf: Csrf,
    ctx: RequestContext,
    path: web::Path<String>,
    StrictForm(form): StrictForm<CsrfOnlyForm>,
) -> Result<HttpResponse, AppError> {
    csrf.verify(&form.csrf_token)?;
    let outcome = devices::revoke_one(&state, &session, &path.into_inner(), &ctx).await?;
    Ok(after_revoke(&state, outcome, "revoked"))
}

/// "Stop trusting": the browser is asked for a code again at its next sign-in.
/// Protective, so no step-up.
pub async fn untrust_device(
    state: web::Data<AppState>,
    CurrentSession(session): CurrentSession,
    csrf: Csrf,
    ctx: RequestContext,
    path: web::Path<String>,
    StrictForm(form): StrictForm<CsrfOnlyForm>,
) -> Result<HttpResponse, AppError> {
    csrf.verify(&form.csrf_token)?;
    devices::untrust(&state, &session, &path.into_inner(), &ctx).await?;
    Ok(HttpResponse::SeeOther()
        .insert_header((header::LOCATION, "/account/devices?done=untrusted"))
        .finish())
}

pub async fn revoke_others(
    state: web::Data<AppState>,
    CurrentSession(session): CurrentSession,
    csrf: Csrf,
    ctx: RequestContext,
    StrictForm(form): StrictForm<CsrfOnlyForm>,
) -> Result<HttpResponse, AppError> {
    csrf.verify(&form.csrf_token)?;
    let outcome = devices::revoke_many(&state, &session, true, &ctx).await?;
    Ok(after_revoke(&state, outcome, "others"))
}

pub async fn revoke_all(
    state: web::Data<AppState>,
    CurrentSession(session): CurrentSession,
    csrf: Csrf,
    ctx: RequestContext,
    StrictForm(form): StrictForm<CsrfOnlyForm>,
) -> Result<HttpResponse, AppError> {
    csrf.verify(&form.csrf_token)?;
    let outcome = devices::revoke_many(&state, &session, false, &ctx).await?;
    Ok(after_revoke(&state, outcome, "others"))
}

struct EventView {
    title: &'static str,
    at: String,
    at_iso: String,
    device: Option<String>,
    place: Option<String>,
    ip: Option<String>,
    by: Option<&'static str>,
    detail: Option<String>,
}

#[derive(Template)]
#[template(path = "pages/activity.html")]
struct ActivityTemplate {
    ctx: PageCtx,
    rows: Vec<EventView>,
    older: Option<String>,
    retention: String,
}

#[derive(Deserialize)]
pub struct ActivityQuery {
    before: Option<String>,
}

pub async fn activity_page(
    state: web::Data<AppState>,
    CurrentSession(session): CurrentSession,
    csrf: Csrf,
    nonce: CspNonce,
    StrictQuery(q): StrictQuery<ActivityQuery>,
) -> Result<HttpResponse, AppError> {
    let page = activity::page(&state, session.user_id, q.before.as_deref()).await?;
    let rows = page
        .rows
        .into_iter()
        .map(|e| EventView {
            title: e.title,
            at: describe::when(e.at),
            at_iso: iso(e.at),
            device: e.device,
            place: e.place,
            ip: e.ip,
            by: e.by,
            detail: e.detail,
        })
        .collect();
    let days = state.settings.event_retention.as_secs() / 86400;
    let retention = match days {
        0 => humantime::format_duration(state.settings.event_retention).to_string(),
        1 => "1 day".into(),
        n => format!("{n} days"),
    };
    let page = ActivityTemplate {
        ctx: PageCtx::new(&state, &nonce, &csrf, Some(session.email.clone())),
        rows,
        older: page.older.map(|id| id.to_string()),
        retention,
    };
    html(StatusCode::OK, &page)
}
