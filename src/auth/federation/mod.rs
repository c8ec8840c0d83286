//! Signing in with an upstream, the browser's side: the round trip to the upstream
//! and back (`start`, `callback`), the linking rule (`linking`), and the upstream's
//! back-channel logout (`logout`). The protocol itself (discovery, code redemption,
//! token checks) is `crate::upstream`.
//!
//! A round trip is bound to the browser that started it by a 10-minute, single-use,
//! HttpOnly, SameSite=Lax cookie holding 32 random bytes. The database keeps only the
//! cookie's SHA-256 and the `state`'s; `state`, `nonce` and the PKCE verifier are
//! derived from the cookie value with the server key, so nothing secret rests in the
//! database and a callback in any other browser, or a second time, finds nothing
//! (checklist U2).

pub mod linking;
pub mod logout;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use crate::auth::RequestContext;
use crate::auth::login::SignInOutcome;
use crate::crypto::{self, token_hash};
use crate::domain::UserId;
use crate::domain::oauth::login_mark_hash;
use crate::error::AppError;
use crate::state::AppState;
use crate::store::{NewRoundTrip, SessionRecord, Upstream};
use crate::upstream::{
    LEEWAY, UpstreamError, UpstreamIdentity, demand_reauthentication, open_client_secret,
};

/// How long a round trip (and a link waiting for its account) may take.
pub const ROUND_TRIP_TTL: time::Duration = time::Duration::minutes(10);

/// The redirect URI registered at the upstream (DESIGN.md).
pub fn redirect_uri(state: &AppState, name: &str) -> String {
    format!("{}/login/upstream/{name}/callback", state.settings.issuer())
}

/// A value of the round trip, derived from the browser cookie's random value with
/// the server key: `state`, `nonce` or the PKCE verifier (43 characters from the
/// RFC 7636 §4.1 alphabet).
fn derived(state: &AppState, purpose: &str, cookie: &str) -> String {
    URL_SAFE_NO_PAD.encode(state.keys.mac(purpose, cookie.as_bytes()))
}

const STATE: &str = "upstream/state";
const NONCE: &str = "upstream/nonce";
const VERIFIER: &str = "upstream/pkce-verifier";

/// A round trip ready to leave: send the browser to `location` with `cookie` set.
pub struct Started {
    pub location: String,
    pub cookie: String,
}

/// Why an upstream sign-in stopped. Nothing was created or linked in any of these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No round trip of this browser matches (forged, replayed, expired, or the
    /// callback opened in another browser).
    BadState,
    /// The upstream answered with `error=` (e.g. the person said no).
    Cancelled,
    /// The upstream did not answer (502).
    Unreachable,
    /// The upstream's answer failed a check.
    Rejected,
    /// The upstream gave no usable e-mail address for a new account.
    NoAddress,
    /// Connecting: this upstream account is linked to another Gatehouse account.
    TakenByOther,
    /// Connecting: this account already has an upstream account linked there.
    AlreadyLinked,
    /// Connecting or finishing a link: the browser no longer holds the session the
    /// link was for (signed out, another account, an older sign-in).
    WrongSession,
    /// The account cannot sign in (disabled).
    AccountUnavailable,
    /// Too many new accounts from this network.
    Throttled { retry_after_secs: u64 },
}

impl Refusal {
    /// The metric label and log word.
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::BadState => "bad_state",
            Refusal::Cancelled => "cancelled",
            Refusal::Unreachable => "unreachable",
            Refusal::Rejected => "refused",
            Refusal::NoAddress => "no_address",
            Refusal::TakenByOther => "taken_by_other",
            Refusal::AlreadyLinked => "already_linked",
            Refusal::WrongSession => "wrong_session",
            Refusal::AccountUnavailable => "account_unavailable",
            Refusal::Throttled { .. } => "throttled",
        }
    }
}

/// Where a callback ends.
pub enum Callback {
    /// A sign-in's outcome, told to the browser exactly like `/login`'s.
    SignIn {
        outcome: SignInOutcome,
        return_to: Option<String>,
    },
    /// A new account whose address must be confirmed first: mail sent.
    CheckInbox {
        email: String,
    },
    /// The address belongs to an existing account: the person must prove it. The
    /// browser gets `cookie` for the waiting link.
    OfferLink {
        cookie: String,
        email: String,
        return_to: Option<String>,
    },
    /// Connected to the signed-in account (or it already was).
    Connected,
    Refused(Refusal),
}

/// What the upstream put on the callback's query.
#[derive(Debug, Default)]
pub struct CallbackParams {
    pub code: Option<String>,
    pub state: Option<String>,
    pub iss: Option<String>,
    pub error: Option<String>,
}

/// The upstream named in a path, with its sealed secret; 404 when there is none.
pub async fn upstream(state: &AppState, name: &str) -> Result<(Upstream, Vec<u8>), AppError> {
    state
        .store
        .upstream_by_name(name)
        .await?
        .ok_or(AppError::NotFound)
}

/// Every upstream, for the "Continue with …" buttons.
pub async fn buttons(state: &AppState) -> Result<Vec<Upstream>, AppError> {
    Ok(state.store.upstreams().await?)
}

/// `POST /login/upstream/{name}` (and "Connect" on /account/connections, with the
/// signed-in session): keeps the round trip and gives the upstream's URL.
pub async fn start(
    state: &AppState,
    name: &str,
    return_to: Option<String>,
    connect: Option<&SessionRecord>,
) -> Result<Result<Started, Refusal>, AppError> {
    let (up, _) = upstream(state, name).await?;
    // The sign-in answers an authorization request that demands a new
    // authentication (`prompt=login`, `max_age`): the upstream must make one too.
    let reauthenticate = login_mark_hash(return_to.as_deref()).is_some();
    let cookie = crypto::random_token();
    let state_param = derived(state, STATE, &cookie);
    let nonce = derived(state, NONCE, &cookie);
    let challenge =
        URL_SAFE_NO_PAD.encode(Sha256::digest(derived(state, VERIFIER, &cookie).as_bytes()));
    let url = match state
        .upstreams
        .authorization_url(
            &up,
            &redirect_uri(state, name),
            &state_param,
            &nonce,
            &challenge,
        )
        .await
    {
        Ok(mut url) => {
            if reauthenticate {
                demand_reauthentication(&up, &mut url);
            }
            url
        }
        Err(e) => return Ok(Err(refused_by_upstream(&up, &e))),
    };
    let now = state.clock.now();
    state
        .store
        .start_upstream_round_trip(&NewRoundTrip {
            browser_hash: token_hash(&cookie),
            state_hash: token_hash(&state_param),
            upstream_id: up.id,
            return_to,
            connect_session: connect.map(|s| s.id),
            now,
            expires_at: now + ROUND_TRIP_TTL,
        })
        .await?;
    Ok(Ok(Started {
        location: url.to_string(),
        cookie,
    }))
}

/// Logs and counts an upstream failure, as the refusal it is.
fn refused_by_upstream(up: &Upstream, e: &UpstreamError) -> Refusal {
    let refusal = match e {
        UpstreamError::Unreachable(_) => Refusal::Unreachable,
        UpstreamError::Refused(_) => Refusal::Rejected,
    };
    // The reason names no token or secret (`crate::upstream`).
    tracing::warn!(upstream = %up.name, error = %e, "upstream sign-in refused"); // log-ok: no secret
    refusal
}

/// Counts a callback's ending (public metric: outcomes only, never whether an
/// address has an account).
pub(crate) fn count(state: &AppState, outcome: &'static str) {
    state
        .metrics
        .upstream_callbacks
        .with_label_values(&[outcome])
        .inc();
}

/// `GET /login/upstream/{name}/callback`: spends this browser's round trip, then
/// redeems the code and applies the linking rule (`linking`).
pub async fn callback(
    state: &AppState,
    name: &str,
    params: CallbackParams,
    cookie: Option<&str>,
    session: Option<&SessionRecord>,
    ctx: &RequestContext,
) -> Result<Callback, AppError> {
    let (up, sealed) = upstream(state, name).await?;
    // The round trip is spent whatever follows: a callback works once (U2).
    let trip = match (cookie, params.state.as_deref()) {
        (Some(cookie), Some(sent))
            if crypto::constant_time_eq(
                sent.as_bytes(),
                derived(state, STATE, cookie).as_bytes(),
            ) =>
        {
            state
                .store
                .take_upstream_round_trip(
                    &token_hash(cookie),
                    &token_hash(sent),
                    up.id,
                    state.clock.now(),
                )
                .await?
        }
        _ => None,
    };
    let (Some(trip), Some(cookie)) = (trip, cookie) else {
        tracing::info!(upstream = %up.name, "upstream callback without a matching round trip");
        count(state, Refusal::BadState.code());
        return Ok(Callback::Refused(Refusal::BadState));
    };
    let connecting = trip.connect_session_id;
    // The account concerned, where one is known before the upstream has spoken.
    let known_user = session
        .filter(|s| connecting == Some(s.id.0))
        .map(|s| s.user_id);
    if params.error.is_some() {
        tracing::info!(upstream = %up.name, "upstream answered with an error");
        return refuse(state, &up, known_user, Refusal::Cancelled, ctx).await;
    }
    let Some(code) = params.code.as_deref().filter(|c| !c.is_empty()) else {
        return refuse(state, &up, known_user, Refusal::Rejected, ctx).await;
    };
    let secret = open_client_secret(&state.keys, &sealed).map_err(|_| {
        AppError::Unexpected(anyhow::anyhow!("an upstream's client secret does not open"))
    })?;
    let identity = match state
        .upstreams
        .redeem(
            &up,
            &secret,
            code,
            params.iss.as_deref(),
            &redirect_uri(state, name),
            &derived(state, NONCE, cookie),
            &derived(state, VERIFIER, cookie),
        )
        .await
    {
        Ok(identity) => identity,
        Err(e) => {
            let refusal = refused_by_upstream(&up, &e);
            return refuse(state, &up, known_user, refusal, ctx).await;
        }
    };
    let fresh = fresh(&identity, trip.created_at);
    let outcome = match connecting {
        Some(session_id) => {
            linking::connect(state, &up, &identity, session, session_id, ctx).await?
        }
        None => {
            linking::sign_in(state, &up, &identity, fresh, trip.return_to, session, ctx).await?
        }
    };
    match &outcome {
        Callback::Refused(r) => count(state, r.code()),
        _ => count(state, "completed"),
    }
    Ok(outcome)
}

/// Whether the upstream authenticated the person during this round trip: its ID
/// token's `auth_time` is no earlier than the round trip's start (less the clock
/// leeway). No `auth_time` (GitHub, or a provider that does not say) is not fresh.
fn fresh(identity: &UpstreamIdentity, started: time::OffsetDateTime) -> bool {
    identity
        .auth_time
        .is_some_and(|t| t >= started.unix_timestamp() - LEEWAY)
}

/// A refused callback: counted, and recorded for the account when one is known
/// (a signed-in person connecting); otherwise the log line and metric are all.
async fn refuse(
    state: &AppState,
    up: &Upstream,
    known_user: Option<UserId>,
    refusal: Refusal,
    ctx: &RequestContext,
) -> Result<Callback, AppError> {
    count(state, refusal.code());
    if let Some(user_id) = known_user {
        linking::record_refusal(state, user_id, up, &refusal, ctx).await?;
    }
    Ok(Callback::Refused(refusal))
}
