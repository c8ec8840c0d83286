//! Settings: defaults < `gatehouse.toml` < `GATEHOUSE_*` environment variables.
//!
//! Every value is parsed and checked here, once, at start-up; an invalid or missing
//! required setting stops the process with one line that names the key.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use ipnet::IpNet;
use secrecy::{ExposeSecret, SecretBox, SecretString};
use url::Url;

/// A setting that could not be used, with the key it came from.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct SettingsError {
    pub key: String,
    pub reason: String,
}

fn err(key: &str, reason: impl Into<String>) -> SettingsError {
    SettingsError {
        key: key.to_string(),
        reason: reason.into(),
    }
}

/// How tracing output is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// Argon2id cost. Production values come from DESIGN.md ("m=19456 KiB, t=2, p=1 at
/// least"); only tests build cheaper ones, in code, never from the environment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Argon2Cost {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Argon2Cost {
    pub const PRODUCTION: Argon2Cost = Argon2Cost {
        memory_kib: 19_456,
        iterations: 2,
        parallelism: 1,
    };
}

/// A 32-byte key, printed as `[redacted]`.
pub struct SecretKey(SecretBox<[u8; 32]>);

impl SecretKey {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(SecretBox::new(Box::new(bytes)))
    }
    pub fn expose(&self) -> &[u8; 32] {
        self.0.expose_secret()
    }
    /// Keys are base64 (standard or URL-safe, padded or not) of exactly 32 bytes.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let engines = [
            &base64::engine::general_purpose::STANDARD,
            &base64::engine::general_purpose::STANDARD_NO_PAD,
            &base64::engine::general_purpose::URL_SAFE,
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        ];
        let bytes = engines
            .iter()
            .find_map(|e| e.decode(text).ok())
            .ok_or("is not base64")?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|b: Vec<u8>| format!("must decode to exactly 32 bytes, not {}", b.len()))?;
        Ok(Self::from_bytes(bytes))
    }
}

impl Clone for SecretKey {
    fn clone(&self) -> Self {
        Self::from_bytes(*self.expose())
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Everything Gatehouse reads from its environment.
#[derive(Clone, Debug)]
pub struct Settings {
    pub database_url: SecretString,
    /// Where the invalidation listener connects (`GATEHOUSE_LISTEN_DATABASE_URL`);
    /// `None`: the same database URL. Set it when the main URL goes through a
    /// transaction-pooling proxy (PgBouncer), which cannot carry `LISTEN`.
    pub listen_database_url: Option<SecretString>,
    pub bind: SocketAddr,
    /// `GATEHOUSE_TLS_CERT` / `GATEHOUSE_TLS_KEY`: serve HTTPS on `bind` (rustls)
    /// instead of plain HTTP behind a proxy that terminates TLS.
    pub tls: Option<TlsFiles>,
    /// The external base URL and OIDC issuer, without a trailing slash.
    pub public_url: Url,
    /// `None` only in dev mode, where a key is generated and kept in the database.
    pub secret_key: Option<SecretKey>,
    pub old_secret_keys: Vec<SecretKey>,
    pub dev: bool,
    pub trusted_proxies: Vec<IpNet>,
    pub session_idle: Duration,
    pub session_absolute: Duration,
    pub remember_idle: Duration,
    pub remember_absolute: Duration,
    pub log_format: LogFormat,
    pub login_max_failures: u32,
    pub ip_max_failures: u32,
    pub argon2: Argon2Cost,
    /// How many argon2 computations run at once (the rest queue). Defaults to the
    /// number of cores: more cannot go faster, only use more memory.
    pub argon2_concurrency: usize,
    /// At most this many argon2 computations wait or run at once; beyond it a request
    /// that needs one answers 503 with `Retry-After` (64 per core: about a second of
    /// queue at production cost).
    pub argon2_queue: usize,
    /// How long a request waits for its place on an argon2 thread before it answers
    /// 503 (and its job is skipped).
    pub argon2_max_wait: Duration,
    /// How long a request may wait for a database connection before it answers 503.
    pub database_acquire_timeout: Duration,
    /// HTTP worker threads (each runs its own event loop).
    pub http_workers: usize,
    /// A client must send its whole request head within this
    /// (`GATEHOUSE_HTTP_REQUEST_TIMEOUT`, 5s): a trickled head (slowloris) is cut off
    /// with 408.
    pub http_request_timeout: Duration,
    /// An idle keep-alive connection is closed after this (`GATEHOUSE_HTTP_KEEP_ALIVE`,
    /// 15s).
    pub http_keep_alive: Duration,
    /// Open connections per node at most (`GATEHOUSE_HTTP_MAX_CONNECTIONS`, 4096);
    /// beyond it new ones wait in the listen queue.
    pub http_max_connections: u32,
    /// Requests in progress per node at most (`GATEHOUSE_HTTP_MAX_IN_FLIGHT`, 512);
    /// beyond it a request is answered 503 with `Retry-After` at once rather than
    /// queued (the health and metrics endpoints are never refused).
    pub http_max_in_flight: u32,
    /// Registrations accepted per client address per hour.
    pub registrations_per_ip_hour: u32,
    /// `smtp://host:port` (plain or `?tls=required` for STARTTLS) or
    /// `smtps://user:pass@host:port` (implicit TLS). Required outside dev mode.
    pub smtp_url: Option<SecretString>,
    /// The sender of every mail, `Name <address>`.
    pub mail_from: lettre::message::Mailbox,
    /// Dev mode without SMTP: also write each mail to a file here.
    pub mail_dir: Option<std::path::PathBuf>,
    /// An unverified address cannot finish signing in.
    pub require_verified_email: bool,
    /// How often an idle outbox worker looks for due mail.
    pub outbox_poll: Duration,
    /// A MaxMind-format `.mmdb` (city or country); without it, every place is unknown.
    pub geoip_db: Option<std::path::PathBuf>,
    /// How long security events are kept (`GATEHOUSE_EVENT_RETENTION`).
    pub event_retention: Duration,
    /// How often each node runs housekeeping (`GATEHOUSE_HOUSEKEEPING_INTERVAL`).
    pub housekeeping_interval: Duration,
    /// Lifetime of an access token (`GATEHOUSE_ACCESS_TOKEN_TTL`, 5–15 min: RFC 9068
    /// tokens are checked by signature alone by some resource servers, so they stay short).
    pub access_token_ttl: Duration,
    /// Lifetime of a refresh token (`GATEHOUSE_REFRESH_TOKEN_TTL`); `None` means the
    /// session's own absolute lifetime. Either way it never outlives its session.
    pub refresh_token_ttl: Option<Duration>,
    /// The contextual checks' thresholds (DESIGN.md "Precise rules").
    pub risk: RiskSettings,
    /// How long "Trust this browser" lasts after a second factor
    /// (`GATEHOUSE_MFA_TRUST_DEVICE`); `None` (`0`) turns the option off.
    pub mfa_trust_device: Option<Duration>,
    /// Lifetime of the device-bound cookie (`GATEHOUSE_DBSC_COOKIE_TTL`): how long a
    /// copied session cookie of a bound session can outlive the theft, at most.
    pub dbsc_cookie_ttl: Duration,
    /// Administrators' sessions must be bound to a browser key (DBSC) within a
    /// minute of signing in, or they stop working (`GATEHOUSE_DBSC_REQUIRE_FOR_ADMINS`).
    pub dbsc_require_for_admins: bool,
    /// Live sessions one person may hold (`GATEHOUSE_MAX_SESSIONS_PER_USER`); a new
    /// one past it ends the least recently active. 0: no cap.
    pub max_sessions_per_user: u32,
}

/// The PEM files Gatehouse serves HTTPS with: a certificate chain (leaf first) and
/// its private key (PKCS#8, PKCS#1 or SEC1). Both were readable at start-up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Thresholds of the contextual sign-in checks.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RiskSettings {
    /// Impossible travel: faster than this between two places (`GATEHOUSE_RISK_MAX_KMH`).
    pub max_kmh: u32,
    /// ...and further apart than this, since GeoIP is coarse (`GATEHOUSE_RISK_MIN_KM`).
    pub min_km: u32,
    /// Failed sign-ins of the account in the last 15 minutes that count as "recent
    /// failures" (`GATEHOUSE_RISK_RECENT_FAILURES`).
    pub recent_failures: u32,
    /// Failed sign-ins from one address (any accounts) in the last 5 minutes that mark
    /// it as a credential-stuffing source (`GATEHOUSE_RISK_IP_FAILURES`).
    pub ip_failures: u32,
}

/// The keys this version understands, for the "unknown setting" warning.
pub const KNOWN_KEYS: &[&str] = &[
    "GATEHOUSE_DATABASE_URL",
    "GATEHOUSE_LISTEN_DATABASE_URL",
    "GATEHOUSE_BIND",
    "GATEHOUSE_TLS_CERT",
    "GATEHOUSE_TLS_KEY",
    "GATEHOUSE_PUBLIC_URL",
    "GATEHOUSE_SECRET_KEY",
    "GATEHOUSE_OLD_SECRET_KEYS",
    "GATEHOUSE_DEV",
    "GATEHOUSE_TRUSTED_PROXIES",
    "GATEHOUSE_SESSION_IDLE",
    "GATEHOUSE_SESSION_ABSOLUTE",
    "GATEHOUSE_SESSION_REMEMBER_IDLE",
    "GATEHOUSE_SESSION_REMEMBER_ABSOLUTE",
    "GATEHOUSE_LOG_FORMAT",
    "GATEHOUSE_LOGIN_MAX_FAILURES",
    "GATEHOUSE_IP_MAX_FAILURES",
    "GATEHOUSE_SMTP_URL",
    "GATEHOUSE_MAIL_FROM",
    "GATEHOUSE_MAIL_DIR",
    "GATEHOUSE_REQUIRE_VERIFIED_EMAIL",
    "GATEHOUSE_GEOIP_DB",
    "GATEHOUSE_EVENT_RETENTION",
    "GATEHOUSE_HOUSEKEEPING_INTERVAL",
    "GATEHOUSE_ACCESS_TOKEN_TTL",
    "GATEHOUSE_REFRESH_TOKEN_TTL",
    "GATEHOUSE_RISK_MAX_KMH",
    "GATEHOUSE_RISK_MIN_KM",
    "GATEHOUSE_RISK_RECENT_FAILURES",
    "GATEHOUSE_RISK_IP_FAILURES",
    "GATEHOUSE_MFA_TRUST_DEVICE",
    "GATEHOUSE_DBSC_COOKIE_TTL",
    "GATEHOUSE_DBSC_REQUIRE_FOR_ADMINS",
    "GATEHOUSE_HTTP_REQUEST_TIMEOUT",
    "GATEHOUSE_HTTP_KEEP_ALIVE",
    "GATEHOUSE_HTTP_MAX_CONNECTIONS",
    "GATEHOUSE_HTTP_MAX_IN_FLIGHT",
    "GATEHOUSE_MAX_SESSIONS_PER_USER",
];

/// Raw key → value pairs, already merged from the file and the environment.
#[derive(Debug, Default, Clone)]
pub struct RawSettings {
    values: BTreeMap<String, String>,
}

impl RawSettings {
    /// Reads `path` if it exists (a missing default file is fine) and then the
    /// process environment on top of it.
    pub fn load(path: &Path, path_was_given: bool) -> Result<Self, SettingsError> {
        let mut raw = RawSettings::default();
        match std::fs::read_to_string(path) {
            Ok(text) => raw.merge_toml(&text, &path.display().to_string())?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !path_was_given => {}
            Err(e) => return Err(err("--config", format!("{}: {e}", path.display()))),
        }
        raw.merge_env(std::env::vars());
        Ok(raw)
    }

    /// File keys may be written `GATEHOUSE_BIND` or `bind`.
    pub fn merge_toml(&mut self, text: &str, origin: &str) -> Result<(), SettingsError> {
        let table: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| err(origin, e.message().to_string()))?;
        for (key, value) in table {
            let key = normalise_key(&key);
            let value = match value {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                toml::Value::Array(items) => items
                    .iter()
                    .map(|v| match v {
                        toml::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(","),
                _ => return Err(err(&key, "must be a string, number, boolean or list")),
            };
            self.values.insert(key, value);
        }
        Ok(())
    }

    pub fn merge_env(&mut self, vars: impl IntoIterator<Item = (String, String)>) {
        for (key, value) in vars {
            if key.starts_with("GATEHOUSE_") && key != "GATEHOUSE_TEST_DATABASE_URL" {
                self.values.insert(key, value);
            }
        }
    }

    pub fn set(&mut self, key: &str, value: &str) {
        self.values.insert(key.to_string(), value.to_string());
    }

    /// Keys that look like settings but are not ones this version knows (typos).
    pub fn unknown_keys(&self) -> Vec<String> {
        self.values
            .keys()
            .filter(|k| !KNOWN_KEYS.contains(&k.as_str()))
            .cloned()
            .collect()
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.values
            .get(key)
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
    }

    fn bool(&self, key: &str, default: bool) -> Result<bool, SettingsError> {
        match self.get(key).map(|v| v.to_ascii_lowercase()) {
            None => Ok(default),
            Some(v) if ["true", "1", "yes", "on"].contains(&v.as_str()) => Ok(true),
            Some(v) if ["false", "0", "no", "off"].contains(&v.as_str()) => Ok(false),
            Some(_) => Err(err(key, "must be true or false")),
        }
    }

    fn duration(&self, key: &str, default: &str) -> Result<Duration, SettingsError> {
        let text = self.get(key).unwrap_or(default);
        let d = humantime::parse_duration(text).map_err(|_| {
            err(
                key,
                format!("{text:?} is not a duration like 30m, 12h or 7d"),
            )
        })?;
        if d.is_zero() {
            return Err(err(key, "must be longer than zero"));
        }
        Ok(d)
    }

    fn count(&self, key: &str, default: u32, max: u32) -> Result<u32, SettingsError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => match v.parse::<u32>() {
                Ok(n) if (1..=max).contains(&n) => Ok(n),
                _ => Err(err(key, format!("must be a whole number from 1 to {max}"))),
            },
        }
    }

    /// `GATEHOUSE_TLS_CERT` and `GATEHOUSE_TLS_KEY`: both or neither, each a file
    /// this process can read (its contents are checked when the server starts).
    fn tls_files(&self) -> Result<Option<TlsFiles>, SettingsError> {
        const CERT: &str = "GATEHOUSE_TLS_CERT";
        const KEY: &str = "GATEHOUSE_TLS_KEY";
        let readable = |key: &str, path: &str| {
            std::fs::File::open(path)
                .map(|_| PathBuf::from(path))
                .map_err(|e| err(key, format!("cannot read {path}: {e}")))
        };
        match (self.get(CERT), self.get(KEY)) {
            (None, None) => Ok(None),
            (Some(cert), Some(key)) => Ok(Some(TlsFiles {
                cert: readable(CERT, cert)?,
                key: readable(KEY, key)?,
            })),
            (Some(_), None) => Err(err(
                KEY,
                format!("is required with {CERT} (the certificate's private key, PEM)"),
            )),
            (None, Some(_)) => Err(err(
                CERT,
                format!("is required with {KEY} (the certificate chain, PEM)"),
            )),
        }
    }

    /// Parses and checks every setting.
    pub fn into_settings(self) -> Result<Settings, SettingsError> {
        let dev = self.bool("GATEHOUSE_DEV", false)?;

        let database_url = self
            .get("GATEHOUSE_DATABASE_URL")
            .ok_or_else(|| err("GATEHOUSE_DATABASE_URL", "is required (postgres://…)"))?;
        if !(database_url.starts_with("postgres://") || database_url.starts_with("postgresql://")) {
            return Err(err(
                "GATEHOUSE_DATABASE_URL",
                "must start with postgres:// or postgresql://",
            ));
        }

        let listen_database_url = match self.get("GATEHOUSE_LISTEN_DATABASE_URL") {
            None => None,
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Some(SecretString::from(url.to_string()))
            }
            Some(_) => {
                return Err(err(
                    "GATEHOUSE_LISTEN_DATABASE_URL",
                    "must start with postgres:// or postgresql://",
                ));
            }
        };

        let bind_text = self.get("GATEHOUSE_BIND").unwrap_or("127.0.0.1:8080");
        let bind: SocketAddr = bind_text.parse().map_err(|_| {
            err(
                "GATEHOUSE_BIND",
                format!("{bind_text:?} is not an address like 127.0.0.1:8080"),
            )
        })?;

        let tls = self.tls_files()?;

        let public_url = parse_public_url(
            self.get("GATEHOUSE_PUBLIC_URL")
                .unwrap_or("http://localhost:8080"),
            dev,
        )?;

        let secret_key = match self.get("GATEHOUSE_SECRET_KEY") {
            Some(text) => Some(SecretKey::parse(text).map_err(|r| err("GATEHOUSE_SECRET_KEY", r))?),
            None if dev => None,
            None => {
                return Err(err(
                    "GATEHOUSE_SECRET_KEY",
                    "is required outside dev mode (32 random bytes, base64; `openssl rand -base64 32`)",
                ));
            }
        };
        let old_secret_keys = self
            .get("GATEHOUSE_OLD_SECRET_KEYS")
            .map(|list| {
                list.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(SecretKey::parse)
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()
            .map_err(|r| err("GATEHOUSE_OLD_SECRET_KEYS", r))?
            .unwrap_or_default();

        let trusted_proxies = self
            .get("GATEHOUSE_TRUSTED_PROXIES")
            .map(|list| {
                list.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| {
                        s.parse::<IpNet>()
                            .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
                            .map_err(|_| format!("{s:?} is not a CIDR like 10.0.0.0/8"))
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()
            .map_err(|r| err("GATEHOUSE_TRUSTED_PROXIES", r))?
            .unwrap_or_default();

        let session_idle = self.duration("GATEHOUSE_SESSION_IDLE", "30m")?;
        let session_absolute = self.duration("GATEHOUSE_SESSION_ABSOLUTE", "12h")?;
        let remember_idle = self.duration("GATEHOUSE_SESSION_REMEMBER_IDLE", "7d")?;
        let remember_absolute = self.duration("GATEHOUSE_SESSION_REMEMBER_ABSOLUTE", "30d")?;
        if session_idle > session_absolute {
            return Err(err(
                "GATEHOUSE_SESSION_IDLE",
                "must not be longer than GATEHOUSE_SESSION_ABSOLUTE",
            ));
        }
        if remember_idle > remember_absolute {
            return Err(err(
                "GATEHOUSE_SESSION_REMEMBER_IDLE",
                "must not be longer than GATEHOUSE_SESSION_REMEMBER_ABSOLUTE",
            ));
        }

        let smtp_url = match self.get("GATEHOUSE_SMTP_URL") {
            Some(url) => Some(SecretString::from(parse_smtp_url(url, dev)?)),
            None if dev => None,
            None => {
                return Err(err(
                    "GATEHOUSE_SMTP_URL",
                    "is required outside dev mode (verification and reset links go by mail)",
                ));
            }
        };
        let mail_from_text = self
            .get("GATEHOUSE_MAIL_FROM")
            .unwrap_or("Gatehouse <no-reply@localhost>");
        let mail_from: lettre::message::Mailbox = mail_from_text.parse().map_err(|_| {
            err(
                "GATEHOUSE_MAIL_FROM",
                format!(
                    "{mail_from_text:?} is not an address like Gatehouse <no-reply@example.com>"
                ),
            )
        })?;
        let mail_dir = self.get("GATEHOUSE_MAIL_DIR").map(std::path::PathBuf::from);

        let log_format = match self.get("GATEHOUSE_LOG_FORMAT") {
            None if dev => LogFormat::Pretty,
            None => LogFormat::Json,
            Some("pretty") => LogFormat::Pretty,
            Some("json") => LogFormat::Json,
            Some(_) => return Err(err("GATEHOUSE_LOG_FORMAT", "must be pretty or json")),
        };

        Ok(Settings {
            database_url: SecretString::from(database_url.to_string()),
            listen_database_url,
            bind,
            tls,
            public_url,
            secret_key,
            old_secret_keys,
            dev,
            trusted_proxies,
            session_idle,
            session_absolute,
            remember_idle,
            remember_absolute,
            log_format,
            login_max_failures: self.count("GATEHOUSE_LOGIN_MAX_FAILURES", 5, 100)?,
            ip_max_failures: self.count("GATEHOUSE_IP_MAX_FAILURES", 30, 100_000)?,
            argon2: Argon2Cost::PRODUCTION,
            argon2_concurrency: cores(),
            argon2_queue: 64 * cores(),
            argon2_max_wait: Duration::from_secs(10),
            database_acquire_timeout: Duration::from_secs(5),
            http_workers: cores(),
            http_request_timeout: {
                let d = self.duration("GATEHOUSE_HTTP_REQUEST_TIMEOUT", "5s")?;
                if d > Duration::from_secs(60) {
                    return Err(err("GATEHOUSE_HTTP_REQUEST_TIMEOUT", "must be at most 60s"));
                }
                d
            },
            http_keep_alive: self.duration("GATEHOUSE_HTTP_KEEP_ALIVE", "15s")?,
            http_max_connections: self.count("GATEHOUSE_HTTP_MAX_CONNECTIONS", 4096, 1_000_000)?,
            http_max_in_flight: self.count("GATEHOUSE_HTTP_MAX_IN_FLIGHT", 512, 1_000_000)?,
            registrations_per_ip_hour: 20,
            smtp_url,
            mail_from,
            mail_dir,
            require_verified_email: self.bool("GATEHOUSE_REQUIRE_VERIFIED_EMAIL", true)?,
            outbox_poll: Duration::from_secs(1),
            geoip_db: self.get("GATEHOUSE_GEOIP_DB").map(std::path::PathBuf::from),
            event_retention: {
                let d = self.duration("GATEHOUSE_EVENT_RETENTION", "90d")?;
                // The recent-failure rules and the activity page need at least a day.
                if d < Duration::from_secs(86400) {
                    return Err(err("GATEHOUSE_EVENT_RETENTION", "must be at least 1d"));
                }
                d
            },
            housekeeping_interval: self.duration("GATEHOUSE_HOUSEKEEPING_INTERVAL", "10m")?,
            access_token_ttl: {
                let d = self.duration("GATEHOUSE_ACCESS_TOKEN_TTL", "10m")?;
                if d < Duration::from_secs(300) || d > Duration::from_secs(900) {
                    return Err(err(
                        "GATEHOUSE_ACCESS_TOKEN_TTL",
                        "must be between 5m and 15m",
                    ));
                }
                d
            },
            refresh_token_ttl: match self.get("GATEHOUSE_REFRESH_TOKEN_TTL") {
                None => None,
                Some(_) => Some(self.duration("GATEHOUSE_REFRESH_TOKEN_TTL", "12h")?),
            },
            risk: RiskSettings {
                max_kmh: self.count("GATEHOUSE_RISK_MAX_KMH", 1000, 100_000)?,
                min_km: self.count("GATEHOUSE_RISK_MIN_KM", 500, 20_000)?,
                recent_failures: self.count("GATEHOUSE_RISK_RECENT_FAILURES", 3, 100)?,
                ip_failures: self.count("GATEHOUSE_RISK_IP_FAILURES", 10, 100_000)?,
            },
            mfa_trust_device: match self.get("GATEHOUSE_MFA_TRUST_DEVICE") {
                Some("0") => None,
                _ => {
                    let d = self.duration("GATEHOUSE_MFA_TRUST_DEVICE", "30d")?;
                    if d > Duration::from_secs(400 * 86400) {
                        return Err(err(
                            "GATEHOUSE_MFA_TRUST_DEVICE",
                            "must be at most 400d (a browser keeps a cookie no longer), or 0 to turn it off",
                        ));
                    }
                    Some(d)
                }
            },
            dbsc_cookie_ttl: {
                let d = self.duration("GATEHOUSE_DBSC_COOKIE_TTL", "10m")?;
                // Dev mode may go down to seconds, so that a test sees a browser
                // refresh without waiting minutes; shorter is never less safe.
                let shortest = Duration::from_secs(if dev { 5 } else { 60 });
                if d < shortest || d > Duration::from_secs(86400) {
                    return Err(err(
                        "GATEHOUSE_DBSC_COOKIE_TTL",
                        if dev {
                            "must be between 5s and 24h (it bounds how long a stolen cookie works)"
                        } else {
                            "must be between 1m and 24h (it bounds how long a stolen cookie works)"
                        },
                    ));
                }
                d
            },
            dbsc_require_for_admins: self.bool("GATEHOUSE_DBSC_REQUIRE_FOR_ADMINS", false)?,
            max_sessions_per_user: match self.get("GATEHOUSE_MAX_SESSIONS_PER_USER") {
                None | Some("0") => 0,
                Some(_) => self.count("GATEHOUSE_MAX_SESSIONS_PER_USER", 0, 10_000)?,
            },
        })
    }
}

/// Production-shaped settings for unit tests, with `pairs` on top.
#[cfg(test)]
pub(crate) fn test_settings(pairs: &[(&str, &str)]) -> Settings {
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

/// The cores this process may use.
fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

fn normalise_key(key: &str) -> String {
    let upper = key.trim().to_ascii_uppercase().replace(['-', '.'], "_");
    if upper.starts_with("GATEHOUSE_") {
        upper
    } else {
        format!("GATEHOUSE_{upper}")
    }
}

/// Whether `host` is a loopback name or address (`localhost`, 127.0.0.0/8, `[::1]`).
pub fn is_loopback_host(host: &url::Host<&str>) -> bool {
    match host {
        url::Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
        url::Host::Ipv4(ip) => ip.is_loopback(),
        url::Host::Ipv6(ip) => ip.is_loopback(),
    }
}

/// Checks `GATEHOUSE_SMTP_URL` and returns the URL the mail transport is built from.
/// Mail carries reset and sign-in links, so outside dev mode it must not cross a
/// network in the clear without the operator saying so (DESIGN.md principle 1):
/// `smtps://` (implicit TLS) and `smtp://…?tls=required` (STARTTLS) are accepted
/// anywhere; plain `smtp://` and `?tls=opportunistic` (which an attacker on the path
/// can strip) only to a loopback relay, or with an explicit `?tls=none`.
fn parse_smtp_url(text: &str, dev: bool) -> Result<String, SettingsError> {
    const KEY: &str = "GATEHOUSE_SMTP_URL";
    let shape = || {
        err(
            KEY,
            "must look like smtps://user:pass@host:port, smtp://host:port?tls=required, or smtp://host:port?tls=none",
        )
    };
    let mut url = Url::parse(text).map_err(|_| shape())?;
    let tls: Vec<String> = url
        .query_pairs()
        .filter(|(k, _)| k == "tls")
        .map(|(_, v)| v.into_owned())
        .collect();
    let explicit_none = match (url.scheme(), tls.as_slice()) {
        ("smtps", []) | ("smtp", [_]) | ("smtp", []) => tls.first().is_some_and(|t| t == "none"),
        _ => return Err(shape()),
    };
    if explicit_none {
        // lettre knows no `tls=none`: plain SMTP is what it does without the parameter.
        let rest: Vec<(String, String)> = url
            .query_pairs()
            .filter(|(k, _)| k != "tls")
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        if rest.is_empty() {
            url.set_query(None);
        } else {
            url.query_pairs_mut().clear().extend_pairs(rest);
        }
    }
    let cleartext = url.scheme() == "smtp" && tls.first().is_none_or(|t| t != "required");
    // `smtp:` is not a special scheme to the URL parser, so an IPv4 host comes back
    // as a name: read it as an address here.
    let loopback = url.host_str().is_some_and(|h| {
        h.eq_ignore_ascii_case("localhost")
            || h.trim_matches(['[', ']'])
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    });
    if cleartext && !dev && !loopback && !explicit_none {
        return Err(err(
            KEY,
            "plain smtp:// would send mail (with its sign-in and reset links) unencrypted; \
             use smtps:// or ?tls=required, or add ?tls=none to accept that knowingly",
        ));
    }
    lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::from_url(url.as_str())
        .map_err(|_| shape())?;
    Ok(url.to_string())
}

fn parse_public_url(text: &str, dev: bool) -> Result<Url, SettingsError> {
    const KEY: &str = "GATEHOUSE_PUBLIC_URL";
    let trimmed = text.trim_end_matches('/');
    let url = Url::parse(trimmed).map_err(|_| err(KEY, format!("{text:?} is not a URL")))?;
    if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
        return Err(err(KEY, "must not have a query, fragment or user info"));
    }
    let host = url.host().ok_or_else(|| err(KEY, "must have a host"))?;
    match url.scheme() {
        "https" => {}
        "http" if dev && is_loopback_host(&host) => {}
        "http" if dev => {
            return Err(err(
                KEY,
                "plain http is allowed only for a loopback host (localhost, 127.0.0.1, [::1])",
            ));
        }
        "http" => {
            return Err(err(
                KEY,
                "must be https:// outside dev mode (set GATEHOUSE_DEV=true to try it on localhost)",
            ));
        }
        _ => return Err(err(KEY, "must be an https:// URL")),
    }
    Ok(url)
}

impl Settings {
    /// The issuer: the public URL without a trailing slash (OIDC Core §2, RFC 8414 §2).
    pub fn issuer(&self) -> String {
        self.public_url.as_str().trim_end_matches('/').to_string()
    }

    /// `scheme://host[:port]` of the public URL, compared with a request's `Origin`.
    pub fn public_origin(&self) -> String {
        self.public_url.origin().ascii_serialization()
    }

    /// Cookies may go without `Secure` (and so without the `__Host-` prefix) only in dev
    /// mode on a plain-HTTP loopback URL.
    pub fn insecure_cookies(&self) -> bool {
        self.dev && self.public_url.scheme() == "http"
    }

    pub fn database_url(&self) -> &str {
        self.database_url.expose_secret()
    }

    /// The URL the invalidation listener connects to.
    pub fn listen_database_url(&self) -> &str {
        self.listen_database_url
            .as_ref()
            .map_or_else(|| self.database_url(), |u| u.expose_secret())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    fn raw(pairs: &[(&str, &str)]) -> RawSettings {
        let mut raw = RawSettings::default();
        raw.set("GATEHOUSE_DATABASE_URL", "postgres://localhost/gatehouse");
        for (k, v) in pairs {
            raw.set(k, v);
        }
        raw
    }

    fn error_of(pairs: &[(&str, &str)]) -> SettingsError {
        match raw(pairs).into_settings() {
            Ok(_) => panic!("settings {pairs:?} were accepted"),
            Err(e) => e,
        }
    }

    #[test]
    fn production_defaults_need_https_a_secret_key_and_smtp() {
        let e = error_of(&[
            ("GATEHOUSE_PUBLIC_URL", "https://id.example.com"),
            ("GATEHOUSE_SECRET_KEY", KEY),
        ]);
        assert_eq!(e.key, "GATEHOUSE_SMTP_URL");
        let e = error_of(&[("GATEHOUSE_PUBLIC_URL", "https://id.example.com")]);
        assert_eq!(e.key, "GATEHOUSE_SECRET_KEY");
        let e = error_of(&[("GATEHOUSE_SECRET_KEY", KEY)]);
        assert_eq!(e.key, "GATEHOUSE_PUBLIC_URL");
        assert!(
            e.to_string()
                .starts_with("GATEHOUSE_PUBLIC_URL: must be https://")
        );
    }

    #[test]
    fn valid_production_settings_parse_with_documented_defaults() {
        let s = raw(&[
            ("GATEHOUSE_PUBLIC_URL", "https://id.example.com/"),
            ("GATEHOUSE_SECRET_KEY", KEY),
            (
                "GATEHOUSE_SMTP_URL",
                "smtps://user:pass@smtp.example.com:465",
            ),
        ])
        .into_settings()
        .unwrap();
        assert_eq!(s.issuer(), "https://id.example.com");
        assert_eq!(s.bind.to_string(), "127.0.0.1:8080");
        assert_eq!(s.session_idle, Duration::from_secs(30 * 60));
        assert_eq!(s.session_absolute, Duration::from_secs(12 * 3600));
        assert_eq!(s.remember_idle, Duration::from_secs(7 * 86400));
        assert_eq!(s.remember_absolute, Duration::from_secs(30 * 86400));
        assert_eq!(s.login_max_failures, 5);
        assert_eq!(s.ip_max_failures, 30);
        assert_eq!(
            s.risk,
            RiskSettings {
                max_kmh: 1000,
                min_km: 500,
                recent_failures: 3,
                ip_failures: 10
            }
        );
        assert_eq!(s.mfa_trust_device, Some(Duration::from_secs(30 * 86400)));
        assert_eq!(s.dbsc_cookie_ttl, Duration::from_secs(600));
        assert!(!s.dbsc_require_for_admins);
        assert_eq!(s.log_format, LogFormat::Json);
        assert!(!s.insecure_cookies());
        assert_eq!(s.argon2, Argon2Cost::PRODUCTION);
        assert!(s.require_verified_email);
        assert_eq!(s.mail_from.to_string(), "Gatehouse <no-reply@localhost>");
        assert!(
            !format!("{s:?}").contains("pass@"),
            "SMTP credentials do not print"
        );
    }

    #[test]
    fn dev_mode_allows_plain_http_only_on_loopback() {
        for url in [
            "http://localhost:8080",
            "http://127.0.0.2:9000",
            "http://[::1]:8080",
        ] {
            let s = raw(&[("GATEHOUSE_DEV", "true"), ("GATEHOUSE_PUBLIC_URL", url)])
                .into_settings()
                .unwrap();
            assert!(s.insecure_cookies(), "{url}");
            assert!(s.secret_key.is_none());
        }
        let e = error_of(&[
            ("GATEHOUSE_DEV", "true"),
            ("GATEHOUSE_PUBLIC_URL", "http://id.example.com"),
        ]);
        assert_eq!(e.key, "GATEHOUSE_PUBLIC_URL");
    }

    #[test]
    fn the_bound_cookie_lives_a_minute_at_least_except_in_dev_mode() {
        let e = error_of(&[
            ("GATEHOUSE_PUBLIC_URL", "https://id.example.com"),
            ("GATEHOUSE_SECRET_KEY", KEY),
            ("GATEHOUSE_SMTP_URL", "smtps://smtp.example.com"),
            ("GATEHOUSE_DBSC_COOKIE_TTL", "30s"),
        ]);
        assert_eq!(e.key, "GATEHOUSE_DBSC_COOKIE_TTL");
        let s = raw(&[
            ("GATEHOUSE_DEV", "true"),
            ("GATEHOUSE_DBSC_COOKIE_TTL", "5s"),
        ])
        .into_settings()
        .unwrap();
        assert_eq!(s.dbsc_cookie_ttl, Duration::from_secs(5));
        let e = error_of(&[
            ("GATEHOUSE_DEV", "true"),
            ("GATEHOUSE_DBSC_COOKIE_TTL", "4s"),
        ]);
        assert_eq!(e.key, "GATEHOUSE_DBSC_COOKIE_TTL");
    }

    #[test]
    fn tls_needs_both_files_and_each_readable() {
        let cert = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/tls/localhost.crt"
        );
        let key = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/tls/localhost.key"
        );
        let s = raw(&[
            ("GATEHOUSE_DEV", "true"),
            ("GATEHOUSE_TLS_CERT", cert),
            ("GATEHOUSE_TLS_KEY", key),
        ])
        .into_settings()
        .unwrap();
        assert_eq!(
            s.tls,
            Some(TlsFiles {
                cert: cert.into(),
                key: key.into()
            })
        );
        let plain = raw(&[("GATEHOUSE_DEV", "true")]).into_settings().unwrap();
        assert_eq!(plain.tls, None);
        let e = error_of(&[("GATEHOUSE_TLS_CERT", cert)]);
        assert_eq!(e.key, "GATEHOUSE_TLS_KEY");
        let e = error_of(&[("GATEHOUSE_TLS_KEY", key)]);
        assert_eq!(e.key, "GATEHOUSE_TLS_CERT");
        let e = error_of(&[
            ("GATEHOUSE_TLS_CERT", cert),
            ("GATEHOUSE_TLS_KEY", "/nonexistent/gatehouse.key"),
        ]);
        assert_eq!(e.key, "GATEHOUSE_TLS_KEY");
        assert!(e.reason.contains("/nonexistent/gatehouse.key"), "{e}");
    }

    #[test]
    fn secret_keys_must_be_32_bytes_of_base64_in_either_alphabet() {
        assert!(SecretKey::parse(KEY).is_ok());
        assert!(SecretKey::parse("AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8").is_ok());
        assert!(SecretKey::parse("-_8AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA").is_ok());
        assert!(
            SecretKey::parse("c2hvcnQ=")
                .unwrap_err()
                .contains("32 bytes")
        );
        assert!(SecretKey::parse("not base64!").is_err());
        let e = error_of(&[
            ("GATEHOUSE_SECRET_KEY", "c2hvcnQ="),
            ("GATEHOUSE_PUBLIC_URL", "https://x.example"),
        ]);
        assert_eq!(e.key, "GATEHOUSE_SECRET_KEY");
        assert_eq!(
            format!("{:?}", SecretKey::parse(KEY).unwrap()),
            "[redacted]"
        );
    }

    #[test]
    fn every_bad_value_names_its_key() {
        let cases: &[(&str, &str)] = &[
            ("GATEHOUSE_BIND", "nowhere"),
            ("GATEHOUSE_SESSION_IDLE", "soon"),
            ("GATEHOUSE_SESSION_IDLE", "0s"),
            ("GATEHOUSE_LOGIN_MAX_FAILURES", "0"),
            ("GATEHOUSE_LOGIN_MAX_FAILURES", "1000"),
            ("GATEHOUSE_IP_MAX_FAILURES", "-3"),
            ("GATEHOUSE_TRUSTED_PROXIES", "10.0.0.0/8, banana"),
            ("GATEHOUSE_LOG_FORMAT", "xml"),
            ("GATEHOUSE_DEV", "maybe"),
            ("GATEHOUSE_DATABASE_URL", "mysql://x"),
            ("GATEHOUSE_SMTP_URL", "http://mail.example.com"),
            ("GATEHOUSE_MAIL_FROM", "not an address"),
            ("GATEHOUSE_REQUIRE_VERIFIED_EMAIL", "perhaps"),
        ];
        for (key, value) in cases {
            let e = error_of(&[("GATEHOUSE_DEV", "true"), (key, value)]);
            assert_eq!(&e.key, key, "{key}={value}");
        }
        let e = error_of(&[("GATEHOUSE_DEV", "true"), ("GATEHOUSE_SESSION_IDLE", "13h")]);
        assert_eq!(e.key, "GATEHOUSE_SESSION_IDLE");
    }

    #[test]
    fn environment_wins_over_the_file_and_file_keys_may_be_short() {
        let mut raw = RawSettings::default();
        raw.merge_toml(
            "dev = true\nbind = \"127.0.0.1:9999\"\nGATEHOUSE_LOGIN_MAX_FAILURES = 7\ntrusted_proxies = [\"10.0.0.0/8\", \"192.168.1.1\"]\ndatabase_url = \"postgres://file/db\"",
            "gatehouse.toml",
        )
        .unwrap();
        raw.merge_env([
            ("GATEHOUSE_BIND".to_string(), "127.0.0.1:7777".to_string()),
            ("HOME".to_string(), "/root".to_string()),
        ]);
        let s = raw.clone().into_settings().unwrap();
        assert_eq!(s.bind.to_string(), "127.0.0.1:7777");
        assert_eq!(s.login_max_failures, 7);
        assert_eq!(s.trusted_proxies.len(), 2);
        assert!(s.dev);
        assert!(raw.unknown_keys().is_empty());
        raw.set("GATEHOUSE_SESION_IDLE", "1m");
        assert_eq!(
            raw.unknown_keys(),
            vec!["GATEHOUSE_SESION_IDLE".to_string()]
        );
    }

    #[test]
    fn cleartext_smtp_is_refused_outside_dev_mode_unless_loopback_or_explicit() {
        // Defect 6 (DESIGN.md principle 1).
        let prod = |url: &str| {
            raw(&[
                ("GATEHOUSE_PUBLIC_URL", "https://id.example.com"),
                ("GATEHOUSE_SECRET_KEY", KEY),
                ("GATEHOUSE_SMTP_URL", url),
            ])
            .into_settings()
        };
        for refused in [
            "smtp://smtp.example.com:25",
            "smtp://user:pass@smtp.example.com:587",
            "smtp://smtp.example.com:587?tls=opportunistic",
            "smtp://10.0.0.5:25",
        ] {
            let e = prod(refused).map(|_| ()).unwrap_err();
            assert_eq!(e.key, "GATEHOUSE_SMTP_URL", "{refused}");
            assert!(e.to_string().contains("tls=none"), "{e}");
            assert!(!e.to_string().contains("pass"), "{e}");
        }
        for accepted in [
            "smtps://user:pass@smtp.example.com:465",
            "smtp://smtp.example.com:587?tls=required",
            "smtp://127.0.0.1:25",
            "smtp://localhost:1025",
            "smtp://[::1]:25",
            "smtp://relay.internal:25?tls=none",
        ] {
            assert!(prod(accepted).is_ok(), "{accepted}");
        }
        let s = prod("smtp://relay.internal:25?tls=none").unwrap();
        use secrecy::ExposeSecret;
        assert_eq!(
            s.smtp_url.unwrap().expose_secret(),
            "smtp://relay.internal:25",
            "the opt-in is ours; the transport gets plain SMTP"
        );
        assert!(prod("smtp://x.example.com?tls=bogus").is_err());
        assert!(prod("smtp://x.example.com?tls=required&tls=none").is_err());
        // Dev mode may use any relay.
        let dev = raw(&[
            ("GATEHOUSE_DEV", "true"),
            ("GATEHOUSE_SMTP_URL", "smtp://mailpit:1025"),
        ])
        .into_settings();
        assert!(dev.is_ok());
    }

    #[test]
    fn secrets_do_not_print() {
        let s = raw(&[
            ("GATEHOUSE_DEV", "true"),
            ("GATEHOUSE_DATABASE_URL", "postgres://u:hunter2@db/g"),
            ("GATEHOUSE_SECRET_KEY", KEY),
        ])
        .into_settings()
        .unwrap();
        let printed = format!("{s:?}");
        assert!(!printed.contains("hunter2"));
        assert!(!printed.contains(KEY));
    }

    #[test]
    fn risk_thresholds_and_device_trust_are_settings() {
        let base = [
            ("GATEHOUSE_DEV", "true"),
            ("GATEHOUSE_RISK_MAX_KMH", "800"),
            ("GATEHOUSE_RISK_MIN_KM", "300"),
            ("GATEHOUSE_MFA_TRUST_DEVICE", "0"),
        ];
        let s = raw(&base).into_settings().unwrap();
        assert_eq!((s.risk.max_kmh, s.risk.min_km), (800, 300));
        assert_eq!(s.mfa_trust_device, None, "0 turns trust off");
        let s = raw(&[
            ("GATEHOUSE_DEV", "true"),
            ("GATEHOUSE_MFA_TRUST_DEVICE", "7d"),
        ])
        .into_settings()
        .unwrap();
        assert_eq!(s.mfa_trust_device, Some(Duration::from_secs(7 * 86400)));
        for bad in [
            ("GATEHOUSE_RISK_MAX_KMH", "fast"),
            ("GATEHOUSE_RISK_RECENT_FAILURES", "0"),
            ("GATEHOUSE_MFA_TRUST_DEVICE", "forever"),
            ("GATEHOUSE_MFA_TRUST_DEVICE", "1000d"),
        ] {
            let e = error_of(&[("GATEHOUSE_DEV", "true"), bad]);
            assert!(e.to_string().contains(bad.0), "{e}");
        }
    }
}
