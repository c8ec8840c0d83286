//! Accounts.

use async_trait::async_trait;
use time::OffsetDateTime;
use uuid::Uuid;

use super::challenges::void_challenges;
use super::devices::revoke_all_of_user;
use super::events::{NewEvent, insert_event};
use super::links::{NewEmailToken, insert_token, void_tokens};
use super::mfa::{KeepSession, keep_only};
use super::outbox::insert_mails;
use super::pg::retry_once;
use super::sessions::{SignIn, insert_signed_in};
use super::{PgStore, StoreError};
use crate::domain::{Email, OutboundMail, UserId};

/// An account to create.
#[derive(Clone)]
pub struct NewUser {
    pub id: UserId,
    pub email: Email,
    /// `None`: an account without a password (made from an upstream, or by an
    /// operator); it signs in another way or sets one through a reset link.
    pub password_hash: Option<String>,
    pub is_admin: bool,
    pub verified: bool,
    pub now: OffsetDateTime,
}

/// An account as sign-in needs it. `Debug` leaves the password hash out.
#[derive(Clone)]
pub struct UserRecord {
    pub id: UserId,
    pub email: String,
    /// `None`: the person has no password, and no password matches.
    pub password_hash: Option<String>,
    pub disabled: bool,
    pub verified: bool,
}

impl std::fmt::Debug for UserRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserRecord")
            .field("id", &self.id)
            .field("email", &self.email)
            .field("password_hash", &"[redacted]")
            .field("disabled", &self.disabled)
            .field("verified", &self.verified)
            .finish()
    }
}

/// Locks a user's row (the store's lock order: first), whether or not enabled.
pub(super) async fn lock_user(
    conn: &mut sqlx::PgConnection,
    user_id: uuid::Uuid,
) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1 FROM users WHERE id = $1 FOR NO KEY UPDATE")
        .bind(user_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Locks the user's row for the rest of the caller's transaction, if the user is
/// enabled (and, given `password_hash`, still has that password). Every sign-in,
/// challenge completion and factor change takes this lock first, so they queue in
/// one order instead of deadlocking, and a reset or disabling that committed first
/// makes the check fail. Foreign-key checks (KEY SHARE) do not conflict with it.
pub(super) async fn lock_live_user(
    conn: &mut sqlx::PgConnection,
    user_id: UserId,
    password_hash: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let found: Option<i32> = sqlx::query_scalar(
        "SELECT 1 FROM users
         WHERE id = $1 AND disabled_at IS NULL AND ($2::text IS NULL OR password_hash = $2)
         FOR NO KEY UPDATE",
    )
    .bind(user_id.0)
    .bind(password_hash)
    .fetch_optional(conn)
    .await?;
    Ok(found.is_some())
}

#[derive(sqlx::FromRow)]
pub(super) struct UserRow {
    pub id: Uuid,
    pub email: String,
    pub password_hash: Option<String>,
    pub disabled: bool,
    pub verified: bool,
}

impl From<UserRow> for UserRecord {
    fn from(r: UserRow) -> Self {
        Self {
            id: UserId(r.id),
            email: r.email,
            password_hash: r.password_hash,
            disabled: r.disabled,
            verified: r.verified,
        }
    }
}

/// What a new account comes with, all in its transaction.
pub struct NewAccount<'a> {
    pub user: NewUser,
    /// Signed in at once (verification not required), replacing the browser's
    /// earlier session if it had one.
    pub session: Option<SignIn>,
    /// A verification link.
    pub token: Option<NewEmailToken>,
    pub mails: &'a [OutboundMail],
    pub event: NewEvent,
}

#[async_trait]
pub trait AccountStore: Send + Sync {
    /// Creates the account with what `NewAccount` brings, in one transaction.
    /// `Conflict` if the address is taken (nothing is written).
    async fn create_user(&self, account: NewAccount<'_>) -> Result<(), StoreError>;
    async fn user_by_email(&self, email: &Email) -> Result<Option<UserRecord>, StoreError>;
    /// Disables (`disabled`) or enables an account and records `event`; disabling
    /// revokes every session of the user in the same transaction, each with
    /// `revoked` as its event, and voids pending change-of-address links. Returns whether anything changed (`false`: it already
    /// was so).
    async fn set_disabled(
        &self,
        user_id: UserId,
        disabled: bool,
        event: &NewEvent,
        revoked: &NewEvent,
    ) -> Result<bool, StoreError>;
    /// A signed-in person changed their password: provided the hash is still
    /// `old_hash` (`None`: still no password; no reset or other change landed
    /// meanwhile), stores `new_hash`,
    /// keeps only `keep` (under its new token), voids pending reset and
    /// change-of-address links and half-finished sign-ins, queues the notice and
    /// records the event.
    async fn change_password(
        &self,
        user_id: UserId,
        old_hash: Option<&str>,
        new_hash: &str,
        keep: &KeepSession,
        mails: &[OutboundMail],
        event: &NewEvent,
    ) -> Result<bool, StoreError>;
}

#[async_trait]
impl AccountStore for PgStore {
    async fn create_user(&self, a: NewAccount<'_>) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let user = &a.user;
        sqlx::query(
            "INSERT INTO users (id, email, email_verified_at, password_hash, is_admin, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $6)",
        )
        .bind(user.id.0)
        .bind(user.email.as_str())
        .bind(user.verified.then_some(user.now))
        .bind(&user.password_hash)
        .bind(user.is_admin)
        .bind(user.now)
        .execute(&mut *tx)
        .await?;
        insert_event(&mut tx, user.id.0, None, &a.event).await?;
        if let Some(sign_in) = &a.session {
            insert_signed_in(&mut tx, self, sign_in).await?;
        }
        if let Some(token) = &a.token {
            insert_token(&mut tx, token).await?;
        }
        insert_mails(&mut tx, &self.keys, a.mails, user.now).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn user_by_email(&self, email: &Email) -> Result<Option<UserRecord>, StoreError> {
        let row: Option<UserRow> = sqlx::query_as(
            "SELECT id, email, password_hash, disabled_at IS NOT NULL AS disabled,
                    email_verified_at IS NOT NULL AS verified
             FROM users WHERE email = $1",
        )
        .bind(email.as_str())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(UserRecord::from))
    }

    async fn set_disabled(
        &self,
        user_id: UserId,
        disabled: bool,
        event: &NewEvent,
        revoked: &NewEvent,
    ) -> Result<bool, StoreError> {
        retry_once(|| self.set_disabled_once(user_id, disabled, event, revoked)).await
    }

    async fn change_password(
        &self,
        user_id: UserId,
        old_hash: Option<&str>,
        new_hash: &str,
        keep: &KeepSession,
        mails: &[OutboundMail],
        event: &NewEvent,
    ) -> Result<bool, StoreError> {
        retry_once(|| self.change_password_once(user_id, old_hash, new_hash, keep, mails, event))
            .await
    }
}

/// The transactions behind the methods above that `retry_once` may run twice.
impl PgStore {
    async fn set_disabled_once(
        &self,
        user_id: UserId,
        disabled: bool,
        event: &NewEvent,
        revoked: &NewEvent,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let changed = sqlx::query(
            "UPDATE users SET disabled_at = CASE WHEN $2 THEN $3 END, updated_at = $3
             WHERE id = $1 AND (disabled_at IS NOT NULL) <> $2",
        )
        .bind(user_id.0)
        .bind(disabled)
        .bind(event.at)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if changed {
            insert_event(&mut tx, user_id.0, None, event).await?;
            if disabled {
                revoke_all_of_user(&mut tx, user_id, None, "account disabled", revoked).await?;
                void_challenges(&mut tx, user_id).await?;
                // A pending change of address would come back to life on enabling.
                void_tokens(&mut tx, user_id.0, &["change"], event.at).await?;
            }
        }
        tx.commit().await?;
        self.revoked_here();
        Ok(changed)
    }

    async fn change_password_once(
        &self,
        user_id: UserId,
        old_hash: Option<&str>,
        new_hash: &str,
        keep: &KeepSession,
        mails: &[OutboundMail],
        event: &NewEvent,
    ) -> Result<bool, StoreError> {
        let now = event.at;
        let mut tx = self.pool.begin().await?;
        let changed = sqlx::query(
            "UPDATE users SET password_hash = $3, updated_at = $4
             WHERE id = $1 AND password_hash IS NOT DISTINCT FROM $2 AND disabled_at IS NULL",
        )
        .bind(user_id.0)
        .bind(old_hash)
        .bind(new_hash)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if changed.rows_affected() != 1 || !keep_only(&mut tx, user_id, keep).await? {
            return Ok(false);
        }
        // Pending resets, and a change of address that someone who got in may have
        // asked for (the notice of it recommends exactly this remedy), die with the
        // old password.
        void_tokens(&mut tx, user_id.0, &["reset", "change"], now).await?;
        void_challenges(&mut tx, user_id).await?;
        // A new password ends every "trust this browser" (DESIGN.md).
        super::risk::untrust_all(&mut tx, user_id.0).await?;
        insert_mails(&mut tx, &self.keys, mails, now).await?;
        insert_event(&mut tx, user_id.0, Some(keep.id.0), event).await?;
        tx.commit().await?;
        self.revoked_here();
        Ok(true)
    }
}
