//! Security events as the services describe them: the request's address and user
//! agent sealed like a session's (DESIGN.md principle 2).

use super::RequestContext;
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
            .map(|c| seal("security_events.ip", c.ip.to_string().as_bytes()))
            .transpose()?,
        user_agent_enc: ctx
            .and_then(|c| c.user_agent.as_ref())
            .map(|ua| seal("security_events.user_agent", ua.as_bytes()))
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
