//! Client addresses as limits count them.

use std::net::IpAddr;

use ipnet::IpNet;

/// The network a limit counts a client address under: an IPv4 address on its own
/// (IPv4-mapped IPv6 counts as IPv4), an IPv6 address by its /64, since one host
/// commonly holds a whole /64 and could rotate through it. Every per-address limit
/// (sign-in, registration, mail, codes) keys on this, and only on this.
pub fn throttle_network(ip: IpAddr) -> IpNet {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    let prefix = if ip.is_ipv4() { 32 } else { 64 };
    // A prefix within the address length cannot fail.
    IpNet::new(ip, prefix).map_or_else(|_| IpNet::from(ip), |net| net.trunc())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ip: &str) -> String {
        throttle_network(ip.parse().unwrap()).to_string()
    }

    #[test]
    fn ipv6_clients_are_counted_by_their_64() {
        assert_eq!(key("2001:db8:1:2::1"), key("2001:db8:1:2:ffff::9"));
        assert_eq!(key("2001:db8:1:2::1"), "2001:db8:1:2::/64");
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("203.0.113.9"), "203.0.113.9/32");
        assert_eq!(key("::ffff:203.0.113.9"), "203.0.113.9/32");
        assert_ne!(key("203.0.113.9"), key("203.0.113.10"));
    }
}
