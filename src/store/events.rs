//! Security events: what happened to an account, written in the same transaction as
//! its cause (a sign-in and its event commit together or not at all). Personal fields
//! arrive sealed by the service; this file only stores them.

use async_trait::async_trait;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{PgStore, StoreError};
use crate::domain::{SessionId, UserId};

/// An event to record. The user and session it is about are given by the method
/// that records it (they may come from the same statement, e.g. a used link).
#[derive(Clone, Debug)]
pub struct NewEvent {
    /// `registered`, `signed_in`, `sign_in_failed`, `signed_out`, `session_revoked`,
    /// `password_reset`, `email_verified`, `email_change_requested`, `email_changed`.
    pub kind: &'static str,
    /// Who did it: `user`, `admin` or `system`.
    pub actor: &'static str,
    pub at: OffsetDateTime,
    /// Sealed client address and user agent of the request that caused it.
    pub ip_enc: Option<Vec<u8>>,
    pub user_agent_enc: Option<Vec<u8>>,
    /// Sealed `domain::Location` (JSON) of that address.
    pub location_enc: Option<Vec<u8>>,
    /// Not personal: e.g. why a session was revoked.
    pub detail: Option<String>,
}

/// The columns of an event row, for `INSERT INTO security_events {EVENT_COLUMNS} …`.
pub(super) const EVENT_COLUMNS: &str =
    "(id, user_id, session_id, kind, actor, at, ip_enc, user_agent_enc, location_enc, detail)";

/// The placeholders of an event's own values (kind, actor, at, ip, user agent,
/// location, detail) when `offset` parameters come before them, as `bind_event` binds them.
/// The row's id, user and session come first, from the statement: e.g.
/// `SELECT gen_random_uuid(), r.user_id, r.id, {event_values(2)} FROM r`.
pub(super) fn event_values(offset: usize) -> String {
    (1..=EVENT_PARAMS)
        .map(|i| format!("${}", offset + i))
        .collect::<Vec<_>>()
        .join(", ")
}

/// How many parameters `bind_event` binds.
pub(super) const EVENT_PARAMS: usize = 7;

/// The placeholder of the event's time, for statements that stamp other rows with it.
pub(super) fn event_at(offset: usize) -> String {
    format!("${}", offset + 3)
}

pub(super) type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;
pub(super) type PgQueryAs<'q, O> =
    sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>;

/// Binds an event's own values in the order `event_values` numbers them.
pub(super) fn bind_event<'q>(q: PgQuery<'q>, e: &'q NewEvent) -> PgQuery<'q> {
    q.bind(e.kind)
        .bind(e.actor)
        .bind(e.at)
        .bind(&e.ip_enc)
        .bind(&e.user_agent_enc)
        .bind(&e.location_enc)
        .bind(&e.detail)
}

/// `bind_event` for a statement that returns rows (`query_as`); sqlx's two query
/// types share no binding trait, so the order is written twice, here side by side.
pub(super) fn bind_event_as<'q, O>(q: PgQueryAs<'q, O>, e: &'q NewEvent) -> PgQueryAs<'q, O> {
    q.bind(e.kind)
        .bind(e.actor)
        .bind(e.at)
        .bind(&e.ip_enc)
        .bind(&e.user_agent_enc)
        .bind(&e.location_enc)
        .bind(&e.detail)
}

/// Records `e` for a user inside a transaction of the caller's.
pub(super) async fn insert_event(
    conn: &mut sqlx::PgConnection,
    user_id: Uuid,
    session_id: Option<Uuid>,
    e: &NewEvent,
) -> Result<(), sqlx::Error> {
    let sql = format!(
        "INSERT INTO security_events {EVENT_COLUMNS} VALUES (gen_random_uuid(), $1, $2, {})",
        event_values(2)
    );
    bind_event(
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(user_id)
            .bind(session_id),
        e,
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// A recorded event as the activity page shows it; personal fields still sealed.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct EventRecord {
    pub id: Uuid,
    pub session_id: Option<Uuid>,
    pub kind: String,
    pub actor: String,
    pub at: OffsetDateTime,
    pub ip_enc: Option<Vec<u8>>,
    pub user_agent_enc: Option<Vec<u8>>,
    pub location_enc: Option<Vec<u8>>,
    pub detail: Option<String>,
}

#[async_trait]
pub trait EventStore: Send + Sync {
    /// Records an event that has no other write to go with it (e.g. a failed
    /// sign-in: the attempt was counted before the password was checked).
    async fn record_event(
        &self,
        user_id: UserId,
        session_id: Option<SessionId>,
        event: &NewEvent,
    ) -> Result<(), StoreError>;
    /// The user's events, newest first: `limit` of them, after the event `before`
    /// (keyset pagination). `None` when `before` is not an event of this user's.
    async fn events_page(
        &self,
        user_id: UserId,
        before: Option<Uuid>,
        limit: i64,
    ) -> Result<Option<Vec<EventRecord>>, StoreError>;
}

#[async_trait]
impl EventStore for PgStore {
    async fn record_event(
        &self,
        user_id: UserId,
        session_id: Option<SessionId>,
        event: &NewEvent,
    ) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        insert_event(&mut conn, user_id.0, session_id.map(|s| s.0), event).await?;
        Ok(())
    }

    async fn events_page(
        &self,
        user_id: UserId,
        before: Option<Uuid>,
        limit: i64,
    ) -> Result<Option<Vec<EventRecord>>, StoreError> {
        let cursor: Option<(OffsetDateTime, Uuid)> = match before {
            None => None,
            Some(id) => {
                let found = sqlx::query_as(
                    "SELECT at, id FROM security_events WHERE id = $1 AND user_id = $2",
                )
                .bind(id)
                .bind(user_id.0)
                .fetch_optional(&self.pool)
                .await?;
                match found {
                    None => return Ok(None),
                    some => some,
                }
            }
        };
        let rows = sqlx::query_as(
            "SELECT id, session_id, kind, actor, at, ip_enc, user_agent_enc, location_enc, detail
             FROM security_events
             WHERE user_id = $1 AND ($2::timestamptz IS NULL OR (at, id) < ($2, $3))
             ORDER BY at DESC, id DESC
             LIMIT $4",
        )
        .bind(user_id.0)
        .bind(cursor.map(|c| c.0))
        .bind(cursor.map(|c| c.1))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(Some(rows))
    }
}
