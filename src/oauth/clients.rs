//! Registering apps (`gatehouse client create|list|delete`) and authenticating them
//! at the token, introspection and revocation endpoints.

use anyhow::{Context, anyhow};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::{ExposeSecret, SecretString};

use super::rules::client_authenticates;
use crate::crypto::{random_bytes, random_token, token_hash};
use crate::domain::oauth::{check_redirect_uri, check_web_origin};
use crate::error::AppError;
use crate::state::AppState;
use crate::store::{ClientRecord, StoreError};

/// What `client create` is given.
pub struct NewClient {
    pub name: String,
    pub redirect_uris: Vec<String>,
    pub public: bool,
    pub post_logout_redirect_uris: Vec<String>,
    pub backchannel_logout_uri: Option<String>,
    pub first_party: bool,
    pub introspect_any: bool,
    /// A browser app's origins (`--web-origin`): CORS on token, revocation, userinfo.
    pub web_origins: Vec<String>,
}

/// A registered client: its id, and the secret (shown this once; `None` for public).
pub struct Created {
    pub client_id: String,
    pub client_secret: Option<SecretString>,
}

/// Registers a client. Every URI is checked against DESIGN.md "Precise rules"; the
/// secret is 32 random bytes and only its SHA-256 is kept.
pub async fn create(state: &AppState, new: NewClient) -> anyhow::Result<Created> {
    let name = new.name.trim();
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(anyhow!("--name must be 1 to 100 printable characters"));
    }
    if new.redirect_uris.is_empty() {
        return Err(anyhow!("at least one --redirect-uri is required"));
    }
    for uri in new
        .redirect_uris
        .iter()
        .chain(&new.post_logout_redirect_uris)
    {
        check_redirect_uri(uri).map_err(|e| anyhow!("{e}"))?;
    }
    if let Some(uri) = &new.backchannel_logout_uri {
        check_redirect_uri(uri).map_err(|e| anyhow!("--backchannel-logout-uri: {e}"))?;
        // Gatehouse itself calls it: a web address, never an app's private scheme.
        if !uri.starts_with("https://") && !uri.starts_with("http://") {
            return Err(anyhow!(
                "--backchannel-logout-uri must be an https:// URI (http:// on loopback)"
            ));
        }
    }
    for origin in &new.web_origins {
        check_web_origin(origin).map_err(|e| anyhow!("--web-origin {e}"))?;
    }
    // A page's code is public: only a client without a secret runs there.
    if !new.web_origins.is_empty() && !new.public {
        return Err(anyhow!(
            "--web-origin is for browser apps, which cannot keep a secret: add --public"
        ));
    }
    let mut web_origins = new.web_origins;
    web_origins.dedup();
    if new.public && new.introspect_any {
        return Err(anyhow!(
            "--introspect-any needs a confidential client (one with a secret)"
        ));
    }
    let client_id = URL_SAFE_NO_PAD.encode(random_bytes::<16>());
    let secret = (!new.public).then(random_token);
    let record = ClientRecord {
        id: client_id.clone(),
        name: name.to_string(),
        secret_hash: secret.as_deref().map(token_hash),
        redirect_uris: new.redirect_uris,
        post_logout_redirect_uris: new.post_logout_redirect_uris,
        backchannel_logout_uri: new.backchannel_logout_uri,
        first_party: new.first_party,
        introspect_any: new.introspect_any,
        created_at: state.clock.now(),
        web_origins,
    };
    state
        .store
        .create_client(&record)
        .await
        .context("storing the client")?;
    Ok(Created {
        client_id,
        client_secret: secret.map(SecretString::from),
    })
}

pub async fn list(state: &AppState) -> anyhow::Result<Vec<ClientRecord>> {
    state.store.clients().await.context("reading clients")
}

pub async fn delete(state: &AppState, id: &str) -> anyhow::Result<bool> {
    state
        .store
        .delete_client(id)
        .await
        .context("deleting the client")
}

/// Whether any browser app lists `origin` (a CORS preflight names no client).
pub async fn web_origin_registered(state: &AppState, origin: &str) -> Result<bool, AppError> {
    Ok(state.store.web_origin_registered(origin).await?)
}

/// Credentials as a request presented them (RFC 6749 §2.3.1): HTTP Basic or the form.
pub struct Presented {
    pub client_id: String,
    pub secret: Option<SecretString>,
}

/// The client registered as `id`, from this node's cache when it may answer.
pub async fn find(state: &AppState, id: &str) -> Result<Option<ClientRecord>, AppError> {
    if let Some(c) = state.live.client(id) {
        return Ok(Some(c));
    }
    let ticket = state.live.ticket();
    let client = match state.store.client(id).await {
        Ok(c) => c,
        Err(StoreError::Unavailable(e)) => return Err(AppError::Unavailable(e.into())),
        Err(e) => return Err(e.into()),
    };
    if let (Some(ticket), Some(c)) = (ticket, &client) {
        state.live.put_client(ticket, c.clone());
    }
    Ok(client)
}

/// `client` if `presented` proves to be it, or `invalid_client` (401) whatever was
/// wrong: wrong secret, a secret from a public client, none from a confidential one.
pub fn verify(client: ClientRecord, presented: &Presented) -> Result<ClientRecord, AppError> {
    let secret = presented.secret.as_ref().map(|s| s.expose_secret());
    if client.id == presented.client_id && client_authenticates(&client, secret) {
        Ok(client)
    } else {
        Err(AppError::invalid_client())
    }
}

/// The client behind `presented`, or `invalid_client` (401) whatever was wrong: no
/// such client, or `verify` refused it.
pub async fn authenticate(
    state: &AppState,
    presented: &Presented,
) -> Result<ClientRecord, AppError> {
    let client = find(state, &presented.client_id)
        .await?
        .ok_or_else(AppError::invalid_client)?;
    verify(client, presented)
}
