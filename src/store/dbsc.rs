//! Device-bound sessions (DBSC): the key a browser bound its session to, the bound
//! cookie that only a proof by that key renews, and the challenges proofs spend.

use async_trait::async_trait;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{PgStore, StoreError};
use crate::domain::SessionId;

/// A bound cookie to set: its SHA-256 and when it lapses.
pub struct BoundCookie {
    pub hash: Vec<u8>,
    pub expires_at: OffsetDateTime,
}

/// A challenge a proof spends: its SHA-256 and when it would have been too old anyway.
pub struct SpentChallenge {
    pub hash: Vec<u8>,
    pub expires_at: OffsetDateTime,
}

/// What a registration or a refresh did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DbscOutcome {
    Done,
    /// The challenge was spent before: nothing changed.
    Replayed,
    /// The session is gone (revoked, expired), or (registration) already bound.
    Gone,
}

/// A bound session as its refresh sees it.
#[derive(Clone, Debug)]
pub struct BoundSession {
    pub id: SessionId,
    /// Not revoked, not expired, user enabled.
    pub live: bool,
    pub jwk: String,
}

#[derive(sqlx::FromRow)]
struct BoundRow {
    id: Uuid,
    live: bool,
    dbsc_jwk: String,
}

/// Records the challenge as spent inside the caller's transaction; `false` when it was
/// spent before (a replay). Housekeeping sweeps rows past their age limit.
async fn spend(
    conn: &mut sqlx::PgConnection,
    session: SessionId,
    c: &SpentChallenge,
    now: OffsetDateTime,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO dbsc_used_challenges (challenge_hash, session_id, used_at, expires_at)
         VALUES ($1, $2, $3, $4) ON CONFLICT (challenge_hash) DO NOTHING",
    )
    .bind(&c.hash)
    .bind(session.0)
    .bind(now)
    .bind(c.expires_at)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

#[async_trait]
pub trait DbscStore: Send + Sync {
    /// Binds a live, not yet bound session to a public key and sets its first bound
    /// cookie, spending the registration challenge, in one transaction.
    #[allow(clippy::too_many_arguments)]
    async fn bind_session_key(
        &self,
        session: SessionId,
        jwk: &str,
        thumbprint: &str,
        cookie: &BoundCookie,
        challenge: &SpentChallenge,
        now: OffsetDateTime,
    ) -> Result<DbscOutcome, StoreError>;
    /// A bound session by its public id (live or not); `None` if there is no such
    /// bound session.
    async fn bound_session(
        &self,
        id: SessionId,
        now: OffsetDateTime,
    ) -> Result<Option<BoundSession>, StoreError>;
    /// Renews a live bound session's cookie (the current one becomes the previous),
    /// spending the refresh challenge, in one transaction.
    async fn refresh_bound_cookie(
        &self,
        session: SessionId,
        cookie: &BoundCookie,
        challenge: &SpentChallenge,
        now: OffsetDateTime,
    ) -> Result<DbscOutcome, StoreError>;
    /// Counts one refusal of a bound session that said it skipped a refresh, in a
    /// window of `window_secs` that starts at the first one (a later one past it
    /// starts a new window); the count in the current window, this one included.
    async fn count_skipped_refusal(
        &self,
        session: SessionId,
        now: OffsetDateTime,
        window_secs: i64,
    ) -> Result<i32, StoreError>;
}

#[async_trait]
impl DbscStore for PgStore {
    async fn bind_session_key(
        &self,
        session: SessionId,
        jwk: &str,
        thumbprint: &str,
        cookie: &BoundCookie,
        challenge: &SpentChallenge,
        now: OffsetDateTime,
    ) -> Result<DbscOutcome, StoreError> {
        let mut tx = self.pool.begin().await?;
        if !spend(&mut tx, session, challenge, now).await? {
            return Ok(DbscOutcome::Replayed);
        }
        let bound = sqlx::query(
            "UPDATE sessions SET dbsc_jwk = $2, dbsc_thumbprint = $3, dbsc_bound_at = $4,
                                 dbsc_cookie_hash = $5, dbsc_cookie_expires_at = $6
             WHERE id = $1 AND dbsc_jwk IS NULL AND revoked_at IS NULL
               AND idle_expires_at > $4 AND absolute_expires_at > $4",
        )
        .bind(session.0)
        .bind(jwk)
        .bind(thumbprint)
        .bind(now)
        .bind(&cookie.hash)
        .bind(cookie.expires_at)
        .execute(&mut *tx)
        .await?;
        if bound.rows_affected() != 1 {
            return Ok(DbscOutcome::Gone);
        }
        tx.commit().await?;
        Ok(DbscOutcome::Done)
    }

    async fn bound_session(
        &self,
        id: SessionId,
        now: OffsetDateTime,
    ) -> Result<Option<BoundSession>, StoreError> {
        let row: Option<BoundRow> = sqlx::query_as(
            "SELECT s.id, s.dbsc_jwk,
                    (s.revoked_at IS NULL AND s.idle_expires_at > $2
                     AND s.absolute_expires_at > $2 AND u.disabled_at IS NULL) AS live
             FROM sessions s JOIN users u ON u.id = s.user_id
             WHERE s.id = $1 AND s.dbsc_jwk IS NOT NULL",
        )
        .bind(id.0)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| BoundSession {
            id: SessionId(r.id),
            live: r.live,
            jwk: r.dbsc_jwk,
        }))
    }

    async fn refresh_bound_cookie(
        &self,
        session: SessionId,
        cookie: &BoundCookie,
        challenge: &SpentChallenge,
        now: OffsetDateTime,
    ) -> Result<DbscOutcome, StoreError> {
        let mut tx = self.pool.begin().await?;
        if !spend(&mut tx, session, challenge, now).await? {
            return Ok(DbscOutcome::Replayed);
        }
        // The key alone renews the cookie, never the session: its idle expiry moves
        // only with requests that pass every check.
        let done = sqlx::query(
            "UPDATE sessions s SET
                 dbsc_prev_cookie_hash = s.dbsc_cookie_hash,
                 dbsc_prev_cookie_expires_at = s.dbsc_cookie_expires_at,
                 dbsc_cookie_hash = $2, dbsc_cookie_expires_at = $3
             FROM users u
             WHERE s.id = $1 AND u.id = s.user_id AND s.dbsc_jwk IS NOT NULL
               AND s.revoked_at IS NULL AND u.disabled_at IS NULL
               AND s.idle_expires_at > $4 AND s.absolute_expires_at > $4",
        )
        .bind(session.0)
        .bind(&cookie.hash)
        .bind(cookie.expires_at)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(DbscOutcome::Gone);
        }
        tx.commit().await?;
        Ok(DbscOutcome::Done)
    }

    async fn count_skipped_refusal(
        &self,
        session: SessionId,
        now: OffsetDateTime,
        window_secs: i64,
    ) -> Result<i32, StoreError> {
        // One statement on one row: concurrent refusals each count.
        let count: Option<i32> = sqlx::query_scalar(
            "UPDATE sessions SET
                 dbsc_skipped_refusals = CASE
                     WHEN dbsc_skipped_since IS NULL
                       OR dbsc_skipped_since <= $2 - make_interval(secs => $3::double precision)
                     THEN 1 ELSE dbsc_skipped_refusals + 1 END,
                 dbsc_skipped_since = CASE
                     WHEN dbsc_skipped_since IS NULL
                       OR dbsc_skipped_since <= $2 - make_interval(secs => $3::double precision)
                     THEN $2 ELSE dbsc_skipped_since END
             WHERE id = $1
             RETURNING dbsc_skipped_refusals",
        )
        .bind(session.0)
        .bind(now)
        .bind(window_secs)
        .fetch_optional(&self.pool)
        .await?;
        Ok(count.unwrap_or(0))
    }
}
