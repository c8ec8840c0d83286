//! The `LISTEN gatehouse_invalidate` connection (the migration's triggers send on it).
//! One plain connection of its own, outside the pool, that never reconnects behind
//! the caller's back: when it breaks, the caller hears of it and starts a new one, so
//! it always knows whether it may have missed a notification.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};

/// The channel the triggers notify.
pub const CHANNEL: &str = "gatehouse_invalidate";
/// How the listener shows up in `pg_stat_activity`.
pub const APPLICATION_NAME: &str = "gatehouse-listener";

pub struct Listener {
    inner: PgListener,
    // Kept so the connection's pool (of one) lives as long as the listener.
    _pool: sqlx::PgPool,
}

/// What waiting on the connection gave.
pub enum Heard {
    Payload(String),
    /// Nothing arrived within the wait.
    Quiet,
    /// The connection is gone: notifications may have been missed.
    Lost,
}

impl Listener {
    /// Connects and subscribes within `timeout`; fails (rather than retrying) when
    /// the database is away.
    pub async fn connect(url: &str, timeout: Duration) -> Result<Self, sqlx::Error> {
        tokio::time::timeout(timeout, Self::connect_inner(url, timeout))
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)?
    }

    async fn connect_inner(url: &str, timeout: Duration) -> Result<Self, sqlx::Error> {
        let options = PgConnectOptions::from_str(url)?.application_name(APPLICATION_NAME);
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .acquire_timeout(timeout)
            .max_lifetime(None)
            .idle_timeout(None)
            .connect_lazy_with(options);
        let mut inner = PgListener::connect_with(&pool).await?;
        inner.ignore_pool_close_event(true);
        // A lost connection is reported, never silently replaced.
        inner.eager_reconnect(false);
        inner.listen(CHANNEL).await?;
        Ok(Self { inner, _pool: pool })
    }

    /// Waits up to `wait` for a notification.
    pub async fn next(&mut self, wait: Duration) -> Heard {
        match tokio::time::timeout(wait, self.inner.try_recv()).await {
            Err(_) => Heard::Quiet,
            Ok(Ok(Some(n))) => Heard::Payload(n.payload().to_string()),
            Ok(Ok(None)) | Ok(Err(_)) => Heard::Lost,
        }
    }
}
