//! Devices (DESIGN.md "Devices and context"): which browser a sign-in came from, the
//! device list a user sees, and the revocations it offers. Revoking is quick on
//! purpose (no step-up: protective actions must never be slowed down), and bites on
//! the revoked browser's very next request because every request re-checks its row.

use std::sync::Arc;

use time::OffsetDateTime;

use super::RequestContext;
use super::events::{event, event_with};
use crate::crypto::columns;
use crate::domain::{Agent, DeviceId, DeviceKind, DeviceToken, Location, SessionId, UserId};
use crate::error::AppError;
use crate::mail::messages;
use crate::state::AppState;
use crate::store::{DeviceLink, DeviceNotice, SessionDetail, SessionRecord};

/// How long a new-sign-in notice's "This wasn't me" link works.
pub const NOT_ME_LINK_DAYS: i64 = 7;

/// The device cookie a sign-in leaves in the browser: the one it came with, if we
/// issued it, else a new one.
pub struct DeviceCookie(pub Arc<DeviceToken>);

/// Decides the device of a sign-in by `user_id` (address `email`) from `ctx`, and
/// prepares the new-device notice, which the store records and mails only if the
/// browser turns out new for a user who had other devices.
pub async fn device_for_sign_in(
    state: &AppState,
    user_id: UserId,
    email: &str,
    ctx: &RequestContext,
) -> Result<(DeviceLink, DeviceCookie), AppError> {
    // The cookie is kept only if it was issued to this user's browser; anything else
    // (never issued, or issued to another account — a value copied from a shared
    // computer, say) gets a new device and a new cookie, so no value brought along
    // can pose as one of this user's known devices.
    let token = match &ctx.device {
        Some(t) if state.store.device_cookie_known(user_id, &t.hash()).await? => t.clone(),
        _ => Arc::new(DeviceToken::generate()),
    };
    let agent = Agent::parse(ctx.user_agent.as_deref());
    let label_enc = state
        .keys
        .seal(columns::DEVICE_LABEL, agent.label.as_bytes())
        .map_err(|e| AppError::Unexpected(e.into()))?;
    let now = state.clock.now();
    let when = super::describe::when(now);
    let (place, ip) = (ctx.location.place(), ctx.ip.to_string());
    let facts = messages::SignInFacts {
        device: &agent.label,
        place: &place,
        ip: &ip,
        when: &when,
    };
    // "This wasn't me" in the notice: a single-use link that ends this session.
    let not_me = crate::crypto::random_token();
    let notice = DeviceNotice {
        event: event(state, "new_device", Some(ctx))?,
        mail: messages::new_device(&state.settings, email, &facts, &not_me),
        not_me_hash: crate::crypto::token_hash(&not_me),
        not_me_expires_at: now + time::Duration::days(NOT_ME_LINK_DAYS),
    };
    let link = DeviceLink {
        new_id: DeviceId::new(),
        token_hash: token.hash(),
        label_enc,
        device_type: agent.kind.as_str(),
        notice: Some(notice),
        trust_until: None,
    };
    Ok((link, DeviceCookie(token)))
}

/// One row of the device list, opened and described.
#[derive(Clone, Debug)]
pub struct DeviceRow {
    pub session_id: SessionId,
    pub label: String,
    pub kind: DeviceKind,
    /// The raw user agent, shown on request (escaped by the template).
    pub user_agent: Option<String>,
    pub place: String,
    pub ip: Option<String>,
    pub signed_in_at: OffsetDateTime,
    pub last_active_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    /// "Password", "Password + authenticator code", …
    pub methods: String,
    /// When a second factor was last proven (`aal2`), if ever.
    pub second_factor_at: Option<OffsetDateTime>,
    pub current: bool,
    pub risk: Option<String>,
    pub remembered: bool,
    /// The browser is trusted to skip the code until then.
    pub trusted_until: Option<OffsetDateTime>,
    /// Bound to a key the browser keeps in hardware (DBSC).
    pub device_bound: bool,
    /// The label of the upstream identity provider it was signed in with ("Signed in
    /// with Google" on the device list), while that upstream exists.
    pub upstream: Option<String>,
}

/// Opens a sealed column; a value no held key opens shows as absent (it is never an
/// error for the person: the row is still theirs to revoke).
fn open_text(state: &AppState, context: &str, sealed: Option<&Vec<u8>>) -> Option<String> {
    let plain = state.keys.open(context, sealed?).ok()?;
    String::from_utf8(plain).ok()
}

fn open_location(state: &AppState, context: &str, sealed: Option<&Vec<u8>>) -> Location {
    sealed
        .and_then(|s| state.keys.open(context, s).ok())
        .and_then(|p| serde_json::from_slice(&p).ok())
        .unwrap_or_default()
}

/// What a session's listing shows, opened (for the page and the operator's listing).
pub fn describe_session(
    state: &AppState,
    s: &SessionDetail,
    current: Option<SessionId>,
) -> DeviceRow {
    let user_agent = open_text(
        state,
        columns::SESSION_USER_AGENT,
        s.user_agent_enc.as_ref(),
    );
    let agent = Agent::parse(user_agent.as_deref());
    DeviceRow {
        session_id: SessionId(s.id),
        label: agent.label,
        kind: agent.kind,
        user_agent,
        place: open_location(state, columns::SESSION_LOCATION, s.location_enc.as_ref()).place(),
        ip: open_text(state, columns::SESSION_IP, s.ip_enc.as_ref()),
        signed_in_at: s.auth_time,
        last_active_at: s.last_seen_at,
        expires_at: s.idle_expires_at.min(s.absolute_expires_at),
        methods: super::describe::methods_with(&s.amr, s.upstream_label.as_deref()),
        second_factor_at: (s.aal == "aal2").then_some(s.aal_reached_at),
        current: current == Some(SessionId(s.id)),
        risk: s.risk_flagged.then(|| {
            super::risk::open_flag(state, s.risk_reason.as_deref(), s.risk_reason_enc.as_ref())
                .unwrap_or_else(|| "Unusual sign-in".into())
        }),
        remembered: s.remember_me,
        trusted_until: s.device_trusted_until.filter(|t| *t > state.clock.now()),
        device_bound: s.dbsc_bound,
        upstream: s.upstream_label.clone(),
    }
}

/// The user's live sessions, most recently active first, the viewing one marked.
pub async fn list(state: &AppState, viewer: &SessionRecord) -> Result<Vec<DeviceRow>, AppError> {
    let rows = state
        .store
        .live_sessions(viewer.user_id, state.clock.now())
        .await?;
    let mut rows: Vec<DeviceRow> = rows
        .iter()
        .map(|s| describe_session(state, s, Some(viewer.id)))
        .collect();
    // The viewing browser first (as people expect from such lists), then the rest by
    // their latest activity (the store's order; the sort is stable).
    rows.sort_by_key(|r| !r.current);
    Ok(rows)
}

/// What the device list tells the person, once each, of the sessions the cap on live
/// sessions ended (`GATEHOUSE_MAX_SESSIONS_PER_USER`).
pub async fn cap_notices(state: &AppState, user_id: UserId) -> Result<Vec<String>, AppError> {
    let sealed = state.store.take_cap_notices(user_id).await?;
    let cap = state.settings.max_sessions_per_user;
    Ok(sealed
        .iter()
        .map(|ua| {
            let user_agent = open_text(state, columns::SESSION_USER_AGENT, ua.as_ref());
            let label = Agent::parse(user_agent.as_deref()).label;
            format!(
                "You were signed out on {label} because you reached the limit of {cap} sessions."
            )
        })
        .collect())
}

/// The outcome of a revocation the person asked for.
pub enum Revoked {
    /// Other sessions ended; this browser stays signed in.
    Others(u64),
    /// This browser's own session ended too: clear its cookie.
    IncludingThisOne(u64),
}

/// Revokes one of the viewer's own sessions by the id in the URL. A malformed id, an
/// unknown one, a dead one and another user's all answer `NotFound`, alike, and
/// change nothing (checklist D3).
pub async fn revoke_one(
    state: &AppState,
    viewer: &SessionRecord,
    raw_id: &str,
    ctx: &RequestContext,
) -> Result<Revoked, AppError> {
    let id = SessionId::parse(raw_id).ok_or(AppError::NotFound)?;
    let e = event_with(
        state,
        "session_revoked",
        Some(ctx),
        "signed out from the device list",
    )?;
    let done = state
        .store
        .revoke_own_session(viewer.user_id, id, "signed out from the device list", &e)
        .await?;
    match (done, id == viewer.id) {
        (false, _) => Err(AppError::NotFound),
        (true, true) => Ok(Revoked::IncludingThisOne(1)),
        (true, false) => Ok(Revoked::Others(1)),
    }
}

/// "Sign out all other devices" (`keep_this`) or "Sign out everywhere".
pub async fn revoke_many(
    state: &AppState,
    viewer: &SessionRecord,
    keep_this: bool,
    ctx: &RequestContext,
) -> Result<Revoked, AppError> {
    let reason = if keep_this {
        "signed out all other devices"
    } else {
        "signed out everywhere"
    };
    let e = event_with(state, "session_revoked", Some(ctx), reason)?;
    let n = state
        .store
        .revoke_user_sessions(viewer.user_id, keep_this.then_some(viewer.id), reason, &e)
        .await?;
    Ok(if keep_this {
        Revoked::Others(n)
    } else {
        Revoked::IncludingThisOne(n)
    })
}

/// A browser the user trusts to skip the code, as the device list shows it.
#[derive(Clone, Debug)]
pub struct TrustedRow {
    pub device_id: DeviceId,
    pub label: String,
    pub trusted_at: OffsetDateTime,
    pub trusted_until: OffsetDateTime,
    pub last_seen_at: OffsetDateTime,
}

/// The user's trusted browsers (whether or not they have a live session).
pub async fn trusted(state: &AppState, user_id: UserId) -> Result<Vec<TrustedRow>, AppError> {
    let rows = state
        .store
        .trusted_devices(user_id, state.clock.now())
        .await?;
    Ok(rows
        .into_iter()
        .map(|d| TrustedRow {
            device_id: DeviceId(d.id),
            label: open_text(state, columns::DEVICE_LABEL, Some(&d.label_enc))
                .unwrap_or_else(|| "Unknown browser".into()),
            trusted_at: d.trusted_at,
            trusted_until: d.trusted_until,
            last_seen_at: d.last_seen_at,
        })
        .collect())
}

/// Withdraws the trust of one of the viewer's browsers by the id in the URL. A
/// malformed, unknown, untrusted or another user's id answers `NotFound` alike.
pub async fn untrust(
    state: &AppState,
    viewer: &SessionRecord,
    raw_id: &str,
    ctx: &RequestContext,
) -> Result<(), AppError> {
    let id = DeviceId::parse(raw_id).ok_or(AppError::NotFound)?;
    let e = event(state, "device_untrusted", Some(ctx))?;
    if state.store.untrust_device(viewer.user_id, id, &e).await? {
        Ok(())
    } else {
        Err(AppError::NotFound)
    }
}

/// For operators: a user's live sessions, opened.
pub async fn sessions_of(state: &AppState, user_id: UserId) -> Result<Vec<DeviceRow>, AppError> {
    let rows = state
        .store
        .live_sessions(user_id, state.clock.now())
        .await?;
    Ok(rows
        .iter()
        .map(|s| describe_session(state, s, None))
        .collect())
}
