#![allow(dead_code)] // each benchmark uses a part of what they share
//! What the benchmarks share: the database, the `gatehouse` binary, the server's
//! memory.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Concurrent connections in a load phase.
pub const CONNECTIONS: usize = 64;

pub const PASSWORD: &str = "correct horse battery staple";

/// reqwest is built without a TLS provider of its own: use the one the server uses.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

pub fn base_url() -> String {
    std::env::var("GATEHOUSE_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

pub fn gatehouse(db_url: &str, key: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gatehouse"));
    c.env("GATEHOUSE_DATABASE_URL", db_url)
        .env("GATEHOUSE_SECRET_KEY", key)
        .env("GATEHOUSE_PUBLIC_URL", "https://gatehouse.bench")
        // No mail is sent in this benchmark; the outbox would keep it if it were.
        .env("GATEHOUSE_SMTP_URL", "smtp://127.0.0.1:25")
        .env("GATEHOUSE_REQUIRE_VERIFIED_EMAIL", "false")
        // Every client comes from 127.0.0.1, and attempts in flight count against the
        // address until they succeed: lift the per-address limit for the load test.
        .env("GATEHOUSE_IP_MAX_FAILURES", "100000")
        .env("GATEHOUSE_LOG_FORMAT", "json");
    c
}

pub fn create_user(db_url: &str, key: &str, email: &str) {
    let mut child = gatehouse(db_url, key)
        .args(["user", "create", "--email", email])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    std::io::Write::write_all(&mut stdin, PASSWORD.as_bytes()).unwrap();
    drop(stdin);
    assert!(child.wait().unwrap().success(), "creating {email}");
}

pub fn start_server(db_url: &str, key: &str, port: u16) -> Child {
    gatehouse(db_url, key)
        .arg("serve")
        .env("GATEHOUSE_BIND", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting gatehouse")
}

/// A fresh database for one run; dropped by `drop_database`.
pub async fn create_database() -> (sqlx::PgConnection, String, url::Url) {
    use sqlx::{Connection, Executor};
    let name = format!("gatehouse_bench_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(&base_url())
        .await
        .expect("PostgreSQL for the benchmark");
    admin
        .execute(sqlx::AssertSqlSafe(format!(r#"CREATE DATABASE "{name}""#)))
        .await
        .unwrap();
    let mut db_url = url::Url::parse(&base_url()).unwrap();
    db_url.set_path(&format!("/{name}"));
    (admin, name, db_url)
}

pub async fn drop_database(admin: &mut sqlx::PgConnection, name: &str) {
    use sqlx::Executor;
    admin
        .execute(sqlx::AssertSqlSafe(format!(
            r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#
        )))
        .await
        .ok();
}

/// A free port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until the server answers `/readyz`.
pub async fn wait_ready(http: &reqwest::Client, base: &str) {
    for _ in 0..200 {
        if http
            .get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the server did not become ready");
}

/// Stops the server as an operator would (SIGTERM) and waits for it.
pub fn stop(mut server: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status();
    let _ = server.wait();
}

/// Signs `email` in through the form and returns the session cookie.
pub async fn sign_in(http: &reqwest::Client, base: &str, email: &str) -> String {
    let res = http.get(format!("{base}/login")).send().await.unwrap();
    let pre = res
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("__Host-gatehouse_presession="))
        .and_then(|v| v.split(';').next())
        .unwrap()
        .to_string();
    let body = res.text().await.unwrap();
    let marker = r#"name="csrf_token" value=""#;
    let start = body.find(marker).unwrap() + marker.len();
    let csrf = &body[start..start + body[start..].find('"').unwrap()];
    let res = http
        .post(format!("{base}/login"))
        .header("cookie", pre)
        .form(&[
            ("csrf_token", csrf),
            ("email", email),
            ("password", PASSWORD),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303, "signing in");
    res.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("__Host-gatehouse_session="))
        .and_then(|v| v.split(';').next())
        .unwrap()
        .to_string()
}

pub struct Phase {
    pub name: &'static str,
    pub per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
    pub peak_rss_mib: f64,
}

/// Runs `work` on 64 tasks until `deadline` or until it returns `None` (nothing left).
pub async fn phase<F, Fut>(name: &'static str, pid: u32, seconds: u64, work: F) -> Phase
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Option<bool>> + Send,
{
    let work = Arc::new(work);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let errors = Arc::new(AtomicU64::new(0));
    let peak = Arc::new(AtomicU64::new(rss_kib(pid)));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            while Instant::now() < deadline {
                peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let started = Instant::now();
    let tasks: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let (work, errors) = (work.clone(), errors.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    match work().await {
                        None => break,
                        Some(true) => latencies.push(t.elapsed().as_secs_f64() * 1000.0),
                        Some(false) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    sampler.abort();
    all.sort_by(f64::total_cmp);
    let pick = |q: f64| {
        all.get(((all.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or(0.0)
    };
    Phase {
        name,
        per_second: all.len() as f64 / elapsed,
        p50_ms: pick(0.5),
        p99_ms: pick(0.99),
        errors: errors.load(Ordering::Relaxed),
        peak_rss_mib: peak.load(Ordering::Relaxed) as f64 / 1024.0,
    }
}
