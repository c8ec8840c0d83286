//! What the contextual sign-in checks read (an account's recent history) and write
//! (flags on sessions, trusted browsers). Places stay sealed here; the service opens
//! them.

use async_trait::async_trait;
use time::OffsetDateTime;
use uuid::Uuid;

use super::events::{NewEvent, insert_event};
use super::outbox::insert_mails;
use super::throttle::{AttemptKeys, refund};
use super::{PgStore, StoreError};
use crate::domain::{DeviceId, OutboundMail, SessionId, UserId};

/// A session ended through "This wasn't me": its place and country do not count as
/// the owner's.
pub const REPORTED_REASON: &str = "reported by the owner";

/// What the checks ask about one attempt.
pub struct RiskQuery<'a> {
    pub user_id: UserId,
    /// SHA-256 of the device cookie the browser brought, if any.
    pub device_hash: Option<&'a [u8]>,
    /// The attempt's country as MACs under every key still accepted (empty: unknown).
    pub country_macs: &'a [Vec<u8>],
    /// The attempt's address throttle key (`sign_in_throttle`, scope `ip`).
    pub ip_key: &'a [u8],
    /// The attempt's own provisional failure event, not to be counted.
    pub own_failure: Uuid,
    /// Whether the attempt itself is in the address's count (a password attempt is
    /// counted before it is checked; a passkey assertion is not counted at all).
    pub own_counted: bool,
    pub now: OffsetDateTime,
    pub failure_window_secs: i32,
    pub ip_window_secs: i32,
    /// "Trust this browser" as long as it lasts now (`None`: turned off): trust
    /// given under a longer setting ends with the shorter one.
    pub trust_secs: Option<f64>,
}

/// The account's recent history; places sealed (`sessions.location`).
#[derive(Debug)]
pub struct RiskFacts {
    pub first_sign_in: bool,
    pub device_known: bool,
    pub device_trusted: bool,
    pub country_seen: bool,
    /// (sealed place, last seen) of the most recently used session with a place.
    pub last_active: Option<(Vec<u8>, OffsetDateTime)>,
    /// Sealed places of the live sessions (`sessions.location`), and of their
    /// step-ups elsewhere (`sessions.anchor`).
    pub live: Vec<Vec<u8>>,
    pub live_anchors: Vec<Vec<u8>>,
    pub recent_failures: i64,
    /// Failures counted against the address in its current window, this attempt's
    /// own count excluded.
    pub address_failures: i32,
}

#[derive(sqlx::FromRow)]
struct FactsRow {
    first_sign_in: bool,
    device_known: bool,
    device_trusted: bool,
    country_seen: bool,
    recent_failures: i64,
    address_failures: i32,
}

#[derive(sqlx::FromRow)]
struct PlaceRow {
    location_enc: Vec<u8>,
    anchor_enc: Option<Vec<u8>>,
    last_seen_at: OffsetDateTime,
    live: bool,
}

/// Why a session is flagged: the signals' names in the clear (nothing personal) and
/// the full wording, which names places, sealed.
#[derive(Clone, Debug)]
pub struct RiskFlag {
    pub summary: String,
    pub sealed: Vec<u8>,
}

/// Older sessions to flag when a session is born in another country than theirs.
pub struct FlagOthers {
    /// The new session's country, under every key still accepted.
    pub country_macs: Vec<Vec<u8>>,
    pub reason: RiskFlag,
    /// Recorded and mailed once, only if some session was flagged.
    pub notice: (NewEvent, OutboundMail),
}

/// Flags the user's live sessions (but `except`) whose country is known and is not
/// the new session's; records and mails the notice once if any was. Inside the
/// caller's transaction.
pub(super) async fn flag_other_countries(
    conn: &mut sqlx::PgConnection,
    keys: &crate::crypto::Keys,
    new: &super::sessions::NewSession,
    flag: &FlagOthers,
    born_flagged: bool,
) -> Result<u64, StoreError> {
    let (user_id, except, now) = (new.user_id, new.id, new.now);
    // A new session the checks stepped up (born flagged) proved a second factor: the
    // older sessions are only marked for their owner. One that was not (two sign-ins
    // from two countries weighed at the same moment, each seeing no other) cannot tell
    // which is the owner's: every session involved must prove itself again.
    let done = sqlx::query(
        "UPDATE sessions SET risk_flagged = true, risk_reason = $4, risk_flagged_at = $5,
                             risk_reason_enc = $6, risk_needs_proof = $7
         WHERE user_id = $1 AND id <> $2 AND revoked_at IS NULL
           AND idle_expires_at > $5 AND absolute_expires_at > $5
           AND country_mac IS NOT NULL AND NOT (country_mac = ANY($3))
           AND NOT risk_flagged",
    )
    .bind(user_id.0)
    .bind(except.0)
    .bind(&flag.country_macs)
    .bind(&flag.reason.summary)
    .bind(now)
    .bind(&flag.reason.sealed)
    .bind(!born_flagged)
    .execute(&mut *conn)
    .await?;
    let n = done.rows_affected();
    if n > 0 {
        // Two sign-ins from two countries at the same moment each see no other live
        // session when they are weighed; whichever commits second finds the other
        // here, and the new one is flagged too.
        sqlx::query(
            "UPDATE sessions SET risk_flagged = true, risk_reason = $2, risk_flagged_at = $3,
                                 risk_needs_proof = true
             WHERE id = $1 AND NOT risk_flagged",
        )
        .bind(except.0)
        .bind(&flag.reason.summary)
        .bind(now)
        .execute(&mut *conn)
        .await?;
        let (event, mail) = &flag.notice;
        insert_event(&mut *conn, user_id.0, Some(except.0), event).await?;
        insert_mails(conn, keys, std::slice::from_ref(mail), now).await?;
    }
    Ok(n)
}

/// A flagged session, for operators.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct FlaggedSession {
    pub id: Uuid,
    pub email: String,
    pub flagged_at: OffsetDateTime,
    pub reason: Option<String>,
    pub reason_enc: Option<Vec<u8>>,
    pub created_at: OffsetDateTime,
    pub revoked_at: Option<OffsetDateTime>,
    pub revoked_reason: Option<String>,
    pub ip_enc: Option<Vec<u8>>,
    pub location_enc: Option<Vec<u8>>,
}

/// A browser the user trusts to skip the code.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct TrustedDevice {
    pub id: Uuid,
    pub label_enc: Vec<u8>,
    pub trusted_at: OffsetDateTime,
    pub trusted_until: OffsetDateTime,
    pub last_seen_at: OffsetDateTime,
}

#[async_trait]
pub trait RiskStore: Send + Sync {
    /// The facts the contextual checks weigh for one attempt (two reads).
    async fn risk_facts(&self, q: &RiskQuery<'_>) -> Result<RiskFacts, StoreError>;
    /// Flags a live session that is not flagged yet (or proved a second factor since
    /// its flag), recording `event` and queueing `mail` in the same transaction;
    /// `false` (nothing written) when it is flagged and unproven, or gone, so a session
    /// is reported once however many requests show it.
    async fn flag_session(
        &self,
        id: SessionId,
        reason: &RiskFlag,
        event: &NewEvent,
        mail: &OutboundMail,
    ) -> Result<bool, StoreError>;
    /// Records a sign-in the checks blocked, with its mails, and takes back the
    /// attempt's throttle counts (the password was right), atomically.
    async fn sign_in_denied(
        &self,
        attempt: Option<&AttemptKeys>,
        user_id: UserId,
        event: &NewEvent,
        mails: &[OutboundMail],
    ) -> Result<(), StoreError>;
    /// Flagged sessions since `since`, newest first.
    async fn flagged_sessions(
        &self,
        since: Option<OffsetDateTime>,
    ) -> Result<Vec<FlaggedSession>, StoreError>;
    /// The user's trusted browsers, still trusted at `now`.
    async fn trusted_devices(
        &self,
        user_id: UserId,
        now: OffsetDateTime,
    ) -> Result<Vec<TrustedDevice>, StoreError>;
    /// Ends the trust of one of the user's devices; `false` if it is not theirs or
    /// not trusted (answered alike).
    async fn untrust_device(
        &self,
        user_id: UserId,
        device: DeviceId,
        event: &NewEvent,
    ) -> Result<bool, StoreError>;
}

/// Ends every trust of the user's browsers (a password change or reset), inside the
/// caller's transaction.
pub(super) async fn untrust_all(
    conn: &mut sqlx::PgConnection,
    user_id: Uuid,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE devices SET trusted_at = NULL, trusted_until = NULL
         WHERE user_id = $1 AND trusted_until IS NOT NULL",
    )
    .bind(user_id)
    .execute(conn)
    .await?;
    Ok(())
}

#[async_trait]
impl RiskStore for PgStore {
    async fn risk_facts(&self, q: &RiskQuery<'_>) -> Result<RiskFacts, StoreError> {
        let facts: FactsRow = sqlx::query_as(
            "SELECT
                 COALESCE((SELECT first_signed_in_at IS NULL FROM users WHERE id = $1), true)
                     AS first_sign_in,
                 EXISTS (SELECT 1 FROM devices WHERE user_id = $1 AND token_hash = $2)
                     AS device_known,
                 EXISTS (SELECT 1 FROM devices
                         WHERE user_id = $1 AND token_hash = $2 AND trusted_until > $6
                           AND trusted_at + make_interval(secs => $10) > $6)
                     AS device_trusted,
                 EXISTS (SELECT 1 FROM sessions
                         WHERE user_id = $1 AND country_mac = ANY($3)
                           AND revoked_reason IS DISTINCT FROM $9)
                     AS country_seen,
                 (SELECT count(*) FROM security_events
                  WHERE user_id = $1 AND kind = 'sign_in_failed' AND id <> $5
                    AND at > $6 - make_interval(secs => $7))
                     AS recent_failures,
                 COALESCE((SELECT GREATEST(failures - $11, 0) FROM sign_in_throttle
                           WHERE scope = 'ip' AND key = $4
                             AND window_started_at + make_interval(secs => $8) > $6), 0)
                     AS address_failures",
        )
        .bind(q.user_id.0)
        .bind(q.device_hash)
        .bind(q.country_macs)
        .bind(q.ip_key)
        .bind(q.own_failure)
        .bind(q.now)
        .bind(f64::from(q.failure_window_secs))
        .bind(f64::from(q.ip_window_secs))
        .bind(REPORTED_REASON)
        .bind(q.trust_secs)
        .bind(i32::from(q.own_counted))
        .fetch_one(&self.pool)
        .await?;
        // The last place the user was active, and every live session's place (a
        // hundred at most: more live sessions than that is itself a flag elsewhere).
        let places: Vec<PlaceRow> = sqlx::query_as(
            "SELECT location_enc, anchor_enc, last_seen_at, live FROM (
                 SELECT location_enc, anchor_enc, last_seen_at,
                        (revoked_at IS NULL AND idle_expires_at > $2
                         AND absolute_expires_at > $2) AS live,
                        row_number() OVER (ORDER BY last_seen_at DESC) AS rank
                 FROM sessions
                 WHERE user_id = $1 AND location_enc IS NOT NULL
                   AND revoked_reason IS DISTINCT FROM $3
             ) s
             WHERE live OR rank = 1
             ORDER BY last_seen_at DESC
             LIMIT 100",
        )
        .bind(q.user_id.0)
        .bind(q.now)
        .bind(REPORTED_REASON)
        .fetch_all(&self.pool)
        .await?;
        let last_active = places
            .first()
            .map(|p| (p.location_enc.clone(), p.last_seen_at));
        Ok(RiskFacts {
            first_sign_in: facts.first_sign_in,
            device_known: facts.device_known,
            device_trusted: facts.device_trusted,
            country_seen: facts.country_seen,
            last_active,
            live_anchors: places
                .iter()
                .filter(|p| p.live)
                .filter_map(|p| p.anchor_enc.clone())
                .collect(),
            live: places
                .into_iter()
                .filter(|p| p.live)
                .map(|p| p.location_enc)
                .collect(),
            recent_failures: facts.recent_failures,
            address_failures: facts.address_failures,
        })
    }

    async fn flag_session(
        &self,
        id: SessionId,
        reason: &RiskFlag,
        event: &NewEvent,
        mail: &OutboundMail,
    ) -> Result<bool, StoreError> {
        let now = event.at;
        let mut tx = self.pool.begin().await?;
        let user: Option<Uuid> = sqlx::query_scalar(
            "UPDATE sessions SET risk_flagged = true, risk_reason = $2, risk_flagged_at = $3,
                                 risk_reason_enc = $4, risk_needs_proof = true
             WHERE id = $1 AND revoked_at IS NULL
               AND (NOT risk_flagged OR NOT risk_needs_proof
                    OR (aal = 'aal2' AND aal_reached_at >= risk_flagged_at))
             RETURNING user_id",
        )
        .bind(id.0)
        .bind(&reason.summary)
        .bind(now)
        .bind(&reason.sealed)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(user) = user else {
            return Ok(false);
        };
        insert_event(&mut tx, user, Some(id.0), event).await?;
        insert_mails(&mut tx, &self.keys, std::slice::from_ref(mail), now).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn sign_in_denied(
        &self,
        attempt: Option<&AttemptKeys>,
        user_id: UserId,
        event: &NewEvent,
        mails: &[OutboundMail],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        insert_event(&mut tx, user_id.0, None, event).await?;
        insert_mails(&mut tx, &self.keys, mails, event.at).await?;
        if let Some(attempt) = attempt {
            refund(&mut tx, attempt).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn flagged_sessions(
        &self,
        since: Option<OffsetDateTime>,
    ) -> Result<Vec<FlaggedSession>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT s.id, u.email, s.risk_flagged_at AS flagged_at, s.risk_reason AS reason,
                    s.risk_reason_enc AS reason_enc, s.created_at, s.revoked_at, s.revoked_reason, s.ip_enc, s.location_enc
             FROM sessions s JOIN users u ON u.id = s.user_id
             WHERE s.risk_flagged AND ($1::timestamptz IS NULL OR s.risk_flagged_at >= $1)
             ORDER BY s.risk_flagged_at DESC, s.id",
        )
        .bind(since)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn trusted_devices(
        &self,
        user_id: UserId,
        now: OffsetDateTime,
    ) -> Result<Vec<TrustedDevice>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT id, label_enc, trusted_at, trusted_until, last_seen_at FROM devices
             WHERE user_id = $1 AND trusted_until > $2
             ORDER BY last_seen_at DESC, id",
        )
        .bind(user_id.0)
        .bind(now)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn untrust_device(
        &self,
        user_id: UserId,
        device: DeviceId,
        event: &NewEvent,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE devices SET trusted_at = NULL, trusted_until = NULL
             WHERE id = $1 AND user_id = $2 AND trusted_until > $3",
        )
        .bind(device.0)
        .bind(user_id.0)
        .bind(event.at)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        insert_event(&mut tx, user_id.0, None, event).await?;
        tx.commit().await?;
        Ok(true)
    }
}
