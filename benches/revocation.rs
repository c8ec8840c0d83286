//! Introspection on the hot path, and how fast a revocation reaches another node.
//!
//! `cargo bench --bench revocation` (needs PostgreSQL like the tests, and `pgbench`).
//! In one run:
//! 1. the limit: `pgbench -S -c 8 -j 2 -M prepared` on the same PostgreSQL;
//! 2. two real nodes (`gatehouse serve`, release build, production settings) on one
//!    database; 10,000 live sessions, each with an access token minted through
//!    `/oauth2/authorize` and `/oauth2/token` (the exchange rate is reported);
//! 3. 64 connections introspecting those tokens at node A with Zipf-like reuse
//!    (rank r drawn with weight 1/r), reporting answers/s, p50/p99 and the share of
//!    answers that read PostgreSQL (node A's `liveness_lookups_total`);
//! 4. the same while one device per second is revoked through node B's device page,
//!    each time measuring from the moment node B answered the revocation to the first
//!    `active: false` from node A for that token (polled back to back);
//! 5. refresh-token rotation at `/oauth2/token`.
//!
//! Sessions are cloned in SQL from real sign-ins (the password hash would otherwise
//! make setting up 10,000 sessions take minutes); everything measured goes through
//! HTTP. Figures are printed, never asserted. Knobs: BENCH_SECONDS (per phase,
//! default 10), BENCH_SESSIONS (default 10000), GATEHOUSE_TEST_DATABASE_URL.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::Digest;
use sqlx::Connection;
use tokio::sync::Mutex;

use common::{CONNECTIONS, create_user, phase, rss_kib, sign_in, start_server};

const REDIRECT: &str = "https://rp.bench/cb";
const USERS: usize = 10;

/// `pgbench -S -c 8 -j 2 -M prepared`: PostgreSQL's own indexed-read rate here.
fn pgbench_bound(db_url: &url::Url, seconds: u64) -> Option<f64> {
    let mut init = std::process::Command::new("pgbench");
    init.args(["-i", "-q", "-s", "1", db_url.as_str()]);
    if !init.output().ok()?.status.success() {
        return None;
    }
    let out = std::process::Command::new("pgbench")
        .args(["-S", "-n", "-c", "8", "-j", "2", "-M", "prepared", "-T"])
        .arg(seconds.to_string())
        .arg(db_url.as_str())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l["tps = ".len()..].split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// xorshift64*: the bench's own random numbers (no dependency for a benchmark).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Cumulative weights of ranks 1..=n with weight 1/r.
fn zipf_cdf(n: usize) -> Vec<f64> {
    let mut acc = 0.0;
    let mut cdf: Vec<f64> = (1..=n)
        .map(|r| {
            acc += 1.0 / r as f64;
            acc
        })
        .collect();
    for c in &mut cdf {
        *c /= acc;
    }
    cdf
}

fn draw(cdf: &[f64], rng: &mut Rng) -> usize {
    let u = rng.unit();
    cdf.partition_point(|c| *c < u).min(cdf.len() - 1)
}

/// Node A's liveness counters: (hit, miss, bypass).
async fn lookups(http: &reqwest::Client, base: &str) -> [f64; 3] {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let get = |source: &str| {
        let needle = format!("gatehouse_liveness_lookups_total{{source=\"{source}\"}}");
        text.lines()
            .find(|l| l.starts_with(&needle))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0)
    };
    [get("hit"), get("miss"), get("bypass")]
}

/// The share of answers that read PostgreSQL, and the hit/miss/bypass counts.
fn db_share(before: [f64; 3], after: [f64; 3]) -> String {
    let d: Vec<f64> = before.iter().zip(after).map(|(b, a)| a - b).collect();
    let total = d[0] + d[1] + d[2];
    let share = if total == 0.0 {
        0.0
    } else {
        100.0 * (d[1] + d[2]) / total
    };
    format!(
        "{share:.1} % ({:.0} hits, {:.0} misses, {:.0} bypassed)",
        d[0], d[1], d[2]
    )
}

struct Minted {
    access: String,
    refresh: String,
    sid: String,
    user: usize,
}

async fn introspect(
    http: &reqwest::Client,
    base: &str,
    client: &(String, String),
    token: &str,
) -> Option<bool> {
    let res = http
        .post(format!("{base}/oauth2/introspect"))
        .basic_auth(&client.0, Some(&client.1))
        .form(&[("token", token)])
        .send()
        .await
        .ok()?;
    if res.status() != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&res.bytes().await.ok()?).ok()?;
    Some(v["active"] == true)
}

/// wrk's figures: requests/s, p50 and p99 in ms, non-2xx answers.
struct Wrk {
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
}

/// Introspection of `tokens` (in this order, round robin per thread) by `wrk -t2
/// -c64 --latency`, or `None` without wrk.
fn wrk_phase(
    base: &str,
    client: &(String, String),
    tokens: &[String],
    seconds: u64,
) -> Option<Wrk> {
    let dir = std::env::temp_dir().join(format!("gatehouse-wrk-{}", std::process::id()));
    std::fs::create_dir_all(&dir).ok()?;
    let list = dir.join("tokens.txt");
    std::fs::write(&list, tokens.join("\n")).ok()?;
    let auth =
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", client.0, client.1));
    let script = dir.join("introspect.lua");
    std::fs::write(
        &script,
        format!(
            r#"local tokens = {{}}
for line in io.lines("{list}") do tokens[#tokens + 1] = line end
local i = 0
function setup(thread) thread:set("offset", math.random(#tokens)) end
function init(args) i = offset or 0 end
function request()
  i = i % #tokens + 1
  return wrk.format("POST", "/oauth2/introspect", {{
    ["Authorization"] = "Basic {auth}",
    ["Content-Type"] = "application/x-www-form-urlencoded",
  }}, "token=" .. tokens[i])
end
"#,
            list = list.display()
        ),
    )
    .ok()?;
    let out = std::process::Command::new("wrk")
        .args(["-t2", "-c64", "--latency", "-d"])
        .arg(format!("{seconds}s"))
        .arg("-s")
        .arg(&script)
        .arg(base)
        .output()
        .ok()?;
    let _ = std::fs::remove_dir_all(&dir);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let ms = |label: &str| -> Option<f64> {
        let v = text
            .lines()
            .find(|l| l.trim_start().starts_with(label))?
            .split_whitespace()
            .nth(1)?
            .to_string();
        if let Some(us) = v.strip_suffix("us") {
            us.parse::<f64>().ok().map(|x| x / 1000.0)
        } else if let Some(m) = v.strip_suffix("ms") {
            m.parse().ok()
        } else {
            v.strip_suffix('s')?.parse::<f64>().ok().map(|x| x * 1000.0)
        }
    };
    let errors = text
        .lines()
        .find(|l| l.contains("Non-2xx"))
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
        .unwrap_or(0);
    Some(Wrk {
        per_second: text
            .lines()
            .find(|l| l.starts_with("Requests/sec:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?,
        p50_ms: ms("50%")?,
        p99_ms: ms("99%")?,
        errors,
    })
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 - 1.0) * q) as usize)
        .copied()
        .unwrap_or(0.0)
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
    let sessions: usize = std::env::var("BENCH_SESSIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let (mut admin, name, db_url) = common::create_database().await;

    println!("pgbench -S -c 8 -M prepared, {seconds} s …");
    let pg_bound = pgbench_bound(&db_url, seconds);

    let key = URL_SAFE_NO_PAD.encode(gatehouse::crypto::random_bytes::<32>());
    for u in 0..USERS {
        create_user(db_url.as_str(), &key, &format!("bench{u}@example.com"));
    }
    let out = common::gatehouse(db_url.as_str(), &key)
        .args([
            "client",
            "create",
            "--name",
            "Bench",
            "--redirect-uri",
            REDIRECT,
        ])
        .arg("--first-party")
        .output()
        .unwrap();
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).expect("client create");
    let client = Arc::new((
        created["client_id"].as_str().unwrap().to_string(),
        created["client_secret"].as_str().unwrap().to_string(),
    ));
    let (port_a, port_b) = (common::free_port(), common::free_port());
    let node_a = start_server(db_url.as_str(), &key, port_a);
    let node_b = start_server(db_url.as_str(), &key, port_b);
    let pid = node_a.id();
    let (base_a, base_b) = (
        format!("http://127.0.0.1:{port_a}"),
        format!("http://127.0.0.1:{port_b}"),
    );
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(256)
        .build()
        .unwrap();
    common::wait_ready(&http, &base_a).await;
    common::wait_ready(&http, &base_b).await;

    // One real sign-in per user (it also signs that user in on node B later: the
    // revoker), then `sessions` clones of those sessions, each with its own cookie.
    let mut revokers = Vec::new();
    let mut templates = Vec::new();
    let mut db = sqlx::PgConnection::connect(db_url.as_str()).await.unwrap();
    for u in 0..USERS {
        let email = format!("bench{u}@example.com");
        templates.push(sign_in(&http, &base_a, &email).await);
        revokers.push(sign_in(&http, &base_b, &email).await);
    }
    let mut cookies = Vec::with_capacity(sessions);
    for i in 0..sessions {
        let u = i % USERS;
        let template = templates[u].split_once('=').unwrap().1;
        let token = gatehouse::crypto::random_token();
        sqlx::query(
            "INSERT INTO sessions (id, token_hash, user_id, device_id, created_at, last_seen_at,
                 idle_timeout_secs, idle_expires_at, absolute_expires_at, remember_me, auth_time,
                 aal, aal_reached_at, amr, ip_enc, user_agent_enc, location_enc, ip_mac, country_mac)
             SELECT gen_random_uuid(), $1, user_id, device_id, created_at, last_seen_at,
                 idle_timeout_secs, idle_expires_at, absolute_expires_at, remember_me, auth_time,
                 aal, aal_reached_at, amr, ip_enc, user_agent_enc, location_enc, ip_mac, country_mac
             FROM sessions WHERE token_hash = $2",
        )
        .bind(gatehouse::crypto::token_hash(&token))
        .bind(gatehouse::crypto::token_hash(template))
        .execute(&mut db)
        .await
        .unwrap();
        cookies.push((format!("__Host-gatehouse_session={token}"), u));
    }

    // Codes through /oauth2/authorize, then exchanged: the exchange is measured.
    let verifier = URL_SAFE_NO_PAD.encode(gatehouse::crypto::random_bytes::<32>());
    let challenge = URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()));
    let authorize = format!(
        "{base_a}/oauth2/authorize?response_type=code&client_id={}&redirect_uri={}&scope=openid+email&state=s&code_challenge={challenge}&code_challenge_method=S256",
        client.0,
        url::form_urlencoded::byte_serialize(REDIRECT.as_bytes()).collect::<String>()
    );
    println!("minting {sessions} codes …");
    let pending = Arc::new(Mutex::new(cookies));
    let codes = Arc::new(Mutex::new(Vec::<(String, usize)>::new()));
    let minted = phase("authorize (mint codes)", pid, 600, {
        let (http, pending, codes, authorize) = (
            http.clone(),
            pending.clone(),
            codes.clone(),
            authorize.clone(),
        );
        move || {
            let (http, pending, codes, authorize) = (
                http.clone(),
                pending.clone(),
                codes.clone(),
                authorize.clone(),
            );
            async move {
                let (cookie, user) = pending.lock().await.pop()?;
                let res = http
                    .get(&authorize)
                    .header("cookie", &cookie)
                    .send()
                    .await
                    .ok()?;
                let code = res
                    .headers()
                    .get("location")
                    .and_then(|l| l.to_str().ok())
                    .and_then(|l| url::Url::parse(l).ok())
                    .and_then(|u| {
                        u.query_pairs()
                            .find(|(k, _)| k == "code")
                            .map(|(_, v)| v.into_owned())
                    })?;
                codes.lock().await.push((code, user));
                Some(true)
            }
        }
    })
    .await;
    println!("exchanging them at /oauth2/token …");
    let tokens = Arc::new(Mutex::new(Vec::<Minted>::new()));
    let exchanged = phase("token (code exchange)", pid, 600, {
        let (http, codes, tokens, base, client, verifier) = (
            http.clone(),
            codes.clone(),
            tokens.clone(),
            base_a.clone(),
            client.clone(),
            verifier.clone(),
        );
        move || {
            let (http, codes, tokens, base, client, verifier) = (
                http.clone(),
                codes.clone(),
                tokens.clone(),
                base.clone(),
                client.clone(),
                verifier.clone(),
            );
            async move {
                let (code, user) = codes.lock().await.pop()?;
                let res = http
                    .post(format!("{base}/oauth2/token"))
                    .basic_auth(&client.0, Some(&client.1))
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
                let access = body["access_token"].as_str()?.to_string();
                let claims = access.split('.').nth(1)?;
                let claims: serde_json::Value =
                    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).ok()?).ok()?;
                tokens.lock().await.push(Minted {
                    refresh: body["refresh_token"].as_str()?.to_string(),
                    sid: claims["sid"].as_str()?.to_string(),
                    access,
                    user,
                });
                Some(true)
            }
        }
    })
    .await;
    let tokens: Arc<Vec<Minted>> = Arc::new(std::mem::take(&mut *tokens.lock().await));
    println!("{} live sessions with tokens", tokens.len());
    let cdf = Arc::new(zipf_cdf(tokens.len()));
    let idle_rss = rss_kib(pid) as f64 / 1024.0;

    let load = {
        let (http, base, client, tokens, cdf) = (
            http.clone(),
            base_a.clone(),
            client.clone(),
            tokens.clone(),
            cdf.clone(),
        );
        let seed = Arc::new(AtomicUsize::new(1));
        move || {
            let (http, base, client, tokens, cdf) = (
                http.clone(),
                base.clone(),
                client.clone(),
                tokens.clone(),
                cdf.clone(),
            );
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ seed.fetch_add(1, Ordering::Relaxed) as u64);
            async move {
                let t = &tokens[draw(&cdf, &mut rng)];
                // An answer, active or not (some tokens get revoked in phase 4).
                Some(introspect(&http, &base, &client, &t.access).await.is_some())
            }
        }
    };
    println!("introspecting at node A with {CONNECTIONS} connections for {seconds} s …");
    let before = lookups(&http, &base_a).await;
    let quiet = phase("introspect (Zipf)", pid, seconds, load.clone()).await;
    let quiet_share = db_share(before, lookups(&http, &base_a).await);

    // The same load from wrk (C, far lighter than this process's own client) when it
    // is installed: the server then gets the CPU the load generator above takes.
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    // 20,000 draws (each token is ~850 bytes), replayed in a loop.
    let sample: Vec<String> = (0..20_000)
        .map(|_| tokens[draw(&cdf, &mut rng)].access.clone())
        .collect();
    let before = lookups(&http, &base_a).await;
    let light = wrk_phase(&base_a, &client, &sample, seconds);
    let light_share = db_share(before, lookups(&http, &base_a).await);

    // Phase 4: the same load, plus one revocation per second on node B. The most
    // popular tokens go first: they are certainly in node A's cache.
    let delays = Arc::new(Mutex::new(Vec::<f64>::new()));
    let revoker = {
        let (http, base_a, base_b, client, tokens, delays) = (
            http.clone(),
            base_a.clone(),
            base_b.clone(),
            client.clone(),
            tokens.clone(),
            delays.clone(),
        );
        let revokers = revokers.clone();
        tokio::spawn(async move {
            let end = Instant::now() + Duration::from_secs(seconds);
            let mut rank = 0;
            while Instant::now() < end {
                let tick = Instant::now();
                let t = &tokens[rank];
                rank += 1;
                let cookie = &revokers[t.user];
                // Any signed-in page carries the session's CSRF token; /account is
                // light (the device page of a user with 1,000 sessions is not).
                let page = http
                    .get(format!("{base_b}/account"))
                    .header("cookie", cookie)
                    .send()
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap();
                let marker = r#"name="csrf_token" value=""#;
                let start = page.find(marker).unwrap() + marker.len();
                let csrf = &page[start..start + page[start..].find('"').unwrap()];
                let res = http
                    .post(format!("{base_b}/account/devices/{}/revoke", t.sid))
                    .header("cookie", cookie)
                    .form(&[("csrf_token", csrf)])
                    .send()
                    .await
                    .unwrap();
                assert_eq!(res.status(), 303, "revoking on node B");
                let revoked = Instant::now();
                while introspect(&http, &base_a, &client, &t.access).await != Some(false) {}
                delays
                    .lock()
                    .await
                    .push(revoked.elapsed().as_secs_f64() * 1000.0);
                tokio::time::sleep(Duration::from_secs(1).saturating_sub(tick.elapsed())).await;
            }
        })
    };
    println!("the same, revoking one device per second on node B …");
    let before = lookups(&http, &base_a).await;
    let busy = phase("introspect while revoking 1/s", pid, seconds, load).await;
    let busy_share = db_share(before, lookups(&http, &base_a).await);
    revoker.await.unwrap();
    let mut delays = delays.lock().await.clone();
    delays.sort_by(f64::total_cmp);

    // Phase 5: refresh-token rotation, on the sessions phase 4 left alone.
    let refreshable: Vec<String> = tokens[100..].iter().map(|t| t.refresh.clone()).collect();
    let refreshable = Arc::new(Mutex::new(refreshable));
    println!("rotating refresh tokens with {CONNECTIONS} connections for {seconds} s …");
    let refreshed = phase("token (refresh rotation)", pid, seconds, {
        let (http, base, client, refreshable) = (
            http.clone(),
            base_a.clone(),
            client.clone(),
            refreshable.clone(),
        );
        move || {
            let (http, base, client, refreshable) = (
                http.clone(),
                base.clone(),
                client.clone(),
                refreshable.clone(),
            );
            async move {
                let token = refreshable.lock().await.pop()?;
                let res = http
                    .post(format!("{base}/oauth2/token"))
                    .basic_auth(&client.0, Some(&client.1))
                    .form(&[("grant_type", "refresh_token"), ("refresh_token", &token)])
                    .send()
                    .await
                    .ok()?;
                if res.status() != 200 {
                    return Some(false);
                }
                let body: serde_json::Value =
                    serde_json::from_slice(&res.bytes().await.ok()?).ok()?;
                let next = body["refresh_token"].as_str()?.to_string();
                refreshable.lock().await.insert(0, next);
                Some(true)
            }
        }
    })
    .await;

    common::stop(node_a);
    common::stop(node_b);
    drop(db);
    common::drop_database(&mut admin, &name).await;

    println!();
    println!("| phase | per second | p50 ms | p99 ms | errors | peak RSS MiB (node A) |");
    println!("|---|---:|---:|---:|---:|---:|");
    for p in [&minted, &exchanged, &quiet, &busy, &refreshed] {
        println!(
            "| {} | {:.0} | {:.1} | {:.1} | {} | {:.1} |",
            p.name, p.per_second, p.p50_ms, p.p99_ms, p.errors, p.peak_rss_mib
        );
    }
    match &light {
        Some(w) => println!(
            "| introspect (Zipf, wrk -t2 -c64) | {:.0} | {:.1} | {:.1} | {} | — |",
            w.per_second, w.p50_ms, w.p99_ms, w.errors
        ),
        None => println!("(wrk is not installed: no light-client phase)"),
    }
    println!();
    println!(
        "answers that read PostgreSQL: quiet {quiet_share}; revoking 1/s {busy_share}; wrk {light_share}"
    );
    println!(
        "revocation on node B → active:false on node A ({} revocations): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        delays.len(),
        percentile(&delays, 0.5),
        percentile(&delays, 0.99),
        delays.last().copied().unwrap_or(0.0)
    );
    match pg_bound {
        Some(tps) => println!(
            "pgbench -S -c 8 -M prepared: {tps:.0} tps; introspection reached {:.0} % of it ({:.0} % while revoking, {:.0} % from wrk)",
            100.0 * quiet.per_second / tps,
            100.0 * busy.per_second / tps,
            100.0 * light.as_ref().map_or(0.0, |w| w.per_second) / tps
        ),
        None => println!("pgbench was not available: no PostgreSQL bound"),
    }
    println!(
        "node A RSS with {} sessions' tokens: {idle_rss:.1} MiB",
        tokens.len()
    );
}
