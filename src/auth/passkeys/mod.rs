//! Passkeys (DESIGN.md "Passkeys and device-bound sessions"): WebAuthn registration,
//! sign-in, second factor and step-up, by webauthn-rs. Nothing here parses CBOR or
//! checks a signature itself.
//!
//! Every ceremony is two requests. The first keeps webauthn-rs's state in PostgreSQL
//! (so any node can finish it) for five minutes and answers the browser's options with
//! the ceremony's id; the second takes that state in the statement that deletes it, so
//! a challenge is answered at most once (checklist P2). The relying party id is the
//! host of `GATEHOUSE_PUBLIC_URL` and the origin must be that URL's exactly (P1); user
//! verification is required, so a passkey is two factors at once: a passkey sign-in is
//! `aal2` with `amr` `hwk` (a key that never leaves its device) or `swk` (a synced
//! passkey) plus `user` (RFC 8176).

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use uuid::Uuid;
use webauthn_rs::prelude::{
    AuthenticationResult, CredentialID, DiscoverableAuthentication, Passkey, PasskeyAuthentication,
    PasskeyRegistration, PublicKeyCredential, RegisterPublicKeyCredential, Url, Webauthn,
    WebauthnBuilder, WebauthnError,
};
use webauthn_rs_proto::ResidentKeyRequirement;

use super::RequestContext;
use super::events::{event, event_with};
use super::risk;
use super::second_factor::{self, FinishedSignIn};
use super::sign_in::{self, NewBrowserSession, Proven, Via, Weighed};
use crate::crypto::columns;
use crate::domain::risk::Decision;
use crate::domain::{SessionId, SessionToken, UserId};
use crate::error::AppError;
use crate::mail::messages;
use crate::settings::Settings;
use crate::state::AppState;
use crate::store::{
    Attempt, CeremonyRecord, ChallengeRecord, NewCeremony, NewPasskey, PasskeyRecord, PasskeyUse,
    SessionRecord, StoreError, UserRecord,
};

/// The passkeys page.
pub const PAGE: &str = "/account/passkeys";
/// A ceremony's state is kept this long (the browser's own timeout is the same).
pub const CEREMONY_TTL: Duration = Duration::from_secs(300);
/// Ceremonies begun per client address per 5 minutes (each is a row until used).
const CEREMONIES_PER_WINDOW: i32 = 200;
const CEREMONY_WINDOW_SECS: i32 = 300;
/// A passkey's name: what a person calls it ("MacBook Touch ID").
pub const NAME_MAX: usize = 64;

const EXPIRED: &str =
    "This passkey request has expired or was already used. Nothing was changed; try again.";
const INVALID: &str = "Your passkey's answer could not be verified for this site. Nothing was changed; try again, or use another way to sign in.";
const UNKNOWN: &str = "This passkey is not registered with an account here. Sign in with your password, then add it on your passkeys page.";
const SUSPENDED: &str = "This passkey may have been copied, so it no longer signs in. Use another way to sign in, then remove it and add it again.";
const RACED: &str = "This passkey was just used for another request. Try again.";

/// The site's WebAuthn settings, or `None` when `GATEHOUSE_PUBLIC_URL` names an
/// address rather than a host (WebAuthn relying party ids are domains).
pub fn relying_party(settings: &Settings) -> Option<Webauthn> {
    let rp_id = settings.public_url.domain()?;
    let origin = Url::parse(&settings.public_origin()).ok()?;
    WebauthnBuilder::new(rp_id, &origin)
        .ok()?
        .rp_name("Gatehouse")
        .timeout(CEREMONY_TTL)
        .build()
        .ok()
}

fn webauthn(state: &AppState) -> Result<&Webauthn, AppError> {
    state.webauthn.as_deref().ok_or(AppError::NotFound)
}

/// Whether this server offers passkeys at all (its public URL has a host name).
pub fn available(state: &AppState) -> bool {
    state.webauthn.is_some()
}

fn span(d: Duration) -> time::Duration {
    time::Duration::seconds(i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2))
}

fn unexpected(e: impl Into<anyhow::Error>) -> AppError {
    AppError::Unexpected(e.into())
}

/// A WebAuthn failure: logged by its kind (never the data), answered with `message`.
fn refused(state: &AppState, what: &'static str, e: &WebauthnError) -> AppError {
    state
        .metrics
        .passkeys
        .with_label_values(&[what, "refused"])
        .inc();
    tracing::info!(ceremony = what, reason = ?e, "passkey answer refused");
    AppError::Validation(INVALID.into())
}

fn counted(state: &AppState, what: &'static str, outcome: &'static str) {
    state
        .metrics
        .passkeys
        .with_label_values(&[what, outcome])
        .inc();
}

/// The flags webauthn-rs keeps inside a passkey, read from its serialised form.
#[derive(serde::Deserialize)]
struct Flags {
    cred: FlagsInner,
}

#[derive(serde::Deserialize)]
struct FlagsInner {
    counter: u32,
    backup_eligible: bool,
    backup_state: bool,
}

fn flags(credential: &str) -> Result<FlagsInner, AppError> {
    serde_json::from_str::<Flags>(credential)
        .map(|f| f.cred)
        .map_err(unexpected)
}

/// RFC 8176: `hwk` for a key bound to its device, `swk` for a passkey that syncs
/// (its private key leaves the hardware); `user` for the verification it required.
fn methods(result: &AuthenticationResult) -> Vec<&'static str> {
    let key = if result.backup_eligible() {
        "swk"
    } else {
        "hwk"
    };
    vec![key, "user"]
}

/// A person's name for a passkey: trimmed, 1 to 64 characters, no control
/// characters.
pub fn clean_name(raw: &str) -> Result<String, AppError> {
    let name = raw.trim();
    if name.is_empty() {
        return Err(AppError::Validation(
            "Give the passkey a name, such as “MacBook Touch ID”.".into(),
        ));
    }
    if name.chars().count() > NAME_MAX || name.chars().any(char::is_control) {
        return Err(AppError::Validation(format!(
            "A passkey's name is at most {NAME_MAX} characters, without line breaks."
        )));
    }
    Ok(name.to_string())
}

/// Each ceremony begun costs a row: bounded per client address.
async fn allowance(state: &AppState, ctx: &RequestContext) -> Result<(), AppError> {
    let key = state
        .keys
        .mac("throttle/passkey", ctx.throttle_address().as_bytes());
    match state
        .store
        .count_in_window(
            "passkey",
            &key,
            state.clock.now(),
            CEREMONIES_PER_WINDOW,
            CEREMONY_WINDOW_SECS,
        )
        .await?
    {
        Attempt::Allowed => Ok(()),
        Attempt::Blocked { retry_after_secs } => Err(AppError::RateLimited { retry_after_secs }),
    }
}

/// Keeps a ceremony's state and answers the browser's options with its id added.
async fn begin(
    state: &AppState,
    purpose: &'static str,
    user_id: Option<UserId>,
    session_id: Option<SessionId>,
    challenge_id: Option<Uuid>,
    ceremony: &impl Serialize,
    options: &impl Serialize,
) -> Result<serde_json::Value, AppError> {
    let id = Uuid::new_v4();
    let now = state.clock.now();
    state
        .store
        .begin_ceremony(&NewCeremony {
            id,
            purpose,
            user_id,
            session_id,
            challenge_id,
            state: serde_json::to_string(ceremony).map_err(unexpected)?,
            now,
            expires_at: now + span(CEREMONY_TTL),
        })
        .await?;
    let mut answer = serde_json::to_value(options).map_err(unexpected)?;
    answer["ceremony"] = serde_json::Value::String(id.to_string());
    counted(state, purpose, "begun");
    Ok(answer)
}

/// Takes a ceremony (it works once, whatever happens next) with its state.
async fn take<T: DeserializeOwned>(
    state: &AppState,
    id: &str,
    purpose: &'static str,
) -> Result<(CeremonyRecord, T), AppError> {
    let expired = || AppError::Validation(EXPIRED.into());
    let id = Uuid::parse_str(id).map_err(|_| expired())?;
    let record = state
        .store
        .take_ceremony(id, purpose, state.clock.now())
        .await?
        .ok_or_else(expired)?;
    let ceremony = serde_json::from_str(&record.state).map_err(unexpected)?;
    Ok((record, ceremony))
}

/// The use to record for a verified assertion: the passkey with its counter and
/// flags brought up to date.
fn passkey_use(
    state: &AppState,
    record: &PasskeyRecord,
    mut passkey: Passkey,
    result: &AuthenticationResult,
) -> Result<PasskeyUse, AppError> {
    passkey.update_credential(result);
    let credential = serde_json::to_string(&passkey).map_err(unexpected)?;
    Ok(PasskeyUse {
        passkey_id: record.id,
        user_id: UserId(record.user_id),
        counter: i64::from(result.counter()),
        backup_eligible: result.backup_eligible(),
        backup_state: result.backup_state(),
        credential,
        at: state.clock.now(),
    })
}

fn stored_passkey(record: &PasskeyRecord) -> Result<Passkey, AppError> {
    serde_json::from_str(&record.credential).map_err(unexpected)
}

/// A counter that went backwards (WebAuthn §6.1.1): the signature was right but the
/// key may have been copied. The passkey signs nothing in any more; the sessions it
/// proved (and `current`) must prove themselves again; the owner is told.
async fn clone_suspected(
    state: &AppState,
    record: &PasskeyRecord,
    email: &str,
    current: Option<SessionId>,
    ctx: &RequestContext,
) -> Result<AppError, AppError> {
    let names = "Passkey may be copied";
    let wording = format!(
        "The passkey “{}” answered with a sign counter lower than before: it may have been copied",
        record.name
    );
    let reason = risk::seal_flag(state, columns::SESSION_RISK_REASON, names.into(), &wording)?;
    let e = event_with(state, "passkey_clone_suspected", Some(ctx), names)?;
    let mail = messages::passkey_clone_suspected(&state.settings, email, &record.name);
    state
        .store
        .passkey_clone_suspected(
            record.id,
            UserId(record.user_id),
            current,
            &reason,
            &e,
            &[mail],
        )
        .await?;
    state
        .metrics
        .risk_signals
        .with_label_values(&["passkey_clone"])
        .inc();
    tracing::warn!(user_id = %record.user_id, passkey_id = %record.id, "passkey sign counter went backwards: flagged as possibly copied");
    Ok(AppError::Forbidden(SUSPENDED.into()))
}

/// The user's passkeys that may still be used.
async fn usable(state: &AppState, user_id: UserId) -> Result<Vec<PasskeyRecord>, AppError> {
    Ok(state
        .store
        .passkeys(user_id)
        .await?
        .into_iter()
        .filter(|p| p.clone_suspected_at.is_none())
        .collect())
}

/// Whose passkey a ceremony that named its account (second factor, step-up) must
/// be answered with.
struct Claimant<'a> {
    user_id: UserId,
    email: &'a str,
    /// The session asking (a step-up): flagged with the passkey if it looks copied.
    current: Option<SessionId>,
}

/// Verifies an assertion against one of the claimant's passkeys: another account's
/// credential is refused.
async fn verify_own(
    state: &AppState,
    who: Claimant<'_>,
    credential: &PublicKeyCredential,
    ceremony: &PasskeyAuthentication,
    ctx: &RequestContext,
    what: &'static str,
) -> Result<(PasskeyUse, Vec<&'static str>), AppError> {
    let (user_id, email, current) = (who.user_id, who.email, who.current);
    let wa = webauthn(state)?;
    let found = state
        .store
        .passkey_by_credential(credential.get_credential_id())
        .await?
        .filter(|o| o.passkey.user_id == user_id.0);
    let Some(owner) = found else {
        counted(state, what, "unknown");
        return Err(AppError::Validation(UNKNOWN.into()));
    };
    if owner.passkey.clone_suspected_at.is_some() {
        counted(state, what, "suspended");
        return Err(AppError::Forbidden(SUSPENDED.into()));
    }
    // An authenticator that names its account must name this one.
    if credential
        .get_user_unique_id()
        .is_some_and(|handle| handle != user_id.0.as_bytes())
    {
        counted(state, what, "unknown");
        return Err(AppError::Validation(UNKNOWN.into()));
    }
    let passkey = stored_passkey(&owner.passkey)?;
    let result = match wa.finish_passkey_authentication(credential, ceremony) {
        Ok(r) => r,
        Err(WebauthnError::CredentialPossibleCompromise) => {
            counted(state, what, "clone");
            return Err(clone_suspected(state, &owner.passkey, email, current, ctx).await?);
        }
        Err(e) => return Err(refused(state, what, &e)),
    };
    // webauthn-rs compared the counter with the passkey as it was when the options
    // were made; it may have been used since. Compared again with the stored one.
    let counter = i64::from(result.counter());
    if (counter > 0 || owner.passkey.sign_count > 0) && counter <= owner.passkey.sign_count {
        counted(state, what, "clone");
        return Err(clone_suspected(state, &owner.passkey, email, current, ctx).await?);
    }
    let used = passkey_use(state, &owner.passkey, passkey, &result)?;
    Ok((used, methods(&result)))
}

mod assertion;
mod registration;

pub use assertion::{
    PasskeySignIn, finish_second_factor, finish_sign_in, finish_step_up, second_factor_options,
    sign_in_options, step_up_options,
};
pub use registration::{finish_registration, list, registration_options, remove, rename};
