//! Upstreams (the other identity providers people may sign in with), the identities
//! people hold there (`federated_identities`: identity is (upstream, subject), never
//! an address), and the `jti`s of upstream logout tokens already spent.

use async_trait::async_trait;
use time::OffsetDateTime;
use uuid::Uuid;

use super::accounts::lock_user;
use super::events::{EVENT_COLUMNS, NewEvent, bind_event, event_at, event_values, insert_event};
use super::pg::retry_once;
use super::{PgStore, StoreError};
use crate::domain::UserId;

/// The revocation reason of sessions whose upstream link was removed.
pub const UNLINKED: &str = "upstream unlinked";
/// The revocation reason of sessions whose upstream was deleted.
pub const UPSTREAM_DELETED: &str = "upstream deleted";

/// How Gatehouse talks to an upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UpstreamKind {
    /// OpenID Connect, configured by discovery from the issuer.
    Oidc,
    /// GitHub's OAuth 2.0 and REST API (not OpenID Connect).
    Github,
}

impl UpstreamKind {
    pub fn as_str(self) -> &'static str {
        match self {
            UpstreamKind::Oidc => "oidc",
            UpstreamKind::Github => "github",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "oidc" => Some(UpstreamKind::Oidc),
            "github" => Some(UpstreamKind::Github),
            _ => None,
        }
    }
}

/// An upstream as the sign-in flows need it. Holds no secret: the sealed client
/// secret travels beside it (`upstream_by_name`), opened only where it is sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upstream {
    pub id: Uuid,
    /// Part of the redirect and back-channel logout URIs (`[a-z0-9][a-z0-9_-]{0,39}`).
    pub name: String,
    pub kind: UpstreamKind,
    /// The preset it was made from (`google`, `microsoft`, `gitlab`), if any.
    pub preset: Option<String>,
    /// What pages show ("Continue with …").
    pub label: String,
    /// Link at once to an account with the same address when the upstream says the
    /// address is verified.
    pub trust_email: bool,
    /// OIDC: the issuer, exactly as discovery and tokens must name it.
    pub issuer: Option<String>,
    /// GitHub: the web base (`https://github.com`) and the REST API base.
    pub base_url: Option<String>,
    pub api_url: Option<String>,
    pub client_id: String,
    /// Space-separated scopes asked for.
    pub scopes: String,
    pub created_at: OffsetDateTime,
}

/// An upstream to add; the client secret already sealed
/// (`crypto::columns::UPSTREAM_CLIENT_SECRET`).
pub struct NewUpstream {
    pub name: String,
    pub kind: UpstreamKind,
    pub preset: Option<String>,
    pub label: String,
    pub trust_email: bool,
    pub issuer: Option<String>,
    pub base_url: Option<String>,
    pub api_url: Option<String>,
    pub client_id: String,
    pub client_secret_enc: Vec<u8>,
    pub scopes: String,
    pub now: OffsetDateTime,
}

/// One person's identity at one upstream.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct FederatedIdentity {
    pub id: Uuid,
    pub upstream_id: Uuid,
    pub subject: String,
    pub user_id: Uuid,
    /// The address the upstream gave at the last sign-in.
    pub email: Option<String>,
    pub created_at: OffsetDateTime,
    pub last_used_at: OffsetDateTime,
}

/// A linked identity as `/account/connections` shows it.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct Connection {
    pub identity_id: Uuid,
    pub upstream_id: Uuid,
    pub upstream_name: String,
    pub label: String,
    pub subject: String,
    pub email: Option<String>,
    pub created_at: OffsetDateTime,
    pub last_used_at: OffsetDateTime,
}

/// A link to make.
pub struct NewLink<'a> {
    pub user_id: UserId,
    pub upstream_id: Uuid,
    pub subject: &'a str,
    pub email: Option<&'a str>,
    pub now: OffsetDateTime,
}

/// What an unlink did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unlinked {
    Done,
    /// The person holds no identity at that upstream.
    NotLinked,
    /// It is the person's last way to sign in (no password, no passkey, no other
    /// link): kept.
    LastWay,
}

#[async_trait]
pub trait UpstreamStore: Send + Sync {
    /// Every upstream, by name.
    async fn upstreams(&self) -> Result<Vec<Upstream>, StoreError>;
    /// One upstream and its sealed client secret.
    async fn upstream_by_name(&self, name: &str)
    -> Result<Option<(Upstream, Vec<u8>)>, StoreError>;
    /// One upstream by id (e.g. a session's `upstream_id`) and its sealed secret.
    async fn upstream_by_id(&self, id: Uuid) -> Result<Option<(Upstream, Vec<u8>)>, StoreError>;
    /// Adds an upstream; `Conflict` when the name is taken.
    async fn add_upstream(&self, new: &NewUpstream) -> Result<Upstream, StoreError>;
    /// Deletes an upstream and, by cascade, every identity linked through it and
    /// every sign-in from it waiting for a second factor; the live sessions made
    /// from it are revoked first and `event` is recorded for each person who had a
    /// link, in the same transaction. Whether it existed.
    async fn delete_upstream(&self, name: &str, event: &NewEvent) -> Result<bool, StoreError>;
    /// The identity known for (upstream, subject).
    async fn federated_identity(
        &self,
        upstream_id: Uuid,
        subject: &str,
    ) -> Result<Option<FederatedIdentity>, StoreError>;
    /// A person's linked identities with their upstream's name and label, by label.
    async fn identities_of(&self, user_id: UserId) -> Result<Vec<Connection>, StoreError>;
    /// Links (upstream, subject) to a person and records `event` for them, in one
    /// transaction under the user row's lock. `Conflict` when that identity belongs
    /// to someone already, or the person already holds one at that upstream.
    async fn link_identity(
        &self,
        link: &NewLink<'_>,
        event: &NewEvent,
    ) -> Result<FederatedIdentity, StoreError>;
    /// Removes the person's identity at `upstream_id` and records `event`, unless it
    /// is their last way to sign in (checked under the user row's lock, so two
    /// unlinks at once cannot both pass). The person's sessions made from that
    /// upstream end with it, and their sign-ins from it waiting for a second factor.
    async fn unlink_identity(
        &self,
        user_id: UserId,
        upstream_id: Uuid,
        event: &NewEvent,
    ) -> Result<Unlinked, StoreError>;
    /// Marks an identity used now, with the address the upstream gave this time.
    async fn touch_identity(
        &self,
        identity_id: Uuid,
        email: Option<&str>,
        now: OffsetDateTime,
    ) -> Result<(), StoreError>;
    /// Spends the `jti` of an upstream's logout token: `true` the first time,
    /// `false` for a replay. Kept until `keep_until` (housekeeping deletes it then;
    /// a token that old is refused for its age anyway).
    async fn spend_upstream_jti(
        &self,
        upstream_id: Uuid,
        jti: &str,
        keep_until: OffsetDateTime,
    ) -> Result<bool, StoreError>;
    /// Whether the `jti` of an upstream's logout token was spent already (a replay).
    async fn upstream_jti_spent(&self, upstream_id: Uuid, jti: &str) -> Result<bool, StoreError>;
}

#[derive(sqlx::FromRow)]
struct UpstreamRow {
    id: Uuid,
    name: String,
    kind: String,
    preset: Option<String>,
    label: String,
    trust_email: bool,
    issuer: Option<String>,
    base_url: Option<String>,
    api_url: Option<String>,
    client_id: String,
    scopes: String,
    created_at: OffsetDateTime,
    client_secret_enc: Vec<u8>,
}

impl UpstreamRow {
    fn split(self) -> Result<(Upstream, Vec<u8>), StoreError> {
        let kind = UpstreamKind::parse(&self.kind).ok_or_else(|| {
            StoreError::Other(sqlx::Error::Decode(
                format!("unknown upstream kind {:?}", self.kind).into(),
            ))
        })?;
        Ok((
            Upstream {
                id: self.id,
                name: self.name,
                kind,
                preset: self.preset,
                label: self.label,
                trust_email: self.trust_email,
                issuer: self.issuer,
                base_url: self.base_url,
                api_url: self.api_url,
                client_id: self.client_id,
                scopes: self.scopes,
                created_at: self.created_at,
            },
            self.client_secret_enc,
        ))
    }
}

const UPSTREAM_COLUMNS: &str = "id, name, kind, preset, label, trust_email, issuer, base_url, \
     api_url, client_id, scopes, created_at, client_secret_enc";

const IDENTITY_COLUMNS: &str = "id, upstream_id, subject, user_id, email, created_at, last_used_at";

#[async_trait]
impl UpstreamStore for PgStore {
    async fn upstreams(&self) -> Result<Vec<Upstream>, StoreError> {
        let sql = format!("SELECT {UPSTREAM_COLUMNS} FROM upstreams ORDER BY name");
        let rows: Vec<UpstreamRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter()
            .map(|r| r.split().map(|(u, _)| u))
            .collect()
    }

    async fn upstream_by_name(
        &self,
        name: &str,
    ) -> Result<Option<(Upstream, Vec<u8>)>, StoreError> {
        let sql = format!("SELECT {UPSTREAM_COLUMNS} FROM upstreams WHERE name = $1");
        let row: Option<UpstreamRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.map(UpstreamRow::split).transpose()
    }

    async fn upstream_by_id(&self, id: Uuid) -> Result<Option<(Upstream, Vec<u8>)>, StoreError> {
        let sql = format!("SELECT {UPSTREAM_COLUMNS} FROM upstreams WHERE id = $1");
        let row: Option<UpstreamRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(UpstreamRow::split).transpose()
    }

    async fn add_upstream(&self, n: &NewUpstream) -> Result<Upstream, StoreError> {
        let sql = format!(
            "INSERT INTO upstreams (id, name, kind, preset, label, trust_email, issuer, base_url,
                 api_url, client_id, client_secret_enc, scopes, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $13)
             RETURNING {UPSTREAM_COLUMNS}"
        );
        let row: UpstreamRow = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(Uuid::new_v4())
            .bind(&n.name)
            .bind(n.kind.as_str())
            .bind(&n.preset)
            .bind(&n.label)
            .bind(n.trust_email)
            .bind(&n.issuer)
            .bind(&n.base_url)
            .bind(&n.api_url)
            .bind(&n.client_id)
            .bind(&n.client_secret_enc)
            .bind(&n.scopes)
            .bind(n.now)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.split()?.0)
    }

    async fn delete_upstream(&self, name: &str, event: &NewEvent) -> Result<bool, StoreError> {
        retry_once(|| async move {
            let mut tx = self.pool.begin().await?;
            let id: Option<Uuid> =
                sqlx::query_scalar("SELECT id FROM upstreams WHERE name = $1 FOR UPDATE")
                    .bind(name)
                    .fetch_optional(&mut *tx)
                    .await?;
            let Some(id) = id else {
                return Ok(false);
            };
            // Its sessions end (as any revocation: the trigger tells their apps) before
            // the foreign key cuts their tie; its links and waiting sign-ins cascade.
            sqlx::query(
                "WITH r AS (
                     UPDATE sessions SET revoked_at = $3, revoked_reason = $2
                     WHERE upstream_id = $1 AND revoked_at IS NULL
                     RETURNING id, user_id
                 )
                 INSERT INTO security_events (id, user_id, session_id, kind, actor, at, detail)
                 SELECT gen_random_uuid(), r.user_id, r.id, 'session_revoked', 'admin', $3, $2
                 FROM r",
            )
            .bind(id)
            .bind(UPSTREAM_DELETED)
            .bind(event.at)
            .execute(&mut *tx)
            .await?;
            // Each person loses a way to sign in: their activity page says so.
            let sql = format!(
                "INSERT INTO security_events {EVENT_COLUMNS}
                 SELECT gen_random_uuid(), f.user_id, NULL, {}
                 FROM federated_identities f WHERE f.upstream_id = $1",
                event_values(1)
            );
            bind_event(sqlx::query(sqlx::AssertSqlSafe(sql)).bind(id), event)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM upstreams WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            self.revoked_here();
            Ok(true)
        })
        .await
    }

    async fn federated_identity(
        &self,
        upstream_id: Uuid,
        subject: &str,
    ) -> Result<Option<FederatedIdentity>, StoreError> {
        let sql = format!(
            "SELECT {IDENTITY_COLUMNS} FROM federated_identities
             WHERE upstream_id = $1 AND subject = $2"
        );
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(upstream_id)
            .bind(subject)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn identities_of(&self, user_id: UserId) -> Result<Vec<Connection>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT f.id AS identity_id, f.upstream_id, u.name AS upstream_name, u.label,
                    f.subject, f.email, f.created_at, f.last_used_at
             FROM federated_identities f JOIN upstreams u ON u.id = f.upstream_id
             WHERE f.user_id = $1
             ORDER BY u.label, u.name",
        )
        .bind(user_id.0)
        .fetch_all(&self.pool)
        .await?)
    }

    async fn link_identity(
        &self,
        link: &NewLink<'_>,
        event: &NewEvent,
    ) -> Result<FederatedIdentity, StoreError> {
        retry_once(|| async move {
            let mut tx = self.pool.begin().await?;
            lock_user(&mut tx, link.user_id.0).await?;
            let sql = format!(
                "INSERT INTO federated_identities
                     (id, upstream_id, subject, user_id, email, created_at, last_used_at,
                      linked_unconfirmed)
                 VALUES ($1, $2, $3, $4, $5, $6, $6,
                         (SELECT email_verified_at IS NULL FROM users WHERE id = $4))
                 RETURNING {IDENTITY_COLUMNS}"
            );
            let identity: FederatedIdentity = sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(Uuid::new_v4())
                .bind(link.upstream_id)
                .bind(link.subject)
                .bind(link.user_id.0)
                .bind(link.email)
                .bind(link.now)
                .fetch_one(&mut *tx)
                .await?;
            insert_event(&mut tx, link.user_id.0, None, event).await?;
            tx.commit().await?;
            Ok(identity)
        })
        .await
    }

    async fn unlink_identity(
        &self,
        user_id: UserId,
        upstream_id: Uuid,
        event: &NewEvent,
    ) -> Result<Unlinked, StoreError> {
        let done = retry_once(|| async move {
            let mut tx = self.pool.begin().await?;
            lock_user(&mut tx, user_id.0).await?;
            let other_ways: Option<bool> = sqlx::query_scalar(
                "SELECT u.password_hash IS NOT NULL
                     OR EXISTS (SELECT 1 FROM passkeys p
                                WHERE p.user_id = u.id AND p.clone_suspected_at IS NULL)
                     OR EXISTS (SELECT 1 FROM federated_identities f
                                WHERE f.user_id = u.id AND f.upstream_id <> $2)
                 FROM users u WHERE u.id = $1",
            )
            .bind(user_id.0)
            .bind(upstream_id)
            .fetch_optional(&mut *tx)
            .await?;
            let linked: Option<Uuid> = sqlx::query_scalar(
                "SELECT id FROM federated_identities WHERE user_id = $1 AND upstream_id = $2",
            )
            .bind(user_id.0)
            .bind(upstream_id)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(identity) = linked else {
                return Ok(Unlinked::NotLinked);
            };
            if other_ways != Some(true) {
                return Ok(Unlinked::LastWay);
            }
            sqlx::query("DELETE FROM federated_identities WHERE id = $1")
                .bind(identity)
                .execute(&mut *tx)
                .await?;
            insert_event(&mut tx, user_id.0, None, event).await?;
            // What the link let in goes with it: the sessions made from that upstream
            // (revoked as any other, so the trigger tells their apps and every node's
            // caches forget) and sign-ins from it still waiting for a second factor.
            let ended = NewEvent {
                kind: "session_revoked",
                detail: Some(UNLINKED.into()),
                ..event.clone()
            };
            // $1 = user, $2 = upstream, $3 = reason; the event's values follow.
            let sql = format!(
                "WITH r AS (
                     UPDATE sessions SET revoked_at = {at}, revoked_reason = $3
                     WHERE user_id = $1 AND upstream_id = $2 AND revoked_at IS NULL
                     RETURNING id, user_id
                 )
                 INSERT INTO security_events {EVENT_COLUMNS}
                 SELECT gen_random_uuid(), r.user_id, r.id, {values} FROM r",
                at = event_at(3),
                values = event_values(3),
            );
            bind_event(
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(user_id.0)
                    .bind(upstream_id)
                    .bind(UNLINKED),
                &ended,
            )
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "DELETE FROM mfa_challenges
                 WHERE kind = 'sign_in' AND user_id = $1 AND upstream_id = $2",
            )
            .bind(user_id.0)
            .bind(upstream_id)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(Unlinked::Done)
        })
        .await?;
        if done == Unlinked::Done {
            self.revoked_here();
        }
        Ok(done)
    }

    async fn touch_identity(
        &self,
        identity_id: Uuid,
        email: Option<&str>,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE federated_identities
             SET last_used_at = greatest(last_used_at, $2), email = coalesce($3, email)
             WHERE id = $1",
        )
        .bind(identity_id)
        .bind(now)
        .bind(email)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn spend_upstream_jti(
        &self,
        upstream_id: Uuid,
        jti: &str,
        keep_until: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let n = sqlx::query(
            "INSERT INTO upstream_logout_jtis (upstream_id, jti, expires_at)
             VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(upstream_id)
        .bind(jti)
        .bind(keep_until)
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(n == 1)
    }

    async fn upstream_jti_spent(&self, upstream_id: Uuid, jti: &str) -> Result<bool, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM upstream_logout_jtis WHERE upstream_id = $1 AND jti = $2)",
        )
        .bind(upstream_id)
        .bind(jti)
        .fetch_one(&self.pool)
        .await?)
    }
}
