//! Apps: registered clients, the RS256 signing keys and remembered consents.

use async_trait::async_trait;
use time::OffsetDateTime;
use uuid::Uuid;

use super::pg::retry_once;
use super::{PgStore, StoreError};
use crate::domain::UserId;

/// A registered application.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct ClientRecord {
    pub id: String,
    pub name: String,
    /// SHA-256 of the secret; `None` for a public client.
    pub secret_hash: Option<Vec<u8>>,
    pub redirect_uris: Vec<String>,
    pub post_logout_redirect_uris: Vec<String>,
    pub backchannel_logout_uri: Option<String>,
    pub first_party: bool,
    pub introspect_any: bool,
    pub created_at: OffsetDateTime,
    /// Origins whose pages may read this client's token, revocation and userinfo
    /// answers (CORS); empty for any app that is not a browser app.
    pub web_origins: Vec<String>,
}

impl ClientRecord {
    pub fn is_public(&self) -> bool {
        self.secret_hash.is_none()
    }
}

/// A signing key as stored: the private half sealed.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct SigningKeyRecord {
    pub id: Uuid,
    pub kid: String,
    pub private_enc: Vec<u8>,
    pub n: Vec<u8>,
    pub e: Vec<u8>,
    pub created_at: OffsetDateTime,
    /// `None`: the signing key. Otherwise it verifies until then.
    pub verify_until: Option<OffsetDateTime>,
}

/// A consent as the account page lists it.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct ConsentRecord {
    pub client_id: String,
    pub client_name: String,
    pub scope: String,
    pub granted_at: OffsetDateTime,
}

#[async_trait]
pub trait ClientStore: Send + Sync {
    /// Registers a client; `Conflict` if the id is taken.
    async fn create_client(&self, client: &ClientRecord) -> Result<(), StoreError>;
    async fn client(&self, id: &str) -> Result<Option<ClientRecord>, StoreError>;
    async fn clients(&self) -> Result<Vec<ClientRecord>, StoreError>;
    /// Whether any client lists `origin` among its web origins (a CORS preflight,
    /// which names no client, is answered for those).
    async fn web_origin_registered(&self, origin: &str) -> Result<bool, StoreError>;
    /// Deletes a client and, with it, every code, grant, token and consent of it.
    async fn delete_client(&self, id: &str) -> Result<bool, StoreError>;

    /// Every key that signs or still verifies, and the retired ones' ids (newest first).
    async fn signing_keys(&self) -> Result<Vec<SigningKeyRecord>, StoreError>;
    /// Stores `candidate` as the signing key unless there already is one (several nodes
    /// starting at once: the first insert wins, the others' candidates are dropped).
    async fn ensure_signing_key(&self, candidate: &SigningKeyRecord) -> Result<(), StoreError>;
    /// Makes `new` the signing key. The previous one verifies until `keep_until`; any
    /// older key still verifying is retired now (JWKS shows current and previous).
    async fn rotate_signing_key(
        &self,
        new: &SigningKeyRecord,
        now: OffsetDateTime,
        keep_until: OffsetDateTime,
    ) -> Result<(), StoreError>;

    async fn has_consent(
        &self,
        user: UserId,
        client_id: &str,
        scope: &str,
    ) -> Result<bool, StoreError>;
    async fn grant_consent(
        &self,
        user: UserId,
        client_id: &str,
        scope: &str,
        now: OffsetDateTime,
    ) -> Result<(), StoreError>;
    async fn consents(&self, user: UserId) -> Result<Vec<ConsentRecord>, StoreError>;
    /// Withdraws every consent the user gave the client and revokes the client's grants
    /// for the user (its tokens die with them). Returns whether anything was withdrawn.
    async fn withdraw_consent(
        &self,
        user: UserId,
        client_id: &str,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError>;
}

const CLIENT_COLUMNS: &str = "id, name, secret_hash, redirect_uris, post_logout_redirect_uris,
     backchannel_logout_uri, first_party, introspect_any, created_at, web_origins";
const KEY_COLUMNS: &str = "id, kid, private_enc, n, e, created_at, verify_until";

/// Inserts `k` as the signing key (`verify_until` NULL); `tail` may add a conflict
/// clause.
async fn insert_key(
    conn: &mut sqlx::PgConnection,
    k: &SigningKeyRecord,
    tail: &'static str,
) -> Result<(), sqlx::Error> {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO signing_keys (id, kid, alg, private_enc, n, e, created_at, verify_until)
         VALUES ($1, $2, 'RS256', $3, $4, $5, $6, NULL){tail}"
    )))
    .bind(k.id)
    .bind(&k.kid)
    .bind(&k.private_enc)
    .bind(&k.n)
    .bind(&k.e)
    .bind(k.created_at)
    .execute(conn)
    .await?;
    Ok(())
}

#[async_trait]
impl ClientStore for PgStore {
    async fn create_client(&self, c: &ClientRecord) -> Result<(), StoreError> {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO oauth_clients ({CLIENT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        )))
        .bind(&c.id)
        .bind(&c.name)
        .bind(&c.secret_hash)
        .bind(&c.redirect_uris)
        .bind(&c.post_logout_redirect_uris)
        .bind(&c.backchannel_logout_uri)
        .bind(c.first_party)
        .bind(c.introspect_any)
        .bind(c.created_at)
        .bind(&c.web_origins)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn client(&self, id: &str) -> Result<Option<ClientRecord>, StoreError> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {CLIENT_COLUMNS} FROM oauth_clients WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn clients(&self) -> Result<Vec<ClientRecord>, StoreError> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {CLIENT_COLUMNS} FROM oauth_clients ORDER BY created_at, id"
        )))
        .fetch_all(&self.pool)
        .await?)
    }

    async fn web_origin_registered(&self, origin: &str) -> Result<bool, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM oauth_clients WHERE $1 = ANY (web_origins))",
        )
        .bind(origin)
        .fetch_one(&self.pool)
        .await?)
    }

    async fn delete_client(&self, id: &str) -> Result<bool, StoreError> {
        retry_once(|| self.delete_client_once(id)).await
    }

    async fn signing_keys(&self) -> Result<Vec<SigningKeyRecord>, StoreError> {
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT {KEY_COLUMNS} FROM signing_keys ORDER BY created_at DESC, kid"
        )))
        .fetch_all(&self.pool)
        .await?)
    }

    async fn ensure_signing_key(&self, k: &SigningKeyRecord) -> Result<(), StoreError> {
        // The partial unique index allows one key without `verify_until`; a second
        // node's insert conflicts with it and is dropped.
        let mut conn = self.pool.acquire().await?;
        insert_key(&mut conn, k, " ON CONFLICT DO NOTHING").await?;
        Ok(())
    }

    async fn rotate_signing_key(
        &self,
        k: &SigningKeyRecord,
        now: OffsetDateTime,
        keep_until: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        // Two rotations at once queue here instead of both demoting the same key.
        sqlx::query("LOCK TABLE signing_keys IN SHARE ROW EXCLUSIVE MODE")
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE signing_keys SET verify_until = $1 WHERE verify_until > $1")
            .bind(now)
            .execute(&mut *tx)
            .await?;
        sqlx::query("UPDATE signing_keys SET verify_until = $1 WHERE verify_until IS NULL")
            .bind(keep_until)
            .execute(&mut *tx)
            .await?;
        insert_key(&mut tx, k, "").await?;
        tx.commit().await?;
        self.revoked_here();
        Ok(())
    }

    async fn has_consent(
        &self,
        user: UserId,
        client_id: &str,
        scope: &str,
    ) -> Result<bool, StoreError> {
        let found: Option<(i32,)> = sqlx::query_as(
            "SELECT 1 FROM oauth_consents WHERE user_id = $1 AND client_id = $2 AND scope = $3",
        )
        .bind(user.0)
        .bind(client_id)
        .bind(scope)
        .fetch_optional(&self.pool)
        .await?;
        Ok(found.is_some())
    }

    async fn grant_consent(
        &self,
        user: UserId,
        client_id: &str,
        scope: &str,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO oauth_consents (user_id, client_id, scope, granted_at)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (user_id, client_id, scope) DO UPDATE SET granted_at = EXCLUDED.granted_at",
        )
        .bind(user.0)
        .bind(client_id)
        .bind(scope)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn consents(&self, user: UserId) -> Result<Vec<ConsentRecord>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT c.client_id, k.name AS client_name, c.scope, c.granted_at
             FROM oauth_consents c JOIN oauth_clients k ON k.id = c.client_id
             WHERE c.user_id = $1
             ORDER BY k.name, c.granted_at",
        )
        .bind(user.0)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn withdraw_consent(
        &self,
        user: UserId,
        client_id: &str,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        retry_once(|| self.withdraw_consent_once(user, client_id, now)).await
    }
}

impl PgStore {
    async fn withdraw_consent_once(
        &self,
        user: UserId,
        client_id: &str,
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        // Consents, then codes, then grants (in key order): the store's lock order.
        // A code inserted while the consent existed share-locked the consent row,
        // so it is committed, and seen below, before the consent can be deleted.
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query("DELETE FROM oauth_consents WHERE user_id = $1 AND client_id = $2")
            .bind(user.0)
            .bind(client_id)
            .execute(&mut *tx)
            .await?;
        // Codes handed out but not yet redeemed die too.
        sqlx::query("DELETE FROM oauth_codes WHERE user_id = $1 AND client_id = $2")
            .bind(user.0)
            .bind(client_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE oauth_grants SET revoked_at = $3, revoked_reason = 'consent_withdrawn'
             WHERE id IN (SELECT id FROM oauth_grants
                          WHERE user_id = $1 AND client_id = $2 AND revoked_at IS NULL
                          ORDER BY id FOR UPDATE)",
        )
        .bind(user.0)
        .bind(client_id)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.revoked_here();
        Ok(done.rows_affected() > 0)
    }
}

/// The transactions behind the methods above that `retry_once` may run twice.
impl PgStore {
    async fn delete_client_once(&self, id: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        // In the store's lock order: the client row first (a code redemption
        // share-locks it before anything else, so it finishes first or finds the
        // client gone), then its grants in key order (a refresh rotation locks
        // its grant before the token), then the cascade to everything else.
        let found: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM oauth_clients WHERE id = $1 FOR UPDATE")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        if found.is_none() {
            return Ok(false);
        }
        sqlx::query("SELECT 1 FROM oauth_grants WHERE client_id = $1 ORDER BY id FOR UPDATE")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query("DELETE FROM oauth_clients WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.revoked_here();
        Ok(done.rows_affected() == 1)
    }
}
