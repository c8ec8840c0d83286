//! Devices (browsers that signed in, linked by the device cookie) and the device
//! list: a user's live sessions with what is known about each, and their revocation.

use async_trait::async_trait;
use time::OffsetDateTime;
use uuid::Uuid;

use super::events::{EVENT_COLUMNS, NewEvent, bind_event, event_at, event_values, insert_event};
use super::links::insert_not_me;
use super::outbox::insert_mails;
use super::pg::retry_once;
use super::{PgStore, StoreError};
use crate::crypto::Keys;
use crate::domain::{DeviceId, OutboundMail, SessionId, UserId};

/// The browser a sign-in came from, as the service decided it: an existing row of
/// this user's (same cookie) is refreshed, otherwise a row is made.
pub struct DeviceLink {
    /// The id a new row gets (an existing row keeps its own).
    pub new_id: DeviceId,
    /// SHA-256 of the device cookie the browser will hold after this sign-in.
    pub token_hash: Vec<u8>,
    pub label_enc: Vec<u8>,
    pub device_type: &'static str,
    /// Recorded, and mailed, only if the row turns out to be new for a user who had
    /// signed in before (never on the first sign-in ever): both facts are only
    /// certain inside the sign-in's transaction, so the service hands the notice
    /// over and the store applies it there.
    pub notice: Option<DeviceNotice>,
    /// "Trust this browser" was ticked: trusted until then.
    pub trust_until: Option<OffsetDateTime>,
}

/// The new-sign-in notice: its event, its mail, and the "This wasn't me" link it
/// carries (stored only if the notice goes out).
pub struct DeviceNotice {
    pub event: NewEvent,
    pub mail: OutboundMail,
    pub not_me_hash: Vec<u8>,
    pub not_me_expires_at: OffsetDateTime,
}

/// Links a new session to its device inside the caller's transaction; returns the
/// device id and whether this browser is new for the user.
pub(super) async fn link_device(
    conn: &mut sqlx::PgConnection,
    keys: &Keys,
    user_id: UserId,
    session_id: SessionId,
    link: &DeviceLink,
    now: OffsetDateTime,
) -> Result<(DeviceId, bool), StoreError> {
    // Durable, not guessed from the devices table (which housekeeping prunes and
    // which was empty for accounts older than it). The row lock serialises two
    // concurrent first sign-ins: the second one sees the first's mark.
    let first: Option<OffsetDateTime> =
        sqlx::query_scalar("SELECT first_signed_in_at FROM users WHERE id = $1 FOR NO KEY UPDATE")
            .bind(user_id.0)
            .fetch_one(&mut *conn)
            .await?;
    let had_signed_in = first.is_some();
    if !had_signed_in {
        sqlx::query("UPDATE users SET first_signed_in_at = $2 WHERE id = $1")
            .bind(user_id.0)
            .bind(now)
            .execute(&mut *conn)
            .await?;
    }
    // `xmax = 0` is true for a row this statement inserted, false for one it updated.
    let (id, inserted): (Uuid, bool) = sqlx::query_as(
        "INSERT INTO devices (id, user_id, token_hash, label_enc, device_type, first_seen_at,
                              last_seen_at, trusted_at, trusted_until)
         VALUES ($1, $2, $3, $4, $5, $6, $6, CASE WHEN $7::timestamptz IS NOT NULL THEN $6 END, $7)
         ON CONFLICT (user_id, token_hash) DO UPDATE
             SET label_enc = EXCLUDED.label_enc, device_type = EXCLUDED.device_type,
                 last_seen_at = GREATEST(devices.last_seen_at, EXCLUDED.last_seen_at),
                 trusted_at = COALESCE(EXCLUDED.trusted_at, devices.trusted_at),
                 trusted_until = COALESCE(EXCLUDED.trusted_until, devices.trusted_until)
         RETURNING id, (xmax = 0)",
    )
    .bind(link.new_id.0)
    .bind(user_id.0)
    .bind(&link.token_hash)
    .bind(&link.label_enc)
    .bind(link.device_type)
    .bind(now)
    .bind(link.trust_until)
    .fetch_one(&mut *conn)
    .await?;
    let is_new = inserted && had_signed_in;
    if is_new && let Some(notice) = &link.notice {
        insert_event(&mut *conn, user_id.0, Some(session_id.0), &notice.event).await?;
        insert_not_me(
            &mut *conn,
            &notice.not_me_hash,
            user_id.0,
            session_id.0,
            now,
            notice.not_me_expires_at,
        )
        .await?;
        insert_mails(conn, keys, std::slice::from_ref(&notice.mail), now).await?;
    }
    Ok((DeviceId(id), is_new))
}

/// A session as the device list and the operator's listing show it; personal fields
/// still sealed.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct SessionDetail {
    pub id: Uuid,
    pub device_id: Option<Uuid>,
    pub created_at: OffsetDateTime,
    pub last_seen_at: OffsetDateTime,
    pub idle_expires_at: OffsetDateTime,
    pub absolute_expires_at: OffsetDateTime,
    pub auth_time: OffsetDateTime,
    pub aal: String,
    pub aal_reached_at: OffsetDateTime,
    pub amr: Vec<String>,
    pub remember_me: bool,
    pub ip_enc: Option<Vec<u8>>,
    pub user_agent_enc: Option<Vec<u8>>,
    pub location_enc: Option<Vec<u8>>,
    pub risk_flagged: bool,
    pub risk_reason: Option<String>,
    /// The flag's full wording, sealed (it names places).
    pub risk_reason_enc: Option<Vec<u8>>,
    pub device_first_seen_at: Option<OffsetDateTime>,
    /// The browser is trusted to skip the code until then (if still in the future).
    pub device_trusted_until: Option<OffsetDateTime>,
    /// Bound to a key the browser keeps (DBSC).
    pub dbsc_bound: bool,
    /// The label of the upstream identity provider it was signed in with, if any
    /// (and the upstream still exists).
    pub upstream_label: Option<String>,
}

/// Locks every live session of a user in key order (the store's lock order for
/// several sessions), inside the caller's transaction, which holds the user row.
pub(super) async fn lock_live_sessions(
    conn: &mut sqlx::PgConnection,
    user_id: UserId,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "SELECT 1 FROM sessions WHERE user_id = $1 AND revoked_at IS NULL
         ORDER BY id FOR NO KEY UPDATE",
    )
    .bind(user_id.0)
    .execute(conn)
    .await?;
    Ok(())
}

/// Revokes every live session of a user (but `except`), with one event per session,
/// inside the caller's transaction. Returns how many were revoked.
pub(super) async fn revoke_all_of_user(
    conn: &mut sqlx::PgConnection,
    user_id: UserId,
    except: Option<SessionId>,
    reason: &str,
    event: &NewEvent,
) -> Result<u64, sqlx::Error> {
    lock_live_sessions(&mut *conn, user_id).await?;
    // $1 = user, $2 = except, $3 = reason; the event's values follow.
    let sql = format!(
        "WITH r AS (
             UPDATE sessions SET revoked_at = {at}, revoked_reason = $3
             WHERE user_id = $1 AND revoked_at IS NULL AND id IS DISTINCT FROM $2
             RETURNING id, user_id
         )
         INSERT INTO security_events {EVENT_COLUMNS}
         SELECT gen_random_uuid(), r.user_id, r.id, {event} FROM r",
        at = event_at(3),
        event = event_values(3),
    );
    let done = bind_event(
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(user_id.0)
            .bind(except.map(|s| s.0))
            .bind(reason),
        event,
    )
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

#[async_trait]
pub trait DeviceStore: Send + Sync {
    /// Whether this device cookie was issued to this user's browser.
    async fn device_cookie_known(
        &self,
        user_id: UserId,
        token_hash: &[u8],
    ) -> Result<bool, StoreError>;
    /// The user's live sessions, most recently active first.
    async fn live_sessions(
        &self,
        user_id: UserId,
        now: OffsetDateTime,
    ) -> Result<Vec<SessionDetail>, StoreError>;
    /// Revokes one live session *of this user* with its event. `false` when there is
    /// no such session of theirs (unknown, another user's, already dead): the caller
    /// answers those alike.
    async fn revoke_own_session(
        &self,
        user_id: UserId,
        id: SessionId,
        reason: &str,
        event: &NewEvent,
    ) -> Result<bool, StoreError>;
    /// Revokes every live session of the user except `except`, one event each, ends
    /// every "trust this browser" and voids pending change-of-address links, in one
    /// transaction. Returns how many sessions.
    async fn revoke_user_sessions(
        &self,
        user_id: UserId,
        except: Option<SessionId>,
        reason: &str,
        event: &NewEvent,
    ) -> Result<u64, StoreError>;
}

#[async_trait]
impl DeviceStore for PgStore {
    async fn device_cookie_known(
        &self,
        user_id: UserId,
        token_hash: &[u8],
    ) -> Result<bool, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM devices WHERE user_id = $1 AND token_hash = $2)",
        )
        .bind(user_id.0)
        .bind(token_hash)
        .fetch_one(&self.pool)
        .await?)
    }

    async fn live_sessions(
        &self,
        user_id: UserId,
        now: OffsetDateTime,
    ) -> Result<Vec<SessionDetail>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT s.id, s.device_id, s.created_at, s.last_seen_at, s.idle_expires_at,
                    s.absolute_expires_at, s.auth_time, s.aal, s.aal_reached_at, s.amr, s.remember_me,
                    s.ip_enc, s.user_agent_enc, s.location_enc, s.risk_flagged, s.risk_reason, s.risk_reason_enc,
                    d.first_seen_at AS device_first_seen_at,
                    d.trusted_until AS device_trusted_until,
                    s.dbsc_bound_at IS NOT NULL AS dbsc_bound,
                    up.label AS upstream_label
             FROM sessions s LEFT JOIN devices d ON d.id = s.device_id
             LEFT JOIN upstreams up ON up.id = s.upstream_id
             WHERE s.user_id = $1 AND s.revoked_at IS NULL
               AND s.idle_expires_at > $2 AND s.absolute_expires_at > $2
             ORDER BY s.last_seen_at DESC, s.created_at DESC, s.id",
        )
        .bind(user_id.0)
        .bind(now)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn revoke_own_session(
        &self,
        user_id: UserId,
        id: SessionId,
        reason: &str,
        event: &NewEvent,
    ) -> Result<bool, StoreError> {
        // $1 = id, $2 = user, $3 = reason; the event's values follow. The user is in
        // the WHERE clause: another user's id matches nothing, exactly like an
        // unknown one.
        let sql = format!(
            "WITH r AS (
                 UPDATE sessions SET revoked_at = {at}, revoked_reason = $3
                 WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL
                   AND idle_expires_at > {at} AND absolute_expires_at > {at}
                 RETURNING id, user_id
             )
             INSERT INTO security_events {EVENT_COLUMNS}
             SELECT gen_random_uuid(), r.user_id, r.id, {event} FROM r",
            at = event_at(3),
            event = event_values(3),
        );
        let done = bind_event(
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(id.0)
                .bind(user_id.0)
                .bind(reason),
            event,
        )
        .execute(&self.pool)
        .await?;
        self.revoked_here();
        Ok(done.rows_affected() == 1)
    }

    async fn revoke_user_sessions(
        &self,
        user_id: UserId,
        except: Option<SessionId>,
        reason: &str,
        event: &NewEvent,
    ) -> Result<u64, StoreError> {
        retry_once(|| self.revoke_user_sessions_once(user_id, except, reason, event)).await
    }
}

/// The transactions behind the methods above that `retry_once` may run twice.
impl PgStore {
    async fn revoke_user_sessions_once(
        &self,
        user_id: UserId,
        except: Option<SessionId>,
        reason: &str,
        event: &NewEvent,
    ) -> Result<u64, StoreError> {
        let mut tx = self.pool.begin().await?;
        // The user row first (the store's lock order): a sign-in finishing in a
        // trusted browser, or a password change, of the same person queues
        // instead of deadlocking with this on the sessions and devices.
        super::accounts::lock_user(&mut tx, user_id.0).await?;
        // A person signing devices out may be under attack: no browser keeps
        // skipping the code (the one they use signs in again with a code too).
        super::risk::untrust_all(&mut tx, user_id.0).await?;
        let n = revoke_all_of_user(&mut tx, user_id, except, reason, event).await?;
        // Nor does a change of address that someone who got in asked for: its
        // notice recommends signing the other devices out, and that must be enough.
        super::links::void_tokens(&mut tx, user_id.0, &["change"], event.at).await?;
        tx.commit().await?;
        self.revoked_here();
        Ok(n)
    }
}
