//! `scripts/dev-server` on a machine where no PostgreSQL answers: it starts a private
//! cluster, the server works, a second start reuses the cluster (accounts survive),
//! and stopping the script stops both.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::helpers::{Browser, PASSWORD};

/// A loopback port where nothing listens (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port()
}

fn answers(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(300),
    )
    .is_ok()
}

fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status();
}

/// The temporary directory of the private cluster; whatever happens, no PostgreSQL
/// of it is left running and the directory goes.
struct Scratch(PathBuf);

impl Scratch {
    fn pg_dir(&self) -> PathBuf {
        self.0.join("pg")
    }
    fn postmaster_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.pg_dir().join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(pid) = self.postmaster_pid() {
            signal(pid, "TERM");
            std::thread::sleep(Duration::from_secs(2));
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One run of the script, stopped (TERM, then KILL) if the test fails meanwhile.
struct DevServer {
    child: Child,
    log: PathBuf,
}

impl DevServer {
    fn start(scratch: &Scratch, pg_port: u16, port: u16, run: &str) -> Self {
        let log = scratch.0.join(format!("{run}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/dev-server"))
            .env_remove("GATEHOUSE_DATABASE_URL")
            .env("GATEHOUSE_PG_PORT", pg_port.to_string())
            .env("GATEHOUSE_PRIVATE_PG_DIR", scratch.pg_dir())
            .env("GATEHOUSE_BIN", env!("CARGO_BIN_EXE_gatehouse"))
            .env("GATEHOUSE_BIND", format!("127.0.0.1:{port}"))
            .env("GATEHOUSE_PUBLIC_URL", format!("http://127.0.0.1:{port}"))
            .env("GATEHOUSE_LOG_FORMAT", "json")
            // Passes through to the server: the account signs in without mail.
            .env("GATEHOUSE_REQUIRE_VERIFIED_EMAIL", "false")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        Self { child, log }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (bounded) for `/readyz` to answer 200.
    async fn ready(&mut self, base: &str, within: Duration) -> Duration {
        let started = Instant::now();
        let http = reqwest::Client::new();
        while started.elapsed() < within {
            if let Ok(r) = http.get(format!("{base}/readyz")).send().await
                && r.status() == 200
            {
                return started.elapsed();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the script ended ({status}):\n{}", self.output());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("not ready within {within:?}:\n{}", self.output());
    }

    /// Sends `name` to the script and waits (bounded) for it to end.
    fn stop(&mut self, name: &str) {
        signal(self.child.id(), name);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(60) {
            if self.child.try_wait().unwrap().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the script did not stop on {name}:\n{}", self.output());
    }
}

impl Drop for DevServer {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            signal(self.child.id(), "TERM");
            std::thread::sleep(Duration::from_secs(3));
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The private cluster's port, as the script prints it.
fn cluster_port(output: &str) -> u16 {
    let tail = output
        .split("postgres://postgres@127.0.0.1:")
        .nth(1)
        .unwrap_or_else(|| panic!("no private cluster announced:\n{output}"));
    tail[..tail.find(|c: char| !c.is_ascii_digit()).unwrap()]
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_server_starts_a_private_postgres_reuses_it_and_stops_it() {
    // The process-wide TLS provider the server would install (no server runs here).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = std::env::temp_dir().join(format!("gatehouse-dev-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    // Under root the cluster runs as the postgres user, who must reach it.
    let _ = Command::new("chmod").arg("755").arg(&dir).status();
    let scratch = Scratch(dir);
    let pg_port = free_port();
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let email = "first-run@example.com";

    // First start: a new cluster.
    let mut run = DevServer::start(&scratch, pg_port, port, "first");
    let took = run.ready(&base, Duration::from_secs(120)).await;
    eprintln!("first start (initdb included) ready in {took:?}");
    let output = run.output();
    assert!(
        output.contains("creating a private PostgreSQL cluster"),
        "{output}"
    );
    assert!(output.contains(&format!("Gatehouse: {base}")), "{output}");
    assert!(output.contains("Mail: "), "{output}");
    let first_cluster = cluster_port(&output);
    let b = Browser::new(&base);
    let page = b.get("/register").await;
    assert_eq!(page.status, 200);
    let r = b
        .post_form(
            "/register",
            &[
                ("csrf_token", &page.csrf()),
                ("email", email),
                ("password", PASSWORD),
            ],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);

    run.stop("TERM");
    assert!(!answers(port), "the server still answers");
    assert!(!answers(first_cluster), "PostgreSQL still answers");
    assert_eq!(
        scratch.postmaster_pid(),
        None,
        "PostgreSQL is still running"
    );

    // Second start: the same cluster, the account still there.
    let mut run = DevServer::start(&scratch, pg_port, port, "second");
    let took = run.ready(&base, Duration::from_secs(60)).await;
    eprintln!("second start (cluster reused) ready in {took:?}");
    let output = run.output();
    assert!(
        !output.contains("creating a private PostgreSQL cluster"),
        "{output}"
    );
    let second_cluster = cluster_port(&output);
    let b = Browser::new(&base);
    let page = b.get("/login").await;
    assert_eq!(page.status, 200);
    let r = b
        .post_form(
            "/login",
            &[
                ("csrf_token", &page.csrf()),
                ("email", email),
                ("password", PASSWORD),
            ],
        )
        .await;
    assert_eq!(r.status, 303, "the account did not survive: {}", r.body);
    assert!(!r.location().starts_with("/login"), "{}", r.location());

    run.stop("INT");
    assert!(!answers(port), "the server still answers");
    assert!(!answers(second_cluster), "PostgreSQL still answers");
    assert_eq!(
        scratch.postmaster_pid(),
        None,
        "PostgreSQL is still running"
    );
}
