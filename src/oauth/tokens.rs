//! What an access token (RFC 9068) and an ID token (OIDC Core §2) say, and how they
//! are minted: claims built from a grant, signed by the node's current key.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::AppError;
use crate::signing::Signer;
use crate::state::AppState;

pub use crate::domain::claims::AccessClaims;

/// OIDC Core §2 and §3.1.3.6.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct IdClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub azp: String,
    pub iat: i64,
    pub exp: i64,
    pub auth_time: i64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub nonce: Option<String>,
    pub acr: String,
    pub amr: Vec<String>,
    pub sid: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub at_hash: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub email_verified: Option<bool>,
}

/// The person and session a token speaks for.
pub struct Subject<'a> {
    pub user_id: Uuid,
    pub session_id: Uuid,
    pub acr: &'a str,
    pub amr: &'a [String],
    pub auth_time: OffsetDateTime,
    pub email: Option<(&'a str, bool)>,
}

fn sign_failed(e: crate::signing::SignError) -> AppError {
    AppError::Unavailable(anyhow::anyhow!("signing a token: {e}"))
}

/// Signs an access token (`typ: at+jwt`, RFC 9068 §2.1) with `signer`, the key the
/// token's row names.
pub fn access_token(signer: &Signer, claims: &AccessClaims) -> Result<String, AppError> {
    signer.sign("at+jwt", claims).map_err(sign_failed)
}

/// OIDC Core §3.1.3.6: the left half of SHA-256 of the access token, base64url.
pub fn at_hash(access_token: &str) -> String {
    let digest = Sha256::digest(access_token.as_bytes());
    URL_SAFE_NO_PAD.encode(&digest[..16])
}

/// Signs an ID token for `client_id` about `subject`.
pub fn id_token(
    state: &AppState,
    signer: &Signer,
    client_id: &str,
    subject: &Subject<'_>,
    nonce: Option<&str>,
    access: &str,
    now: OffsetDateTime,
) -> Result<String, AppError> {
    let ttl = state.settings.access_token_ttl.as_secs() as i64;
    let claims = IdClaims {
        iss: state.settings.issuer(),
        sub: subject.user_id.to_string(),
        aud: client_id.to_string(),
        azp: client_id.to_string(),
        iat: now.unix_timestamp(),
        exp: now.unix_timestamp() + ttl,
        auth_time: subject.auth_time.unix_timestamp(),
        nonce: nonce.map(str::to_string),
        acr: subject.acr.to_string(),
        amr: subject.amr.to_vec(),
        sid: subject.session_id.to_string(),
        at_hash: Some(at_hash(access)),
        email: subject.email.map(|(e, _)| e.to_string()),
        email_verified: subject.email.map(|(_, v)| v),
    };
    signer.sign("JWT", &claims).map_err(sign_failed)
}
