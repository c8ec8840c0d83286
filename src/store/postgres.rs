//! PostgreSQL implementation of `Store`.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Row};
use time::OffsetDateTime;
use uuid::Uuid;

use super::{
    Attempt, EmailTokenRecord, NewEmailToken, NewSession, NewUser, SessionRecord, Store,
    StoreError, ThrottleLimits, UserRecord,
};
use crate::crypto::Keys;
use crate::domain::{Email, SessionId, UserId};
use crate::mail::{OutboundMail, QueuedMail};

/// The schema, embedded in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// A lazily connecting pool: the process starts (and keeps running) while the
/// database is away, and requests answer 503 until it is back.
pub fn connect_pool(url: &str, acquire_timeout: Duration) -> Result<PgPool, sqlx::Error> {
    let options = PgConnectOptions::from_str(url)?.application_name("gatehouse");
    Ok(PgPoolOptions::new()
        .max_connections(16)
        .min_connections(0)
        .acquire_timeout(acquire_timeout)
        // A connection that sat idle may have died with a database restart: ping it
        // before use, so it is replaced rather than failing a request. A connection
        // used within the last second is trusted, which keeps the hot path at one
        // round trip per query instead of two.
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for > Duration::from_secs(1) {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
        .idle_timeout(Some(Duration::from_secs(300)))
        .connect_lazy_with(options))
}

pub async fn run_migrations(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

/// Whether an error means "the database cannot be reached right now" (as opposed to a
/// bug or a rule violation): pool timeouts, broken connections, and server states of
/// SQLSTATE class 08 (connection exception), 57P (shutting down) and 53 (resources).
pub fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.to_string()).unwrap_or_default();
            code.starts_with("08") || code.starts_with("57P") || code.starts_with("53")
        }
        _ => false,
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        if is_unavailable(&e) {
            StoreError::Unavailable(e)
        } else if matches!(&e, sqlx::Error::Database(db) if db.is_unique_violation()) {
            StoreError::Conflict
        } else {
            StoreError::Other(e)
        }
    }
}

/// `Store` over a PostgreSQL pool.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
    /// Seals mail bodies in the outbox: they carry single-use links, which must not
    /// sit in the clear at rest (DESIGN.md principle 2).
    keys: Arc<Keys>,
}

impl PgStore {
    pub fn new(pool: PgPool, keys: Arc<Keys>) -> Self {
        Self { pool, keys }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// The session INSERT, parameters $1–$12 as bound by `bind_session`. A macro so that
/// `sign_in_succeeded` can put a CTE in front of it and keep a `&'static str`.
macro_rules! insert_session_sql {
    () => {
        "INSERT INTO sessions (id, token_hash, user_id, created_at, last_seen_at,
             idle_timeout_secs, idle_expires_at, absolute_expires_at, remember_me,
             auth_time, aal, aal_reached_at, amr, ip_enc, user_agent_enc)
         VALUES ($1, $2, $3, $4, $4, $5, $6, $7, $8, $4, $9, $4, $10, $11, $12)"
    };
}

/// The same INSERT fed by a SELECT, so a WHERE clause can make it conditional.
macro_rules! insert_session_select_sql {
    () => {
        "INSERT INTO sessions (id, token_hash, user_id, created_at, last_seen_at,
             idle_timeout_secs, idle_expires_at, absolute_expires_at, remember_me,
             auth_time, aal, aal_reached_at, amr, ip_enc, user_agent_enc)
         SELECT $1, $2, $3, $4, $4, $5, $6, $7, $8, $4, $9, $4, $10, $11, $12"
    };
}

type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

fn bind_session<'q>(q: PgQuery<'q>, s: &'q NewSession) -> PgQuery<'q> {
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
}

async fn insert_session(conn: &mut sqlx::PgConnection, s: &NewSession) -> Result<(), sqlx::Error> {
    bind_session(sqlx::query(insert_session_sql!()), s)
        .execute(conn)
        .await?;
    Ok(())
}

async fn insert_mails(
    conn: &mut sqlx::PgConnection,
    keys: &Keys,
    mails: &[OutboundMail],
    now: OffsetDateTime,
) -> Result<(), sqlx::Error> {
    for m in mails {
        sqlx::query(
            "INSERT INTO mail_outbox (id, to_address, subject, text_body, html_body, created_at, next_attempt_at)
             VALUES ($1, $2, $3, $4, $5, $6, $6)",
        )
        .bind(Uuid::new_v4())
        .bind(&m.to)
        .bind(&m.subject)
        .bind(keys.seal(MAIL_TEXT, m.text.as_bytes()))
        .bind(keys.seal(MAIL_HTML, m.html.as_bytes()))
        .bind(now)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

const MAIL_TEXT: &str = "mail_outbox.text_body";
const MAIL_HTML: &str = "mail_outbox.html_body";

async fn insert_token(conn: &mut sqlx::PgConnection, t: &NewEmailToken) -> Result<(), sqlx::Error> {
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
async fn void_tokens(
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

/// Marks a live link used; returns its user and new address if it was live.
async fn consume_token(
    conn: &mut sqlx::PgConnection,
    token_hash: &[u8],
    purpose: &str,
    now: OffsetDateTime,
) -> Result<Option<(Uuid, Option<String>)>, sqlx::Error> {
    let row = sqlx::query(
        "UPDATE email_tokens SET used_at = $3
         WHERE token_hash = $1 AND purpose = $2 AND used_at IS NULL AND expires_at > $3
         RETURNING user_id, new_email",
    )
    .bind(token_hash)
    .bind(purpose)
    .bind(now)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|r| (r.get("user_id"), r.get("new_email"))))
}

#[async_trait]
impl Store for PgStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    async fn migrations_current(&self) -> Result<bool, StoreError> {
        let applied: Vec<i64> =
            sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
                .fetch_all(&self.pool)
                .await
                .or_else(|e| match &e {
                    // No migrations table yet: nothing applied.
                    sqlx::Error::Database(db) if db.code().as_deref() == Some("42P01") => {
                        Ok(Vec::new())
                    }
                    _ => Err(e),
                })?;
        Ok(MIGRATOR.iter().all(|m| applied.contains(&m.version)))
    }

    async fn create_user(
        &self,
        user: NewUser,
        session: Option<NewSession>,
        token: Option<NewEmailToken>,
        mails: &[OutboundMail],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
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
        if let Some(session) = &session {
            insert_session(&mut tx, session).await?;
        }
        if let Some(token) = &token {
            insert_token(&mut tx, token).await?;
        }
        insert_mails(&mut tx, &self.keys, mails, user.now).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn user_by_email(&self, email: &Email) -> Result<Option<UserRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT id, email, password_hash, disabled_at IS NOT NULL AS disabled,
                    email_verified_at IS NOT NULL AS verified
             FROM users WHERE email = $1",
        )
        .bind(email.as_str())
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| UserRecord {
            id: UserId(r.get("id")),
            email: r.get("email"),
            password_hash: r.get("password_hash"),
            disabled: r.get("disabled"),
            verified: r.get("verified"),
        }))
    }

    async fn sign_in_refund(&self, account_key: &[u8], ip_key: &[u8]) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE sign_in_throttle
             SET failures = CASE WHEN scope = 'account' THEN 0 ELSE GREATEST(failures - 1, 0) END,
                 blocked_until = NULL
             WHERE (scope = 'account' AND key = $1) OR (scope = 'ip' AND key = $2)",
        )
        .bind(account_key)
        .bind(ip_key)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn issue_email_token(
        &self,
        token: NewEmailToken,
        mails: &[OutboundMail],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        // A new link replaces earlier ones of its kind (a mistyped address for a
        // change, an older reset mail): only the newest works.
        void_tokens(&mut tx, token.user_id.0, &[token.purpose], token.now).await?;
        insert_token(&mut tx, &token).await?;
        insert_mails(&mut tx, &self.keys, mails, token.now).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn email_token(
        &self,
        token_hash: &[u8],
        purpose: &str,
        now: OffsetDateTime,
    ) -> Result<Option<EmailTokenRecord>, StoreError> {
        let row = sqlx::query(
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
            user_id: UserId(r.get("user_id")),
            email: r.get("email"),
            new_email: r.get("new_email"),
        }))
    }

    async fn verify_email(
        &self,
        token_hash: &[u8],
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let Some((user_id, _)) = consume_token(&mut tx, token_hash, "verify", now).await? else {
            return Ok(false);
        };
        sqlx::query(
            "UPDATE users SET email_verified_at = COALESCE(email_verified_at, $2), updated_at = $2
             WHERE id = $1",
        )
        .bind(user_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn reset_password(
        &self,
        token_hash: &[u8],
        now: OffsetDateTime,
        password_hash: &str,
        mails: &[OutboundMail],
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let Some((user_id, _)) = consume_token(&mut tx, token_hash, "reset", now).await? else {
            return Ok(false);
        };
        // Following the link proves the address, too.
        sqlx::query(
            "UPDATE users SET password_hash = $2, updated_at = $3,
                 email_verified_at = COALESCE(email_verified_at, $3)
             WHERE id = $1",
        )
        .bind(user_id)
        .bind(password_hash)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE sessions SET revoked_at = $2, revoked_reason = 'password reset'
             WHERE user_id = $1 AND revoked_at IS NULL",
        )
        .bind(user_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        // Every other pending reset or address change dies with it: a reset is what a
        // person does when someone else got in, and that someone may have asked to
        // move the account to their own address.
        void_tokens(&mut tx, user_id, &["reset", "change"], now).await?;
        insert_mails(&mut tx, &self.keys, mails, now).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn change_email(
        &self,
        token_hash: &[u8],
        now: OffsetDateTime,
        mails: &[OutboundMail],
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let Some((user_id, Some(new_email))) =
            consume_token(&mut tx, token_hash, "change", now).await?
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
        tx.commit().await?;
        Ok(true)
    }

    async fn enqueue_mail(
        &self,
        mail: &OutboundMail,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let mut conn = self.pool.acquire().await?;
        insert_mails(&mut conn, &self.keys, std::slice::from_ref(mail), now).await?;
        Ok(())
    }

    async fn claim_mail(
        &self,
        now: OffsetDateTime,
        lease: Duration,
        limit: i64,
    ) -> Result<Vec<QueuedMail>, StoreError> {
        let lease_until = now + time::Duration::try_from(lease).unwrap_or(time::Duration::MINUTE);
        let rows = sqlx::query(
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
        let open = |context: &str, sealed: Option<Vec<u8>>| -> Result<String, StoreError> {
            let bytes = sealed
                .and_then(|b| self.keys.open(context, &b).ok())
                .ok_or_else(|| {
                    StoreError::Other(sqlx::Error::Protocol("a mail body cannot be opened".into()))
                })?;
            Ok(String::from_utf8_lossy(&bytes).into_owned())
        };
        rows.into_iter()
            .map(|r| {
                Ok(QueuedMail {
                    id: r.get("id"),
                    attempts: r.get("attempts"),
                    mail: OutboundMail {
                        to: r.get("to_address"),
                        subject: r.get("subject"),
                        text: open(MAIL_TEXT, r.get("text_body"))?,
                        html: open(MAIL_HTML, r.get("html_body"))?,
                    },
                })
            })
            .collect()
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

    async fn outbox_depth(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT count(*) FROM mail_outbox WHERE sent_at IS NULL AND failed_at IS NULL",
        )
        .fetch_one(&self.pool)
        .await?)
    }

    async fn begin_sign_in(
        &self,
        email: &Email,
        account_key: &[u8],
        ip_key: &[u8],
        now: OffsetDateTime,
        limits: ThrottleLimits,
    ) -> Result<(Attempt, Option<UserRecord>), StoreError> {
        // One statement, one round trip, atomic. Both counts are conditional upserts:
        // the row lock serialises concurrent attempts and the condition is re-checked
        // on the latest row, so no number of parallel requests gets past a limit.
        // - ip: count the attempt against the client address (a fixed window that
        //   starts at the first failure), unless the window is full;
        // - acct: if the address allowed it, count it against the account *before*
        //   the password is checked, unless the account is in its backoff; from the
        //   limit on, each further failure doubles the wait (1 s, 2 s, … capped);
        // - the final SELECT sees the table as it was before this statement: the
        //   window or backoff that refused the attempt, and the user row.
        // Success or a right password takes both counts back (`sign_in_succeeded`,
        // `sign_in_refund`). An attempt refused by the account's backoff still counts
        // against the address: hammering a locked account is itself suspicious.
        let row = sqlx::query(
            "WITH ip AS (
                 INSERT INTO sign_in_throttle AS t (scope, key, failures, window_started_at, updated_at)
                 VALUES ('ip', $2, 1, $3, $3)
                 ON CONFLICT (scope, key) DO UPDATE SET
                     failures = CASE WHEN t.window_started_at + make_interval(secs => $5) <= $3
                                     THEN 1 ELSE t.failures + 1 END,
                     window_started_at = CASE WHEN t.window_started_at + make_interval(secs => $5) <= $3
                                     THEN $3 ELSE t.window_started_at END,
                     updated_at = $3
                 WHERE t.window_started_at + make_interval(secs => $5) <= $3 OR t.failures < $6
                 RETURNING failures
             ), acct AS (
                 INSERT INTO sign_in_throttle AS t
                     (scope, key, failures, window_started_at, blocked_until, updated_at)
                 SELECT 'account', $1, 1, $3,
                        CASE WHEN 1 >= $4 THEN $3 + interval '1 second' END, $3
                 WHERE EXISTS (SELECT 1 FROM ip)
                 ON CONFLICT (scope, key) DO UPDATE SET
                     failures = t.failures + 1,
                     blocked_until = CASE WHEN t.failures + 1 >= $4
                         THEN $3 + make_interval(secs => LEAST($7::float8, power(2, LEAST(t.failures + 1 - $4, 30))))
                         END,
                     updated_at = $3
                 WHERE t.blocked_until IS NULL OR t.blocked_until <= $3
                 RETURNING failures
             )
             SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM ip) THEN
                        (SELECT window_started_at + make_interval(secs => $5) FROM sign_in_throttle
                          WHERE scope = 'ip' AND key = $2)
                    END AS ip_blocked_until,
                    (SELECT failures FROM acct) AS counted,
                    (SELECT blocked_until FROM sign_in_throttle
                      WHERE scope = 'account' AND key = $1) AS account_blocked_until,
                    u.id, u.email, u.password_hash, u.disabled_at IS NOT NULL AS disabled,
                    u.email_verified_at IS NOT NULL AS verified
             FROM (SELECT 1) AS one
             LEFT JOIN users u ON u.email = $8",
        )
        .bind(account_key)
        .bind(ip_key)
        .bind(now)
        .bind(limits.account_max_failures)
        .bind(f64::from(limits.ip_window_secs))
        .bind(limits.ip_max_failures)
        .bind(f64::from(limits.max_backoff_secs))
        .bind(email.as_str())
        .fetch_one(&self.pool)
        .await?;
        let ip_blocked_until: Option<OffsetDateTime> = row.try_get("ip_blocked_until")?;
        let counted: Option<i32> = row.try_get("counted")?;
        let account_blocked_until: Option<OffsetDateTime> = row.try_get("account_blocked_until")?;
        let attempt = match (ip_blocked_until, counted) {
            (Some(ends), _) => Attempt::Blocked {
                retry_after_secs: seconds_until(now, ends),
            },
            (None, Some(_)) => Attempt::Allowed,
            (None, None) => Attempt::Blocked {
                retry_after_secs: account_blocked_until.map_or(1, |u| seconds_until(now, u)),
            },
        };
        let user = match row.try_get::<Option<Uuid>, _>("id")? {
            Some(id) => Some(UserRecord {
                id: UserId(id),
                email: row.try_get("email")?,
                password_hash: row.try_get("password_hash")?,
                disabled: row.try_get("disabled")?,
                verified: row.try_get("verified")?,
            }),
            None => None,
        };
        Ok((attempt, user))
    }

    async fn sign_in_succeeded(
        &self,
        account_key: &[u8],
        ip_key: &[u8],
        password_hash: &str,
        s: NewSession,
    ) -> Result<bool, StoreError> {
        // One statement (one round trip, atomic): take back the attempt's counts and
        // insert the session only if the password it was checked against is still the
        // user's and the user is enabled, so a reset or a disabling that committed
        // while argon2 ran is not undone by a session created after it.
        let sql = concat!(
            "WITH refund AS (
                 UPDATE sign_in_throttle
                 SET failures = CASE WHEN scope = 'account' THEN 0 ELSE GREATEST(failures - 1, 0) END,
                     blocked_until = NULL, updated_at = $4
                 WHERE (scope = 'account' AND key = $13) OR (scope = 'ip' AND key = $14)
             ) ",
            insert_session_select_sql!(),
            " FROM users WHERE id = $3 AND password_hash = $15 AND disabled_at IS NULL"
        );
        let done = bind_session(sqlx::query(sql), &s)
            .bind(account_key)
            .bind(ip_key)
            .bind(password_hash)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn count_in_window(
        &self,
        scope: &'static str,
        key: &[u8],
        now: OffsetDateTime,
        max: i32,
        window_secs: i32,
    ) -> Result<Attempt, StoreError> {
        let counted: Option<i32> = sqlx::query_scalar(
            "INSERT INTO sign_in_throttle AS t (scope, key, failures, window_started_at, updated_at)
             VALUES ($1, $2, 1, $3, $3)
             ON CONFLICT (scope, key) DO UPDATE SET
                 failures = CASE WHEN t.window_started_at + make_interval(secs => $5) <= $3
                                 THEN 1 ELSE t.failures + 1 END,
                 window_started_at = CASE WHEN t.window_started_at + make_interval(secs => $5) <= $3
                                 THEN $3 ELSE t.window_started_at END,
                 updated_at = $3
             WHERE t.window_started_at + make_interval(secs => $5) <= $3 OR t.failures < $4
             RETURNING failures",
        )
        .bind(scope)
        .bind(key)
        .bind(now)
        .bind(max)
        .bind(f64::from(window_secs))
        .fetch_optional(&self.pool)
        .await?;
        if counted.is_some() {
            return Ok(Attempt::Allowed);
        }
        let started: OffsetDateTime = sqlx::query_scalar(
            "SELECT window_started_at FROM sign_in_throttle WHERE scope = $1 AND key = $2",
        )
        .bind(scope)
        .bind(key)
        .fetch_one(&self.pool)
        .await?;
        Ok(Attempt::Blocked {
            retry_after_secs: seconds_until(
                now,
                started + time::Duration::seconds(i64::from(window_secs)),
            ),
        })
    }

    async fn live_session(
        &self,
        token_hash: &[u8],
        now: OffsetDateTime,
    ) -> Result<Option<SessionRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT s.id, s.user_id, u.email, s.created_at, s.last_seen_at, s.idle_expires_at,
                    s.absolute_expires_at, s.auth_time, s.aal, s.amr, s.remember_me
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
        Ok(row.map(|r| SessionRecord {
            id: SessionId(r.get::<Uuid, _>("id")),
            user_id: UserId(r.get::<Uuid, _>("user_id")),
            email: r.get("email"),
            created_at: r.get("created_at"),
            last_seen_at: r.get("last_seen_at"),
            idle_expires_at: r.get("idle_expires_at"),
            absolute_expires_at: r.get("absolute_expires_at"),
            auth_time: r.get("auth_time"),
            aal: r.get("aal"),
            amr: r.get("amr"),
            remember_me: r.get("remember_me"),
        }))
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
        now: OffsetDateTime,
        reason: &str,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE sessions SET revoked_at = $2, revoked_reason = $3
             WHERE id = $1 AND revoked_at IS NULL",
        )
        .bind(id.0)
        .bind(now)
        .bind(reason)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}

/// Dev mode: the stored secret key, or `candidate` stored as the key if none exists.
pub async fn dev_secret_key(pool: &PgPool, candidate: [u8; 32]) -> Result<[u8; 32], StoreError> {
    sqlx::query(
        "INSERT INTO dev_secret_key (key, created_at) VALUES ($1, now())
         ON CONFLICT (singleton) DO NOTHING",
    )
    .bind(candidate.as_slice())
    .execute(pool)
    .await?;
    let key: Vec<u8> = sqlx::query_scalar("SELECT key FROM dev_secret_key")
        .fetch_one(pool)
        .await?;
    key.try_into().map_err(|_| {
        StoreError::Other(sqlx::Error::Protocol(
            "stored dev key is not 32 bytes".into(),
        ))
    })
}

fn seconds_until(now: OffsetDateTime, then: OffsetDateTime) -> u64 {
    let secs = (then - now).as_seconds_f64().ceil();
    if secs < 1.0 { 1 } else { secs as u64 }
}
