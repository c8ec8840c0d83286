//! The upstream's back-channel logout reaches here (OpenID Connect Back-Channel
//! Logout 1.0, Gatehouse as the relying party): `POST
//! /login/upstream/{name}/backchannel-logout` with a `logout_token`. Once the token
//! passes every §2.6 check (`crate::upstream`), the Gatehouse sessions made from that
//! upstream session end — through the same revocation as any other, so their tokens
//! stop working on every node and their apps are told in turn (checklist U6).

use actix_web::http::StatusCode;

use crate::auth::events::event_with;
use crate::error::AppError;
use crate::state::AppState;
use crate::store::{UpstreamLogout, UpstreamSessions};
use crate::upstream::UpstreamError;

/// The sessions' revocation reason (it is what their apps' logouts carry).
pub const REASON: &str = "signed out at the upstream";

/// Verifies the logout token and ends the sessions it names; how many ended. A token
/// that fails a check is a 400 (§2.8) and nothing ends; an upstream whose keys cannot
/// be fetched right now is a 502, so it may try again.
pub async fn receive(state: &AppState, name: &str, token: &str) -> Result<u64, AppError> {
    let refused = |why: &str| {
        super::count(state, "logout_refused");
        AppError::oauth("invalid_request", why.to_string())
    };
    let Some((up, _)) = state.store.upstream_by_name(name).await? else {
        return Err(refused("No such upstream."));
    };
    if token.is_empty() {
        return Err(refused("The logout_token is missing."));
    }
    let claims = match state
        .upstreams
        .verify_logout_token(state.store.as_ref(), &up, token)
        .await
    {
        Ok(claims) => claims,
        Err(e @ UpstreamError::Unreachable(_)) => {
            tracing::warn!(upstream = %up.name, error = %e, "upstream logout token could not be checked"); // log-ok: no secret
            super::count(state, "logout_refused");
            return Err(AppError::OAuth {
                status: StatusCode::BAD_GATEWAY,
                error: "temporarily_unavailable",
                description: "The upstream's keys could not be fetched.".into(),
            });
        }
        Err(e) => {
            tracing::info!(upstream = %up.name, error = %e, "upstream logout token refused"); // log-ok: no secret
            return Err(refused("The logout token was refused."));
        }
    };
    // §2.6: by `sid` when the token names one (only the sessions made from that
    // upstream session), else every session of that `sub` made from this upstream.
    let which = match (&claims.sid, &claims.sub) {
        (Some(sid), _) => UpstreamSessions::Sid(sid),
        (None, Some(sub)) => UpstreamSessions::Subject(sub),
        (None, None) => return Err(refused("The logout token names no session.")),
    };
    let detail = format!("Signed out at {}", up.label);
    let event = event_with(state, "session_revoked", None, &detail)?;
    let logout = UpstreamLogout {
        upstream_id: up.id,
        which,
        jti: &claims.jti,
        keep_until: claims.keep_until,
        reason: REASON,
    };
    let Some(ended) = state.store.end_upstream_sessions(&logout, &event).await? else {
        // Spent by an earlier delivery of the same token meanwhile.
        tracing::info!(upstream = %up.name, "upstream logout token replayed");
        return Err(refused("The logout token was refused."));
    };
    super::count(state, "logout_accepted");
    tracing::info!(upstream = %up.name, ended, "upstream back-channel logout");
    Ok(ended)
}
