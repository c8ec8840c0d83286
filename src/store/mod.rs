//! The only SQL in the crate, one file per capability. Each file holds the trait the
//! services call, the records it takes and gives, and its PostgreSQL implementation
//! on `PgStore` (runtime `query_as` into private row structs: a schema that drifts
//! gives an error, never a panic). Each method is one unit of work with its own
//! transaction. `Store` is the sum of the capabilities; services hold an
//! `Arc<dyn Store>` and import the capability traits they call.
//!
//! # Lock order
//!
//! Every transaction that locks more than one row takes its locks in this order, and
//! several rows of one table in key order (`SELECT … ORDER BY id FOR UPDATE` before a
//! multi-row `UPDATE`), so that two transactions never wait on each other in a
//! circle:
//!
//! 1. the **user row** (`accounts::lock_live_user`, or the `UPDATE users` that starts
//!    a password change or a disabling): first in every transaction that touches
//!    more than one of a person's rows: sign-ins, factor changes, mailed links
//!    (issuing and using them), "This wasn't me", signing devices out;
//! 2. the **app's client row**, share-locked (`FOR KEY SHARE`) by a code redemption
//!    before anything else it locks, so that `gatehouse client delete` (which locks
//!    it for update, then cascades to consents, codes, grants and tokens) queues
//!    behind a redemption or the redemption finds the client gone;
//! 3. **devices**;
//! 4. **sessions**, several in key order; a code redemption share-locks its session
//!    and a refresh rotation locks its session before the grant;
//! 5. **consents**, then **codes**;
//! 6. **grants**, several in key order, then their **access and refresh tokens**;
//! 7. **mailed links**, **second-factor challenges** and **passkey ceremonies**:
//!    only ever locked under the user row (1);
//! 8. **throttle rows** last, for the moment before the commit, the client
//!    address's row before the account's.
//!
//! A deadlock or serialization failure that still happens is run again once by
//! `pg::retry_once`, which wraps the methods whose transactions lock several rows.

mod accounts;
mod backchannel;
mod challenges;
mod dbsc;
mod devices;
pub mod doctor;
mod events;
mod housekeeping;
mod links;
mod mfa;
pub mod notify;
mod oauth;
mod outbox;
mod passkeys;
mod pg;
mod rekey;
mod risk;
mod sessions;
mod throttle;
mod tokens;
mod upstream_flows;
mod upstreams;

pub use accounts::{AccountStore, NewAccount, NewUser, UserRecord};
pub use backchannel::{BackchannelStore, QueuedLogout};
pub use challenges::{
    ChallengeRecord, ChallengeStore, CodeAttempt, CodeKeys, CodeLimits, Completed, Completion,
    NewChallenge, Notices, Proof,
};
pub use dbsc::{BoundCookie, BoundSession, DbscOutcome, DbscStore, SpentChallenge};
pub use devices::{DeviceLink, DeviceNotice, DeviceStore, SessionDetail};
pub use events::{EventRecord, EventStore, NewEvent};
pub use housekeeping::{HousekeepingStore, SweepCounts, SweepRules};
pub use links::{EmailTokenRecord, LinkStore, NewEmailToken, NotMeReport};
pub use mfa::{Factors, KeepSession, MfaStore};
pub use oauth::{ClientRecord, ClientStore, ConsentRecord, SigningKeyRecord};
pub use outbox::OutboxStore;
pub use passkeys::{
    CeremonyRecord, NewCeremony, NewPasskey, PasskeyOwner, PasskeyRecord, PasskeyStore, PasskeyUse,
};
pub use pg::{
    HealthStore, PgStore, Revoked, connect_pool, dev_secret_key, is_unavailable,
    migrate_when_reachable, run_migrations,
};
pub use rekey::{RekeyReport, RekeyStore};
pub use risk::{
    FlagOthers, FlaggedSession, REPORTED_REASON, RiskFacts, RiskFlag, RiskQuery, RiskStore,
    TrustedDevice,
};
pub use sessions::{BoundCookies, NewSession, SessionRecord, SessionStore, SignIn, UpstreamOrigin};
pub use throttle::{Attempt, AttemptKeys, ThrottleLimits, ThrottleStore};
pub use tokens::{
    CodeRecord, CodeVerdict, LiveRefresh, LiveToken, NewCode, NewTokens, Redemption, RefreshRecord,
    RefreshVerdict, Rotation, TokenStore,
};
pub use upstream_flows::{
    NewFederatedAccount, NewIdentity, NewPendingLink, NewRoundTrip, PendingLinkRecord,
    RoundTripRecord, UpstreamFlowStore, UpstreamLogout, UpstreamSessions,
};
pub use upstreams::{
    Connection, FederatedIdentity, NewLink, NewUpstream, Unlinked, Upstream, UpstreamKind,
    UpstreamStore,
};

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
    /// A value could not be sealed for storage; nothing was written.
    #[error("sealing failed")]
    Seal(#[from] crate::crypto::SealError),
}

/// Everything the services need from storage.
pub trait Store:
    HealthStore
    + AccountStore
    + SessionStore
    + ThrottleStore
    + LinkStore
    + OutboxStore
    + EventStore
    + DeviceStore
    + HousekeepingStore
    + RekeyStore
    + ChallengeStore
    + MfaStore
    + ClientStore
    + TokenStore
    + BackchannelStore
    + RiskStore
    + DbscStore
    + PasskeyStore
    + UpstreamStore
    + UpstreamFlowStore
    + Send
    + Sync
{
}

impl<T> Store for T where
    T: HealthStore
        + AccountStore
        + SessionStore
        + ThrottleStore
        + LinkStore
        + OutboxStore
        + EventStore
        + DeviceStore
        + HousekeepingStore
        + RekeyStore
        + ChallengeStore
        + MfaStore
        + ClientStore
        + TokenStore
        + BackchannelStore
        + RiskStore
        + DbscStore
        + PasskeyStore
        + UpstreamStore
        + UpstreamFlowStore
        + Send
        + Sync
{
}
