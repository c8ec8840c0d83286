//! GitHub (and GitHub Enterprise): OAuth 2.0 with `state` and PKCE S256, then its
//! REST API for who the person is. Not OpenID Connect: the identity is GitHub's
//! numeric user id (a login name can be renamed and then taken by someone else), the
//! address is the primary one, and only when GitHub marks it verified.

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::http::send_json;
use super::{Upstream, UpstreamError, UpstreamIdentity};

/// The REST API version asked for (GitHub's `X-GitHub-Api-Version`).
const API_VERSION: &str = "2022-11-28";

fn base(up: &Upstream) -> Result<&str, UpstreamError> {
    up.base_url
        .as_deref()
        .map(|b| b.trim_end_matches('/'))
        .ok_or_else(|| UpstreamError::refused("GitHub upstream without a base URL"))
}

fn api(up: &Upstream) -> Result<&str, UpstreamError> {
    up.api_url
        .as_deref()
        .map(|b| b.trim_end_matches('/'))
        .ok_or_else(|| UpstreamError::refused("GitHub upstream without an API URL"))
}

pub(super) fn authorization_url(
    up: &Upstream,
    redirect_uri: &str,
    state: &str,
    code_challenge: &str,
) -> Result<url::Url, UpstreamError> {
    let mut url = url::Url::parse(&format!("{}/login/oauth/authorize", base(up)?))
        .map_err(|_| UpstreamError::refused("GitHub base URL is not a URL"))?;
    url.query_pairs_mut()
        .append_pair("client_id", &up.client_id)
        .append_pair("redirect_uri", redirect_uri)
        .append_pair("scope", &up.scopes)
        .append_pair("state", state)
        .append_pair("code_challenge", code_challenge)
        .append_pair("code_challenge_method", "S256");
    Ok(url)
}

/// GitHub sends no RFC 9207 `iss`; one that names anything but its base URL means
/// the response came from somewhere else.
pub(super) fn check_response_iss(up: &Upstream, iss: Option<&str>) -> Result<(), UpstreamError> {
    match iss {
        None => Ok(()),
        Some(iss) if iss.trim_end_matches('/') == base(up)? => Ok(()),
        Some(_) => Err(UpstreamError::refused(
            "authorization response iss is not the upstream's (mix-up)",
        )),
    }
}

#[derive(Deserialize)]
struct TokenAnswer {
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    error: Option<String>,
}

#[derive(Deserialize)]
struct User {
    id: u64,
}

#[derive(Deserialize)]
struct Email {
    email: String,
    #[serde(default)]
    primary: bool,
    #[serde(default)]
    verified: bool,
}

pub(super) async fn redeem(
    http: &reqwest::Client,
    up: &Upstream,
    secret: &SecretString,
    code: &str,
    redirect_uri: &str,
    code_verifier: &str,
) -> Result<UpstreamIdentity, UpstreamError> {
    let form = [
        ("client_id", up.client_id.as_str()),
        ("client_secret", secret.expose_secret()),
        ("code", code),
        ("redirect_uri", redirect_uri),
        ("code_verifier", code_verifier),
    ];
    // Without `Accept: application/json` GitHub answers form-encoded; a failed
    // exchange is a 200 with an `error` member.
    let answer: TokenAnswer = send_json(
        http.post(format!("{}/login/oauth/access_token", base(up)?))
            .header(reqwest::header::ACCEPT, "application/json")
            .form(&form),
        "GitHub token endpoint",
    )
    .await?;
    let token = match (answer.access_token, answer.error) {
        (Some(t), None) if !t.is_empty() => SecretString::from(t),
        (_, Some(error)) => {
            let code: String = error
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                .take(64)
                .collect();
            return Err(UpstreamError::refused(format!(
                "GitHub token endpoint: {code}"
            )));
        }
        _ => return Err(UpstreamError::refused("GitHub token endpoint: no token")),
    };
    let api = api(up)?;
    let get = |path: &str| {
        http.get(format!("{api}{path}"))
            .bearer_auth(token.expose_secret())
            .header(reqwest::header::ACCEPT, "application/vnd.github+json")
            .header("X-GitHub-Api-Version", API_VERSION)
    };
    let user: User = send_json(get("/user"), "GitHub /user").await?;
    if user.id == 0 {
        return Err(UpstreamError::refused("GitHub /user: no id"));
    }
    let emails: Vec<Email> = send_json(get("/user/emails"), "GitHub /user/emails").await?;
    let email = emails
        .into_iter()
        .find(|e| e.primary && e.verified)
        .and_then(|e| super::oidc::usable_email(Some(&e.email)));
    Ok(UpstreamIdentity {
        subject: user.id.to_string(),
        email_verified: email.is_some(),
        email,
        sid: None,
        // GitHub does not say when the person last authenticated.
        auth_time: None,
    })
}
