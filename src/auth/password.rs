//! Changing the password while signed in (DESIGN.md "Precise rules": it revokes every
//! other session and gives the current one a new token).

use super::RequestContext;
use super::events::{event, event_with};
use super::login::{self, PasswordCheck, hash_slot};
use super::second_factor::require_fresh;
use crate::domain::{Email, Password, SessionToken, UserId};
use crate::error::AppError;
use crate::mail::messages;
use crate::state::AppState;
use crate::store::{KeepSession, SessionRecord};

/// The page, for the step-up to come back to.
pub const PAGE: &str = "/account/password";

pub enum ChangeOutcome {
    /// Changed; the session's new cookie token.
    Changed(SessionToken),
    WrongPassword,
    Throttled {
        retry_after_secs: u64,
    },
    Mismatch,
    /// The new password breaks a rule; the message says which.
    Weak(String),
    /// Changed meanwhile by someone else (a reset): nothing was done.
    Stale,
}

/// Whether the person has a password at all (one who came from an upstream may not):
/// the pages ask for the current one only then.
pub async fn has_password(state: &AppState, user_id: UserId) -> Result<bool, AppError> {
    Ok(state.store.factors(user_id).await?.has_password)
}

/// The current password proven, for a change: the hash it matched, or `None` for a
/// person who has none.
async fn current_hash(
    state: &AppState,
    session: &SessionRecord,
    current: &str,
    ctx: &RequestContext,
) -> Result<Result<Option<String>, ChangeOutcome>, AppError> {
    if !has_password(state, session.user_id).await? {
        // Nothing to re-enter. The fresh second factor `change` demands first is the
        // proof instead: for a person without an app or a passkey that is a code
        // mailed to the account's address, and that mailbox can set a password
        // through "Forgot your password?" anyway, so asking nothing more here
        // gives nobody a way in they did not have. The store sets the password only
        // if there is still none (`Stale` otherwise).
        return Ok(Ok(None));
    }
    let email = Email::parse(&session.email)
        .map_err(|e| AppError::Unexpected(anyhow::anyhow!("stored e-mail invalid: {e}")))?;
    // Checked under the sign-in throttle: a stolen session must not be a password oracle.
    let checked = match login::check_password(state, &email, current, ctx).await? {
        PasswordCheck::Throttled { retry_after_secs } => {
            return Ok(Err(ChangeOutcome::Throttled { retry_after_secs }));
        }
        PasswordCheck::Wrong => return Ok(Err(ChangeOutcome::WrongPassword)),
        PasswordCheck::Right(c) if c.user.id == session.user_id => c,
        PasswordCheck::Right(_) => return Ok(Err(ChangeOutcome::WrongPassword)),
    };
    checked.refund(state).await?;
    Ok(Ok(Some(checked.hash().to_string())))
}

/// Changes (or, for a person without one, sets) the password of the session's user.
pub async fn change(
    state: &AppState,
    session: &SessionRecord,
    current: &str,
    new: &str,
    repeated: &str,
    ctx: &RequestContext,
) -> Result<ChangeOutcome, AppError> {
    require_fresh(state, session, PAGE, false).await?;
    if new != repeated {
        return Ok(ChangeOutcome::Mismatch);
    }
    let new = match Password::new_password(new) {
        Ok(p) => p,
        Err(e) => return Ok(ChangeOutcome::Weak(e.to_string())),
    };
    let old_hash = match current_hash(state, session, current, ctx).await? {
        Ok(hash) => hash,
        Err(outcome) => return Ok(outcome),
    };
    let slot = hash_slot(state)?;
    let new_hash = state.hasher.hash(slot, &new).await?;
    let token = SessionToken::generate();
    let reason = "password changed";
    let keep = KeepSession {
        id: session.id,
        new_token_hash: token.hash(),
        reason,
        revoked: event_with(state, "session_revoked", Some(ctx), reason)?,
    };
    let mails = [messages::password_changed_signed_in(
        &state.settings,
        &session.email,
    )];
    let changed = event(state, "password_changed", Some(ctx))?;
    if !state
        .store
        .change_password(
            session.user_id,
            old_hash.as_deref(),
            &new_hash,
            &keep,
            &mails,
            &changed,
        )
        .await?
    {
        return Ok(ChangeOutcome::Stale);
    }
    tracing::info!(user_id = %session.user_id, "password changed"); // log-ok: no secret
    Ok(ChangeOutcome::Changed(token))
}
