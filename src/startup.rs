//! Wiring: settings → state → HTTP server. Everything a request needs is in
//! `AppState`; there are no globals, so a test can run many servers side by side.

use std::net::TcpListener;

use actix_web::dev::Server;
use actix_web::middleware::from_fn;
use actix_web::{App, HttpServer, web};
use anyhow::Context;

use crate::clock::Clock;
use crate::mail::Transport;
use crate::mail::worker::Worker;
use crate::settings::{Settings, TlsFiles};
use crate::state::AppState;
use crate::web::{edge::edge, routes};

/// The rustls server configuration for `GATEHOUSE_TLS_CERT` / `GATEHOUSE_TLS_KEY`,
/// with the `ring` provider every other TLS use in the binary has (one provider).
/// A file without a certificate or key, or a key that does not fit the
/// certificate, stops the start with the setting's name.
fn tls_config(files: &TlsFiles) -> anyhow::Result<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let certs = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            anyhow::anyhow!(
                "GATEHOUSE_TLS_CERT: {}: not a PEM certificate chain ({e})",
                files.cert.display()
            )
        })?;
    if certs.is_empty() {
        anyhow::bail!(
            "GATEHOUSE_TLS_CERT: {}: no certificate in the file",
            files.cert.display()
        );
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
        anyhow::anyhow!(
            "GATEHOUSE_TLS_KEY: {}: no PEM private key ({e})",
            files.key.display()
        )
    })?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            anyhow::anyhow!(
                "GATEHOUSE_TLS_KEY: {}: does not fit the certificate in GATEHOUSE_TLS_CERT ({e})",
                files.key.display()
            )
        })
}

/// A built, not yet running server.
pub struct Application {
    port: u16,
    server: Server,
    worker: tokio::task::JoinHandle<()>,
    housekeeping: tokio::task::JoinHandle<()>,
    invalidation: tokio::task::JoinHandle<()>,
    backchannel: tokio::task::JoinHandle<()>,
    /// Once a minute: how many repeated warnings the log held back.
    log_summary: tokio::task::JoinHandle<()>,
    background: tokio_util::task::TaskTracker,
}

impl Application {
    pub async fn build(settings: Settings, clock: Clock, migrate: bool) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(settings.bind)
            .with_context(|| format!("GATEHOUSE_BIND: cannot listen on {}", settings.bind))?;
        let port = listener.local_addr()?.port();
        let dev = settings.dev;
        let workers = settings.http_workers;
        let request_timeout = settings.http_request_timeout;
        let keep_alive = settings.http_keep_alive;
        let per_worker_connections = usize::try_from(settings.http_max_connections)
            .unwrap_or(usize::MAX)
            .div_ceil(workers.max(1));
        let tls = settings.tls.as_ref().map(tls_config).transpose()?;
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
        // Housekeeping: every node runs it; one at a time does a round.
        let housekeeping = tokio::spawn(crate::auth::housekeeping::run(state.clone().into_inner()));
        // The invalidation listener (caches) and the back-channel logout worker.
        let invalidation =
            tokio::spawn(crate::oauth::invalidation::run(state.clone().into_inner()));
        let backchannel = crate::oauth::backchannel::Worker {
            state: state.clone().into_inner(),
            http: crate::oauth::backchannel::http_client()
                .context("building the back-channel logout HTTP client")?,
        };
        let backchannel = tokio::spawn(backchannel.run(state.settings.outbox_poll));
        let log_summary = tokio::spawn(async {
            let mut every = tokio::time::interval(std::time::Duration::from_secs(60));
            every.tick().await;
            loop {
                every.tick().await;
                crate::telemetry::report_suppressed();
            }
        });
        // The token signing key: created at first start. A database that is down now
        // only delays it to the first token request.
        if let Err(e) = crate::oauth::keys::ensure(&state).await {
            tracing::warn!(error = format!("{e:#}"), "signing keys not loaded yet");
        }
        if dev {
            tracing::warn!("DEVELOPMENT MODE: do not put real users on this instance");
        }
        let background = state.background.clone();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(state.clone())
                // Inside the edge: CORS headers are added to the answer (error pages
                // included) before the edge renders and records it.
                .wrap(from_fn(crate::web::cors::cors))
                .wrap(from_fn(edge))
                .configure(routes)
        })
        .workers(workers)
        // Timeouts and bounds set on purpose (README "Reliability"): a request head
        // must arrive within the request timeout (slowloris is cut off with 408), a
        // closing connection gets 2 s to shut down cleanly, idle keep-alive
        // connections close, and connections beyond the bound wait in the kernel's
        // listen queue. (The head timeout covers a connection's first request: later
        // ones on a kept-alive connection are bounded by the keep-alive timeout until
        // their first byte; a reverse proxy in front bounds the rest.)
        .client_request_timeout(request_timeout)
        .client_disconnect_timeout(std::time::Duration::from_secs(2))
        .keep_alive(keep_alive)
        .max_connections(per_worker_connections);
        let server = match tls {
            Some(config) => server.listen_rustls_0_23(listener, config)?,
            None => server.listen(listener)?,
        }
        // SIGTERM/SIGINT: stop accepting, let in-flight requests finish.
        .shutdown_timeout(30)
        .run();
        Ok(Self {
            port,
            server,
            worker,
            housekeeping,
            invalidation,
            backchannel,
            log_summary,
            background,
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
        // Work promised to people who were already answered (their mail) finishes.
        self.background.close();
        if tokio::time::timeout(std::time::Duration::from_secs(10), self.background.wait())
            .await
            .is_err()
        {
            tracing::warn!("shutdown: work after answers did not finish within 10 s");
        }
        // Mail not yet sent stays in the outbox for the next start (or another node).
        self.worker.abort();
        self.housekeeping.abort();
        self.invalidation.abort();
        // Undelivered logouts stay in the outbox for the next start (or another node).
        self.backchannel.abort();
        self.log_summary.abort();
        result
    }
}
