//! Challenges: a second factor being proven, for a half-finished sign-in or a
//! step-up. Codes are counted before they are checked — per challenge (5, then the
//! challenge is void), per user (10 per 15 minutes across every challenge and node)
//! and per client address (30 per 15 minutes across every account) — the same
//! count-first pattern as the sign-in throttle, so no number of parallel guesses gets
//! more evaluations than that (ZITADEL CVE-2024-32868).

use async_trait::async_trait;
use time::OffsetDateTime;
use uuid::Uuid;

use super::accounts::lock_live_user;
use super::events::{NewEvent, insert_event};
use super::outbox::insert_mails;
use super::passkeys::{PasskeyUse, mark_session, record_use};
use super::pg::retry_once;
use super::risk::RiskFlag;
use super::sessions::{SignIn, UpstreamOrigin, insert_signed_in};
use super::throttle::{AttemptKeys, refund, uncount};
use super::{PgStore, StoreError};
use crate::domain::{OutboundMail, SessionId, UserId};

/// A challenge to create.
pub struct NewChallenge {
    pub id: Uuid,
    pub user_id: UserId,
    /// `sign_in`: SHA-256 of the pending cookie. `None` for a step-up.
    pub token_hash: Option<Vec<u8>>,
    /// `step_up`: the session being raised.
    pub session_id: Option<SessionId>,
    pub remember_me: bool,
    pub return_to: Option<String>,
    pub reason: String,
    /// The contextual checks' reasons, when they demanded this second factor: the
    /// session it becomes is flagged with them.
    pub risk_flag: Option<RiskFlag>,
    /// The upstream sign-in this second factor completes: the session it becomes
    /// keeps that origin.
    pub upstream: Option<UpstreamOrigin>,
    pub now: OffsetDateTime,
    pub expires_at: OffsetDateTime,
}

/// A live challenge.
#[derive(Clone, Debug)]
pub struct ChallengeRecord {
    pub id: Uuid,
    pub user_id: UserId,
    pub email: String,
    pub session_id: Option<SessionId>,
    pub remember_me: bool,
    pub return_to: Option<String>,
    pub reason: String,
    pub attempts: i32,
    pub expires_at: OffsetDateTime,
    /// Whether an e-mailed code is live for it.
    pub email_code_live: bool,
    /// Whether the user has a confirmed authenticator app.
    pub has_totp: bool,
    /// Whether the user has a passkey that may be used (not suspected of being
    /// copied).
    pub has_passkey: bool,
    /// Why the contextual checks demanded it, if they did.
    pub risk_flag: Option<RiskFlag>,
    /// The upstream sign-in it completes, if it came from one (a deleted upstream
    /// takes its waiting challenges with it).
    pub upstream: Option<UpstreamOrigin>,
    /// That upstream's label, as pages and the account's history name it.
    pub upstream_label: Option<String>,
}

#[derive(sqlx::FromRow)]
struct ChallengeRow {
    id: Uuid,
    user_id: Uuid,
    email: String,
    session_id: Option<Uuid>,
    remember_me: bool,
    return_to: Option<String>,
    reason: String,
    attempts: i32,
    expires_at: OffsetDateTime,
    email_code_live: bool,
    has_totp: bool,
    has_passkey: bool,
    risk_flag: Option<String>,
    risk_flag_enc: Option<Vec<u8>>,
    upstream_id: Option<Uuid>,
    upstream_sid: Option<String>,
    upstream_label: Option<String>,
}

impl From<ChallengeRow> for ChallengeRecord {
    fn from(r: ChallengeRow) -> Self {
        Self {
            id: r.id,
            user_id: UserId(r.user_id),
            email: r.email,
            session_id: r.session_id.map(SessionId),
            remember_me: r.remember_me,
            return_to: r.return_to,
            reason: r.reason,
            attempts: r.attempts,
            expires_at: r.expires_at,
            email_code_live: r.email_code_live,
            has_totp: r.has_totp,
            has_passkey: r.has_passkey,
            risk_flag: r
                .risk_flag
                .zip(r.risk_flag_enc)
                .map(|(summary, sealed)| RiskFlag { summary, sealed }),
            upstream: r.upstream_id.map(|upstream_id| UpstreamOrigin {
                upstream_id,
                sid: r.upstream_sid,
                subject: None,
            }),
            upstream_label: r.upstream_label,
        }
    }
}

const CHALLENGE_SELECT: &str = "SELECT c.id, c.user_id, u.email, c.session_id, c.remember_me,
        c.return_to, c.reason, c.attempts, c.expires_at, c.risk_flag, c.risk_flag_enc,
        c.upstream_id, c.upstream_sid, up.label AS upstream_label,
        (c.email_code_mac IS NOT NULL AND c.email_code_expires_at > $2) AS email_code_live,
        EXISTS (SELECT 1 FROM totp_credentials t
                WHERE t.user_id = c.user_id AND t.confirmed_at IS NOT NULL) AS has_totp,
        EXISTS (SELECT 1 FROM passkeys p
                WHERE p.user_id = c.user_id AND p.clone_suspected_at IS NULL) AS has_passkey
     FROM mfa_challenges c JOIN users u ON u.id = c.user_id
     LEFT JOIN upstreams up ON up.id = c.upstream_id";

/// Limits on code guessing (DESIGN.md "Precise rules", "Wrong second-factor codes
/// per client address").
#[derive(Clone, Copy, Debug)]
pub struct CodeLimits {
    /// Codes one challenge may evaluate before it is void.
    pub per_challenge: i32,
    /// Codes one user may have evaluated in `window_secs`, across everything.
    pub per_user: i32,
    /// Codes one client address may have evaluated in `window_secs`, across every
    /// account (an address holding many right passwords).
    pub per_address: i32,
    pub window_secs: i32,
}

/// The throttle keys a code is counted under (keyed MACs: neither a user id nor an
/// address in the clear): the person's and the client address's.
#[derive(Clone, Debug)]
pub struct CodeKeys {
    pub user: Vec<u8>,
    pub address: Vec<u8>,
}

/// Whether a code may be evaluated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CodeAttempt {
    /// Counted (this is the challenge's `attempts`-th code); evaluate it.
    Allowed { attempts: i32 },
    /// The user's allowance is spent: wait.
    Blocked { retry_after_secs: u64 },
    /// The challenge is gone (expired, used, or its five tries spent).
    Void,
}

/// The proof a code turned out to be, checked again inside the completing
/// transaction (so that two parallel requests with one code cannot both win).
pub enum Proof {
    /// A TOTP code for this RFC 6238 time step: accepted only if no code for this or
    /// a later step was accepted before.
    TotpStep(i64),
    /// A recovery code, as MACs under every key still accepted.
    RecoveryCode(Vec<Vec<u8>>),
    /// The challenge's e-mailed code, as MACs under every key still accepted.
    EmailCode(Vec<Vec<u8>>),
    /// A passkey assertion, verified: recorded only if its counter still holds.
    Passkey(PasskeyUse),
}

/// What a proven challenge does.
pub enum Completion {
    /// A pending sign-in becomes a session.
    SignIn(Box<SignIn>),
    /// A session is raised to `aal2` under a new cookie token.
    StepUp {
        session_id: SessionId,
        new_token_hash: Vec<u8>,
        /// The RFC 8176 methods it proved (added to the session's `amr`).
        methods: Vec<&'static str>,
        event: Box<NewEvent>,
        /// The place the second factor was proven from, sealed (`None`: unknown):
        /// the session is at home there too from now on.
        anchor_enc: Option<Vec<u8>>,
    },
}

/// The notice mails a completion sends, decided by what it found (e.g. how many
/// recovery codes are left), queued in its transaction.
pub type Notices = dyn Fn(&Completed) -> Vec<OutboundMail> + Send + Sync;

/// A completed challenge.
#[derive(Clone, Copy, Debug)]
pub struct Completed {
    /// Recovery codes left, when one was used.
    pub recovery_codes_left: Option<i64>,
}

/// Advances the user's TOTP step to `step` if it is later than every step accepted
/// before: the row lock makes two parallel uses of one code queue, and the second
/// finds the step taken.
pub(super) async fn take_totp_step(
    conn: &mut sqlx::PgConnection,
    user_id: UserId,
    step: i64,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE totp_credentials SET last_used_step = $2
         WHERE user_id = $1 AND confirmed_at IS NOT NULL
           AND (last_used_step IS NULL OR last_used_step < $2)",
    )
    .bind(user_id.0)
    .bind(step)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Spends a recovery code; returns how many are left, or `None` if none matched.
pub(super) async fn spend_recovery_code(
    conn: &mut sqlx::PgConnection,
    user_id: UserId,
    macs: &[Vec<u8>],
    now: OffsetDateTime,
) -> Result<Option<i64>, sqlx::Error> {
    let spent: Option<Uuid> = sqlx::query_scalar(
        "UPDATE recovery_codes SET used_at = $3
         WHERE id = (SELECT id FROM recovery_codes
                     WHERE user_id = $1 AND code_mac = ANY($2) AND used_at IS NULL
                     LIMIT 1 FOR UPDATE)
           AND used_at IS NULL
         RETURNING id",
    )
    .bind(user_id.0)
    .bind(macs)
    .bind(now)
    .fetch_optional(&mut *conn)
    .await?;
    if spent.is_none() {
        return Ok(None);
    }
    let left: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM recovery_codes WHERE user_id = $1 AND used_at IS NULL",
    )
    .bind(user_id.0)
    .fetch_one(conn)
    .await?;
    Ok(Some(left))
}

/// Whether the user has a factor stronger than their mailbox (a confirmed
/// authenticator app, or a passkey not suspected of being copied).
async fn has_strong_factor(
    conn: &mut sqlx::PgConnection,
    user_id: UserId,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM totp_credentials
                        WHERE user_id = $1 AND confirmed_at IS NOT NULL)
             OR EXISTS (SELECT 1 FROM passkeys
                        WHERE user_id = $1 AND clone_suspected_at IS NULL)",
    )
    .bind(user_id.0)
    .fetch_one(conn)
    .await
}

/// Every challenge of a user goes: a password reset, a password change, a
/// disabling or a change of second factors makes a half-finished sign-in (and a
/// step-up under way) worthless.
pub(super) async fn void_challenges(
    conn: &mut sqlx::PgConnection,
    user_id: UserId,
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM mfa_challenges WHERE user_id = $1")
        .bind(user_id.0)
        .execute(conn)
        .await?;
    Ok(())
}

#[async_trait]
pub trait ChallengeStore: Send + Sync {
    /// Starts a half-finished sign-in after the right password (or an upstream's
    /// word): takes back the password attempt's throttle counts (it was right; an
    /// upstream sign-in has none) and — provided the password hash is still
    /// `password_hash` (when one was checked) and the user enabled — creates the challenge,
    /// queues `mails` (an e-mailed code) and records `event`, in one transaction.
    /// `email_code` is the code's MAC and expiry when one is sent at once; it and
    /// its mails are dropped if the user has an authenticator app or a passkey.
    async fn begin_second_factor(
        &self,
        attempt: Option<&AttemptKeys>,
        password_hash: Option<&str>,
        challenge: &NewChallenge,
        email_code: Option<(&[u8], OffsetDateTime)>,
        mails: &[OutboundMail],
        event: &NewEvent,
    ) -> Result<bool, StoreError>;
    /// The live pending sign-in behind a cookie token hash.
    async fn pending_sign_in(
        &self,
        token_hash: &[u8],
        now: OffsetDateTime,
    ) -> Result<Option<ChallengeRecord>, StoreError>;
    /// The live step-up challenge of a session, created if there is none.
    async fn step_up_challenge(
        &self,
        challenge: &NewChallenge,
    ) -> Result<ChallengeRecord, StoreError>;
    /// Replaces the challenge's e-mailed code (a resend voids the previous one) and
    /// queues its mail, atomically. False if the challenge is gone or its user has
    /// an authenticator app or a passkey (who never get a code by e-mail).
    async fn set_email_code(
        &self,
        challenge_id: Uuid,
        code_mac: &[u8],
        expires_at: OffsetDateTime,
        mails: &[OutboundMail],
        now: OffsetDateTime,
    ) -> Result<bool, StoreError>;
    /// Counts one code against the challenge, the user and the client address
    /// *before* it is checked; nothing is counted when any of them is spent.
    async fn reserve_code_attempt(
        &self,
        challenge_id: Uuid,
        keys: &CodeKeys,
        limits: CodeLimits,
        now: OffsetDateTime,
    ) -> Result<CodeAttempt, StoreError>;
    /// A wrong code: records `event`; a sign-in whose tries are spent is deleted (a
    /// step-up's stays, void, until it expires). Returns whether it is now void.
    async fn code_rejected(
        &self,
        challenge_id: Uuid,
        user_id: UserId,
        limits: CodeLimits,
        event: &NewEvent,
    ) -> Result<bool, StoreError>;
    /// Completes a challenge in one transaction: the proof is checked again under
    /// lock (a TOTP step taken, a recovery code spent, the e-mailed code matched and
    /// live), the challenge is consumed, the user's and the address's counts for this
    /// code taken back, and the completion applied (a session created, or raised and
    /// given a new token). `None`, with nothing changed, when the proof does not hold (a replayed
    /// code, a code used meanwhile by a parallel request) or the challenge is gone.
    async fn complete_challenge(
        &self,
        challenge_id: Uuid,
        user_id: UserId,
        proof: &Proof,
        keys: &CodeKeys,
        completion: &Completion,
        notices: &Notices,
    ) -> Result<Option<Completed>, StoreError>;
}

#[async_trait]
impl ChallengeStore for PgStore {
    async fn begin_second_factor(
        &self,
        attempt: Option<&AttemptKeys>,
        password_hash: Option<&str>,
        c: &NewChallenge,
        email_code: Option<(&[u8], OffsetDateTime)>,
        mails: &[OutboundMail],
        event: &NewEvent,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let current = lock_live_user(&mut tx, c.user_id, password_hash).await?;
        if current {
            // The service's rule checked again under the user's lock, so that no
            // enrolment slips in between: a person with an authenticator app or a
            // passkey never gets a code by e-mail (the mailbox alone must never
            // reach `aal2`, checklist L7).
            let email_code = if has_strong_factor(&mut tx, c.user_id).await? {
                None
            } else {
                email_code
            };
            let mails = if email_code.is_some() { mails } else { &[] };
            sqlx::query(
                "INSERT INTO mfa_challenges
                     (id, kind, user_id, token_hash, remember_me, return_to, reason,
                      created_at, expires_at, email_code_mac, email_code_expires_at, risk_flag,
                      risk_flag_enc, upstream_id, upstream_sid)
                 VALUES ($1, 'sign_in', $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
            )
            .bind(c.id)
            .bind(c.user_id.0)
            .bind(&c.token_hash)
            .bind(c.remember_me)
            .bind(&c.return_to)
            .bind(&c.reason)
            .bind(c.now)
            .bind(c.expires_at)
            .bind(email_code.map(|(mac, _)| mac))
            .bind(email_code.map(|(_, at)| at))
            .bind(c.risk_flag.as_ref().map(|f| &f.summary))
            .bind(c.risk_flag.as_ref().map(|f| &f.sealed))
            .bind(c.upstream.as_ref().map(|u| u.upstream_id))
            .bind(c.upstream.as_ref().and_then(|u| u.sid.as_deref()))
            .execute(&mut *tx)
            .await?;
            insert_mails(&mut tx, &self.keys, mails, c.now).await?;
            insert_event(&mut tx, c.user_id.0, None, event).await?;
        }
        if let Some(attempt) = attempt {
            refund(&mut tx, attempt).await?;
        }
        tx.commit().await?;
        Ok(current)
    }

    async fn pending_sign_in(
        &self,
        token_hash: &[u8],
        now: OffsetDateTime,
    ) -> Result<Option<ChallengeRecord>, StoreError> {
        let sql = format!(
            "{CHALLENGE_SELECT}
             WHERE c.token_hash = $1 AND c.kind = 'sign_in' AND c.expires_at > $2
               AND u.disabled_at IS NULL"
        );
        let row: Option<ChallengeRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(token_hash)
            .bind(now)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(ChallengeRecord::from))
    }

    async fn step_up_challenge(&self, c: &NewChallenge) -> Result<ChallengeRecord, StoreError> {
        let mut tx = self.pool.begin().await?;
        // An expired one is replaced; a live one is kept (with its count of tries).
        sqlx::query(
            "INSERT INTO mfa_challenges
                 (id, kind, user_id, session_id, reason, created_at, expires_at)
             VALUES ($1, 'step_up', $2, $3, $4, $5, $6)
             ON CONFLICT (session_id) WHERE session_id IS NOT NULL DO UPDATE SET
                 id = EXCLUDED.id, attempts = 0, email_code_mac = NULL,
                 email_code_expires_at = NULL, created_at = EXCLUDED.created_at,
                 expires_at = EXCLUDED.expires_at, reason = EXCLUDED.reason
             WHERE mfa_challenges.expires_at <= EXCLUDED.created_at",
        )
        .bind(c.id)
        .bind(c.user_id.0)
        .bind(c.session_id.map(|s| s.0))
        .bind(&c.reason)
        .bind(c.now)
        .bind(c.expires_at)
        .execute(&mut *tx)
        .await?;
        let sql = format!("{CHALLENGE_SELECT} WHERE c.session_id = $1 AND c.expires_at > $2");
        let row: ChallengeRow = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(c.session_id.map(|s| s.0))
            .bind(c.now)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(row.into())
    }

    async fn set_email_code(
        &self,
        challenge_id: Uuid,
        code_mac: &[u8],
        expires_at: OffsetDateTime,
        mails: &[OutboundMail],
        now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        // Never for a person with a stronger factor (checklist L7); an enrolment
        // committing meanwhile deletes the challenge, code and all.
        let done = sqlx::query(
            "UPDATE mfa_challenges c
             SET email_code_mac = $2, email_code_expires_at = LEAST($3, c.expires_at)
             WHERE c.id = $1 AND c.expires_at > $4
               AND NOT EXISTS (SELECT 1 FROM totp_credentials t
                               WHERE t.user_id = c.user_id AND t.confirmed_at IS NOT NULL)
               AND NOT EXISTS (SELECT 1 FROM passkeys p
                               WHERE p.user_id = c.user_id AND p.clone_suspected_at IS NULL)",
        )
        .bind(challenge_id)
        .bind(code_mac)
        .bind(expires_at)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        insert_mails(&mut tx, &self.keys, mails, now).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn reserve_code_attempt(
        &self,
        challenge_id: Uuid,
        keys: &CodeKeys,
        limits: CodeLimits,
        now: OffsetDateTime,
    ) -> Result<CodeAttempt, StoreError> {
        let mut tx = self.pool.begin().await?;
        // The challenge row first (its lock orders parallel codes for one challenge),
        // then the address's counter (shared with every account tried from there),
        // then the user's (shared with every other challenge of the user), as the
        // store's lock order has throttle rows; the two
        // counters are rows of the scope `code`, told apart by their keys' MAC
        // purposes. A refusal by either rolls both back.
        let live: Option<i32> = sqlx::query_scalar(
            "SELECT attempts FROM mfa_challenges
             WHERE id = $1 AND expires_at > $2 AND attempts < $3
             FOR UPDATE",
        )
        .bind(challenge_id)
        .bind(now)
        .bind(limits.per_challenge)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(before) = live else {
            return Ok(CodeAttempt::Void);
        };
        let by_address = super::throttle::count_window(
            &mut tx,
            "code",
            &keys.address,
            now,
            limits.per_address,
            limits.window_secs,
        )
        .await?;
        let by_user = super::throttle::count_window(
            &mut tx,
            "code",
            &keys.user,
            now,
            limits.per_user,
            limits.window_secs,
        )
        .await?;
        let wait = [by_user, by_address]
            .iter()
            .filter_map(|a| match a {
                super::Attempt::Blocked { retry_after_secs } => Some(*retry_after_secs),
                super::Attempt::Allowed => None,
            })
            .max();
        if let Some(retry_after_secs) = wait {
            // The transaction is dropped with whichever count it made.
            return Ok(CodeAttempt::Blocked { retry_after_secs });
        }
        sqlx::query("UPDATE mfa_challenges SET attempts = attempts + 1 WHERE id = $1")
            .bind(challenge_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(CodeAttempt::Allowed {
            attempts: before + 1,
        })
    }

    async fn code_rejected(
        &self,
        challenge_id: Uuid,
        user_id: UserId,
        limits: CodeLimits,
        event: &NewEvent,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let row: Option<(Option<Uuid>, bool)> = sqlx::query_as(
            "SELECT session_id, attempts >= $2 FROM mfa_challenges WHERE id = $1 FOR UPDATE",
        )
        .bind(challenge_id)
        .bind(limits.per_challenge)
        .fetch_optional(&mut *tx)
        .await?;
        let (session, void) = row.unwrap_or((None, true));
        // A spent sign-in goes (the person starts again with the password); a spent
        // step-up stays until it expires, so asking again does not reset its count.
        if void {
            sqlx::query("DELETE FROM mfa_challenges WHERE id = $1 AND kind = 'sign_in'")
                .bind(challenge_id)
                .execute(&mut *tx)
                .await?;
        }
        insert_event(&mut tx, user_id.0, session, event).await?;
        tx.commit().await?;
        Ok(void)
    }

    async fn complete_challenge(
        &self,
        challenge_id: Uuid,
        user_id: UserId,
        proof: &Proof,
        keys: &CodeKeys,
        completion: &Completion,
        notices: &Notices,
    ) -> Result<Option<Completed>, StoreError> {
        retry_once(|| {
            self.complete_challenge_once(challenge_id, user_id, proof, keys, completion, notices)
        })
        .await
    }
}

/// The transactions behind the methods above that `retry_once` may run twice.
impl PgStore {
    async fn complete_challenge_once(
        &self,
        challenge_id: Uuid,
        user_id: UserId,
        proof: &Proof,
        keys: &CodeKeys,
        completion: &Completion,
        notices: &Notices,
    ) -> Result<Option<Completed>, StoreError> {
        let now = match completion {
            Completion::SignIn(s) => s.session.now,
            Completion::StepUp { event, .. } => event.at,
        };
        let mut tx = self.pool.begin().await?;
        // The user row lock first, like a password sign-in: a reset or a disabling
        // that landed meanwhile voided the challenge, so the DELETE below finds nothing.
        if !lock_live_user(&mut tx, user_id, None).await? {
            return Ok(None);
        }
        let email_macs: &[Vec<u8>] = match proof {
            Proof::EmailCode(macs) => macs,
            _ => &[],
        };
        let consumed: Option<Uuid> = sqlx::query_scalar(
            "DELETE FROM mfa_challenges
             WHERE id = $1 AND user_id = $2 AND expires_at > $3
               AND (NOT $4 OR (email_code_mac = ANY($5) AND email_code_expires_at > $3))
             RETURNING id",
        )
        .bind(challenge_id)
        .bind(user_id.0)
        .bind(now)
        .bind(matches!(proof, Proof::EmailCode(_)))
        .bind(email_macs)
        .fetch_optional(&mut *tx)
        .await?;
        if consumed.is_none() {
            return Ok(None);
        }
        let mut recovery_codes_left = None;
        match proof {
            Proof::TotpStep(step) => {
                if !take_totp_step(&mut tx, user_id, *step).await? {
                    return Ok(None);
                }
            }
            Proof::RecoveryCode(macs) => {
                match spend_recovery_code(&mut tx, user_id, macs, now).await? {
                    Some(left) => recovery_codes_left = Some(left),
                    None => return Ok(None),
                }
            }
            Proof::EmailCode(_) => {}
            Proof::Passkey(u) => {
                if !record_use(&mut tx, u).await? {
                    return Ok(None);
                }
            }
        }
        match completion {
            Completion::SignIn(sign_in) => {
                insert_signed_in(&mut tx, self, sign_in).await?;
                if let Proof::Passkey(u) = proof {
                    mark_session(&mut tx, sign_in.session.id, u.passkey_id).await?;
                }
            }
            Completion::StepUp {
                session_id,
                new_token_hash,
                methods,
                event,
                anchor_enc,
            } => {
                let raised = sqlx::query(
                    "UPDATE sessions
                     SET token_hash = $2, aal = 'aal2', aal_reached_at = $3,
                         amr = amr || ARRAY(SELECT m FROM unnest($4::text[]) AS m
                                            WHERE NOT (m = ANY(amr))),
                         anchor_enc = COALESCE($6, anchor_enc)
                     WHERE id = $1 AND user_id = $5 AND revoked_at IS NULL
                       AND idle_expires_at > $3 AND absolute_expires_at > $3",
                )
                .bind(session_id.0)
                .bind(new_token_hash)
                .bind(now)
                .bind(methods)
                .bind(user_id.0)
                .bind(anchor_enc)
                .execute(&mut *tx)
                .await?;
                if raised.rows_affected() != 1 {
                    return Ok(None);
                }
                insert_event(&mut tx, user_id.0, Some(session_id.0), event).await?;
                if let Proof::Passkey(u) = proof {
                    mark_session(&mut tx, *session_id, u.passkey_id).await?;
                }
            }
        }
        let completed = Completed {
            recovery_codes_left,
        };
        // A code counted before it was checked is taken back; a passkey was never
        // counted. Last, so the throttle rows (shared by everyone behind one address)
        // are locked only for the moment before the commit (the store's lock order).
        if !matches!(proof, Proof::Passkey(_)) {
            uncount(&mut tx, "code", &keys.address).await?;
            uncount(&mut tx, "code", &keys.user).await?;
        }
        insert_mails(&mut tx, &self.keys, &notices(&completed), now).await?;
        tx.commit().await?;
        Ok(Some(completed))
    }
}
