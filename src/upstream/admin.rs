//! `gatehouse upstream add|list|delete`: the operator's side of upstreams. Input is
//! checked whole before anything is written; the client secret is sealed at once and
//! never printed.

use anyhow::{Context, anyhow, bail};
use secrecy::{ExposeSecret, SecretString};

use super::discovery::is_multi_tenant;
use super::{Upstream, UpstreamKind, seal_client_secret};
use crate::auth::events::admin_event;
use crate::settings::is_loopback_host;
use crate::state::AppState;
use crate::store::{NewUpstream, StoreError};

/// What `upstream add` was given.
pub struct AddUpstream {
    pub name: String,
    /// `oidc`, `github`, or a preset: `google`, `microsoft`, `gitlab`.
    pub kind: String,
    pub issuer: Option<String>,
    pub client_id: String,
    pub client_secret: SecretString,
    pub scopes: Option<String>,
    pub trust_email: bool,
    pub label: Option<String>,
    pub base_url: Option<String>,
    pub api_url: Option<String>,
}

/// What `upstream add` made, with the URIs to register at the upstream.
pub struct Added {
    pub upstream: Upstream,
    pub redirect_uri: String,
    pub backchannel_logout_uri: String,
}

/// Preset: (kind, issuer).
fn preset(kind: &str) -> Option<(UpstreamKind, Option<&'static str>)> {
    match kind {
        "oidc" => Some((UpstreamKind::Oidc, None)),
        // Google's issuer, as its discovery document names it.
        "google" => Some((UpstreamKind::Oidc, Some("https://accounts.google.com"))),
        // Entra ID for any organisation's and personal accounts; its discovery names a
        // `{tenantid}` template issuer, which tokens fill in with their `tid`. Give
        // `--issuer https://login.microsoftonline.com/TENANT-ID/v2.0` to admit one
        // organisation only.
        "microsoft" => Some((
            UpstreamKind::Oidc,
            Some("https://login.microsoftonline.com/common/v2.0"),
        )),
        "gitlab" => Some((UpstreamKind::Oidc, Some("https://gitlab.com"))),
        "github" => Some((UpstreamKind::Github, None)),
        _ => None,
    }
}

const GITHUB_BASE: &str = "https://github.com";
const GITHUB_API: &str = "https://api.github.com";

/// The redirect URI to register at the upstream.
pub fn redirect_uri(state: &AppState, name: &str) -> String {
    format!("{}/login/upstream/{name}/callback", state.settings.issuer())
}

/// The back-channel logout URI to register at the upstream.
pub fn backchannel_logout_uri(state: &AppState, name: &str) -> String {
    format!(
        "{}/login/upstream/{name}/backchannel-logout",
        state.settings.issuer()
    )
}

/// `[a-z0-9][a-z0-9_-]{0,39}`: it becomes part of URLs registered elsewhere.
fn check_name(name: &str) -> anyhow::Result<()> {
    let ok = (1..=40).contains(&name.len())
        && name.bytes().enumerate().all(|(i, b)| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || (i > 0 && (b == b'_' || b == b'-'))
        });
    if !ok {
        bail!(
            "--name: {name:?} must be 1 to 40 characters of a-z, 0-9, '-' and '_', starting with a letter or digit"
        );
    }
    Ok(())
}

/// An issuer or base URL: `https://`, or `http://` on a loopback host in dev mode;
/// no query, fragment or user info (OIDC Discovery §2 for issuers).
pub fn check_url(flag: &str, text: &str, dev: bool) -> anyhow::Result<String> {
    let url = url::Url::parse(text).map_err(|_| anyhow!("{flag}: {text:?} is not a URL"))?;
    // `https://:secret@idp.example` has an empty user name but a password.
    if url.query().is_some()
        || url.fragment().is_some()
        || !url.username().is_empty()
        || url.password().is_some()
    {
        bail!("{flag}: must not have a query, fragment or user info");
    }
    let host = url
        .host()
        .ok_or_else(|| anyhow!("{flag}: {text:?} has no host"))?;
    match url.scheme() {
        "https" => {}
        "http" if dev && is_loopback_host(&host) => {}
        "http" if dev => bail!(
            "{flag}: plain http:// is allowed only on a loopback host (localhost, 127.0.0.1, [::1]) in dev mode"
        ),
        "http" => bail!(
            "{flag}: must be https:// (plain http:// only on a loopback host with GATEHOUSE_DEV=true)"
        ),
        _ => bail!("{flag}: must be an https:// URL"),
    }
    // As given (an issuer is compared exactly), less surrounding whitespace.
    Ok(text.trim().to_string())
}

/// `--trust-email` links at once on the upstream's word that an address is verified.
/// A multi-tenant issuer (Entra's `common`, `organizations`, `consumers`) speaks for
/// every tenant, and any tenant's administrator can give a user any address, marked
/// verified (the "nOAuth" takeovers): that word is worth nothing, so it is refused.
fn check_trust_email(issuer: Option<&str>, trust_email: bool) -> anyhow::Result<()> {
    if trust_email && issuer.is_some_and(is_multi_tenant) {
        bail!(
            "--trust-email: refused for a multi-tenant issuer (any tenant's administrator can set any address); give --issuer https://login.microsoftonline.com/TENANT-ID/v2.0 for one organisation"
        );
    }
    Ok(())
}

/// RFC 6749 §3.3 scope tokens, separated by single spaces.
fn check_scopes(text: &str, kind: UpstreamKind) -> anyhow::Result<String> {
    let tokens: Vec<&str> = text.split_whitespace().collect();
    if tokens.is_empty() {
        bail!("--scopes: give at least one scope");
    }
    let bad = tokens.iter().find(|t| {
        !t.bytes()
            .all(|b| b == 0x21 || (0x23..=0x5B).contains(&b) || (0x5D..=0x7E).contains(&b))
    });
    if let Some(bad) = bad {
        bail!("--scopes: {bad:?} is not a valid scope");
    }
    if kind == UpstreamKind::Oidc && !tokens.contains(&"openid") {
        bail!("--scopes: an OpenID Connect upstream needs the scope \"openid\"");
    }
    Ok(tokens.join(" "))
}

fn printable(flag: &str, text: &str, max: usize) -> anyhow::Result<String> {
    let text = text.trim();
    if text.is_empty() || text.chars().count() > max {
        bail!("{flag}: must be 1 to {max} characters");
    }
    if text.chars().any(char::is_control) {
        bail!("{flag}: must not contain control characters");
    }
    Ok(text.to_string())
}

/// Checks `a` whole, then adds the upstream. Nothing is written on any error.
pub async fn add(state: &AppState, a: AddUpstream) -> anyhow::Result<Added> {
    let dev = state.settings.dev;
    check_name(&a.name)?;
    let (kind, preset_issuer) = preset(&a.kind).ok_or_else(|| {
        anyhow!(
            "--kind: {:?} is not one of oidc, google, microsoft, gitlab, github",
            a.kind
        )
    })?;
    let preset_name =
        matches!(a.kind.as_str(), "google" | "microsoft" | "gitlab").then(|| a.kind.clone());
    let (issuer, base_url, api_url) = match kind {
        UpstreamKind::Oidc => {
            if a.base_url.is_some() || a.api_url.is_some() {
                bail!("--base-url and --api-url are for --kind github only");
            }
            let issuer = a
                .issuer
                .as_deref()
                .or(preset_issuer)
                .ok_or_else(|| anyhow!("--issuer: required for --kind oidc"))?;
            (Some(check_url("--issuer", issuer, dev)?), None, None)
        }
        UpstreamKind::Github => {
            if a.issuer.is_some() {
                bail!("--issuer is not for --kind github (use --base-url and --api-url)");
            }
            let base = check_url(
                "--base-url",
                a.base_url.as_deref().unwrap_or(GITHUB_BASE),
                dev,
            )?;
            // GitHub Enterprise Server serves its API under BASE/api/v3.
            let default_api = if base.trim_end_matches('/') == GITHUB_BASE {
                GITHUB_API.to_string()
            } else {
                format!("{}/api/v3", base.trim_end_matches('/'))
            };
            let api = check_url(
                "--api-url",
                a.api_url.as_deref().unwrap_or(&default_api),
                dev,
            )?;
            (None, Some(base), Some(api))
        }
    };
    check_trust_email(issuer.as_deref(), a.trust_email)?;
    let client_id = printable("--client-id", &a.client_id, 512)?;
    if client_id.contains(char::is_whitespace) {
        bail!("--client-id: must not contain spaces");
    }
    let secret = a.client_secret.expose_secret();
    if secret.is_empty() {
        bail!("the client secret (read from standard input) is empty");
    }
    if secret.len() > 1024 || secret.chars().any(char::is_control) {
        bail!(
            "the client secret (read from standard input) must be one line of at most 1024 bytes"
        );
    }
    let default_scopes = match kind {
        UpstreamKind::Oidc => "openid email profile",
        UpstreamKind::Github => "read:user user:email",
    };
    let scopes = check_scopes(a.scopes.as_deref().unwrap_or(default_scopes), kind)?;
    // What pages show; DESIGN.md: the name unless --label says otherwise.
    let label = match &a.label {
        Some(l) => printable("--label", l, 100)?,
        None => a.name.clone(),
    };
    let sealed =
        seal_client_secret(&state.keys, &a.client_secret).context("sealing the client secret")?;
    let new = NewUpstream {
        name: a.name.clone(),
        kind,
        preset: preset_name,
        label,
        trust_email: a.trust_email,
        issuer,
        base_url,
        api_url,
        client_id,
        client_secret_enc: sealed,
        scopes,
        now: state.clock.now(),
    };
    let upstream = match state.store.add_upstream(&new).await {
        Ok(u) => u,
        Err(StoreError::Conflict) => bail!("an upstream named {:?} exists already", a.name),
        Err(e) => return Err(anyhow::Error::new(e).context("adding the upstream")),
    };
    // No account is changed by an addition, so there is no one's activity to record
    // it on; the operator's log has it.
    tracing::info!(
        actor = "admin",
        upstream = %upstream.name,
        kind = upstream.kind.as_str(),
        trust_email = upstream.trust_email,
        "upstream added"
    );
    Ok(Added {
        redirect_uri: redirect_uri(state, &upstream.name),
        backchannel_logout_uri: backchannel_logout_uri(state, &upstream.name),
        upstream,
    })
}

/// Every upstream, as `upstream list` prints it (one JSON object a line): never the
/// client secret.
pub async fn list(state: &AppState) -> anyhow::Result<Vec<serde_json::Value>> {
    let all = state.store.upstreams().await.context("reading upstreams")?;
    Ok(all
        .iter()
        .map(|u| {
            serde_json::json!({
                "name": u.name,
                "kind": u.kind.as_str(),
                "preset": u.preset,
                "label": u.label,
                "issuer": u.issuer,
                "base_url": u.base_url,
                "api_url": u.api_url,
                "client_id": u.client_id,
                "scopes": u.scopes,
                "trust_email": u.trust_email,
                "created_at": u.created_at
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default(),
                "redirect_uri": redirect_uri(state, &u.name),
                "backchannel_logout_uri": backchannel_logout_uri(state, &u.name),
            })
        })
        .collect())
}

/// Deletes an upstream; its links go with it, and each person who had one gets an
/// `upstream_unlinked` event by actor `admin` naming it. Error when there is none of
/// that name.
pub async fn delete(state: &AppState, name: &str) -> anyhow::Result<()> {
    let Some((up, _)) = state
        .store
        .upstream_by_name(name)
        .await
        .context("reading the upstream")?
    else {
        bail!("no upstream is named {name:?}");
    };
    let event = admin_event(state, "upstream_unlinked", Some(&up.label))
        .map_err(|e| anyhow!("recording the event: {e}"))?;
    if !state
        .store
        .delete_upstream(name, &event)
        .await
        .context("deleting the upstream")?
    {
        bail!("no upstream is named {name:?}");
    }
    tracing::info!(actor = "admin", upstream = %name, "upstream deleted");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_what_urls_can_carry() {
        for good in ["google", "a", "corp-sso", "x_1", "0abc"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", "Google", "-a", "_a", "a b", "a/b", "é", &"a".repeat(41)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn issuers_are_https_or_loopback_http_in_dev_mode() {
        assert!(check_url("--issuer", "https://idp.example", false).is_ok());
        assert!(check_url("--issuer", "http://127.0.0.1:8080", true).is_ok());
        assert!(check_url("--issuer", "http://localhost:8080", true).is_ok());
        assert!(check_url("--issuer", "http://127.0.0.1:8080", false).is_err());
        assert!(check_url("--issuer", "http://idp.example", true).is_err());
        assert!(check_url("--issuer", "https://idp.example/?a=b", false).is_err());
        assert!(check_url("--issuer", "https://u:p@idp.example", false).is_err());
        assert!(check_url("--issuer", "https://:p@idp.example", false).is_err());
        assert!(check_url("--issuer", "ftp://idp.example", false).is_err());
        assert!(check_url("--issuer", "idp.example", false).is_err());
    }

    #[test]
    fn trust_email_is_refused_for_a_multi_tenant_issuer() {
        // U1: on a multi-tenant issuer every tenant vouches for addresses.
        for multi in ["common", "organizations", "consumers"] {
            let issuer = format!("https://login.microsoftonline.com/{multi}/v2.0");
            assert!(check_trust_email(Some(&issuer), true).is_err(), "{multi}");
            assert!(check_trust_email(Some(&issuer), false).is_ok(), "{multi}");
        }
        let one = "https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/v2.0";
        assert!(check_trust_email(Some(one), true).is_ok());
        assert!(check_trust_email(Some("https://accounts.google.com"), true).is_ok());
        assert!(check_trust_email(None, true).is_ok());
    }

    #[test]
    fn scopes_are_scope_tokens_and_oidc_needs_openid() {
        assert_eq!(
            check_scopes(" openid  email ", UpstreamKind::Oidc).unwrap(),
            "openid email"
        );
        assert!(check_scopes("email", UpstreamKind::Oidc).is_err());
        assert!(check_scopes("read:user user:email", UpstreamKind::Github).is_ok());
        assert!(check_scopes("a\"b", UpstreamKind::Github).is_err());
        assert!(check_scopes("", UpstreamKind::Github).is_err());
    }
}
