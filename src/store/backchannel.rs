//! The back-channel logout outbox. Rows are written by the `sessions_ended` trigger
//! (migration `revocation_reach`) in the transaction that ends a session, one per
//! client with a back-channel URI that holds tokens from it; workers on every node
//! drain it with `FOR UPDATE SKIP LOCKED` and a lease.

use std::time::Duration;

use async_trait::async_trait;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{PgStore, StoreError};

/// A logout token to deliver.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct QueuedLogout {
    /// Also the logout token's `jti`.
    pub id: Uuid,
    pub client_id: String,
    pub session_id: Uuid,
    pub user_id: Uuid,
    pub uri: String,
    pub attempts: i32,
    /// The lease this claim holds: the outcome is recorded only while it still does.
    pub lease_until: OffsetDateTime,
}

#[async_trait]
pub trait BackchannelStore: Send + Sync {
    /// Claims up to `limit` due deliveries for `lease`, skipping rows other workers
    /// hold. Rows of a client whose URI was removed are given up on here.
    async fn claim_logouts(
        &self,
        now: OffsetDateTime,
        lease: Duration,
        limit: i64,
    ) -> Result<Vec<QueuedLogout>, StoreError>;
    /// Records the delivery of a claimed row (whatever another claim did since: it
    /// was delivered).
    async fn logout_delivered(
        &self,
        q: &QueuedLogout,
        now: OffsetDateTime,
    ) -> Result<(), StoreError>;
    /// Records a failed attempt, only while the claim still holds the row (a worker
    /// that outlived its lease must not undo another's delivery); `retry_at: None`
    /// gives up for good.
    async fn logout_failed(
        &self,
        q: &QueuedLogout,
        now: OffsetDateTime,
        error: &str,
        retry_at: Option<OffsetDateTime>,
    ) -> Result<(), StoreError>;
}

#[async_trait]
impl BackchannelStore for PgStore {
    async fn claim_logouts(
        &self,
        now: OffsetDateTime,
        lease: Duration,
        limit: i64,
    ) -> Result<Vec<QueuedLogout>, StoreError> {
        let lease_until = now + time::Duration::try_from(lease).unwrap_or(time::Duration::MINUTE);
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE backchannel_outbox o SET failed_at = $1, last_error = 'the client has no back-channel URI any more'
             FROM oauth_clients c
             WHERE c.id = o.client_id AND c.backchannel_logout_uri IS NULL
               AND o.delivered_at IS NULL AND o.failed_at IS NULL",
        )
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let rows: Vec<QueuedLogout> = sqlx::query_as(
            "WITH claimed AS (
                 UPDATE backchannel_outbox SET lease_until = $2
                 WHERE id IN (
                     SELECT id FROM backchannel_outbox
                     WHERE delivered_at IS NULL AND failed_at IS NULL AND next_attempt_at <= $1
                       AND (lease_until IS NULL OR lease_until <= $1)
                     ORDER BY next_attempt_at
                     LIMIT $3
                     FOR UPDATE SKIP LOCKED
                 )
                 RETURNING id, client_id, session_id, user_id, attempts, lease_until
             )
             SELECT claimed.id, claimed.client_id, claimed.session_id, claimed.user_id,
                    c.backchannel_logout_uri AS uri, claimed.attempts, claimed.lease_until
             FROM claimed JOIN oauth_clients c ON c.id = claimed.client_id
             WHERE c.backchannel_logout_uri IS NOT NULL",
        )
        .bind(now)
        .bind(lease_until)
        .bind(limit)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rows)
    }

    async fn logout_delivered(
        &self,
        q: &QueuedLogout,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE backchannel_outbox SET delivered_at = $2, lease_until = NULL,
                    attempts = attempts + 1, last_error = NULL
             WHERE id = $1 AND delivered_at IS NULL",
        )
        .bind(q.id)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn logout_failed(
        &self,
        q: &QueuedLogout,
        now: OffsetDateTime,
        error: &str,
        retry_at: Option<OffsetDateTime>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE backchannel_outbox SET attempts = attempts + 1, last_error = $3,
                    lease_until = NULL,
                    next_attempt_at = COALESCE($4, next_attempt_at),
                    failed_at = CASE WHEN $4 IS NULL THEN $2 END
             WHERE id = $1 AND lease_until = $5 AND delivered_at IS NULL",
        )
        .bind(q.id)
        .bind(now)
        .bind(error)
        .bind(retry_at)
        .bind(q.lease_until)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
