//! The PostgreSQL side shared by every capability: the pool, migrations, the mapping
//! of driver errors, and the health checks.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use sqlx::PgPool;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use time::OffsetDateTime;

use super::StoreError;
use crate::crypto::Keys;

/// The schema, embedded in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// A lazily connecting pool: the process starts (and keeps running) while the
/// database is away, and requests answer 503 until it is back.
pub fn connect_pool(url: &str, acquire_timeout: Duration) -> Result<PgPool, sqlx::Error> {
    let options = PgConnectOptions::from_str(url)?.application_name("gatehouse");
    Ok(PgPoolOptions::new()
        .max_connections(16)
        .min_connections(0)
        .acquire_timeout(acquire_timeout)
        // A connection that sat idle may have died with a database restart: ping it
        // before use, so it is replaced rather than failing a request. A connection
        // used within the last second is trusted, which keeps the hot path at one
        // round trip per query instead of two.
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for > Duration::from_secs(1) {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
        .idle_timeout(Some(Duration::from_secs(300)))
        .connect_lazy_with(options))
}

pub async fn run_migrations(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

/// Applies pending migrations, waiting for the database while it is unreachable (a
/// container start order is not our problem to fail on); any other error is fatal.
pub async fn migrate_when_reachable(pool: &PgPool) -> anyhow::Result<()> {
    let mut wait = Duration::from_millis(500);
    loop {
        match run_migrations(pool).await {
            Ok(()) => return Ok(()),
            Err(sqlx::migrate::MigrateError::Execute(e))
            | Err(sqlx::migrate::MigrateError::ExecuteMigration(e, _))
                if is_unavailable(&e) =>
            {
                tracing::warn!(
                    retry_in_ms = wait.as_millis() as u64,
                    "database unreachable; waiting to apply migrations"
                );
            }
            Err(e) => return Err(anyhow::Error::new(e)).context("applying migrations"),
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(10));
    }
}

/// Whether an error means "the database cannot be reached right now" (as opposed to a
/// bug or a rule violation): pool timeouts, broken connections, and server states of
/// SQLSTATE class 08 (connection exception), 57P (shutting down) and 53 (resources).
pub fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.to_string()).unwrap_or_default();
            // 08: connection; 57P: shutdown; 57014: statement timeout; 53: resources.
            code.starts_with("08")
                || code.starts_with("57P")
                || code == "57014"
                || code.starts_with("53")
        }
        _ => false,
    }
}

/// Whether a transaction lost a race PostgreSQL resolved by aborting it: a deadlock
/// (40P01) or a serialization failure (40001). Running it again is safe: nothing of
/// it was committed.
pub(super) fn is_lost_race(e: &StoreError) -> bool {
    match e {
        StoreError::Other(sqlx::Error::Database(db)) => {
            matches!(db.code().as_deref(), Some("40P01") | Some("40001"))
        }
        _ => false,
    }
}

/// Runs one unit of work (a whole transaction, begun inside `work`) and, if
/// PostgreSQL aborted it as a deadlock victim or a serialization failure, runs it
/// once more. The store's lock order (see the module documentation) makes this
/// rare; the retry keeps the rare case from reaching anyone as a 500.
pub(super) async fn retry_once<T, F, W>(mut work: W) -> Result<T, StoreError>
where
    W: FnMut() -> F,
    F: std::future::Future<Output = Result<T, StoreError>>,
{
    match work().await {
        Err(e) if is_lost_race(&e) => {
            tracing::warn!(error = %e, "transaction lost a lock race; running it again");
            work().await
        }
        done => done,
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        if is_unavailable(&e) {
            StoreError::Unavailable(e)
        } else if matches!(&e, sqlx::Error::Database(db) if db.is_unique_violation()) {
            StoreError::Conflict
        } else {
            StoreError::Other(e)
        }
    }
}

/// `Store` over a PostgreSQL pool.
#[derive(Clone)]
pub struct PgStore {
    pub(super) pool: PgPool,
    /// Seals mail bodies in the outbox: they carry single-use links, which must not
    /// sit in the clear at rest (DESIGN.md principle 2).
    pub(super) keys: Arc<Keys>,
    /// Called after a transaction that revoked something commits, so this node's
    /// own caches forget at once, before the answer goes out (other nodes hear of it
    /// through the triggers' notification, this one too, a moment later).
    on_revoke: Option<Arc<dyn Fn(Revoked) + Send + Sync>>,
    /// Live sessions one person may hold; 0: no cap (`GATEHOUSE_MAX_SESSIONS_PER_USER`).
    pub(super) max_sessions_per_user: u32,
}

/// What a revocation through this node touched, as its own caches need to know.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Revoked {
    /// Sessions, users, clients or keys: forget every answer.
    Everything,
    /// One access token (its `jti`).
    Token(uuid::Uuid),
    /// One grant and every token under it.
    Grant(uuid::Uuid),
}

impl PgStore {
    pub fn new(pool: PgPool, keys: Arc<Keys>) -> Self {
        Self {
            pool,
            keys,
            on_revoke: None,
            max_sessions_per_user: 0,
        }
    }

    /// Caps the live sessions of one person: a sign-in past `cap` ends the least
    /// recently active ones (0: no cap).
    pub fn with_session_cap(mut self, cap: u32) -> Self {
        self.max_sessions_per_user = cap;
        self
    }

    pub fn with_revocation_hook(mut self, hook: Arc<dyn Fn(Revoked) + Send + Sync>) -> Self {
        self.on_revoke = Some(hook);
        self
    }

    pub(super) fn revoked_here(&self) {
        self.revoked_only(Revoked::Everything);
    }

    /// A revocation that touched only `what`: the caches forget just that, so that
    /// a request that revokes little (or nothing) cannot empty them.
    pub(super) fn revoked_only(&self, what: Revoked) {
        if let Some(hook) = &self.on_revoke {
            hook(what);
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// Readiness checks.
#[async_trait]
pub trait HealthStore: Send + Sync {
    /// Cheap round trip, for `/readyz`.
    async fn ping(&self) -> Result<(), StoreError>;
    /// Whether every migration this binary carries has been applied.
    async fn migrations_current(&self) -> Result<bool, StoreError>;
    /// Sends `payload` on the invalidation channel through the pool (the path every
    /// write takes), for the listener to prove it hears this database.
    async fn notify_echo(&self, payload: &str) -> Result<(), StoreError>;
}

#[async_trait]
impl HealthStore for PgStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn notify_echo(&self, payload: &str) -> Result<(), StoreError> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(super::notify::CHANNEL)
            .bind(payload)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn migrations_current(&self) -> Result<bool, StoreError> {
        let applied: Vec<i64> =
            sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                .fetch_all(&self.pool)
                .await
                .or_else(|e| match &e {
                    // No migrations table yet: nothing applied.
                    sqlx::Error::Database(db) if db.code().as_deref() == Some("42P01") => {
                        Ok(Vec::new())
                    }
                    _ => Err(e),
                })?;
        Ok(MIGRATOR.iter().all(|m| applied.contains(&m.version)))
    }
}

/// Dev mode: the stored secret key, or `candidate` stored as the key if none exists.
pub async fn dev_secret_key(pool: &PgPool, candidate: [u8; 32]) -> Result<[u8; 32], StoreError> {
    sqlx::query(
        "INSERT INTO dev_secret_key (key, created_at) VALUES ($1, now())
         ON CONFLICT (singleton) DO NOTHING",
    )
    .bind(candidate.as_slice())
    .execute(pool)
    .await?;
    let key: Vec<u8> = sqlx::query_scalar("SELECT key FROM dev_secret_key")
        .fetch_one(pool)
        .await?;
    key.try_into().map_err(|_| {
        StoreError::Other(sqlx::Error::Protocol(
            "stored dev key is not 32 bytes".into(),
        ))
    })
}

/// Whole seconds from `now` until `then`, at least 1 (a `Retry-After` value).
pub(super) fn seconds_until(now: OffsetDateTime, then: OffsetDateTime) -> u64 {
    let secs = (then - now).as_seconds_f64().ceil();
    if secs < 1.0 { 1 } else { secs as u64 }
}
