//! The shared state every request handler and service sees. It sits below the
//! services (`auth`) and the HTTP layer (`web`, `startup`), which both import it, so
//! imports run one way: web → auth → state → store.

use std::sync::Arc;

use anyhow::Context;

use crate::clock::Clock;
use crate::cookies::CookiePolicy;
use crate::crypto::{self, Keys};
use crate::geoip::GeoIp;
use crate::hasher::PasswordHasher;
use crate::liveness::LiveCache;
use crate::metrics::Metrics;
use crate::settings::{SecretKey, Settings};
use crate::signing::SigningKeys;
use crate::store::{PgStore, Store, connect_pool, dev_secret_key, migrate_when_reachable};

/// Shared by every request handler.
pub struct AppState {
    pub settings: Arc<Settings>,
    pub store: Arc<dyn Store>,
    pub clock: Clock,
    pub keys: Arc<Keys>,
    pub hasher: Arc<PasswordHasher>,
    pub metrics: Arc<Metrics>,
    pub cookies: CookiePolicy,
    /// The GeoIP database (or none: every place unknown).
    pub geo: Arc<GeoIp>,
    /// This node's copy of the token signing keys (`oauth::keys` keeps it current).
    pub signing: Arc<SigningKeys>,
    /// This node's cache of token liveness and clients, kept honest by
    /// `oauth::invalidation` (see `liveness`).
    pub live: Arc<LiveCache>,
    /// Woken when a session ends anywhere (a notification), so back-channel logouts
    /// go out at once rather than at the next poll.
    pub session_ended: Arc<tokio::sync::Notify>,
    /// Work done after a request was answered (so its timing tells nothing); the
    /// server waits for it on shutdown.
    pub background: tokio_util::task::TaskTracker,
    /// The site's WebAuthn settings for passkeys; `None` when the public URL names an
    /// address, not a host (passkeys are then not offered).
    pub webauthn: Option<Arc<webauthn_rs::Webauthn>>,
    /// Requests in progress on this node (bounded by `http_max_in_flight`).
    pub in_flight: Arc<std::sync::atomic::AtomicUsize>,
    /// The client for upstream identity providers, with its discovery and key caches.
    pub upstreams: Arc<crate::upstream::Client>,
}

impl AppState {
    /// Connects (lazily) and derives keys. In dev mode without a secret key, one is
    /// generated once and kept in the database, loudly.
    pub async fn new(settings: Settings, clock: Clock, migrate: bool) -> anyhow::Result<Self> {
        // First, so that a bad path is the one line the operator sees.
        let geo = Arc::new(GeoIp::open(settings.geoip_db.as_deref())?);
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
        let live = Arc::new(LiveCache::default());
        let forget = live.clone();
        let store: Arc<dyn Store> = Arc::new(
            PgStore::new(pool, keys.clone())
                .with_session_cap(settings.max_sessions_per_user)
                .with_revocation_hook(Arc::new(move |what| forget.revoked(what))),
        );
        let metrics = Arc::new(Metrics::new().context("registering metrics")?);
        let hasher = Arc::new(PasswordHasher::new(
            settings.argon2,
            settings.argon2_concurrency,
            settings.argon2_queue,
            settings.argon2_max_wait,
            metrics.clone(),
        )?);
        let webauthn = crate::auth::passkeys::relying_party(&settings).map(Arc::new);
        if webauthn.is_none() {
            tracing::warn!(
                "GATEHOUSE_PUBLIC_URL names an address, not a host name: passkeys are not offered"
            );
        }
        let upstreams = Arc::new(
            crate::upstream::Client::new(clock.clone(), settings.dev)
                .context("building the HTTP client for upstream identity providers")?,
        );
        Ok(Self {
            upstreams,
            cookies: CookiePolicy::from_settings(&settings),
            settings: Arc::new(settings),
            store,
            clock,
            keys,
            hasher,
            metrics,
            geo,
            signing: Arc::new(SigningKeys::default()),
            live,
            session_ended: Arc::new(tokio::sync::Notify::new()),
            background: tokio_util::task::TaskTracker::new(),
            webauthn,
            in_flight: Arc::default(),
        })
    }
}
