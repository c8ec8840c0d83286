//! Sign-in throughput and memory under concurrency.
//!
//! `cargo bench --bench signin` (needs PostgreSQL like the tests). It measures:
//! 1. the argon2 bound: password verifications per second with production cost
//!    (m=19456 KiB, t=2, p=1) on every core, with nothing else running;
//! 2. the real server (`gatehouse serve`, release build, production settings) under
//!    each number of concurrent clients in BENCH_CLIENTS (default `8,64`; the overload
//!    run uses `64,256,1000`), each signing one of 64 accounts in over and over through
//!    the sign-in form (CSRF, throttle bookkeeping, argon2, session insert); answers
//!    beyond the server's bounds are 503 with `Retry-After`, counted apart;
//! 3. the server's resident memory during each phase.
//!
//! Figures are printed, never asserted: targets are judged by people, not by a timed
//! test. Knobs: BENCH_SECONDS (per phase, default 15), BENCH_CLIENTS,
//! GATEHOUSE_TEST_DATABASE_URL.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine;

mod common;

use common::{PASSWORD, create_user, rss_kib, start_server};

fn argon2_bound(seconds: u64) -> f64 {
    let params = Params::new(19_456, 2, 1, None).unwrap();
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    let hash = argon
        .hash_password(PASSWORD.as_bytes())
        .unwrap()
        .to_string();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let threads: Vec<_> = (0..cores)
        .map(|_| {
            let (done, hash, params) = (done.clone(), hash.clone(), params.clone());
            std::thread::spawn(move || {
                // The crate's own PHC verification once (a sanity check), then the
                // fastest form of the same work: one reused memory area per thread.
                let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
                argon
                    .verify_password(PASSWORD.as_bytes(), hash.as_str())
                    .unwrap();
                let mut memory = vec![argon2::Block::default(); params.block_count()];
                let mut out = [0u8; 32];
                while started.elapsed() < Duration::from_secs(seconds) {
                    argon
                        .hash_password_into_with_memory(
                            PASSWORD.as_bytes(),
                            b"benchmark-salt",
                            &mut out,
                            &mut memory[..],
                        )
                        .unwrap();
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

struct Client {
    http: reqwest::Client,
    base: String,
    cookie: String,
    csrf: String,
    email: String,
}

fn csrf_of(body: &str) -> String {
    let marker = r#"name="csrf_token" value=""#;
    let start = body.find(marker).unwrap() + marker.len();
    body[start..start + body[start..].find('"').unwrap()].to_string()
}

fn presession(res: &reqwest::Response) -> String {
    res.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with("__Host-gatehouse_presession="))
        .and_then(|v| v.split(';').next())
        .unwrap()
        .to_string()
}

impl Client {
    async fn new(http: &reqwest::Client, base: &str, email: String) -> Self {
        let res = http.get(format!("{base}/login")).send().await.unwrap();
        let cookie = presession(&res);
        let csrf = csrf_of(&res.text().await.unwrap());
        Self {
            http: http.clone(),
            base: base.to_string(),
            cookie,
            csrf,
            email,
        }
    }

    async fn post(&self, path: &str) -> u16 {
        self.http
            .post(format!("{}{path}", self.base))
            .header("cookie", &self.cookie)
            .form(&[
                ("csrf_token", self.csrf.as_str()),
                ("email", &self.email),
                ("password", PASSWORD),
            ])
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    }
}

struct Phase {
    clients: usize,
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    /// 503 answers (the in-flight or argon2 bound): refused fast, by design.
    refused: u64,
    errors: u64,
    peak_rss_mib: f64,
}

async fn phase(
    http: &reqwest::Client,
    base: &str,
    pid: u32,
    clients: usize,
    seconds: u64,
) -> Phase {
    let mut set = Vec::new();
    for i in 0..clients {
        set.push(Client::new(http, base, format!("bench{}@example.com", i % 64)).await);
    }
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let errors = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
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
    let tasks: Vec<_> = set
        .into_iter()
        .map(|c| {
            let (errors, refused) = (errors.clone(), refused.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    match c.post("/login").await {
                        303 => latencies.push(t.elapsed().as_secs_f64() * 1000.0),
                        503 => {
                            refused.fetch_add(1, Ordering::Relaxed);
                            // As a client honouring `Retry-After: 1` would.
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                        _ => {
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
    sampler.await.unwrap();
    all.sort_by(f64::total_cmp);
    let pick = |q: f64| {
        all.get(((all.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or(0.0)
    };
    Phase {
        clients,
        per_second: all.len() as f64 / elapsed,
        p50_ms: pick(0.5),
        p99_ms: pick(0.99),
        refused: refused.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        peak_rss_mib: peak.load(Ordering::Relaxed) as f64 / 1024.0,
    }
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` and friends
    }
    common::install_tls_provider();
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());

    println!("argon2id bound: measuring for {seconds} s on {cores} cores …");
    let bound = argon2_bound(seconds);
    println!("argon2id bound: {bound:.1} verifications/s");

    let (mut admin, name, db_url) = common::create_database().await;
    let port = common::free_port();
    let key =
        base64::engine::general_purpose::STANDARD.encode(gatehouse::crypto::random_bytes::<32>());
    println!("creating 64 accounts …");
    for i in 0..64 {
        create_user(db_url.as_str(), &key, &format!("bench{i}@example.com"));
    }
    let server = start_server(db_url.as_str(), &key, port);
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(1024)
        .build()
        .unwrap();
    common::wait_ready(&http, &base).await;
    let idle_rss = rss_kib(server.id()) as f64 / 1024.0;

    let counts: Vec<usize> = std::env::var("BENCH_CLIENTS")
        .unwrap_or_else(|_| "8,64".into())
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    let mut phases = Vec::new();
    for clients in counts {
        println!("signing in with {clients} concurrent clients for {seconds} s …");
        phases.push(phase(&http, &base, server.id(), clients, seconds).await);
    }
    println!("argon2id bound again, after the server phases …");
    let bound_after = argon2_bound(seconds);
    // The machine's speed drifts; judge against the better of the two measurements.
    let bound_before = bound;
    let bound = bound_before.max(bound_after);
    common::stop(server);
    common::drop_database(&mut admin, &name).await;

    println!();
    println!(
        "| clients | sign-ins/s | % of argon2 bound | p50 ms | p99 ms | 503s | other errors | peak RSS MiB |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for p in &phases {
        println!(
            "| {} | {:.1} | {:.0} % | {:.0} | {:.0} | {} | {} | {:.1} |",
            p.clients,
            p.per_second,
            100.0 * p.per_second / bound,
            p.p50_ms,
            p.p99_ms,
            p.refused,
            p.errors,
            p.peak_rss_mib
        );
    }
    println!();
    println!(
        "argon2id bound ({cores} cores, m=19456 KiB t=2 p=1): {bound_before:.1}/s before, {bound_after:.1}/s after (percentages use the higher); server RSS after start-up: {idle_rss:.1} MiB"
    );
}
