//! Where a request came from: the client address (behind trusted proxies) and user
//! agent, as the services see them.

use std::net::IpAddr;

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{FromRequest, HttpRequest};

use crate::auth::RequestContext;
use crate::domain::DeviceToken;
use crate::error::AppError;
use crate::web::extract::state;

/// The client's address (checklist M8, Apereo CAS CVE-2023-4612). `X-Forwarded-For`
/// and `Forwarded` are believed only when the direct peer is in
/// `GATEHOUSE_TRUSTED_PROXIES`, and then read right to left, hop by hop: each trusted
/// proxy vouches for the entry to its left, so the first address that is not a
/// trusted proxy is the client. An entry that does not parse (garbage, `unknown`, an
/// obfuscated name) ends the walk, and the client is the last address that did parse
/// (the socket peer if none): an entry further left is whatever the client wrote.
/// Entries may carry ports (`203.0.113.9:4711`, `"[2001:db8::1]:4711"`).
///
/// One rule decides between the two headers: `X-Forwarded-For` when the request
/// has it, `Forwarded` (RFC 7239) only when it does not. Most proxies write
/// `X-Forwarded-For` and pass a client's own `Forwarded` header through untouched,
/// so preferring `Forwarded` would let any client choose its address behind them; a
/// proxy that writes `Forwarded` must drop a client-sent `X-Forwarded-For` (README).
pub fn client_ip(req: &HttpRequest, trusted: &[ipnet::IpNet]) -> IpAddr {
    use forwarded_header_value::{ForwardedStanza, Identifier};

    // `to_canonical`: a server bound to `[::]` sees IPv4 peers as `::ffff:a.b.c.d`,
    // which must match IPv4 proxy ranges and count as the IPv4 client it is.
    let peer = req
        .peer_addr()
        .map(|a| a.ip().to_canonical())
        .unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let joined = |name: header::HeaderName| -> Option<String> {
        let values: Vec<&str> = req
            .headers()
            .get_all(name)
            .map(|v| v.to_str().unwrap_or("\u{0}"))
            .collect();
        (!values.is_empty()).then(|| values.join(","))
    };
    // Each hop as the walk sees it: an address, or `None` for an entry that does not
    // parse as one.
    let hops: Vec<Option<IpAddr>> =
        if let Some(xff) = joined(header::HeaderName::from_static("x-forwarded-for")) {
            xff.split(',')
                .map(|entry| {
                    entry
                        .parse::<Identifier>()
                        .ok()
                        .and_then(|id| id.ip())
                        .map(|ip| ip.to_canonical())
                })
                .collect()
        } else if let Some(fwd) = joined(header::FORWARDED) {
            fwd.split(',')
                .map(|element| {
                    element
                        .parse::<ForwardedStanza>()
                        .ok()
                        .and_then(|s| s.forwarded_for_ip())
                        .map(|ip| ip.to_canonical())
                })
                .collect()
        } else {
            return peer;
        };
    let mut client = peer;
    for hop in hops.into_iter().rev() {
        match hop {
            None => return client,
            Some(ip) if !is_trusted(&ip) => return ip,
            Some(ip) => client = ip,
        }
    }
    client
}

impl FromRequest for RequestContext {
    type Error = AppError;
    type Future = std::future::Ready<Result<Self, AppError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        std::future::ready(state(req).map(|state| {
            let ip = client_ip(req, &state.settings.trusted_proxies);
            RequestContext {
                ip,
                user_agent: req
                    .headers()
                    .get(header::USER_AGENT)
                    .and_then(|v| v.to_str().ok())
                    .map(|s| s.chars().take(512).collect()),
                location: state.geo.locate(ip),
                // A value that is not even shaped like ours is ignored (a new device
                // is made at sign-in).
                device: req
                    .cookie(state.cookies.device_name)
                    .and_then(|c| DeviceToken::parse(c.value()))
                    .map(std::sync::Arc::new),
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn forwarded_headers_count_only_from_trusted_proxies() {
        let proxies: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let direct = TestRequest::default()
            .peer_addr("203.0.113.7:5000".parse().unwrap())
            .insert_header(("x-forwarded-for", "198.51.100.1"))
            .to_http_request();
        assert_eq!(client_ip(&direct, &proxies).to_string(), "203.0.113.7");
        let proxied = TestRequest::default()
            .peer_addr("10.0.0.2:5000".parse().unwrap())
            .insert_header(("x-forwarded-for", "1.2.3.4, 198.51.100.1, 10.0.0.9"))
            .to_http_request();
        assert_eq!(client_ip(&proxied, &proxies).to_string(), "198.51.100.1");
        let forwarded = TestRequest::default()
            .peer_addr("10.0.0.2:5000".parse().unwrap())
            .insert_header(("forwarded", "for=\"[2001:db8::1]:4711\";proto=https"))
            .to_http_request();
        assert_eq!(client_ip(&forwarded, &proxies).to_string(), "2001:db8::1");
    }

    fn via_proxy(headers: &[(&str, &str)]) -> String {
        let proxies: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut r = TestRequest::default().peer_addr("10.0.0.2:5000".parse().unwrap());
        for (k, v) in headers {
            r = r.append_header((*k, *v));
        }
        client_ip(&r.to_http_request(), &proxies).to_string()
    }

    #[test]
    fn unparsable_forwarded_entries_end_the_walk_and_never_let_a_left_entry_win() {
        // Defect 3: `ip:port`, `[v6]:port` and garbage no longer fail open.
        assert_eq!(
            via_proxy(&[("x-forwarded-for", "1.2.3.4, 198.51.100.1:4711")]),
            "198.51.100.1"
        );
        assert_eq!(
            via_proxy(&[("x-forwarded-for", "1.2.3.4, [2001:db8::7]:4711, 10.0.0.9")]),
            "2001:db8::7"
        );
        // Garbage written by the client between its spoof and the proxy's entry: the
        // walk stops at the last address that parsed (a trusted proxy here), never
        // reaching the spoof on the left.
        assert_eq!(
            via_proxy(&[("x-forwarded-for", "1.2.3.4, garbage, 10.0.0.9")]),
            "10.0.0.9"
        );
        assert_eq!(
            via_proxy(&[("x-forwarded-for", "1.2.3.4, unknown")]),
            "10.0.0.2"
        );
        assert_eq!(via_proxy(&[("x-forwarded-for", "1.2.3.4, ")]), "10.0.0.2");
        // Every hop trusted: the left-most one is the client.
        assert_eq!(
            via_proxy(&[("x-forwarded-for", "10.1.1.1, 10.0.0.9")]),
            "10.1.1.1"
        );
        // Two header lines are one list, in order.
        assert_eq!(
            via_proxy(&[
                ("x-forwarded-for", "1.2.3.4"),
                ("x-forwarded-for", "198.51.100.3")
            ]),
            "198.51.100.3"
        );
    }

    #[test]
    fn ipv4_mapped_peers_and_entries_count_as_ipv4() {
        let proxies: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let r = TestRequest::default()
            .peer_addr("[::ffff:10.0.0.2]:5000".parse().unwrap())
            .insert_header(("x-forwarded-for", "::ffff:198.51.100.4"))
            .to_http_request();
        assert_eq!(client_ip(&r, &proxies).to_string(), "198.51.100.4");
    }

    #[test]
    fn forwarded_is_walked_the_same_way_and_x_forwarded_for_wins_when_both_come() {
        assert_eq!(
            via_proxy(&[(
                "forwarded",
                "for=1.2.3.4, for=198.51.100.2;proto=https, for=10.0.0.9"
            )]),
            "198.51.100.2"
        );
        assert_eq!(
            via_proxy(&[("forwarded", "for=1.2.3.4, for=_hidden, for=10.0.0.9")]),
            "10.0.0.9"
        );
        assert_eq!(
            via_proxy(&[("forwarded", "for=1.2.3.4, nonsense")]),
            "10.0.0.2"
        );
        assert_eq!(
            via_proxy(&[
                ("forwarded", "for=1.2.3.4"),
                ("x-forwarded-for", "198.51.100.5"),
            ]),
            "198.51.100.5",
            "one documented rule: X-Forwarded-For wins"
        );
    }
}
