//! The browser side of signing in with an upstream: round trips in progress, links
//! waiting for the person to prove the account, linking and unlinking identities,
//! accounts made from an upstream identity, and ending the sessions an upstream's
//! logout names. The upstreams themselves are `upstreams.rs`.

use async_trait::async_trait;
use time::OffsetDateTime;
use uuid::Uuid;

use super::accounts::UserRow;
use super::events::{EVENT_COLUMNS, NewEvent, bind_event, event_at, event_values, insert_event};
use super::links::{NewEmailToken, insert_token};
use super::outbox::insert_mails;
use super::pg::retry_once;
use super::{PgStore, StoreError, UserRecord};
use crate::domain::{Email, OutboundMail, SessionId, UserId};

/// A round trip about to leave for the upstream.
#[derive(Clone, Debug)]
pub struct NewRoundTrip {
    /// SHA-256 of the browser cookie's value.
    pub browser_hash: Vec<u8>,
    /// SHA-256 of the `state` sent.
    pub state_hash: Vec<u8>,
    pub upstream_id: Uuid,
    pub return_to: Option<String>,
    /// Connecting another upstream to this signed-in session's user.
    pub connect_session: Option<SessionId>,
    pub now: OffsetDateTime,
    pub expires_at: OffsetDateTime,
}

/// A round trip taken back at its callback (and so spent).
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct RoundTripRecord {
    pub return_to: Option<String>,
    pub connect_session_id: Option<Uuid>,
    pub created_at: OffsetDateTime,
}

/// An identity waiting for its account's owner to prove the account.
#[derive(Clone, Debug)]
pub struct NewPendingLink {
    pub browser_hash: Vec<u8>,
    pub upstream_id: Uuid,
    pub subject: String,
    pub email: Option<String>,
    pub user_id: UserId,
    pub return_to: Option<String>,
    pub now: OffsetDateTime,
    pub expires_at: OffsetDateTime,
}

/// A pending link taken back (and so spent).
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct PendingLinkRecord {
    pub upstream_id: Uuid,
    pub subject: String,
    pub email: Option<String>,
    pub user_id: Uuid,
    pub return_to: Option<String>,
    pub created_at: OffsetDateTime,
}

/// An identity to link to a user.
#[derive(Clone, Debug)]
pub struct NewIdentity {
    pub upstream_id: Uuid,
    pub subject: String,
    pub email: Option<String>,
    pub now: OffsetDateTime,
}

/// An account made from an upstream identity: no password; verified only when the
/// upstream said so.
pub struct NewFederatedAccount<'a> {
    pub user_id: UserId,
    pub email: Email,
    pub verified: bool,
    pub identity: NewIdentity,
    /// A verification link (an unverified address that must be confirmed).
    pub token: Option<NewEmailToken>,
    pub mails: &'a [OutboundMail],
    /// `registered`, then `upstream_linked`.
    pub registered: NewEvent,
    pub linked: NewEvent,
}

/// Which sessions an upstream's logout token names.
#[derive(Clone, Debug)]
pub enum UpstreamSessions<'a> {
    /// Those made from this upstream session (`sid`).
    Sid(&'a str),
    /// Every live session made from this upstream by the user linked to `sub`.
    Subject(&'a str),
}

/// An upstream's verified logout token, for `end_upstream_sessions`.
#[derive(Clone, Debug)]
pub struct UpstreamLogout<'a> {
    pub upstream_id: Uuid,
    pub which: UpstreamSessions<'a>,
    /// The token's `jti`, spent with the sessions' end, and how long it is kept.
    pub jti: &'a str,
    pub keep_until: OffsetDateTime,
    /// The sessions' revocation reason.
    pub reason: &'a str,
}

#[async_trait]
pub trait UpstreamFlowStore: Send + Sync {
    /// Keeps a round trip until its callback (one per browser: a newer one replaces
    /// it). Expired ones are swept on the way.
    async fn start_upstream_round_trip(&self, trip: &NewRoundTrip) -> Result<(), StoreError>;
    /// Takes the browser's round trip if `state` and the upstream match and it is
    /// still live: single use, whatever happens next.
    async fn take_upstream_round_trip(
        &self,
        browser_hash: &[u8],
        state_hash: &[u8],
        upstream_id: Uuid,
        now: OffsetDateTime,
    ) -> Result<Option<RoundTripRecord>, StoreError>;
    /// The identity's id and the account linked to (upstream, subject), if any.
    async fn account_of_identity(
        &self,
        upstream_id: Uuid,
        subject: &str,
    ) -> Result<Option<(Uuid, UserRecord)>, StoreError>;
    /// Creates the account and its link (and its verification link and mail), in one
    /// transaction. `Conflict` when the address or the identity is taken meanwhile.
    async fn create_federated_account(
        &self,
        account: NewFederatedAccount<'_>,
    ) -> Result<(), StoreError>;
    /// Keeps an identity waiting for its account's owner (one per browser).
    async fn hold_pending_link(&self, link: &NewPendingLink) -> Result<(), StoreError>;
    /// Takes the browser's pending link if still live: single use.
    async fn take_pending_link(
        &self,
        browser_hash: &[u8],
        upstream_id: Uuid,
        now: OffsetDateTime,
    ) -> Result<Option<PendingLinkRecord>, StoreError>;
    /// Spends the logout token's `jti` and ends the live sessions it names, each with
    /// `event`, through the same revocation as any other (its trigger tells the apps;
    /// every node's caches forget), and drops the second factors still waiting for
    /// sign-ins it names — all in one transaction, so a failure leaves the `jti`
    /// unspent for the upstream's retry. `None`: the `jti` was spent already (a
    /// replay), and nothing ends. Else how many sessions ended.
    async fn end_upstream_sessions(
        &self,
        logout: &UpstreamLogout<'_>,
        event: &NewEvent,
    ) -> Result<Option<u64>, StoreError>;
}

#[async_trait]
impl UpstreamFlowStore for PgStore {
    async fn start_upstream_round_trip(&self, t: &NewRoundTrip) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM upstream_round_trips WHERE expires_at <= $1")
            .bind(t.now)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO upstream_round_trips
                 (browser_hash, state_hash, upstream_id, return_to, connect_session_id,
                  created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (browser_hash) DO UPDATE SET
                 state_hash = EXCLUDED.state_hash, upstream_id = EXCLUDED.upstream_id,
                 return_to = EXCLUDED.return_to,
                 connect_session_id = EXCLUDED.connect_session_id,
                 created_at = EXCLUDED.created_at, expires_at = EXCLUDED.expires_at",
        )
        .bind(&t.browser_hash)
        .bind(&t.state_hash)
        .bind(t.upstream_id)
        .bind(&t.return_to)
        .bind(t.connect_session.map(|s| s.0))
        .bind(t.now)
        .bind(t.expires_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn take_upstream_round_trip(
        &self,
        browser_hash: &[u8],
        state_hash: &[u8],
        upstream_id: Uuid,
        now: OffsetDateTime,
    ) -> Result<Option<RoundTripRecord>, StoreError> {
        Ok(sqlx::query_as(
            "DELETE FROM upstream_round_trips
             WHERE browser_hash = $1 AND state_hash = $2 AND upstream_id = $3
               AND expires_at > $4
             RETURNING return_to, connect_session_id, created_at",
        )
        .bind(browser_hash)
        .bind(state_hash)
        .bind(upstream_id)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn account_of_identity(
        &self,
        upstream_id: Uuid,
        subject: &str,
    ) -> Result<Option<(Uuid, UserRecord)>, StoreError> {
        let row: Option<IdentityUserRow> = sqlx::query_as(
            "SELECT f.id AS identity_id, u.id, u.email, u.password_hash, u.disabled_at IS NOT NULL AS disabled,
                    u.email_verified_at IS NOT NULL AS verified
             FROM federated_identities f JOIN users u ON u.id = f.user_id
             WHERE f.upstream_id = $1 AND f.subject = $2",
        )
        .bind(upstream_id)
        .bind(subject)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| (r.identity_id, UserRecord::from(r.user))))
    }

    async fn create_federated_account(&self, a: NewFederatedAccount<'_>) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let now = a.identity.now;
        sqlx::query(
            "INSERT INTO users (id, email, email_verified_at, password_hash, is_admin, created_at, updated_at)
             VALUES ($1, $2, $3, NULL, false, $4, $4)",
        )
        .bind(a.user_id.0)
        .bind(a.email.as_str())
        .bind(a.verified.then_some(now))
        .bind(now)
        .execute(&mut *tx)
        .await?;
        insert_event(&mut tx, a.user_id.0, None, &a.registered).await?;
        if !insert_identity(&mut tx, a.user_id, &a.identity).await? {
            return Err(StoreError::Conflict);
        }
        insert_event(&mut tx, a.user_id.0, None, &a.linked).await?;
        if let Some(token) = &a.token {
            insert_token(&mut tx, token).await?;
        }
        insert_mails(&mut tx, &self.keys, a.mails, now).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn hold_pending_link(&self, l: &NewPendingLink) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM upstream_pending_links WHERE expires_at <= $1")
            .bind(l.now)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO upstream_pending_links
                 (browser_hash, upstream_id, subject, email, user_id, return_to, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (browser_hash) DO UPDATE SET
                 upstream_id = EXCLUDED.upstream_id, subject = EXCLUDED.subject,
                 email = EXCLUDED.email, user_id = EXCLUDED.user_id,
                 return_to = EXCLUDED.return_to, created_at = EXCLUDED.created_at,
                 expires_at = EXCLUDED.expires_at",
        )
        .bind(&l.browser_hash)
        .bind(l.upstream_id)
        .bind(&l.subject)
        .bind(&l.email)
        .bind(l.user_id.0)
        .bind(&l.return_to)
        .bind(l.now)
        .bind(l.expires_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn take_pending_link(
        &self,
        browser_hash: &[u8],
        upstream_id: Uuid,
        now: OffsetDateTime,
    ) -> Result<Option<PendingLinkRecord>, StoreError> {
        Ok(sqlx::query_as(
            "DELETE FROM upstream_pending_links
             WHERE browser_hash = $1 AND upstream_id = $2 AND expires_at > $3
             RETURNING upstream_id, subject, email, user_id, return_to, created_at",
        )
        .bind(browser_hash)
        .bind(upstream_id)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn end_upstream_sessions(
        &self,
        logout: &UpstreamLogout<'_>,
        event: &NewEvent,
    ) -> Result<Option<u64>, StoreError> {
        let ended = retry_once(|| self.end_upstream_sessions_once(logout, event)).await?;
        if ended.is_some() {
            self.revoked_here();
        }
        Ok(ended)
    }
}

impl PgStore {
    async fn end_upstream_sessions_once(
        &self,
        l: &UpstreamLogout<'_>,
        event: &NewEvent,
    ) -> Result<Option<u64>, StoreError> {
        let (by_sid, value) = match l.which {
            UpstreamSessions::Sid(sid) => (true, sid),
            UpstreamSessions::Subject(sub) => (false, sub),
        };
        let mut tx = self.pool.begin().await?;
        // §2.6: a `jti` seen before is a replay. Spent here, with the sessions' end,
        // not when the token was checked: if anything below fails, the whole
        // transaction goes and the upstream's retry still counts.
        let spent = sqlx::query(
            "INSERT INTO upstream_logout_jtis (upstream_id, jti, expires_at)
             VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(l.upstream_id)
        .bind(l.jti)
        .bind(l.keep_until)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if spent != 1 {
            return Ok(None);
        }
        // $1 = upstream, $2 = sid or subject, $3 = which, $4 = reason; the event's
        // values follow, and its time is the revocation's. Revoking the rows fires
        // `gatehouse_session_ended`, which queues the apps' back-channel logouts
        // and notifies every node, exactly as a revocation from the device list.
        let sql = format!(
            "WITH r AS (
                 UPDATE sessions SET revoked_at = {at}, revoked_reason = $4
                 WHERE upstream_id = $1 AND revoked_at IS NULL
                   AND idle_expires_at > {at} AND absolute_expires_at > {at}
                   AND CASE WHEN $3 THEN upstream_sid = $2
                            ELSE user_id = (SELECT user_id FROM federated_identities
                                            WHERE upstream_id = $1 AND subject = $2) END
                 RETURNING id, user_id
             )
             INSERT INTO security_events {EVENT_COLUMNS}
             SELECT gen_random_uuid(), r.user_id, r.id, {event} FROM r",
            at = event_at(4),
            event = event_values(4),
        );
        let done = bind_event(
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(l.upstream_id)
                .bind(value)
                .bind(by_sid)
                .bind(l.reason),
            event,
        )
        .execute(&mut *tx)
        .await?;
        // A sign-in from that upstream session still waiting for Gatehouse's own
        // second factor would otherwise make a session after the upstream ended it.
        sqlx::query(
            "DELETE FROM mfa_challenges
             WHERE kind = 'sign_in' AND upstream_id = $1
               AND CASE WHEN $3 THEN upstream_sid = $2
                        ELSE user_id = (SELECT user_id FROM federated_identities
                                        WHERE upstream_id = $1 AND subject = $2) END",
        )
        .bind(l.upstream_id)
        .bind(value)
        .bind(by_sid)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Some(done.rows_affected()))
    }
}

#[derive(sqlx::FromRow)]
struct IdentityUserRow {
    identity_id: Uuid,
    #[sqlx(flatten)]
    user: UserRow,
}

/// Inserts the link; `false` when (user, upstream) or (upstream, subject) is taken.
/// A link made while the account's address is unconfirmed is marked so: a password
/// reset removes it (`links.rs`).
async fn insert_identity(
    conn: &mut sqlx::PgConnection,
    user_id: UserId,
    i: &NewIdentity,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO federated_identities
             (id, upstream_id, subject, user_id, email, created_at, last_used_at,
              linked_unconfirmed)
         VALUES ($1, $2, $3, $4, $5, $6, $6,
                 (SELECT email_verified_at IS NULL FROM users WHERE id = $4))
         ON CONFLICT DO NOTHING",
    )
    .bind(Uuid::new_v4())
    .bind(i.upstream_id)
    .bind(&i.subject)
    .bind(user_id.0)
    .bind(&i.email)
    .bind(i.now)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}
