//! The test harness: a real Gatehouse on port 0 against its own fresh PostgreSQL
//! database (dropped afterwards), and a "browser" that keeps cookies by hand so tests
//! can see and plant exactly what a browser would.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use gatehouse::clock::Clock;
use gatehouse::settings::{Argon2Cost, RawSettings, Settings};
use gatehouse::startup::Application;
use reqwest::header::HeaderMap;
use sqlx::{Connection, Executor, PgConnection, PgPool};
use tokio::net::{TcpListener, TcpStream};

pub const PUBLIC_URL: &str = "https://gatehouse.test";
pub const PASSWORD: &str = "correct horse battery staple";

/// The PostgreSQL server tests use: `GATEHOUSE_TEST_DATABASE_URL`, else the local one.
pub fn base_database_url() -> String {
    std::env::var("GATEHOUSE_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

fn with_database(url: &str, name: &str) -> String {
    let mut u = url::Url::parse(url).expect("GATEHOUSE_TEST_DATABASE_URL is not a URL");
    u.set_path(&format!("/{name}"));
    u.to_string()
}

async fn admin_connection() -> PgConnection {
    let url = base_database_url();
    match PgConnection::connect(&url).await {
        Ok(c) => c,
        Err(e) => panic!(
            "\n\nThese tests need PostgreSQL and could not connect to {url}: {e}\n\
             Start PostgreSQL on 127.0.0.1:5432 (user postgres, trust auth), or set \
             GATEHOUSE_TEST_DATABASE_URL=postgres://user:pass@host:port/db\n\n"
        ),
    }
}

/// Knobs a test may turn before the server starts.
#[derive(Clone)]
pub struct Options {
    pub dev: bool,
    pub login_max_failures: u32,
    pub ip_max_failures: u32,
    pub trusted_proxies: Option<String>,
    /// Route the server's database traffic through a proxy the test can cut.
    pub db_proxy: bool,
    pub extra: Vec<(&'static str, String)>,
    pub registrations_per_ip_hour: u32,
    /// Off by default so that tests of other capabilities sign in right after
    /// registering; the mail tests turn it on (the product default).
    pub require_verified_email: bool,
    /// Stop the server's clock: it moves only when the test advances it, so no
    /// assertion depends on how long requests take.
    pub frozen_clock: bool,
    /// Password hashing cost (default: cheap, for speed).
    pub argon2: Argon2Cost,
    /// Argon2 threads and queue bound (default: 2 and 64).
    pub argon2_threads: usize,
    pub argon2_queue: usize,
    pub argon2_max_wait: Duration,
    /// Dev mode with the issuer (public URL) equal to the address the server
    /// listens on, so that relying-party libraries can discover it.
    pub issuer_is_address: bool,
    /// Route only the invalidation listener's connection through a proxy the test
    /// can cut or slow (`GATEHOUSE_LISTEN_DATABASE_URL`).
    pub listen_proxy: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            dev: false,
            login_max_failures: 5,
            ip_max_failures: 30,
            trusted_proxies: None,
            db_proxy: false,
            extra: Vec::new(),
            registrations_per_ip_hour: 100,
            require_verified_email: false,
            frozen_clock: false,
            argon2: Argon2Cost {
                memory_kib: 256,
                iterations: 1,
                parallelism: 1,
            },
            argon2_threads: 2,
            argon2_queue: 64,
            argon2_max_wait: Duration::from_secs(10),
            issuer_is_address: false,
            listen_proxy: false,
        }
    }
}

pub struct TestApp {
    pub address: String,
    pub port: u16,
    pub clock: Clock,
    /// Direct access to the test database, for assertions about what is stored.
    pub db: PgPool,
    pub db_name: String,
    /// The database's URL, for running the `gatehouse` binary against it.
    pub db_url: String,
    pub proxy: Option<DbProxy>,
    /// The invalidation listener's own proxy (`Options::listen_proxy`).
    pub listen_proxy: Option<DbProxy>,
    pub mail: MailSink,
    pub settings: Settings,
    handle: actix_web::dev::ServerHandle,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(Options::default()).await
}

pub fn random_key() -> String {
    let bytes: [u8; 32] = gatehouse::crypto::random_bytes();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A fresh, migrated database; returns (name, url).
pub async fn drop_database(name: &str) {
    if let Ok(mut admin) = PgConnection::connect(&base_database_url()).await {
        let _ = admin
            .execute(sqlx::AssertSqlSafe(format!(
                r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#
            )))
            .await;
    }
}

pub async fn fresh_database() -> (String, String) {
    let name = format!("gatehouse_test_{}", uuid::Uuid::new_v4().simple());
    let mut admin = admin_connection().await;
    admin
        .execute(sqlx::AssertSqlSafe(format!(r#"CREATE DATABASE "{name}""#)))
        .await
        .expect("creating the test database");
    let url = with_database(&base_database_url(), &name);
    (name, url)
}

pub async fn spawn_app_with(options: Options) -> TestApp {
    let (db_name, db_url) = fresh_database().await;
    let proxy = if options.db_proxy {
        Some(DbProxy::start(&db_url).await)
    } else {
        None
    };
    let app_db_url = proxy.as_ref().map_or(db_url.clone(), |p| p.url.clone());
    let listen_proxy = if options.listen_proxy {
        Some(DbProxy::start(&db_url).await)
    } else {
        None
    };

    let mail = MailSink::start().await;
    let mut raw = RawSettings::default();
    raw.set(
        "GATEHOUSE_SMTP_URL",
        &format!("smtp://127.0.0.1:{}", mail.port),
    );
    raw.set(
        "GATEHOUSE_REQUIRE_VERIFIED_EMAIL",
        &options.require_verified_email.to_string(),
    );
    raw.set("GATEHOUSE_DATABASE_URL", &app_db_url);
    raw.set("GATEHOUSE_BIND", "127.0.0.1:0");
    raw.set("GATEHOUSE_SECRET_KEY", &random_key());
    if options.issuer_is_address {
        // A free port, taken back at once and given to the server (the issuer must be
        // known before it starts).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        raw.set("GATEHOUSE_DEV", "true");
        raw.set("GATEHOUSE_BIND", &format!("127.0.0.1:{port}"));
        raw.set("GATEHOUSE_PUBLIC_URL", &format!("http://127.0.0.1:{port}"));
    } else if options.dev {
        raw.set("GATEHOUSE_DEV", "true");
        raw.set("GATEHOUSE_PUBLIC_URL", "http://localhost:8080");
    } else {
        raw.set("GATEHOUSE_PUBLIC_URL", PUBLIC_URL);
    }
    raw.set(
        "GATEHOUSE_LOGIN_MAX_FAILURES",
        &options.login_max_failures.to_string(),
    );
    raw.set(
        "GATEHOUSE_IP_MAX_FAILURES",
        &options.ip_max_failures.to_string(),
    );
    if let Some(p) = &options.trusted_proxies {
        raw.set("GATEHOUSE_TRUSTED_PROXIES", p);
    }
    if let Some(p) = &listen_proxy {
        raw.set("GATEHOUSE_LISTEN_DATABASE_URL", &p.url);
    }
    for (k, v) in &options.extra {
        raw.set(k, v);
    }
    let mut settings = raw.into_settings().expect("test settings are valid");
    // Cheap hashing keeps the suite fast unless a test asks for the real cost.
    settings.argon2 = options.argon2;
    settings.argon2_concurrency = options.argon2_threads;
    settings.argon2_queue = options.argon2_queue;
    settings.argon2_max_wait = options.argon2_max_wait;
    settings.http_workers = 2;
    settings.database_acquire_timeout = Duration::from_secs(2);
    settings.registrations_per_ip_hour = options.registrations_per_ip_hour;
    settings.outbox_poll = Duration::from_millis(100);

    let clock = if options.frozen_clock {
        Clock::frozen()
    } else {
        Clock::system()
    };
    let app = Application::build(settings.clone(), clock.clone(), true)
        .await
        .expect("the application builds");
    let port = app.port();
    let handle = app.handle();
    tokio::spawn(app.run_until_stopped());
    let db = PgPool::connect(&db_url)
        .await
        .expect("connecting to the test database");
    TestApp {
        address: format!("http://127.0.0.1:{port}"),
        port,
        clock,
        db,
        db_name,
        db_url,
        proxy,
        listen_proxy,
        mail,
        settings,
        handle,
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // The stop command is sent at once; nobody needs to wait for it here.
        drop(self.handle.stop(false));
        let name = self.db_name.clone();
        // The test's runtime is going away; drop the database from a thread of our own.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(drop_database(&name));
        })
        .join();
    }
}

/// What came back, read once.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }
    /// The body with its per-response CSP nonce blanked (`nonce="…"` on the page's
    /// script tag): two answers that must be the same page compare equal.
    pub fn page(&self) -> String {
        let mut out = String::with_capacity(self.body.len());
        let mut rest = self.body.as_str();
        while let Some(at) = rest.find("nonce=\"") {
            out.push_str(&rest[..at + 7]);
            rest = &rest[at + 7..];
            rest = rest.find('"').map_or("", |end| &rest[end..]);
        }
        out.push_str(rest);
        out
    }

    pub fn location(&self) -> String {
        self.header("location").unwrap_or_default()
    }
    /// Every `Set-Cookie`, parsed.
    pub fn set_cookies(&self) -> Vec<cookie::Cookie<'static>> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|v| cookie::Cookie::parse(v.to_string()).ok())
            .collect()
    }
    pub fn raw_set_cookie(&self, name: &str) -> Option<String> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find(|v| v.starts_with(&format!("{name}=")))
            .map(str::to_string)
    }
    /// A signed-out page visit: 303 to the sign-in page, with the way back.
    pub fn is_sign_in_redirect(&self) -> bool {
        self.status == 303 && self.location().starts_with("/login?return_to=%2F")
    }

    /// The CSRF field's value, or "" on a page without a form.
    pub fn csrf_or_empty(&self) -> String {
        if self.body.contains(r#"name="csrf_token""#) {
            self.csrf()
        } else {
            String::new()
        }
    }

    /// The hidden CSRF field of the (first) form on the page.
    pub fn csrf(&self) -> String {
        let marker = r#"name="csrf_token" value=""#;
        let start = self
            .body
            .find(marker)
            .map(|i| i + marker.len())
            .expect("page has a CSRF field");
        let end = self.body[start..].find('"').expect("CSRF value ends");
        self.body[start..start + end].to_string()
    }
}

/// A browser: a cookie jar kept by hand (so `Secure` cookies work over the test's
/// plain HTTP, and tests can copy, plant and replay cookies) and no redirect following.
#[derive(Clone)]
pub struct Browser {
    http: reqwest::Client,
    base: String,
    jar: Arc<Mutex<BTreeMap<String, String>>>,
    pub extra_headers: Vec<(String, String)>,
}

impl Browser {
    pub fn new(base: &str) -> Self {
        Self {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("reqwest client"),
            base: base.to_string(),
            jar: Arc::default(),
            extra_headers: Vec::new(),
        }
    }

    /// A fresh browser whose connections come from `local` (any 127.0.0.0/8 address
    /// works on loopback): a peer the server may or may not trust as a proxy.
    pub fn from_address(base: &str, local: std::net::IpAddr) -> Self {
        Self {
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .local_address(local)
                .build()
                .expect("reqwest client"),
            base: base.to_string(),
            jar: Arc::default(),
            extra_headers: Vec::new(),
        }
    }

    /// The same browser (one cookie jar) talking to another site.
    pub fn at(&self, base: &str) -> Browser {
        Browser {
            base: base.to_string(),
            ..self.clone()
        }
    }

    pub fn cookie(&self, name: &str) -> Option<String> {
        self.jar.lock().unwrap().get(name).cloned()
    }
    pub fn set_cookie(&self, name: &str, value: &str) {
        self.jar
            .lock()
            .unwrap()
            .insert(name.to_string(), value.to_string());
    }
    pub fn cookie_header(&self) -> String {
        self.jar
            .lock()
            .unwrap()
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    pub async fn send(&self, rb: reqwest::RequestBuilder) -> Resp {
        self.try_send(rb).await.expect("request reaches the server")
    }

    /// Like `send`, but `None` when the server cannot be reached (a node that was
    /// killed, say).
    pub async fn try_send(&self, mut rb: reqwest::RequestBuilder) -> Option<Resp> {
        let cookies = self.cookie_header();
        if !cookies.is_empty() {
            rb = rb.header("cookie", cookies);
        }
        for (k, v) in &self.extra_headers {
            rb = rb.header(k.as_str(), v.as_str());
        }
        let res = rb.send().await.ok()?;
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let body = res.text().await.unwrap_or_default();
        let resp = Resp {
            status,
            headers,
            body,
        };
        let mut jar = self.jar.lock().unwrap();
        for c in resp.set_cookies() {
            let expired = c.max_age().is_some_and(|a| a.is_zero() || a.is_negative());
            if expired {
                jar.remove(c.name());
            } else {
                jar.insert(c.name().to_string(), c.value().to_string());
            }
        }
        Some(resp)
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{}", self.base, path))
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.send(self.request(reqwest::Method::GET, path)).await
    }

    /// Follows a mailed link as a person does: the GET shows a page with one button
    /// (or says the link is dead), and pressing it POSTs the token. Returns the POST's
    /// answer, or the GET's when there was no button.
    pub async fn open_link(&self, url: &str) -> Resp {
        let page = self.get(url).await;
        if page.status != 200 {
            return page;
        }
        let path = url.split('?').next().unwrap_or(url);
        let token = url.split("token=").nth(1).unwrap_or_default();
        self.post_form(path, &[("csrf_token", &page.csrf()), ("token", token)])
            .await
    }

    pub async fn post_form(&self, path: &str, form: &[(&str, &str)]) -> Resp {
        self.send(self.request(reqwest::Method::POST, path).form(form))
            .await
    }
}

impl TestApp {
    /// The server's keys, to open what it sealed.
    pub fn keys(&self) -> gatehouse::crypto::Keys {
        gatehouse::crypto::Keys::new(
            self.settings.secret_key.as_ref().expect("tests set a key"),
            &self.settings.old_secret_keys,
        )
    }

    /// Runs the `gatehouse` binary against this app's database with its settings
    /// (`extra` on top); returns (success, stdout, stderr).
    pub fn cli(&self, args: &[&str], extra: &[(&str, &str)]) -> (bool, String, String) {
        let key = self.settings.secret_key.as_ref().expect("tests set a key");
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_gatehouse"));
        c.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("GATEHOUSE_DATABASE_URL", &self.db_url)
            .env("GATEHOUSE_PUBLIC_URL", PUBLIC_URL)
            .env(
                "GATEHOUSE_SMTP_URL",
                format!("smtp://127.0.0.1:{}", self.mail.port),
            )
            .env(
                "GATEHOUSE_SECRET_KEY",
                base64::engine::general_purpose::STANDARD.encode(key.expose()),
            )
            .env("GATEHOUSE_LOG_FORMAT", "json")
            .args(args);
        for (k, v) in extra {
            c.env(k, v);
        }
        let out = c.output().expect("the gatehouse binary runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub fn browser(&self) -> Browser {
        Browser::new(&self.address)
    }

    pub fn session_cookie_name(&self) -> &'static str {
        if self.settings.insecure_cookies() {
            "gatehouse_session"
        } else {
            "__Host-gatehouse_session"
        }
    }

    pub fn device_cookie_name(&self) -> &'static str {
        if self.settings.insecure_cookies() {
            "gatehouse_device"
        } else {
            "__Host-gatehouse_device"
        }
    }

    pub fn session_cookie(&self, b: &Browser) -> Option<String> {
        b.cookie(self.session_cookie_name())
    }

    /// Registers through the pages; the browser ends signed in.
    pub async fn register(&self, b: &Browser, email: &str, password: &str) -> Resp {
        let page = b.get("/register").await;
        assert_eq!(page.status, 200, "{}", page.body);
        b.post_form(
            "/register",
            &[
                ("csrf_token", &page.csrf()),
                ("email", email),
                ("password", password),
            ],
        )
        .await
    }

    /// An account, created through the pages in a browser of its own that then signs
    /// out (its session row stays, revoked).
    pub async fn user(&self, email: &str) {
        let b = self.browser();
        let r = self.register(&b, email, PASSWORD).await;
        assert_eq!(r.status, 303, "registering {email}: {}", r.body);
        let csrf = b.get("/account").await.csrf();
        let r = b.post_form("/logout", &[("csrf_token", &csrf)]).await;
        assert_eq!(r.status, 303);
    }

    pub async fn login(&self, b: &Browser, email: &str, password: &str) -> Resp {
        self.login_with(b, email, password, &[]).await
    }

    pub async fn login_with(
        &self,
        b: &Browser,
        email: &str,
        password: &str,
        extra: &[(&str, &str)],
    ) -> Resp {
        let page = b.get("/login").await;
        let csrf = if page.status == 200 {
            page.csrf()
        } else {
            String::new()
        };
        let mut form = vec![
            ("csrf_token", csrf.as_str()),
            ("email", email),
            ("password", password),
        ];
        form.extend_from_slice(extra);
        b.post_form("/login", &form).await
    }

    /// A browser signed in as a new account `email` (registration signs in at once).
    pub async fn signed_in(&self, email: &str) -> Browser {
        let b = self.browser();
        let r = self.register(&b, email, PASSWORD).await;
        assert_eq!(r.status, 303, "{}", r.body);
        b
    }

    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
            .fetch_one(&self.db)
            .await
            .expect(sql)
    }

    /// Waits (up to 10 s) until `sql` counts `expected`; panics with the last count.
    pub async fn wait_until(&self, sql: &str, expected: i64) {
        let mut last = -1;
        for _ in 0..200 {
            last = self.count(sql).await;
            if last == expected {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{sql}: still {last}, not {expected}, after 10 s");
    }

    /// Waits (up to 10 s) until a metric reaches `at_least`, and returns it: counters
    /// are bumped after the work they count has committed.
    pub async fn wait_for_metric(&self, needle: &str, at_least: f64) -> f64 {
        let mut last = 0.0;
        for _ in 0..200 {
            last = self.metric(needle).await;
            if last >= at_least {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        last
    }

    pub async fn metrics_text(&self) -> String {
        self.browser().get("/metrics").await.body
    }

    pub async fn metric(&self, needle: &str) -> f64 {
        let text = self.browser().get("/metrics").await.body;
        text.lines()
            .filter(|l| l.starts_with(needle))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

/// A TCP proxy in front of PostgreSQL that a test can cut and restore, to play a
/// database outage without touching the server other tests share.
pub struct DbProxy {
    pub url: String,
    up: Arc<AtomicBool>,
    /// Added to every message the server sends to PostgreSQL (one round trip each).
    latency_ms: Arc<std::sync::atomic::AtomicU64>,
    /// Bytes in both directions are held (connections stay open, nothing arrives):
    /// a network that silently stopped.
    stalled: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl DbProxy {
    async fn start(db_url: &str) -> Self {
        let target = url::Url::parse(db_url).unwrap();
        let target_addr = format!(
            "{}:{}",
            target.host_str().unwrap_or("127.0.0.1"),
            target.port().unwrap_or(5432)
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut url = target.clone();
        url.set_host(Some("127.0.0.1")).unwrap();
        url.set_port(Some(port)).unwrap();
        let up = Arc::new(AtomicBool::new(true));
        let latency_ms: Arc<std::sync::atomic::AtomicU64> = Arc::default();
        let connections: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let stalled: Arc<AtomicBool> = Arc::default();
        let (up2, conns2, latency2) = (up.clone(), connections.clone(), latency_ms.clone());
        let stalled2 = stalled.clone();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let target_addr = target_addr.clone();
                let latency = latency2.clone();
                let (stall_up, stall_down) = (stalled2.clone(), stalled2.clone());
                let task = tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let Ok(outbound) = TcpStream::connect(&target_addr).await else {
                        return;
                    };
                    let (mut from_app, mut to_app) = inbound.into_split();
                    let (mut from_db, mut to_db) = outbound.into_split();
                    // Towards the database each chunk waits `latency` first.
                    let up = async move {
                        let mut buf = vec![0u8; 16 * 1024];
                        while let Ok(n) = from_app.read(&mut buf).await {
                            if n == 0 {
                                break;
                            }
                            let ms = latency.load(Ordering::SeqCst);
                            if ms > 0 {
                                tokio::time::sleep(Duration::from_millis(ms)).await;
                            }
                            while stall_up.load(Ordering::SeqCst) {
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                            if to_db.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    };
                    // Towards the server, held while stalled.
                    let down = async move {
                        let mut buf = vec![0u8; 16 * 1024];
                        while let Ok(n) = from_db.read(&mut buf).await {
                            if n == 0 {
                                break;
                            }
                            while stall_down.load(Ordering::SeqCst) {
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                            if to_app.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    };
                    tokio::join!(up, down);
                });
                conns2.lock().unwrap().push(task.abort_handle());
            }
        });
        Self {
            url: url.to_string(),
            up,
            latency_ms,
            stalled,
            connections,
        }
    }

    /// Every round trip to the database takes `ms` longer from now on.
    pub fn set_latency(&self, ms: u64) {
        self.latency_ms.store(ms, Ordering::SeqCst);
    }

    /// Nothing gets through either way until `unstall`, but no connection closes.
    pub fn stall(&self) {
        self.stalled.store(true, Ordering::SeqCst);
    }

    pub fn unstall(&self) {
        self.stalled.store(false, Ordering::SeqCst);
    }

    /// The database "goes away": open connections die, new ones are refused.
    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        for c in self.connections.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

/// One message as the SMTP server received it.
#[derive(Clone, Debug)]
pub struct Received {
    pub to: Vec<String>,
    pub data: String,
}

impl Received {
    /// The message with quoted-printable soft line breaks and `=3D` undone.
    pub fn text(&self) -> String {
        self.data.replace("=\r\n", "").replace("=3D", "=")
    }

    /// The token of the first `{PUBLIC_URL}{path}?token=` link in the message.
    pub fn token(&self, path: &str) -> String {
        let text = self.text();
        let marker = format!("{PUBLIC_URL}{path}?token=");
        let start = text
            .find(&marker)
            .unwrap_or_else(|| panic!("no {marker} link in {text}"))
            + marker.len();
        text[start..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
            .collect()
    }

    pub fn subject(&self) -> String {
        self.data
            .lines()
            .find_map(|l| l.strip_prefix("Subject: "))
            .unwrap_or_default()
            .to_string()
    }
}

/// A real SMTP server in the test process (just enough of RFC 5321 for a client
/// like lettre), which a test can take down (`421`) and bring back.
pub struct MailSink {
    pub port: u16,
    up: Arc<AtomicBool>,
    messages: Arc<Mutex<Vec<Received>>>,
}

impl MailSink {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let messages: Arc<Mutex<Vec<Received>>> = Arc::default();
        let (up2, messages2) = (up.clone(), messages.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve_smtp(stream, up2.clone(), messages2.clone()));
            }
        });
        Self { port, up, messages }
    }

    /// New sessions and new messages are refused with 421 (try again later).
    pub fn stop(&self) {
        self.up.store(false, Ordering::SeqCst);
    }

    pub fn resume(&self) {
        self.up.store(true, Ordering::SeqCst);
    }

    pub fn messages(&self) -> Vec<Received> {
        self.messages.lock().unwrap().clone()
    }

    pub fn to(&self, address: &str) -> Vec<Received> {
        self.messages()
            .into_iter()
            .filter(|m| m.to.iter().any(|t| t == address))
            .collect()
    }

    /// Waits (up to 10 s) for a message to `address` whose subject is `subject`.
    pub async fn wait_for_subject(&self, address: &str, subject: &str) -> Received {
        for _ in 0..100 {
            if let Some(m) = self
                .to(address)
                .into_iter()
                .find(|m| m.subject() == subject)
            {
                return m;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "{address} did not receive {subject:?}: {:?}",
            self.to(address)
                .iter()
                .map(Received::subject)
                .collect::<Vec<_>>()
        );
    }

    /// Waits (up to 10 s) until `address` has received `count` messages.
    pub async fn wait_for(&self, address: &str, count: usize) -> Vec<Received> {
        for _ in 0..100 {
            let got = self.to(address);
            if got.len() >= count {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "{address} did not receive {count} messages: {:?}",
            self.to(address)
        );
    }
}

async fn serve_smtp(stream: TcpStream, up: Arc<AtomicBool>, messages: Arc<Mutex<Vec<Received>>>) {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    let down = |up: &AtomicBool| !up.load(Ordering::SeqCst);
    if down(&up) {
        let _ = write.write_all(b"421 sink down, try later\r\n").await;
        return;
    }
    if write.write_all(b"220 sink ESMTP\r\n").await.is_err() {
        return;
    }
    let mut to = Vec::new();
    while let Ok(Some(line)) = lines.next_line().await {
        let upper = line.to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO") {
            b"250-sink\r\n250 8BITMIME\r\n"
        } else if upper.starts_with("MAIL FROM") {
            if down(&up) {
                let _ = write.write_all(b"421 sink down, try later\r\n").await;
                return;
            }
            to.clear();
            b"250 ok\r\n"
        } else if upper.starts_with("RCPT TO:") {
            let addr = line[8..]
                .trim()
                .trim_start_matches('<')
                .trim_end_matches('>')
                .to_string();
            to.push(addr);
            b"250 ok\r\n"
        } else if upper.starts_with("DATA") {
            if write.write_all(b"354 go ahead\r\n").await.is_err() {
                return;
            }
            let mut data = String::new();
            while let Ok(Some(l)) = lines.next_line().await {
                if l == "." {
                    break;
                }
                data.push_str(
                    l.strip_prefix('.')
                        .filter(|_| l.starts_with(".."))
                        .unwrap_or(&l),
                );
                data.push_str("\r\n");
            }
            messages.lock().unwrap().push(Received {
                to: std::mem::take(&mut to),
                data,
            });
            b"250 queued\r\n"
        } else if upper.starts_with("QUIT") {
            let _ = write.write_all(b"221 bye\r\n").await;
            return;
        } else {
            b"250 ok\r\n"
        };
        if write.write_all(reply).await.is_err() {
            return;
        }
    }
}
