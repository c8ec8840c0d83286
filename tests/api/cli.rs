//! The `gatehouse` binary: settings errors, `migrate`, `user create`, `serve`.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::helpers::{Browser, PASSWORD, drop_database, fresh_database, random_key};

/// Whatever a test started outside itself: stopped and dropped however it ends,
/// assertions failing included.
struct Cleanup {
    database: String,
    child: Option<std::process::Child>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let name = self.database.clone();
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(drop_database(&name));
            }
        })
        .join();
    }
}

fn gatehouse() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_gatehouse"));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    c
}

#[test]
fn every_command_has_help() {
    for args in [
        &["--help"][..],
        &["serve", "--help"],
        &["migrate", "--help"],
        &["user", "create", "--help"],
    ] {
        let out = gatehouse().args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage"),
            "{args:?}"
        );
    }
}

#[test]
fn a_bad_setting_stops_start_up_with_one_line_naming_the_key() {
    let out = gatehouse().arg("serve").output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("GATEHOUSE_DATABASE_URL"), "{err}");

    let out = gatehouse()
        .arg("serve")
        .env("GATEHOUSE_DATABASE_URL", "postgres://localhost/x")
        .env("GATEHOUSE_PUBLIC_URL", "https://id.example.com")
        .env("GATEHOUSE_SECRET_KEY", "too-short")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.trim().starts_with("gatehouse: GATEHOUSE_SECRET_KEY:"),
        "{err}"
    );

    let out = gatehouse()
        .arg("serve")
        .env("GATEHOUSE_DATABASE_URL", "postgres://localhost/x")
        .env("GATEHOUSE_SECRET_KEY", random_key())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("GATEHOUSE_PUBLIC_URL") && err.contains("https"),
        "{err}"
    );

    // Defect 6: mail in the clear over a network is refused, in one line.
    let out = gatehouse()
        .arg("serve")
        .env("GATEHOUSE_DATABASE_URL", "postgres://localhost/x")
        .env("GATEHOUSE_SECRET_KEY", random_key())
        .env("GATEHOUSE_PUBLIC_URL", "https://id.example.com")
        .env(
            "GATEHOUSE_SMTP_URL",
            "smtp://user:hunter2@smtp.example.com:25",
        )
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.starts_with("gatehouse: GATEHOUSE_SMTP_URL:") && err.contains("tls=none"),
        "{err}"
    );
    assert!(!err.contains("hunter2"), "{err}");
}

#[test]
fn settings_can_come_from_a_file_with_the_environment_winning() {
    let dir = std::env::temp_dir().join(format!("gh-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("gatehouse.toml"),
        "dev = true\ndatabase_url = \"postgres://localhost/x\"\nlogin_max_failures = 0\n",
    )
    .unwrap();
    let out = gatehouse()
        .arg("migrate")
        .current_dir(&dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("GATEHOUSE_LOGIN_MAX_FAILURES"),
        "the file is read: {err}"
    );
    let out = gatehouse()
        .args(["--config", "missing.toml", "migrate"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml"));
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn migrate_user_create_and_serve_work_end_to_end() {
    let (name, url) = fresh_database().await;
    let mut cleanup = Cleanup {
        database: name,
        child: None,
    };
    let key = random_key();
    let env = |c: &mut Command| {
        c.env("GATEHOUSE_DATABASE_URL", &url)
            .env("GATEHOUSE_SECRET_KEY", &key)
            .env("GATEHOUSE_PUBLIC_URL", "https://gatehouse.test")
            .env("GATEHOUSE_SMTP_URL", "smtp://127.0.0.1:25")
            .env("GATEHOUSE_REQUIRE_VERIFIED_EMAIL", "false")
            .env("GATEHOUSE_LOG_FORMAT", "json");
    };
    let mut migrate = gatehouse();
    env(&mut migrate);
    let out = migrate.arg("migrate").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut create = gatehouse();
    env(&mut create);
    let mut child = create
        .args([
            "user",
            "create",
            "--email",
            "Admin@Example.com",
            "--admin",
            "--verified",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{PASSWORD}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(printed["email"], "admin@example.com");

    // Serve on a free port, sign in as the created user, then stop with SIGTERM.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut serve = gatehouse();
    env(&mut serve);
    let server = cleanup.child.insert(
        serve
            .arg("serve")
            .env("GATEHOUSE_BIND", format!("127.0.0.1:{port}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let b = Browser::new(&format!("http://127.0.0.1:{port}"));
    let mut up = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(up, "serve starts listening");
    let csrf = b.get("/login").await.csrf();
    let r = b
        .post_form(
            "/login",
            &[
                ("csrf_token", &csrf),
                ("email", "admin@example.com"),
                ("password", PASSWORD),
            ],
        )
        .await;
    assert_eq!(r.status, 303);
    assert_eq!(b.get("/account").await.status, 200);

    let pid = server.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let mut stopped = None;
    for _ in 0..100 {
        if let Some(status) = server.try_wait().unwrap() {
            stopped = Some(status);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = stopped.expect("SIGTERM stops the server");
    assert!(status.success(), "graceful shutdown exits 0");
    let mut logs = String::new();
    std::io::Read::read_to_string(&mut server.stdout.take().unwrap(), &mut logs).unwrap();
    assert!(!logs.contains(PASSWORD), "no secret in the log");
    assert!(logs.lines().any(|l| l.starts_with('{')), "JSON log lines");
}

#[tokio::test]
async fn commands_print_only_their_answer_on_stdout_and_log_to_stderr() {
    // `client create` prints the secret once, for a script to read: a warning (here
    // for an unknown setting) must not land in the same stream.
    let app = crate::helpers::spawn_app().await;
    let (ok, out, err) = app.cli(
        &[
            "client",
            "create",
            "--name",
            "Scripted",
            "--redirect-uri",
            "https://rp.test/cb",
        ],
        &[("GATEHOUSE_NOT_A_SETTING", "1")],
    );
    assert!(ok, "{err}");
    let v: serde_json::Value =
        serde_json::from_str(out.trim()).expect("stdout is exactly the JSON");
    assert!(v["client_secret"].is_string());
    assert!(
        err.contains("unknown setting"),
        "the warning went to stderr: {err}"
    );
}
