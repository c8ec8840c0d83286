//! OpenID Connect Back-Channel Logout 1.0: when a session ends, every client with a
//! back-channel URI that holds tokens from it gets a logout token. The rows come from
//! the `sessions_ended` trigger (same transaction as the revocation, whatever the
//! path); this worker, on every node, delivers them: claimed with a lease (no two
//! nodes send one row at the same time), retried with backoff while the receiver is
//! down (a 4xx answer other than 408 and 429 is final, §2.8), the same `jti` on every
//! attempt so a receiver can drop a repeat. Delivery
//! is at least once: a worker that dies (or outlives its lease) after sending but
//! before recording can let another node send the same token again.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::json;
use uuid::Uuid;

use super::keys;
use crate::state::AppState;
use crate::store::{QueuedLogout, StoreError};

/// §2.4: the event that makes a JWT a logout token.
pub const EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";
/// A logout token is good for this long after it is signed (§2.4 recommends at
/// most two minutes).
pub const TOKEN_TTL: i64 = 120;
/// Far longer than one delivery can take (`TIMEOUT`), so a slow receiver never
/// lets a second node claim a row that is still being sent.
pub const LEASE: Duration = Duration::from_secs(60);
/// One delivery, connecting included.
pub const TIMEOUT: Duration = Duration::from_secs(5);
/// Rows claimed at once.
pub const BATCH: i64 = 16;
/// Given up after this many failures (about a day with the backoff below).
pub const MAX_ATTEMPTS: i32 = 30;

/// Wait before attempt `n + 1` after `n` failures: 2^n seconds, capped at an hour.
pub fn backoff(failures: i32) -> Duration {
    Duration::from_secs(1u64 << failures.clamp(0, 12)).min(Duration::from_secs(3600))
}

/// §2.4. No `nonce` (forbidden), `typ` `logout+jwt` in the header.
#[derive(Serialize, serde::Deserialize, Debug)]
pub struct LogoutClaims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub iat: i64,
    pub exp: i64,
    pub jti: Uuid,
    pub sid: String,
    pub events: serde_json::Value,
}

/// The outbound HTTPS client: rustls with the ring provider sqlx and lettre use,
/// the system's trust store, no redirects (a receiver that moves is misconfigured,
/// and following would send the token elsewhere), a hard timeout.
pub fn http_client() -> anyhow::Result<reqwest::Client> {
    use rustls_platform_verifier::BuilderVerifierExt;
    // Also the process default, for any other HTTPS client in the process (an
    // embedding application's, the tests'): one provider, never a second one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_platform_verifier()?
        .with_no_client_auth();
    Ok(reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .redirect(reqwest::redirect::Policy::none())
        // Straight to the receiver: an HTTP(S)_PROXY in the environment is not asked
        // to carry logout tokens.
        .no_proxy()
        .timeout(TIMEOUT)
        .connect_timeout(TIMEOUT)
        .user_agent(concat!("Gatehouse/", env!("CARGO_PKG_VERSION")))
        .build()?)
}

pub struct Worker {
    pub state: Arc<AppState>,
    pub http: reqwest::Client,
}

impl Worker {
    /// Sends what is due now; returns how many rows it handled.
    pub async fn deliver_due(&self) -> Result<usize, StoreError> {
        // Before the claim, so no read of ours eats into a lease.
        keys::refresh_if_stale(&self.state).await;
        let now = self.state.clock.now();
        let batch = self.state.store.claim_logouts(now, LEASE, BATCH).await?;
        let n = batch.len();
        // One receiver that hangs must not hold up the others.
        let sends = batch.into_iter().map(|q| self.deliver(q));
        for result in futures_util::future::join_all(sends).await {
            result?;
        }
        Ok(n)
    }

    fn logout_token(&self, q: &QueuedLogout) -> Option<String> {
        let now = self.state.clock.now().unix_timestamp();
        let claims = LogoutClaims {
            iss: self.state.settings.issuer(),
            sub: q.user_id.to_string(),
            aud: q.client_id.clone(),
            iat: now,
            exp: now + TOKEN_TTL,
            jti: q.id,
            sid: q.session_id.to_string(),
            events: json!({ EVENT: {} }),
        };
        self.state.signing.sign("logout+jwt", &claims).ok()
    }

    async fn deliver(&self, q: QueuedLogout) -> Result<(), StoreError> {
        // `Err((why, final))`: a final refusal is not retried.
        let outcome = match self.logout_token(&q) {
            None => Err(("no signing key on this node yet".to_string(), false)),
            Some(token) => match self
                .http
                .post(&q.uri)
                .form(&[("logout_token", token.as_str())])
                .send()
                .await
            {
                // §2.8: 200 (some receivers answer 204).
                Ok(r) if r.status().is_success() => Ok(()),
                Ok(r) => Err((
                    format!("the receiver answered HTTP {}", r.status().as_u16()),
                    refusal_is_final(r.status().as_u16()),
                )),
                // The error's text names the host, never the token (it is in the body).
                Err(e) => Err((describe(&e), false)),
            },
        };
        let now = self.state.clock.now();
        let metrics = &self.state.metrics.backchannel;
        match outcome {
            Ok(()) => {
                self.state.store.logout_delivered(&q, now).await?;
                metrics.with_label_values(&["delivered"]).inc();
                tracing::info!(client_id = %q.client_id, logout_id = %q.id, "back-channel logout delivered");
            }
            Err((error, true)) => {
                // The receiver read the token and said no (a repeat of a `jti` it has
                // seen, a token it rejects): sending it again changes nothing.
                metrics.with_label_values(&["refused"]).inc();
                tracing::warn!(client_id = %q.client_id, logout_id = %q.id, attempt = q.attempts + 1, error, "back-channel logout refused by the receiver; not retried");
                self.state
                    .store
                    .logout_failed(&q, now, &error, None)
                    .await?;
            }
            Err((error, false)) => {
                let failures = q.attempts + 1;
                let retry_at = (failures < MAX_ATTEMPTS).then(|| {
                    now + time::Duration::try_from(backoff(failures))
                        .unwrap_or(time::Duration::HOUR)
                });
                if retry_at.is_some() {
                    metrics.with_label_values(&["failed"]).inc();
                    tracing::warn!(client_id = %q.client_id, logout_id = %q.id, attempt = failures, error, "back-channel logout failed; will retry");
                } else {
                    metrics.with_label_values(&["given_up"]).inc();
                    tracing::error!(client_id = %q.client_id, logout_id = %q.id, attempt = failures, error, "back-channel logout given up");
                }
                self.state
                    .store
                    .logout_failed(&q, now, &error, retry_at)
                    .await?;
            }
        }
        Ok(())
    }

    /// Runs until the process ends: drains what is due, then waits for `poll` or for
    /// the invalidation listener to say a session ended.
    pub async fn run(self, poll: Duration) {
        loop {
            match self.deliver_due().await {
                Ok(n) if n as i64 == BATCH => continue,
                Ok(_) => {}
                Err(StoreError::Unavailable(e)) => {
                    tracing::warn!(error = %e, "back-channel worker: database unavailable")
                }
                Err(e) => tracing::error!(error = ?e, "back-channel worker failed"),
            }
            tokio::select! {
                _ = tokio::time::sleep(poll) => {}
                _ = self.state.session_ended.notified() => {}
            }
        }
    }
}

/// Back-Channel Logout 1.0 §2.8: a 4xx other than 408 (timeout) and 429 (too many
/// requests) means the receiver got the token and will not take it; only those two,
/// 5xx and no answer at all are worth another attempt. (Apache's `mod_auth_openidc`
/// answers 400 to a second delivery of the same `jti`.) Anything else that is not
/// 2xx (a redirect, which is never followed) is retried like a failure.
pub fn refusal_is_final(status: u16) -> bool {
    (400..500).contains(&status) && status != 408 && status != 429
}

/// What went wrong, without the URL's query (it may carry a receiver's secret).
fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else if e.is_request() {
        "request failed"
    } else {
        "failed"
    };
    let host = e
        .url()
        .and_then(|u| u.host_str().map(str::to_string))
        .unwrap_or_default();
    format!("{kind} ({host})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_secs(2));
        assert_eq!(backoff(3), Duration::from_secs(8));
        assert_eq!(backoff(40), Duration::from_secs(3600));
    }

    #[test]
    fn a_4xx_is_final_except_timeout_and_too_many_requests() {
        for final_ in [400, 401, 403, 404, 410, 422] {
            assert!(refusal_is_final(final_), "{final_}");
        }
        for retried in [408, 429, 500, 502, 503, 504, 301, 302] {
            assert!(!refusal_is_final(retried), "{retried}");
        }
    }

    #[test]
    fn the_client_builds_with_the_one_tls_provider() {
        assert!(http_client().is_ok());
    }
}
