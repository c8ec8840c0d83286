//! Token-endpoint and introspection throughput with 64 concurrent connections.
//!
//! `cargo bench --bench tokens` (needs PostgreSQL like the tests, and `pgbench`). It
//! measures, in one run:
//! 1. the limits: PostgreSQL's own indexed-read rate (`pgbench -S`, 64 clients) and
//!    RS256 signatures per second on every core (aws-lc-rs, the key parsed once);
//! 2. the real server (`gatehouse serve`, release build, production settings):
//!    codes are minted through `/oauth2/authorize` first, then 64 connections
//!    exchange them at `/oauth2/token` (each exchange: client authentication, one
//!    transaction that spends the code and writes the grant and two tokens, two
//!    RS256 signatures); then 64 connections introspect a live access token (client
//!    authentication, signature check, one indexed read);
//! 3. the server's resident memory.
//!
//! Figures are printed, never asserted. Knobs: BENCH_SECONDS (per phase, default 10),
//! GATEHOUSE_TEST_DATABASE_URL.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::Digest;
use tokio::sync::Mutex;

use common::{CONNECTIONS, create_user, phase, rss_kib, sign_in, start_server};

const REDIRECT: &str = "https://rp.bench/cb";

/// `pgbench -S` (primary-key SELECTs) with 64 clients: what this PostgreSQL on this
/// machine does at best for one indexed read per request.
fn pgbench_bound(db_url: &url::Url, seconds: u64) -> Option<f64> {
    let mut init = std::process::Command::new("pgbench");
    init.args(["-i", "-q", "-s", "1", db_url.as_str()]);
    if !init.output().ok()?.status.success() {
        return None;
    }
    let out = std::process::Command::new("pgbench")
        .args([
            "-S",
            "-n",
            "-c",
            "64",
            "-j",
            "2",
            "-T",
            &seconds.to_string(),
            db_url.as_str(),
        ])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l["tps = ".len()..].split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// RS256 signatures per second on every core, with the key parsed once.
fn sign_bound(seconds: u64) -> f64 {
    let key = gatehouse::signing::generate_key().unwrap();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let threads: Vec<_> = (0..cores)
        .map(|_| {
            let (done, pkcs8) = (done.clone(), key.pkcs8.clone());
            std::thread::spawn(move || {
                let pair = aws_lc_rs::signature::RsaKeyPair::from_pkcs8(&pkcs8).unwrap();
                let rng = aws_lc_rs::rand::SystemRandom::new();
                let mut sig = vec![0; pair.public_modulus_len()];
                while started.elapsed() < Duration::from_secs(seconds) {
                    pair.sign(
                        &aws_lc_rs::signature::RSA_PKCS1_SHA256,
                        &rng,
                        b"header.claims",
                        &mut sig,
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

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    common::install_tls_provider();
    let seconds: u64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (mut admin, name, db_url) = common::create_database().await;

    println!("pgbench -S, 64 clients, {seconds} s …");
    let pg_bound = pgbench_bound(&db_url, seconds);
    println!("RS256 signing bound on {cores} cores, {seconds} s …");
    let signs = sign_bound(seconds);

    let key = URL_SAFE_NO_PAD.encode(gatehouse::crypto::random_bytes::<32>());
    create_user(db_url.as_str(), &key, "bench@example.com");
    let out = common::gatehouse(db_url.as_str(), &key)
        .args([
            "client",
            "create",
            "--name",
            "Bench",
            "--redirect-uri",
            REDIRECT,
            "--first-party",
        ])
        .output()
        .unwrap();
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).expect("client create");
    let client_id = created["client_id"].as_str().unwrap().to_string();
    let secret = created["client_secret"].as_str().unwrap().to_string();
    let port = common::free_port();
    let server = start_server(db_url.as_str(), &key, port);
    let pid = server.id();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(256)
        .build()
        .unwrap();
    common::wait_ready(&http, &base).await;
    let idle_rss = rss_kib(pid) as f64 / 1024.0;
    let cookie = sign_in(&http, &base, "bench@example.com").await;

    // One verifier for every code: the bench measures the server, not the client.
    let verifier = URL_SAFE_NO_PAD.encode(gatehouse::crypto::random_bytes::<32>());
    let challenge = URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()));
    let authorize = format!(
        "{base}/oauth2/authorize?response_type=code&client_id={client_id}&redirect_uri={}&scope=openid+email&state=s&code_challenge={challenge}&code_challenge_method=S256",
        url::form_urlencoded::byte_serialize(REDIRECT.as_bytes()).collect::<String>()
    );
    let codes = Arc::new(Mutex::new(Vec::<String>::new()));
    let mint = {
        let (http, codes, authorize, cookie) = (
            http.clone(),
            codes.clone(),
            authorize.clone(),
            cookie.clone(),
        );
        move || {
            let (http, codes, authorize, cookie) = (
                http.clone(),
                codes.clone(),
                authorize.clone(),
                cookie.clone(),
            );
            async move {
                let Ok(res) = http.get(&authorize).header("cookie", &cookie).send().await else {
                    return Some(false);
                };
                let code = res
                    .headers()
                    .get("location")
                    .and_then(|l| l.to_str().ok())
                    .and_then(|l| url::Url::parse(l).ok())
                    .and_then(|u| {
                        u.query_pairs()
                            .find(|(k, _)| k == "code")
                            .map(|(_, v)| v.into_owned())
                    });
                match code {
                    Some(c) => {
                        codes.lock().await.push(c);
                        Some(true)
                    }
                    None => Some(false),
                }
            }
        }
    };
    println!("minting codes through /oauth2/authorize for {seconds} s …");
    let minted = phase("authorize (mint codes)", pid, seconds, mint).await;

    let access = Arc::new(Mutex::new(None::<String>));
    let exchange = {
        let (http, codes, base, client_id, secret, verifier, access) = (
            http.clone(),
            codes.clone(),
            base.clone(),
            client_id.clone(),
            secret.clone(),
            verifier.clone(),
            access.clone(),
        );
        move || {
            let (http, codes, base, client_id, secret, verifier, access) = (
                http.clone(),
                codes.clone(),
                base.clone(),
                client_id.clone(),
                secret.clone(),
                verifier.clone(),
                access.clone(),
            );
            async move {
                let code = codes.lock().await.pop()?;
                let res = http
                    .post(format!("{base}/oauth2/token"))
                    .basic_auth(&client_id, Some(&secret))
                    .form(&[
                        ("grant_type", "authorization_code"),
                        ("code", &code),
                        ("redirect_uri", REDIRECT),
                        ("code_verifier", &verifier),
                    ])
                    .send()
                    .await
                    .ok()?;
                if res.status() != 200 {
                    return Some(false);
                }
                let body: serde_json::Value =
                    serde_json::from_slice(&res.bytes().await.ok()?).ok()?;
                let mut slot = access.lock().await;
                if slot.is_none() {
                    *slot = body["access_token"].as_str().map(str::to_string);
                }
                Some(true)
            }
        }
    };
    let minted_count = codes.lock().await.len();
    println!("exchanging {minted_count} codes at /oauth2/token with {CONNECTIONS} connections …");
    let exchanged = phase("token (code exchange)", pid, seconds, exchange).await;

    let token = access.lock().await.clone().expect("an access token");
    let introspect = {
        let (http, base, client_id, secret, token) = (
            http.clone(),
            base.clone(),
            client_id.clone(),
            secret.clone(),
            token.clone(),
        );
        move || {
            let (http, base, client_id, secret, token) = (
                http.clone(),
                base.clone(),
                client_id.clone(),
                secret.clone(),
                token.clone(),
            );
            async move {
                let res = http
                    .post(format!("{base}/oauth2/introspect"))
                    .basic_auth(&client_id, Some(&secret))
                    .form(&[("token", token.as_str())])
                    .send()
                    .await
                    .ok()?;
                let ok = res.status() == 200
                    && serde_json::from_slice::<serde_json::Value>(&res.bytes().await.ok()?)
                        .is_ok_and(|v| v["active"] == true);
                Some(ok)
            }
        }
    };
    println!("introspecting with {CONNECTIONS} connections for {seconds} s …");
    let introspected = phase("introspect", pid, seconds, introspect).await;

    common::stop(server);
    common::drop_database(&mut admin, &name).await;

    println!();
    println!("| phase | per second | p50 ms | p99 ms | errors | peak RSS MiB |");
    println!("|---|---:|---:|---:|---:|---:|");
    for p in [&minted, &exchanged, &introspected] {
        println!(
            "| {} | {:.0} | {:.1} | {:.1} | {} | {:.1} |",
            p.name, p.per_second, p.p50_ms, p.p99_ms, p.errors, p.peak_rss_mib
        );
    }
    println!();
    match pg_bound {
        Some(tps) => println!(
            "pgbench -S (64 clients): {tps:.0} reads/s; introspection reached {:.0} % of it, code exchange {:.0} %",
            100.0 * introspected.per_second / tps,
            100.0 * exchanged.per_second / tps
        ),
        None => println!("pgbench was not available: no PostgreSQL bound"),
    }
    println!(
        "RS256 signing bound ({cores} cores): {signs:.0} signatures/s, i.e. {:.0} exchanges/s at two signatures each; code exchange reached {:.0} % of it",
        signs / 2.0,
        100.0 * exchanged.per_second / (signs / 2.0)
    );
    println!("server RSS after start-up: {idle_rss:.1} MiB; codes minted: {minted_count}");
}
