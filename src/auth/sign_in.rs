//! One way to finish a sign-in. Every credential — a password, a passkey, a second
//! factor after either, an upstream identity provider's word, a new account — ends
//! here, where a proven person becomes a session: the row (its `aal` and `amr`, its
//! lifetimes, the `prompt=login` mark its `return_to` carries, the contextual checks'
//! flag, the upstream session it came from), the device and its new-device notice, the
//! `signed_in` event, and the flag on the person's live sessions in other countries.
//! What stays with each caller is only how its proof is checked again inside the
//! transaction that stores the session (the password hash unchanged, the passkey's
//! counter, the code unspent), which is why the store call is theirs. kanidm funnels
//! every credential handler into one `issue_uat` for the same reason: a rule added
//! to sign-in is added once.
//!
//! The contextual checks a password and an upstream sign-in face are weighed here
//! too (`weigh`), so both are denied or asked for a second factor alike (DESIGN.md
//! "Sign in with another identity provider": "the same contextual checks as a
//! password sign-in").

use super::devices::{self, DeviceCookie};
use super::events::{event, event_with};
use super::login::CheckedPassword;
use super::second_factor::{self, PendingSignIn};
use super::sessions::{self, lifetimes};
use super::{RequestContext, risk};
use crate::crypto::columns;
use crate::domain::risk::{Assessment, Decision};
use crate::domain::{EmailError, SessionId, SessionToken, UserId};
use crate::error::AppError;
use crate::mail::messages;
use crate::state::AppState;
use crate::store::{
    Attempt, AttemptKeys, DeviceLink, FlagOthers, RiskFlag, SignIn, UpstreamOrigin, UserRecord,
};

/// A new session for the browser: set this cookie.
pub struct NewBrowserSession {
    pub token: SessionToken,
    /// `Some` for "keep me signed in": the cookie's Max-Age.
    pub persist_for: Option<std::time::Duration>,
    /// The device cookie to (re)set: a year from now.
    pub device: DeviceCookie,
}

/// What a sign-in with a password or through an upstream came to.
pub enum SignInOutcome {
    SignedIn(NewBrowserSession),
    /// The person was proven; a second factor must follow at `/login/verify`.
    SecondFactor(PendingSignIn),
    /// Wrong e-mail or password, unknown account, disabled account: one answer.
    Failed,
    Throttled {
        retry_after_secs: u64,
    },
    /// The person was proven but the address is not confirmed yet (and must be).
    Unverified {
        email: String,
    },
    /// The e-mail is not even syntactically an address (nothing was counted).
    Malformed(EmailError),
    /// The person was proven, but the contextual checks blocked the sign-in (the
    /// owner was told by mail).
    Denied,
}

/// The session cookie's Max-Age: "keep me signed in" outlives the browser.
pub fn remembered_for(state: &AppState, remember_me: bool) -> Option<std::time::Duration> {
    remember_me.then(|| lifetimes(&state.settings, true).1)
}

/// How the person proved who they are, as the account's history names it.
#[derive(Clone, Copy, Debug)]
pub enum Via<'a> {
    Password,
    Passkey,
    /// An upstream identity provider, by its label ("Google").
    Upstream(&'a str),
}

/// What the contextual checks said about a sign-in, as far as its event tells.
#[derive(Clone, Debug)]
pub enum Weighed {
    /// Nothing worth a word.
    Usual,
    /// A trusted browser: the second factor an authenticator app asks for was skipped.
    TrustedBrowser,
    /// Signals that asked for nothing (their summary).
    Noted(String),
    /// The checks asked for a second factor, and it was proven (their summary).
    Flagged(String),
}

/// The `signed_in` event's detail: how, and what the checks said.
fn detail(via: Via<'_>, weighed: &Weighed) -> Option<String> {
    match (via, weighed) {
        (Via::Password, Weighed::Usual) => None,
        (Via::Password, Weighed::TrustedBrowser) => {
            Some("Trusted browser: no code asked for".into())
        }
        (Via::Password, Weighed::Noted(s)) => Some(s.clone()),
        (Via::Password, Weighed::Flagged(s)) => Some(format!("Flagged: {s}")),
        (Via::Passkey, Weighed::Flagged(s)) => Some(format!("Passkey; flagged: {s}")),
        (Via::Passkey, _) => Some("Passkey".into()),
        (Via::Upstream(label), w) => {
            let with = format!("Signed in with {label}");
            Some(match w {
                Weighed::Usual => with,
                Weighed::TrustedBrowser => format!("{with}; trusted browser: no code asked for"),
                Weighed::Noted(s) => format!("{with}; {s}"),
                Weighed::Flagged(s) => format!("{with}; flagged: {s}"),
            })
        }
    }
}

/// A proven person's session, as the caller's proof makes it.
pub struct Proven<'a> {
    pub via: Via<'a>,
    /// RFC 8176 method names: `["pwd"]` is `aal1`, `["fed"]` too; anything else
    /// (`["pwd", "otp"]`, `["hwk", "user"]`, `["fed", "email"]`) is `aal2`.
    pub amr: &'a [&'a str],
    pub remember_me: bool,
    /// Where the sign-in goes next: an authorization request's `prompt=login` mark
    /// in it is recorded on the session (`domain::oauth::login_mark_hash`).
    pub return_to: Option<&'a str>,
    /// The browser's earlier session, replaced in the same transaction.
    pub replaces: Option<SessionId>,
    pub weighed: Weighed,
    /// The session is born flagged with this (sealed under the session's context).
    pub risk_flag: Option<RiskFlag>,
    /// The upstream session it was made from.
    pub upstream: Option<UpstreamOrigin>,
}

/// What is read or made before the proof's transaction: the device (and the
/// new-device notice the store sends if the browser turns out new) and the flag for
/// the person's sessions in other countries.
pub struct Prepared {
    user_id: UserId,
    device: DeviceLink,
    cookie: DeviceCookie,
    flag_others: Option<FlagOthers>,
}

/// A sign-in ready for the store call that checks its proof again and commits it.
/// The session the browser already had (if any) is revoked in that same transaction:
/// one browser, one live session, and never a moment with neither or both.
pub struct Made {
    pub sign_in: SignIn,
    pub browser: NewBrowserSession,
}

/// The first half of finishing a sign-in of `user_id` (address `email`), done
/// before the proof is spent. `trust_browser`: the person ticked "Trust this
/// browser" with a second factor, so later sign-ins from it with nothing unusual
/// skip the code.
pub async fn prepare(
    state: &AppState,
    user_id: UserId,
    email: &str,
    ctx: &RequestContext,
    trust_browser: bool,
) -> Result<Prepared, AppError> {
    let (mut device, cookie) = devices::device_for_sign_in(state, user_id, email, ctx).await?;
    if trust_browser && let Some(ttl) = state.settings.mfa_trust_device {
        let ttl = time::Duration::seconds(i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2));
        device.trust_until = Some(state.clock.now() + ttl);
    }
    let flag_others = risk::flag_other_countries(state, email, ctx)?;
    Ok(Prepared {
        user_id,
        device,
        cookie,
        flag_others,
    })
}

impl Prepared {
    /// The second half: the session row, its event and the browser's cookies. No
    /// I/O, so a completion decided inside a code check can call it.
    pub fn finish(
        self,
        state: &AppState,
        ctx: &RequestContext,
        p: Proven<'_>,
    ) -> Result<Made, AppError> {
        let (token, mut session) =
            sessions::new_session(state, self.user_id, p.remember_me, ctx, p.amr)?;
        session.login_mark = crate::domain::oauth::login_mark_hash(p.return_to);
        session.risk_flag = p.risk_flag;
        session.upstream = p.upstream;
        let signed_in = match detail(p.via, &p.weighed) {
            Some(d) => event_with(state, "signed_in", Some(ctx), &d)?,
            None => event(state, "signed_in", Some(ctx))?,
        };
        Ok(Made {
            sign_in: SignIn {
                session,
                replaces: p.replaces,
                device: self.device,
                event: signed_in,
                flag_others: self.flag_others,
            },
            browser: NewBrowserSession {
                token,
                persist_for: remembered_for(state, p.remember_me),
                device: self.cookie,
            },
        })
    }
}

/// Both halves at once, for a proof that needs nothing in between.
pub async fn make(
    state: &AppState,
    user_id: UserId,
    email: &str,
    ctx: &RequestContext,
    p: Proven<'_>,
) -> Result<Made, AppError> {
    prepare(state, user_id, email, ctx, false)
        .await?
        .finish(state, ctx, p)
}

/// Counts a session that was made and says so in the log.
pub fn succeeded(state: &AppState, user_id: UserId, how: &'static str) {
    state.metrics.sign_ins.with_label_values(&["success"]).inc();
    tracing::info!(user_id = %user_id, how, "signed in");
}

/// What the contextual checks (and an authenticator app) ask of a sign-in whose
/// person is proven by a password or by an upstream.
pub enum Verdict {
    /// Blocked: recorded, and the owner told (within an allowance).
    Denied,
    /// A second factor first, for this reason (the session is born flagged with
    /// `risk_flag` when the checks asked for it).
    SecondFactor {
        reason: String,
        risk_flag: Option<RiskFlag>,
    },
    /// A session at once.
    Proceed(Weighed),
}

/// Weighs a sign-in after its first proof and before any session exists. `attempt`:
/// a password attempt's counts (its own failure record is not held against it).
pub async fn weigh(
    state: &AppState,
    user: &UserRecord,
    attempt: Option<&AttemptKeys>,
    ctx: &RequestContext,
) -> Result<Verdict, AppError> {
    let assessment = risk::assess_sign_in(state, user, ctx, attempt).await?;
    if assessment.decision == Decision::Deny {
        risk_denial(state, user, attempt, ctx, &assessment).await?;
        state.metrics.sign_ins.with_label_values(&["denied"]).inc();
        return Ok(Verdict::Denied);
    }
    if assessment.decision == Decision::SecondFactor {
        let risk_flag = assessment
            .flag()
            .map(|(names, wording)| {
                risk::seal_flag(state, columns::CHALLENGE_RISK_FLAG, names, &wording)
            })
            .transpose()?;
        return Ok(Verdict::SecondFactor {
            reason: assessment.summary(),
            risk_flag,
        });
    }
    // Whoever set up an authenticator app gives its code at every sign-in, through
    // an upstream too, unless this browser is trusted.
    if second_factor::always_required(state, user.id).await? && !assessment.trusted_browser {
        return Ok(Verdict::SecondFactor {
            reason: "authenticator app set up".into(),
            risk_flag: None,
        });
    }
    Ok(Verdict::Proceed(if assessment.trusted_browser {
        Weighed::TrustedBrowser
    } else if assessment.signals.is_empty() {
        Weighed::Usual
    } else {
        Weighed::Noted(assessment.summary())
    }))
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

/// Where a second factor demanded of a sign-in leads: the pending sign-in, or a
/// failure when the account changed meanwhile (a reset, a disabling).
async fn demand_second_factor(
    state: &AppState,
    user: &UserRecord,
    password: Option<&CheckedPassword>,
    demand: second_factor::Demand,
    ctx: &RequestContext,
) -> Result<SignInOutcome, AppError> {
    let Some(pending) = second_factor::demand(state, user, password, demand, ctx).await? else {
        state.metrics.sign_ins.with_label_values(&["failure"]).inc();
        return Ok(SignInOutcome::Failed);
    };
    state
        .metrics
        .sign_ins
        .with_label_values(&["second_factor"])
        .inc();
    Ok(SignInOutcome::SecondFactor(pending))
}

/// A sign-in whose password was right (`checked`): weighed, then a session, a
/// second factor, or a refusal.
pub(crate) async fn after_password(
    state: &AppState,
    checked: &CheckedPassword,
    remember_me: bool,
    return_to: Option<String>,
    replaces: Option<SessionId>,
    ctx: &RequestContext,
) -> Result<SignInOutcome, AppError> {
    let user = &checked.user;
    let weighed = match weigh(state, user, Some(checked.attempt()), ctx).await? {
        Verdict::Denied => return Ok(SignInOutcome::Denied),
        Verdict::SecondFactor { reason, risk_flag } => {
            let demand = second_factor::Demand {
                remember_me,
                return_to,
                reason,
                risk_flag,
                upstream: None,
            };
            return demand_second_factor(state, user, Some(checked), demand, ctx).await;
        }
        Verdict::Proceed(weighed) => weighed,
    };
    let made = make(
        state,
        user.id,
        &user.email,
        ctx,
        Proven {
            via: Via::Password,
            amr: &["pwd"],
            remember_me,
            return_to: return_to.as_deref(),
            replaces,
            weighed,
            risk_flag: None,
            upstream: None,
        },
    )
    .await?;
    let created = state
        .store
        .sign_in_succeeded(checked.attempt(), checked.hash(), &made.sign_in)
        .await?;
    if !created {
        // The password was reset or the user disabled while argon2 ran.
        state.metrics.sign_ins.with_label_values(&["failure"]).inc();
        return Ok(SignInOutcome::Failed);
    }
    succeeded(state, user.id, "password");
    Ok(SignInOutcome::SignedIn(made.browser))
}

/// The upstream identity provider that proved a person: which one (`upstreams.id`),
/// its label for pages and the account's history, and its session id (`sid`) when
/// its ID token carried one (its back-channel logout names it).
#[derive(Clone, Debug)]
pub struct Federated {
    pub upstream_id: uuid::Uuid,
    pub label: String,
    pub sid: Option<String>,
    /// The upstream's `sub`: the session is made only while it is linked to the user.
    pub subject: String,
    /// The upstream authenticated the person during this round trip (asked with
    /// `prompt=login`, `auth_time` in the ID token recent enough). Only such a
    /// sign-in answers an authorization request's `prompt=login` / `max_age`.
    pub fresh: bool,
}

/// A person proven by an upstream identity provider: the same contextual checks as a
/// password sign-in (without a password attempt of its own: the address's recent
/// failures still count), a denial is a denial, and a demanded second factor is
/// Gatehouse's own — a pending sign-in whose challenge carries the upstream and its
/// `sid`, so the session made after the code still records its origin. Whoever set
/// up an authenticator app gives its code unless the browser is trusted. The
/// session is `aal1` with `amr` `["fed"]` (after a second factor: `["fed",
/// <method>]`, `aal2`), tied to the upstream session, with a `signed_in` event naming
/// the upstream and the new-device notice of any sign-in. An unverified address,
/// when verified ones are required, gets `Unverified` and no session.
pub async fn federated(
    state: &AppState,
    user: &UserRecord,
    origin: Federated,
    remember_me: bool,
    return_to: Option<String>,
    replaces: Option<SessionId>,
    ctx: &RequestContext,
) -> Result<SignInOutcome, AppError> {
    if user.disabled {
        state.metrics.sign_ins.with_label_values(&["failure"]).inc();
        return Ok(SignInOutcome::Failed);
    }
    if state.settings.require_verified_email && !user.verified {
        state
            .metrics
            .sign_ins
            .with_label_values(&["unverified"])
            .inc();
        return Ok(SignInOutcome::Unverified {
            email: user.email.clone(),
        });
    }
    // An upstream sign-in its provider did not make afresh (its own silent single
    // sign-on, say) is no answer to `prompt=login` / `max_age`: no login mark on the
    // session, and none in where a second factor leads (the request asks again).
    let return_to = match return_to {
        Some(r) if !origin.fresh && crate::domain::oauth::login_mark_hash(Some(&r)).is_some() => {
            Some(crate::domain::oauth::without_login_mark(&r))
        }
        other => other,
    };
    let upstream = UpstreamOrigin {
        upstream_id: origin.upstream_id,
        sid: origin.sid,
        subject: Some(origin.subject),
    };
    let weighed = match weigh(state, user, None, ctx).await? {
        Verdict::Denied => return Ok(SignInOutcome::Denied),
        Verdict::SecondFactor { reason, risk_flag } => {
            let demand = second_factor::Demand {
                remember_me,
                return_to,
                reason: format!("{reason} (signed in with {})", origin.label),
                risk_flag,
                upstream: Some(upstream),
            };
            return demand_second_factor(state, user, None, demand, ctx).await;
        }
        Verdict::Proceed(weighed) => weighed,
    };
    let made = make(
        state,
        user.id,
        &user.email,
        ctx,
        Proven {
            via: Via::Upstream(&origin.label),
            amr: &["fed"],
            remember_me,
            return_to: return_to.as_deref(),
            replaces,
            weighed,
            risk_flag: None,
            upstream: Some(upstream),
        },
    )
    .await?;
    if !state.store.signed_in(&made.sign_in).await? {
        // Disabled, unlinked, or the upstream deleted meanwhile.
        state.metrics.sign_ins.with_label_values(&["failure"]).inc();
        return Ok(SignInOutcome::Failed);
    }
    succeeded(state, user.id, "upstream");
    Ok(SignInOutcome::SignedIn(made.browser))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_history_names_how_and_what_the_checks_said() {
        assert_eq!(detail(Via::Password, &Weighed::Usual), None);
        assert_eq!(
            detail(Via::Password, &Weighed::TrustedBrowser).as_deref(),
            Some("Trusted browser: no code asked for")
        );
        assert_eq!(
            detail(Via::Password, &Weighed::Flagged("New country".into())).as_deref(),
            Some("Flagged: New country")
        );
        assert_eq!(
            detail(Via::Passkey, &Weighed::Noted("New device".into())).as_deref(),
            Some("Passkey")
        );
        assert_eq!(
            detail(Via::Passkey, &Weighed::Flagged("New country".into())).as_deref(),
            Some("Passkey; flagged: New country")
        );
        assert_eq!(
            detail(Via::Upstream("Google"), &Weighed::Usual).as_deref(),
            Some("Signed in with Google")
        );
        assert_eq!(
            detail(
                Via::Upstream("Google"),
                &Weighed::Flagged("New country".into())
            )
            .as_deref(),
            Some("Signed in with Google; flagged: New country")
        );
    }
}
