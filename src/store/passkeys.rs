//! Passkeys: the credentials, the ceremonies between their two requests, and the
//! rules a use must pass under lock (a higher sign counter, not suspected of being
//! copied, its owner enabled).

use async_trait::async_trait;
use time::OffsetDateTime;
use uuid::Uuid;

use super::accounts::lock_live_user;
use super::events::{NewEvent, insert_event};
use super::mfa::{KeepSession, factor_changed};
use super::outbox::insert_mails;
use super::pg::retry_once;
use super::risk::RiskFlag;
use super::sessions::{SignIn, insert_signed_in};
use super::{PgStore, StoreError};
use crate::domain::{OutboundMail, SessionId, UserId};

/// A stored passkey.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct PasskeyRecord {
    pub id: Uuid,
    pub user_id: Uuid,
    pub credential_id: Vec<u8>,
    pub name: String,
    /// webauthn-rs's `Passkey`, as JSON.
    pub credential: String,
    pub sign_count: i64,
    pub backup_eligible: bool,
    pub backup_state: bool,
    pub created_at: OffsetDateTime,
    pub last_used_at: Option<OffsetDateTime>,
    pub clone_suspected_at: Option<OffsetDateTime>,
}

/// A passkey with the account it belongs to, as a sign-in finds it.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct PasskeyOwner {
    #[sqlx(flatten)]
    pub passkey: PasskeyRecord,
    pub email: String,
    pub disabled: bool,
    pub verified: bool,
}

/// A passkey to add.
pub struct NewPasskey {
    pub id: Uuid,
    pub user_id: UserId,
    pub credential_id: Vec<u8>,
    pub name: String,
    pub credential: String,
    pub sign_count: i64,
    pub backup_eligible: bool,
    pub backup_state: bool,
    pub now: OffsetDateTime,
}

/// A ceremony between its two requests.
pub struct NewCeremony {
    pub id: Uuid,
    /// `register`, `sign_in`, `second_factor`, `step_up`.
    pub purpose: &'static str,
    pub user_id: Option<UserId>,
    pub session_id: Option<SessionId>,
    pub challenge_id: Option<Uuid>,
    /// webauthn-rs's ceremony state, as JSON.
    pub state: String,
    pub now: OffsetDateTime,
    pub expires_at: OffsetDateTime,
}

/// A ceremony taken (it is gone from the table: it works once).
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct CeremonyRecord {
    pub user_id: Option<Uuid>,
    pub session_id: Option<Uuid>,
    pub challenge_id: Option<Uuid>,
    pub state: String,
}

/// A verified use of a passkey, applied only if it still holds under the row lock.
#[derive(Clone, Debug)]
pub struct PasskeyUse {
    pub passkey_id: Uuid,
    pub user_id: UserId,
    /// The authenticator's sign counter in this assertion.
    pub counter: i64,
    pub backup_eligible: bool,
    pub backup_state: bool,
    /// The credential with its counter and flags brought up to date.
    pub credential: String,
    pub at: OffsetDateTime,
}

/// Records a use of a passkey: only for a counter above the stored one (or both
/// zero: an authenticator without a counter, whose assertions the single-use
/// ceremony keeps from being replayed), and never for one suspected of being copied.
/// The row lock makes two parallel uses of one assertion queue; the second finds the
/// counter taken.
pub(super) async fn record_use(
    conn: &mut sqlx::PgConnection,
    u: &PasskeyUse,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE passkeys SET sign_count = $3, backup_eligible = $4, backup_state = $5,
                             credential = $6, last_used_at = $7
         WHERE id = $1 AND user_id = $2 AND clone_suspected_at IS NULL
           AND ($3 > sign_count OR ($3 = 0 AND sign_count = 0))",
    )
    .bind(u.passkey_id)
    .bind(u.user_id.0)
    .bind(u.counter)
    .bind(u.backup_eligible)
    .bind(u.backup_state)
    .bind(&u.credential)
    .bind(u.at)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Notes the passkey a session proved itself with.
pub(super) async fn mark_session(
    conn: &mut sqlx::PgConnection,
    session_id: SessionId,
    passkey_id: Uuid,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE sessions SET passkey_id = $2 WHERE id = $1")
        .bind(session_id.0)
        .bind(passkey_id)
        .execute(conn)
        .await?;
    Ok(())
}

const PASSKEY_COLUMNS: &str = "p.id, p.user_id, p.credential_id, p.name, p.credential,
    p.sign_count, p.backup_eligible, p.backup_state, p.created_at, p.last_used_at,
    p.clone_suspected_at";

#[async_trait]
pub trait PasskeyStore: Send + Sync {
    /// The user's passkeys, oldest first.
    async fn passkeys(&self, user_id: UserId) -> Result<Vec<PasskeyRecord>, StoreError>;
    /// The passkey with this credential id, with its owner.
    async fn passkey_by_credential(
        &self,
        credential_id: &[u8],
    ) -> Result<Option<PasskeyOwner>, StoreError>;
    /// Keeps a ceremony's state until it is finished (or expires).
    async fn begin_ceremony(&self, c: &NewCeremony) -> Result<(), StoreError>;
    /// Takes a live ceremony of this purpose: deleted in the same statement, so it
    /// is finished at most once, whatever the outcome.
    async fn take_ceremony(
        &self,
        id: Uuid,
        purpose: &str,
        now: OffsetDateTime,
    ) -> Result<Option<CeremonyRecord>, StoreError>;
    /// Adds a passkey to an enabled account, with its event and notice, and applies
    /// `factor_changed` (`keep` is the acting session). False, with nothing changed,
    /// if the account was disabled or the acting session ended meanwhile (a "sign out
    /// everywhere" that landed first wins). `Conflict` if the credential id is
    /// registered already (to anyone).
    async fn add_passkey(
        &self,
        p: &NewPasskey,
        event: &NewEvent,
        keep: &KeepSession,
        mails: &[OutboundMail],
    ) -> Result<bool, StoreError>;
    /// Renames one of the user's passkeys; `false` if it is not theirs.
    async fn rename_passkey(
        &self,
        user_id: UserId,
        id: Uuid,
        name: &str,
    ) -> Result<bool, StoreError>;
    /// Removes one of the user's passkeys with its event and notice, and applies
    /// `factor_changed` (`keep` is the acting session); `false`, with nothing
    /// changed, if it is not theirs, the account was disabled or the acting session
    /// ended meanwhile.
    async fn remove_passkey(
        &self,
        user_id: UserId,
        id: Uuid,
        event: &NewEvent,
        keep: &KeepSession,
        mails: &[OutboundMail],
    ) -> Result<bool, StoreError>;
    /// A passkey sign-in: the use is recorded and the session created in one
    /// transaction, provided the account is enabled and the use still holds.
    async fn passkey_signed_in(&self, u: &PasskeyUse, sign_in: &SignIn)
    -> Result<bool, StoreError>;
    /// A counter that went backwards: the passkey is marked as possibly copied, and
    /// every live session it proved (and `current`, the one that tried it) must
    /// prove itself again, with one event and one notice.
    async fn passkey_clone_suspected(
        &self,
        passkey_id: Uuid,
        user_id: UserId,
        current: Option<SessionId>,
        reason: &RiskFlag,
        event: &NewEvent,
        mails: &[OutboundMail],
    ) -> Result<(), StoreError>;
}

#[async_trait]
impl PasskeyStore for PgStore {
    async fn passkeys(&self, user_id: UserId) -> Result<Vec<PasskeyRecord>, StoreError> {
        let sql = format!(
            "SELECT {PASSKEY_COLUMNS} FROM passkeys p WHERE p.user_id = $1
             ORDER BY p.created_at, p.id"
        );
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(user_id.0)
            .fetch_all(&self.pool)
            .await?)
    }

    async fn passkey_by_credential(
        &self,
        credential_id: &[u8],
    ) -> Result<Option<PasskeyOwner>, StoreError> {
        let sql = format!(
            "SELECT {PASSKEY_COLUMNS}, u.email, u.disabled_at IS NOT NULL AS disabled,
                    u.email_verified_at IS NOT NULL AS verified
             FROM passkeys p JOIN users u ON u.id = p.user_id
             WHERE p.credential_id = $1"
        );
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(credential_id)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn begin_ceremony(&self, c: &NewCeremony) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO passkey_ceremonies
                 (id, purpose, user_id, session_id, challenge_id, state, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(c.id)
        .bind(c.purpose)
        .bind(c.user_id.map(|u| u.0))
        .bind(c.session_id.map(|s| s.0))
        .bind(c.challenge_id)
        .bind(&c.state)
        .bind(c.now)
        .bind(c.expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn take_ceremony(
        &self,
        id: Uuid,
        purpose: &str,
        now: OffsetDateTime,
    ) -> Result<Option<CeremonyRecord>, StoreError> {
        Ok(sqlx::query_as(
            "DELETE FROM passkey_ceremonies WHERE id = $1 AND purpose = $2
             RETURNING user_id, session_id, challenge_id, state,
                       expires_at > $3 AS live",
        )
        .bind(id)
        .bind(purpose)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?
        .and_then(
            |(user_id, session_id, challenge_id, state, live): (
                Option<Uuid>,
                Option<Uuid>,
                Option<Uuid>,
                String,
                bool,
            )| {
                live.then_some(CeremonyRecord {
                    user_id,
                    session_id,
                    challenge_id,
                    state,
                })
            },
        ))
    }

    async fn add_passkey(
        &self,
        p: &NewPasskey,
        event: &NewEvent,
        keep: &KeepSession,
        mails: &[OutboundMail],
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        if !lock_live_user(&mut tx, p.user_id, None).await? {
            return Ok(false);
        }
        // The acting session must still be live (re-checked here, under the user's
        // lock); the rest of a factor change comes with the new passkey.
        if !factor_changed(&mut tx, p.user_id, keep, p.now).await? {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO passkeys (id, user_id, credential_id, name, credential, sign_count,
                                   backup_eligible, backup_state, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(p.id)
        .bind(p.user_id.0)
        .bind(&p.credential_id)
        .bind(&p.name)
        .bind(&p.credential)
        .bind(p.sign_count)
        .bind(p.backup_eligible)
        .bind(p.backup_state)
        .bind(p.now)
        .execute(&mut *tx)
        .await?;
        insert_event(&mut tx, p.user_id.0, Some(keep.id.0), event).await?;
        insert_mails(&mut tx, &self.keys, mails, p.now).await?;
        tx.commit().await?;
        self.revoked_here();
        Ok(true)
    }

    async fn rename_passkey(
        &self,
        user_id: UserId,
        id: Uuid,
        name: &str,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE passkeys SET name = $3 WHERE id = $1 AND user_id = $2")
            .bind(id)
            .bind(user_id.0)
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn remove_passkey(
        &self,
        user_id: UserId,
        id: Uuid,
        event: &NewEvent,
        keep: &KeepSession,
        mails: &[OutboundMail],
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        // The user row first (the store's lock order), then the account enabled and
        // the acting session live: a "sign out everywhere" that landed meanwhile
        // wins (`factor_changed` checks the session).
        if !lock_live_user(&mut tx, user_id, None).await? {
            return Ok(false);
        }
        // A lost or stolen passkey's sessions end with every other session (but the
        // one removing it), before the row goes (its foreign key would forget which
        // they were).
        if !factor_changed(&mut tx, user_id, keep, event.at).await? {
            return Ok(false);
        }
        let done = sqlx::query("DELETE FROM passkeys WHERE id = $1 AND user_id = $2")
            .bind(id)
            .bind(user_id.0)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() != 1 {
            // Not theirs: nothing at all changes (the transaction is dropped).
            return Ok(false);
        }
        insert_event(&mut tx, user_id.0, Some(keep.id.0), event).await?;
        insert_mails(&mut tx, &self.keys, mails, event.at).await?;
        tx.commit().await?;
        self.revoked_here();
        Ok(true)
    }

    async fn passkey_signed_in(
        &self,
        u: &PasskeyUse,
        sign_in: &SignIn,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        if !lock_live_user(&mut tx, u.user_id, None).await? || !record_use(&mut tx, u).await? {
            return Ok(false);
        }
        insert_signed_in(&mut tx, self, sign_in).await?;
        mark_session(&mut tx, sign_in.session.id, u.passkey_id).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn passkey_clone_suspected(
        &self,
        passkey_id: Uuid,
        user_id: UserId,
        current: Option<SessionId>,
        reason: &RiskFlag,
        event: &NewEvent,
        mails: &[OutboundMail],
    ) -> Result<(), StoreError> {
        retry_once(|| {
            self.passkey_clone_suspected_once(passkey_id, user_id, current, reason, event, mails)
        })
        .await
    }
}

/// The transactions behind the methods above that `retry_once` may run twice.
impl PgStore {
    async fn passkey_clone_suspected_once(
        &self,
        passkey_id: Uuid,
        user_id: UserId,
        current: Option<SessionId>,
        reason: &RiskFlag,
        event: &NewEvent,
        mails: &[OutboundMail],
    ) -> Result<(), StoreError> {
        let now = event.at;
        let mut tx = self.pool.begin().await?;
        // The user row first (the store's lock order): a removal of this passkey or
        // a sign-out everywhere of the same person queues instead of deadlocking.
        super::accounts::lock_user(&mut tx, user_id.0).await?;
        let marked = sqlx::query(
            "UPDATE passkeys SET clone_suspected_at = $3
             WHERE id = $1 AND user_id = $2 AND clone_suspected_at IS NULL",
        )
        .bind(passkey_id)
        .bind(user_id.0)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE sessions SET risk_flagged = true, risk_reason = $3, risk_flagged_at = $4,
                                 risk_reason_enc = $5, risk_needs_proof = true
             WHERE user_id = $1 AND (passkey_id = $2 OR id = $6)
               AND revoked_at IS NULL AND absolute_expires_at > $4",
        )
        .bind(user_id.0)
        .bind(passkey_id)
        .bind(&reason.summary)
        .bind(now)
        .bind(&reason.sealed)
        .bind(current.map(|s| s.0))
        .execute(&mut *tx)
        .await?;
        // One event and one notice per passkey, however many copies keep trying.
        if marked.rows_affected() == 1 {
            insert_event(&mut tx, user_id.0, current.map(|s| s.0), event).await?;
            insert_mails(&mut tx, &self.keys, mails, now).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
