//! Cookie names and attributes (DESIGN.md "Sessions"), fixed at start-up.

use std::time::Duration;

use actix_web::cookie::{Cookie, SameSite};
use time::OffsetDateTime;

use crate::domain::{DeviceToken, PendingToken, SessionToken};
use crate::settings::Settings;

/// Cookie names and attributes, fixed at start-up.
#[derive(Clone, Debug)]
pub struct CookiePolicy {
    pub secure: bool,
    pub session_name: &'static str,
    pub pre_session_name: &'static str,
    pub device_name: &'static str,
    /// The short-lived cookie of a device-bound session (DBSC), renewed only by a
    /// proof from the browser's key.
    pub bound_name: &'static str,
    pub pending_name: &'static str,
    /// A round trip to an upstream in progress (10 minutes, single use).
    pub upstream_name: &'static str,
    /// An upstream identity waiting for its account to be proven (10 minutes,
    /// single use).
    pub link_name: &'static str,
}

impl CookiePolicy {
    /// `__Host-` cookies must be `Secure` with `Path=/` and no `Domain` (RFC 6265bis
    /// §4.1.3.2), which pins them to exactly this origin: no subdomain can plant one
    /// (ZITADEL CVE-2024-28197). Dev mode over plain HTTP cannot use the prefix.
    pub fn from_settings(settings: &Settings) -> Self {
        if settings.insecure_cookies() {
            Self {
                secure: false,
                session_name: "gatehouse_session",
                pre_session_name: "gatehouse_presession",
                device_name: "gatehouse_device",
                bound_name: "gatehouse_bound",
                pending_name: "gatehouse_pending",
                upstream_name: "gatehouse_upstream",
                link_name: "gatehouse_link",
            }
        } else {
            Self {
                secure: true,
                session_name: "__Host-gatehouse_session",
                pre_session_name: "__Host-gatehouse_presession",
                device_name: "__Host-gatehouse_device",
                bound_name: "__Host-gatehouse_bound",
                pending_name: "__Host-gatehouse_pending",
                upstream_name: "__Host-gatehouse_upstream",
                link_name: "__Host-gatehouse_link",
            }
        }
    }

    fn base(&self, name: &'static str, value: String) -> Cookie<'static> {
        let mut c = Cookie::new(name, value);
        c.set_path("/");
        c.set_http_only(true);
        c.set_secure(self.secure);
        c.set_same_site(SameSite::Lax);
        c
    }

    /// The session cookie. "Keep me signed in" makes it outlive the browser (until the
    /// session's absolute expiry); otherwise it is a browser-session cookie.
    pub fn session_cookie(
        &self,
        token: &SessionToken,
        persist_for: Option<Duration>,
    ) -> Cookie<'static> {
        let mut c = self.base(self.session_name, token.expose().to_string());
        if let Some(d) = persist_for {
            c.set_max_age(time::Duration::seconds(
                i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            ));
        }
        c
    }

    pub fn clear_session(&self) -> Cookie<'static> {
        let mut c = self.base(self.session_name, String::new());
        c.set_max_age(time::Duration::ZERO);
        c.set_expires(OffsetDateTime::UNIX_EPOCH);
        c
    }

    /// The device cookie: links this browser's sign-ins for a year (renewed at each
    /// sign-in) and survives sign-out; never a credential on its own.
    pub fn device_cookie(&self, token: &DeviceToken) -> Cookie<'static> {
        let mut c = self.base(self.device_name, token.expose().to_string());
        c.set_max_age(time::Duration::days(365));
        c
    }

    /// A half-finished sign-in waiting for its second factor: lives as long as the
    /// challenge it names (10 minutes).
    pub fn pending_cookie(&self, token: &PendingToken) -> Cookie<'static> {
        let mut c = self.base(self.pending_name, token.expose().to_string());
        c.set_max_age(time::Duration::minutes(10));
        c
    }

    pub fn clear_pending(&self) -> Cookie<'static> {
        let mut c = self.base(self.pending_name, String::new());
        c.set_max_age(time::Duration::ZERO);
        c.set_expires(OffsetDateTime::UNIX_EPOCH);
        c
    }

    /// A short, single-use cookie binding an upstream round trip (`upstream_name`)
    /// or a waiting link (`link_name`) to this browser. `SameSite=Lax` is what lets
    /// it come back on the upstream's redirect (a top-level GET).
    pub fn upstream_cookie(&self, name: &'static str, value: &str) -> Cookie<'static> {
        let mut c = self.base(name, value.to_string());
        c.set_max_age(time::Duration::minutes(10));
        c
    }

    /// Spends one of the cookies `upstream_cookie` sets.
    pub fn clear_upstream(&self, name: &'static str) -> Cookie<'static> {
        let mut c = self.base(name, String::new());
        c.set_max_age(time::Duration::ZERO);
        c.set_expires(OffsetDateTime::UNIX_EPOCH);
        c
    }

    /// The device-bound cookie: lives `ttl`, renewed by the browser's DBSC refresh.
    pub fn bound_cookie(&self, value: &str, ttl: Duration) -> Cookie<'static> {
        let mut c = self.base(self.bound_name, value.to_string());
        c.set_max_age(time::Duration::seconds(
            i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX),
        ));
        c
    }

    /// The bound cookie's attributes as the DBSC session configuration states them
    /// (they must match its `Set-Cookie`).
    pub fn bound_attributes(&self) -> &'static str {
        if self.secure {
            "Path=/; Secure; HttpOnly; SameSite=Lax"
        } else {
            "Path=/; HttpOnly; SameSite=Lax"
        }
    }

    /// A short-lived random value that binds the CSRF token of the sign-in and
    /// registration forms before any session exists.
    pub fn pre_session_cookie(&self, value: String) -> Cookie<'static> {
        let mut c = self.base(self.pre_session_name, value);
        c.set_max_age(time::Duration::hours(2));
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::test_settings as settings;

    #[test]
    fn production_session_cookie_is_host_prefixed_secure_http_only_lax() {
        // S1
        let policy = CookiePolicy::from_settings(&settings(&[]));
        let c = policy
            .session_cookie(&SessionToken::generate(), None)
            .to_string();
        assert!(c.starts_with("__Host-gatehouse_session="), "{c}");
        for attr in ["; HttpOnly", "; SameSite=Lax", "; Secure", "; Path=/"] {
            assert!(c.contains(attr), "{c} lacks {attr}");
        }
        assert!(!c.contains("Domain"), "{c}");
        assert!(
            !c.contains("Max-Age"),
            "a normal session cookie dies with the browser: {c}"
        );
        let remembered = policy
            .session_cookie(&SessionToken::generate(), Some(Duration::from_secs(86400)))
            .to_string();
        assert!(remembered.contains("Max-Age=86400"), "{remembered}");
    }

    #[test]
    fn dev_cookies_over_plain_http_drop_prefix_and_secure() {
        let s = settings(&[
            ("GATEHOUSE_DEV", "true"),
            ("GATEHOUSE_PUBLIC_URL", "http://localhost:8080"),
        ]);
        let policy = CookiePolicy::from_settings(&s);
        let c = policy
            .session_cookie(&SessionToken::generate(), None)
            .to_string();
        assert!(c.starts_with("gatehouse_session="), "{c}");
        assert!(!c.contains("Secure"), "{c}");
        assert!(c.contains("HttpOnly"));
        // Dev mode behind https keeps the secure form.
        let s = settings(&[("GATEHOUSE_DEV", "true")]);
        assert!(CookiePolicy::from_settings(&s).secure);
    }

    #[test]
    fn device_cookie_is_host_prefixed_and_lasts_a_year() {
        // D4 (the device cookie is a random value, never personal data)
        let policy = CookiePolicy::from_settings(&settings(&[]));
        let c = policy.device_cookie(&DeviceToken::generate()).to_string();
        assert!(c.starts_with("__Host-gatehouse_device="), "{c}");
        for attr in [
            "; HttpOnly",
            "; SameSite=Lax",
            "; Secure",
            "; Path=/",
            "; Max-Age=31536000",
        ] {
            assert!(c.contains(attr), "{c} lacks {attr}");
        }
        assert!(!c.contains("Domain"), "{c}");
    }

    #[test]
    fn clearing_sets_max_age_zero() {
        let policy = CookiePolicy::from_settings(&settings(&[]));
        let c = policy.clear_session().to_string();
        assert!(c.contains("Max-Age=0"), "{c}");
        assert!(c.starts_with("__Host-gatehouse_session=;"), "{c}");
    }
}
