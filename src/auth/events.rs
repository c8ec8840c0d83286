//! Security events as the services describe them: the request's address and user
//! agent sealed like a session's (DESIGN.md principle 2).

use super::RequestContext;
use crate::crypto::columns;
use crate::domain::Location;
use crate::error::AppError;
use crate::state::AppState;
use crate::store::NewEvent;

/// An event caused by the person behind `ctx` (`None`: an operator or Gatehouse).
pub fn event(
    state: &AppState,
    kind: &'static str,
    ctx: Option<&RequestContext>,
) -> Result<NewEvent, AppError> {
    let seal = |context: &str, value: &[u8]| {
        state
            .keys
            .seal(context, value)
            .map_err(|e| AppError::Unexpected(e.into()))
    };
    Ok(NewEvent {
        kind,
        actor: if ctx.is_some() { "user" } else { "system" },
        at: state.clock.now(),
        ip_enc: ctx
            .map(|c| seal(columns::EVENT_IP, c.ip.to_string().as_bytes()))
            .transpose()?,
        user_agent_enc: ctx
            .and_then(|c| c.user_agent.as_ref())
            .map(|ua| seal(columns::EVENT_USER_AGENT, ua.as_bytes()))
            .transpose()?,
        location_enc: ctx
            .filter(|c| c.location.is_known())
            .map(|c| seal_location(state, columns::EVENT_LOCATION, &c.location))
            .transpose()?,
        detail: None,
    })
}

/// The same, with a non-personal detail (e.g. a revocation's reason).
pub fn event_with(
    state: &AppState,
    kind: &'static str,
    ctx: Option<&RequestContext>,
    detail: &str,
) -> Result<NewEvent, AppError> {
    let mut e = event(state, kind, ctx)?;
    e.detail = Some(detail.to_string());
    Ok(e)
}

/// A place, sealed as JSON for `context`.
pub fn seal_location(
    state: &AppState,
    context: &str,
    location: &Location,
) -> Result<Vec<u8>, AppError> {
    let json = serde_json::to_vec(location).map_err(|e| AppError::Unexpected(e.into()))?;
    state
        .keys
        .seal(context, &json)
        .map_err(|e| AppError::Unexpected(e.into()))
}

/// An operator's action (the `gatehouse` command line).
pub fn admin_event(
    state: &AppState,
    kind: &'static str,
    detail: Option<&str>,
) -> Result<NewEvent, AppError> {
    let mut e = event(state, kind, None)?;
    e.actor = "admin";
    e.detail = detail.map(str::to_string);
    Ok(e)
}
