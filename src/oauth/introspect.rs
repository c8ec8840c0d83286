//! `/oauth2/introspect` (RFC 7662), `/oauth2/revoke` (RFC 7009) and
//! `/oauth2/userinfo` (OIDC Core §5.3). Liveness is decided by one indexed read
//! (token, grant, session, user, signing key), or by this node's cache of such reads
//! while PostgreSQL's notifications keep it exact (`liveness`), so revoking a device,
//! disabling a user or retiring a key shows on every node at once. Storage errors
//! fail closed: an error, never `active: true` and never a 200 for a revocation that
//! did not happen.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use uuid::Uuid;

use super::keys;
use super::tokens::AccessClaims;
use crate::crypto::token_hash;
use crate::domain::oauth::Scopes;
use crate::error::AppError;
use crate::liveness::LiveAccess;
use crate::signing::VerifyError;
use crate::state::AppState;
use crate::store::ClientRecord;

/// RFC 7662 §2.2: an inactive token gets exactly this, whatever the reason.
pub fn inactive() -> Value {
    json!({ "active": false })
}

fn looks_like_jwt(token: &str) -> bool {
    token.bytes().filter(|b| *b == b'.').count() == 2
}

/// An access token's claims and `kid` if its signature is one of our keys' (a key
/// this node has not seen yet is looked up once: another node may have rotated).
async fn signed_access(state: &AppState, token: &str) -> Option<(AccessClaims, String)> {
    let mut result = state.signing.verify::<AccessClaims>(token, Some("at+jwt"));
    if result.as_ref().err() == Some(&VerifyError::UnknownKey) {
        keys::reload_for_unknown_kid(state).await;
        result = state.signing.verify::<AccessClaims>(token, Some("at+jwt"));
    }
    result.ok()
}

/// The claims of a genuine access token of ours: RS256 by one of our keys, `typ`
/// `at+jwt`, our issuer, unexpired by the injected clock. Not yet its liveness.
async fn verified_access(state: &AppState, token: &str) -> Option<(AccessClaims, String)> {
    let (claims, kid) = signed_access(state, token).await?;
    let now = state.clock.now().unix_timestamp();
    (claims.iss == state.settings.issuer() && claims.exp > now).then_some((claims, kid))
}

/// A live access token: genuine (above) and live in the database right now, or
/// found in this node's cache of such answers, which is only consulted while the
/// invalidation listener proves it hears every revocation (`liveness`). The cache is
/// keyed by the token's SHA-256, so a hit is the very string that verified before.
pub async fn live_access(state: &AppState, token: &str) -> Result<Option<LiveAccess>, AppError> {
    if !looks_like_jwt(token) || token.len() > 8192 {
        return Ok(None);
    }
    let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    let now = state.clock.now();
    let lookups = &state.metrics.liveness_lookups;
    if let Some(known) = state.live.token(&key, now) {
        lookups.with_label_values(&["hit"]).inc();
        return Ok(known);
    }
    // Taken before the read: a revocation that lands during it voids the fill.
    let ticket = state.live.ticket();
    let Some((claims, kid)) = verified_access(state, token).await else {
        return Ok(None);
    };
    let exp = claims.exp;
    let live = state.store.live_access_token(claims.jti, &kid, now).await?;
    lookups
        .with_label_values(&[if ticket.is_some() { "miss" } else { "bypass" }])
        .inc();
    // The row must be the one the signature speaks of.
    let access = live
        .filter(|l| l.client_id == claims.client_id)
        .map(|live| LiveAccess { claims, live });
    if let Some(ticket) = ticket {
        // A genuine token found dead stays dead: remembered until it expires anyway.
        let until = cached_until(exp, access.as_ref().map(|a| a.live.live_until), now);
        state
            .live
            .put_token(ticket, key, access.clone(), until, now);
    }
    Ok(access)
}

/// When a cached answer about a token whose JWT says `exp` ends: a live one at the
/// earliest deadline the database gave (`live_until`), but never after `exp` itself.
/// The row's expiry keeps the fraction of a second the JWT's whole-second `exp` drops,
/// so the row alone would keep the token active up to a second after it expired.
pub fn cached_until(
    exp: i64,
    live_until: Option<OffsetDateTime>,
    now: OffsetDateTime,
) -> OffsetDateTime {
    let exp = OffsetDateTime::from_unix_timestamp(exp).unwrap_or(now);
    live_until.map_or(exp, |until| until.min(exp))
}

/// Whether `caller` may learn about a token issued to `owner` (checklist I3: only its
/// own, unless it is an `--introspect-any` API).
fn may_see(caller: &ClientRecord, owner: &str) -> bool {
    caller.introspect_any || caller.id == owner
}

/// RFC 7662 §2.2.
pub async fn introspect(
    state: &AppState,
    caller: &ClientRecord,
    token: &str,
) -> Result<Value, AppError> {
    let issuer = state.settings.issuer();
    if looks_like_jwt(token) {
        let Some(LiveAccess { claims: c, .. }) = live_access(state, token).await? else {
            return Ok(inactive());
        };
        if !may_see(caller, &c.client_id) {
            return Ok(inactive());
        }
        let mut out = json!({
            "active": true,
            "token_type": "Bearer",
            "iss": issuer,
            "sub": c.sub,
            "aud": c.aud,
            "client_id": c.client_id,
            "scope": c.scope,
            "iat": c.iat,
            "exp": c.exp,
            "jti": c.jti,
        });
        if let Some(obj) = out.as_object_mut() {
            if let Some(sid) = c.sid {
                obj.insert("sid".into(), json!(sid));
            }
            if let Some(acr) = c.acr {
                obj.insert("acr".into(), json!(acr));
            }
            if let Some(amr) = c.amr {
                obj.insert("amr".into(), json!(amr));
            }
            if let Some(t) = c.auth_time {
                obj.insert("auth_time".into(), json!(t));
            }
        }
        return Ok(out);
    }
    if token.len() > 256 {
        return Ok(inactive());
    }
    let Some(r) = state
        .store
        .live_refresh_token(&token_hash(token), state.clock.now())
        .await?
    else {
        return Ok(inactive());
    };
    if !may_see(caller, &r.client_id) {
        return Ok(inactive());
    }
    Ok(json!({
        "active": true,
        "token_type": "refresh_token",
        "iss": issuer,
        "sub": r.user_id.map_or_else(|| r.client_id.clone(), |u| u.to_string()),
        "client_id": r.client_id,
        "scope": r.scope,
        "iat": r.created_at.unix_timestamp(),
        "exp": r.expires_at.unix_timestamp(),
        "sid": r.session_id.map(|s| s.to_string()),
        "acr": r.acr,
        "amr": r.amr,
        "auth_time": r.auth_time.map(|t| t.unix_timestamp()),
    }))
}

/// RFC 7009 §2.1: revokes `token` if `caller` was issued it; answers the same for
/// unknown tokens and other clients' tokens (which stay valid). `token_type_hint` is
/// only a hint: both kinds are tried.
pub async fn revoke(state: &AppState, caller: &ClientRecord, token: &str) -> Result<(), AppError> {
    let now = state.clock.now();
    if looks_like_jwt(token) {
        // Revoking needs a genuine token (its jti is otherwise anyone's guess), but
        // not a live one: revoking an expired token is a harmless no-op.
        if let Some((claims, _)) = signed_access(state, token).await {
            let jti: Uuid = claims.jti;
            state
                .store
                .revoke_access_token(jti, &caller.id, now)
                .await?;
        }
        return Ok(());
    }
    if token.len() <= 256 {
        state
            .store
            .revoke_refresh_family(&token_hash(token), &caller.id, now)
            .await?;
    }
    Ok(())
}

/// The web origins (CORS) of the client a genuine access token of ours was issued
/// to, expired or revoked alike (its app must be able to read that answer too);
/// none for anything else.
pub async fn token_web_origins(state: &AppState, token: &str) -> Result<Vec<String>, AppError> {
    if !looks_like_jwt(token) || token.len() > 8192 {
        return Ok(Vec::new());
    }
    let Some((claims, _)) = signed_access(state, token).await else {
        return Ok(Vec::new());
    };
    if claims.iss != state.settings.issuer() {
        return Ok(Vec::new());
    }
    Ok(super::clients::find(state, &claims.client_id)
        .await?
        .map(|c| c.web_origins)
        .unwrap_or_default())
}

/// OIDC Core §5.3: the claims about the token's user, if the token is live and was
/// granted `openid`.
pub async fn userinfo(state: &AppState, token: &str) -> Result<Value, AppError> {
    let Some(LiveAccess { claims, live }) = live_access(state, token).await? else {
        return Err(AppError::InvalidToken);
    };
    // The token's own scope: a refresh may have narrowed it below the grant's.
    let scopes = Scopes::parse(&claims.scope).unwrap_or_default();
    let (Some(user), true) = (live.user_id, scopes.contains("openid")) else {
        return Err(AppError::OAuth {
            status: actix_web::http::StatusCode::FORBIDDEN,
            error: "insufficient_scope",
            description: "The token was not granted the openid scope.".into(),
        });
    };
    let mut out = json!({ "sub": user.to_string() });
    if scopes.contains("email")
        && let (Some(obj), Some(email)) = (out.as_object_mut(), live.email)
    {
        obj.insert("email".into(), json!(email));
        obj.insert(
            "email_verified".into(),
            json!(live.email_verified.unwrap_or(false)),
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_answer_ends_at_the_jwt_exp_when_the_row_ends_later() {
        let now = OffsetDateTime::from_unix_timestamp(1_000).unwrap();
        let row =
            OffsetDateTime::from_unix_timestamp(1_600).unwrap() + time::Duration::milliseconds(900);
        let exp = 1_600;
        assert_eq!(
            cached_until(exp, Some(row), now).unix_timestamp_nanos(),
            1_600_000_000_000
        );
        // A session that ends earlier still ends the answer earlier.
        let idle = OffsetDateTime::from_unix_timestamp(1_200).unwrap();
        assert_eq!(cached_until(exp, Some(idle), now), idle);
        // A dead token is remembered until its exp.
        assert_eq!(cached_until(exp, None, now).unix_timestamp(), 1_600);
    }
}
