//! RP-initiated logout (OpenID Connect RP-Initiated Logout 1.0): with an
//! `id_token_hint` for the browser's current session, sign out at once; otherwise ask
//! the person. A `post_logout_redirect_uri` is followed only when it is registered,
//! exactly, for the client the hint (or `client_id`) names (checklist O12).

use serde::Deserialize;

use crate::domain::oauth::Params;
use crate::error::AppError;
use crate::state::AppState;
use crate::store::SessionRecord;

#[derive(Deserialize)]
struct HintClaims {
    iss: String,
    aud: String,
    sid: Option<String>,
}

/// A logout request, checked.
pub struct LogoutRequest {
    /// The validated place to send the browser afterwards, with `state`.
    pub redirect: Option<String>,
    /// The hint names the browser's current session: no need to ask.
    pub hint_matches_session: bool,
    /// The request, to carry through the confirmation form.
    pub query: String,
}

fn page(message: &str) -> AppError {
    AppError::Validation(message.into())
}

/// Reads a logout request. A hint must be an ID token we signed for our issuer (its
/// expiry does not matter: RPs send old ones); a bad hint is ignored (the person is
/// asked); an unknown client or an unregistered `post_logout_redirect_uri` is a page,
/// never a redirect.
pub async fn check(
    state: &AppState,
    session: Option<&SessionRecord>,
    query: &str,
) -> Result<LogoutRequest, AppError> {
    let params = Params::parse(query).map_err(AppError::Validation)?;
    // A hint must be an ID token (typ JWT, not an access token) we signed with a key
    // that still verifies, for our issuer. Anything else counts as no hint: the
    // person is asked (RP-Initiated Logout §2: the OP must not rely on it).
    let hint = params.get("id_token_hint").and_then(|t| {
        let (claims, kid) = state.signing.verify::<HintClaims>(t, Some("JWT")).ok()?;
        (claims.iss == state.settings.issuer()
            && state.signing.verifies_at(&kid, state.clock.now()))
        .then_some(claims)
    });
    let client_id = match (params.get("client_id"), &hint) {
        (Some(c), Some(h)) if c != h.aud => {
            return Err(page(
                "The sign-out request names two different applications.",
            ));
        }
        (Some(c), _) => Some(c.to_string()),
        (None, Some(h)) => Some(h.aud.clone()),
        (None, None) => None,
    };
    let redirect = match params.get("post_logout_redirect_uri") {
        None => None,
        // Nothing names the app (no client_id, no valid hint): the return address
        // cannot be checked, so it is not followed; the person is still asked.
        Some(_) if client_id.is_none() => None,
        Some(uri) => {
            let client = match &client_id {
                Some(id) => state.store.client(id).await?,
                None => None,
            };
            let Some(client) = client else {
                return Err(page(
                    "The application that sent you here is not registered.",
                ));
            };
            if !crate::domain::oauth::post_logout_registered(&client.post_logout_redirect_uris, uri)
            {
                return Err(page(
                    "The application asked to return to an address it has not registered.",
                ));
            }
            let mut url =
                url::Url::parse(uri).map_err(|_| page("The return address is not valid."))?;
            if let Some(s) = params.get("state") {
                url.query_pairs_mut().append_pair("state", s);
            }
            Some(url.to_string())
        }
    };
    // The hint names this session as the app knows it: by its id, or by the id its
    // ID token named before its grant moved here (the person signed in again).
    let hint_matches_session = match (&hint, session) {
        (Some(h), Some(s)) => match h.sid.as_deref().map(uuid::Uuid::parse_str) {
            Some(Ok(sid)) if sid == s.id.0 => true,
            Some(Ok(sid)) => state.store.known_as(s.id, sid).await?,
            _ => false,
        },
        _ => false,
    };
    Ok(LogoutRequest {
        redirect,
        hint_matches_session,
        query: params.encode_without(&[]),
    })
}
