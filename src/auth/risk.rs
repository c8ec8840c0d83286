//! The contextual checks as a service (DESIGN.md "Devices and context"): gathers an
//! account's recent history for `domain::risk::assess`, counts what it decided, and
//! watches sessions that turn strange after they began (used from another country, or
//! a second country signing in while they are live). Only a country is compared, by
//! keyed MAC; the places themselves stay sealed until a person's page opens them.

use super::RequestContext;
use super::events::{event_with, seal_location};
use crate::crypto::columns;
use crate::domain::Location;
use crate::domain::risk::{Assessment, AttemptContext, History, Policy, assess};
use crate::error::AppError;
use crate::mail::messages;
use crate::state::AppState;
use crate::store::{AttemptKeys, FlagOthers, RiskFlag, RiskQuery, SessionRecord, UserRecord};

/// "Recent failures" are those of the last 15 minutes (DESIGN.md "Precise rules").
pub const FAILURE_WINDOW_SECS: i32 = 900;

fn policy(state: &AppState) -> Policy {
    let r = state.settings.risk;
    Policy {
        max_kmh: f64::from(r.max_kmh),
        min_km: f64::from(r.min_km),
        recent_failures: r.recent_failures,
        address_failures: r.ip_failures,
    }
}

/// The country of `location` as MACs under every key still accepted (empty: unknown).
fn country_macs(state: &AppState, location: &Location) -> Vec<Vec<u8>> {
    location
        .country_code
        .as_deref()
        .map(|c| {
            state
                .keys
                .mac_candidates(columns::SEEN_COUNTRY, c.as_bytes())
        })
        .unwrap_or_default()
}

/// A flag: its names in the clear, its full wording (which names places) sealed for
/// `context`.
pub fn seal_flag(
    state: &AppState,
    context: &str,
    summary: String,
    wording: &str,
) -> Result<RiskFlag, AppError> {
    let sealed = state
        .keys
        .seal(context, wording.as_bytes())
        .map_err(|e| AppError::Unexpected(e.into()))?;
    Ok(RiskFlag { summary, sealed })
}

/// A flag's words for its owner: the sealed wording when it opens, else its names.
pub fn open_flag(
    state: &AppState,
    summary: Option<&str>,
    sealed: Option<&Vec<u8>>,
) -> Option<String> {
    sealed
        .and_then(|s| state.keys.open(columns::SESSION_RISK_REASON, s).ok())
        .and_then(|p| String::from_utf8(p).ok())
        .or_else(|| summary.map(str::to_string))
}

fn open_location(state: &AppState, context: &str, sealed: &[u8]) -> Location {
    state
        .keys
        .open(context, sealed)
        .ok()
        .and_then(|p| serde_json::from_slice(&p).ok())
        .unwrap_or_default()
}

/// Weighs a sign-in whose password (`attempt`: its throttle counts) or passkey
/// (`None`) was right, before any session exists.
pub async fn assess_sign_in(
    state: &AppState,
    user: &UserRecord,
    ctx: &RequestContext,
    attempt: Option<&AttemptKeys>,
) -> Result<Assessment, AppError> {
    let passkey_ip_key;
    let (ip_key, own_failure) = match attempt {
        Some(a) => (a.ip_key.as_slice(), a.failure_id),
        None => {
            passkey_ip_key = state
                .keys
                .mac("throttle/ip", ctx.throttle_address().as_bytes());
            (passkey_ip_key.as_slice(), uuid::Uuid::nil())
        }
    };
    let now = state.clock.now();
    let macs = country_macs(state, &ctx.location);
    let device_hash = ctx.device.as_ref().map(|t| t.hash());
    let facts = state
        .store
        .risk_facts(&RiskQuery {
            user_id: user.id,
            device_hash: device_hash.as_deref(),
            country_macs: &macs,
            ip_key,
            own_failure,
            own_counted: attempt.is_some(),
            now,
            failure_window_secs: FAILURE_WINDOW_SECS,
            ip_window_secs: super::login::IP_WINDOW_SECS,
            trust_secs: state.settings.mfa_trust_device.map(|d| d.as_secs_f64()),
        })
        .await?;
    let history = History {
        first_sign_in: facts.first_sign_in,
        country_seen: facts.country_seen,
        last_active: facts
            .last_active
            .map(|(sealed, at)| (open_location(state, columns::SESSION_LOCATION, &sealed), at)),
        live: facts
            .live
            .iter()
            .map(|s| open_location(state, columns::SESSION_LOCATION, s))
            .chain(
                facts
                    .live_anchors
                    .iter()
                    .map(|s| open_location(state, columns::SESSION_ANCHOR, s)),
            )
            .collect(),
        recent_failures: u32::try_from(facts.recent_failures).unwrap_or(u32::MAX),
        address_failures: u32::try_from(facts.address_failures).unwrap_or(0),
    };
    let context = AttemptContext {
        location: ctx.location.clone(),
        now,
        known_device: facts.device_known,
        trusted_device: facts.device_trusted,
    };
    let assessment = assess(&policy(state), &context, &history);
    state
        .metrics
        .risk_decisions
        .with_label_values(&[assessment.decision.code()])
        .inc();
    for s in &assessment.signals {
        state
            .metrics
            .risk_signals
            .with_label_values(&[s.code()])
            .inc();
    }
    if !assessment.signals.is_empty() {
        tracing::info!(
            user_id = %user.id,
            decision = assessment.decision.code(),
            signals = ?assessment.signals.iter().map(|s| s.code()).collect::<Vec<_>>(),
            "contextual checks"
        );
    }
    Ok(assessment)
}

/// For a session about to be born where `ctx` is: the user's live sessions in other
/// countries get flagged, and the owner one mail (none when there are none).
pub fn flag_other_countries(
    state: &AppState,
    email: &str,
    ctx: &RequestContext,
) -> Result<Option<FlagOthers>, AppError> {
    let macs = country_macs(state, &ctx.location);
    if macs.is_empty() {
        return Ok(None);
    }
    let country = ctx
        .location
        .country
        .clone()
        .unwrap_or_else(|| "another country".into());
    let wording = format!("Also signed in from {country} at the same time");
    let names = "Two countries at once";
    let what = format!(
        "A new sign-in from {} ({}) while your account was signed in elsewhere.",
        ctx.location.place(),
        super::describe::when(state.clock.now())
    );
    Ok(Some(FlagOthers {
        country_macs: macs,
        notice: (
            event_with(state, "session_flagged", Some(ctx), names)?,
            messages::session_flagged(&state.settings, email, &what),
        ),
        reason: seal_flag(state, columns::SESSION_RISK_REASON, names.into(), &wording)?,
    }))
}

/// Whether a flagged session must prove a second factor again before it shows an
/// account page or an app gets a code from it silently: its flag asks for proof
/// (its cookie was used from another country), and it has not reached `aal2` since.
/// A session flagged only because another country signed in while it was live is
/// its owner's, at its usual place: the flag and the mail tell them, nothing more.
pub fn needs_proof(session: &SessionRecord) -> bool {
    session.risk_needs_proof
        && session
            .risk_flagged_at
            .is_some_and(|flagged| !(session.aal == "aal2" && session.aal_reached_at >= flagged))
}

/// Watches a live session's request: one from another country than the session's
/// sign-in (or its last step-up) flags it (once until it proves a second factor again:
/// one mail, however many requests follow). Returns whether
/// this request came from elsewhere, so a "keep me signed in" session is not renewed
/// by it.
pub async fn watch(
    state: &AppState,
    session: &mut SessionRecord,
    location: &Location,
) -> Result<bool, AppError> {
    let (Some(signed_in_from), Some(code)) = (&session.country_mac, &location.country_code) else {
        return Ok(false);
    };
    let candidates = state
        .keys
        .mac_candidates(columns::SEEN_COUNTRY, code.as_bytes());
    if candidates.iter().any(|m| m == signed_in_from) {
        return Ok(false);
    }
    // Where it last proved a second factor counts as its own too.
    let anchored = session
        .anchor_enc
        .as_ref()
        .map(|a| open_location(state, columns::SESSION_ANCHOR, a));
    if anchored.is_some_and(|a| a.country_code.as_deref() == Some(code.as_str())) {
        return Ok(false);
    }
    // Flag it unless it is flagged already and has not proven a second factor since
    // (a session born flagged, or one that stepped up after its flag, is watched
    // again like any other).
    if !needs_proof(session) {
        let country = location.country.clone().unwrap_or_else(|| code.clone());
        let names = "Used from another country";
        let wording = format!("Used from {country}, another country than its sign-in");
        let reason = seal_flag(state, columns::SESSION_RISK_REASON, names.into(), &wording)?;
        let now = state.clock.now();
        let mut e = event_with(state, "session_flagged", None, names)?;
        e.location_enc = Some(seal_location(state, columns::EVENT_LOCATION, location)?);
        let what = format!(
            "A session signed in from one country was used from {} at {}.",
            location.place(),
            super::describe::when(now)
        );
        let mail = messages::session_flagged(&state.settings, &session.email, &what);
        if state
            .store
            .flag_session(session.id, &reason, &e, &mail)
            .await?
        {
            state
                .metrics
                .risk_signals
                .with_label_values(&["in_use_elsewhere"])
                .inc();
            tracing::info!(session_id = %session.id, "session used from another country: flagged");
        }
        session.risk_flagged_at = Some(now);
        session.risk_needs_proof = true;
    }
    Ok(true)
}

/// Whether a "This wasn't me" link is live (for showing its button).
pub async fn not_me_link_is_live(state: &AppState, token: &str) -> Result<bool, AppError> {
    Ok(state
        .store
        .email_token(
            &crate::crypto::token_hash(token),
            "not-me",
            state.clock.now(),
        )
        .await?
        .is_some())
}

/// Uses a "This wasn't me" link: the session it names ends (its tokens with it, and
/// every app with a back-channel is told), its browser is trusted no more, and the
/// report is in the account's history. `Some(revoked)` if the link was live.
pub async fn report_not_me(
    state: &AppState,
    token: &str,
    ctx: &RequestContext,
) -> Result<Option<bool>, AppError> {
    let e = event_with(
        state,
        "reported_not_me",
        Some(ctx),
        "signed out from the new-sign-in e-mail",
    )?;
    let report = state
        .store
        .report_not_me(&crate::crypto::token_hash(token), &e)
        .await?;
    if let Some(r) = &report {
        state
            .metrics
            .risk_signals
            .with_label_values(&["reported_not_me"])
            .inc();
        tracing::info!(user_id = %r.user_id, revoked = r.revoked, "owner reported a sign-in");
    }
    Ok(report.map(|r| r.revoked))
}
