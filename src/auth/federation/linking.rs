//! The linking rule (DESIGN.md "Identity is (upstream, `sub`)"): who an upstream
//! identity signs in as, and when a link is made.
//!
//! - (upstream, sub) known → that account.
//! - Unknown, an account has the same address → no link by the address alone
//!   (checklist U1, the "nOAuth" takeovers): the identity waits, bound to this
//!   browser, until the browser holds a session of *that* account begun after it
//!   (its own password or passkey, and its second factor when asked). Only an
//!   upstream added with `--trust-email` whose token says `email_verified: true`
//!   links at once.
//! - Unknown, no such account → a new account without a password, verified only as
//!   the upstream says.
//! - Connecting from /account/connections → the signed-in account only.

use crate::auth::RequestContext;
use crate::auth::events::event_with;
use crate::auth::login::SignInOutcome;
use crate::auth::mailflows;
use crate::auth::second_factor::require_fresh;
use crate::auth::sign_in::{self as funnel, Federated};
use crate::crypto::{self, token_hash};
use crate::domain::{Email, UserId};
use crate::error::AppError;
use crate::state::AppState;
use crate::store::{
    Attempt, Connection, NewFederatedAccount, NewIdentity, NewLink, NewPendingLink, SessionRecord,
    StoreError, Unlinked, Upstream, UserRecord,
};
use crate::upstream::UpstreamIdentity;

use super::{Callback, ROUND_TRIP_TTL, Refusal, upstream};

/// The page connecting and unlinking return to (and step-up returns to).
pub const PAGE: &str = "/account/connections";

/// A sign-in round trip came back with `identity`: the linking rule.
pub async fn sign_in(
    state: &AppState,
    up: &Upstream,
    identity: &UpstreamIdentity,
    fresh: bool,
    return_to: Option<String>,
    session: Option<&SessionRecord>,
    ctx: &RequestContext,
) -> Result<Callback, AppError> {
    if let Some((identity_id, user)) = state
        .store
        .account_of_identity(up.id, &identity.subject)
        .await?
    {
        let outcome = finish(
            state,
            up,
            identity,
            fresh,
            &user,
            return_to.clone(),
            session,
            ctx,
        )
        .await?;
        if matches!(
            outcome,
            SignInOutcome::SignedIn(_) | SignInOutcome::SecondFactor(_)
        ) {
            state
                .store
                .touch_identity(identity_id, identity.email.as_deref(), state.clock.now())
                .await?;
        }
        return Ok(Callback::SignIn { outcome, return_to });
    }
    let Some(email) = identity.email.as_deref().and_then(|e| Email::parse(e).ok()) else {
        return Ok(Callback::Refused(Refusal::NoAddress));
    };
    if let Some(user) = state.store.user_by_email(&email).await? {
        if user.disabled {
            return Ok(Callback::Refused(Refusal::AccountUnavailable));
        }
        // The operator vouched that this upstream verifies addresses, and it says it
        // verified this one: the documented exception. Where addresses must be
        // confirmed, not onto an account whose own address never was: whoever
        // registered it (and holds its password) may not own the address, and would
        // share the account from then on (account pre-hijacking).
        let confirmed = user.verified || !state.settings.require_verified_email;
        if up.trust_email && identity.email_verified && confirmed {
            let linked = event_with(state, "upstream_linked", Some(ctx), &up.label)?;
            match state
                .store
                .link_identity(&new_link(state, up, identity, user.id), &linked)
                .await
            {
                Ok(_) => {}
                Err(StoreError::Conflict) => {
                    return Ok(Callback::Refused(Refusal::AlreadyLinked));
                }
                Err(e) => return Err(e.into()),
            }
            tracing::info!(user_id = %user.id, upstream = %up.name, "upstream linked by a trusted verified address");
            let outcome = finish(
                state,
                up,
                identity,
                fresh,
                &user,
                return_to.clone(),
                session,
                ctx,
            )
            .await?;
            return Ok(Callback::SignIn { outcome, return_to });
        }
        // Not linked: the identity waits for the account's own credentials.
        let cookie = crypto::random_token();
        let now = state.clock.now();
        state
            .store
            .hold_pending_link(&NewPendingLink {
                browser_hash: token_hash(&cookie),
                upstream_id: up.id,
                subject: identity.subject.clone(),
                email: identity.email.clone(),
                user_id: user.id,
                return_to: return_to.clone(),
                now,
                expires_at: now + ROUND_TRIP_TTL,
            })
            .await?;
        tracing::info!(upstream = %up.name, "upstream identity waits for its account to be proven");
        return Ok(Callback::OfferLink {
            cookie,
            email: user.email,
            return_to,
        });
    }
    new_account(state, up, identity, fresh, email, return_to, session, ctx).await
}

/// One funnel for every upstream sign-in (contextual checks, second factor, session).
#[allow(clippy::too_many_arguments)]
async fn finish(
    state: &AppState,
    up: &Upstream,
    identity: &UpstreamIdentity,
    fresh: bool,
    user: &UserRecord,
    return_to: Option<String>,
    session: Option<&SessionRecord>,
    ctx: &RequestContext,
) -> Result<SignInOutcome, AppError> {
    let origin = Federated {
        upstream_id: up.id,
        label: up.label.clone(),
        sid: identity.sid.clone(),
        subject: identity.subject.clone(),
        fresh,
    };
    funnel::federated(
        state,
        user,
        origin,
        false,
        return_to,
        session.map(|s| s.id),
        ctx,
    )
    .await
}

fn new_link<'a>(
    state: &AppState,
    up: &Upstream,
    identity: &'a UpstreamIdentity,
    user_id: UserId,
) -> NewLink<'a> {
    NewLink {
        user_id,
        upstream_id: up.id,
        subject: &identity.subject,
        email: identity.email.as_deref(),
        now: state.clock.now(),
    }
}

/// A new account from an upstream identity: no password; verified only when the
/// upstream says so. An unverified address that must be confirmed gets the
/// verification mail, and the sign-in waits for it, as after a registration.
#[allow(clippy::too_many_arguments)]
async fn new_account(
    state: &AppState,
    up: &Upstream,
    identity: &UpstreamIdentity,
    fresh: bool,
    email: Email,
    return_to: Option<String>,
    session: Option<&SessionRecord>,
    ctx: &RequestContext,
) -> Result<Callback, AppError> {
    // The registration allowance of this network applies to new accounts from an
    // upstream as to any other.
    let ip_key = state
        .keys
        .mac("throttle/register", ctx.throttle_address().as_bytes());
    let max = i32::try_from(state.settings.registrations_per_ip_hour).unwrap_or(i32::MAX);
    if let Attempt::Blocked { retry_after_secs } = state
        .store
        .count_in_window("register", &ip_key, state.clock.now(), max, 3600)
        .await?
    {
        return Ok(Callback::Refused(Refusal::Throttled { retry_after_secs }));
    }
    let user_id = UserId::new();
    let now = state.clock.now();
    let must_confirm = !identity.email_verified && state.settings.require_verified_email;
    let (token, mails) = if must_confirm {
        let (token, mail) = mailflows::upstream_verification(
            &state.clock,
            &state.settings,
            user_id,
            email.as_str(),
            &up.label,
        );
        (Some(token), vec![mail])
    } else {
        (None, Vec::new())
    };
    let account = NewFederatedAccount {
        user_id,
        email: email.clone(),
        verified: identity.email_verified,
        identity: NewIdentity {
            upstream_id: up.id,
            subject: identity.subject.clone(),
            email: identity.email.clone(),
            now,
        },
        token,
        mails: &mails,
        registered: event_with(state, "registered", Some(ctx), &up.label)?,
        linked: event_with(state, "upstream_linked", Some(ctx), &up.label)?,
    };
    match state.store.create_federated_account(account).await {
        Ok(()) => {}
        // The address or the identity was taken meanwhile: nothing was made.
        Err(StoreError::Conflict) => return Ok(Callback::Refused(Refusal::Rejected)),
        Err(e) => return Err(e.into()),
    }
    state
        .metrics
        .registrations
        .with_label_values(&["created"])
        .inc();
    tracing::info!(user_id = %user_id, upstream = %up.name, "account created from an upstream");
    if must_confirm {
        return Ok(Callback::CheckInbox {
            email: email.as_str().to_string(),
        });
    }
    let Some((_, user)) = state
        .store
        .account_of_identity(up.id, &identity.subject)
        .await?
    else {
        return Ok(Callback::Refused(Refusal::Rejected));
    };
    let outcome = finish(
        state,
        up,
        identity,
        fresh,
        &user,
        return_to.clone(),
        session,
        ctx,
    )
    .await?;
    Ok(Callback::SignIn { outcome, return_to })
}

/// A connecting round trip came back: link to the session that started it, and to
/// nobody else.
pub async fn connect(
    state: &AppState,
    up: &Upstream,
    identity: &UpstreamIdentity,
    session: Option<&SessionRecord>,
    started_by: uuid::Uuid,
    ctx: &RequestContext,
) -> Result<Callback, AppError> {
    let Some(session) = session.filter(|s| s.id.0 == started_by) else {
        return Ok(Callback::Refused(Refusal::WrongSession));
    };
    let user_id = session.user_id;
    if let Some(known) = state
        .store
        .federated_identity(up.id, &identity.subject)
        .await?
    {
        if known.user_id == user_id.0 {
            state
                .store
                .touch_identity(known.id, identity.email.as_deref(), state.clock.now())
                .await?;
            return Ok(Callback::Connected);
        }
        record_refusal(state, user_id, up, &Refusal::TakenByOther, ctx).await?;
        return Ok(Callback::Refused(Refusal::TakenByOther));
    }
    let linked = event_with(state, "upstream_linked", Some(ctx), &up.label)?;
    match state
        .store
        .link_identity(&new_link(state, up, identity, user_id), &linked)
        .await
    {
        Ok(_) => {
            tracing::info!(user_id = %user_id, upstream = %up.name, "upstream connected");
            Ok(Callback::Connected)
        }
        Err(StoreError::Conflict) => {
            record_refusal(state, user_id, up, &Refusal::AlreadyLinked, ctx).await?;
            Ok(Callback::Refused(Refusal::AlreadyLinked))
        }
        Err(e) => Err(e.into()),
    }
}

/// `GET /login/upstream/{name}/link`, where signing in to the offered account
/// returns: links the waiting identity if this browser now holds a session of that
/// account that began after the identity was kept. Single use either way. `Ok` gives
/// where to go on to.
pub async fn finish_pending(
    state: &AppState,
    name: &str,
    cookie: Option<&str>,
    session: Option<&SessionRecord>,
    ctx: &RequestContext,
) -> Result<Result<Option<String>, Refusal>, AppError> {
    let (up, _) = upstream(state, name).await?;
    let pending = match cookie {
        Some(cookie) => {
            state
                .store
                .take_pending_link(&token_hash(cookie), up.id, state.clock.now())
                .await?
        }
        None => None,
    };
    let Some(pending) = pending else {
        super::count(state, Refusal::BadState.code());
        return Ok(Err(Refusal::BadState));
    };
    let owner = UserId(pending.user_id);
    let proven = session.is_some_and(|s| s.user_id == owner && s.auth_time >= pending.created_at);
    if !proven {
        super::count(state, Refusal::WrongSession.code());
        record_refusal(state, owner, &up, &Refusal::WrongSession, ctx).await?;
        return Ok(Err(Refusal::WrongSession));
    }
    let identity = UpstreamIdentity {
        subject: pending.subject,
        email: pending.email,
        email_verified: false,
        sid: None,
        auth_time: None,
    };
    let linked = event_with(state, "upstream_linked", Some(ctx), &up.label)?;
    match state
        .store
        .link_identity(&new_link(state, &up, &identity, owner), &linked)
        .await
    {
        Ok(_) => {
            tracing::info!(user_id = %owner, upstream = %up.name, "upstream linked after the account was proven");
            super::count(state, "completed");
            Ok(Ok(pending.return_to))
        }
        Err(StoreError::Conflict) => {
            super::count(state, Refusal::AlreadyLinked.code());
            record_refusal(state, owner, &up, &Refusal::AlreadyLinked, ctx).await?;
            Ok(Err(Refusal::AlreadyLinked))
        }
        Err(e) => Err(e.into()),
    }
}

/// A refused upstream sign-in or link, on the activity page of the account it was
/// for (only where that account is known).
pub async fn record_refusal(
    state: &AppState,
    user_id: UserId,
    up: &Upstream,
    refusal: &Refusal,
    ctx: &RequestContext,
) -> Result<(), AppError> {
    let detail = format!("{}: {}", up.label, refusal.code());
    let e = event_with(state, "upstream_refused", Some(ctx), &detail)?;
    state.store.record_event(user_id, None, &e).await?;
    Ok(())
}

/// What /account/connections shows: the linked upstreams, and the others.
pub struct Connections {
    pub linked: Vec<Connection>,
    pub others: Vec<Upstream>,
}

pub async fn connections(
    state: &AppState,
    session: &SessionRecord,
) -> Result<Connections, AppError> {
    let linked = state.store.identities_of(session.user_id).await?;
    let others = state
        .store
        .upstreams()
        .await?
        .into_iter()
        .filter(|u| !linked.iter().any(|l| l.upstream_id == u.id))
        .collect();
    Ok(Connections { linked, others })
}

/// "Connect" on /account/connections: the same round trip, for the signed-in
/// person, after a recent second factor (a new way to sign in, like a passkey).
pub async fn start_connect(
    state: &AppState,
    session: &SessionRecord,
    name: &str,
) -> Result<Result<super::Started, Refusal>, AppError> {
    require_fresh(state, session, PAGE, false).await?;
    super::start(state, name, Some(PAGE.to_string()), Some(session)).await
}

/// Removes a link, after a recent second factor; never the last way to sign in
/// (409). Gives the upstream's label.
pub async fn unlink(
    state: &AppState,
    session: &SessionRecord,
    name: &str,
    ctx: &RequestContext,
) -> Result<String, AppError> {
    require_fresh(state, session, PAGE, false).await?;
    let (up, _) = upstream(state, name).await?;
    let e = event_with(state, "upstream_unlinked", Some(ctx), &up.label)?;
    match state
        .store
        .unlink_identity(session.user_id, up.id, &e)
        .await?
    {
        Unlinked::Done => {
            tracing::info!(user_id = %session.user_id, upstream = %up.name, "upstream unlinked");
            Ok(up.label)
        }
        Unlinked::NotLinked => Err(AppError::NotFound),
        Unlinked::LastWay => Err(AppError::Conflict(format!(
            "{} is the last way you can sign in: your account has no password, no passkey and no other connection. Add a passkey or set a password (with “Forgot your password?”) first, then remove it.",
            up.label
        ))),
    }
}
