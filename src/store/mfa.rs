//! Second factors of an account: its authenticator app (TOTP) and recovery codes.
//! Every change comes with its notice mail and event in one transaction, and every
//! change of a second factor (here and in `passkeys`) goes through `factor_changed`
//! (checklist S8; DESIGN.md "Second factor at sign-in").

use async_trait::async_trait;
use time::OffsetDateTime;
use uuid::Uuid;

use super::accounts::lock_live_user;
use super::challenges::void_challenges;
use super::devices::{lock_live_sessions, revoke_all_of_user};
use super::events::{NewEvent, insert_event};
use super::links::void_tokens;
use super::outbox::insert_mails;
use super::risk::untrust_all;
use super::throttle::uncount;
use super::{PgStore, StoreError};
use crate::domain::{OutboundMail, SessionId, UserId};

/// What an account has, for the account pages.
#[derive(Clone, Debug, Default)]
pub struct Factors {
    /// When the authenticator app was confirmed (none: not set up).
    pub totp_confirmed_at: Option<OffsetDateTime>,
    /// When an enrolment that is not confirmed yet was started.
    pub totp_pending_since: Option<OffsetDateTime>,
    pub recovery_codes_left: i64,
    /// Passkeys registered, and of them those that may still be used (not
    /// suspected of being copied).
    pub passkeys: i64,
    pub usable_passkeys: i64,
    /// Whether the person has a password (an account made from an upstream, or
    /// without one by an operator, has none until it sets one).
    pub has_password: bool,
}

/// The current session of the person making a factor change: it stays, under a
/// new cookie token, while every other session of the account ends.
pub struct KeepSession {
    pub id: SessionId,
    pub new_token_hash: Vec<u8>,
    /// The revocation reason and its event for every other session.
    pub reason: &'static str,
    pub revoked: NewEvent,
}

/// Ends every other session of the user and gives `keep` its new token.
pub(super) async fn keep_only(
    conn: &mut sqlx::PgConnection,
    user_id: UserId,
    keep: &KeepSession,
) -> Result<bool, sqlx::Error> {
    // The kept session among the others, in key order (the caller holds the user row).
    lock_live_sessions(&mut *conn, user_id).await?;
    let rotated = sqlx::query(
        "UPDATE sessions SET token_hash = $3
         WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL",
    )
    .bind(keep.id.0)
    .bind(user_id.0)
    .bind(&keep.new_token_hash)
    .execute(&mut *conn)
    .await?;
    if rotated.rows_affected() != 1 {
        return Ok(false);
    }
    revoke_all_of_user(conn, user_id, Some(keep.id), keep.reason, &keep.revoked).await?;
    Ok(true)
}

/// What every change of a person's second factors (adding or removing the
/// authenticator app or a passkey, new recovery codes) does besides the change
/// itself, inside the caller's transaction, which must hold the user row's lock
/// (`lock_live_user`) already. In the store's lock order (user, devices, sessions,
/// challenges, links): every "trust this browser" ends; every other session of the
/// person ends through the normal revocation (its tokens die with it, apps hear
/// through back-channel logout, caches through the trigger's notice); `keep` (the
/// acting session) stays under a new cookie token; every pending challenge goes (a
/// sign-in waiting for a code may have been asked for the old factors, or for an
/// e-mailed code that a person with a stronger factor no longer gets); and every
/// pending change-of-address link dies. False, with the caller's transaction to be
/// dropped, if the acting session is no longer live (signed out meanwhile).
pub(super) async fn factor_changed(
    conn: &mut sqlx::PgConnection,
    user_id: UserId,
    keep: &KeepSession,
    now: OffsetDateTime,
) -> Result<bool, sqlx::Error> {
    untrust_all(&mut *conn, user_id.0).await?;
    if !keep_only(&mut *conn, user_id, keep).await? {
        return Ok(false);
    }
    void_challenges(&mut *conn, user_id).await?;
    void_tokens(conn, user_id.0, &["change"], now).await?;
    Ok(true)
}

/// Confirms the unconfirmed enrolment whose secret is `secret_enc`, taking `step`
/// as its first used step, if it is at most 30 minutes old.
async fn take_enrolment_step(
    conn: &mut sqlx::PgConnection,
    user_id: UserId,
    secret_enc: &[u8],
    step: i64,
    now: OffsetDateTime,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE totp_credentials SET confirmed_at = $4, last_used_step = $3
         WHERE user_id = $1 AND secret_enc = $2 AND confirmed_at IS NULL
           AND created_at > $4 - interval '30 minutes'",
    )
    .bind(user_id.0)
    .bind(secret_enc)
    .bind(step)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

#[async_trait]
pub trait MfaStore: Send + Sync {
    async fn factors(&self, user_id: UserId) -> Result<Factors, StoreError>;
    /// The sealed TOTP secret: the confirmed one, or (with `confirmed = false`) the
    /// enrolment in progress.
    async fn totp_secret(
        &self,
        user_id: UserId,
        confirmed: bool,
    ) -> Result<Option<Vec<u8>>, StoreError>;
    /// Starts (or restarts) an enrolment with a new sealed secret. False if an
    /// authenticator is already confirmed (it must be removed first).
    async fn start_totp_enrolment(
        &self,
        user_id: UserId,
        secret_enc: &[u8],
        now: OffsetDateTime,
    ) -> Result<bool, StoreError>;
    /// Confirms the enrolment of `secret_enc` (the secret the code was checked
    /// against: a restart meanwhile makes this fail), at most 30 minutes old, with the
    /// step of a valid code (it counts as used),
    /// stores the recovery codes' MACs, takes back the user's count for the code,
    /// applies `factor_changed`, queues the notice, records the event. False, with
    /// nothing changed, if the enrolment is gone, the step was used or the acting
    /// session ended.
    #[allow(clippy::too_many_arguments)]
    async fn confirm_totp(
        &self,
        user_id: UserId,
        secret_enc: &[u8],
        step: i64,
        recovery_macs: &[Vec<u8>],
        user_key: &[u8],
        keep: &KeepSession,
        mails: &[OutboundMail],
        event: &NewEvent,
    ) -> Result<bool, StoreError>;
    /// Removes the authenticator and the recovery codes, and applies
    /// `factor_changed`. False, with nothing changed, if there was none or the
    /// acting session ended.
    async fn remove_totp(
        &self,
        user_id: UserId,
        keep: &KeepSession,
        mails: &[OutboundMail],
        event: &NewEvent,
    ) -> Result<bool, StoreError>;
    /// Replaces every recovery code (a factor change: `keep` stays, under its new
    /// token, and the rest of `factor_changed` happens). False, with nothing changed,
    /// if no authenticator is confirmed or the acting session ended.
    async fn replace_recovery_codes(
        &self,
        user_id: UserId,
        recovery_macs: &[Vec<u8>],
        keep: &KeepSession,
        mails: &[OutboundMail],
        event: &NewEvent,
    ) -> Result<bool, StoreError>;
}

async fn insert_recovery_codes(
    conn: &mut sqlx::PgConnection,
    user_id: UserId,
    macs: &[Vec<u8>],
    now: OffsetDateTime,
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM recovery_codes WHERE user_id = $1")
        .bind(user_id.0)
        .execute(&mut *conn)
        .await?;
    let ids: Vec<Uuid> = macs.iter().map(|_| Uuid::new_v4()).collect();
    sqlx::query(
        "INSERT INTO recovery_codes (id, user_id, code_mac, created_at)
         SELECT id, $2, mac, $4 FROM unnest($1::uuid[], $3::bytea[]) AS x(id, mac)",
    )
    .bind(&ids)
    .bind(user_id.0)
    .bind(macs)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

#[async_trait]
impl MfaStore for PgStore {
    async fn factors(&self, user_id: UserId) -> Result<Factors, StoreError> {
        let row: (
            Option<OffsetDateTime>,
            Option<OffsetDateTime>,
            i64,
            i64,
            i64,
            bool,
        ) = sqlx::query_as(
            "SELECT (SELECT confirmed_at FROM totp_credentials WHERE user_id = $1),
                    (SELECT created_at FROM totp_credentials
                      WHERE user_id = $1 AND confirmed_at IS NULL),
                    (SELECT count(*) FROM recovery_codes WHERE user_id = $1 AND used_at IS NULL),
                    (SELECT count(*) FROM passkeys WHERE user_id = $1),
                    (SELECT count(*) FROM passkeys
                      WHERE user_id = $1 AND clone_suspected_at IS NULL),
                    EXISTS (SELECT 1 FROM users WHERE id = $1 AND password_hash IS NOT NULL)",
        )
        .bind(user_id.0)
        .fetch_one(&self.pool)
        .await?;
        Ok(Factors {
            totp_confirmed_at: row.0,
            totp_pending_since: row.1,
            recovery_codes_left: row.2,
            passkeys: row.3,
            usable_passkeys: row.4,
            has_password: row.5,
        })
    }

    async fn totp_secret(
        &self,
        user_id: UserId,
        confirmed: bool,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT secret_enc FROM totp_credentials
             WHERE user_id = $1 AND (confirmed_at IS NOT NULL) = $2",
        )
        .bind(user_id.0)
        .bind(confirmed)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn start_totp_enrolment(
        &self,
        user_id: UserId,
        secret_enc: &[u8],
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO totp_credentials (user_id, secret_enc, created_at)
             VALUES ($1, $2, $3)
             ON CONFLICT (user_id) DO UPDATE SET
                 secret_enc = EXCLUDED.secret_enc, created_at = EXCLUDED.created_at,
                 last_used_step = NULL
             WHERE totp_credentials.confirmed_at IS NULL",
        )
        .bind(user_id.0)
        .bind(secret_enc)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn confirm_totp(
        &self,
        user_id: UserId,
        secret_enc: &[u8],
        step: i64,
        recovery_macs: &[Vec<u8>],
        user_key: &[u8],
        keep: &KeepSession,
        mails: &[OutboundMail],
        event: &NewEvent,
    ) -> Result<bool, StoreError> {
        let now = event.at;
        let mut tx = self.pool.begin().await?;
        if !lock_live_user(&mut tx, user_id, None).await?
            || !take_enrolment_step(&mut tx, user_id, secret_enc, step, now).await?
        {
            return Ok(false);
        }
        if !factor_changed(&mut tx, user_id, keep, now).await? {
            return Ok(false);
        }
        // The valid code just proved the app: this session has now shown it.
        sqlx::query(
            "UPDATE sessions SET aal = 'aal2', aal_reached_at = $2,
                 amr = CASE WHEN 'otp' = ANY(amr) THEN amr ELSE amr || 'otp'::text END
             WHERE id = $1",
        )
        .bind(keep.id.0)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        insert_recovery_codes(&mut tx, user_id, recovery_macs, now).await?;
        uncount(&mut tx, "code", user_key).await?;
        insert_mails(&mut tx, &self.keys, mails, now).await?;
        insert_event(&mut tx, user_id.0, Some(keep.id.0), event).await?;
        tx.commit().await?;
        self.revoked_here();
        Ok(true)
    }

    async fn remove_totp(
        &self,
        user_id: UserId,
        keep: &KeepSession,
        mails: &[OutboundMail],
        event: &NewEvent,
    ) -> Result<bool, StoreError> {
        let now = event.at;
        let mut tx = self.pool.begin().await?;
        if !lock_live_user(&mut tx, user_id, None).await? {
            return Ok(false);
        }
        let removed = sqlx::query(
            "DELETE FROM totp_credentials WHERE user_id = $1 AND confirmed_at IS NOT NULL",
        )
        .bind(user_id.0)
        .execute(&mut *tx)
        .await?;
        if removed.rows_affected() != 1 || !factor_changed(&mut tx, user_id, keep, now).await? {
            return Ok(false);
        }
        sqlx::query("DELETE FROM recovery_codes WHERE user_id = $1")
            .bind(user_id.0)
            .execute(&mut *tx)
            .await?;
        insert_mails(&mut tx, &self.keys, mails, now).await?;
        insert_event(&mut tx, user_id.0, Some(keep.id.0), event).await?;
        tx.commit().await?;
        self.revoked_here();
        Ok(true)
    }

    async fn replace_recovery_codes(
        &self,
        user_id: UserId,
        recovery_macs: &[Vec<u8>],
        keep: &KeepSession,
        mails: &[OutboundMail],
        event: &NewEvent,
    ) -> Result<bool, StoreError> {
        let now = event.at;
        let mut tx = self.pool.begin().await?;
        if !lock_live_user(&mut tx, user_id, None).await? {
            return Ok(false);
        }
        let enrolled: Option<i32> = sqlx::query_scalar(
            "SELECT 1 FROM totp_credentials
             WHERE user_id = $1 AND confirmed_at IS NOT NULL FOR UPDATE",
        )
        .bind(user_id.0)
        .fetch_optional(&mut *tx)
        .await?;
        if enrolled.is_none() || !factor_changed(&mut tx, user_id, keep, now).await? {
            return Ok(false);
        }
        insert_recovery_codes(&mut tx, user_id, recovery_macs, now).await?;
        insert_mails(&mut tx, &self.keys, mails, now).await?;
        insert_event(&mut tx, user_id.0, Some(keep.id.0), event).await?;
        tx.commit().await?;
        self.revoked_here();
        Ok(true)
    }
}
