//! Managing second factors at `/account/mfa`: enrol an authenticator app (QR code,
//! then one valid code to confirm), see and regenerate recovery codes, remove it.
//! Every change needs a second factor proven in the last 10 minutes and mails a
//! notice, and, like every change of second factors (passkeys too), ends the
//! account's other sessions, gives this one a new cookie token, voids pending
//! challenges and change-of-address links and ends browser trust (`keep_this`, and
//! the store's `factor_changed`; checklist S8).

use secrecy::SecretString;

use super::RequestContext;
use super::events::{event, event_with};
use super::second_factor::{self, LIMITS, recovery_code_mac, require_fresh, user_code_key};
use super::totp::{self, EnrolmentSecret};
use crate::domain::otp::new_recovery_codes;
use crate::domain::{SessionToken, SubmittedCode};
use crate::error::AppError;
use crate::mail::messages;
use crate::state::AppState;
use crate::store::{Attempt, Factors, KeepSession, SessionRecord};

/// The page every change returns to after a step-up.
pub const PAGE: &str = "/account/mfa";

/// An enrolment older than this is started afresh.
const ENROLMENT_TTL: time::Duration = time::Duration::minutes(30);

pub async fn factors(state: &AppState, session: &SessionRecord) -> Result<Factors, AppError> {
    Ok(state.store.factors(session.user_id).await?)
}

/// The enrolment in progress (secret, URI, QR code), if one was started recently.
/// Showing the secret is part of adding a factor: only with a fresh second factor.
pub async fn enrolment(
    state: &AppState,
    session: &SessionRecord,
) -> Result<Option<EnrolmentSecret>, AppError> {
    let factors = state.store.factors(session.user_id).await?;
    let live = factors
        .totp_pending_since
        .is_some_and(|t| state.clock.now() - t < ENROLMENT_TTL);
    if !live || factors.totp_confirmed_at.is_some() {
        return Ok(None);
    }
    // Without a fresh second factor the page shows the overview (with its way to
    // step up), never the secret.
    if !second_factor::is_fresh(state, session).await? {
        return Ok(None);
    }
    let Some(sealed) = state.store.totp_secret(session.user_id, false).await? else {
        return Ok(None);
    };
    Ok(Some(totp::enrolment(state, &sealed, &session.email)?))
}

/// Starts an enrolment with a new secret. `Conflict` if an app is already set up.
pub async fn start(state: &AppState, session: &SessionRecord) -> Result<(), AppError> {
    require_fresh(state, session, PAGE, false).await?;
    let sealed = totp::new_secret(state)?;
    if !state
        .store
        .start_totp_enrolment(session.user_id, &sealed, state.clock.now())
        .await?
    {
        return Err(AppError::Conflict(
            "An authenticator app is already set up. Remove it first to set up another.".into(),
        ));
    }
    Ok(())
}

pub enum ConfirmOutcome {
    /// Set up: show these recovery codes once; the session has a new token.
    Confirmed {
        codes: Vec<SecretString>,
        token: SessionToken,
    },
    Wrong,
    Malformed,
    Throttled {
        retry_after_secs: u64,
    },
    /// No enrolment in progress (expired, or confirmed meanwhile).
    Gone,
}

/// The acting session of a second-factor change: it stays, under the new cookie
/// token returned here, while every other session of the person ends with `reason`.
pub fn keep_this(
    state: &AppState,
    session: &SessionRecord,
    reason: &'static str,
    ctx: &RequestContext,
) -> Result<(KeepSession, SessionToken), AppError> {
    let token = SessionToken::generate();
    let keep = KeepSession {
        id: session.id,
        new_token_hash: token.hash(),
        reason,
        revoked: event_with(state, "session_revoked", Some(ctx), reason)?,
    };
    Ok((keep, token))
}

/// Confirms an enrolment with one valid code from the app. Wrong codes count against
/// the user's allowance like any other code.
pub async fn confirm(
    state: &AppState,
    session: &SessionRecord,
    raw: &str,
    ctx: &RequestContext,
) -> Result<ConfirmOutcome, AppError> {
    require_fresh(state, session, PAGE, false).await?;
    let Some(SubmittedCode::Digits(code)) = SubmittedCode::parse(raw) else {
        return Ok(ConfirmOutcome::Malformed);
    };
    let Some(sealed) = state.store.totp_secret(session.user_id, false).await? else {
        return Ok(ConfirmOutcome::Gone);
    };
    let key = user_code_key(state, session.user_id);
    if let Attempt::Blocked { retry_after_secs } = state
        .store
        .count_in_window(
            "code",
            &key,
            state.clock.now(),
            LIMITS.per_user,
            LIMITS.window_secs,
        )
        .await?
    {
        return Ok(ConfirmOutcome::Throttled { retry_after_secs });
    }
    let wrong = || async {
        let failed = event(state, "second_factor_failed", Some(ctx))?;
        state
            .store
            .record_event(session.user_id, Some(session.id), &failed)
            .await?;
        Ok::<_, AppError>(ConfirmOutcome::Wrong)
    };
    let Some(step) = totp::matching_step(state, &sealed, &code)? else {
        return wrong().await;
    };
    let codes = new_recovery_codes();
    let macs: Vec<Vec<u8>> = codes
        .iter()
        .map(|c| recovery_code_mac(state, session.user_id, c))
        .collect();
    let (keep, token) = keep_this(state, session, "two-step verification turned on", ctx)?;
    let mails = [messages::totp_enabled(&state.settings, &session.email)];
    let enabled = event(state, "totp_enabled", Some(ctx))?;
    if !state
        .store
        .confirm_totp(
            session.user_id,
            &sealed,
            step,
            &macs,
            &key,
            &keep,
            &mails,
            &enabled,
        )
        .await?
    {
        return wrong().await;
    }
    tracing::info!(user_id = %session.user_id, "authenticator app set up");
    Ok(ConfirmOutcome::Confirmed { codes, token })
}

/// Removes the authenticator app and its recovery codes; returns the session's new
/// token. `NotFound` if none was set up.
pub async fn remove(
    state: &AppState,
    session: &SessionRecord,
    ctx: &RequestContext,
) -> Result<SessionToken, AppError> {
    require_fresh(state, session, PAGE, false).await?;
    let (keep, token) = keep_this(state, session, "two-step verification turned off", ctx)?;
    let mails = [messages::totp_removed(&state.settings, &session.email)];
    let removed = event(state, "totp_removed", Some(ctx))?;
    if !state
        .store
        .remove_totp(session.user_id, &keep, &mails, &removed)
        .await?
    {
        return Err(AppError::Conflict(
            "Two-step verification is not set up.".into(),
        ));
    }
    tracing::info!(user_id = %session.user_id, "authenticator app removed");
    Ok(token)
}

/// A new set of recovery codes (the old ones stop working), shown once, with the
/// session's new token.
pub async fn regenerate(
    state: &AppState,
    session: &SessionRecord,
    ctx: &RequestContext,
) -> Result<(Vec<SecretString>, SessionToken), AppError> {
    require_fresh(state, session, PAGE, false).await?;
    let codes = new_recovery_codes();
    let macs: Vec<Vec<u8>> = codes
        .iter()
        .map(|c| recovery_code_mac(state, session.user_id, c))
        .collect();
    let mails = [messages::recovery_codes_regenerated(
        &state.settings,
        &session.email,
    )];
    let made = event(state, "recovery_codes_regenerated", Some(ctx))?;
    let (keep, token) = keep_this(state, session, "new recovery codes", ctx)?;
    if !state
        .store
        .replace_recovery_codes(session.user_id, &macs, &keep, &mails, &made)
        .await?
    {
        return Err(AppError::Conflict(
            "Recovery codes come with an authenticator app: set one up first.".into(),
        ));
    }
    Ok((codes, token))
}
