//! Flows that go through the mailbox: address verification, password reset and
//! change of address. Every link is single use, stored only as a SHA-256, and built
//! from `GATEHOUSE_PUBLIC_URL`.

use time::Duration;

use crate::auth::events::event;
use crate::auth::login::{self, PasswordCheck, hash_slot};
use crate::auth::second_factor;
use crate::auth::{RequestContext, after_answer};
use crate::clock::Clock;
use crate::crypto;
use crate::domain::{Email, OutboundMail, Password, PasswordError, UserId};
use crate::error::AppError;
use crate::mail::messages;
use crate::settings::Settings;
use crate::state::AppState;
use crate::store::{Attempt, NewEmailToken, NewEvent, SessionRecord, StoreError};

pub const VERIFY_TTL: Duration = Duration::hours(24);
pub const RESET_TTL: Duration = Duration::minutes(30);
pub const CHANGE_TTL: Duration = Duration::hours(24);
/// Mails a person can make Gatehouse send to one address per hour, and per client
/// address (resends, resets, "you already have an account" notices).
pub const MAILS_PER_ADDRESS_HOUR: i32 = 3;
pub const MAILS_PER_IP_HOUR: i32 = 20;

fn new_token(
    clock: &Clock,
    purpose: &'static str,
    user_id: UserId,
    new_email: Option<String>,
    ttl: Duration,
) -> (String, NewEmailToken) {
    let token = crypto::random_token();
    let now = clock.now();
    let record = NewEmailToken {
        token_hash: crypto::token_hash(&token),
        purpose,
        user_id,
        new_email,
        now,
        expires_at: now + ttl,
    };
    (token, record)
}

/// A verification link for an account, and its mail. Takes the clock and settings
/// rather than the state, so work done after the answer can call it too.
pub fn verification(
    clock: &Clock,
    settings: &Settings,
    user_id: UserId,
    email: &str,
) -> (NewEmailToken, OutboundMail) {
    let (token, record) = new_token(clock, "verify", user_id, None, VERIFY_TTL);
    (record, messages::verify_email(settings, email, &token))
}

/// The confirmation link and mail of an account made by a sign-in with the upstream
/// labelled `label` (the mail says so, and to ignore it if that was not them).
pub fn upstream_verification(
    clock: &Clock,
    settings: &Settings,
    user_id: UserId,
    email: &str,
    label: &str,
) -> (NewEmailToken, OutboundMail) {
    let (token, record) = new_token(clock, "verify", user_id, None, VERIFY_TTL);
    (
        record,
        messages::verify_upstream_email(settings, email, &token, label),
    )
}

/// Counts a mail that a person asked for, per address and per client address.
/// Counted the same for addresses with and without an account.
pub async fn mail_allowance(
    state: &AppState,
    email: &Email,
    ctx: &RequestContext,
) -> Result<Attempt, AppError> {
    let now = state.clock.now();
    let by_ip = state
        .keys
        .mac("throttle/mail-ip", ctx.throttle_address().as_bytes());
    if let blocked @ Attempt::Blocked { .. } = state
        .store
        .count_in_window("mail-ip", &by_ip, now, MAILS_PER_IP_HOUR, 3600)
        .await?
    {
        return Ok(blocked);
    }
    let by_address = state
        .keys
        .mac("throttle/mail-address", email.as_str().as_bytes());
    Ok(state
        .store
        .count_in_window(
            "mail-address",
            &by_address,
            now,
            MAILS_PER_ADDRESS_HOUR,
            3600,
        )
        .await?)
}

/// Why a request for mail was refused.
pub enum MailRequest {
    /// Done (or nothing to do): the same answer either way.
    Accepted,
    Throttled {
        retry_after_secs: u64,
    },
    BadEmail(String),
}

/// The address a person asks mail for, parsed and counted against the mail allowance
/// (alike for addresses with and without an account); `Err` is the refusal to show.
/// `purpose` labels the request in `/metrics`, counted here, before anything differs
/// between addresses with and without an account.
async fn requested_address(
    state: &AppState,
    email: &str,
    ctx: &RequestContext,
    purpose: &'static str,
) -> Result<Result<Email, MailRequest>, AppError> {
    let email = match Email::parse(email) {
        Ok(email) => email,
        Err(e) => return Ok(Err(MailRequest::BadEmail(e.to_string()))),
    };
    Ok(match mail_allowance(state, &email, ctx).await? {
        Attempt::Allowed => {
            state
                .metrics
                .mail_requests
                .with_label_values(&[purpose])
                .inc();
            Ok(email)
        }
        Attempt::Blocked { retry_after_secs } => Err(MailRequest::Throttled { retry_after_secs }),
    })
}

/// "Send me a new confirmation link." Answered at once, like `forgot_password`.
pub async fn resend_verification(
    state: &AppState,
    email: &str,
    ctx: &RequestContext,
) -> Result<MailRequest, AppError> {
    let email = match requested_address(state, email, ctx, "verification_resend").await? {
        Ok(email) => email,
        Err(refused) => return Ok(refused),
    };
    let store = state.store.clone();
    let settings = state.settings.clone();
    let clock = state.clock.clone();
    after_answer(state, "verification resend", move || {
        let (store, settings, clock, email) = (
            store.clone(),
            settings.clone(),
            clock.clone(),
            email.clone(),
        );
        async move {
            if let Some(user) = store.user_by_email(&email).await?
                && !user.verified
                && !user.disabled
            {
                let (record, mail) = verification(&clock, &settings, user.id, &user.email);
                store.issue_email_token(record, &[mail], None).await?;
            }
            Ok(())
        }
    });
    Ok(MailRequest::Accepted)
}

/// "I forgot my password." The answer does not depend on whether the address has an
/// account; the work that does happens after the answer, so timing does not either.
pub async fn forgot_password(
    state: &AppState,
    email: &str,
    ctx: &RequestContext,
) -> Result<MailRequest, AppError> {
    let email = match requested_address(state, email, ctx, "password_reset").await? {
        Ok(email) => email,
        Err(refused) => return Ok(refused),
    };
    let store = state.store.clone();
    let settings = state.settings.clone();
    let clock = state.clock.clone();
    after_answer(state, "password reset", move || {
        let (store, settings, clock, email) = (
            store.clone(),
            settings.clone(),
            clock.clone(),
            email.clone(),
        );
        async move {
            if let Some(user) = store.user_by_email(&email).await?
                && !user.disabled
            {
                let (token, record) = new_token(&clock, "reset", user.id, None, RESET_TTL);
                let mail = messages::password_reset(&settings, &user.email, &token);
                store.issue_email_token(record, &[mail], None).await?;
            }
            Ok(())
        }
    });
    Ok(MailRequest::Accepted)
}

/// Whether a verification link is live (for showing its confirm button).
pub async fn verify_link_is_live(state: &AppState, token: &str) -> Result<bool, AppError> {
    link_is_live(state, token, "verify").await
}

/// Whether an address-change link is live (for showing its confirm button).
pub async fn change_link_is_live(state: &AppState, token: &str) -> Result<bool, AppError> {
    link_is_live(state, token, "change").await
}

async fn link_is_live(state: &AppState, token: &str, purpose: &str) -> Result<bool, AppError> {
    Ok(state
        .store
        .email_token(&crypto::token_hash(token), purpose, state.clock.now())
        .await?
        .is_some())
}

/// Whether a reset link is live (for showing the form).
pub async fn reset_link_is_live(state: &AppState, token: &str) -> Result<bool, AppError> {
    link_is_live(state, token, "reset").await
}

pub enum ResetOutcome {
    Done,
    BadPassword(PasswordError),
    DeadLink,
}

/// Sets a new password from a reset link: the link is used up, every session of the
/// user is revoked and a notice is mailed, in one transaction. Second factors are not
/// touched: a reset never lowers what signing in demands.
pub async fn reset_password(
    state: &AppState,
    token: &str,
    password: &str,
    ctx: &RequestContext,
) -> Result<ResetOutcome, AppError> {
    let password = match Password::new_password(password) {
        Ok(p) => p,
        Err(e) => return Ok(ResetOutcome::BadPassword(e)),
    };
    let hash = crypto::token_hash(token);
    let now = state.clock.now();
    let Some(link) = state.store.email_token(&hash, "reset", now).await? else {
        return Ok(ResetOutcome::DeadLink);
    };
    let phc = state.hasher.hash(hash_slot(state)?, &password).await?;
    let notice = messages::password_changed(&state.settings, &link.email);
    let mut reset = event(state, "password_reset", Some(ctx))?;
    reset.detail = Some("every session signed out".into());
    if state
        .store
        .reset_password(&hash, &phc, &[notice], &reset)
        .await?
    {
        tracing::info!(user_id = %link.user_id, "password reset; every session revoked"); // log-ok
        Ok(ResetOutcome::Done)
    } else {
        Ok(ResetOutcome::DeadLink)
    }
}

/// Verifies an address from its link.
pub async fn verify_email(
    state: &AppState,
    token: &str,
    ctx: &RequestContext,
) -> Result<bool, AppError> {
    let verified = event(state, "email_verified", Some(ctx))?;
    Ok(state
        .store
        .verify_email(&crypto::token_hash(token), &verified)
        .await?)
}

pub enum ChangeRequest {
    Sent { to: String },
    Throttled { retry_after_secs: u64 },
    WrongPassword,
    BadEmail(String),
    SameAddress,
}

/// A signed-in person asks to move the account to another address: a link goes to
/// the new address, a notice to the current one; nothing changes until the link is used.
pub async fn request_email_change(
    state: &AppState,
    session: &SessionRecord,
    current_password: &str,
    new_email: &str,
    ctx: &RequestContext,
) -> Result<ChangeRequest, AppError> {
    // A sensitive action: a second factor proven in the last 10 minutes.
    second_factor::require_fresh(state, session, "/account/email", false).await?;
    let user_id = session.user_id;
    let current_email = session.email.as_str();
    let new_email = match Email::parse(new_email) {
        Ok(e) => e,
        Err(e) => return Ok(ChangeRequest::BadEmail(e.to_string())),
    };
    if new_email.as_str() == current_email {
        return Ok(ChangeRequest::SameAddress);
    }
    let current = Email::parse(current_email)
        .map_err(|e| AppError::Unexpected(anyhow::anyhow!("stored e-mail invalid: {e}")))?;
    // A person without a password (one who came from an upstream) has none to
    // re-enter: the fresh second factor demanded above is the proof. Asking for
    // nothing more gives nobody a way in: that second factor is the app or passkey
    // when there is one, else a code mailed to the current address, whose holder
    // could set a password by "Forgot your password?" anyway.
    if super::password::has_password(state, user_id).await? {
        // The password is checked under the sign-in throttle: a stolen session
        // cookie must not become an unlimited password oracle.
        match login::check_password(state, &current, current_password, ctx).await? {
            PasswordCheck::Throttled { retry_after_secs } => {
                return Ok(ChangeRequest::Throttled { retry_after_secs });
            }
            PasswordCheck::Wrong => return Ok(ChangeRequest::WrongPassword),
            PasswordCheck::Right(checked) if checked.user.id == user_id => {
                checked.refund(state).await?
            }
            PasswordCheck::Right(_) => return Ok(ChangeRequest::WrongPassword),
        }
    }
    if let Attempt::Blocked { retry_after_secs } = mail_allowance(state, &new_email, ctx).await? {
        return Ok(ChangeRequest::Throttled { retry_after_secs });
    }
    state
        .metrics
        .mail_requests
        .with_label_values(&["email_change"])
        .inc();
    let (token, record) = new_token(
        &state.clock,
        "change",
        user_id,
        Some(new_email.as_str().to_string()),
        CHANGE_TTL,
    );
    let mails = [
        messages::confirm_new_email(&state.settings, new_email.as_str(), &token),
        messages::email_change_requested(&state.settings, current_email, new_email.as_str()),
    ];
    let requested: NewEvent = event(state, "email_change_requested", Some(ctx))?;
    state
        .store
        .issue_email_token(record, &mails, Some(&requested))
        .await?;
    Ok(ChangeRequest::Sent {
        to: new_email.as_str().to_string(),
    })
}

pub enum ChangeOutcome {
    Changed { to: String },
    DeadLink,
    Taken,
}

/// Applies an address change from the link sent to the new address.
pub async fn confirm_email_change(
    state: &AppState,
    token: &str,
    ctx: &RequestContext,
) -> Result<ChangeOutcome, AppError> {
    let hash = crypto::token_hash(token);
    let now = state.clock.now();
    let Some(link) = state.store.email_token(&hash, "change", now).await? else {
        return Ok(ChangeOutcome::DeadLink);
    };
    let Some(new_email) = link.new_email.clone() else {
        return Ok(ChangeOutcome::DeadLink);
    };
    let notice = messages::email_changed(&state.settings, &link.email, &new_email);
    let changed = event(state, "email_changed", Some(ctx))?;
    match state.store.change_email(&hash, &[notice], &changed).await {
        Ok(true) => {
            tracing::info!(user_id = %link.user_id, "e-mail address changed");
            Ok(ChangeOutcome::Changed { to: new_email })
        }
        Ok(false) => Ok(ChangeOutcome::DeadLink),
        Err(StoreError::Conflict) => Ok(ChangeOutcome::Taken),
        Err(e) => Err(e.into()),
    }
}
