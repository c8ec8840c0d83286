//! Wiring: settings → state → HTTP server. Everything a request needs is in
//! `AppState`; there are no globals, so a test can run many servers side by side.

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::middleware::from_fn;
use actix_web::{App, HttpServer, web};
use anyhow::Context;

use crate::auth::passwords::PasswordHasher;
use crate::auth::sessions::CookiePolicy;
use crate::clock::Clock;
use crate::crypto::{self, Keys};
use crate::mail::Transport;
use crate::mail::worker::Worker;
use crate::metrics::Metrics;
use crate::settings::{SecretKey, Settings};
use crate::store::{PgStore, Store, connect_pool, dev_secret_key, is_unavailable, run_migrations};
use crate::web::{edge::edge, routes};

/// Shared by every request handler.
pub struct AppState {
    pub settings: Arc<Settings>,
    pub store: Arc<dyn Store>,
    pub clock: Clock,
    pub keys: Arc<Keys>,
    pub hasher: Arc<PasswordHasher>,
    pub metrics: Arc<Metrics>,
    pub cookies: CookiePolicy,
}

/// Applies pending migrations, waiting for the database while it is unreachable (a
/// container start order is not our problem to fail on); any other error is fatal.
pub async fn migrate_when_reachable(pool: &sqlx::PgPool) -> anyhow::Result<()> {
    let mut wait = Duration::from_millis(500);
    loop {
        match run_migrations(pool).await {
            Ok(()) => return Ok(()),
            Err(sqlx::migrate::MigrateError::Execute(e))
            | Err(sqlx::migrate::MigrateError::ExecuteMigration(e, _))
                if is_unavailable(&e) =>
            {
                tracing::warn!(
                    retry_in_ms = wait.as_millis() as u64,
                    "database unreachable; waiting to apply migrations"
                );
            }
            Err(e) => return Err(anyhow::Error::new(e).context("applying migrations")),
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(10));
    }
}

impl AppState {
    /// Connects (lazily) and derives keys. In dev mode without a secret key, one is
    /// generated once and kept in the database, loudly.
    pub async fn new(settings: Settings, clock: Clock, migrate: bool) -> anyhow::Result<Self> {
        let pool = connect_pool(settings.database_url(), settings.database_acquire_timeout)
            .context("GATEHOUSE_DATABASE_URL: cannot be used")?;
        if migrate {
            migrate_when_reachable(&pool).await?;
        }
        let secret = match &settings.secret_key {
            Some(key) => key.clone(),
            None => {
                let key = dev_secret_key(&pool, crypto::random_bytes::<32>())
                    .await
                    .context("dev mode: reading the generated secret key from the database")?;
                tracing::warn!(
                    "GATEHOUSE_SECRET_KEY is not set: dev mode uses a generated key kept in the database. \
                     Set GATEHOUSE_SECRET_KEY (32 random bytes, base64) before real use."
                );
                SecretKey::from_bytes(key)
            }
        };
        let keys = Arc::new(Keys::new(&secret, &settings.old_secret_keys));
        let store: Arc<dyn Store> = Arc::new(PgStore::new(pool, keys.clone()));
        let metrics = Arc::new(Metrics::new().context("registering metrics")?);
        let hasher = Arc::new(PasswordHasher::new(
            settings.argon2,
            settings.argon2_concurrency,
            metrics.clone(),
        )?);
        Ok(Self {
            cookies: CookiePolicy::from_settings(&settings),
            settings: Arc::new(settings),
            store,
            clock,
            keys,
            hasher,
            metrics,
        })
    }
}

/// A built, not yet running server.
pub struct Application {
    port: u16,
    server: Server,
    worker: tokio::task::JoinHandle<()>,
}

impl Application {
    pub async fn build(settings: Settings, clock: Clock, migrate: bool) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(settings.bind)
            .with_context(|| format!("GATEHOUSE_BIND: cannot listen on {}", settings.bind))?;
        let port = listener.local_addr()?.port();
        let dev = settings.dev;
        let workers = settings.http_workers;
        let state = web::Data::new(AppState::new(settings, clock, migrate).await?);
        // This node's outbox worker; every node runs one, they share the work.
        let worker = Worker {
            store: state.store.clone(),
            transport: Transport::from_settings(&state.settings)?,
            from: state.settings.mail_from.clone(),
            clock: state.clock.clone(),
            metrics: state.metrics.clone(),
        };
        let worker = tokio::spawn(worker.run(state.settings.outbox_poll));
        if dev {
            tracing::warn!("DEVELOPMENT MODE: do not put real users on this instance");
        }
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                .wrap(from_fn(edge))
                .configure(routes)
        })
        .workers(workers)
        .listen(listener)?
        // SIGTERM/SIGINT: stop accepting, let in-flight requests finish.
        .shutdown_timeout(30)
        .run();
        Ok(Self {
            port,
            server,
            worker,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// For stopping the server from outside (tests, embedding).
    pub fn handle(&self) -> actix_web::dev::ServerHandle {
        self.server.handle()
    }

    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        let result = self.server.await;
        // Mail not yet sent stays in the outbox for the next start (or another node).
        self.worker.abort();
        result
    }
}
