//! Single-use links sent by mail (verification, reset, change of address) and the
//! changes they make when used. Only the SHA-256 of a link's token is stored.

use async_trait::async_trait;
use time::OffsetDateTime;
use uuid::Uuid;

use super::accounts::lock_user;
use super::challenges::void_challenges;
use super::events::{NewEvent, insert_event};
use super::outbox::insert_mails;
use super::pg::retry_once;
use super::risk::untrust_all;
use super::{PgStore, StoreError};
use crate::domain::{OutboundMail, UserId};

/// A single-use mailed link to store (its token only as a hash).
#[derive(Clone)]
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
#[derive(Clone, Debug)]
pub struct EmailTokenRecord {
    pub user_id: UserId,
    pub email: String,
    pub new_email: Option<String>,
}

#[derive(sqlx::FromRow)]
struct TokenRow {
    user_id: Uuid,
    email: String,
    new_email: Option<String>,
}

#[derive(sqlx::FromRow)]
struct ConsumedRow {
    user_id: Uuid,
    new_email: Option<String>,
}

pub(super) async fn insert_token(
    conn: &mut sqlx::PgConnection,
    t: &NewEmailToken,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO email_tokens (token_hash, purpose, user_id, new_email, created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&t.token_hash)
    .bind(t.purpose)
    .bind(t.user_id.0)
    .bind(&t.new_email)
    .bind(t.now)
    .bind(t.expires_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Marks every live link of these purposes for the user as used.
pub(super) async fn void_tokens(
    conn: &mut sqlx::PgConnection,
    user_id: Uuid,
    purposes: &[&str],
    now: OffsetDateTime,
) -> Result<(), sqlx::Error> {
    let purposes: Vec<String> = purposes.iter().map(|p| p.to_string()).collect();
    sqlx::query(
        "UPDATE email_tokens SET used_at = $3
         WHERE user_id = $1 AND purpose = ANY($2) AND used_at IS NULL",
    )
    .bind(user_id)
    .bind(&purposes)
    .bind(now)
    .execute(conn)
    .await?;
    Ok(())
}

/// A "This wasn't me" link for the session `session_id`, inside the caller's
/// transaction (the new-sign-in notice that carries it is queued there too).
pub(super) async fn insert_not_me(
    conn: &mut sqlx::PgConnection,
    token_hash: &[u8],
    user_id: Uuid,
    session_id: Uuid,
    now: OffsetDateTime,
    expires_at: OffsetDateTime,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO email_tokens (token_hash, purpose, user_id, session_id, created_at, expires_at)
         VALUES ($1, 'not-me', $2, $3, $4, $5)",
    )
    .bind(token_hash)
    .bind(user_id)
    .bind(session_id)
    .bind(now)
    .bind(expires_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// What a used "This wasn't me" link did.
#[derive(Clone, Debug)]
pub struct NotMeReport {
    pub user_id: UserId,
    pub email: String,
    /// The session was still live and is now revoked.
    pub revoked: bool,
}

/// Locks the row of the user a link of `purpose` belongs to, before the link itself
/// (the store's lock order: the user row first). Every transaction that issues, uses
/// or voids links holds its user's row, so two of them of one person queue instead of
/// deadlocking, and two issued at once leave one live. `for_update` is for a change
/// of the address (a key column); otherwise the lock lets foreign-key checks through.
async fn lock_link_owner(
    conn: &mut sqlx::PgConnection,
    token_hash: &[u8],
    purpose: &str,
    for_update: bool,
) -> Result<(), sqlx::Error> {
    let strength = if for_update {
        "FOR UPDATE"
    } else {
        "FOR NO KEY UPDATE"
    };
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT 1 FROM users WHERE id =
             (SELECT user_id FROM email_tokens WHERE token_hash = $1 AND purpose = $2)
         {strength} OF users"
    )))
    .bind(token_hash)
    .bind(purpose)
    .execute(conn)
    .await?;
    Ok(())
}

/// Marks a live link used; returns its user and new address if it was live.
async fn consume_token(
    conn: &mut sqlx::PgConnection,
    token_hash: &[u8],
    purpose: &str,
    now: OffsetDateTime,
) -> Result<Option<ConsumedRow>, sqlx::Error> {
    lock_link_owner(&mut *conn, token_hash, purpose, purpose == "change").await?;
    sqlx::query_as(
        "UPDATE email_tokens t SET used_at = $3
         FROM users u
         WHERE t.token_hash = $1 AND t.purpose = $2 AND t.used_at IS NULL AND t.expires_at > $3
           AND u.id = t.user_id AND u.disabled_at IS NULL
         RETURNING t.user_id, t.new_email",
    )
    .bind(token_hash)
    .bind(purpose)
    .bind(now)
    .fetch_optional(conn)
    .await
}

#[async_trait]
pub trait LinkStore: Send + Sync {
    /// Stores a mailed link, its mail and (if given) an event together. A new link
    /// replaces earlier live ones of its purpose.
    async fn issue_email_token(
        &self,
        token: NewEmailToken,
        mails: &[OutboundMail],
        event: Option<&NewEvent>,
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
    async fn verify_email(&self, token_hash: &[u8], event: &NewEvent) -> Result<bool, StoreError>;
    /// Uses a reset link up, sets the password, revokes every session of the user and
    /// queues `mails`, atomically. False if the link is unknown, used or expired.
    async fn reset_password(
        &self,
        token_hash: &[u8],
        password_hash: &str,
        mails: &[OutboundMail],
        event: &NewEvent,
    ) -> Result<bool, StoreError>;
    /// Uses a "This wasn't me" link up: revokes the session it names (its tokens die
    /// with it; apps hear through back-channel logout), withdraws its browser's trust,
    /// flags it for operators and records `event`, atomically. `None` if the link is
    /// unknown, used or expired.
    async fn report_not_me(
        &self,
        token_hash: &[u8],
        event: &NewEvent,
    ) -> Result<Option<NotMeReport>, StoreError>;
    /// Uses an e-mail change link up and moves the account to the new address,
    /// queueing `mails`. False if the link is unknown, used or expired; `Conflict` if
    /// the address was taken meanwhile.
    async fn change_email(
        &self,
        token_hash: &[u8],
        mails: &[OutboundMail],
        event: &NewEvent,
    ) -> Result<bool, StoreError>;
}

#[async_trait]
impl LinkStore for PgStore {
    async fn issue_email_token(
        &self,
        token: NewEmailToken,
        mails: &[OutboundMail],
        event: Option<&NewEvent>,
    ) -> Result<(), StoreError> {
        retry_once(|| self.issue_email_token_once(&token, mails, event)).await
    }

    async fn email_token(
        &self,
        token_hash: &[u8],
        purpose: &str,
        now: OffsetDateTime,
    ) -> Result<Option<EmailTokenRecord>, StoreError> {
        let row: Option<TokenRow> = sqlx::query_as(
            "SELECT t.user_id, u.email, t.new_email
             FROM email_tokens t JOIN users u ON u.id = t.user_id
             WHERE t.token_hash = $1 AND t.purpose = $2 AND t.used_at IS NULL
               AND t.expires_at > $3 AND u.disabled_at IS NULL",
        )
        .bind(token_hash)
        .bind(purpose)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| EmailTokenRecord {
            user_id: UserId(r.user_id),
            email: r.email,
            new_email: r.new_email,
        }))
    }

    async fn verify_email(&self, token_hash: &[u8], event: &NewEvent) -> Result<bool, StoreError> {
        retry_once(|| self.verify_email_once(token_hash, event)).await
    }

    async fn reset_password(
        &self,
        token_hash: &[u8],
        password_hash: &str,
        mails: &[OutboundMail],
        event: &NewEvent,
    ) -> Result<bool, StoreError> {
        retry_once(|| self.reset_password_once(token_hash, password_hash, mails, event)).await
    }

    async fn report_not_me(
        &self,
        token_hash: &[u8],
        event: &NewEvent,
    ) -> Result<Option<NotMeReport>, StoreError> {
        retry_once(|| self.report_not_me_once(token_hash, event)).await
    }

    async fn change_email(
        &self,
        token_hash: &[u8],
        mails: &[OutboundMail],
        event: &NewEvent,
    ) -> Result<bool, StoreError> {
        retry_once(|| self.change_email_once(token_hash, mails, event)).await
    }
}

/// The transactions behind the methods above that `retry_once` may run twice.
impl PgStore {
    async fn issue_email_token_once(
        &self,
        token: &NewEmailToken,
        mails: &[OutboundMail],
        event: Option<&NewEvent>,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        // A new link replaces earlier ones of its kind (a mistyped address for a
        // change, an older reset mail): only the newest works. The user row
        // serialises two issued at once, so the later one voids the earlier.
        lock_user(&mut tx, token.user_id.0).await?;
        void_tokens(&mut tx, token.user_id.0, &[token.purpose], token.now).await?;
        insert_token(&mut tx, token).await?;
        insert_mails(&mut tx, &self.keys, mails, token.now).await?;
        if let Some(event) = event {
            insert_event(&mut tx, token.user_id.0, None, event).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn verify_email_once(
        &self,
        token_hash: &[u8],
        event: &NewEvent,
    ) -> Result<bool, StoreError> {
        let now = event.at;
        let mut tx = self.pool.begin().await?;
        let Some(link) = consume_token(&mut tx, token_hash, "verify", now).await? else {
            return Ok(false);
        };
        sqlx::query(
            "UPDATE users SET email_verified_at = COALESCE(email_verified_at, $2), updated_at = $2
             WHERE id = $1",
        )
        .bind(link.user_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        insert_event(&mut tx, link.user_id, None, event).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn reset_password_once(
        &self,
        token_hash: &[u8],
        password_hash: &str,
        mails: &[OutboundMail],
        event: &NewEvent,
    ) -> Result<bool, StoreError> {
        let now = event.at;
        let mut tx = self.pool.begin().await?;
        let Some(link) = consume_token(&mut tx, token_hash, "reset", now).await? else {
            return Ok(false);
        };
        // Following the link proves the address, too.
        sqlx::query(
            "UPDATE users SET password_hash = $2, updated_at = $3,
                 email_verified_at = COALESCE(email_verified_at, $3)
             WHERE id = $1",
        )
        .bind(link.user_id)
        .bind(password_hash)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        // Every session goes, each with its revocation in the account's history.
        sqlx::query(
            "WITH r AS (
                 UPDATE sessions SET revoked_at = $2, revoked_reason = 'password reset'
                 WHERE user_id = $1 AND revoked_at IS NULL
                 RETURNING id
             )
             INSERT INTO security_events (id, user_id, session_id, kind, actor, at, detail)
             SELECT gen_random_uuid(), $1, r.id, 'session_revoked', 'user', $2, 'password reset'
             FROM r",
        )
        .bind(link.user_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        // Every other pending reset or address change dies with it: a reset is what a
        // person does when someone else got in, and that someone may have asked to
        // move the account to their own address.
        void_tokens(&mut tx, link.user_id, &["reset", "change"], now).await?;
        // Upstream links made before anyone proved the mailbox go: whoever made them
        // (an upstream account that merely claimed this address) is not the person
        // now proving it (account pre-hijacking). Their sessions ended above.
        let removed: Vec<String> = sqlx::query_scalar(
            "DELETE FROM federated_identities f USING upstreams u
             WHERE f.user_id = $1 AND f.linked_unconfirmed AND u.id = f.upstream_id
             RETURNING u.label",
        )
        .bind(link.user_id)
        .fetch_all(&mut *tx)
        .await?;
        if !removed.is_empty() {
            let unlinked = NewEvent {
                kind: "upstream_unlinked",
                detail: Some(format!(
                    "Connections made before your address was confirmed were removed: {}",
                    removed.join(", ")
                )),
                ..event.clone()
            };
            insert_event(&mut tx, link.user_id, None, &unlinked).await?;
        }
        void_challenges(&mut tx, UserId(link.user_id)).await?;
        untrust_all(&mut tx, link.user_id).await?;
        insert_mails(&mut tx, &self.keys, mails, now).await?;
        insert_event(&mut tx, link.user_id, None, event).await?;
        tx.commit().await?;
        self.revoked_here();
        Ok(true)
    }

    async fn report_not_me_once(
        &self,
        token_hash: &[u8],
        event: &NewEvent,
    ) -> Result<Option<NotMeReport>, StoreError> {
        let now = event.at;
        let mut tx = self.pool.begin().await?;
        // The store's lock order: the user row, the link, the browser's device,
        // then its sessions. A sign-in of the same person (which takes the user
        // row first too) lands wholly before this report, whose revocations then
        // reach the session it made, or wholly after it.
        lock_link_owner(&mut tx, token_hash, "not-me", false).await?;
        let link: Option<(Uuid, String, Option<Uuid>)> = sqlx::query_as(
            "UPDATE email_tokens t SET used_at = $2
             FROM users u
             WHERE t.token_hash = $1 AND t.purpose = 'not-me' AND t.used_at IS NULL
               AND t.expires_at > $2 AND u.id = t.user_id
             RETURNING t.user_id, u.email, t.session_id",
        )
        .bind(token_hash)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let Some((user_id, email, session_id)) = link else {
            return Ok(None);
        };
        sqlx::query(
            "SELECT 1 FROM devices
             WHERE id = (SELECT device_id FROM sessions WHERE id = $1 AND user_id = $2)
             FOR UPDATE",
        )
        .bind(session_id)
        .bind(user_id)
        .execute(&mut *tx)
        .await?;
        // A session already ended is re-labelled too, so its place never counts as
        // the owner's again (`risk_facts`).
        let session: Option<(bool, Option<Uuid>)> = sqlx::query_as(
            "UPDATE sessions s SET
                 revoked_at = COALESCE(s.revoked_at, $3),
                 revoked_reason = $4,
                 risk_flagged = true,
                 risk_reason = COALESCE(s.risk_reason, 'Reported by the owner'),
                 risk_flagged_at = COALESCE(s.risk_flagged_at, $3)
             FROM sessions old
             WHERE s.id = $1 AND s.user_id = $2 AND old.id = s.id
             RETURNING (old.revoked_at IS NULL AND old.idle_expires_at > $3
                        AND old.absolute_expires_at > $3), s.device_id",
        )
        .bind(session_id)
        .bind(user_id)
        .bind(now)
        .bind(super::risk::REPORTED_REASON)
        .fetch_optional(&mut *tx)
        .await?;
        let (mut revoked, device) = session.unwrap_or((false, None));
        if let Some(device) = device {
            // Held until the commit: a sign-in from that browser links its session
            // to this row (`link_device` upserts it), so none can slip in between
            // the revocation below and the row's removal.
            sqlx::query("SELECT 1 FROM devices WHERE id = $1 FOR UPDATE")
                .bind(device)
                .fetch_optional(&mut *tx)
                .await?;
            // The intruder may have signed in again from that browser since (a new
            // session, no new notice): every live session of it ends, and the
            // browser is forgotten, so its next sign-in counts as a new device.
            let others = sqlx::query(
                "WITH r AS (
                     UPDATE sessions SET revoked_at = $3, revoked_reason = $4
                     WHERE device_id = $1 AND user_id = $2 AND revoked_at IS NULL
                     RETURNING id
                 )
                 INSERT INTO security_events (id, user_id, session_id, kind, actor, at, detail)
                 SELECT gen_random_uuid(), $2, r.id, 'session_revoked', 'user', $3, $4 FROM r",
            )
            .bind(device)
            .bind(user_id)
            .bind(now)
            .bind(super::risk::REPORTED_REASON)
            .execute(&mut *tx)
            .await?;
            revoked |= others.rows_affected() > 0;
            sqlx::query("DELETE FROM devices WHERE id = $1 AND user_id = $2")
                .bind(device)
                .bind(user_id)
                .execute(&mut *tx)
                .await?;
        }
        insert_event(&mut tx, user_id, session_id, event).await?;
        // A change of address the intruder asked for dies with their session: the
        // confirmation link is not tied to it.
        void_tokens(&mut tx, user_id, &["change"], now).await?;
        tx.commit().await?;
        self.revoked_here();
        Ok(Some(NotMeReport {
            user_id: UserId(user_id),
            email,
            revoked,
        }))
    }

    async fn change_email_once(
        &self,
        token_hash: &[u8],
        mails: &[OutboundMail],
        event: &NewEvent,
    ) -> Result<bool, StoreError> {
        let now = event.at;
        let mut tx = self.pool.begin().await?;
        let Some(ConsumedRow {
            user_id,
            new_email: Some(new_email),
        }) = consume_token(&mut tx, token_hash, "change", now).await?
        else {
            return Ok(false);
        };
        sqlx::query(
            "UPDATE users SET email = $2, email_verified_at = $3, updated_at = $3 WHERE id = $1",
        )
        .bind(user_id)
        .bind(&new_email)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        // Links mailed to the old address (resets, other changes) stop working.
        void_tokens(&mut tx, user_id, &["reset", "change", "verify"], now).await?;
        insert_mails(&mut tx, &self.keys, mails, now).await?;
        insert_event(&mut tx, user_id, None, event).await?;
        tx.commit().await?;
        self.revoked_here();
        Ok(true)
    }
}
