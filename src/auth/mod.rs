//! Services: the rules of signing in, registering and keeping a session. Handlers call
//! one of these; these call the store.

pub mod activity;
pub mod dbsc;
pub mod describe;
pub mod devices;
pub mod events;
pub mod federation;
pub mod housekeeping;
pub mod login;
pub mod mailflows;
pub mod mfa;
pub mod operators;
pub mod passkeys;
pub mod password;
pub mod risk;
pub mod second_factor;
pub mod sessions;
pub mod sign_in;
pub mod totp;

use std::future::Future;
use std::net::IpAddr;

use crate::domain::{DeviceToken, Location, throttle_network};
use crate::state::AppState;
use crate::store::StoreError;

/// Runs work whose cost depends on whether an address has an account *after* the
/// answer has gone, so the answer's timing cannot tell (checklist L2). `work` makes
/// the work afresh each time: while the database cannot be reached it is done again
/// (after 0.5 s, 1 s, 2 s … 8 s, for up to a minute), so a request answered just before
/// or during a short outage still gets its mail. Other failures are logged; the person
/// has already been told to check their inbox either way. The server waits for such
/// work (10 s at most) before it exits.
pub fn after_answer<F, Fut>(state: &AppState, what: &'static str, work: F)
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), StoreError>> + Send + 'static,
{
    state.background.spawn(async move {
        let give_up = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut wait = std::time::Duration::from_millis(500);
        loop {
            match work().await {
                Ok(()) => return,
                Err(StoreError::Unavailable(_)) if std::time::Instant::now() + wait < give_up => {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(std::time::Duration::from_secs(8));
                }
                Err(e) => {
                    tracing::warn!(error = %e, what, "work after the answer failed"); // log-ok: no secret
                    return;
                }
            }
        }
    });
}

/// Where a request came from, as far as the rules care.
#[derive(Clone, Debug)]
pub struct RequestContext {
    /// The client address (see `web::client::client_ip` for proxies).
    pub ip: IpAddr,
    pub user_agent: Option<String>,
    /// Where the address is, by the GeoIP database (unknown without one).
    pub location: Location,
    /// The device cookie the browser sent, if it is shaped like ours (whether we
    /// issued it is checked at sign-in).
    pub device: Option<std::sync::Arc<DeviceToken>>,
}

impl RequestContext {
    /// The key every per-address limit counts this client under (an IPv4 address,
    /// or the /64 of an IPv6 one; `domain::throttle_network`).
    pub fn throttle_address(&self) -> String {
        throttle_network(self.ip).to_string()
    }
}
