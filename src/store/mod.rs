//! The only SQL in the crate, one file per capability. Each file holds the trait the
//! services call, the records it takes and gives, and its PostgreSQL implementation
//! on `PgStore` (runtime `query_as` into private row structs: a schema that drifts
//! gives an error, never a panic). Each method is one unit of work with its own
//! transaction. `Store` is the sum of the capabilities; services hold an
//! `Arc<dyn Store>` and import the capability traits they call.

mod accounts;
mod backchannel;
mod challenges;
mod dbsc;
mod devices;
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
pub use sessions::{BoundCookies, NewSession, SessionRecord, SessionStore, SignIn};
pub use throttle::{Attempt, AttemptKeys, ThrottleLimits, ThrottleStore};
pub use tokens::{
    CodeRecord, CodeVerdict, LiveRefresh, LiveToken, NewCode, NewTokens, Redemption, RefreshRecord,
    RefreshVerdict, Rotation, TokenStore,
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
        + Send
        + Sync
{
}
