//! Keeps this node's caches (`liveness::LiveCache`, the signing keys) in step with
//! PostgreSQL: listens on `gatehouse_invalidate`, applies each notification, and
//! proves end to end, every `PING_EVERY`, that it hears what is written: it sends an
//! echo through the pool (the path every revocation takes) and trusts the cache again
//! only when that echo comes back on the listening connection. PostgreSQL delivers a
//! channel's notifications in commit order, so the echo's arrival means every
//! notification committed before it was sent has been applied. A listener that
//! listens on another database (a typo, an old primary), through a proxy that cannot
//! carry `LISTEN`, or on a connection that stalled, never gets its echo back, and the
//! cache stops answering within the trust window.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::keys;
use crate::liveness::{Invalidation, PING_EVERY};
use crate::state::AppState;
use crate::store::notify::{Heard, Listener};

/// An echo that takes longer than this counts as a lost connection.
const ECHO_TIMEOUT: Duration = Duration::from_millis(500);
/// How long connecting and subscribing may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// More notifications than this waiting at once (a mass revocation) empty the cache
/// once instead of being applied one by one.
const BURST: usize = 64;

/// Runs until the process ends.
pub async fn run(state: Arc<AppState>) {
    let node: u64 = u64::from_le_bytes(crate::crypto::random_bytes::<8>());
    let mut seq: u64 = 0;
    let mut retry = Duration::from_millis(100);
    let mut failures: u32 = 0;
    loop {
        match Listener::connect(state.settings.listen_database_url(), CONNECT_TIMEOUT).await {
            Ok(mut listener) => {
                seq += 1;
                if let Some(started) = echo(&state, &mut listener, node, seq).await {
                    state.live.listening_from(started);
                    state.metrics.listener_up.set(1);
                    if failures > 0 {
                        tracing::info!("invalidation listener connected again");
                    }
                    failures = 0;
                    retry = Duration::from_millis(100);
                    // Keys may have changed while nobody listened.
                    reload_keys(&state);
                    serve(&state, &mut listener, node, &mut seq).await;
                    tracing::warn!(
                        "invalidation listener lost its connection (or its echo); caches bypassed until it is back"
                    );
                } else if failures == 0 {
                    tracing::warn!(
                        "invalidation listener connected but does not hear this database's notifications \
                         (GATEHOUSE_LISTEN_DATABASE_URL must reach the same database, without a \
                         transaction-pooling proxy); caches bypassed"
                    );
                }
            }
            Err(e) => {
                // Once per outage at warn, then quietly.
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

/// Sends an echo through the pool and waits for it on `listener`, applying whatever
/// arrives before it. Returns when the echo was sent, or `None` if it did not come
/// back within `ECHO_TIMEOUT` (or the connection broke).
async fn echo(
    state: &Arc<AppState>,
    listener: &mut Listener,
    node: u64,
    seq: u64,
) -> Option<Instant> {
    let started = Instant::now();
    let deadline = started + ECHO_TIMEOUT;
    let payload = format!("echo:{node:016x}:{seq}");
    match tokio::time::timeout(ECHO_TIMEOUT, state.store.notify_echo(&payload)).await {
        Ok(Ok(())) => {}
        _ => return None,
    }
    loop {
        let wait = deadline.saturating_duration_since(Instant::now());
        if wait.is_zero() {
            return None;
        }
        match listener.next(wait).await {
            Heard::Payload(p) => {
                let burst = apply_burst(state, listener, p, Some(&payload)).await;
                if burst.lost {
                    return None;
                }
                if burst.echoed {
                    return Some(started);
                }
            }
            Heard::Quiet => {}
            Heard::Lost => return None,
        }
    }
}

/// Applies notifications and proves the connection until either fails.
async fn serve(state: &Arc<AppState>, listener: &mut Listener, node: u64, seq: &mut u64) {
    let mut next_echo = Instant::now() + PING_EVERY;
    loop {
        let wait = next_echo.saturating_duration_since(Instant::now());
        match listener.next(wait).await {
            Heard::Payload(p) => {
                if apply_burst(state, listener, p, None).await.lost {
                    return;
                }
            }
            Heard::Lost => return,
            Heard::Quiet => {}
        }
        if Instant::now() >= next_echo {
            *seq += 1;
            let Some(started) = echo(state, listener, node, *seq).await else {
                return;
            };
            state.live.confirm(started);
            next_echo = started + PING_EVERY;
        }
    }
}

struct Burst {
    /// The awaited echo was among the notifications.
    echoed: bool,
    /// The connection broke after them: the caller must give it up (a later wait on
    /// it would reconnect behind our back).
    lost: bool,
}

/// Applies `first` and whatever else is already waiting on the connection; a burst
/// beyond `BURST` empties the cache once.
async fn apply_burst(
    state: &Arc<AppState>,
    listener: &mut Listener,
    first: String,
    awaited: Option<&str>,
) -> Burst {
    let mut batch = vec![first];
    let mut lost = false;
    while batch.len() <= BURST {
        match listener.next(Duration::ZERO).await {
            Heard::Payload(p) => batch.push(p),
            Heard::Quiet => break,
            Heard::Lost => {
                lost = true;
                break;
            }
        }
    }
    let echoed = awaited.is_some_and(|a| batch.iter().any(|p| p == a));
    let changes: Vec<Invalidation> = batch.iter().map(|p| Invalidation::parse(p)).collect();
    let relevant = changes.iter().filter(|c| **c != Invalidation::Echo).count();
    state.metrics.invalidations.inc_by(relevant as u64);
    if relevant > BURST {
        state.live.forget_all();
    } else {
        for change in changes.iter().filter(|c| **c != Invalidation::Echo) {
            state.live.invalidate(change);
        }
    }
    if changes
        .iter()
        .any(|c| matches!(c, Invalidation::Session(_)))
    {
        state.session_ended.notify_one();
    }
    if changes
        .iter()
        .any(|c| matches!(c, Invalidation::Keys | Invalidation::Unknown))
    {
        reload_keys(state);
    }
    Burst { echoed, lost }
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
