//! The HTTP client for upstreams and the reading of their answers: bounded in size,
//! JSON only, a 5xx or a network failure told apart from an answer that is wrong.

use std::sync::Arc;

use serde::de::DeserializeOwned;

use super::{CONNECT_TIMEOUT, TIMEOUT, UpstreamError};

/// No upstream document, key set or token answer is anywhere near this large.
const MAX_BODY: usize = 512 * 1024;

pub(super) fn client() -> anyhow::Result<reqwest::Client> {
    use rustls_platform_verifier::BuilderVerifierExt;
    // One TLS provider in the process (ring), as for every other client.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_platform_verifier()?
        .with_no_client_auth();
    Ok(reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(TIMEOUT)
        .connect_timeout(CONNECT_TIMEOUT)
        .user_agent(concat!("Gatehouse/", env!("CARGO_PKG_VERSION")))
        .build()?)
}

/// A request that did not get an answer: the network, TLS or a timeout.
pub(super) fn unreachable(what: &str, e: &reqwest::Error) -> UpstreamError {
    // Only the kind of failure: the error's own text names the URL, whose query may
    // carry a code or a state.
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "failed"
    };
    UpstreamError::Unreachable(format!("{what}: {kind}"))
}

/// Sends `rb` and reads a JSON answer of type `T`. A 5xx is `Unreachable`; any other
/// non-2xx is `Refused`, naming the OAuth `error` code when the body has one (never
/// its description, which may echo what was sent).
pub(super) async fn send_json<T: DeserializeOwned>(
    rb: reqwest::RequestBuilder,
    what: &str,
) -> Result<T, UpstreamError> {
    let resp = rb.send().await.map_err(|e| unreachable(what, &e))?;
    let status = resp.status();
    let body = read_limited(resp, what).await?;
    if status.is_server_error() {
        return Err(UpstreamError::Unreachable(format!("{what}: HTTP {status}")));
    }
    if !status.is_success() {
        return Err(UpstreamError::Refused(format!(
            "{what}: HTTP {status}{}",
            oauth_error_code(&body)
                .map(|c| format!(" ({c})"))
                .unwrap_or_default()
        )));
    }
    serde_json::from_slice(&body)
        .map_err(|e| UpstreamError::Refused(format!("{what}: not the expected JSON ({e})")))
}

async fn read_limited(mut resp: reqwest::Response, what: &str) -> Result<Vec<u8>, UpstreamError> {
    if resp.content_length().is_some_and(|n| n > MAX_BODY as u64) {
        return Err(UpstreamError::Refused(format!("{what}: answer too large")));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| unreachable(what, &e))? {
        if body.len() + chunk.len() > MAX_BODY {
            return Err(UpstreamError::Refused(format!("{what}: answer too large")));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The RFC 6749 §5.2 `error` code of an error answer, if it looks like one.
pub(super) fn oauth_error_code(body: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let code = v.get("error")?.as_str()?;
    // §5.2: the code is %x20-21 / %x23-5B / %x5D-7E; anything else is not one.
    let ok = code.len() <= 64
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
    ok.then(|| code.to_string())
}
