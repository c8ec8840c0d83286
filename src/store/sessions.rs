//! Browser sessions: the rows every authenticated request re-checks.

use async_trait::async_trait;
use time::OffsetDateTime;
use uuid::Uuid;

use super::events::{EVENT_COLUMNS, NewEvent, PgQuery, bind_event, event_at, event_values};
use super::throttle::AttemptKeys;
use super::{PgStore, StoreError};
use crate::domain::{SessionId, UserId};

/// A session row to insert. Times and lifetimes are computed by the service.
pub struct NewSession {
    pub id: SessionId,
    pub token_hash: Vec<u8>,
    pub user_id: UserId,
    pub now: OffsetDateTime,
    pub idle_timeout_secs: i32,
    pub idle_expires_at: OffsetDateTime,
    pub absolute_expires_at: OffsetDateTime,
    pub remember_me: bool,
    pub aal: &'static str,
    pub amr: Vec<String>,
    pub ip_enc: Option<Vec<u8>>,
    pub user_agent_enc: Option<Vec<u8>>,
}

/// A live session with its user, as every authenticated request sees it.
#[derive(Clone, Debug)]
pub struct SessionRecord {
    pub id: SessionId,
    pub user_id: UserId,
    pub email: String,
    pub created_at: OffsetDateTime,
    pub last_seen_at: OffsetDateTime,
    pub idle_expires_at: OffsetDateTime,
    pub absolute_expires_at: OffsetDateTime,
    pub auth_time: OffsetDateTime,
    pub aal: String,
    pub amr: Vec<String>,
    pub remember_me: bool,
}

#[derive(sqlx::FromRow)]
struct SessionRow {
    id: Uuid,
    user_id: Uuid,
    email: String,
    created_at: OffsetDateTime,
    last_seen_at: OffsetDateTime,
    idle_expires_at: OffsetDateTime,
    absolute_expires_at: OffsetDateTime,
    auth_time: OffsetDateTime,
    aal: String,
    amr: Vec<String>,
    remember_me: bool,
}

impl From<SessionRow> for SessionRecord {
    fn from(r: SessionRow) -> Self {
        Self {
            id: SessionId(r.id),
            user_id: UserId(r.user_id),
            email: r.email,
            created_at: r.created_at,
            last_seen_at: r.last_seen_at,
            idle_expires_at: r.idle_expires_at,
            absolute_expires_at: r.absolute_expires_at,
            auth_time: r.auth_time,
            aal: r.aal,
            amr: r.amr,
            remember_me: r.remember_me,
        }
    }
}

/// The session columns and their parameters `$1`–`$12`, as bound by `bind_session`.
const SESSION_COLUMNS: &str = "(id, token_hash, user_id, created_at, last_seen_at,
     idle_timeout_secs, idle_expires_at, absolute_expires_at, remember_me,
     auth_time, aal, aal_reached_at, amr, ip_enc, user_agent_enc)";
const SESSION_VALUES: &str = "$1, $2, $3, $4, $4, $5, $6, $7, $8, $4, $9, $4, $10, $11, $12";
const SESSION_PARAMS: usize = 12;

fn bind_session<'q>(q: PgQuery<'q>, s: &'q NewSession) -> PgQuery<'q> {
    q.bind(s.id.0)
        .bind(&s.token_hash)
        .bind(s.user_id.0)
        .bind(s.now)
        .bind(s.idle_timeout_secs)
        .bind(s.idle_expires_at)
        .bind(s.absolute_expires_at)
        .bind(s.remember_me)
        .bind(s.aal)
        .bind(&s.amr)
        .bind(&s.ip_enc)
        .bind(&s.user_agent_enc)
}

pub(super) async fn insert_session(
    conn: &mut sqlx::PgConnection,
    s: &NewSession,
) -> Result<(), sqlx::Error> {
    let sql = format!("INSERT INTO sessions {SESSION_COLUMNS} VALUES ({SESSION_VALUES})");
    bind_session(sqlx::query(sqlx::AssertSqlSafe(sql)), s)
        .execute(conn)
        .await?;
    Ok(())
}

/// The revocation of a browser's earlier session by a new sign-in, with its event
/// for that session's owner (who may be another user), as one statement.
const REPLACED_REASON: &str = "replaced by a new sign-in";

pub(super) async fn revoke_replaced(
    conn: &mut sqlx::PgConnection,
    old: SessionId,
    now: OffsetDateTime,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "WITH r AS (
             UPDATE sessions SET revoked_at = $2, revoked_reason = $3
             WHERE id = $1 AND revoked_at IS NULL
             RETURNING id, user_id
         )
         INSERT INTO security_events (id, user_id, session_id, kind, actor, at, detail)
         SELECT gen_random_uuid(), r.user_id, r.id, 'session_revoked', 'user', $2, $3 FROM r",
    )
    .bind(old.0)
    .bind(now)
    .bind(REPLACED_REASON)
    .execute(conn)
    .await?;
    Ok(())
}

#[async_trait]
pub trait SessionStore: Send + Sync {
    /// Completes a sign-in in one statement: takes back the attempt's throttle
    /// counts, creates the session, revokes the browser's earlier session
    /// (`replaces`) and records `event`, provided the user's password hash is still
    /// `password_hash` and the user is enabled (a reset or disabling that landed
    /// meanwhile wins, and then nothing at all is written). The attempt's provisional
    /// failure event goes either way: the password was right.
    /// Returns whether the session was created.
    async fn sign_in_succeeded(
        &self,
        attempt: &AttemptKeys,
        password_hash: &str,
        session: NewSession,
        replaces: Option<SessionId>,
        event: &NewEvent,
    ) -> Result<bool, StoreError>;
    /// The live session behind a cookie token hash: not revoked, not expired, user not
    /// disabled. One indexed read.
    async fn live_session(
        &self,
        token_hash: &[u8],
        now: OffsetDateTime,
    ) -> Result<Option<SessionRecord>, StoreError>;
    /// Records activity: last-seen and a new idle expiry (never past the absolute one).
    async fn touch_session(&self, id: SessionId, now: OffsetDateTime) -> Result<(), StoreError>;
    /// Revokes a live session and records `event` for its owner, atomically.
    /// Returns whether a live session was revoked by this call.
    async fn revoke_session(
        &self,
        id: SessionId,
        reason: &str,
        event: &NewEvent,
    ) -> Result<bool, StoreError>;
}

#[async_trait]
impl SessionStore for PgStore {
    async fn sign_in_succeeded(
        &self,
        attempt: &AttemptKeys,
        password_hash: &str,
        s: NewSession,
        replaces: Option<SessionId>,
        event: &NewEvent,
    ) -> Result<bool, StoreError> {
        // One statement (one round trip, atomic). Data-modifying CTEs all run, and
        // each later one keys on the INSERT's RETURNING, so when the condition on the
        // user fails nothing but the (harmless) refund happens.
        let n = SESSION_PARAMS;
        let sql = format!(
            "WITH refund AS (
                 UPDATE sign_in_throttle
                 SET failures = CASE WHEN scope = 'account' THEN 0 ELSE GREATEST(failures - 1, 0) END,
                     blocked_until = NULL, updated_at = $4
                 WHERE (scope = 'account' AND key = ${a}) OR (scope = 'ip' AND key = ${i})
             ), provisional AS (
                 DELETE FROM security_events WHERE id = ${f}
             ), ins AS (
                 INSERT INTO sessions {SESSION_COLUMNS}
                 SELECT {SESSION_VALUES}
                 FROM users WHERE id = $3 AND password_hash = ${h} AND disabled_at IS NULL
                 RETURNING id, user_id
             ), old AS (
                 UPDATE sessions SET revoked_at = $4, revoked_reason = ${reason}
                 WHERE id = ${old} AND revoked_at IS NULL AND EXISTS (SELECT 1 FROM ins)
                 RETURNING id, user_id
             ), old_event AS (
                 INSERT INTO security_events (id, user_id, session_id, kind, actor, at, detail)
                 SELECT gen_random_uuid(), old.user_id, old.id, 'session_revoked', 'user', $4, ${reason}
                 FROM old
             )
             INSERT INTO security_events {EVENT_COLUMNS}
             SELECT gen_random_uuid(), ins.user_id, ins.id, {event} FROM ins",
            a = n + 1,
            i = n + 2,
            h = n + 3,
            old = n + 4,
            reason = n + 5,
            f = n + 6,
            event = event_values(n + 6),
        );
        let done = bind_event(
            bind_session(sqlx::query(sqlx::AssertSqlSafe(sql)), &s)
                .bind(&attempt.account_key)
                .bind(&attempt.ip_key)
                .bind(password_hash)
                .bind(replaces.map(|r| r.0))
                .bind(REPLACED_REASON)
                .bind(attempt.failure_id),
            event,
        )
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn live_session(
        &self,
        token_hash: &[u8],
        now: OffsetDateTime,
    ) -> Result<Option<SessionRecord>, StoreError> {
        let row: Option<SessionRow> = sqlx::query_as(
            "SELECT s.id, s.user_id, u.email, s.created_at, s.last_seen_at, s.idle_expires_at,
                    s.absolute_expires_at, s.auth_time, s.aal, s.amr, s.remember_me
             FROM sessions s JOIN users u ON u.id = s.user_id
             WHERE s.token_hash = $1
               AND s.revoked_at IS NULL
               AND s.idle_expires_at > $2
               AND s.absolute_expires_at > $2
               AND u.disabled_at IS NULL",
        )
        .bind(token_hash)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(SessionRecord::from))
    }

    async fn touch_session(&self, id: SessionId, now: OffsetDateTime) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE sessions
             SET last_seen_at = $2,
                 idle_expires_at = LEAST($2 + make_interval(secs => idle_timeout_secs), absolute_expires_at)
             WHERE id = $1 AND revoked_at IS NULL",
        )
        .bind(id.0)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn revoke_session(
        &self,
        id: SessionId,
        reason: &str,
        event: &NewEvent,
    ) -> Result<bool, StoreError> {
        // $1 = id, $2 = reason; the event's own values follow, and its time is the
        // revocation's.
        let sql = format!(
            "WITH r AS (
                 UPDATE sessions SET revoked_at = {at}, revoked_reason = $2
                 WHERE id = $1 AND revoked_at IS NULL
                 RETURNING id, user_id
             )
             INSERT INTO security_events {EVENT_COLUMNS}
             SELECT gen_random_uuid(), r.user_id, r.id, {event} FROM r",
            at = event_at(2),
            event = event_values(2),
        );
        let done = bind_event(
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(id.0)
                .bind(reason),
            event,
        )
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}
