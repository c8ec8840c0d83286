//! This node's cache of "is this access token live?" answers and of client records,
//! so that introspection (the hot path) does not read PostgreSQL for a token it has
//! just seen. It stays honest by three rules:
//!
//! 1. **Invalidated by PostgreSQL.** Triggers `NOTIFY gatehouse_invalidate` in the
//!    transaction of every revocation (session, grant, token, user, client, key); the
//!    listener (`oauth::invalidation`) evicts every entry the change touches.
//! 2. **Trusted only while the listener is known to hear everything.** Every
//!    `PING_EVERY` the listener sends an echo through the pool and waits for it on
//!    its own connection; an answer may come from the cache only within
//!    `TRUST_WINDOW` of the sending of the last echo that came back. A
//!    connection that drops or stalls stops the cache within that window (it is then
//!    bypassed, and emptied when the listener is back). So a revocation whose
//!    notification is lost reaches this node within `TRUST_WINDOW` (< 1 s, DESIGN.md
//!    principle 3) and one whose notification arrives within its delivery time.
//! 3. **Filled only by reads no invalidation overtook.** A fill carries the
//!    generation it started in; any invalidation (or listener change) in between
//!    discards it, so a read that raced a revocation never lands.
//!
//! Every entry also ends at the earliest deadline it depends on (token expiry,
//! session idle and absolute expiry, key retirement) by the injected clock, and at
//! `MAX_AGE` whatever happens.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use time::OffsetDateTime;
use uuid::Uuid;

use crate::domain::claims::AccessClaims;
use crate::store::{ClientRecord, LiveToken, Revoked};

/// How often the listener proves its connection.
pub const PING_EVERY: Duration = Duration::from_millis(200);
/// How long after the start of the last proof the cache may answer.
pub const TRUST_WINDOW: Duration = Duration::from_millis(750);
/// No entry is older than this, whatever the notifications say.
pub const MAX_AGE: Duration = Duration::from_secs(60);
/// Entries kept per kind; beyond it, expired ones are dropped, then all.
pub const MAX_ENTRIES: usize = 100_000;

/// What a notification says changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Invalidation {
    Session(Uuid),
    Grant(Uuid),
    Token(Uuid),
    User(Uuid),
    Client(String),
    Keys,
    /// A listener's proof that it hears this database: changes nothing.
    Echo,
    /// A payload this node does not understand (a newer node's): empty everything.
    Unknown,
}

impl Invalidation {
    pub fn parse(payload: &str) -> Self {
        let uuid = |s: &str| Uuid::parse_str(s).ok();
        match payload.split_once(':') {
            Some(("session", id)) => uuid(id).map_or(Self::Unknown, Self::Session),
            Some(("grant", id)) => uuid(id).map_or(Self::Unknown, Self::Grant),
            Some(("token", id)) => uuid(id).map_or(Self::Unknown, Self::Token),
            Some(("user", id)) => uuid(id).map_or(Self::Unknown, Self::User),
            Some(("client", id)) => Self::Client(id.to_string()),
            Some(("echo", _)) => Self::Echo,
            None if payload == "keys" => Self::Keys,
            _ => Self::Unknown,
        }
    }
}

/// A live access token as introspection and userinfo need it.
#[derive(Clone, Debug)]
pub struct LiveAccess {
    pub claims: AccessClaims,
    pub live: LiveToken,
}

struct TokenEntry {
    /// `None`: a genuine token that is dead, which it stays (revocation, expiry and
    /// retirement are forever), so a client that keeps presenting it costs no read.
    access: Option<LiveAccess>,
    until: OffsetDateTime,
    stored: Instant,
}

impl TokenEntry {
    fn touched_by(&self, change: &Invalidation) -> bool {
        let Some(access) = &self.access else {
            return matches!(change, Invalidation::Keys | Invalidation::Unknown);
        };
        let l = &access.live;
        match change {
            Invalidation::Session(id) => l.session_id == Some(*id),
            Invalidation::Grant(id) => l.grant_id == *id,
            Invalidation::Token(id) => access.claims.jti == *id,
            Invalidation::User(id) => l.user_id == Some(*id),
            Invalidation::Client(id) => l.client_id == *id,
            Invalidation::Keys | Invalidation::Unknown => true,
            Invalidation::Echo => false,
        }
    }
}

struct ClientEntry {
    client: ClientRecord,
    stored: Instant,
}

#[derive(Default)]
struct Entries {
    tokens: HashMap<[u8; 32], TokenEntry>,
    clients: HashMap<String, ClientEntry>,
}

/// Permission to fill the cache with what a read finds, taken before the read.
#[derive(Clone, Copy, Debug)]
pub struct Ticket(u64);

pub struct LiveCache {
    entries: Mutex<Entries>,
    generation: AtomicU64,
    listening: AtomicBool,
    /// When the last proof started, in nanoseconds after `base` (0: never).
    confirmed: AtomicU64,
    base: Instant,
}

impl Default for LiveCache {
    fn default() -> Self {
        Self {
            entries: Mutex::default(),
            generation: AtomicU64::new(1),
            listening: AtomicBool::new(false),
            confirmed: AtomicU64::new(0),
            // An hour back, so any proof start this process sees lies after it.
            base: Instant::now()
                .checked_sub(Duration::from_secs(3600))
                .unwrap_or_else(Instant::now),
        }
    }
}

impl LiveCache {
    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        // A panic while holding the lock leaves maps that are merely incomplete.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether answers may come from the cache right now (rule 2).
    pub fn trusted(&self) -> bool {
        if !self.listening.load(Ordering::Acquire) {
            return false;
        }
        let confirmed = self.confirmed.load(Ordering::Acquire);
        confirmed != 0
            && self.base.elapsed().as_nanos() < u128::from(confirmed) + TRUST_WINDOW.as_nanos()
    }

    /// Taken before a read whose result may be cached; `None` when the cache is not
    /// trusted (then the caller reads and keeps nothing).
    pub fn ticket(&self) -> Option<Ticket> {
        self.trusted()
            .then(|| Ticket(self.generation.load(Ordering::Acquire)))
    }

    /// `Some(answer)` when the cache knows it: `Some(None)` for a dead token.
    pub fn token(&self, key: &[u8; 32], now: OffsetDateTime) -> Option<Option<LiveAccess>> {
        if !self.trusted() {
            return None;
        }
        let entries = self.lock();
        let e = entries.tokens.get(key)?;
        (e.until > now && e.stored.elapsed() < MAX_AGE).then(|| e.access.clone())
    }

    /// Keeps what a read under `ticket` found, unless something changed since.
    pub fn put_token(
        &self,
        ticket: Ticket,
        key: [u8; 32],
        access: Option<LiveAccess>,
        until: OffsetDateTime,
        now: OffsetDateTime,
    ) {
        let mut entries = self.lock();
        // Checked under the lock: invalidations take it too, so none slips between.
        if self.generation.load(Ordering::Acquire) != ticket.0 || !self.trusted() {
            return;
        }
        if entries.tokens.len() >= MAX_ENTRIES {
            entries
                .tokens
                .retain(|_, e| e.until > now && e.stored.elapsed() < MAX_AGE);
            if entries.tokens.len() >= MAX_ENTRIES {
                entries.tokens.clear();
            }
        }
        entries.tokens.insert(
            key,
            TokenEntry {
                access,
                until,
                stored: Instant::now(),
            },
        );
    }

    pub fn client(&self, id: &str) -> Option<ClientRecord> {
        if !self.trusted() {
            return None;
        }
        let entries = self.lock();
        let e = entries.clients.get(id)?;
        (e.stored.elapsed() < MAX_AGE).then(|| e.client.clone())
    }

    pub fn put_client(&self, ticket: Ticket, client: ClientRecord) {
        let mut entries = self.lock();
        if self.generation.load(Ordering::Acquire) != ticket.0 || !self.trusted() {
            return;
        }
        if entries.clients.len() >= MAX_ENTRIES {
            entries.clients.clear();
        }
        entries.clients.insert(
            client.id.clone(),
            ClientEntry {
                client,
                stored: Instant::now(),
            },
        );
    }

    /// Evicts every entry `change` touches (rule 1) and voids fills in flight.
    pub fn invalidate(&self, change: &Invalidation) {
        let mut entries = self.lock();
        self.generation.fetch_add(1, Ordering::AcqRel);
        entries.tokens.retain(|_, e| !e.touched_by(change));
        match change {
            Invalidation::Client(id) => {
                entries.clients.remove(id);
            }
            Invalidation::Unknown => entries.clients.clear(),
            _ => {}
        }
    }

    /// Something was revoked through this node: forget the answers it touched (and
    /// void fills in flight) without waiting for the notification. A client revoking
    /// one of its tokens evicts that token's (or grant's) entries only, so revoking
    /// (or pretending to) costs the cache nothing else.
    pub fn revoked(&self, what: Revoked) {
        match what {
            Revoked::Everything => self.forget_all(),
            Revoked::Token(jti) => self.invalidate(&Invalidation::Token(jti)),
            Revoked::Grant(id) => self.invalidate(&Invalidation::Grant(id)),
        }
    }

    /// Forget every answer (and void fills in flight).
    pub fn forget_all(&self) {
        let mut entries = self.lock();
        self.generation.fetch_add(1, Ordering::AcqRel);
        entries.tokens.clear();
        entries.clients.clear();
    }

    /// The listener is connected and listening: start from nothing (whatever
    /// happened while it was away was not heard).
    pub fn listening_from(&self, proof_started: Instant) {
        let mut entries = self.lock();
        self.generation.fetch_add(1, Ordering::AcqRel);
        entries.tokens.clear();
        entries.clients.clear();
        self.confirm(proof_started);
        self.listening.store(true, Ordering::Release);
    }

    /// The connection proved itself with a round trip that started at `started`, and
    /// every notification that arrived before its answer has been applied.
    pub fn confirm(&self, started: Instant) {
        let nanos = started
            .saturating_duration_since(self.base)
            .as_nanos()
            .max(1);
        self.confirmed
            .fetch_max(u64::try_from(nanos).unwrap_or(u64::MAX), Ordering::AcqRel);
    }

    /// The listener lost its connection (or could not prove it): bypass and empty.
    pub fn deaf(&self) {
        let mut entries = self.lock();
        self.listening.store(false, Ordering::Release);
        self.generation.fetch_add(1, Ordering::AcqRel);
        entries.tokens.clear();
        entries.clients.clear();
    }

    pub fn len(&self) -> (usize, usize) {
        let entries = self.lock();
        (entries.tokens.len(), entries.clients.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(session: Uuid, grant: Uuid, user: Uuid, jti: Uuid, client: &str) -> LiveAccess {
        LiveAccess {
            claims: AccessClaims {
                iss: "https://id.test".into(),
                sub: user.to_string(),
                aud: client.into(),
                client_id: client.into(),
                scope: "openid".into(),
                jti,
                iat: 0,
                exp: 0,
                sid: Some(session.to_string()),
                acr: None,
                amr: None,
                auth_time: None,
            },
            live: LiveToken {
                grant_id: grant,
                client_id: client.into(),
                user_id: Some(user),
                session_id: Some(session),
                scope: "openid".into(),
                email: None,
                email_verified: None,
                live_until: later(),
            },
        }
    }

    fn later() -> OffsetDateTime {
        OffsetDateTime::now_utc() + time::Duration::hours(1)
    }

    #[test]
    fn payloads_parse_and_anything_else_empties_everything() {
        let id = Uuid::new_v4();
        assert_eq!(
            Invalidation::parse(&format!("session:{id}")),
            Invalidation::Session(id)
        );
        assert_eq!(
            Invalidation::parse("client:abc"),
            Invalidation::Client("abc".into())
        );
        assert_eq!(Invalidation::parse("keys"), Invalidation::Keys);
        assert_eq!(Invalidation::parse("session:nope"), Invalidation::Unknown);
        assert_eq!(Invalidation::parse("weather:sunny"), Invalidation::Unknown);
    }

    #[test]
    fn nothing_is_kept_or_answered_while_the_listener_is_deaf() {
        let cache = LiveCache::default();
        assert!(cache.ticket().is_none());
        cache.listening_from(Instant::now());
        let t = cache.ticket().expect("trusted once listening");
        let (s, g, u, j) = (
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::new_v4(),
        );
        let now = OffsetDateTime::now_utc();
        cache.put_token(t, [1; 32], Some(access(s, g, u, j, "c")), later(), now);
        assert!(cache.token(&[1; 32], now).is_some());
        cache.deaf();
        assert!(cache.token(&[1; 32], now).is_none());
        cache.listening_from(Instant::now());
        assert!(cache.token(&[1; 32], now).is_none(), "emptied on return");
    }

    #[test]
    fn an_unproven_connection_stops_the_cache_within_the_trust_window() {
        let cache = LiveCache::default();
        cache.listening_from(Instant::now() - TRUST_WINDOW - Duration::from_millis(1));
        assert!(!cache.trusted());
        cache.confirm(Instant::now());
        assert!(cache.trusted());
    }

    #[test]
    fn a_fill_that_raced_an_invalidation_is_dropped() {
        let cache = LiveCache::default();
        cache.listening_from(Instant::now());
        let (s, g, u, j) = (
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::new_v4(),
        );
        let now = OffsetDateTime::now_utc();
        let t = cache.ticket().unwrap();
        // An unrelated change still voids the ticket: the read may predate it.
        cache.invalidate(&Invalidation::Session(Uuid::new_v4()));
        cache.put_token(t, [2; 32], Some(access(s, g, u, j, "c")), later(), now);
        assert!(cache.token(&[2; 32], now).is_none());
    }

    #[test]
    fn each_kind_of_change_evicts_exactly_the_entries_it_touches() {
        let now = OffsetDateTime::now_utc();
        let kinds = |s, g, u, j| {
            [
                Invalidation::Session(s),
                Invalidation::Grant(g),
                Invalidation::User(u),
                Invalidation::Token(j),
                Invalidation::Client("c1".into()),
                Invalidation::Keys,
            ]
        };
        let (s, g, u, j) = (
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::new_v4(),
        );
        for change in kinds(s, g, u, j) {
            let cache = LiveCache::default();
            cache.listening_from(Instant::now());
            let t = cache.ticket().unwrap();
            cache.put_token(t, [3; 32], Some(access(s, g, u, j, "c1")), later(), now);
            let other = access(
                Uuid::new_v4(),
                Uuid::new_v4(),
                Uuid::new_v4(),
                Uuid::new_v4(),
                "c2",
            );
            cache.put_token(t, [4; 32], Some(other), later(), now);
            cache.put_token(t, [6; 32], None, later(), now);
            cache.invalidate(&change);
            assert!(cache.token(&[3; 32], now).is_none(), "{change:?}");
            assert_eq!(
                cache.token(&[4; 32], now).is_some(),
                change != Invalidation::Keys,
                "{change:?} left the unrelated entry alone"
            );
            assert_eq!(
                cache.token(&[6; 32], now).map(|a| a.is_none()),
                (change != Invalidation::Keys).then_some(true),
                "a dead token stays dead, except across a key change"
            );
        }
    }

    #[test]
    fn an_entry_ends_at_its_deadline_by_the_clock() {
        let cache = LiveCache::default();
        cache.listening_from(Instant::now());
        let now = OffsetDateTime::now_utc();
        let (s, g, u, j) = (
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::new_v4(),
            Uuid::new_v4(),
        );
        let until = now + time::Duration::seconds(5);
        cache.put_token(
            cache.ticket().unwrap(),
            [5; 32],
            Some(access(s, g, u, j, "c")),
            until,
            now,
        );
        assert!(cache.token(&[5; 32], now).is_some());
        assert!(cache.token(&[5; 32], until).is_none());
    }
}
