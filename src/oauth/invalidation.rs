//! Keeps this node's caches (`liveness::LiveCache`, the signing keys) in step with
//! PostgreSQL: listens on `gatehouse_invalidate`, applies each notification, proves
//! the connection every `PING_EVERY`, and tells the cache the moment it cannot.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::keys;
use crate::liveness::{Invalidation, PING_EVERY};
use crate::state::AppState;
use crate::store::notify::{Heard, Listener};

/// A proof that takes longer than this counts as a lost connection.
const PING_TIMEOUT: Duration = Duration::from_millis(500);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Runs until the process ends.
pub async fn run(state: Arc<AppState>) {
    let mut retry = Duration::from_millis(100);
    let mut failures: u32 = 0;
    loop {
        match Listener::connect(state.settings.listen_database_url(), CONNECT_TIMEOUT).await {
            Ok(mut listener) => {
                let started = Instant::now();
                if listener.ping(PING_TIMEOUT).await {
                    while let Some(p) = listener.buffered() {
                        apply(&state, &p);
                    }
                    state.live.listening_from(started);
                    state.metrics.listener_up.set(1);
                    if failures > 0 {
                        tracing::info!("invalidation listener connected again");
                    }
                    failures = 0;
                    retry = Duration::from_millis(100);
                    // Keys may have changed while nobody listened.
                    reload_keys(&state);
                    serve(&state, &mut listener).await;
                    tracing::warn!(
                        "invalidation listener lost its connection; caches bypassed until it is back"
                    );
                }
            }
            Err(e) => {
                // Once per outage at warn, then quietly (the pool's own errors say more).
                if failures == 0 {
                    tracing::warn!(error = %e, "invalidation listener cannot connect; caches bypassed");
                } else {
                    tracing::debug!(error = %e, "invalidation listener still cannot connect");
                }
            }
        }
        state.live.deaf();
        state.metrics.listener_up.set(0);
        failures = failures.saturating_add(1);
        tokio::time::sleep(retry).await;
        retry = (retry * 2).min(RETRY_MAX);
    }
}

/// Applies notifications and proves the connection until it fails.
async fn serve(state: &Arc<AppState>, listener: &mut Listener) {
    let mut next_ping = Instant::now() + PING_EVERY;
    loop {
        let wait = next_ping.saturating_duration_since(Instant::now());
        match listener.next(wait).await {
            Heard::Payload(p) => apply(state, &p),
            Heard::Lost => return,
            Heard::Quiet => {}
        }
        if Instant::now() >= next_ping {
            let started = Instant::now();
            if !listener.ping(PING_TIMEOUT).await {
                return;
            }
            while let Some(p) = listener.buffered() {
                apply(state, &p);
            }
            state.live.confirm(started);
            next_ping = started + PING_EVERY;
        }
    }
}

fn apply(state: &Arc<AppState>, payload: &str) {
    let change = Invalidation::parse(payload);
    state.live.invalidate(&change);
    state.metrics.invalidations.inc();
    if matches!(change, Invalidation::Session(_)) {
        state.session_ended.notify_one();
    }
    if matches!(change, Invalidation::Keys | Invalidation::Unknown) {
        reload_keys(state);
    }
}

/// In the background: the listener must not wait on a read of its own.
fn reload_keys(state: &Arc<AppState>) {
    let state = state.clone();
    tokio::spawn(async move {
        if let Err(e) = keys::load(&state).await {
            tracing::warn!(
                error = format!("{e:#}"),
                "reloading signing keys after a change failed"
            );
        }
    });
}
