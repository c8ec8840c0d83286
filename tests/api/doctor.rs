//! `gatehouse doctor`: one line per check, the fix named, no secret printed, exit
//! status 0 only when every check passes.

use crate::helpers::{TestApp, drop_database, fresh_database, spawn_app};

/// Runs `gatehouse doctor` with the app's settings and `extra`; the test's SMTP sink
/// keeps answering on the other worker meanwhile.
fn doctor(app: &TestApp, extra: &[(&str, &str)]) -> (bool, String, String) {
    tokio::task::block_in_place(|| app.cli(&["doctor"], extra))
}

/// A loopback port where nothing listens (bound, then released).
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port()
}

fn failed_line<'a>(out: &'a str, check: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(&format!("FAIL {check}:")))
        .unwrap_or_else(|| panic!("no failed {check:?} line in:\n{out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_is_all_green_on_a_working_deployment() {
    let app = spawn_app().await;
    let (ok, out, err) = doctor(&app, &[]);
    assert!(ok, "{out}\n{err}");
    for check in [
        "settings",
        "database",
        "migrations",
        "clock",
        "signing key",
        "SMTP",
        "GeoIP database",
        "public URL",
        "trusted proxies",
    ] {
        assert!(
            out.lines().any(|l| l == format!("ok  {check}")),
            "{check}: {out}"
        );
    }
    assert!(!out.contains("FAIL"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_names_an_unreachable_database_without_its_password() {
    let app = spawn_app().await;
    let url = format!(
        "postgres://gatehouse:db-password-never-shown@127.0.0.1:{}/gatehouse",
        closed_port()
    );
    let (ok, out, err) = doctor(&app, &[("GATEHOUSE_DATABASE_URL", &url)]);
    assert!(!ok);
    let line = failed_line(&out, "database");
    assert!(line.contains("127.0.0.1"), "{line}");
    assert!(!out.contains("db-password-never-shown"), "{out}");
    assert!(!err.contains("db-password-never-shown"), "{err}");
    // What does not depend on the database is still checked.
    assert!(out.lines().any(|l| l == "ok  SMTP"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_names_pending_migrations() {
    let app = spawn_app().await;
    let (name, url) = fresh_database().await;
    let (ok, out, _) = doctor(&app, &[("GATEHOUSE_DATABASE_URL", &url)]);
    drop_database(&name).await;
    assert!(!ok);
    assert!(out.lines().any(|l| l == "ok  database"), "{out}");
    assert!(
        failed_line(&out, "migrations").contains("gatehouse migrate"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_names_a_closed_smtp_port_without_the_relay_password() {
    let app = spawn_app().await;
    let smtp = format!(
        "smtps://mailer:smtp-password-never-shown@127.0.0.1:{}",
        closed_port()
    );
    let (ok, out, err) = doctor(&app, &[("GATEHOUSE_SMTP_URL", &smtp)]);
    assert!(!ok);
    let line = failed_line(&out, "SMTP");
    assert!(line.contains("implicit TLS"), "{line}");
    assert!(!out.contains("smtp-password-never-shown"), "{out}");
    assert!(!err.contains("smtp-password-never-shown"), "{err}");
    assert!(out.lines().any(|l| l == "ok  database"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_names_an_unreadable_geoip_file() {
    let app = spawn_app().await;
    let (ok, out, _) = doctor(
        &app,
        &[("GATEHOUSE_GEOIP_DB", "/nonexistent/GeoLite2-City.mmdb")],
    );
    assert!(!ok);
    assert!(
        failed_line(&out, "GeoIP database").contains("GATEHOUSE_GEOIP_DB"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_refuses_trusting_every_address_as_a_proxy() {
    let app = spawn_app().await;
    for everyone in ["0.0.0.0/0", "10.0.0.1, ::/0"] {
        let (ok, out, _) = doctor(&app, &[("GATEHOUSE_TRUSTED_PROXIES", everyone)]);
        assert!(!ok, "{everyone}");
        assert!(
            failed_line(&out, "trusted proxies").contains("GATEHOUSE_TRUSTED_PROXIES"),
            "{out}"
        );
    }
    let (ok, out, _) = doctor(&app, &[("GATEHOUSE_TRUSTED_PROXIES", "10.0.0.0/8")]);
    assert!(ok, "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_names_a_plain_http_public_url_outside_dev_mode() {
    let app = spawn_app().await;
    let (ok, out, _) = doctor(&app, &[("GATEHOUSE_PUBLIC_URL", "http://id.example.com")]);
    assert!(!ok);
    assert!(
        failed_line(&out, "public URL").contains("https://"),
        "{out}"
    );
}
