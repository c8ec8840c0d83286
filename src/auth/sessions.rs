//! Browser sessions (DESIGN.md "Sessions"): a random cookie token whose SHA-256 names
//! one row; every request re-checks that row.

use std::time::Duration;

use actix_web::cookie::{Cookie, SameSite};
use time::OffsetDateTime;

use super::RequestContext;
use crate::domain::{SessionId, SessionToken, UserId};
use crate::error::AppError;
use crate::settings::Settings;
use crate::startup::AppState;
use crate::store::{NewSession, SessionRecord};

/// Activity is written back at most this often, so that reads stay reads.
pub const LAST_SEEN_GRANULARITY: Duration = Duration::from_secs(60);

/// Cookie names and attributes, fixed at start-up.
#[derive(Clone, Debug)]
pub struct CookiePolicy {
    pub secure: bool,
    pub session_name: &'static str,
    pub pre_session_name: &'static str,
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
            }
        } else {
            Self {
                secure: true,
                session_name: "__Host-gatehouse_session",
                pre_session_name: "__Host-gatehouse_presession",
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

    /// A short-lived random value that binds the CSRF token of the sign-in and
    /// registration forms before any session exists.
    pub fn pre_session_cookie(&self, value: String) -> Cookie<'static> {
        let mut c = self.base(self.pre_session_name, value);
        c.set_max_age(time::Duration::hours(2));
        c
    }
}

/// (idle, absolute) lifetime for a new session.
pub fn lifetimes(settings: &Settings, remember_me: bool) -> (Duration, Duration) {
    if remember_me {
        (settings.remember_idle, settings.remember_absolute)
    } else {
        (settings.session_idle, settings.session_absolute)
    }
}

fn span(d: Duration) -> time::Duration {
    time::Duration::seconds(i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2))
}

/// A fresh token and the row that goes with it, for a password-only sign-in.
pub fn new_session(
    state: &AppState,
    user_id: UserId,
    remember_me: bool,
    ctx: &RequestContext,
) -> (SessionToken, NewSession) {
    let token = SessionToken::generate();
    let now = state.clock.now();
    let (idle, absolute) = lifetimes(&state.settings, remember_me);
    let absolute_expires_at = now + span(absolute);
    let session = NewSession {
        id: SessionId::new(),
        token_hash: token.hash(),
        user_id,
        now,
        idle_timeout_secs: i32::try_from(idle.as_secs()).unwrap_or(i32::MAX),
        idle_expires_at: (now + span(idle)).min(absolute_expires_at),
        absolute_expires_at,
        remember_me,
        aal: "aal1",
        amr: vec!["pwd".to_string()],
        ip_enc: Some(
            state
                .keys
                .seal("sessions.ip", ctx.ip.to_string().as_bytes()),
        ),
        user_agent_enc: ctx
            .user_agent
            .as_ref()
            .map(|ua| state.keys.seal("sessions.user_agent", ua.as_bytes())),
    };
    (token, session)
}

/// The live session behind a cookie token, re-checked against the database on every
/// call; records activity at most once a minute.
pub async fn authenticate(
    state: &AppState,
    token: &SessionToken,
) -> Result<Option<SessionRecord>, AppError> {
    let now = state.clock.now();
    let Some(mut record) = state.store.live_session(&token.hash(), now).await? else {
        return Ok(None);
    };
    if now - record.last_seen_at >= span(LAST_SEEN_GRANULARITY) {
        state.store.touch_session(record.id, now).await?;
        record.last_seen_at = now;
    }
    Ok(Some(record))
}

/// Signs a session out: the row is revoked, so the cookie is useless everywhere at once.
pub async fn sign_out(state: &AppState, id: SessionId) -> Result<(), AppError> {
    state
        .store
        .revoke_session(id, state.clock.now(), "signed out")
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::RawSettings;

    fn settings(pairs: &[(&str, &str)]) -> Settings {
        let mut raw = RawSettings::default();
        raw.set("GATEHOUSE_DATABASE_URL", "postgres://localhost/x");
        raw.set(
            "GATEHOUSE_SECRET_KEY",
            "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
        );
        raw.set("GATEHOUSE_PUBLIC_URL", "https://id.example.com");
        raw.set("GATEHOUSE_SMTP_URL", "smtp://localhost:25");
        for (k, v) in pairs {
            raw.set(k, v);
        }
        raw.into_settings().unwrap()
    }

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
    fn clearing_sets_max_age_zero() {
        let policy = CookiePolicy::from_settings(&settings(&[]));
        let c = policy.clear_session().to_string();
        assert!(c.contains("Max-Age=0"), "{c}");
        assert!(c.starts_with("__Host-gatehouse_session=;"), "{c}");
    }

    #[test]
    fn remember_me_picks_the_long_lifetimes() {
        let s = settings(&[]);
        assert_eq!(
            lifetimes(&s, false),
            (Duration::from_secs(1800), Duration::from_secs(43200))
        );
        assert_eq!(
            lifetimes(&s, true),
            (
                Duration::from_secs(7 * 86400),
                Duration::from_secs(30 * 86400)
            )
        );
    }
}
