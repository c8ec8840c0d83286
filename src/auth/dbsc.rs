//! Device Bound Session Credentials (W3C WebAppSec DBSC draft, `w3c/webappsec-dbsc`;
//! DESIGN.md "Passkeys and device-bound sessions").
//!
//! A browser that supports it answers the `Secure-Session-Registration` header of a
//! new session by making a key pair it keeps in hardware and POSTing a proof (a JWS,
//! `typ: dbsc+jwt`, public key in the header's `jwk`) to the registration path. From
//! then on the session also needs `__Host-gatehouse_bound`, a cookie that lives
//! `GATEHOUSE_DBSC_COOKIE_TTL` and that only a fresh proof by that key renews: a
//! copied session cookie works for minutes at most. Binding is opportunistic: a
//! browser that never registers keeps working exactly as before.
//!
//! Challenges are stateless until spent (a keyed MAC over the purpose, the session, a
//! nonce and the time, five minutes valid); a proof spends one by recording its hash
//! (`dbsc_used_challenges`), so none works twice. Any unspent, unexpired challenge of
//! the session is accepted, which tolerates the races of parallel refreshes.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, ThumbprintHash};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::json;

use super::events::event_with;
use crate::crypto::{self, columns};
use crate::domain::{Location, SessionId, SessionToken};
use crate::error::AppError;
use crate::mail::messages;
use crate::state::AppState;
use crate::store::{BoundCookie, DbscOutcome, RiskFlag, SessionRecord, SpentChallenge};

pub const REGISTRATION_PATH: &str = "/dbsc/register";
pub const REFRESH_PATH: &str = "/dbsc/refresh";
/// How long a challenge may be answered.
pub const CHALLENGE_TTL_SECS: i64 = 300;
/// With `GATEHOUSE_DBSC_REQUIRE_FOR_ADMINS`: how long an administrator's new session
/// may go unbound (its browser registers within moments of the sign-in).
pub const ADMIN_GRACE_SECS: i64 = 60;
/// The proof's media type (DBSC: `typ` of the JWS header).
const PROOF_TYP: &str = "dbsc+jwt";

#[derive(Clone, Copy)]
enum Purpose {
    Register,
    Refresh,
}

impl Purpose {
    fn tag(self) -> &'static [u8] {
        match self {
            Self::Register => b"register",
            Self::Refresh => b"refresh",
        }
    }
}

fn mac_input(purpose: Purpose, binding: &[u8], body: &str) -> Vec<u8> {
    let mut data = purpose.tag().to_vec();
    data.push(0);
    data.extend_from_slice(binding);
    data.push(0);
    data.extend_from_slice(body.as_bytes());
    data
}

/// A fresh challenge for `purpose`, bound to `binding` (the session's cookie token
/// hash at registration, its id at refresh).
fn challenge(state: &AppState, purpose: Purpose, binding: &[u8]) -> String {
    let nonce: [u8; 16] = crypto::random_bytes();
    let body = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(nonce),
        state.clock.now().unix_timestamp()
    );
    let mac = state
        .keys
        .mac("dbsc/challenge", &mac_input(purpose, binding, &body));
    format!("{body}.{}", URL_SAFE_NO_PAD.encode(mac))
}

/// Checks a challenge came from us for this purpose and binding, and is fresh; the
/// record that spends it.
fn check_challenge(
    state: &AppState,
    purpose: Purpose,
    binding: &[u8],
    challenge: &str,
) -> Option<SpentChallenge> {
    let (body, mac) = challenge.rsplit_once('.')?;
    let (_, issued) = body.split_once('.')?;
    let issued = time::OffsetDateTime::from_unix_timestamp(issued.parse().ok()?).ok()?;
    let age = (state.clock.now() - issued).whole_seconds();
    if !(-60..=CHALLENGE_TTL_SECS).contains(&age) {
        return None;
    }
    let mac = URL_SAFE_NO_PAD.decode(mac).ok()?;
    let input = mac_input(purpose, binding, body);
    let genuine = state
        .keys
        .mac_candidates("dbsc/challenge", &input)
        .iter()
        .any(|m| crypto::constant_time_eq(m, &mac));
    // Kept as long as any node could still accept it (its age limit plus the clock
    // skew tolerated above).
    genuine.then(|| SpentChallenge {
        hash: crypto::token_hash(challenge),
        expires_at: issued + time::Duration::seconds(CHALLENGE_TTL_SECS + 60),
    })
}

/// The `authorization` value a registration must echo: tied to the session's cookie.
fn authorization(state: &AppState, token_hash: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(state.keys.mac("dbsc/authorization", token_hash))
}

/// Whether `presented` is the authorization value of `token_hash` under any key still
/// accepted (an offer made just before a key rotation still registers).
fn authorization_matches(state: &AppState, token_hash: &[u8], presented: &str) -> bool {
    state
        .keys
        .mac_candidates("dbsc/authorization", token_hash)
        .iter()
        .any(|m| {
            crypto::constant_time_eq(URL_SAFE_NO_PAD.encode(m).as_bytes(), presented.as_bytes())
        })
}

/// The `Secure-Session-Registration` header offering a new session token's browser
/// to bind it: the algorithms we take, where to register, a challenge, and the
/// authorization value tied to this session.
pub fn registration_header(state: &AppState, token: &SessionToken) -> String {
    let hash = token.hash();
    format!(
        r#"(ES256 RS256);path="{REGISTRATION_PATH}";challenge="{}";authorization="{}""#,
        challenge(state, Purpose::Register, &hash),
        authorization(state, &hash)
    )
}

/// Why a proof was refused (answered 400, nothing changed).
#[derive(Debug, thiserror::Error)]
pub enum ProofError {
    #[error("no proof")]
    Missing,
    #[error("the proof is not a dbsc+jwt signed with ES256 or RS256 by the key it names")]
    Malformed,
    #[error("the proof's signature does not verify")]
    BadSignature,
    #[error("the challenge is unknown, expired or for another session")]
    BadChallenge,
    #[error("the challenge was already used")]
    Replayed,
    #[error("the authorization value is not this session's")]
    BadAuthorization,
}

impl From<ProofError> for AppError {
    fn from(e: ProofError) -> Self {
        AppError::oauth("invalid_request", e.to_string())
    }
}

#[derive(Deserialize)]
struct ProofClaims {
    jti: String,
    authorization: Option<String>,
}

/// The algorithm a key is for: P-256 signs ES256, RSA signs RS256; nothing else.
fn algorithm_of(jwk: &Jwk) -> Option<Algorithm> {
    match &jwk.algorithm {
        AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
            Some(Algorithm::ES256)
        }
        AlgorithmParameters::RSA(_) => Some(Algorithm::RS256),
        _ => None,
    }
}

/// Verifies a proof with `jwk` (the header's at registration, the stored one at
/// refresh): `typ` and `alg` must match the key's kind, so no `alg: none`, no HMAC
/// with a public key.
fn verify(proof: &str, jwk: &Jwk) -> Result<ProofClaims, ProofError> {
    let header = jsonwebtoken::decode_header(proof).map_err(|_| ProofError::Malformed)?;
    let alg = algorithm_of(jwk).ok_or(ProofError::Malformed)?;
    if header.alg != alg
        || !header
            .typ
            .as_deref()
            .is_some_and(|t| t.eq_ignore_ascii_case(PROOF_TYP))
    {
        return Err(ProofError::Malformed);
    }
    let key = DecodingKey::from_jwk(jwk).map_err(|_| ProofError::Malformed)?;
    let mut v = Validation::new(alg);
    v.validate_exp = false;
    v.validate_nbf = false;
    v.validate_aud = false;
    v.required_spec_claims.clear();
    jsonwebtoken::decode::<ProofClaims>(proof, &key, &v)
        .map(|d| d.claims)
        .map_err(|_| ProofError::BadSignature)
}

fn count(state: &AppState, what: &str) {
    state.metrics.dbsc.with_label_values(&[what]).inc();
}

/// A new bound cookie: its value for the browser, its hash and lapse for the row.
fn new_bound_cookie(state: &AppState) -> (String, BoundCookie) {
    let value = crypto::random_token();
    let ttl = time::Duration::seconds(
        i64::try_from(state.settings.dbsc_cookie_ttl.as_secs()).unwrap_or(600),
    );
    let cookie = BoundCookie {
        hash: crypto::token_hash(&value),
        expires_at: state.clock.now() + ttl,
    };
    (value, cookie)
}

/// The session configuration a registration or refresh answers with (DBSC
/// "session instructions"): the bound cookie named with the attributes of its
/// `Set-Cookie`, scoped to Gatehouse's origin.
pub fn session_config(state: &AppState, id: SessionId) -> serde_json::Value {
    json!({
        "session_identifier": id.to_string(),
        "refresh_url": REFRESH_PATH,
        "scope": {
            "origin": state.settings.public_origin(),
            "include_site": false,
            "scope_specification": [],
        },
        "credentials": [{
            "type": "cookie",
            "name": state.cookies.bound_name,
            "attributes": state.cookies.bound_attributes(),
        }],
    })
}

/// A session now bound (or refreshed): its id and the bound cookie's value to set.
pub struct Bound {
    pub id: SessionId,
    pub cookie: String,
}

/// Registration: binds the session behind `token` to the key in the proof.
pub async fn register(
    state: &AppState,
    token: &SessionToken,
    proof: Option<&str>,
) -> Result<Bound, AppError> {
    let result = register_inner(state, token, proof).await;
    count(
        state,
        if result.is_ok() {
            "registered"
        } else {
            "rejected"
        },
    );
    result
}

/// A registration proof as `/dbsc/register` reads it, before any session or
/// challenge is looked at: the key from its own header, then the signature by that
/// key. `Some(jti)` when it holds. For the fuzz targets (fuzz/), which feed it
/// anything; it must never panic.
pub fn self_signed_proof(proof: &str) -> Option<String> {
    let header = jsonwebtoken::decode_header(proof).ok()?;
    let jwk = header.jwk?;
    verify(proof, &jwk).ok().map(|c| c.jti)
}

/// A refresh proof checked against a stored key (JSON), as `/dbsc/refresh` does.
/// For the fuzz targets.
pub fn proof_by_key(proof: &str, jwk_json: &str) -> Option<String> {
    let jwk: Jwk = serde_json::from_str(jwk_json).ok()?;
    verify(proof, &jwk).ok().map(|c| c.jti)
}

async fn register_inner(
    state: &AppState,
    token: &SessionToken,
    proof: Option<&str>,
) -> Result<Bound, AppError> {
    let now = state.clock.now();
    let session = state
        .store
        .live_session(&token.hash(), now)
        .await?
        .ok_or(AppError::Unauthorized)?;
    let proof = proof.ok_or(ProofError::Missing)?;
    let header = jsonwebtoken::decode_header(proof).map_err(|_| ProofError::Malformed)?;
    let jwk = header.jwk.ok_or(ProofError::Malformed)?;
    let claims = verify(proof, &jwk)?;
    let spent = check_challenge(state, Purpose::Register, &token.hash(), &claims.jti)
        .ok_or(ProofError::BadChallenge)?;
    if !claims
        .authorization
        .as_deref()
        .is_some_and(|a| authorization_matches(state, &token.hash(), a))
    {
        return Err(ProofError::BadAuthorization.into());
    }
    let thumbprint = jwk
        .thumbprint(ThumbprintHash::SHA256)
        .map_err(|_| ProofError::Malformed)?;
    let stored = serde_json::to_string(&jwk).map_err(|e| AppError::Unexpected(e.into()))?;
    let (value, cookie) = new_bound_cookie(state);
    match state
        .store
        .bind_session_key(session.id, &stored, &thumbprint, &cookie, &spent, now)
        .await?
    {
        DbscOutcome::Done => {
            tracing::info!(session_id = %session.id, "session bound to a device key (DBSC)");
            Ok(Bound {
                id: session.id,
                cookie: value,
            })
        }
        DbscOutcome::Replayed => Err(ProofError::Replayed.into()),
        DbscOutcome::Gone => Err(AppError::Conflict(
            "This session is already bound to a key, or has ended.".into(),
        )),
    }
}

/// What a refresh request gets.
pub enum Refresh {
    /// No proof yet: answer 403 with this challenge (`Secure-Session-Challenge`).
    Challenge { id: SessionId, challenge: String },
    /// Proven: a new bound cookie.
    Refreshed(Bound),
    /// The session is revoked or expired (or unknown): `{"continue": false}`.
    End,
}

/// Refresh: `id` from `Sec-Secure-Session-Id`, `proof` from `Secure-Session-Response`.
pub async fn refresh(
    state: &AppState,
    id: Option<&str>,
    proof: Option<&str>,
) -> Result<Refresh, AppError> {
    let now = state.clock.now();
    let Some(id) = id.and_then(|raw| SessionId::parse(raw.trim().trim_matches('"'))) else {
        count(state, "ended");
        return Ok(Refresh::End);
    };
    let Some(bound) = state.store.bound_session(id, now).await?.filter(|b| b.live) else {
        count(state, "ended");
        return Ok(Refresh::End);
    };
    let Some(proof) = proof else {
        count(state, "challenged");
        return Ok(Refresh::Challenge {
            id,
            challenge: challenge(state, Purpose::Refresh, id.0.as_bytes()),
        });
    };
    let outcome = refresh_with(state, &bound.jwk, id, proof).await;
    count(
        state,
        match &outcome {
            Ok(Refresh::Refreshed(_)) => "refreshed",
            Ok(_) => "ended",
            Err(_) => "rejected",
        },
    );
    outcome
}

async fn refresh_with(
    state: &AppState,
    jwk: &str,
    id: SessionId,
    proof: &str,
) -> Result<Refresh, AppError> {
    // The challenge first (a MAC), the signature only for one we issued.
    // Read before it is verified only to find the challenge; nothing is trusted
    // until `verify` below.
    let unverified = jsonwebtoken::dangerous::insecure_decode_claims::<ProofClaims>(proof)
        .map_err(|_| ProofError::Malformed)?;
    check_challenge(state, Purpose::Refresh, id.0.as_bytes(), &unverified.jti)
        .ok_or(ProofError::BadChallenge)?;
    let jwk: Jwk = serde_json::from_str(jwk).map_err(|e| AppError::Unexpected(e.into()))?;
    let claims = verify(proof, &jwk)?;
    let spent = check_challenge(state, Purpose::Refresh, id.0.as_bytes(), &claims.jti)
        .ok_or(ProofError::BadChallenge)?;
    let (value, cookie) = new_bound_cookie(state);
    match state
        .store
        .refresh_bound_cookie(id, &cookie, &spent, state.clock.now())
        .await?
    {
        DbscOutcome::Done => Ok(Refresh::Refreshed(Bound { id, cookie: value })),
        DbscOutcome::Replayed => Err(ProofError::Replayed.into()),
        DbscOutcome::Gone => Ok(Refresh::End),
    }
}

/// Refusals of one bound session whose requests say they skipped a refresh
/// (`Secure-Session-Skipped`) are counted in a window of this length...
pub const SKIPPED_WINDOW_SECS: i64 = 600;
/// ...and more than this many in one window are more than a real browser sends (it
/// says so only while its refresh fails, and a refresh is due once per bound cookie
/// lifetime): the session is flagged as a copy (README "Device-bound sessions").
pub const SKIPPED_REFUSALS_LIMIT: i32 = 20;

/// Where a refused request came from.
pub struct RequestOrigin<'a> {
    pub ip: std::net::IpAddr,
    pub location: &'a Location,
}

/// Whether `from` is another address, or another country, than the one `session`
/// signed in from (compared by keyed MAC, under every key still accepted). Unknown
/// on either side is not "another".
fn from_elsewhere(state: &AppState, session: &SessionRecord, from: &RequestOrigin<'_>) -> bool {
    let matches = |stored: &[u8], context: &str, value: &str| {
        state
            .keys
            .mac_candidates(context, value.as_bytes())
            .iter()
            .any(|m| crypto::constant_time_eq(m, stored))
    };
    let other_address = session
        .ip_mac
        .as_deref()
        .is_some_and(|m| !matches(m, columns::SEEN_IP, &from.ip.to_string()));
    let other_country = match (&session.country_mac, &from.location.country_code) {
        (Some(m), Some(code)) => !matches(m, columns::SEEN_COUNTRY, code),
        _ => false,
    };
    other_address || other_country
}

/// Whether a request may use this session: a bound one needs a live bound cookie
/// (`presented`), or it is refused. A refusal is someone holding the session cookie
/// without the key — the session is flagged (once, with a mail to its owner) and must
/// prove a second factor again — unless it looks like the owner's own browser: it
/// says it skipped a refresh (`Secure-Session-Skipped`), or brings our cookie a
/// moment after it lapsed, or no cookie a moment after the key was registered or the
/// cookie renewed. Even then it is flagged when it comes from another address or
/// country than the session's own (whatever the header says), or when skipped
/// refusals repeat beyond `SKIPPED_REFUSALS_LIMIT` in `SKIPPED_WINDOW_SECS`: the
/// header is the requester's word, and a thief can say it too.
pub async fn admits(
    state: &AppState,
    session: &SessionRecord,
    presented: Option<&str>,
    skipped: bool,
    from: &RequestOrigin<'_>,
) -> Result<bool, AppError> {
    let now = state.clock.now();
    let Some(bound) = &session.dbsc else {
        // An administrator's session, where the operator requires binding, gets the
        // minute after its sign-in to register a key, and no more.
        if state.settings.dbsc_require_for_admins
            && session.is_admin
            && now - session.created_at > time::Duration::seconds(ADMIN_GRACE_SECS)
        {
            count(state, "required");
            tracing::info!(session_id = %session.id, "administrator's session not bound to a device key: refused");
            return Ok(false);
        }
        return Ok(true);
    };
    let lapses = presented.and_then(|v| bound.lapses(&crypto::token_hash(v)));
    if lapses.is_some_and(|until| until > now) {
        return Ok(true);
    }
    count(state, "refused");
    let ttl = time::Duration::seconds(
        i64::try_from(state.settings.dbsc_cookie_ttl.as_secs()).unwrap_or(600),
    );
    let just_lapsed = lapses.is_some_and(|until| now - until < time::Duration::seconds(60));
    let just_renewed = now - (bound.current.1 - ttl) < time::Duration::seconds(30);
    let wording = if skipped || just_lapsed || just_renewed {
        let elsewhere = from_elsewhere(state, session, from);
        let repeated = skipped
            && state
                .store
                .count_skipped_refusal(session.id, now, SKIPPED_WINDOW_SECS)
                .await?
                > SKIPPED_REFUSALS_LIMIT;
        if elsewhere {
            "Used without its device key, from another address than its own: someone has a copy of this session's cookie"
        } else if repeated {
            "Used without its device key, again and again: someone has a copy of this session's cookie"
        } else {
            tracing::info!(session_id = %session.id, skipped, "bound session without a live bound cookie: refused");
            return Ok(false);
        }
    } else {
        "Used without its device key: someone has a copy of this session's cookie"
    };
    let names = "Used without its device key";
    let reason = RiskFlag {
        summary: names.into(),
        sealed: state
            .keys
            .seal(columns::SESSION_RISK_REASON, wording.as_bytes())
            .map_err(|e| AppError::Unexpected(e.into()))?,
    };
    let e = event_with(state, "session_flagged", None, names)?;
    let mail = messages::session_flagged(
        &state.settings,
        &session.email,
        "A session protected by its browser's security chip was used without it: someone has a copy of its cookie. It was refused.",
    );
    if state
        .store
        .flag_session(session.id, &reason, &e, &mail)
        .await?
    {
        tracing::info!(session_id = %session.id, skipped, "session used without its device key: refused and flagged");
    }
    Ok(false)
}

/// `Secure-Session-Skipped` (the browser could not refresh): counted, by a bounded
/// reason, and logged.
pub fn skipped(state: &AppState, reason: &str) {
    let reason = match reason.trim().split(';').next().unwrap_or("") {
        r @ ("unreachable" | "server_error" | "quota_exceeded") => r,
        _ => "other",
    };
    state
        .metrics
        .dbsc
        .with_label_values(&[&format!("skipped_{reason}")])
        .inc();
    tracing::info!(reason, "a browser skipped a DBSC refresh");
}
