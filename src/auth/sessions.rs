//! Browser sessions (DESIGN.md "Sessions"): a random cookie token whose SHA-256 names
//! one row; every request re-checks that row.

use std::time::Duration;

use super::RequestContext;
use super::events::{event, seal_location};
use crate::crypto::columns;
use crate::domain::{Location, SessionId, SessionToken, UserId};
use crate::error::AppError;
use crate::settings::Settings;
use crate::state::AppState;
use crate::store::{NewSession, SessionRecord};

/// Activity is written back at most this often, so that reads stay reads.
pub const LAST_SEEN_GRANULARITY: Duration = Duration::from_secs(60);

/// (idle, absolute) lifetime for a new session.
pub fn lifetimes(settings: &Settings, remember_me: bool) -> (Duration, Duration) {
    if remember_me {
        (settings.remember_idle, settings.remember_absolute)
    } else {
        (settings.session_idle, settings.session_absolute)
    }
}

fn span(d: Duration) -> time::Duration {
    time::Duration::seconds(i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2))
}

/// Methods that alone make a session `aal1`: a password, or an upstream identity
/// provider's word (`fed`; what the upstream itself asked for is not known here).
const FIRST_FACTORS: &[&str] = &["pwd", "fed"];

/// A fresh token and the row that goes with it, for a sign-in proven by `amr`
/// (RFC 8176 method names): `["pwd"]` or `["fed"]` is `aal1`; a second factor makes
/// it `aal2`.
pub fn new_session(
    state: &AppState,
    user_id: UserId,
    remember_me: bool,
    ctx: &RequestContext,
    amr: &[&str],
) -> Result<(SessionToken, NewSession), AppError> {
    let seal = |context: &str, value: &[u8]| {
        state
            .keys
            .seal(context, value)
            .map_err(|e| AppError::Unexpected(e.into()))
    };
    let token = SessionToken::generate();
    let ip = ctx.ip.to_string();
    let now = state.clock.now();
    let (idle, absolute) = lifetimes(&state.settings, remember_me);
    let absolute_expires_at = now + span(absolute);
    let session = NewSession {
        id: SessionId::new(),
        token_hash: token.hash(),
        user_id,
        now,
        idle_timeout_secs: i32::try_from(idle.as_secs()).unwrap_or(i32::MAX),
        idle_expires_at: (now + span(idle)).min(absolute_expires_at),
        absolute_expires_at,
        remember_me,
        aal: if amr.iter().any(|m| !FIRST_FACTORS.contains(m)) {
            "aal2"
        } else {
            "aal1"
        },
        amr: amr.iter().map(|m| m.to_string()).collect(),
        ip_enc: Some(seal(columns::SESSION_IP, ip.as_bytes())?),
        user_agent_enc: ctx
            .user_agent
            .as_ref()
            .map(|ua| seal(columns::SESSION_USER_AGENT, ua.as_bytes()))
            .transpose()?,
        location_enc: ctx
            .location
            .is_known()
            .then(|| seal_location(state, columns::SESSION_LOCATION, &ctx.location))
            .transpose()?,
        ip_mac: state.keys.mac(columns::SEEN_IP, ip.as_bytes()),
        country_mac: ctx
            .location
            .country_code
            .as_ref()
            .map(|c| state.keys.mac(columns::SEEN_COUNTRY, c.as_bytes())),
        login_mark: None,
        risk_flag: None,
        upstream: None,
    };
    Ok((token, session))
}

/// The live session behind a cookie token, re-checked against the database on every
/// call; records activity at most once a minute. A request from another country than
/// the session's sign-in (`location`) flags it once, and does not renew a "keep me
/// signed in" session: a copied cookie used elsewhere is not kept alive by its use.
pub async fn authenticate(
    state: &AppState,
    token: &SessionToken,
    location: &Location,
    bound: BoundCookie<'_>,
) -> Result<Authenticated, AppError> {
    let now = state.clock.now();
    let Some(mut record) = state.store.live_session(&token.hash(), now).await? else {
        return Ok(Authenticated::Gone);
    };
    // A device-bound session's request without its bound cookie is refused before
    // anything else: it neither renews the session nor is watched as its use.
    let from = super::dbsc::RequestOrigin {
        ip: bound.from,
        location,
    };
    if !super::dbsc::admits(state, &record, bound.presented, bound.skipped, &from).await? {
        return Ok(Authenticated::Refused(Box::new(record)));
    }
    let elsewhere = super::risk::watch(state, &mut record, location).await?;
    if elsewhere && record.remember_me {
        return Ok(Authenticated::Live(Box::new(record)));
    }
    if now - record.last_seen_at >= span(LAST_SEEN_GRANULARITY) {
        state.store.touch_session(record.id, now).await?;
        record.last_seen_at = now;
    }
    Ok(Authenticated::Live(Box::new(record)))
}

/// The device-bound cookie a request brought, whether it said it skipped a refresh
/// (`Secure-Session-Skipped`), and the client address it came from.
#[derive(Clone, Copy)]
pub struct BoundCookie<'a> {
    pub presented: Option<&'a str>,
    pub skipped: bool,
    pub from: std::net::IpAddr,
}

/// What a session cookie turned out to be.
pub enum Authenticated {
    Live(Box<SessionRecord>),
    /// A live session bound to a browser key, without its bound cookie: not signed
    /// in for this request (the cookie stays: its browser refreshes and comes back).
    /// Whoever holds the cookie may still end the session (signing out protects).
    Refused(Box<SessionRecord>),
    /// Revoked, expired, unknown, or its user disabled.
    Gone,
}

/// Signs a session out: the row is revoked, so the cookie is useless everywhere at once.
pub async fn sign_out(
    state: &AppState,
    id: SessionId,
    ctx: &RequestContext,
) -> Result<(), AppError> {
    let signed_out = event(state, "signed_out", Some(ctx))?;
    state
        .store
        .revoke_session(id, "signed out", &signed_out)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::test_settings as settings;

    #[test]
    fn remember_me_picks_the_long_lifetimes() {
        let s = settings(&[]);
        assert_eq!(
            lifetimes(&s, false),
            (Duration::from_secs(1800), Duration::from_secs(43200))
        );
        assert_eq!(
            lifetimes(&s, true),
            (
                Duration::from_secs(7 * 86400),
                Duration::from_secs(30 * 86400)
            )
        );
    }
}
