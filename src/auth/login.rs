//! Sign-in and registration rules.
//!
//! Sign-in order matters: the attempt is counted (throttle reservation) *before* the
//! password is checked, and the same work is done whether or not the account exists,
//! so neither parallelism nor timing tells an attacker more than one try in sequence.

use crate::auth::events::event;
use crate::auth::sign_in::{self, Proven, Via, Weighed};
use crate::auth::{RequestContext, after_answer, mailflows};
use crate::domain::{Email, EmailError, Password, PasswordError, SessionId, UserId};
use crate::error::AppError;
use crate::hasher::Slot;
use crate::mail::messages;
use crate::state::AppState;
use crate::store::{
    Attempt, AttemptKeys, NewAccount, NewUser, StoreError, ThrottleLimits, UserRecord,
};

// Finishing a sign-in is one module's work; these names stay here for the pages.
pub use crate::auth::sign_in::{DENIED, NewBrowserSession, SignInOutcome, remembered_for};

/// The per-IP window of DESIGN.md "Precise rules": N failures in 5 minutes.
pub const IP_WINDOW_SECS: i32 = 300;
/// The per-account backoff cap: 15 minutes.
pub const MAX_BACKOFF_SECS: i32 = 900;

fn limits(state: &AppState) -> ThrottleLimits {
    ThrottleLimits {
        account_max_failures: i32::try_from(state.settings.login_max_failures).unwrap_or(i32::MAX),
        ip_max_failures: i32::try_from(state.settings.ip_max_failures).unwrap_or(i32::MAX),
        ip_window_secs: IP_WINDOW_SECS,
        max_backoff_secs: MAX_BACKOFF_SECS,
    }
}

/// A place in the argon2 queue, or 503 when it is full (nothing has been counted or
/// written yet).
pub fn hash_slot(state: &AppState) -> Result<Slot, AppError> {
    state.hasher.reserve().ok_or_else(|| {
        state.metrics.argon2_refused.inc();
        AppError::Overloaded
    })
}

pub async fn sign_in(
    state: &AppState,
    email: &str,
    password: &str,
    remember_me: bool,
    ctx: &RequestContext,
    replaces: Option<SessionId>,
    return_to: Option<String>,
) -> Result<SignInOutcome, AppError> {
    let email = match Email::parse(email) {
        Ok(e) => e,
        Err(e) => return Ok(SignInOutcome::Malformed(e)),
    };
    let checked = match check_password(state, &email, password, ctx).await? {
        PasswordCheck::Throttled { retry_after_secs } => {
            state
                .metrics
                .sign_ins
                .with_label_values(&["throttled"])
                .inc();
            return Ok(SignInOutcome::Throttled { retry_after_secs });
        }
        PasswordCheck::Wrong => {
            state.metrics.sign_ins.with_label_values(&["failure"]).inc();
            return Ok(SignInOutcome::Failed);
        }
        PasswordCheck::Right(checked) => checked,
    };
    let user = &checked.user;
    if state.settings.require_verified_email && !user.verified {
        // The right password: not a guess, so it does not count.
        checked.refund(state).await?;
        state
            .metrics
            .sign_ins
            .with_label_values(&["unverified"])
            .inc();
        return Ok(SignInOutcome::Unverified {
            email: user.email.clone(),
        });
    }
    // The contextual checks, after the password and before any session exists;
    // then the one way every sign-in becomes a session.
    sign_in::after_password(state, &checked, remember_me, return_to, replaces, ctx).await
}

/// A password that was checked and found right, with the throttle counts it holds.
pub struct CheckedPassword {
    pub user: UserRecord,
    /// The hash the password matched: the session or challenge it leads to is made
    /// only if it is still the account's.
    hash: String,
    /// The counts and provisional failure event it holds, taken back on success.
    attempt: AttemptKeys,
}

impl CheckedPassword {
    /// The stored hash the password matched.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// The throttle counts this check holds.
    pub fn attempt(&self) -> &AttemptKeys {
        &self.attempt
    }

    /// Takes back what the check counted, when no session follows.
    pub async fn refund(&self, state: &AppState) -> Result<(), AppError> {
        Ok(state.store.sign_in_refund(&self.attempt).await?)
    }
}

pub enum PasswordCheck {
    Right(CheckedPassword),
    /// Wrong password, unknown or disabled account: one answer. Counted.
    Wrong,
    Throttled {
        retry_after_secs: u64,
    },
}

/// Checks an account's password under the sign-in throttle: wherever a password is
/// checked (sign-in, re-entering it to change the address), guesses count the same.
pub async fn check_password(
    state: &AppState,
    email: &Email,
    password: &str,
    ctx: &RequestContext,
) -> Result<PasswordCheck, AppError> {
    // Keyed hashes: the throttle table holds neither addresses nor IPs in the clear,
    // and an unknown address gets a counter exactly like a real one.
    let account_key = state
        .keys
        .mac("throttle/account", email.as_str().as_bytes());
    let ip_key = state
        .keys
        .mac("throttle/ip", ctx.throttle_address().as_bytes());
    // Reserved before anything is counted: a full queue answers 503 and costs the
    // account nothing.
    let slot = hash_slot(state)?;
    // The account's history records the attempt as a failure in the same statement
    // that counts it, with time and place (the risk checks count these); a right
    // password takes it back with the counts.
    let keys = AttemptKeys {
        account_key,
        ip_key,
        failure_id: uuid::Uuid::new_v4(),
    };
    let failure = event(state, "sign_in_failed", Some(ctx))?;
    let (attempt, user) = state
        .store
        .begin_sign_in(email, &keys, limits(state), &failure)
        .await?;
    if let Attempt::Blocked { retry_after_secs } = attempt {
        return Ok(PasswordCheck::Throttled { retry_after_secs });
    }
    let matched = match Password::for_verification(password) {
        Some(pw) => {
            match state
                .hasher
                // An unknown account and an account without a password both
                // cost the dummy hash's work and match nothing: the same answer,
                // the same time, as a wrong password.
                .verify(
                    slot,
                    &pw,
                    user.as_ref().and_then(|u| u.password_hash.as_deref()),
                )
                .await
            {
                Ok(matched) => matched,
                Err(e) => {
                    // Never evaluated (the wait gave up, or hashing failed): this
                    // attempt must not count against the person.
                    state.store.sign_in_uncount(&keys, limits(state)).await?;
                    return Err(e.into());
                }
            }
        }
        None => false,
    };
    Ok(match user {
        Some(user) if matched && !user.disabled => match user.password_hash.clone() {
            Some(hash) => PasswordCheck::Right(CheckedPassword {
                user,
                hash,
                attempt: keys,
            }),
            None => PasswordCheck::Wrong,
        },
        _ => PasswordCheck::Wrong,
    })
}

pub enum RegisterOutcome {
    SignedIn(NewBrowserSession),
    Throttled {
        retry_after_secs: u64,
    },
    BadEmail(EmailError),
    BadPassword(PasswordError),
    /// The address already has an account; nothing was written.
    Taken,
    /// Verification required: the account (if new) waits for its link; the person is
    /// told to check their inbox whether or not the address already had an account.
    CheckInbox,
}

/// Creates an account and signs the person in at once (no e-mail verification yet).
pub async fn register(
    state: &AppState,
    email: &str,
    password: &str,
    ctx: &RequestContext,
    replaces: Option<SessionId>,
) -> Result<RegisterOutcome, AppError> {
    let email = match Email::parse(email) {
        Ok(e) => e,
        Err(e) => return Ok(RegisterOutcome::BadEmail(e)),
    };
    let password = match Password::new_password(password) {
        Ok(p) => p,
        Err(e) => return Ok(RegisterOutcome::BadPassword(e)),
    };
    // Each registration costs an argon2 hash and a row: bounded per client address.
    let ip_key = state
        .keys
        .mac("throttle/register", ctx.throttle_address().as_bytes());
    let slot = hash_slot(state)?;
    let max = i32::try_from(state.settings.registrations_per_ip_hour).unwrap_or(i32::MAX);
    if let Attempt::Blocked { retry_after_secs } = state
        .store
        .count_in_window("register", &ip_key, state.clock.now(), max, 3600)
        .await?
    {
        state
            .metrics
            .registrations
            .with_label_values(&["throttled"])
            .inc();
        return Ok(RegisterOutcome::Throttled { retry_after_secs });
    }
    let password_hash = state.hasher.hash(slot, &password).await?;
    let user_id = UserId::new();
    let registered = event(state, "registered", Some(ctx))?;
    let now = state.clock.now();
    let user = NewUser {
        id: user_id,
        email: email.clone(),
        password_hash: Some(password_hash),
        is_admin: false,
        verified: false,
        now,
    };
    if state.settings.require_verified_email {
        // The same answer whether the address is new or taken (no enumeration, L2);
        // only the mail differs: a link for a new account, a notice for an existing one.
        // Both count against the address's mail allowance, so the allowance (seen
        // through forgot-password's 429) cannot tell them apart either. A new account
        // gets its link regardless; a notice to an existing one only within it.
        let notice_allowed =
            mailflows::mail_allowance(state, &email, ctx).await? == Attempt::Allowed;
        let (token, mail) =
            mailflows::verification(&state.clock, &state.settings, user_id, email.as_str());
        // The answer goes now; the account (or the notice) is written after it, so
        // a new address and a taken one cost the same time before the answer.
        let store = state.store.clone();
        let settings = state.settings.clone();
        let clock = state.clock.clone();
        // Retried while the database is unreachable (the person was already told to
        // check their inbox).
        after_answer(state, "registration", move || {
            let (store, settings, clock) = (store.clone(), settings.clone(), clock.clone());
            let (user, token, mail, registered, email) = (
                user.clone(),
                token.clone(),
                mail.clone(),
                registered.clone(),
                email.clone(),
            );
            async move {
                let mails = [mail];
                let account = NewAccount {
                    user,
                    session: None,
                    token: Some(token),
                    mails: &mails,
                    event: registered,
                };
                match store.create_user(account).await {
                    Ok(()) => {
                        tracing::info!(user_id = %user_id, "account registered, awaiting confirmation");
                        Ok(())
                    }
                    Err(StoreError::Conflict) => {
                        // A retry whose first try did commit finds its own account.
                        if store
                            .user_by_email(&email)
                            .await?
                            .is_some_and(|u| u.id == user_id)
                        {
                            return Ok(());
                        }
                        if !notice_allowed {
                            return Ok(());
                        }
                        let notice = messages::account_exists(&settings, email.as_str());
                        store.enqueue_mail(&notice, clock.now()).await
                    }
                    Err(e) => Err(e),
                }
            }
        });
        // One metric label for both outcomes: public metrics must not tell which
        // addresses have accounts.
        state
            .metrics
            .registrations
            .with_label_values(&["accepted"])
            .inc();
        return Ok(RegisterOutcome::CheckInbox);
    }
    let made = sign_in::make(
        state,
        user_id,
        email.as_str(),
        ctx,
        Proven {
            via: Via::Password,
            amr: &["pwd"],
            remember_me: false,
            return_to: None,
            replaces,
            weighed: Weighed::Usual,
            risk_flag: None,
            upstream: None,
        },
    )
    .await?;
    let account = NewAccount {
        user,
        session: Some(made.sign_in),
        token: None,
        mails: &[],
        event: registered,
    };
    match state.store.create_user(account).await {
        Ok(()) => {
            state
                .metrics
                .registrations
                .with_label_values(&["created"])
                .inc();
            tracing::info!(user_id = %user_id, "account registered");
            Ok(RegisterOutcome::SignedIn(made.browser))
        }
        Err(StoreError::Conflict) => {
            state
                .metrics
                .registrations
                .with_label_values(&["taken"])
                .inc();
            Ok(RegisterOutcome::Taken)
        }
        Err(e) => Err(e.into()),
    }
}

/// For the `user create` command: an account with no session. `password`: `None`
/// for an account without one (it signs in through an upstream, or sets one with
/// "Forgot your password?").
pub async fn create_user(
    state: &AppState,
    email: &str,
    password: Option<&str>,
    is_admin: bool,
    verified: bool,
) -> anyhow::Result<UserId> {
    let email = Email::parse(email).map_err(|e| anyhow::anyhow!("--email: {e}"))?;
    let password_hash = match password {
        Some(password) => {
            let password =
                Password::new_password(password).map_err(|e| anyhow::anyhow!("password: {e}"))?;
            let slot = state
                .hasher
                .reserve()
                .ok_or_else(|| anyhow::anyhow!("password hashing is busy"))?;
            Some(state.hasher.hash(slot, &password).await?)
        }
        None => None,
    };
    let id = UserId::new();
    let user = NewUser {
        id,
        email,
        password_hash,
        is_admin,
        verified,
        now: state.clock.now(),
    };
    let account = NewAccount {
        user,
        session: None,
        token: None,
        mails: &[],
        event: event(state, "registered", None)?,
    };
    match state.store.create_user(account).await {
        Ok(()) => Ok(id),
        Err(StoreError::Conflict) => Err(anyhow::anyhow!(
            "an account with that e-mail address already exists"
        )),
        Err(e) => Err(anyhow::Error::new(e)),
    }
}
