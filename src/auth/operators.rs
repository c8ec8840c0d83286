//! What an operator does from the command line (`gatehouse sessions …`, `gatehouse
//! user disable|enable`, `gatehouse keys reencrypt`). Each change is recorded as an
//! event by actor `admin` in the transaction that makes it.

use anyhow::{Context, anyhow};

use super::devices;
use super::events::admin_event;
use crate::domain::{Email, SessionId, UserId};
use crate::state::AppState;
use crate::store::RekeyReport;

async fn user_id(state: &AppState, email: &str) -> anyhow::Result<UserId> {
    let email = Email::parse(email).map_err(|e| anyhow!("--email/--user: {e}"))?;
    let user = state
        .store
        .user_by_email(&email)
        .await
        .context("looking the account up")?
        .ok_or_else(|| anyhow!("no account has the address {}", email.as_str()))?;
    Ok(user.id)
}

/// The user's live sessions, one JSON object each (what `sessions list` prints as
/// JSON lines). The operator sees what the user sees on their device list.
pub async fn list_sessions(
    state: &AppState,
    email: &str,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let user = user_id(state, email).await?;
    let rows = devices::sessions_of(state, user).await?;
    let rfc3339 = |t: time::OffsetDateTime| {
        t.format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    };
    Ok(rows
        .iter()
        .map(|r| {
            serde_json::json!({
                "session_id": r.session_id.to_string(),
                "device": r.label,
                "device_type": r.kind.as_str(),
                "user_agent": r.user_agent,
                "ip": r.ip,
                "location": r.place,
                "signed_in_at": rfc3339(r.signed_in_at),
                "last_active_at": rfc3339(r.last_active_at),
                "expires_at": rfc3339(r.expires_at),
                "methods": r.methods,
                // The label of the upstream it was signed in with (null: none).
                "signed_in_with": r.upstream,
                "remembered": r.remembered,
                "risk": r.risk,
            })
        })
        .collect())
}

fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// `--since`: a span back from now (`24h`, `7d`) or an RFC 3339 time.
pub fn parse_since(now: time::OffsetDateTime, text: &str) -> anyhow::Result<time::OffsetDateTime> {
    if let Ok(span) = humantime::parse_duration(text) {
        let span = time::Duration::try_from(span).map_err(|_| anyhow!("--since: too long"))?;
        return now
            .checked_sub(span)
            .ok_or_else(|| anyhow!("--since: too long"));
    }
    time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).map_err(
        |_| anyhow!("--since: {text:?} is neither a span like 24h or 7d nor a time like 2026-12-01T00:00:00Z"),
    )
}

/// The sessions the contextual checks flagged (what `sessions flagged` prints as JSON
/// lines, newest first): who, when, why, where, and whether it is still live.
pub async fn flagged_sessions(
    state: &AppState,
    since: Option<&str>,
) -> anyhow::Result<Vec<serde_json::Value>> {
    let since = since
        .map(|s| parse_since(state.clock.now(), s))
        .transpose()?;
    let rows = state
        .store
        .flagged_sessions(since)
        .await
        .context("reading flagged sessions")?;
    let open = |context: &str, sealed: &Option<Vec<u8>>| {
        sealed
            .as_ref()
            .and_then(|s| state.keys.open(context, s).ok())
    };
    Ok(rows
        .iter()
        .map(|r| {
            let place = open(crate::crypto::columns::SESSION_LOCATION, &r.location_enc)
                .and_then(|p| serde_json::from_slice::<crate::domain::Location>(&p).ok())
                .unwrap_or_default()
                .place();
            let ip = open(crate::crypto::columns::SESSION_IP, &r.ip_enc)
                .and_then(|p| String::from_utf8(p).ok());
            serde_json::json!({
                "session_id": r.id.to_string(),
                "user": r.email,
                "flagged_at": rfc3339(r.flagged_at),
                "reason": super::risk::open_flag(state, r.reason.as_deref(), r.reason_enc.as_ref()),
                "signed_in_at": rfc3339(r.created_at),
                "location": place,
                "ip": ip,
                "revoked_at": r.revoked_at.map(rfc3339),
                "revoked_reason": r.revoked_reason,
            })
        })
        .collect())
}

/// Revokes one session of the user (`session`) or all of them. Returns how many.
pub async fn revoke_sessions(
    state: &AppState,
    email: &str,
    session: Option<&str>,
) -> anyhow::Result<u64> {
    let user = user_id(state, email).await?;
    let reason = "ended by an administrator";
    let e = admin_event(state, "session_revoked", Some(reason))?;
    match session {
        Some(raw) => {
            let id = SessionId::parse(raw)
                .ok_or_else(|| anyhow!("--session: {raw:?} is not a session id"))?;
            let done = state.store.revoke_own_session(user, id, reason, &e).await?;
            if done {
                Ok(1)
            } else {
                Err(anyhow!("that account has no live session {raw}"))
            }
        }
        None => Ok(state
            .store
            .revoke_user_sessions(user, None, reason, &e)
            .await?),
    }
}

/// Disables (every session ends at once) or enables an account. Returns whether it
/// changed.
pub async fn set_disabled(state: &AppState, email: &str, disabled: bool) -> anyhow::Result<bool> {
    let user = user_id(state, email).await?;
    let kind = if disabled {
        "user_disabled"
    } else {
        "user_enabled"
    };
    let e = admin_event(state, kind, None)?;
    let revoked = admin_event(state, "session_revoked", Some("account disabled"))?;
    Ok(state
        .store
        .set_disabled(user, disabled, &e, &revoked)
        .await?)
}

/// Rewrites every sealed value under the current key.
pub async fn reencrypt(state: &AppState) -> anyhow::Result<RekeyReport> {
    Ok(state.store.reencrypt_all(500).await?)
}
