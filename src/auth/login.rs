//! Sign-in and registration rules.
//!
//! Sign-in order matters: the attempt is counted (throttle reservation) *before* the
//! password is checked, and the same work is done whether or not the account exists,
//! so neither parallelism nor timing tells an attacker more than one try in sequence.

use crate::auth::devices::{self, DeviceCookie};
use crate::auth::events::{event, event_with};
use crate::auth::second_factor::{self, PendingSignIn};
use crate::auth::sessions::{self, lifetimes};
use crate::auth::{RequestContext, after_answer, mailflows, risk};
use crate::crypto::columns;
use crate::domain::risk::{Assessment, Decision};
use crate::domain::{Email, EmailError, Password, PasswordError, SessionId, SessionToken, UserId};
use crate::error::AppError;
use crate::hasher::Slot;
use crate::mail::messages;
use crate::state::AppState;
use crate::store::{
    Attempt, AttemptKeys, NewAccount, NewUser, SignIn, StoreError, ThrottleLimits, UserRecord,
};

/// The per-IP window of DESIGN.md "Precise rules": N failures in 5 minutes.
pub const IP_WINDOW_SECS: i32 = 300;
/// The per-account backoff cap: 15 minutes.
pub const MAX_BACKOFF_SECS: i32 = 900;

/// A new session for the browser: set this cookie.
pub struct NewBrowserSession {
    pub token: SessionToken,
    /// `Some` for "keep me signed in": the cookie's Max-Age.
    pub persist_for: Option<std::time::Duration>,
    /// The device cookie to (re)set: a year from now.
    pub device: DeviceCookie,
}

pub enum SignInOutcome {
    SignedIn(NewBrowserSession),
    /// The password was right; a second factor must follow at `/login/verify`.
    SecondFactor(PendingSignIn),
    /// Wrong e-mail or password, unknown account, disabled account: one answer.
    Failed,
    Throttled {
        retry_after_secs: u64,
    },
    /// The password was right but the address is not confirmed yet (and must be).
    Unverified {
        email: String,
    },
    /// The e-mail is not even syntactically an address (nothing was counted).
    Malformed(EmailError),
    /// The password was right, but the contextual checks blocked the sign-in (the
    /// owner was told by mail).
    Denied,
}

fn limits(state: &AppState) -> ThrottleLimits {
    ThrottleLimits {
        account_max_failures: i32::try_from(state.settings.login_max_failures).unwrap_or(i32::MAX),
        ip_max_failures: i32::try_from(state.settings.ip_max_failures).unwrap_or(i32::MAX),
        ip_window_secs: IP_WINDOW_SECS,
        max_backoff_secs: MAX_BACKOFF_SECS,
    }
}

/// Hands the new session to the browser. The session the browser already had (if
/// any) was revoked in the same transaction that created this one: one browser, one
/// live session, and never a moment with neither or both.
fn browser_session(
    state: &AppState,
    token: SessionToken,
    remember_me: bool,
    device: DeviceCookie,
) -> NewBrowserSession {
    NewBrowserSession {
        token,
        persist_for: remembered_for(state, remember_me),
        device,
    }
}

/// The session cookie's Max-Age: "keep me signed in" outlives the browser.
pub fn remembered_for(state: &AppState, remember_me: bool) -> Option<std::time::Duration> {
    remember_me.then(|| lifetimes(&state.settings, true).1)
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
    // The contextual checks, after the password and before any session exists.
    let assessment = risk::assess_sign_in(state, user, ctx, Some(checked.attempt())).await?;
    if assessment.decision == Decision::Deny {
        risk_denial(
            state,
            &checked.user,
            Some(checked.attempt()),
            ctx,
            &assessment,
        )
        .await?;
        state.metrics.sign_ins.with_label_values(&["denied"]).inc();
        return Ok(SignInOutcome::Denied);
    }
    let demand = if assessment.decision == Decision::SecondFactor {
        let flag = assessment
            .flag()
            .map(|(names, wording)| {
                risk::seal_flag(state, columns::CHALLENGE_RISK_FLAG, names, &wording)
            })
            .transpose()?;
        Some((assessment.summary(), flag))
    } else if second_factor::always_required(state, user.id).await? && !assessment.trusted_browser {
        Some(("authenticator app set up".to_string(), None))
    } else {
        None
    };
    if let Some((reason, risk_flag)) = demand {
        let pending = second_factor::demand(
            state,
            &checked,
            second_factor::Demand {
                remember_me,
                return_to,
                reason,
                risk_flag,
            },
            ctx,
        )
        .await?;
        let Some(pending) = pending else {
            state.metrics.sign_ins.with_label_values(&["failure"]).inc();
            return Ok(SignInOutcome::Failed);
        };
        state
            .metrics
            .sign_ins
            .with_label_values(&["second_factor"])
            .inc();
        return Ok(SignInOutcome::SecondFactor(pending));
    }
    let (token, mut session) = sessions::new_session(state, user.id, remember_me, ctx, &["pwd"])?;
    session.login_mark = crate::domain::oauth::login_mark_hash(return_to.as_deref());
    let (device, cookie) = devices::device_for_sign_in(state, user.id, &user.email, ctx).await?;
    let signed_in = if assessment.trusted_browser {
        event_with(
            state,
            "signed_in",
            Some(ctx),
            "Trusted browser: no code asked for",
        )?
    } else if assessment.signals.is_empty() {
        event(state, "signed_in", Some(ctx))?
    } else {
        event_with(state, "signed_in", Some(ctx), &assessment.summary())?
    };
    let sign_in = SignIn {
        session,
        replaces,
        device,
        event: signed_in,
        flag_others: risk::flag_other_countries(state, &user.email, ctx)?,
    };
    let created = state
        .store
        .sign_in_succeeded(&checked.attempt, &user.password_hash, &sign_in)
        .await?;
    if !created {
        // The password was reset or the user disabled while argon2 ran.
        state.metrics.sign_ins.with_label_values(&["failure"]).inc();
        return Ok(SignInOutcome::Failed);
    }
    state.metrics.sign_ins.with_label_values(&["success"]).inc();
    tracing::info!(user_id = %user.id, "signed in");
    Ok(SignInOutcome::SignedIn(browser_session(
        state,
        token,
        remember_me,
        cookie,
    )))
}

/// What a person is told when the contextual checks blocked their sign-in.
pub const DENIED: &str = "This sign-in was blocked because it looked unusual. If this is you, try again later from your usual network, or choose a new password with \"Forgot your password?\".";

/// Blocked-sign-in mails per user per 15 minutes: someone holding the password must
/// not be able to flood the owner's inbox.
const DENIAL_MAILS_PER_WINDOW: i32 = 3;

/// Records a sign-in the checks blocked, and tells the owner (within an allowance).
/// A password attempt's counts are taken back: the password was right, not a guess.
pub(crate) async fn risk_denial(
    state: &AppState,
    user: &UserRecord,
    attempt: Option<&AttemptKeys>,
    ctx: &RequestContext,
    assessment: &Assessment,
) -> Result<(), AppError> {
    let key = state
        .keys
        .mac(columns::THROTTLE_RISK_MAIL, user.id.0.as_bytes());
    let allowed = state
        .store
        .count_in_window(
            "code-mail",
            &key,
            state.clock.now(),
            DENIAL_MAILS_PER_WINDOW,
            risk::FAILURE_WINDOW_SECS,
        )
        .await?
        == Attempt::Allowed;
    let agent = crate::domain::Agent::parse(ctx.user_agent.as_deref());
    let (place, ip) = (ctx.location.place(), ctx.ip.to_string());
    let when = super::describe::when(state.clock.now());
    let mails: Vec<_> = allowed
        .then(|| {
            messages::sign_in_blocked(
                &state.settings,
                &user.email,
                &messages::SignInFacts {
                    device: &agent.label,
                    place: &place,
                    ip: &ip,
                    when: &when,
                },
                &assessment.reasons(),
            )
        })
        .into_iter()
        .collect();
    let denied = event_with(state, "sign_in_denied", Some(ctx), &assessment.summary())?;
    state
        .store
        .sign_in_denied(attempt, user.id, &denied, &mails)
        .await?;
    tracing::info!(user_id = %user.id, "sign-in blocked by the contextual checks");
    Ok(())
}

/// A password that was checked and found right, with the throttle counts it holds.
pub struct CheckedPassword {
    pub user: UserRecord,
    /// The counts and provisional failure event it holds, taken back on success.
    attempt: AttemptKeys,
}

impl CheckedPassword {
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
                .verify(slot, &pw, user.as_ref().map(|u| u.password_hash.as_str()))
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
        Some(user) if matched && !user.disabled => PasswordCheck::Right(CheckedPassword {
            user,
            attempt: keys,
        }),
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
        password_hash,
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
    let (token, session) = sessions::new_session(state, user_id, false, ctx, &["pwd"])?;
    let (device, cookie) = devices::device_for_sign_in(state, user_id, email.as_str(), ctx).await?;
    let sign_in = SignIn {
        session,
        replaces,
        device,
        event: event(state, "signed_in", Some(ctx))?,
        flag_others: None,
    };
    let account = NewAccount {
        user,
        session: Some(sign_in),
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
            Ok(RegisterOutcome::SignedIn(browser_session(
                state, token, false, cookie,
            )))
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

/// For the `user create` command: an account with no session.
pub async fn create_user(
    state: &AppState,
    email: &str,
    password: &str,
    is_admin: bool,
    verified: bool,
) -> anyhow::Result<UserId> {
    let email = Email::parse(email).map_err(|e| anyhow::anyhow!("--email: {e}"))?;
    let password =
        Password::new_password(password).map_err(|e| anyhow::anyhow!("password: {e}"))?;
    let slot = state
        .hasher
        .reserve()
        .ok_or_else(|| anyhow::anyhow!("password hashing is busy"))?;
    let password_hash = state.hasher.hash(slot, &password).await?;
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
