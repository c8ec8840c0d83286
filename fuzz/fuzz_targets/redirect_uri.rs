//! Redirect URIs: what may be registered, and how an authorization request names
//! its client and redirect. Never a panic; a registered URI is https, http on
//! loopback or a private-use scheme, without fragment or user information
//! (checklist O1).
#![no_main]

use gatehouse::domain::oauth::{check_redirect_uri, client_and_redirect, redirect_registered};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|raw: &str| {
    if check_redirect_uri(raw).is_ok() {
        let parsed = url::Url::parse(raw).unwrap();
        assert_eq!(parsed.as_str(), raw);
        assert!(parsed.fragment().is_none() && parsed.username().is_empty());
        assert!(["https", "http"].contains(&parsed.scheme()) || parsed.scheme().contains('.'));
        if parsed.scheme() == "http" {
            let loopback = match parsed.host() {
                Some(url::Host::Domain(d)) => d == "localhost",
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                None => false,
            };
            assert!(loopback, "plain http off loopback: {raw:?}");
        }
    }
    // The query of an authorization request.
    if let Ok((_, _, redirect)) = client_and_redirect(raw) {
        let registered = vec!["https://rp.test/cb".to_string()];
        assert_eq!(
            redirect_registered(&registered, &redirect),
            redirect == "https://rp.test/cb"
        );
    }
});
