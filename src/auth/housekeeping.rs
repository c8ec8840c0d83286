//! Housekeeping: every node runs a round every `GATEHOUSE_HOUSEKEEPING_INTERVAL`
//! (one node at a time does the work; the store takes an advisory lock), deleting
//! dead sessions after a grace period, devices gone for a year, spent mail links,
//! idle throttle counters, delivered mail and events past `GATEHOUSE_EVENT_RETENTION`.

use std::sync::Arc;

use crate::error::AppError;
use crate::state::AppState;
use crate::store::{SweepCounts, SweepRules};

/// Dead sessions stay this long (for support questions, and so that the history of
/// places and addresses a user signed in from outlives a single session).
pub const SESSION_GRACE_DAYS: i64 = 30;
/// The device cookie lives a year; a device not seen for longer cannot come back.
pub const DEVICE_IDLE_DAYS: i64 = 400;
/// Spent links, idle counters and finished mail.
pub const SPENT_AFTER_DAYS: i64 = 1;

fn span(d: std::time::Duration) -> time::Duration {
    time::Duration::seconds(i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2))
}

/// One round now. `None` when another node was doing one.
pub async fn sweep(state: &AppState) -> Result<Option<SweepCounts>, AppError> {
    let rules = SweepRules {
        now: state.clock.now(),
        session_grace: time::Duration::days(SESSION_GRACE_DAYS),
        event_retention: span(state.settings.event_retention),
        device_idle: time::Duration::days(DEVICE_IDLE_DAYS),
        spent_after: time::Duration::days(SPENT_AFTER_DAYS),
    };
    let counts = state.store.sweep(&rules).await?;
    if let Some(c) = counts {
        state.metrics.housekeeping_runs.inc();
        for (kind, n) in c.by_kind() {
            state
                .metrics
                .housekeeping_deleted
                .with_label_values(&[kind])
                .inc_by(n);
        }
        if c != SweepCounts::default() {
            tracing::info!(?c, "housekeeping deleted rows");
        }
    }
    Ok(counts)
}

/// Runs rounds until the process ends; a failed round (database away) is logged and
/// the next one tries again.
pub async fn run(state: Arc<AppState>) {
    let every = state.settings.housekeeping_interval;
    loop {
        if let Err(e) = sweep(&state).await {
            tracing::warn!(error = %e, "housekeeping round failed"); // log-ok: no secret
        }
        tokio::time::sleep(every).await;
    }
}
