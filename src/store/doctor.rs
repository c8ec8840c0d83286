//! What `gatehouse doctor` reads from the database: plain reads on a pool of its own,
//! since the doctor runs before (or without) a server and its keys.

use sqlx::PgPool;
use time::OffsetDateTime;

use super::StoreError;
use super::pg::MIGRATOR;

/// How many migrations this binary carries that the database has not applied.
pub async fn pending_migrations(pool: &PgPool) -> Result<usize, StoreError> {
    let applied: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
            .fetch_all(pool)
            .await
            .or_else(|e| match &e {
                // No migrations table yet: nothing applied.
                sqlx::Error::Database(db) if db.code().as_deref() == Some("42P01") => {
                    Ok(Vec::new())
                }
                _ => Err(e),
            })?;
    Ok(MIGRATOR
        .iter()
        .filter(|m| !applied.contains(&m.version))
        .count())
}

/// The database server's clock.
pub async fn database_now(pool: &PgPool) -> Result<OffsetDateTime, StoreError> {
    Ok(sqlx::query_scalar("SELECT now()").fetch_one(pool).await?)
}

/// Whether a token signing key is current (the one new tokens are signed with).
pub async fn current_signing_key(pool: &PgPool) -> Result<bool, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM signing_keys WHERE verify_until IS NULL)")
            .fetch_one(pool)
            .await?,
    )
}
