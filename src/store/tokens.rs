//! Apps: authorization codes, grants and the tokens they issue. Redemption, rotation
//! and reuse handling are each one transaction; the rules that decide them are the
//! caller's (`oauth::rules`), passed in, so that the store only carries them out.

use async_trait::async_trait;
use time::OffsetDateTime;
use uuid::Uuid;

use super::events::{NewEvent, insert_event};
use super::pg::retry_once;
use super::{PgStore, Revoked, StoreError};
use crate::domain::{SessionId, UserId};

/// A code about to be handed to the browser.
pub struct NewCode {
    pub code_hash: Vec<u8>,
    pub client_id: String,
    pub user_id: UserId,
    pub session_id: SessionId,
    pub redirect_uri: String,
    pub scope: String,
    pub nonce: Option<String>,
    pub code_challenge: Option<String>,
    pub acr: String,
    pub amr: Vec<String>,
    pub auth_time: OffsetDateTime,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    /// A third-party app: the code is stored only while the person's consent to
    /// `scope` exists (a withdrawal racing the authorization wins).
    pub needs_consent: bool,
}

/// A code as the token endpoint sees it, with whether its session is still live.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct CodeRecord {
    pub client_id: String,
    pub user_id: Uuid,
    pub session_id: Uuid,
    pub redirect_uri: String,
    pub scope: String,
    pub nonce: Option<String>,
    pub code_challenge: Option<String>,
    pub acr: String,
    pub amr: Vec<String>,
    pub auth_time: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    pub used: bool,
    /// Session not revoked or expired, user enabled.
    pub live: bool,
    /// A first-party app, or the person's consent to the code's scope still exists.
    pub consented: bool,
    pub email: String,
    pub email_verified: bool,
}

/// The rows one token response creates.
pub struct NewTokens {
    /// The new grant's id (a refresh keeps its grant's and ignores this).
    pub grant_id: Uuid,
    pub jti: Uuid,
    pub kid: String,
    pub issued_at: OffsetDateTime,
    pub access_expires_at: OffsetDateTime,
    /// The refresh token's hash and expiry, if one is issued.
    pub refresh: Option<(Vec<u8>, OffsetDateTime)>,
}

/// What the token endpoint's code rule decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CodeVerdict {
    Issue,
    /// A spent code presented again by its own client: revoke the grant it made.
    Replay,
    /// Refused (`invalid_grant`) without spending the code.
    Refuse(&'static str),
}

pub enum Redemption {
    Unknown,
    /// A spent code came back: the grant it created is revoked now.
    Replayed,
    Refused(&'static str),
    Issued(Box<CodeRecord>),
}

/// A refresh token with its grant, as the rotation rule sees it.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct RefreshRecord {
    pub grant_id: Uuid,
    pub client_id: String,
    pub user_id: Option<Uuid>,
    pub session_id: Option<Uuid>,
    pub scope: String,
    pub acr: Option<String>,
    pub amr: Option<Vec<String>>,
    pub auth_time: Option<OffsetDateTime>,
    pub expires_at: OffsetDateTime,
    pub used: bool,
    pub grant_revoked: bool,
    pub live: bool,
    /// The session's absolute expiry: a refresh token never outlives it.
    pub session_expires_at: Option<OffsetDateTime>,
    pub email: Option<String>,
    pub email_verified: Option<bool>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefreshVerdict {
    Rotate,
    /// A spent token again: revoke the family and the session (RFC 9700 §4.14.2).
    Reuse,
    Refuse(&'static str),
    /// A scope wider than the grant's was asked for (`invalid_scope`); nothing changes.
    WiderScope,
}

pub enum Rotation {
    Unknown,
    Refused(&'static str),
    WiderScope,
    /// Reuse detected; the family and its session are revoked.
    Reused,
    Rotated(Box<RefreshRecord>),
}

/// An access token's row with everything its liveness depends on, checked at call time.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct LiveToken {
    pub grant_id: Uuid,
    pub client_id: String,
    pub user_id: Option<Uuid>,
    pub session_id: Option<Uuid>,
    pub scope: String,
    pub email: Option<String>,
    pub email_verified: Option<bool>,
    /// The earliest moment this answer can change by itself: the token's expiry, its
    /// session's idle and absolute expiry, its key's retirement.
    pub live_until: OffsetDateTime,
}

/// A refresh token that is live, for introspection.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct LiveRefresh {
    pub client_id: String,
    pub user_id: Option<Uuid>,
    pub session_id: Option<Uuid>,
    pub scope: String,
    pub acr: Option<String>,
    pub amr: Option<Vec<String>>,
    pub auth_time: Option<OffsetDateTime>,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
}

pub type CodeRule<'a> = &'a (dyn Fn(&CodeRecord) -> CodeVerdict + Send + Sync);
pub type RefreshRule<'a> = &'a (dyn Fn(&RefreshRecord) -> RefreshVerdict + Send + Sync);

#[async_trait]
pub trait TokenStore: Send + Sync {
    /// Stores a code; false (nothing stored) if it needs consent and the consent is
    /// gone.
    async fn insert_code(&self, code: &NewCode) -> Result<bool, StoreError>;
    /// Redeems a code in one transaction, as `rule` decides: on `Replay` the grant the
    /// code made is revoked (RFC 6749 §4.1.2); on `Issue` the code is spent and the
    /// grant and its tokens are created; on `Refuse` nothing changes.
    async fn redeem_code(
        &self,
        code_hash: &[u8],
        now: OffsetDateTime,
        rule: CodeRule<'_>,
        tokens: &NewTokens,
    ) -> Result<Redemption, StoreError>;
    /// Rotates a refresh token in one transaction, as `rule` decides: the old one is
    /// spent, a new one and an access token issued, the session's idle clock reset;
    /// on reuse the whole family and its session are revoked and `reuse_event` recorded.
    async fn rotate_refresh(
        &self,
        token_hash: &[u8],
        now: OffsetDateTime,
        rule: RefreshRule<'_>,
        tokens: &NewTokens,
        reuse_event: &NewEvent,
    ) -> Result<Rotation, StoreError>;
    /// A grant without a person (client_credentials) and its access token.
    async fn issue_client_grant(
        &self,
        client_id: &str,
        scope: &str,
        tokens: &NewTokens,
    ) -> Result<(), StoreError>;
    /// The access token `jti` signed by `kid`, if it is live right now: unexpired,
    /// unrevoked, grant unrevoked, signing key not retired, session live, user enabled.
    async fn live_access_token(
        &self,
        jti: Uuid,
        kid: &str,
        now: OffsetDateTime,
    ) -> Result<Option<LiveToken>, StoreError>;
    async fn live_refresh_token(
        &self,
        token_hash: &[u8],
        now: OffsetDateTime,
    ) -> Result<Option<LiveRefresh>, StoreError>;
    /// Revokes one access token, if `client_id` was issued it.
    async fn revoke_access_token(
        &self,
        jti: Uuid,
        client_id: &str,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError>;
    /// Revokes the grant of a refresh token (and so all its tokens), if `client_id`
    /// was issued it.
    async fn revoke_refresh_family(
        &self,
        token_hash: &[u8],
        client_id: &str,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError>;
    /// Whether an app knows `session` as `sid`: one of its grants moved there from the
    /// session its ID token named (the person signed in again in the same browser).
    async fn known_as(&self, session: SessionId, sid: Uuid) -> Result<bool, StoreError>;
}

const LIVE_SESSION: &str = "(s.revoked_at IS NULL AND s.idle_expires_at > $2
     AND s.absolute_expires_at > $2 AND u.disabled_at IS NULL)";

/// Inserts the access (and refresh) token rows of `t` under `grant_id`.
async fn insert_tokens(
    conn: &mut sqlx::PgConnection,
    grant_id: Uuid,
    t: &NewTokens,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO oauth_access_tokens (jti, grant_id, kid, issued_at, expires_at)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(t.jti)
    .bind(grant_id)
    .bind(&t.kid)
    .bind(t.issued_at)
    .bind(t.access_expires_at)
    .execute(&mut *conn)
    .await?;
    if let Some((hash, expires_at)) = &t.refresh {
        sqlx::query(
            "INSERT INTO oauth_refresh_tokens (token_hash, grant_id, created_at, expires_at)
             VALUES ($1, $2, $3, LEAST($4, COALESCE(
                 (SELECT s.absolute_expires_at FROM oauth_grants g
                  JOIN sessions s ON s.id = g.session_id WHERE g.id = $2), $4)))",
        )
        .bind(hash)
        .bind(grant_id)
        .bind(t.issued_at)
        .bind(expires_at)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

#[async_trait]
impl TokenStore for PgStore {
    async fn insert_code(&self, c: &NewCode) -> Result<bool, StoreError> {
        // The consent row is share-locked until the commit: a withdrawal deletes it
        // only after this code is in (and then deletes the code and revokes what it
        // made), or first, and then no code is stored.
        let done = sqlx::query(
            "INSERT INTO oauth_codes (code_hash, client_id, user_id, session_id, redirect_uri,
                 scope, nonce, code_challenge, acr, amr, auth_time, created_at, expires_at)
             SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13
             WHERE NOT $14 OR EXISTS (
                 SELECT 1 FROM oauth_consents
                 WHERE user_id = $3 AND client_id = $2 AND scope = $6 FOR SHARE)",
        )
        .bind(&c.code_hash)
        .bind(&c.client_id)
        .bind(c.user_id.0)
        .bind(c.session_id.0)
        .bind(&c.redirect_uri)
        .bind(&c.scope)
        .bind(&c.nonce)
        .bind(&c.code_challenge)
        .bind(&c.acr)
        .bind(&c.amr)
        .bind(c.auth_time)
        .bind(c.created_at)
        .bind(c.expires_at)
        .bind(c.needs_consent)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn redeem_code(
        &self,
        code_hash: &[u8],
        now: OffsetDateTime,
        rule: CodeRule<'_>,
        t: &NewTokens,
    ) -> Result<Redemption, StoreError> {
        retry_once(|| self.redeem_code_once(code_hash, now, rule, t)).await
    }

    async fn rotate_refresh(
        &self,
        token_hash: &[u8],
        now: OffsetDateTime,
        rule: RefreshRule<'_>,
        t: &NewTokens,
        reuse_event: &NewEvent,
    ) -> Result<Rotation, StoreError> {
        retry_once(|| self.rotate_refresh_once(token_hash, now, rule, t, reuse_event)).await
    }

    async fn issue_client_grant(
        &self,
        client_id: &str,
        scope: &str,
        t: &NewTokens,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO oauth_grants (id, client_id, scope, created_at) VALUES ($1, $2, $3, $4)",
        )
        .bind(t.grant_id)
        .bind(client_id)
        .bind(scope)
        .bind(t.issued_at)
        .execute(&mut *tx)
        .await?;
        insert_tokens(&mut tx, t.grant_id, t).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn live_access_token(
        &self,
        jti: Uuid,
        kid: &str,
        now: OffsetDateTime,
    ) -> Result<Option<LiveToken>, StoreError> {
        let sql = format!(
            "SELECT a.grant_id, g.client_id, g.user_id, g.session_id, g.scope, u.email,
                    u.email_verified_at IS NOT NULL AS email_verified,
                    LEAST(a.expires_at, s.idle_expires_at, s.absolute_expires_at,
                          k.verify_until) AS live_until
             FROM oauth_access_tokens a
             JOIN oauth_grants g ON g.id = a.grant_id
             JOIN signing_keys k ON k.kid = a.kid
             LEFT JOIN sessions s ON s.id = g.session_id
             LEFT JOIN users u ON u.id = g.user_id
             WHERE a.jti = $1 AND a.kid = $3
               AND a.revoked_at IS NULL AND a.expires_at > $2
               AND g.revoked_at IS NULL
               AND (k.verify_until IS NULL OR k.verify_until > $2)
               AND (g.session_id IS NULL OR {LIVE_SESSION})"
        );
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(jti)
            .bind(now)
            .bind(kid)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn live_refresh_token(
        &self,
        token_hash: &[u8],
        now: OffsetDateTime,
    ) -> Result<Option<LiveRefresh>, StoreError> {
        let sql = format!(
            "SELECT g.client_id, g.user_id, g.session_id, g.scope, g.acr, g.amr, g.auth_time,
                    r.created_at, r.expires_at
             FROM oauth_refresh_tokens r
             JOIN oauth_grants g ON g.id = r.grant_id
             LEFT JOIN sessions s ON s.id = g.session_id
             LEFT JOIN users u ON u.id = g.user_id
             WHERE r.token_hash = $1 AND r.used_at IS NULL AND r.expires_at > $2
               AND g.revoked_at IS NULL
               AND (g.session_id IS NULL OR {LIVE_SESSION})"
        );
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(token_hash)
            .bind(now)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn revoke_access_token(
        &self,
        jti: Uuid,
        client_id: &str,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE oauth_access_tokens a SET revoked_at = $3
             FROM oauth_grants g
             WHERE a.jti = $1 AND g.id = a.grant_id AND g.client_id = $2 AND a.revoked_at IS NULL",
        )
        .bind(jti)
        .bind(client_id)
        .bind(now)
        .execute(&self.pool)
        .await?;
        // Nothing revoked (someone else's token, one already revoked): nothing to forget.
        let revoked = done.rows_affected() == 1;
        if revoked {
            self.revoked_only(Revoked::Token(jti));
        }
        Ok(revoked)
    }

    async fn known_as(&self, session: SessionId, sid: Uuid) -> Result<bool, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM oauth_grants WHERE session_id = $1 AND told_sid = $2)",
        )
        .bind(session.0)
        .bind(sid)
        .fetch_one(&self.pool)
        .await?)
    }

    async fn revoke_refresh_family(
        &self,
        token_hash: &[u8],
        client_id: &str,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let grant: Option<Uuid> = sqlx::query_scalar(
            "UPDATE oauth_grants g SET revoked_at = $3, revoked_reason = 'revoked_by_client'
             FROM oauth_refresh_tokens r
             WHERE r.token_hash = $1 AND g.id = r.grant_id AND g.client_id = $2
               AND g.revoked_at IS NULL
             RETURNING g.id",
        )
        .bind(token_hash)
        .bind(client_id)
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        // An unknown or foreign token revokes nothing, so nothing is forgotten.
        if let Some(grant) = grant {
            self.revoked_only(Revoked::Grant(grant));
        }
        Ok(grant.is_some())
    }
}

/// The transactions behind the methods above that `retry_once` may run twice.
impl PgStore {
    async fn redeem_code_once(
        &self,
        code_hash: &[u8],
        now: OffsetDateTime,
        rule: CodeRule<'_>,
        t: &NewTokens,
    ) -> Result<Redemption, StoreError> {
        let mut tx = self.pool.begin().await?;
        // Locks in the store's order (see the module documentation): the client
        // row, the session, the code, then the grant. The client is share-locked
        // so that a `client delete` under way finishes first (and the code is
        // gone) or waits for this redemption (and deletes what it made). The
        // session row is share-locked: a revocation racing this redemption waits
        // for it (and its trigger then sees the new grant, so the app gets its
        // back-channel logout), or wins first and the code is refused as not
        // live; a refresh of the grant (which locks the session first) queues
        // behind a replay's revocation instead of deadlocking with it.
        let owner: Option<(String, Uuid)> =
            sqlx::query_as("SELECT client_id, session_id FROM oauth_codes WHERE code_hash = $1")
                .bind(code_hash)
                .fetch_optional(&mut *tx)
                .await?;
        let Some((client_id, session_id)) = owner else {
            return Ok(Redemption::Unknown);
        };
        let client: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM oauth_clients WHERE id = $1 FOR KEY SHARE")
                .bind(&client_id)
                .fetch_optional(&mut *tx)
                .await?;
        if client.is_none() {
            return Ok(Redemption::Unknown);
        }
        sqlx::query("SELECT 1 FROM sessions WHERE id = $1 FOR SHARE")
            .bind(session_id)
            .execute(&mut *tx)
            .await?;
        let sql = format!(
            "SELECT c.client_id, c.user_id, c.session_id, c.redirect_uri, c.scope, c.nonce,
                    c.code_challenge, c.acr, c.amr, c.auth_time, c.expires_at,
                    c.used_at IS NOT NULL AS used, {LIVE_SESSION} AS live,
                    (k.first_party OR EXISTS (
                        SELECT 1 FROM oauth_consents o
                        WHERE o.user_id = c.user_id AND o.client_id = c.client_id
                          AND o.scope = c.scope)) AS consented,
                    u.email, u.email_verified_at IS NOT NULL AS email_verified
             FROM oauth_codes c
             JOIN oauth_clients k ON k.id = c.client_id
             JOIN sessions s ON s.id = c.session_id
             JOIN users u ON u.id = c.user_id
             WHERE c.code_hash = $1
             FOR UPDATE OF c"
        );
        let code: Option<CodeRecord> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(code_hash)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(code) = code else {
            return Ok(Redemption::Unknown);
        };
        let verdict = rule(&code);
        if verdict == CodeVerdict::Replay {
            let grant: Option<Uuid> = sqlx::query_scalar(
                "UPDATE oauth_grants SET revoked_at = $2, revoked_reason = 'code_replayed'
                 WHERE code_hash = $1 AND revoked_at IS NULL
                 RETURNING id",
            )
            .bind(code_hash)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
            tx.commit().await?;
            // A code replayed again (its grant already ended) revokes nothing, and
            // this node forgets nothing: a spent code must not empty its caches.
            if let Some(grant) = grant {
                self.revoked_only(Revoked::Grant(grant));
            }
            return Ok(Redemption::Replayed);
        }
        if let CodeVerdict::Refuse(why) = verdict {
            return Ok(Redemption::Refused(why));
        }
        sqlx::query("UPDATE oauth_codes SET used_at = $2 WHERE code_hash = $1")
            .bind(code_hash)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO oauth_grants (id, client_id, user_id, session_id, scope, acr, amr,
                 auth_time, code_hash, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(t.grant_id)
        .bind(&code.client_id)
        .bind(code.user_id)
        .bind(code.session_id)
        .bind(&code.scope)
        .bind(&code.acr)
        .bind(&code.amr)
        .bind(code.auth_time)
        .bind(code_hash)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        insert_tokens(&mut tx, t.grant_id, t).await?;
        tx.commit().await?;
        Ok(Redemption::Issued(Box::new(code)))
    }

    async fn rotate_refresh_once(
        &self,
        token_hash: &[u8],
        now: OffsetDateTime,
        rule: RefreshRule<'_>,
        t: &NewTokens,
        reuse_event: &NewEvent,
    ) -> Result<Rotation, StoreError> {
        let mut tx = self.pool.begin().await?;
        // Locks in the store's order: the session (its idle clock is reset below,
        // and a reuse revokes it), then the grant, then the token. A code replay
        // revoking this grant holds the session shared until it commits, so the
        // rotation then finds the grant revoked.
        let session: Option<Option<Uuid>> = sqlx::query_scalar(
            "SELECT g.session_id FROM oauth_refresh_tokens r
             JOIN oauth_grants g ON g.id = r.grant_id WHERE r.token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(session) = session else {
            return Ok(Rotation::Unknown);
        };
        if let Some(session) = session {
            sqlx::query("SELECT 1 FROM sessions WHERE id = $1 FOR NO KEY UPDATE")
                .bind(session)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(
            "SELECT 1 FROM oauth_grants WHERE id =
                 (SELECT grant_id FROM oauth_refresh_tokens WHERE token_hash = $1)
             FOR UPDATE",
        )
        .bind(token_hash)
        .execute(&mut *tx)
        .await?;
        let sql = format!(
            "SELECT r.grant_id, g.client_id, g.user_id, g.session_id, g.scope, g.acr, g.amr,
                    g.auth_time, r.expires_at, r.used_at IS NOT NULL AS used,
                    g.revoked_at IS NOT NULL AS grant_revoked,
                    COALESCE({LIVE_SESSION}, g.session_id IS NULL) AS live,
                    s.absolute_expires_at AS session_expires_at,
                    u.email, u.email_verified_at IS NOT NULL AS email_verified
             FROM oauth_refresh_tokens r
             JOIN oauth_grants g ON g.id = r.grant_id
             LEFT JOIN sessions s ON s.id = g.session_id
             LEFT JOIN users u ON u.id = g.user_id
             WHERE r.token_hash = $1
             FOR UPDATE OF r, g"
        );
        let rec: Option<RefreshRecord> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(token_hash)
            .bind(now)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(rec) = rec else {
            return Ok(Rotation::Unknown);
        };
        match rule(&rec) {
            RefreshVerdict::Refuse(why) => Ok(Rotation::Refused(why)),
            RefreshVerdict::WiderScope => Ok(Rotation::WiderScope),
            RefreshVerdict::Reuse => {
                sqlx::query(
                    "UPDATE oauth_grants SET revoked_at = $2, revoked_reason = 'refresh_token_reuse'
                     WHERE id = $1 AND revoked_at IS NULL",
                )
                .bind(rec.grant_id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                if let (Some(session), Some(user)) = (rec.session_id, rec.user_id) {
                    sqlx::query(
                        "UPDATE sessions SET revoked_at = $2, revoked_reason = 'refresh_token_reuse'
                         WHERE id = $1 AND revoked_at IS NULL",
                    )
                    .bind(session)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                    insert_event(&mut tx, user, Some(session), reuse_event).await?;
                }
                tx.commit().await?;
                self.revoked_here();
                Ok(Rotation::Reused)
            }
            RefreshVerdict::Rotate => {
                sqlx::query("UPDATE oauth_refresh_tokens SET used_at = $2 WHERE token_hash = $1")
                    .bind(token_hash)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                insert_tokens(&mut tx, rec.grant_id, t).await?;
                // Using an app counts as activity of the browser session behind it.
                if let Some(session) = rec.session_id {
                    sqlx::query(
                        "UPDATE sessions
                         SET last_seen_at = $2,
                             idle_expires_at = LEAST($2 + make_interval(secs => idle_timeout_secs), absolute_expires_at)
                         WHERE id = $1 AND revoked_at IS NULL",
                    )
                    .bind(session)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                Ok(Rotation::Rotated(Box::new(rec)))
            }
        }
    }
}
