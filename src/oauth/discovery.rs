//! OpenID Connect Discovery 1.0 §3 and RFC 8414 metadata (one document, one issuer),
//! and the JWKS (RFC 7517): public halves only, every key with its `kid`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use crate::domain::oauth::{ACR_AAL1, ACR_AAL2, SCOPES};
use crate::state::AppState;

pub fn metadata(state: &AppState) -> Value {
    let iss = state.settings.issuer();
    json!({
        "issuer": iss,
        "authorization_endpoint": format!("{iss}/oauth2/authorize"),
        "token_endpoint": format!("{iss}/oauth2/token"),
        "userinfo_endpoint": format!("{iss}/oauth2/userinfo"),
        "jwks_uri": format!("{iss}/jwks.json"),
        "introspection_endpoint": format!("{iss}/oauth2/introspect"),
        "revocation_endpoint": format!("{iss}/oauth2/revoke"),
        "end_session_endpoint": format!("{iss}/oauth2/logout"),
        "scopes_supported": SCOPES,
        "response_types_supported": ["code"],
        "response_modes_supported": ["query"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
        "code_challenge_methods_supported": ["S256"],
        "acr_values_supported": [ACR_AAL1, ACR_AAL2],
        "prompt_values_supported": ["none", "login", "consent", "select_account"],
        "claims_supported": ["iss", "sub", "aud", "azp", "exp", "iat", "auth_time", "nonce",
            "acr", "amr", "sid", "at_hash", "email", "email_verified"],
        "claims_parameter_supported": false,
        "request_parameter_supported": false,
        "request_uri_parameter_supported": false,
        "authorization_response_iss_parameter_supported": true,
        "backchannel_logout_supported": true,
        "backchannel_logout_session_supported": true,
    })
}

pub fn jwks(state: &AppState) -> Value {
    let keys: Vec<Value> = state
        .signing
        .published(state.clock.now())
        .iter()
        .map(|k| {
            json!({
                "kty": "RSA",
                "use": "sig",
                "alg": "RS256",
                "kid": k.kid,
                "n": URL_SAFE_NO_PAD.encode(&k.n),
                "e": URL_SAFE_NO_PAD.encode(&k.e),
            })
        })
        .collect();
    json!({ "keys": keys })
}
