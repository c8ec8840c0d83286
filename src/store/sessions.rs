//! Browser sessions: the rows every authenticated request re-checks.

use async_trait::async_trait;
use time::OffsetDateTime;
use uuid::Uuid;

use super::accounts::lock_live_user;
use super::devices::{DeviceLink, link_device};
use super::events::{
    EVENT_COLUMNS, NewEvent, PgQuery, bind_event, event_at, event_values, insert_event,
};
use super::pg::retry_once;
use super::risk::{FlagOthers, RiskFlag, flag_other_countries};
use super::throttle::{AttemptKeys, refund};
use super::{PgStore, StoreError};
use crate::crypto::Keys;
use crate::domain::{DeviceId, SessionId, UserId};

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
    /// Sealed `domain::Location` (JSON).
    pub location_enc: Option<Vec<u8>>,
    /// Keyed HMACs of the address and of the country code ("seen before").
    pub ip_mac: Vec<u8>,
    pub country_mac: Option<Vec<u8>>,
    /// SHA-256 of the `gh_login` mark the sign-in came back with (see
    /// `domain::oauth::login_mark_hash`).
    pub login_mark: Option<Vec<u8>>,
    /// Why the contextual checks stepped this sign-in up: the session is born
    /// flagged with it.
    pub risk_flag: Option<RiskFlag>,
    /// The upstream session it was made from, for a sign-in through another
    /// identity provider: that upstream's back-channel logout ends it.
    pub upstream: Option<UpstreamOrigin>,
}

/// Where an upstream sign-in came from: the upstream (`upstreams.id`) and, when its
/// ID token carried one, the upstream's session id (`sid`, OIDC Back-Channel Logout
/// 1.0 §2.4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamOrigin {
    pub upstream_id: Uuid,
    pub sid: Option<String>,
    /// The upstream's `sub`, when known here: the session is made only while that
    /// identity is still linked to the user (else only while the user has one there).
    pub subject: Option<String>,
}

/// A sign-in to complete: the session, the browser's earlier session it replaces,
/// its device and its event.
pub struct SignIn {
    pub session: NewSession,
    pub replaces: Option<SessionId>,
    pub device: DeviceLink,
    pub event: NewEvent,
    /// Live sessions of the user in other countries are flagged (two countries at
    /// once), with one notice.
    pub flag_others: Option<FlagOthers>,
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
    /// When the session last proved a second factor (or signed in).
    pub aal_reached_at: OffsetDateTime,
    pub amr: Vec<String>,
    pub remember_me: bool,
    /// SHA-256 of the authorization request mark this session's sign-in answered.
    pub login_mark: Option<Vec<u8>>,
    /// Keyed MAC of the country the session signed in from (`None`: unknown place).
    pub country_mac: Option<Vec<u8>>,
    /// Keyed MAC of the address the session signed in from.
    pub ip_mac: Option<Vec<u8>>,
    /// When the contextual checks flagged the session, if they did.
    pub risk_flagged_at: Option<OffsetDateTime>,
    /// The flag asks for a second factor again (not only a word to the owner).
    pub risk_needs_proof: bool,
    /// Sealed place of its last step-up in another country (see the migration).
    pub anchor_enc: Option<Vec<u8>>,
    /// Bound to a browser key (DBSC): every request needs a live bound cookie.
    pub dbsc: Option<BoundCookies>,
    /// The user is an administrator.
    pub is_admin: bool,
}

/// The bound cookies a device-bound session accepts: the current one and, until it
/// lapses, the one before it (requests already under way when a refresh lands).
#[derive(Clone, Debug)]
pub struct BoundCookies {
    pub current: (Vec<u8>, OffsetDateTime),
    pub previous: Option<(Vec<u8>, OffsetDateTime)>,
}

impl BoundCookies {
    /// When the bound cookie `hash` names lapses (or lapsed), if it is one of the two.
    pub fn lapses(&self, hash: &[u8]) -> Option<OffsetDateTime> {
        [Some(&self.current), self.previous.as_ref()]
            .into_iter()
            .flatten()
            .find(|(h, _)| crate::crypto::constant_time_eq(h, hash))
            .map(|(_, until)| *until)
    }
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
    aal_reached_at: OffsetDateTime,
    amr: Vec<String>,
    remember_me: bool,
    login_mark: Option<Vec<u8>>,
    country_mac: Option<Vec<u8>>,
    ip_mac: Option<Vec<u8>>,
    risk_flagged_at: Option<OffsetDateTime>,
    risk_needs_proof: bool,
    anchor_enc: Option<Vec<u8>>,
    dbsc_cookie_hash: Option<Vec<u8>>,
    dbsc_cookie_expires_at: Option<OffsetDateTime>,
    dbsc_prev_cookie_hash: Option<Vec<u8>>,
    dbsc_prev_cookie_expires_at: Option<OffsetDateTime>,
    is_admin: bool,
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
            aal_reached_at: r.aal_reached_at,
            amr: r.amr,
            remember_me: r.remember_me,
            login_mark: r.login_mark,
            country_mac: r.country_mac,
            ip_mac: r.ip_mac,
            risk_flagged_at: r.risk_flagged_at,
            risk_needs_proof: r.risk_needs_proof,
            anchor_enc: r.anchor_enc,
            dbsc: r
                .dbsc_cookie_hash
                .zip(r.dbsc_cookie_expires_at)
                .map(|current| BoundCookies {
                    current,
                    previous: r.dbsc_prev_cookie_hash.zip(r.dbsc_prev_cookie_expires_at),
                }),
            is_admin: r.is_admin,
        }
    }
}

/// The session columns and their parameters `$1`–`$21`, as bound by `bind_session`.
const SESSION_COLUMNS: &str = "(id, token_hash, user_id, created_at, last_seen_at,
     idle_timeout_secs, idle_expires_at, absolute_expires_at, remember_me,
     auth_time, aal, aal_reached_at, amr, ip_enc, user_agent_enc,
     location_enc, ip_mac, country_mac, device_id, login_mark,
     risk_flagged, risk_reason, risk_flagged_at, risk_reason_enc,
     upstream_id, upstream_sid)";
const SESSION_VALUES: &str =
    "$1, $2, $3, $4, $4, $5, $6, $7, $8, $4, $9, $4, $10, $11, $12, $13, $14,
     $15, $16, $17, $18::text IS NOT NULL, $18, CASE WHEN $18::text IS NOT NULL THEN $4 END, $19,
     $20, $21";

fn bind_session<'q>(q: PgQuery<'q>, s: &'q NewSession, device: DeviceId) -> PgQuery<'q> {
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
        .bind(&s.location_enc)
        .bind(&s.ip_mac)
        .bind(&s.country_mac)
        .bind(device.0)
        .bind(&s.login_mark)
        .bind(s.risk_flag.as_ref().map(|f| &f.summary))
        .bind(s.risk_flag.as_ref().map(|f| &f.sealed))
        .bind(s.upstream.as_ref().map(|u| u.upstream_id))
        .bind(s.upstream.as_ref().and_then(|u| u.sid.as_deref()))
}

/// Creates a signed-in session inside the caller's transaction: links its device
/// (mailing a new-device notice when it applies), inserts the row, revokes the
/// browser's earlier session and records the sign-in.
pub(super) async fn insert_signed_in(
    conn: &mut sqlx::PgConnection,
    store: &PgStore,
    s: &SignIn,
) -> Result<(), StoreError> {
    let keys: &Keys = &store.keys;
    let session = &s.session;
    let (device, _) = link_device(
        conn,
        keys,
        session.user_id,
        session.id,
        &s.device,
        session.now,
    )
    .await?;
    let sql = format!("INSERT INTO sessions {SESSION_COLUMNS} VALUES ({SESSION_VALUES})");
    bind_session(sqlx::query(sqlx::AssertSqlSafe(sql)), session, device)
        .execute(&mut *conn)
        .await?;
    // One browser, one session: the browser's earlier session (whoever's it was) and
    // every live session of this person on the same device (a double-submitted form
    // made one a moment ago), locked in key order. The person's own keep their apps.
    let replaced: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM sessions
         WHERE revoked_at IS NULL AND id <> $1
           AND (id = $2 OR (user_id = $3 AND device_id = $4))
         ORDER BY id FOR NO KEY UPDATE",
    )
    .bind(session.id.0)
    .bind(s.replaces.map(|r| r.0))
    .bind(session.user_id.0)
    .bind(device.0)
    .fetch_all(&mut *conn)
    .await?;
    for old in replaced {
        move_grants_to(conn, SessionId(old), session).await?;
        revoke_replaced(conn, SessionId(old), session.now).await?;
    }
    if store.max_sessions_per_user > 0 {
        end_sessions_past_cap(conn, session, store.max_sessions_per_user).await?;
    }
    if let Some(flag) = &s.flag_others {
        let born_flagged = session.risk_flag.is_some();
        flag_other_countries(conn, keys, session, flag, born_flagged).await?;
    }
    insert_event(conn, session.user_id.0, Some(session.id.0), &s.event).await?;
    Ok(())
}

/// When the same person signs in again in the same browser (an app's `prompt=login`
/// or `max_age`), the apps signed in through the earlier session stay signed in: their
/// grants and unspent codes move to the new session before the old one ends, so its
/// end sends them no logout token and their refresh tokens keep working (their next
/// tokens name the new `sid`). Each grant keeps the `sid` its app was first told
/// (`told_sid`), which later logout tokens and `id_token_hint`s name. Another person's sign-in moves nothing. Locks the old
/// session row, then its codes, then its grants (the store's lock order).
async fn move_grants_to(
    conn: &mut sqlx::PgConnection,
    old: SessionId,
    new: &NewSession,
) -> Result<(), sqlx::Error> {
    let same_person: Option<Uuid> = sqlx::query_scalar(
        "SELECT id FROM sessions WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL
         FOR NO KEY UPDATE",
    )
    .bind(old.0)
    .bind(new.user_id.0)
    .fetch_optional(&mut *conn)
    .await?;
    if same_person.is_none() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE oauth_codes SET session_id = $2
         WHERE code_hash IN (SELECT code_hash FROM oauth_codes WHERE session_id = $1
                             AND used_at IS NULL ORDER BY code_hash FOR UPDATE)",
    )
    .bind(old.0)
    .bind(new.id.0)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "UPDATE oauth_grants SET told_sid = COALESCE(told_sid, session_id), session_id = $2
         WHERE id IN (SELECT id FROM oauth_grants WHERE session_id = $1 AND revoked_at IS NULL
                      ORDER BY id FOR UPDATE)",
    )
    .bind(old.0)
    .bind(new.id.0)
    .execute(&mut *conn)
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
         SELECT gen_random_uuid(), r.user_id, r.id, 'session_revoked', 'system', $2, $3 FROM r",
    )
    .bind(old.0)
    .bind(now)
    .bind(REPLACED_REASON)
    .execute(conn)
    .await?;
    Ok(())
}

/// Why a session ended when its person signed in once more than the cap allows.
pub const CAP_REASON: &str = "session limit reached";

/// Ends the person's live sessions past the cap (the new one counts, and stays): the
/// least recently active first, each through the same revocation as any other (the
/// `sessions_ended` trigger revokes its tokens, queues its back-channel logouts and
/// tells every node's caches), with an event, and marked for the device list's
/// notice. The caller holds the user row's lock, so two sign-ins cannot both keep a
/// session the other counted.
async fn end_sessions_past_cap(
    conn: &mut sqlx::PgConnection,
    new: &NewSession,
    cap: u32,
) -> Result<(), sqlx::Error> {
    let past: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM sessions WHERE id IN (
             SELECT id FROM sessions
             WHERE user_id = $1 AND id <> $2 AND revoked_at IS NULL
               AND idle_expires_at > $3 AND absolute_expires_at > $3
             ORDER BY last_seen_at DESC, created_at DESC, id
             OFFSET $4)
         ORDER BY id FOR NO KEY UPDATE",
    )
    .bind(new.user_id.0)
    .bind(new.id.0)
    .bind(new.now)
    .bind(i64::from(cap) - 1)
    .fetch_all(&mut *conn)
    .await?;
    for old in past {
        sqlx::query(
            "WITH r AS (
                 UPDATE sessions SET revoked_at = $2, revoked_reason = $3, cap_notice_due = true
                 WHERE id = $1 AND revoked_at IS NULL
                 RETURNING id, user_id
             )
             INSERT INTO security_events (id, user_id, session_id, kind, actor, at, detail)
             SELECT gen_random_uuid(), r.user_id, r.id, 'session_revoked', 'system', $2, $3 FROM r",
        )
        .bind(old)
        .bind(new.now)
        .bind(CAP_REASON)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

#[async_trait]
pub trait SessionStore: Send + Sync {
    /// The sealed user agents of the person's sessions the cap ended that the device
    /// list has not told them of yet; marks them told.
    async fn take_cap_notices(&self, user_id: UserId) -> Result<Vec<Option<Vec<u8>>>, StoreError>;
    /// Completes a sign-in in one transaction: takes back the attempt's throttle
    /// counts and provisional failure event (the password was right), then — provided
    /// the user's password hash is still `password_hash` and the user is enabled (a
    /// reset or disabling that landed meanwhile wins) — links the device, creates the
    /// session, revokes the browser's earlier session and records the sign-in.
    /// Returns whether the session was created.
    async fn sign_in_succeeded(
        &self,
        attempt: &AttemptKeys,
        password_hash: &str,
        sign_in: &SignIn,
    ) -> Result<bool, StoreError>;
    /// Completes a sign-in proven without a password here (an upstream identity
    /// provider's), in one transaction: provided the user is enabled, links the
    /// device, creates the session, revokes the browser's earlier session and
    /// records the sign-in. Returns whether the session was created.
    async fn signed_in(&self, sign_in: &SignIn) -> Result<bool, StoreError>;
    /// The live session behind a cookie token hash: not revoked, not expired, user not
    /// disabled. One indexed read.
    async fn live_session(
        &self,
        token_hash: &[u8],
        now: OffsetDateTime,
    ) -> Result<Option<SessionRecord>, StoreError>;
    /// Records activity: last-seen and a new idle expiry (never past the absolute one).
    async fn touch_session(&self, id: SessionId, now: OffsetDateTime) -> Result<(), StoreError>;
    /// Spends the session's authorization-request mark if it is `mark`; false when it
    /// is not (already spent by a parallel request, or another mark).
    async fn spend_login_mark(&self, id: SessionId, mark: &[u8]) -> Result<bool, StoreError>;
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
    async fn take_cap_notices(&self, user_id: UserId) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        Ok(sqlx::query_scalar(
            "UPDATE sessions SET cap_notice_due = false
             WHERE user_id = $1 AND cap_notice_due
             RETURNING user_agent_enc",
        )
        .bind(user_id.0)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn sign_in_succeeded(
        &self,
        attempt: &AttemptKeys,
        password_hash: &str,
        sign_in: &SignIn,
    ) -> Result<bool, StoreError> {
        retry_once(|| self.sign_in_succeeded_once(attempt, password_hash, sign_in)).await
    }

    async fn signed_in(&self, sign_in: &SignIn) -> Result<bool, StoreError> {
        retry_once(|| self.signed_in_once(sign_in)).await
    }

    async fn live_session(
        &self,
        token_hash: &[u8],
        now: OffsetDateTime,
    ) -> Result<Option<SessionRecord>, StoreError> {
        let row: Option<SessionRow> = sqlx::query_as(
            "SELECT s.id, s.user_id, u.email, s.created_at, s.last_seen_at, s.idle_expires_at,
                    s.absolute_expires_at, s.auth_time, s.aal, s.aal_reached_at, s.amr, s.remember_me,
                    s.login_mark, s.country_mac, s.ip_mac, s.risk_flagged_at,
                    s.risk_needs_proof, s.anchor_enc, s.dbsc_cookie_hash,
                    s.dbsc_cookie_expires_at, s.dbsc_prev_cookie_hash,
                    s.dbsc_prev_cookie_expires_at, u.is_admin
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

    async fn spend_login_mark(&self, id: SessionId, mark: &[u8]) -> Result<bool, StoreError> {
        let done =
            sqlx::query("UPDATE sessions SET login_mark = NULL WHERE id = $1 AND login_mark = $2")
                .bind(id.0)
                .bind(mark)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() == 1)
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
        self.revoked_here();
        Ok(done.rows_affected() == 1)
    }
}

/// The transactions behind the methods above that `retry_once` may run twice.
impl PgStore {
    async fn sign_in_succeeded_once(
        &self,
        attempt: &AttemptKeys,
        password_hash: &str,
        sign_in: &SignIn,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        // The row lock holds off a password reset or a disabling until this commits,
        // and one that committed first makes the check fail. It is the lock
        // `link_device` needs too (taken here first, so two sign-ins of one user
        // queue instead of deadlocking on an upgrade); foreign-key checks (KEY
        // SHARE) do not conflict with it.
        let current = lock_live_user(&mut tx, sign_in.session.user_id, Some(password_hash)).await?;
        if current {
            insert_signed_in(&mut tx, self, sign_in).await?;
        }
        // Last, so the throttle rows (shared by everyone behind one address) are
        // locked only for the moment before the commit.
        refund(&mut tx, attempt).await?;
        tx.commit().await?;
        Ok(current)
    }

    async fn signed_in_once(&self, sign_in: &SignIn) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        // The user row first, as every sign-in: a disabling that committed first wins.
        if !lock_live_user(&mut tx, sign_in.session.user_id, None).await? {
            return Ok(false);
        }
        if let Some(origin) = &sign_in.session.upstream
            && !still_linked(&mut tx, sign_in.session.user_id, origin).await?
        {
            return Ok(false);
        }
        insert_signed_in(&mut tx, self, sign_in).await?;
        tx.commit().await?;
        Ok(true)
    }
}

/// Whether the upstream identity a sign-in came from is still linked to the user,
/// under the user row's lock (an unlink takes it too, so one of the two sees the
/// other). The upstream row is held against deletion until the session is in, so
/// deleting the upstream either revokes the new session or comes first and makes
/// none (never a foreign-key failure).
async fn still_linked(
    conn: &mut sqlx::PgConnection,
    user_id: UserId,
    origin: &UpstreamOrigin,
) -> Result<bool, sqlx::Error> {
    let upstream: Option<Uuid> =
        sqlx::query_scalar("SELECT id FROM upstreams WHERE id = $1 FOR KEY SHARE")
            .bind(origin.upstream_id)
            .fetch_optional(&mut *conn)
            .await?;
    if upstream.is_none() {
        return Ok(false);
    }
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM federated_identities
                        WHERE user_id = $1 AND upstream_id = $2
                          AND ($3::text IS NULL OR subject = $3))",
    )
    .bind(user_id.0)
    .bind(origin.upstream_id)
    .bind(origin.subject.as_deref())
    .fetch_one(&mut *conn)
    .await
}
