//! `/oauth2/token` (RFC 6749 §4.1.3, §4.4, §6): the code exchange, refresh-token
//! rotation and client_credentials. `password`, implicit and hybrid are not offered.

use std::sync::Arc;

use serde::Serialize;
use time::OffsetDateTime;
use uuid::Uuid;

use super::keys;
use super::rules::{check_code, check_refresh};
use super::tokens::{AccessClaims, Subject, access_token, id_token};
use crate::auth::events::event_with;
use crate::crypto::{random_token, token_hash};
use crate::domain::oauth::{Params, Scopes};
use crate::error::AppError;
use crate::signing::Signer;
use crate::state::AppState;
use crate::store::{ClientRecord, NewTokens, Redemption, Rotation};

/// RFC 6749 §5.1.
#[derive(Serialize)]
pub struct TokenResponse {
    pub access_token: String,
    pub token_type: &'static str,
    pub expires_in: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
    pub scope: String,
}

fn invalid_grant(why: &str) -> AppError {
    AppError::oauth("invalid_grant", format!("The grant is not valid: {why}."))
}

fn required<'a>(params: &'a Params, name: &str) -> Result<&'a str, AppError> {
    params
        .get(name)
        .ok_or_else(|| AppError::oauth("invalid_request", format!("{name} is missing")))
}

/// Answers a token request from an authenticated `client`.
pub async fn token(
    state: &AppState,
    client: &ClientRecord,
    params: &Params,
) -> Result<TokenResponse, AppError> {
    let grant = required(params, "grant_type")?;
    let result = match grant {
        "authorization_code" => exchange_code(state, client, params).await,
        "refresh_token" => refresh(state, client, params).await,
        "client_credentials" => client_credentials(state, client, params).await,
        _ => {
            return Err(AppError::oauth(
                "unsupported_grant_type",
                "Only authorization_code, refresh_token and client_credentials are offered.",
            ));
        }
    };
    let outcome = match &result {
        Ok(_) => "issued",
        Err(r) => r.outcome,
    };
    state
        .metrics
        .oauth_tokens
        .with_label_values(&[grant, outcome])
        .inc();
    result.map_err(|r| r.error)
}

/// A refused token request and how the metrics count it.
struct Refusal {
    error: AppError,
    /// `refused`, `unavailable` (storage down), or `replayed` / `reused` for a theft
    /// signal.
    outcome: &'static str,
}

impl From<crate::store::StoreError> for Refusal {
    fn from(e: crate::store::StoreError) -> Self {
        AppError::from(e).into()
    }
}

impl From<AppError> for Refusal {
    fn from(error: AppError) -> Self {
        let outcome = match error {
            AppError::Unavailable(_) => "unavailable",
            _ => "refused",
        };
        Refusal { error, outcome }
    }
}

/// The key this request signs with (this node's current one, reloaded if stale),
/// taken once so that the `kid` its rows record is the one in its tokens.
async fn signer(state: &AppState) -> Result<Arc<Signer>, AppError> {
    keys::refresh_if_stale(state).await;
    state
        .signing
        .current()
        .ok_or_else(|| AppError::Unavailable(anyhow::anyhow!("no signing key is loaded")))
}

fn new_tokens(
    state: &AppState,
    kid: String,
    refresh: Option<&str>,
    now: OffsetDateTime,
) -> NewTokens {
    let refresh_ttl = state
        .settings
        .refresh_token_ttl
        .unwrap_or(state.settings.remember_absolute);
    NewTokens {
        grant_id: Uuid::new_v4(),
        jti: Uuid::new_v4(),
        kid,
        issued_at: now,
        access_expires_at: now + state.settings.access_token_ttl,
        refresh: refresh.map(|r| (token_hash(r), now + refresh_ttl)),
    }
}

fn access_claims(
    state: &AppState,
    client: &ClientRecord,
    t: &NewTokens,
    scope: &str,
    subject: Option<&Subject<'_>>,
) -> AccessClaims {
    AccessClaims {
        iss: state.settings.issuer(),
        sub: subject.map_or_else(|| client.id.clone(), |s| s.user_id.to_string()),
        aud: client.id.clone(),
        client_id: client.id.clone(),
        scope: scope.to_string(),
        jti: t.jti,
        iat: t.issued_at.unix_timestamp(),
        exp: t.access_expires_at.unix_timestamp(),
        sid: subject.map(|s| s.session_id.to_string()),
        acr: subject.map(|s| s.acr.to_string()),
        amr: subject.map(|s| s.amr.to_vec()),
        auth_time: subject.map(|s| s.auth_time.unix_timestamp()),
    }
}

async fn exchange_code(
    state: &AppState,
    client: &ClientRecord,
    params: &Params,
) -> Result<TokenResponse, Refusal> {
    let code = required(params, "code")?;
    let redirect_uri = params.get("redirect_uri");
    let verifier = params.get("code_verifier");
    let now = state.clock.now();
    let refresh = random_token();
    let signer = signer(state).await?;
    let t = new_tokens(state, signer.kid.clone(), Some(&refresh), now);
    let rule =
        |c: &crate::store::CodeRecord| check_code(c, &client.id, redirect_uri, verifier, now);
    let code = match state
        .store
        .redeem_code(&token_hash(code), now, &rule, &t)
        .await?
    {
        Redemption::Issued(c) => c,
        Redemption::Unknown => return Err(invalid_grant("unknown or expired code").into()),
        Redemption::Replayed => {
            tracing::warn!(client_id = %client.id, "authorization code replayed; its grant is revoked");
            return Err(Refusal {
                error: invalid_grant("the code has already been used"),
                outcome: "replayed",
            });
        }
        Redemption::Refused(why) => return Err(invalid_grant(why).into()),
    };
    let scope = Scopes::parse(&code.scope).unwrap_or_default();
    let subject = Subject {
        user_id: code.user_id,
        session_id: code.session_id,
        acr: &code.acr,
        amr: &code.amr,
        auth_time: code.auth_time,
        email: scope
            .contains("email")
            .then_some((code.email.as_str(), code.email_verified)),
    };
    Ok(person_tokens(
        state,
        &signer,
        client,
        &t,
        &scope,
        &subject,
        code.nonce.as_deref(),
        refresh,
    )?)
}

async fn refresh(
    state: &AppState,
    client: &ClientRecord,
    params: &Params,
) -> Result<TokenResponse, Refusal> {
    let presented = required(params, "refresh_token")?;
    let asked = params
        .get("scope")
        .map(|s| Scopes::parse(s).map_err(|d| AppError::oauth("invalid_scope", d)))
        .transpose()?;
    let now = state.clock.now();
    let next = random_token();
    let signer = signer(state).await?;
    let mut t = new_tokens(state, signer.kid.clone(), Some(&next), now);
    // The refresh keeps its grant; the store uses the grant it finds.
    let reuse = event_with(state, "refresh_token_reused", None, &client.id)?;
    let rule = |r: &crate::store::RefreshRecord| check_refresh(r, &client.id, asked.as_ref(), now);
    let rec = match state
        .store
        .rotate_refresh(&token_hash(presented), now, &rule, &t, &reuse)
        .await?
    {
        Rotation::Rotated(r) => r,
        Rotation::Unknown => return Err(invalid_grant("unknown refresh token").into()),
        Rotation::Refused(why) => return Err(invalid_grant(why).into()),
        Rotation::WiderScope => {
            return Err(
                AppError::oauth("invalid_scope", "The scope is wider than the grant's.").into(),
            );
        }
        Rotation::Reused => {
            tracing::warn!(client_id = %client.id, "refresh token reused; its family and session are revoked"); // log-ok: no secret
            return Err(Refusal {
                error: invalid_grant("the refresh token has already been used"),
                outcome: "reused",
            });
        }
    };
    t.grant_id = rec.grant_id;
    let granted = Scopes::parse(&rec.scope).unwrap_or_default();
    // RFC 6749 §6: a narrower scope may be asked for (the rule refused a wider one).
    let scope = asked.unwrap_or(granted);
    let (Some(user), Some(session), Some(auth_time)) = (rec.user_id, rec.session_id, rec.auth_time)
    else {
        return Err(invalid_grant("the grant has no session").into());
    };
    let amr = rec.amr.clone().unwrap_or_default();
    let acr = rec.acr.clone().unwrap_or_default();
    let subject = Subject {
        user_id: user,
        session_id: session,
        acr: &acr,
        amr: &amr,
        auth_time,
        email: match (&rec.email, rec.email_verified) {
            (Some(e), Some(v)) if scope.contains("email") => Some((e.as_str(), v)),
            _ => None,
        },
    };
    Ok(person_tokens(
        state, &signer, client, &t, &scope, &subject, None, next,
    )?)
}

/// The token response for a person: the access token, the ID token when `openid`
/// was granted (OIDC Core §3.1.3.3), and the new refresh token.
#[allow(clippy::too_many_arguments)]
fn person_tokens(
    state: &AppState,
    signer: &Signer,
    client: &ClientRecord,
    t: &NewTokens,
    scope: &Scopes,
    subject: &Subject<'_>,
    nonce: Option<&str>,
    refresh: String,
) -> Result<TokenResponse, AppError> {
    let scope_text = scope.to_string();
    let access = access_token(
        signer,
        &access_claims(state, client, t, &scope_text, Some(subject)),
    )?;
    let id = if scope.contains("openid") {
        Some(id_token(
            state,
            signer,
            &client.id,
            subject,
            nonce,
            &access,
            t.issued_at,
        )?)
    } else {
        None
    };
    Ok(TokenResponse {
        access_token: access,
        token_type: "Bearer",
        expires_in: state.settings.access_token_ttl.as_secs(),
        refresh_token: Some(refresh),
        id_token: id,
        scope: scope_text,
    })
}

async fn client_credentials(
    state: &AppState,
    client: &ClientRecord,
    params: &Params,
) -> Result<TokenResponse, Refusal> {
    if client.is_public() {
        return Err(AppError::oauth(
            "unauthorized_client",
            "client_credentials needs a confidential client.",
        )
        .into());
    }
    // The scopes Gatehouse knows are all about a person; a client acting for itself
    // gets none of them.
    if params.get("scope").is_some() {
        return Err(AppError::oauth(
            "invalid_scope",
            "client_credentials tokens carry no user scopes.",
        )
        .into());
    }
    let now = state.clock.now();
    let signer = signer(state).await?;
    let t = new_tokens(state, signer.kid.clone(), None, now);
    state.store.issue_client_grant(&client.id, "", &t).await?;
    let access = access_token(&signer, &access_claims(state, client, &t, "", None))?;
    Ok(TokenResponse {
        access_token: access,
        token_type: "Bearer",
        expires_in: state.settings.access_token_ttl.as_secs(),
        refresh_token: None,
        id_token: None,
        scope: String::new(),
    })
}
