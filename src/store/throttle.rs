//! Throttling counters, shared by every node: sign-in attempts per account and per
//! client network, and fixed windows for everything else a person can repeat.

use async_trait::async_trait;
use time::OffsetDateTime;
use uuid::Uuid;

use super::events::{EVENT_COLUMNS, NewEvent, bind_event_as, event_values};
use super::pg::seconds_until;
use super::{PgStore, StoreError, UserRecord};
use crate::domain::{Email, UserId};

/// Throttle limits in force for a sign-in attempt.
#[derive(Clone, Copy, Debug)]
pub struct ThrottleLimits {
    pub account_max_failures: i32,
    pub ip_max_failures: i32,
    pub ip_window_secs: i32,
    pub max_backoff_secs: i32,
}

/// Whether an attempt may be evaluated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attempt {
    Allowed,
    Blocked { retry_after_secs: u64 },
}

/// What a sign-in attempt holds once `begin_sign_in` admitted it: the keys it was
/// counted under and its provisional failure event, for taking them back.
#[derive(Clone, Debug)]
pub struct AttemptKeys {
    pub account_key: Vec<u8>,
    pub ip_key: Vec<u8>,
    pub failure_id: Uuid,
}

#[derive(sqlx::FromRow)]
struct BeginRow {
    ip_blocked_until: Option<OffsetDateTime>,
    counted: Option<i32>,
    account_blocked_until: Option<OffsetDateTime>,
    id: Option<Uuid>,
    email: Option<String>,
    password_hash: Option<String>,
    disabled: Option<bool>,
    verified: Option<bool>,
}

/// Takes back what a sign-in attempt counted (its account count entirely, one count
/// on its address) and deletes its provisional failure event: the password was right.
/// The address's row is updated before the account's, the order in which
/// `begin_sign_in` locks them (one statement over both would take them in whatever
/// order the scan finds them, and deadlock with a sign-in from the same address).
pub(super) async fn refund(
    conn: &mut sqlx::PgConnection,
    keys: &AttemptKeys,
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM security_events WHERE id = $1")
        .bind(keys.failure_id)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "UPDATE sign_in_throttle SET failures = GREATEST(failures - 1, 0), blocked_until = NULL
         WHERE scope = 'ip' AND key = $1",
    )
    .bind(&keys.ip_key)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "UPDATE sign_in_throttle SET failures = 0, blocked_until = NULL
         WHERE scope = 'account' AND key = $1",
    )
    .bind(&keys.account_key)
    .execute(conn)
    .await?;
    Ok(())
}

/// Counts one event for `key` in a fixed window of `window_secs` that starts at the
/// first event; blocked (and not counted) once the window holds `max` events. One
/// conditional upsert: the row lock serialises parallel callers, so none slips past.
pub(super) async fn count_window(
    conn: &mut sqlx::PgConnection,
    scope: &'static str,
    key: &[u8],
    now: OffsetDateTime,
    max: i32,
    window_secs: i32,
) -> Result<Attempt, sqlx::Error> {
    let counted: Option<i32> = sqlx::query_scalar(
        "INSERT INTO sign_in_throttle AS t (scope, key, failures, window_started_at, updated_at)
         VALUES ($1, $2, 1, $3, $3)
         ON CONFLICT (scope, key) DO UPDATE SET
             failures = CASE WHEN t.window_started_at + make_interval(secs => $5) <= $3
                             THEN 1 ELSE t.failures + 1 END,
             window_started_at = CASE WHEN t.window_started_at + make_interval(secs => $5) <= $3
                             THEN $3 ELSE t.window_started_at END,
             updated_at = $3
         WHERE t.window_started_at + make_interval(secs => $5) <= $3 OR t.failures < $4
         RETURNING failures",
    )
    .bind(scope)
    .bind(key)
    .bind(now)
    .bind(max)
    .bind(f64::from(window_secs))
    .fetch_optional(&mut *conn)
    .await?;
    if counted.is_some() {
        return Ok(Attempt::Allowed);
    }
    let started: OffsetDateTime = sqlx::query_scalar(
        "SELECT window_started_at FROM sign_in_throttle WHERE scope = $1 AND key = $2",
    )
    .bind(scope)
    .bind(key)
    .fetch_one(conn)
    .await?;
    Ok(Attempt::Blocked {
        retry_after_secs: seconds_until(
            now,
            started + time::Duration::seconds(i64::from(window_secs)),
        ),
    })
}

/// Takes back one event counted by `count_window` (it turned out not to be a
/// failure, e.g. a right code).
pub(super) async fn uncount(
    conn: &mut sqlx::PgConnection,
    scope: &'static str,
    key: &[u8],
) -> Result<(), sqlx::Error> {
    uncount_in(conn, scope, key).await
}

async fn uncount_in<'e>(
    db: impl sqlx::PgExecutor<'e>,
    scope: &'static str,
    key: &[u8],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE sign_in_throttle SET failures = GREATEST(failures - 1, 0)
         WHERE scope = $1 AND key = $2",
    )
    .bind(scope)
    .bind(key)
    .execute(db)
    .await?;
    Ok(())
}

#[async_trait]
pub trait ThrottleStore: Send + Sync {
    /// Starts a sign-in attempt: decides whether it may be evaluated and, if so,
    /// counts it as a failure, against the account and the client address, *before*
    /// the password is checked, so parallel attempts cannot slip under either limit
    /// (ZITADEL CVE-2023-47111); `sign_in_succeeded` / `sign_in_refund` take it back.
    /// Nothing is counted when blocked. Also returns the account, if there is one.
    /// For an existing account an allowed attempt also records `failure` (with id
    /// `failure_id`) in the same statement: a failure until proven otherwise, like
    /// the counts, so a wrong password and an unknown address cost the same round
    /// trips before the answer.
    async fn begin_sign_in(
        &self,
        email: &Email,
        keys: &AttemptKeys,
        limits: ThrottleLimits,
        failure: &NewEvent,
    ) -> Result<(Attempt, Option<UserRecord>), StoreError>;
    /// The password was right but no session follows (e.g. unconfirmed address, or a
    /// re-check of the password): takes back what `begin_sign_in` counted and its
    /// provisional failure event.
    async fn sign_in_refund(&self, keys: &AttemptKeys) -> Result<(), StoreError>;
    /// The attempt was never evaluated (the password check gave up waiting): takes
    /// back exactly this one count on each key and its provisional failure event,
    /// leaving earlier failures as they were.
    async fn sign_in_uncount(
        &self,
        keys: &AttemptKeys,
        limits: ThrottleLimits,
    ) -> Result<(), StoreError>;
    /// Counts one event for `key` in a fixed window of `window_secs` that starts at the
    /// first event; blocked (and not counted) once the window holds `max` events.
    async fn count_in_window(
        &self,
        scope: &'static str,
        key: &[u8],
        now: OffsetDateTime,
        max: i32,
        window_secs: i32,
    ) -> Result<Attempt, StoreError>;
    /// Takes back one event `count_in_window` counted.
    async fn uncount_in_window(&self, scope: &'static str, key: &[u8]) -> Result<(), StoreError>;
}

#[async_trait]
impl ThrottleStore for PgStore {
    async fn begin_sign_in(
        &self,
        email: &Email,
        keys: &AttemptKeys,
        limits: ThrottleLimits,
        failure: &NewEvent,
    ) -> Result<(Attempt, Option<UserRecord>), StoreError> {
        let now = failure.at;
        // One statement, one round trip, atomic. Both counts are conditional upserts:
        // the row lock serialises concurrent attempts and the condition is re-checked
        // on the latest row, so no number of parallel requests gets past a limit.
        // - ip: count the attempt against the client address (a fixed window that
        //   starts at the first failure), unless the window is full;
        // - acct: if the address allowed it, count it against the account *before*
        //   the password is checked, unless the account is in its backoff; from the
        //   limit on, each further failure doubles the wait (1 s, 2 s, … capped);
        // - the final SELECT sees the table as it was before this statement: the
        //   window or backoff that refused the attempt, and the user row.
        // Success or a right password takes both counts back (`sign_in_succeeded`,
        // `sign_in_refund`). An attempt refused by the account's backoff is given
        // back to the address below: only real failures count there.
        // - failed: the account's provisional failure event, if the attempt counted.
        let sql = format!(
            "WITH ip AS (
                 INSERT INTO sign_in_throttle AS t (scope, key, failures, window_started_at, updated_at)
                 VALUES ('ip', $2, 1, $3, $3)
                 ON CONFLICT (scope, key) DO UPDATE SET
                     failures = CASE WHEN t.window_started_at + make_interval(secs => $5) <= $3
                                     THEN 1 ELSE t.failures + 1 END,
                     window_started_at = CASE WHEN t.window_started_at + make_interval(secs => $5) <= $3
                                     THEN $3 ELSE t.window_started_at END,
                     updated_at = $3
                 WHERE t.window_started_at + make_interval(secs => $5) <= $3 OR t.failures < $6
                 RETURNING failures
             ), acct AS (
                 INSERT INTO sign_in_throttle AS t
                     (scope, key, failures, window_started_at, blocked_until, updated_at)
                 SELECT 'account', $1, 1, $3,
                        CASE WHEN 1 >= $4 THEN $3 + interval '1 second' END, $3
                 WHERE EXISTS (SELECT 1 FROM ip)
                 ON CONFLICT (scope, key) DO UPDATE SET
                     failures = t.failures + 1,
                     blocked_until = CASE WHEN t.failures + 1 >= $4
                         THEN $3 + make_interval(secs => LEAST($7::float8, power(2, LEAST(t.failures + 1 - $4, 30))))
                         END,
                     updated_at = $3
                 WHERE t.blocked_until IS NULL OR t.blocked_until <= $3
                 RETURNING failures
             ), failed AS (
                 INSERT INTO security_events {EVENT_COLUMNS}
                 SELECT $9, u.id, NULL, {event} FROM users u
                 WHERE u.email = $8 AND EXISTS (SELECT 1 FROM acct)
             )
             SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM ip) THEN
                        (SELECT window_started_at + make_interval(secs => $5) FROM sign_in_throttle
                          WHERE scope = 'ip' AND key = $2)
                    END AS ip_blocked_until,
                    (SELECT failures FROM acct) AS counted,
                    (SELECT blocked_until FROM sign_in_throttle
                      WHERE scope = 'account' AND key = $1) AS account_blocked_until,
                    u.id, u.email, u.password_hash, u.disabled_at IS NOT NULL AS disabled,
                    u.email_verified_at IS NOT NULL AS verified
             FROM (SELECT 1) AS one
             LEFT JOIN users u ON u.email = $8",
            event = event_values(9),
        );
        let query = sqlx::query_as::<_, BeginRow>(sqlx::AssertSqlSafe(sql))
            .bind(&keys.account_key)
            .bind(&keys.ip_key)
            .bind(now)
            .bind(limits.account_max_failures)
            .bind(f64::from(limits.ip_window_secs))
            .bind(limits.ip_max_failures)
            .bind(f64::from(limits.max_backoff_secs))
            .bind(email.as_str())
            .bind(keys.failure_id);
        let row: BeginRow = bind_event_as(query, failure).fetch_one(&self.pool).await?;
        let attempt = match (row.ip_blocked_until, row.counted) {
            (Some(ends), _) => Attempt::Blocked {
                retry_after_secs: seconds_until(now, ends),
            },
            (None, Some(_)) => Attempt::Allowed,
            (None, None) => {
                // Refused by the account's backoff, not by a wrong password: the
                // address's count the statement took is given back, so a busy
                // office whose right passwords queue behind one account's backoff
                // does not start to look like credential stuffing.
                uncount_in(&self.pool, "ip", &keys.ip_key).await?;
                Attempt::Blocked {
                    retry_after_secs: row
                        .account_blocked_until
                        .map_or(1, |u| seconds_until(now, u)),
                }
            }
        };
        let user = match (
            row.id,
            row.email,
            row.password_hash,
            row.disabled,
            row.verified,
        ) {
            // An account without a password is still an account: its sign-in fails
            // like a wrong password (the hasher runs its dummy hash for it).
            (Some(id), Some(email), password_hash, Some(disabled), Some(verified)) => {
                Some(UserRecord {
                    id: UserId(id),
                    email,
                    password_hash,
                    disabled,
                    verified,
                })
            }
            _ => None,
        };
        Ok((attempt, user))
    }

    async fn sign_in_refund(&self, keys: &AttemptKeys) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        refund(&mut conn, keys).await?;
        Ok(())
    }

    async fn sign_in_uncount(
        &self,
        keys: &AttemptKeys,
        limits: ThrottleLimits,
    ) -> Result<(), StoreError> {
        // Below the limit again, the account is not in backoff; at or above it, the
        // backoff already running stays (it was earned by earlier failures too).
        // The address's row before the account's, as in `refund`.
        sqlx::query("DELETE FROM security_events WHERE id = $1")
            .bind(keys.failure_id)
            .execute(&self.pool)
            .await?;
        uncount_in(&self.pool, "ip", &keys.ip_key).await?;
        sqlx::query(
            "UPDATE sign_in_throttle
             SET failures = GREATEST(failures - 1, 0),
                 blocked_until = CASE WHEN failures - 1 >= $2 THEN blocked_until END
             WHERE scope = 'account' AND key = $1",
        )
        .bind(&keys.account_key)
        .bind(limits.account_max_failures)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn count_in_window(
        &self,
        scope: &'static str,
        key: &[u8],
        now: OffsetDateTime,
        max: i32,
        window_secs: i32,
    ) -> Result<Attempt, StoreError> {
        let mut conn = self.pool.acquire().await?;
        Ok(count_window(&mut conn, scope, key, now, max, window_secs).await?)
    }

    async fn uncount_in_window(&self, scope: &'static str, key: &[u8]) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        Ok(uncount(&mut conn, scope, key).await?)
    }
}
