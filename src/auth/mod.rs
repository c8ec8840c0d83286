//! Services: the rules of signing in, registering and keeping a session. Handlers call
//! one of these; these call the store.

pub mod login;
pub mod mailflows;
pub mod passwords;
pub mod sessions;

use std::net::IpAddr;

/// Where a request came from, as far as the rules care.
#[derive(Clone, Debug)]
pub struct RequestContext {
    /// The client address (see `web::extract::ClientIp` for proxies).
    pub ip: IpAddr,
    pub user_agent: Option<String>,
}
