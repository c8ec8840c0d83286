//! The mail outbox: written in the transaction of whatever caused the mail, drained
//! by a worker on every node.

use std::time::Duration;

use async_trait::async_trait;
use time::OffsetDateTime;
use uuid::Uuid;

use super::{PgStore, StoreError};
use crate::crypto::Keys;
use crate::domain::mail::Unopenable;
use crate::domain::{OutboundMail, QueuedMail};

use crate::crypto::columns::{MAIL_HTML, MAIL_TEXT};

/// Queues `mails` inside the caller's transaction, bodies sealed.
pub(super) async fn insert_mails(
    conn: &mut sqlx::PgConnection,
    keys: &Keys,
    mails: &[OutboundMail],
    now: OffsetDateTime,
) -> Result<(), StoreError> {
    for m in mails {
        let text = keys.seal(MAIL_TEXT, m.text.as_bytes())?;
        let html = keys.seal(MAIL_HTML, m.html.as_bytes())?;
        sqlx::query(
            "INSERT INTO mail_outbox (id, to_address, subject, text_body, html_body, created_at, next_attempt_at)
             VALUES ($1, $2, $3, $4, $5, $6, $6)",
        )
        .bind(Uuid::new_v4())
        .bind(&m.to)
        .bind(&m.subject)
        .bind(text)
        .bind(html)
        .bind(now)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

#[derive(sqlx::FromRow)]
struct ClaimedRow {
    id: Uuid,
    attempts: i32,
    to_address: String,
    subject: String,
    text_body: Option<Vec<u8>>,
    html_body: Option<Vec<u8>>,
}

#[async_trait]
pub trait OutboxStore: Send + Sync {
    /// Queues a mail on its own (no other change goes with it).
    async fn enqueue_mail(
        &self,
        mail: &OutboundMail,
        now: OffsetDateTime,
    ) -> Result<(), StoreError>;
    /// Claims up to `limit` due mails for `lease`, skipping rows other workers hold.
    /// A row whose body cannot be opened comes back with the reason instead.
    async fn claim_mail(
        &self,
        now: OffsetDateTime,
        lease: Duration,
        limit: i64,
    ) -> Result<Vec<QueuedMail>, StoreError>;
    async fn mail_sent(&self, id: Uuid, now: OffsetDateTime) -> Result<(), StoreError>;
    /// Records a failed attempt; `retry_at: None` gives up on the mail for good
    /// (its bodies are dropped).
    async fn mail_failed(
        &self,
        id: Uuid,
        now: OffsetDateTime,
        error: &str,
        retry_at: Option<OffsetDateTime>,
    ) -> Result<(), StoreError>;
}

#[async_trait]
impl OutboxStore for PgStore {
    async fn enqueue_mail(
        &self,
        mail: &OutboundMail,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        insert_mails(&mut conn, &self.keys, std::slice::from_ref(mail), now).await
    }

    async fn claim_mail(
        &self,
        now: OffsetDateTime,
        lease: Duration,
        limit: i64,
    ) -> Result<Vec<QueuedMail>, StoreError> {
        let lease_until = now + time::Duration::try_from(lease).unwrap_or(time::Duration::MINUTE);
        let rows: Vec<ClaimedRow> = sqlx::query_as(
            "UPDATE mail_outbox SET lease_until = $2
             WHERE id IN (
                 SELECT id FROM mail_outbox
                 WHERE sent_at IS NULL AND failed_at IS NULL AND next_attempt_at <= $1
                   AND (lease_until IS NULL OR lease_until <= $1)
                 ORDER BY next_attempt_at
                 LIMIT $3
                 FOR UPDATE SKIP LOCKED
             )
             RETURNING id, attempts, to_address, subject, text_body, html_body",
        )
        .bind(now)
        .bind(lease_until)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let open = |context: &str, sealed: Option<Vec<u8>>| -> Result<String, Unopenable> {
            let sealed = sealed.ok_or(Unopenable::Damaged)?;
            match self.keys.open(context, &sealed) {
                Ok(bytes) => String::from_utf8(bytes).map_err(|_| Unopenable::Damaged),
                Err(_) if self.keys.knows_key_of(&sealed) => Err(Unopenable::Damaged),
                Err(_) => Err(Unopenable::UnknownKey),
            }
        };
        Ok(rows
            .into_iter()
            .map(|r| {
                let text = open(MAIL_TEXT, r.text_body);
                let html = open(MAIL_HTML, r.html_body);
                QueuedMail {
                    id: r.id,
                    attempts: r.attempts,
                    mail: text.and_then(|text| {
                        Ok(OutboundMail {
                            to: r.to_address,
                            subject: r.subject,
                            text,
                            html: html?,
                        })
                    }),
                }
            })
            .collect())
    }

    async fn mail_sent(&self, id: Uuid, now: OffsetDateTime) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE mail_outbox
             SET sent_at = $2, attempts = attempts + 1, lease_until = NULL,
                 text_body = NULL, html_body = NULL
             WHERE id = $1",
        )
        .bind(id)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn mail_failed(
        &self,
        id: Uuid,
        now: OffsetDateTime,
        error: &str,
        retry_at: Option<OffsetDateTime>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE mail_outbox
             SET attempts = attempts + 1, last_error = left($3, 500), lease_until = NULL,
                 next_attempt_at = COALESCE($4, next_attempt_at),
                 failed_at = CASE WHEN $4::timestamptz IS NULL THEN $2 END,
                 text_body = CASE WHEN $4::timestamptz IS NULL THEN NULL ELSE text_body END,
                 html_body = CASE WHEN $4::timestamptz IS NULL THEN NULL ELSE html_body END
             WHERE id = $1",
        )
        .bind(id)
        .bind(now)
        .bind(error)
        .bind(retry_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}
