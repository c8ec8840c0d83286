//! The only SQL in the crate. `Store` is what the services need; `PgStore` is its
//! PostgreSQL implementation. Each method is one unit of work with its own transaction.

mod postgres;

use async_trait::async_trait;
use time::OffsetDateTime;

use crate::domain::{Email, SessionId, UserId};
use crate::mail::{OutboundMail, QueuedMail};

pub use postgres::{PgStore, connect_pool, dev_secret_key, is_unavailable, run_migrations};

/// Storage failures, split by what the caller should tell the person.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A uniqueness rule said no (e.g. the e-mail address is taken).
    #[error("conflict")]
    Conflict,
    /// The database cannot be reached right now; the request may succeed later.
    #[error("database unavailable")]
    Unavailable(#[source] sqlx::Error),
    #[error("database error")]
    Other(#[source] sqlx::Error),
}

/// An account to create.
pub struct NewUser {
    pub id: UserId,
    pub email: Email,
    pub password_hash: String,
    pub is_admin: bool,
    pub verified: bool,
    pub now: OffsetDateTime,
}

/// An account as sign-in needs it.
pub struct UserRecord {
    pub id: UserId,
    pub email: String,
    pub password_hash: String,
    pub disabled: bool,
    pub verified: bool,
}

/// A single-use mailed link to store (its token only as a hash).
pub struct NewEmailToken {
    pub token_hash: Vec<u8>,
    /// `verify`, `reset` or `change`.
    pub purpose: &'static str,
    pub user_id: UserId,
    pub new_email: Option<String>,
    pub now: OffsetDateTime,
    pub expires_at: OffsetDateTime,
}

/// A live (unused, unexpired) mailed link and whom it is for.
pub struct EmailTokenRecord {
    pub user_id: UserId,
    pub email: String,
    pub new_email: Option<String>,
}

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

/// Throttle limits in force for a sign-in attempt.
#[derive(Clone, Copy, Debug)]
pub struct ThrottleLimits {
    pub account_max_failures: i32,
    pub ip_max_failures: i32,
    pub ip_window_secs: i32,
    pub max_backoff_secs: i32,
}

/// Whether a sign-in attempt may be evaluated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attempt {
    Allowed,
    Blocked { retry_after_secs: u64 },
}

#[async_trait]
pub trait Store: Send + Sync {
    /// Cheap round trip, for `/readyz`.
    async fn ping(&self) -> Result<(), StoreError>;
    /// Whether every migration this binary carries has been applied.
    async fn migrations_current(&self) -> Result<bool, StoreError>;

    /// Creates the account and, if given, its first session, a mailed link and mail,
    /// in one transaction.
    async fn create_user(
        &self,
        user: NewUser,
        session: Option<NewSession>,
        token: Option<NewEmailToken>,
        mails: &[OutboundMail],
    ) -> Result<(), StoreError>;
    async fn user_by_email(&self, email: &Email) -> Result<Option<UserRecord>, StoreError>;
    /// The password was right but no session follows (e.g. unconfirmed address, or a
    /// re-check of the password): takes back what `begin_sign_in` counted.
    async fn sign_in_refund(&self, account_key: &[u8], ip_key: &[u8]) -> Result<(), StoreError>;

    /// Stores a mailed link and its mail together.
    async fn issue_email_token(
        &self,
        token: NewEmailToken,
        mails: &[OutboundMail],
    ) -> Result<(), StoreError>;
    /// The live link with this hash and purpose, if any (does not use it up).
    async fn email_token(
        &self,
        token_hash: &[u8],
        purpose: &str,
        now: OffsetDateTime,
    ) -> Result<Option<EmailTokenRecord>, StoreError>;
    /// Uses a verification link up and marks the address verified. False if the link
    /// is unknown, used or expired.
    async fn verify_email(
        &self,
        token_hash: &[u8],
        now: OffsetDateTime,
    ) -> Result<bool, StoreError>;
    /// Uses a reset link up, sets the password, revokes every session of the user and
    /// queues `mails`, atomically. False if the link is unknown, used or expired.
    async fn reset_password(
        &self,
        token_hash: &[u8],
        now: OffsetDateTime,
        password_hash: &str,
        mails: &[OutboundMail],
    ) -> Result<bool, StoreError>;
    /// Uses an e-mail change link up and moves the account to the new address,
    /// queueing `mails`. False if the link is unknown, used or expired; `Conflict` if
    /// the address was taken meanwhile.
    async fn change_email(
        &self,
        token_hash: &[u8],
        now: OffsetDateTime,
        mails: &[OutboundMail],
    ) -> Result<bool, StoreError>;

    /// Queues a mail on its own (no other change goes with it).
    async fn enqueue_mail(
        &self,
        mail: &OutboundMail,
        now: OffsetDateTime,
    ) -> Result<(), StoreError>;
    /// Claims up to `limit` due mails for `lease`, skipping rows other workers hold.
    async fn claim_mail(
        &self,
        now: OffsetDateTime,
        lease: std::time::Duration,
        limit: i64,
    ) -> Result<Vec<QueuedMail>, StoreError>;
    async fn mail_sent(&self, id: uuid::Uuid, now: OffsetDateTime) -> Result<(), StoreError>;
    /// Records a failed attempt; `retry_at: None` gives up on the mail.
    async fn mail_failed(
        &self,
        id: uuid::Uuid,
        now: OffsetDateTime,
        error: &str,
        retry_at: Option<OffsetDateTime>,
    ) -> Result<(), StoreError>;
    /// Mails not yet sent nor given up.
    async fn outbox_depth(&self) -> Result<i64, StoreError>;

    /// Starts a sign-in attempt: decides whether it may be evaluated and, if so,
    /// counts it as a failure, against the account and the client address, *before*
    /// the password is checked, so parallel attempts cannot slip under either limit
    /// (ZITADEL CVE-2023-47111); `sign_in_succeeded` / `sign_in_refund` take it back.
    /// Nothing is counted when blocked. Also returns the account, if there is one.
    async fn begin_sign_in(
        &self,
        email: &Email,
        account_key: &[u8],
        ip_key: &[u8],
        now: OffsetDateTime,
        limits: ThrottleLimits,
    ) -> Result<(Attempt, Option<UserRecord>), StoreError>;
    /// Takes back the attempt's counts and creates the session, atomically, provided
    /// the user's password hash is still `password_hash` and the user is enabled (a
    /// reset or disabling that landed meanwhile wins). Returns whether it did.
    async fn sign_in_succeeded(
        &self,
        account_key: &[u8],
        ip_key: &[u8],
        password_hash: &str,
        session: NewSession,
    ) -> Result<bool, StoreError>;

    /// Counts one event for `key` in a fixed window of `window_secs` that starts at the
    /// first event; blocked (and not counted) once the window holds `max` events.
    async fn count_in_window(
        &self,
        scope: &'static str,
        key: &[u8],
        now: OffsetDateTime,
        max: i32,
        window_secs: i32,
    ) -> Result<Attempt, StoreError>;

    /// The live session behind a cookie token hash: not revoked, not expired, user not
    /// disabled. One indexed read.
    async fn live_session(
        &self,
        token_hash: &[u8],
        now: OffsetDateTime,
    ) -> Result<Option<SessionRecord>, StoreError>;
    /// Records activity: last-seen and a new idle expiry (never past the absolute one).
    async fn touch_session(&self, id: SessionId, now: OffsetDateTime) -> Result<(), StoreError>;
    /// Returns whether a live session was revoked by this call.
    async fn revoke_session(
        &self,
        id: SessionId,
        now: OffsetDateTime,
        reason: &str,
    ) -> Result<bool, StoreError>;
}
