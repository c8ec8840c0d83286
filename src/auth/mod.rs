//! Services: the rules of signing in, registering and keeping a session. Handlers call
//! one of these; these call the store.

pub mod events;
pub mod login;
pub mod mailflows;
pub mod sessions;

use std::net::IpAddr;

use crate::domain::throttle_network;

/// Where a request came from, as far as the rules care.
#[derive(Clone, Debug)]
pub struct RequestContext {
    /// The client address (see `web::client::client_ip` for proxies).
    pub ip: IpAddr,
    pub user_agent: Option<String>,
}

impl RequestContext {
    /// The key every per-address limit counts this client under (an IPv4 address,
    /// or the /64 of an IPv6 one; `domain::throttle_network`).
    pub fn throttle_address(&self) -> String {
        throttle_network(self.ip).to_string()
    }
}
