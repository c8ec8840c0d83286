//! The protocol side of signing in with another identity provider (an "upstream"):
//! OpenID Connect (discovery, JWKS, code redemption, ID-token and logout-token
//! verification) and GitHub's OAuth 2.0 with its REST API. The web flows (state
//! cookie, linking, sessions) live elsewhere and call `Client`.
//!
//! Every failure is one of two kinds: the upstream did not answer (`Unreachable`:
//! network, timeout, 5xx) or what it said failed a check (`Refused`). The reason goes
//! to the log only, and never carries a token or a secret.

pub mod admin;
mod discovery;
mod github;
mod http;
mod oidc;

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use crate::clock::Clock;
use crate::crypto::{Keys, OpenError, SealError, columns};
use crate::store::Store;
pub use crate::store::{Upstream, UpstreamKind};

/// Clock leeway for `exp`, `iat` and `nbf` (DESIGN.md: 60 s).
pub const LEEWAY: i64 = 60;
/// A logout token issued longer ago than this is refused (OIDC Back-Channel Logout
/// 1.0 §2.6 lets a receiver bound how old a token may be); its `jti` is kept this
/// long (plus leeway), so a replay is always caught by one rule or the other.
pub const LOGOUT_TOKEN_MAX_AGE: i64 = 600;
/// How long a discovery document is trusted before it is fetched again.
pub const DISCOVERY_TTL: Duration = Duration::from_secs(3600);
/// How long a key set is trusted before it is fetched again (an unknown `kid`
/// refetches sooner, see `JWKS_REFETCH_INTERVAL`).
pub const JWKS_TTL: Duration = Duration::from_secs(3600);
/// An unknown `kid` refetches the key set at most this often per upstream, so a
/// stream of tokens with made-up `kid`s cannot make us hammer the upstream.
pub const JWKS_REFETCH_INTERVAL: Duration = Duration::from_secs(30);
/// One request to an upstream, connecting included.
pub const TIMEOUT: Duration = Duration::from_secs(10);
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Who the upstream says the person is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamIdentity {
    /// OIDC `sub`; GitHub's numeric user id as text.
    pub subject: String,
    /// The address as the upstream gives it (GitHub: the primary verified one).
    pub email: Option<String>,
    /// Only true when the upstream says so (`email_verified: true`; GitHub: the
    /// address is marked verified).
    pub email_verified: bool,
    /// The OIDC `sid` claim when present (what the upstream's logout token names).
    pub sid: Option<String>,
    /// When the person last authenticated at the upstream (the ID token's
    /// `auth_time`, Unix seconds); `None` when not said (GitHub never says).
    pub auth_time: Option<i64>,
}

/// What a verified logout token names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogoutClaims {
    pub sub: Option<String>,
    pub sid: Option<String>,
}

/// A logout token that passed every check, with its `jti` not yet spent: the
/// receiver spends it in the same transaction that ends the sessions, so a failure
/// in between leaves the upstream's retry a fresh token, not a replay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerifiedLogout {
    pub sub: Option<String>,
    pub sid: Option<String>,
    pub jti: String,
    /// How long the spent `jti` must be kept (a token this old fails its age check).
    pub keep_until: time::OffsetDateTime,
}

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Network failure, timeout or a 5xx at the upstream: a 502 page.
    #[error("the upstream did not answer: {0}")]
    Unreachable(String),
    /// Something failed a check: a 400 page (the reason is for the log only).
    #[error("the upstream's answer was refused: {0}")]
    Refused(String),
}

impl UpstreamError {
    pub(crate) fn refused(why: impl Into<String>) -> Self {
        UpstreamError::Refused(why.into())
    }
}

/// Seals an upstream's client secret for `upstreams.client_secret_enc`.
pub fn seal_client_secret(keys: &Keys, secret: &SecretString) -> Result<Vec<u8>, SealError> {
    keys.seal(
        columns::UPSTREAM_CLIENT_SECRET,
        secret.expose_secret().as_bytes(),
    )
}

/// Opens what `seal_client_secret` sealed (the second half of
/// `store.upstream_by_name`).
pub fn open_client_secret(keys: &Keys, sealed: &[u8]) -> Result<SecretString, OpenError> {
    let plain = keys.open(columns::UPSTREAM_CLIENT_SECRET, sealed)?;
    String::from_utf8(plain)
        .map(SecretString::from)
        .map_err(|_| OpenError)
}

/// Asks the upstream to authenticate the person again rather than rely on its own
/// session (OIDC Core §3.1.2.1 `prompt=login`, `max_age=0`, which also makes it
/// return `auth_time`). `false` for an upstream that cannot be asked (GitHub): its
/// sign-in then never counts as a fresh authentication.
pub fn demand_reauthentication(up: &Upstream, url: &mut url::Url) -> bool {
    match up.kind {
        UpstreamKind::Oidc => {
            oidc::demand_reauthentication(url);
            true
        }
        UpstreamKind::Github => false,
    }
}

/// The outbound side: one HTTP client with timeouts, and the discovery and key-set
/// caches. Held in `AppState` (`state.upstreams`).
pub struct Client {
    http: reqwest::Client,
    clock: Clock,
    cache: discovery::Cache,
    /// Dev mode: plain `http://` is allowed to loopback hosts (and nowhere else).
    dev: bool,
}

impl Client {
    /// The HTTP client is rustls with the ring provider (as for back-channel
    /// logouts), the system's trust store, no redirects (an endpoint that moves is
    /// misconfigured; following would carry codes and secrets elsewhere). Only
    /// `https://` upstreams are spoken to, and in dev mode (`dev`) also plain `http://`
    /// ones on a loopback host.
    pub fn new(clock: Clock, dev: bool) -> anyhow::Result<Self> {
        Ok(Self {
            http: http::client()?,
            clock,
            cache: discovery::Cache::default(),
            dev,
        })
    }

    /// A GitHub upstream's addresses, held to the rule discovery is held to.
    fn check_github_urls(&self, up: &Upstream) -> Result<(), UpstreamError> {
        for url in [&up.base_url, &up.api_url].into_iter().flatten() {
            if !discovery::transport_ok(url, self.dev) {
                return Err(UpstreamError::refused(
                    "GitHub address is not https (plain http only on loopback in dev mode)",
                ));
            }
        }
        Ok(())
    }

    /// The URL to send the browser to: the authorization endpoint with
    /// `response_type=code`, `client_id`, `redirect_uri`, `scope`, `state`, `nonce`
    /// (OIDC) and `code_challenge` with `S256` (RFC 7636).
    pub async fn authorization_url(
        &self,
        up: &Upstream,
        redirect_uri: &str,
        state: &str,
        nonce: &str,
        code_challenge: &str,
    ) -> Result<url::Url, UpstreamError> {
        match up.kind {
            UpstreamKind::Oidc => {
                let d = self.discovery(up).await?;
                oidc::authorization_url(&d, up, redirect_uri, state, nonce, code_challenge)
            }
            UpstreamKind::Github => {
                self.check_github_urls(up)?;
                github::authorization_url(up, redirect_uri, state, code_challenge)
            }
        }
    }

    /// Checks the RFC 9207 `iss` (a given one must be the upstream's; a missing one
    /// is refused when discovery advertises
    /// `authorization_response_iss_parameter_supported`), redeems the code with
    /// client authentication and the PKCE verifier, and verifies the ID token
    /// (signature by the upstream's JWKS, `iss`, `aud`, `azp`, `exp`, `iat`,
    /// `nonce`, 60 s leeway); for GitHub, reads `/user` and `/user/emails`.
    #[allow(clippy::too_many_arguments)]
    pub async fn redeem(
        &self,
        up: &Upstream,
        client_secret: &SecretString,
        code: &str,
        iss: Option<&str>,
        redirect_uri: &str,
        nonce: &str,
        code_verifier: &str,
    ) -> Result<UpstreamIdentity, UpstreamError> {
        match up.kind {
            UpstreamKind::Oidc => {
                let d = self.discovery(up).await?;
                let rule = discovery::IssuerRule::of(up)?;
                oidc::check_response_iss(&d, &rule, iss)?;
                let id_token = oidc::redeem_code(
                    &self.http,
                    &d,
                    up,
                    client_secret,
                    code,
                    redirect_uri,
                    code_verifier,
                )
                .await?;
                self.verify_id_token(up, &id_token, nonce).await
            }
            UpstreamKind::Github => {
                self.check_github_urls(up)?;
                github::check_response_iss(up, iss)?;
                github::redeem(
                    &self.http,
                    up,
                    client_secret,
                    code,
                    redirect_uri,
                    code_verifier,
                )
                .await
            }
        }
    }

    /// Verifies an ID token of `up` (what `redeem` does after the code exchange);
    /// public so that tests can hand it tokens of their own making.
    pub async fn verify_id_token(
        &self,
        up: &Upstream,
        id_token: &str,
        nonce: &str,
    ) -> Result<UpstreamIdentity, UpstreamError> {
        let d = self.discovery(up).await?;
        let rule = discovery::IssuerRule::of(up)?;
        let (claims, _) = self
            .cache
            .verify_signature(&self.http, &d, id_token)
            .await?;
        oidc::check_id_token(&claims, &rule, up, nonce, self.clock.now())
    }

    /// OIDC Back-Channel Logout 1.0 §2.6: signature, `iss`, `aud`, `azp`, `iat`, `exp`
    /// (required, §2.4), `events`, no `nonce`, `sid` and/or `sub`, and last the `jti`,
    /// refused when already spent. It is not spent here: the receiver spends it
    /// together with ending the sessions (`end_upstream_sessions`).
    pub async fn verify_logout_token(
        &self,
        store: &dyn Store,
        up: &Upstream,
        token: &str,
    ) -> Result<VerifiedLogout, UpstreamError> {
        if up.kind != UpstreamKind::Oidc {
            return Err(UpstreamError::refused(
                "logout token for a non-OIDC upstream",
            ));
        }
        let d = self.discovery(up).await?;
        let rule = discovery::IssuerRule::of(up)?;
        let (claims, _) = self.cache.verify_signature(&self.http, &d, token).await?;
        let now = self.clock.now();
        let (jti, out) = oidc::check_logout_token(&claims, &rule, up, now)?;
        let keep_until = now + time::Duration::seconds(LOGOUT_TOKEN_MAX_AGE + 2 * LEEWAY);
        match store.upstream_jti_spent(up.id, &jti).await {
            Ok(false) => Ok(VerifiedLogout {
                sub: out.sub,
                sid: out.sid,
                jti,
                keep_until,
            }),
            Ok(true) => Err(UpstreamError::refused("logout token jti already used")),
            Err(e) => Err(UpstreamError::Unreachable(format!(
                "reading the logout token's jti: {e}"
            ))),
        }
    }

    /// The upstream's discovery document, from the cache or fetched and checked.
    async fn discovery(
        &self,
        up: &Upstream,
    ) -> Result<std::sync::Arc<discovery::Discovery>, UpstreamError> {
        self.cache.discovery(&self.http, up, self.dev).await
    }
}
