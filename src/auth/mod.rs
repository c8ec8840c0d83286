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

impl RequestContext {
    /// The address as throttles count it: an IPv4 address, or the /64 of an IPv6
    /// one (a single host commonly holds a whole /64 and could rotate through it).
    pub fn throttle_address(&self) -> String {
        match self.ip {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => v4.to_string(),
                None => {
                    let s = v6.segments();
                    format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_are_throttled_by_their_64() {
        let ctx = |ip: &str| RequestContext {
            ip: ip.parse().unwrap(),
            user_agent: None,
        };
        assert_eq!(
            ctx("2001:db8:1:2::1").throttle_address(),
            ctx("2001:db8:1:2:ffff::9").throttle_address()
        );
        assert_ne!(
            ctx("2001:db8:1:2::1").throttle_address(),
            ctx("2001:db8:1:3::1").throttle_address()
        );
        assert_eq!(ctx("203.0.113.9").throttle_address(), "203.0.113.9");
        assert_eq!(ctx("::ffff:203.0.113.9").throttle_address(), "203.0.113.9");
    }
}
