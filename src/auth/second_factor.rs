//! Second factors at sign-in and at step-up (DESIGN.md "Second factor and step-up",
//! "Precise rules": wrong codes).
//!
//! A sign-in whose password was right but that needs a second factor becomes a
//! *challenge*: a row that expires in 10 minutes, named by a short-lived cookie. It is
//! not a session and grants nothing. A step-up is a challenge of a live session. Both
//! are completed by one proof: a TOTP code or a recovery code when the user has an
//! authenticator app, a passkey when they have one, else a code sent by e-mail. A
//! person with an app or a passkey is never offered nor accepted an e-mailed code, at
//! sign-in or step-up (the mailbox alone must never reach `aal2`; checklist L7). Every code is counted
//! before it is checked (5 per challenge, 10 per user and 30 per client address per
//! 15 minutes, in PostgreSQL), and a right code is re-checked inside the transaction
//! that completes the challenge, so a code works once even when two requests bring
//! it at the same moment.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use super::RequestContext;
use super::events::{event, event_with};
use super::login::CheckedPassword;
use super::sign_in::{self, NewBrowserSession, Proven, Via, Weighed};
use super::totp;
use crate::crypto::columns;
use crate::domain::otp::{code_bytes, new_email_code};
use crate::domain::{OutboundMail, PendingToken, SessionId, SessionToken, SubmittedCode, UserId};
use crate::error::AppError;
use crate::mail::messages;
use crate::state::AppState;
use crate::store::{
    Attempt, ChallengeRecord, CodeAttempt, CodeKeys, CodeLimits, Completed, Completion,
    NewChallenge, Proof, SessionRecord, UpstreamOrigin, UserRecord,
};

/// A half-finished sign-in or a step-up lasts this long.
pub const CHALLENGE_TTL: Duration = Duration::from_secs(600);
/// An e-mailed code works this long (and never past its challenge).
pub const EMAIL_CODE_TTL: Duration = Duration::from_secs(600);
/// Sensitive actions need a second factor proven this recently.
pub const STEP_UP_FRESHNESS: Duration = Duration::from_secs(600);
/// 5 wrong codes void a challenge; 10 per user and 30 per client address (across
/// every account) per 15 minutes.
pub const LIMITS: CodeLimits = CodeLimits {
    per_challenge: 5,
    per_user: 10,
    per_address: 30,
    window_secs: 900,
};
/// Code mails per user per 15 minutes (first sends and resends alike).
pub const CODE_MAILS_PER_WINDOW: i32 = 5;

fn span(d: Duration) -> time::Duration {
    time::Duration::seconds(i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2))
}

/// The key of the user's wrong-code counter (a keyed HMAC: no user id in the clear
/// in the throttle table).
pub fn user_code_key(state: &AppState, user_id: UserId) -> Vec<u8> {
    state.keys.mac(columns::THROTTLE_CODE, user_id.0.as_bytes())
}

/// The keys a code is counted under: the person's, and the client address's (an
/// IPv4 address or an IPv6 /64, as every per-address limit counts).
fn code_keys(state: &AppState, user_id: UserId, ctx: &RequestContext) -> CodeKeys {
    CodeKeys {
        user: user_code_key(state, user_id),
        address: state.keys.mac(
            columns::THROTTLE_CODE_ADDRESS,
            ctx.throttle_address().as_bytes(),
        ),
    }
}

/// Methods that prove possession of the authenticator itself (RFC 8176 names).
const STRONG: &[&str] = &["otp", "recovery", "hwk", "swk"];

/// Whether the session proved a second factor in the last 10 minutes — and, for a
/// user with an authenticator app, proved *that* factor: a code e-mailed to the
/// account's mailbox does not count then, or whoever holds only the mailbox (a reset
/// link, then an e-mailed code) could remove the app or move the account.
pub async fn is_fresh(state: &AppState, session: &SessionRecord) -> Result<bool, AppError> {
    // A session the contextual checks want proven again (its cookie turned up in
    // another country) is not fresh, however recent its last second factor.
    if super::risk::needs_proof(session) {
        return Ok(false);
    }
    let recent = session.aal == "aal2"
        && state.clock.now() - session.aal_reached_at < span(STEP_UP_FRESHNESS);
    if !recent {
        return Ok(false);
    }
    if session.amr.iter().any(|m| STRONG.contains(&m.as_str())) {
        return Ok(true);
    }
    Ok(!has_strong_factor(state, session.user_id).await?)
}

/// Whether the user has a factor stronger than their mailbox: an authenticator app
/// or a passkey that may be used. Then a step-up proves that factor, never an
/// e-mailed code (whoever holds only the mailbox must not change the account).
pub async fn has_strong_factor(state: &AppState, user_id: UserId) -> Result<bool, AppError> {
    let f = state.store.factors(user_id).await?;
    Ok(f.totp_confirmed_at.is_some() || f.usable_passkeys > 0)
}

/// The rule every sensitive action starts with: a second factor proven in the last
/// 10 minutes, else a step-up (`redirect` for a page visit, a 403 for a POST).
pub async fn require_fresh(
    state: &AppState,
    session: &SessionRecord,
    return_to: &str,
    redirect: bool,
) -> Result<(), AppError> {
    if is_fresh(state, session).await? {
        return Ok(());
    }
    Err(AppError::StepUpRequired {
        return_to: return_to.to_string(),
        redirect,
    })
}

/// Whether this user must give a second factor at every sign-in: those with an
/// authenticator app do. (The contextual checks may demand one of anybody, through
/// `demand`.)
pub async fn always_required(state: &AppState, user_id: UserId) -> Result<bool, AppError> {
    Ok(state
        .store
        .factors(user_id)
        .await?
        .totp_confirmed_at
        .is_some())
}

/// A sign-in waiting for its second factor: set this cookie and go to `/login/verify`.
pub struct PendingSignIn {
    pub token: PendingToken,
}

/// What a sign-in that must prove a second factor carries to its completion.
pub struct Demand {
    pub remember_me: bool,
    pub return_to: Option<String>,
    /// Why, for the account's history.
    pub reason: String,
    /// The contextual checks' reasons, if they demanded it: the session is born
    /// flagged with them.
    pub risk_flag: Option<crate::store::RiskFlag>,
    /// The upstream sign-in it completes: the session keeps that origin.
    pub upstream: Option<UpstreamOrigin>,
}

/// Demands a second factor for a sign-in whose person was proven — by a password
/// (`password`, whose hash must still be the account's) or by an upstream: TOTP (or
/// a recovery code) when the user has an authenticator app, a passkey when they have
/// one, else a code sent by e-mail at once. This is the one entry the contextual
/// checks use to step a sign-in up. `None` if the account changed meanwhile (reset,
/// disabled): the sign-in fails.
pub async fn demand(
    state: &AppState,
    user: &UserRecord,
    password: Option<&CheckedPassword>,
    d: Demand,
    ctx: &RequestContext,
) -> Result<Option<PendingSignIn>, AppError> {
    let now = state.clock.now();
    let token = PendingToken::generate();
    let reason = d.reason;
    let challenge = NewChallenge {
        id: uuid::Uuid::new_v4(),
        user_id: user.id,
        token_hash: Some(token.hash()),
        session_id: None,
        remember_me: d.remember_me,
        return_to: d.return_to,
        reason: reason.clone(),
        risk_flag: d.risk_flag,
        upstream: d.upstream,
        now,
        expires_at: now + span(CHALLENGE_TTL),
    };
    let mut mails = Vec::new();
    let mut code_mac = None;
    // Only for a person without an app or a passkey (checked again under the
    // user's lock when the challenge is stored).
    if !has_strong_factor(state, user.id).await? && code_mail_allowed(state, user.id).await? {
        let code = new_email_code();
        code_mac = Some(email_code_mac(state, challenge.id, &code));
        mails.push(messages::one_time_code(
            &state.settings,
            &user.email,
            code.expose_secret(),
        ));
    }
    let required = event_with(state, "second_factor_required", Some(ctx), &reason)?;
    let begun = state
        .store
        .begin_second_factor(
            password.map(CheckedPassword::attempt),
            password.map(CheckedPassword::hash),
            &challenge,
            code_mac
                .as_deref()
                .map(|mac| (mac, now + span(EMAIL_CODE_TTL))),
            &mails,
            &required,
        )
        .await?;
    Ok(begun.then_some(PendingSignIn { token }))
}

fn email_code_mac(state: &AppState, challenge: uuid::Uuid, code: &SecretString) -> Vec<u8> {
    state
        .keys
        .mac(columns::EMAIL_CODE, &email_code_binding(challenge, code))
}

/// An e-mailed code is bound to its challenge: the same digits mean nothing elsewhere.
fn email_code_binding(challenge: uuid::Uuid, code: &SecretString) -> Vec<u8> {
    let mut data = challenge.as_bytes().to_vec();
    data.extend_from_slice(code_bytes(code));
    data
}

fn recovery_binding(user_id: UserId, code: &SecretString) -> Vec<u8> {
    let mut data = user_id.0.as_bytes().to_vec();
    data.extend_from_slice(code_bytes(code));
    data
}

/// The MAC a recovery code is stored under (current key).
pub fn recovery_code_mac(state: &AppState, user_id: UserId, code: &SecretString) -> Vec<u8> {
    state
        .keys
        .mac(columns::RECOVERY_CODE, &recovery_binding(user_id, code))
}

async fn code_mail_allowed(state: &AppState, user_id: UserId) -> Result<bool, AppError> {
    Ok(code_mail_allowance(state, user_id).await? == Attempt::Allowed)
}

async fn code_mail_allowance(state: &AppState, user_id: UserId) -> Result<Attempt, AppError> {
    let key = state
        .keys
        .mac(columns::THROTTLE_CODE_MAIL, user_id.0.as_bytes());
    Ok(state
        .store
        .count_in_window(
            "code-mail",
            &key,
            state.clock.now(),
            CODE_MAILS_PER_WINDOW,
            LIMITS.window_secs,
        )
        .await?)
}

/// The half-finished sign-in behind a pending cookie, if it is still live.
pub async fn pending(
    state: &AppState,
    token: &PendingToken,
) -> Result<Option<ChallengeRecord>, AppError> {
    Ok(state
        .store
        .pending_sign_in(&token.hash(), state.clock.now())
        .await?)
}

/// The session's step-up challenge (made on first sight).
pub async fn step_up_challenge(
    state: &AppState,
    session: &SessionRecord,
) -> Result<ChallengeRecord, AppError> {
    let now = state.clock.now();
    let c = NewChallenge {
        id: uuid::Uuid::new_v4(),
        user_id: session.user_id,
        token_hash: None,
        session_id: Some(session.id),
        remember_me: false,
        return_to: None,
        reason: "step-up".into(),
        risk_flag: None,
        upstream: None,
        now,
        expires_at: now + span(CHALLENGE_TTL),
    };
    Ok(state.store.step_up_challenge(&c).await?)
}

pub enum SendOutcome {
    Sent,
    /// A person with an authenticator app or a passkey proves that (or a recovery
    /// code), never the mailbox: nothing was sent.
    NotOffered,
    Throttled {
        retry_after_secs: u64,
    },
    /// The challenge is gone: start again.
    Void,
}

/// Whether the challenge's person has a factor stronger than the mailbox (an
/// authenticator app, a usable passkey): then no code is e-mailed nor accepted by
/// e-mail, at sign-in and at step-up alike.
pub fn offers_stronger(ch: &ChallengeRecord) -> bool {
    ch.has_totp || ch.has_passkey
}

/// Sends (or re-sends) the challenge's e-mailed code. A resend voids the previous
/// code; sends are limited per user.
pub async fn send_code(state: &AppState, ch: &ChallengeRecord) -> Result<SendOutcome, AppError> {
    if offers_stronger(ch) {
        return Ok(SendOutcome::NotOffered);
    }
    if let Attempt::Blocked { retry_after_secs } = code_mail_allowance(state, ch.user_id).await? {
        return Ok(SendOutcome::Throttled { retry_after_secs });
    }
    let now = state.clock.now();
    let code = new_email_code();
    let mac = email_code_mac(state, ch.id, &code);
    let mail = messages::one_time_code(&state.settings, &ch.email, code.expose_secret());
    let sent = state
        .store
        .set_email_code(ch.id, &mac, now + span(EMAIL_CODE_TTL), &[mail], now)
        .await?;
    Ok(if sent {
        SendOutcome::Sent
    } else {
        SendOutcome::Void
    })
}

/// What a submitted code did.
pub enum CodeOutcome<T> {
    /// Right: the challenge is complete.
    Proven { done: T, completed: Completed },
    /// Wrong; this many tries are left on this challenge.
    Wrong { tries_left: i32 },
    /// The challenge is gone (expired, completed, or out of tries): start again.
    Void,
    /// The user's allowance of wrong codes is spent.
    Throttled { retry_after_secs: u64 },
    /// Not shaped like any code (nothing was counted).
    Malformed,
    /// This person has no code to type: their second factor is a passkey (the
    /// e-mailed code is not theirs to use). Nothing was counted.
    PasskeyOnly,
}

/// The proof a code could be, for this challenge; checked for real in the store.
async fn candidate_proof(
    state: &AppState,
    ch: &ChallengeRecord,
    code: &SubmittedCode,
) -> Result<Option<(Proof, &'static str)>, AppError> {
    match code {
        SubmittedCode::Digits(digits) => {
            if ch.has_totp
                && let Some(sealed) = state.store.totp_secret(ch.user_id, true).await?
                && let Some(step) = totp::matching_step(state, &sealed, digits)?
            {
                return Ok(Some((Proof::TotpStep(step), "otp")));
            }
            // A user with an app or a passkey proves that, not the mailbox.
            if ch.email_code_live && !offers_stronger(ch) {
                let macs = state
                    .keys
                    .mac_candidates(columns::EMAIL_CODE, &email_code_binding(ch.id, digits));
                return Ok(Some((Proof::EmailCode(macs), "email")));
            }
            Ok(None)
        }
        SubmittedCode::Recovery(code) if ch.has_totp => {
            let macs = state
                .keys
                .mac_candidates(columns::RECOVERY_CODE, &recovery_binding(ch.user_id, code));
            Ok(Some((Proof::RecoveryCode(macs), "recovery")))
        }
        SubmittedCode::Recovery(_) => Ok(None),
    }
}

/// Evaluates one code for a challenge: counted first, then checked, then (if right)
/// completed by `complete(method)` in one transaction.
async fn attempt_code<T>(
    state: &AppState,
    ch: &ChallengeRecord,
    raw: &str,
    ctx: &RequestContext,
    complete: impl FnOnce(&'static str) -> Result<(Completion, T), AppError>,
) -> Result<CodeOutcome<T>, AppError> {
    let outcome = |label: &str| {
        state
            .metrics
            .second_factor
            .with_label_values(&[label])
            .inc()
    };
    // No code can be right for a person whose only second factor is a passkey:
    // refused before it counts against anyone's allowance.
    if !ch.has_totp && offers_stronger(ch) {
        return Ok(CodeOutcome::PasskeyOnly);
    }
    let Some(code) = SubmittedCode::parse(raw) else {
        return Ok(CodeOutcome::Malformed);
    };
    let keys = code_keys(state, ch.user_id, ctx);
    let attempts = match state
        .store
        .reserve_code_attempt(ch.id, &keys, LIMITS, state.clock.now())
        .await?
    {
        CodeAttempt::Allowed { attempts } => attempts,
        CodeAttempt::Blocked { retry_after_secs } => {
            outcome("throttled");
            return Ok(CodeOutcome::Throttled { retry_after_secs });
        }
        CodeAttempt::Void => {
            outcome("void");
            return Ok(CodeOutcome::Void);
        }
    };
    if let Some((proof, method)) = candidate_proof(state, ch, &code).await? {
        let (completion, done) = complete(method)?;
        let settings = state.settings.clone();
        let email = ch.email.clone();
        let notices = move |c: &Completed| -> Vec<OutboundMail> {
            c.recovery_codes_left
                .map(|left| messages::recovery_code_used(&settings, &email, left))
                .into_iter()
                .collect()
        };
        if let Some(completed) = state
            .store
            .complete_challenge(ch.id, ch.user_id, &proof, &keys, &completion, &notices)
            .await?
        {
            outcome("right");
            return Ok(CodeOutcome::Proven { done, completed });
        }
    }
    outcome("wrong");
    let failed = event(state, "second_factor_failed", Some(ctx))?;
    let void = state
        .store
        .code_rejected(ch.id, ch.user_id, LIMITS, &failed)
        .await?;
    Ok(if void {
        CodeOutcome::Void
    } else {
        CodeOutcome::Wrong {
            tries_left: (LIMITS.per_challenge - attempts).max(0),
        }
    })
}

/// A finished sign-in: the browser's new session and where it goes.
pub struct FinishedSignIn {
    pub session: NewBrowserSession,
    pub return_to: Option<String>,
}

/// The session a completed sign-in becomes, through the one way every sign-in
/// becomes a session: `aal2` with `amr` `methods` after the first proof (`pwd`, or
/// `fed` for an upstream's), flagged when the contextual checks demanded the second
/// factor, tied to the upstream session it came from.
fn sign_in_completion(
    state: &AppState,
    ch: &ChallengeRecord,
    ctx: &RequestContext,
    prepared: sign_in::Prepared,
    replaces: Option<SessionId>,
    methods: &[&str],
) -> Result<(Completion, FinishedSignIn), AppError> {
    let amr: Vec<&str> = std::iter::once(first_method(ch))
        .chain(methods.iter().copied())
        .collect();
    // The challenge sealed the wording under its own context; the session seals it
    // under its own.
    let risk_flag = ch
        .risk_flag
        .as_ref()
        .map(|f| reseal_flag(state, f))
        .transpose()?;
    let made = prepared.finish(
        state,
        ctx,
        Proven {
            via: match &ch.upstream_label {
                Some(label) if ch.upstream.is_some() => Via::Upstream(label),
                _ => Via::Password,
            },
            amr: &amr,
            remember_me: ch.remember_me,
            return_to: ch.return_to.as_deref(),
            replaces,
            weighed: match &ch.risk_flag {
                Some(flag) => Weighed::Flagged(flag.summary.clone()),
                None => Weighed::Usual,
            },
            risk_flag,
            upstream: ch.upstream.clone(),
        },
    )?;
    let finished = FinishedSignIn {
        session: made.browser,
        return_to: ch.return_to.clone(),
    };
    Ok((Completion::SignIn(Box::new(made.sign_in)), finished))
}

/// The proof a pending sign-in began with: a password, or an upstream's word.
fn first_method(ch: &ChallengeRecord) -> &'static str {
    if ch.upstream.is_some() { "fed" } else { "pwd" }
}

/// Completes a half-finished sign-in with a code. The session is born `aal2` with
/// `amr` `["pwd", <method>]` (`["fed", <method>]` after an upstream); `replaces` is
/// the browser's earlier session.
/// `trust_browser`: the person ticked "Trust this browser", so later sign-ins from it
/// with nothing unusual skip the code.
pub async fn finish_sign_in(
    state: &AppState,
    ch: &ChallengeRecord,
    raw: &str,
    ctx: &RequestContext,
    replaces: Option<SessionId>,
    trust_browser: bool,
) -> Result<CodeOutcome<FinishedSignIn>, AppError> {
    let prepared = sign_in::prepare(state, ch.user_id, &ch.email, ctx, trust_browser).await?;
    attempt_code(state, ch, raw, ctx, |method| {
        sign_in_completion(state, ch, ctx, prepared, replaces, &[method])
    })
    .await
}

/// Completes a half-finished sign-in with a verified passkey assertion (`amr`
/// `["pwd", "hwk" | "swk", "user"]`, or `"fed"` first after an upstream). `None`, with nothing changed, if the challenge
/// is gone or the use no longer holds (its counter taken by a parallel request).
pub async fn finish_sign_in_with_passkey(
    state: &AppState,
    ch: &ChallengeRecord,
    proof: crate::store::PasskeyUse,
    methods: &[&str],
    ctx: &RequestContext,
    replaces: Option<SessionId>,
    trust_browser: bool,
) -> Result<Option<FinishedSignIn>, AppError> {
    let prepared = sign_in::prepare(state, ch.user_id, &ch.email, ctx, trust_browser).await?;
    let (completion, finished) = sign_in_completion(state, ch, ctx, prepared, replaces, methods)?;
    let keys = code_keys(state, ch.user_id, ctx);
    let done = state
        .store
        .complete_challenge(
            ch.id,
            ch.user_id,
            &Proof::Passkey(proof),
            &keys,
            &completion,
            &|_| Vec::new(),
        )
        .await?;
    Ok(done.map(|_| finished))
}

fn reseal_flag(
    state: &AppState,
    f: &crate::store::RiskFlag,
) -> Result<crate::store::RiskFlag, AppError> {
    let wording = state
        .keys
        .open(columns::CHALLENGE_RISK_FLAG, &f.sealed)
        .ok()
        .and_then(|p| String::from_utf8(p).ok())
        .unwrap_or_else(|| f.summary.clone());
    super::risk::seal_flag(
        state,
        columns::SESSION_RISK_REASON,
        f.summary.clone(),
        &wording,
    )
}

/// The completion of a step-up: the session raised to `aal2` under a new cookie
/// token, anchored where it was proven.
fn step_up_completion(
    state: &AppState,
    session: &SessionRecord,
    ctx: &RequestContext,
    methods: Vec<&'static str>,
) -> Result<(Completion, SessionToken), AppError> {
    let stepped_up = event(state, "stepped_up", Some(ctx))?;
    let anchor = ctx
        .location
        .country_code
        .is_some()
        .then(|| super::events::seal_location(state, columns::SESSION_ANCHOR, &ctx.location))
        .transpose()?;
    let token = SessionToken::generate();
    let completion = Completion::StepUp {
        session_id: session.id,
        new_token_hash: token.hash(),
        methods,
        event: Box::new(stepped_up),
        // Proven from here: the contextual checks take this place as the session's
        // own too (a traveller is not asked again and again).
        anchor_enc: anchor,
    };
    Ok((completion, token))
}

/// Raises a session to `aal2` with a code; the session gets a new cookie token
/// (checklist S2), returned here.
pub async fn step_up(
    state: &AppState,
    session: &SessionRecord,
    raw: &str,
    ctx: &RequestContext,
) -> Result<CodeOutcome<SessionToken>, AppError> {
    let ch = step_up_challenge(state, session).await?;
    attempt_code(state, &ch, raw, ctx, |method| {
        step_up_completion(state, session, ctx, vec![method])
    })
    .await
}

/// Raises a session to `aal2` with a verified passkey assertion; its new cookie
/// token, or `None` with nothing changed if the use no longer holds.
pub async fn step_up_with_passkey(
    state: &AppState,
    session: &SessionRecord,
    proof: crate::store::PasskeyUse,
    methods: Vec<&'static str>,
    ctx: &RequestContext,
) -> Result<Option<SessionToken>, AppError> {
    let ch = step_up_challenge(state, session).await?;
    let (completion, token) = step_up_completion(state, session, ctx, methods)?;
    let keys = code_keys(state, session.user_id, ctx);
    let done = state
        .store
        .complete_challenge(
            ch.id,
            session.user_id,
            &Proof::Passkey(proof),
            &keys,
            &completion,
            &|_| Vec::new(),
        )
        .await?;
    Ok(done.map(|_| token))
}
