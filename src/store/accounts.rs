//! Accounts.

use async_trait::async_trait;
use time::OffsetDateTime;
use uuid::Uuid;

use super::events::{NewEvent, insert_event};
use super::links::{NewEmailToken, insert_token};
use super::outbox::insert_mails;
use super::sessions::{NewSession, insert_session, revoke_replaced};
use super::{PgStore, StoreError};
use crate::domain::{Email, OutboundMail, SessionId, UserId};

/// An account to create.
pub struct NewUser {
    pub id: UserId,
    pub email: Email,
    pub password_hash: String,
    pub is_admin: bool,
    pub verified: bool,
    pub now: OffsetDateTime,
}

/// An account as sign-in needs it. `Debug` leaves the password hash out.
#[derive(Clone)]
pub struct UserRecord {
    pub id: UserId,
    pub email: String,
    pub password_hash: String,
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

#[derive(sqlx::FromRow)]
pub(super) struct UserRow {
    pub id: Uuid,
    pub email: String,
    pub password_hash: String,
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
    pub session: Option<(NewSession, Option<SessionId>)>,
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
        if let Some((session, replaces)) = &a.session {
            insert_session(&mut tx, session).await?;
            if let Some(old) = replaces {
                revoke_replaced(&mut tx, *old, session.now).await?;
            }
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
}
