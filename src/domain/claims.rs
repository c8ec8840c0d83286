//! The claims of an access token (RFC 9068), as minted and as verified.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// RFC 9068 §2.2. `sid`, `acr`, `amr` and `auth_time` are absent for a
/// client_credentials token (no person behind it).
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct AccessClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub client_id: String,
    pub scope: String,
    pub jti: Uuid,
    pub iat: i64,
    pub exp: i64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub sid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub acr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub amr: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub auth_time: Option<i64>,
}
