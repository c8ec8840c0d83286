//! Housekeeping: deleting what no rule needs any more. Every node runs it; an
//! advisory lock lets one node at a time do a round. Each delete is one statement of
//! at most `BATCH` rows, its own transaction, so no lock is held for long; a round
//! repeats a table's batches until one comes back short.

use async_trait::async_trait;
use time::OffsetDateTime;

use super::{PgStore, StoreError};

/// Rows deleted per table per round, at most.
const BATCH: i64 = 5000;

/// What may go, as of `now`.
pub struct SweepRules {
    pub now: OffsetDateTime,
    /// Sessions are kept this long after they died (expired or revoked).
    pub session_grace: time::Duration,
    /// Security events older than this go (`GATEHOUSE_EVENT_RETENTION`).
    pub event_retention: time::Duration,
    /// Devices not seen for this long, with no live session, go (the cookie lasts a
    /// year).
    pub device_idle: time::Duration,
    /// Spent or expired mail links, idle throttle counters and delivered or
    /// abandoned mail go after this.
    pub spent_after: time::Duration,
}

/// How many rows of each kind a round deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepCounts {
    pub sessions: u64,
    pub devices: u64,
    pub email_tokens: u64,
    pub throttle: u64,
    pub events: u64,
    pub mails: u64,
    /// Expired half-finished sign-ins and step-ups, passkey ceremonies and spent
    /// DBSC challenges.
    pub challenges: u64,
    /// Authenticator enrolments never confirmed.
    pub enrolments: u64,
    /// Expired authorization codes.
    pub oauth_codes: u64,
    /// Expired access and refresh tokens.
    pub oauth_tokens: u64,
    /// Grants with no token left (or revoked long ago).
    pub oauth_grants: u64,
    /// Retired signing keys no token names any more.
    pub signing_keys: u64,
    /// Back-channel logouts delivered or given up.
    pub backchannel: u64,
    /// Spent `jti`s of upstream logout tokens past their age limit.
    pub upstream_jtis: u64,
}

impl SweepCounts {
    /// (name, count) pairs, for metrics and logs.
    pub fn by_kind(&self) -> [(&'static str, u64); 14] {
        [
            ("sessions", self.sessions),
            ("devices", self.devices),
            ("email_tokens", self.email_tokens),
            ("throttle", self.throttle),
            ("events", self.events),
            ("mails", self.mails),
            ("challenges", self.challenges),
            ("enrolments", self.enrolments),
            ("oauth_codes", self.oauth_codes),
            ("oauth_tokens", self.oauth_tokens),
            ("oauth_grants", self.oauth_grants),
            ("signing_keys", self.signing_keys),
            ("backchannel", self.backchannel),
            ("upstream_jtis", self.upstream_jtis),
        ]
    }
}

#[async_trait]
pub trait HousekeepingStore: Send + Sync {
    /// One round. `None` when another node is doing a round right now.
    async fn sweep(&self, rules: &SweepRules) -> Result<Option<SweepCounts>, StoreError>;
}

/// Deletes up to `BATCH` rows of `table` matching `condition`, whose `$1`, `$2`…
/// are `times`.
async fn delete_batch(
    conn: &mut sqlx::PgConnection,
    table: &str,
    key: &str,
    condition: &str,
    times: &[OffsetDateTime],
) -> Result<u64, sqlx::Error> {
    let sql = format!(
        "DELETE FROM {table} WHERE ({key}) IN (
             SELECT {key} FROM {table} WHERE {condition} LIMIT {BATCH} FOR UPDATE SKIP LOCKED
         )"
    );
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
    for t in times {
        q = q.bind(*t);
    }
    Ok(q.execute(conn).await?.rows_affected())
}

/// Batches per table per round at most, so a round always ends.
const MAX_BATCHES: u32 = 50;

/// Deletes in batches (each statement its own short transaction) until a batch
/// comes back short or `MAX_BATCHES` ran.
async fn drain(
    conn: &mut sqlx::PgConnection,
    table: &str,
    key: &str,
    condition: &str,
    times: &[OffsetDateTime],
) -> Result<u64, sqlx::Error> {
    let mut total = 0;
    for _ in 0..MAX_BATCHES {
        let n = delete_batch(conn, table, key, condition, times).await?;
        total += n;
        if n < BATCH as u64 {
            break;
        }
    }
    Ok(total)
}

#[async_trait]
impl HousekeepingStore for PgStore {
    async fn sweep(&self, r: &SweepRules) -> Result<Option<SweepCounts>, StoreError> {
        let mut conn = self.pool.acquire().await?;
        // A session-level lock on this connection: held across the batches, gone
        // with the connection if the node dies.
        let ours: bool =
            sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext('gatehouse.housekeeping'))")
                .fetch_one(&mut *conn)
                .await?;
        if !ours {
            return Ok(None);
        }
        let result = self.sweep_locked(&mut conn, r).await;
        let unlocked = sqlx::query("SELECT pg_advisory_unlock(hashtext('gatehouse.housekeeping'))")
            .execute(&mut *conn)
            .await;
        if unlocked.is_err() {
            // The lock must not stay with a pooled connection.
            conn.detach();
        }
        Ok(Some(result?))
    }
}

impl PgStore {
    async fn sweep_locked(
        &self,
        conn: &mut sqlx::PgConnection,
        r: &SweepRules,
    ) -> Result<SweepCounts, StoreError> {
        let now = r.now;
        let spent = now - r.spent_after;
        // Codes and tokens are kept a while past expiry, so that a late replay is
        // still recognised (and revokes its grant) rather than merely unknown.
        let oauth_codes = drain(
            conn,
            "oauth_codes",
            "code_hash",
            "expires_at < $1",
            &[spent],
        )
        .await?;
        let oauth_tokens = drain(
            conn,
            "oauth_access_tokens",
            "jti",
            "expires_at < $1",
            &[spent],
        )
        .await?
            + drain(
                conn,
                "oauth_refresh_tokens",
                "token_hash",
                // A family's spent tokens stay while any of its tokens is unexpired:
                // presenting one of them is how theft is recognised.
                "expires_at < $1 AND NOT EXISTS (
                     SELECT 1 FROM oauth_refresh_tokens r
                     WHERE r.grant_id = oauth_refresh_tokens.grant_id AND r.expires_at >= $1)",
                &[spent],
            )
            .await?;
        let oauth_grants = drain(
            conn,
            "oauth_grants",
            "id",
            "created_at < $1
             AND NOT EXISTS (SELECT 1 FROM oauth_access_tokens a WHERE a.grant_id = oauth_grants.id)
             AND NOT EXISTS (SELECT 1 FROM oauth_refresh_tokens r WHERE r.grant_id = oauth_grants.id)
             -- A grant of a live session is kept: it is how the session's end finds the
             -- apps to send a back-channel logout to.
             AND NOT EXISTS (SELECT 1 FROM sessions s WHERE s.id = oauth_grants.session_id
                             AND s.revoked_at IS NULL AND s.absolute_expires_at > $1)",
            &[spent],
        )
        .await?;
        let signing_keys = drain(
            conn,
            "signing_keys",
            "id",
            "verify_until < $1
             AND NOT EXISTS (SELECT 1 FROM oauth_access_tokens a WHERE a.kid = signing_keys.kid)",
            &[spent],
        )
        .await?;
        Ok(SweepCounts {
            oauth_codes,
            oauth_tokens,
            oauth_grants,
            signing_keys,
            sessions: drain(
                conn,
                "sessions",
                "id",
                "absolute_expires_at < $1 OR idle_expires_at < $1 OR revoked_at < $1",
                &[now - r.session_grace],
            )
            .await?,
            devices: drain(
                conn,
                "devices",
                "id",
                "last_seen_at < $2 AND NOT EXISTS (
                     SELECT 1 FROM sessions s WHERE s.device_id = devices.id
                     AND s.revoked_at IS NULL AND s.absolute_expires_at > $1)",
                &[now, now - r.device_idle],
            )
            .await?,
            email_tokens: drain(
                conn,
                "email_tokens",
                "token_hash",
                "expires_at < $1 OR used_at < $1",
                &[now - r.spent_after],
            )
            .await?,
            throttle: drain(
                conn,
                "sign_in_throttle",
                "scope, key",
                "updated_at < $2 AND (blocked_until IS NULL OR blocked_until < $1)",
                &[now, now - r.spent_after],
            )
            .await?,
            events: drain(
                conn,
                "security_events",
                "id",
                "at < $1",
                &[now - r.event_retention],
            )
            .await?,
            mails: drain(
                conn,
                "mail_outbox",
                "id",
                "(sent_at IS NOT NULL OR failed_at IS NOT NULL) AND created_at < $1",
                &[now - r.spent_after],
            )
            .await?,
            backchannel: drain(
                conn,
                "backchannel_outbox",
                "id",
                "(delivered_at IS NOT NULL OR failed_at IS NOT NULL) AND created_at < $1",
                &[now - r.spent_after],
            )
            .await?,
            challenges: drain(conn, "mfa_challenges", "id", "expires_at < $1", &[now]).await?
                + drain(conn, "passkey_ceremonies", "id", "expires_at < $1", &[now]).await?
                + drain(
                    conn,
                    "dbsc_used_challenges",
                    "challenge_hash",
                    "expires_at < $1",
                    &[now],
                )
                .await?,
            upstream_jtis: drain(
                conn,
                "upstream_logout_jtis",
                "upstream_id, jti",
                "expires_at < $1",
                &[now],
            )
            .await?,
            enrolments: drain(
                conn,
                "totp_credentials",
                "user_id",
                "confirmed_at IS NULL AND created_at < $1",
                &[now - r.spent_after],
            )
            .await?,
        })
    }
}
