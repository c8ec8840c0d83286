//! `gatehouse doctor`: checks a deployment and says what to fix, one line per check
//! (DESIGN.md "Operations"). Each line names a setting or a dependency, never a
//! secret: database and SMTP addresses are printed as host, port and database name
//! only, without their credentials.

use std::time::Duration;

use secrecy::ExposeSecret;
use time::OffsetDateTime;

use crate::settings::{Settings, SettingsError};
use crate::store::{connect_pool, doctor as db};

/// The clock difference with the database above which tokens' times and session
/// expiries start to disagree between nodes.
pub const MAX_SKEW: Duration = Duration::from_secs(2);
/// How long one network check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// One check's outcome: `Err` carries what to fix.
pub struct Check {
    pub name: &'static str,
    pub outcome: Result<(), String>,
}

impl Check {
    fn new(name: &'static str, outcome: Result<(), String>) -> Self {
        Self { name, outcome }
    }

    /// `ok  <check>` or `FAIL <check>: <what to fix>`.
    pub fn line(&self) -> String {
        match &self.outcome {
            Ok(()) => format!("ok  {}", self.name),
            Err(fix) => format!("FAIL {}: {fix}", self.name),
        }
    }
}

/// The one line for settings that do not load, named after the check the key
/// belongs to.
pub fn settings_failure(e: &SettingsError) -> Check {
    let name = match e.key.as_str() {
        "GATEHOUSE_PUBLIC_URL" => "public URL",
        "GATEHOUSE_TRUSTED_PROXIES" => "trusted proxies",
        "GATEHOUSE_SMTP_URL" => "SMTP",
        "GATEHOUSE_GEOIP_DB" => "GeoIP database",
        "GATEHOUSE_DATABASE_URL" => "database",
        _ => "settings",
    };
    Check::new(name, Err(e.to_string()))
}

/// Runs every check against loaded settings (the settings check itself passed).
pub async fn run(settings: &Settings) -> Vec<Check> {
    let mut checks = vec![Check::new("settings", Ok(()))];
    checks.extend(database_checks(settings).await);
    checks.push(Check::new("SMTP", smtp(settings).await));
    checks.push(Check::new("GeoIP database", geoip(settings)));
    checks.push(Check::new("public URL", public_url(settings)));
    checks.push(Check::new("trusted proxies", trusted_proxies(settings)));
    checks
}

/// Where the database is, without user or password.
fn database_address(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => format!(
            "{}:{}{}",
            u.host_str().unwrap_or("localhost"),
            u.port().unwrap_or(5432),
            u.path()
        ),
        Err(_) => "GATEHOUSE_DATABASE_URL".into(),
    }
}

async fn database_checks(settings: &Settings) -> Vec<Check> {
    let url = settings.database_url();
    let at = database_address(url);
    let unchecked = |name| Check::new(name, Err("not checked: the database is unreachable".into()));
    let pool = match connect_pool(url, Duration::from_secs(5)) {
        Ok(p) => p,
        Err(e) => {
            return vec![Check::new(
                "database",
                Err(format!("GATEHOUSE_DATABASE_URL cannot be used: {e}")),
            )];
        }
    };
    // The round trip and the clock reading in one.
    let db_now = match tokio::time::timeout(CHECK_TIMEOUT, db::database_now(&pool)).await {
        Ok(Ok(now)) => now,
        Ok(Err(e)) => {
            return vec![
                Check::new(
                    "database",
                    Err(format!(
                        "cannot reach {at} ({e}): start PostgreSQL or fix GATEHOUSE_DATABASE_URL"
                    )),
                ),
                unchecked("migrations"),
                unchecked("clock"),
                unchecked("signing key"),
            ];
        }
        Err(_) => {
            return vec![
                Check::new(
                    "database",
                    Err(format!("{at} did not answer within {CHECK_TIMEOUT:?}")),
                ),
                unchecked("migrations"),
                unchecked("clock"),
                unchecked("signing key"),
            ];
        }
    };
    let mut checks = vec![Check::new("database", Ok(()))];
    let pending = db::pending_migrations(&pool).await;
    checks.push(Check::new(
        "migrations",
        match &pending {
            Ok(0) => Ok(()),
            Ok(n) => Err(format!(
                "{n} pending: run `gatehouse migrate` (or start the server without --no-migrate)"
            )),
            Err(e) => Err(format!("cannot read the applied migrations: {e}")),
        },
    ));
    let skew = (OffsetDateTime::now_utc() - db_now).abs();
    checks.push(Check::new(
        "clock",
        if skew <= MAX_SKEW {
            Ok(())
        } else {
            Err(format!(
                "this machine's clock and the database's differ by {:.1} s (more than {} s): \
                 run NTP on both",
                skew.as_seconds_f64(),
                MAX_SKEW.as_secs()
            ))
        },
    ));
    checks.push(Check::new(
        "signing key",
        match (pending, db::current_signing_key(&pool).await) {
            (Ok(n), _) if n > 0 => Err("not checked: migrations are pending".into()),
            (_, Ok(true)) => Ok(()),
            (_, Ok(false)) => Err(
                "no current token signing key: start the server once or run `gatehouse keys rotate`"
                    .into(),
            ),
            (_, Err(e)) => Err(format!("cannot read the signing keys: {e}")),
        },
    ));
    pool.close().await;
    checks
}

/// Connects to the relay as configured (TLS included) and says `NOOP`.
async fn smtp(settings: &Settings) -> Result<(), String> {
    let Some(url) = &settings.smtp_url else {
        // Settings refuse a missing SMTP URL outside dev mode.
        return Ok(());
    };
    let (at, tls) = match url::Url::parse(url.expose_secret()) {
        Ok(u) => {
            let tls = match (u.scheme(), u.query_pairs().find(|(k, _)| k == "tls")) {
                ("smtps", _) => "implicit TLS",
                (_, Some((_, v))) if v == "required" => "STARTTLS",
                _ => "no TLS",
            };
            let at = format!(
                "{}:{}",
                u.host_str().unwrap_or("?"),
                u.port()
                    .map_or_else(|| "default port".to_string(), |p| p.to_string())
            );
            (at, tls)
        }
        Err(_) => ("the relay".to_string(), "as configured"),
    };
    let transport: lettre::AsyncSmtpTransport<lettre::Tokio1Executor> =
        lettre::AsyncSmtpTransport::<lettre::Tokio1Executor>::from_url(url.expose_secret())
            .map_err(|_| "GATEHOUSE_SMTP_URL cannot be used".to_string())?
            .timeout(Some(CHECK_TIMEOUT))
            .build();
    match tokio::time::timeout(CHECK_TIMEOUT, transport.test_connection()).await {
        Ok(Ok(true)) => Ok(()),
        Ok(Ok(false)) => Err(format!("{at} ({tls}) did not accept NOOP")),
        Ok(Err(e)) => Err(format!(
            "cannot reach {at} ({tls}): {e}; check GATEHOUSE_SMTP_URL and the relay"
        )),
        Err(_) => Err(format!(
            "{at} ({tls}) did not answer within {CHECK_TIMEOUT:?}"
        )),
    }
}

fn geoip(settings: &Settings) -> Result<(), String> {
    match &settings.geoip_db {
        None => Ok(()),
        Some(path) => crate::geoip::GeoIp::open(Some(path))
            .map(|_| ())
            .map_err(|e| format!("{e:#}: fix GATEHOUSE_GEOIP_DB or unset it")),
    }
}

fn public_url(settings: &Settings) -> Result<(), String> {
    if settings.dev || settings.public_url.scheme() == "https" {
        Ok(())
    } else {
        Err("GATEHOUSE_PUBLIC_URL must be https:// outside dev mode".into())
    }
}

fn trusted_proxies(settings: &Settings) -> Result<(), String> {
    match settings
        .trusted_proxies
        .iter()
        .find(|n| n.prefix_len() == 0)
    {
        None => Ok(()),
        Some(net) => Err(format!(
            "GATEHOUSE_TRUSTED_PROXIES contains {net}: every client could then set its own \
             address; list only your proxies' addresses"
        )),
    }
}
