//! Logs an operator can trust (DESIGN.md "Reliability"): a node's whole JSON log,
//! captured while a run makes every kind of secret the server handles, holds none of
//! them; malformed requests from a scanner write no ERROR line; client mistakes are
//! `info` lines with the route pattern and a reason code.

use std::io::{Read, Write};
use std::process::Stdio;

use serde_json::Value;

use crate::helpers::{Browser, PASSWORD, TestApp, spawn_app};
use crate::nodes::{Node, start_node};
use crate::oauth_helpers::{CB, Client, app_client, authorize_url, location_params, param, pkce};
use crate::otp::{between, enrol, step_up_by_email, wait_code};

/// A node whose log goes to a file; the file's path.
async fn logged_node(app: &TestApp) -> (Node, std::path::PathBuf) {
    let path = std::env::temp_dir().join(format!("gatehouse-log-{}.json", uuid::Uuid::new_v4()));
    let file = std::fs::File::create(&path).expect("a log file");
    let node = start_node(app, Stdio::from(file), &[("RUST_LOG", "debug,sqlx=warn")]).await;
    (node, path)
}

fn log_lines(path: &std::path::Path) -> (String, Vec<Value>) {
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|mut f| f.read_to_string(&mut text))
        .expect("the log is readable");
    let lines = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("a JSON log line: {l}")))
        .collect();
    (text, lines)
}

/// POSTs a form to the node's token endpoint as a confidential client.
async fn token_call(node: &Node, client: &Client, form: &[(&str, &str)]) -> Value {
    let r = reqwest::Client::new()
        .post(format!("{}/oauth2/token", node.address))
        .basic_auth(&client.id, client.secret.as_deref())
        .form(form)
        .send()
        .await
        .expect("the node answers");
    assert_eq!(r.status(), 200);
    serde_json::from_str(&r.text().await.unwrap()).unwrap()
}

/// Whether `secret` is in `text`; a short one (a 6-digit code) only where it stands
/// alone, not inside a longer number such as a timestamp.
fn contains_secret(text: &str, secret: &str) -> bool {
    if secret.len() >= 12 {
        return text.contains(secret);
    }
    text.match_indices(secret).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + secret.len()..].chars().next();
        !before.is_some_and(|c| c.is_ascii_alphanumeric())
            && !after.is_some_and(|c| c.is_ascii_alphanumeric())
    })
}

#[tokio::test]
async fn no_secret_the_run_made_reaches_the_log() {
    // L-checklist "never a secret in a log": passwords (right and wrong), session and
    // device cookies, CSRF tokens, e-mailed codes, TOTP secrets and codes, recovery
    // codes, mailed links' tokens, a client secret, authorization codes, access,
    // refresh and ID tokens.
    let app = spawn_app().await;
    let (node, path) = logged_node(&app).await;
    let b = Browser::new(&node.address);
    let email = "logan@example.com";
    let mut secrets: Vec<(&str, String)> = vec![("password", PASSWORD.to_string())];

    assert_eq!(app.register(&b, email, PASSWORD).await.status, 303);
    let wrong = "Wrong-Password-4711";
    secrets.push(("wrong password", wrong.to_string()));
    let other = Browser::new(&node.address);
    assert_eq!(app.login(&other, email, wrong).await.status, 401);
    secrets.push(("session cookie", app.session_cookie(&b).expect("signed in")));
    secrets.push((
        "device cookie",
        b.cookie(app.device_cookie_name()).expect("a device cookie"),
    ));
    secrets.push(("csrf token", b.get("/account").await.csrf()));

    // An e-mailed step-up code, then an authenticator app with its codes.
    step_up_by_email(&app, &b, email, "/account/mfa").await;
    secrets.push(("e-mailed code", wait_code(&app, email, 1).await));
    let enrolled = enrol(&app, &b, email).await;
    secrets.push(("totp secret", enrolled.secret_b32.clone()));
    for code in &enrolled.recovery_codes {
        secrets.push(("recovery code", code.clone()));
    }

    // A reset link.
    let asker = Browser::new(&node.address);
    let csrf = asker.get("/password/forgot").await.csrf();
    let r = asker
        .post_form(
            "/password/forgot",
            &[("csrf_token", &csrf), ("email", email)],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let mail = app
        .mail
        .wait_for_subject(email, "Reset your password")
        .await;
    let link = mail.token("/password/reset");
    secrets.push(("reset token", link));

    // OAuth: a client secret, a code, the tokens.
    let client = app_client(&app);
    secrets.push(("client secret", client.secret.clone().unwrap()));
    let (verifier, challenge) = pkce();
    let r = b
        .get(&authorize_url(
            &client,
            &[
                ("code_challenge", &challenge),
                ("code_challenge_method", "S256"),
            ],
        ))
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert!(r.location().starts_with(CB));
    let code = param(&location_params(&r), "code").expect("a code");
    secrets.push(("authorization code", code.clone()));
    secrets.push(("pkce verifier", verifier.clone()));
    let tokens = token_call(
        &node,
        &client,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", CB),
            ("code_verifier", &verifier),
        ],
    )
    .await;
    for name in ["access_token", "refresh_token", "id_token"] {
        let t = tokens[name].as_str().expect("a token").to_string();
        // A JWT's signature alone is the secret part worth checking for.
        let tail = t.rsplit('.').next().unwrap_or(&t).to_string();
        secrets.push((name, tail));
    }
    let refreshed = token_call(
        &node,
        &client,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", tokens["refresh_token"].as_str().unwrap()),
        ],
    )
    .await;
    secrets.push((
        "rotated refresh token",
        refreshed["refresh_token"].as_str().unwrap().to_string(),
    ));

    // Let the last lines reach the file.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    drop(node);
    let (text, lines) = log_lines(&path);
    let _ = std::fs::remove_file(&path);
    // The log is there and full (the test would prove nothing over an empty one).
    let requests = lines.iter().filter(|l| l["message"] == "request").count();
    assert!(requests >= 15, "only {requests} request lines:\n{text}");
    for (what, secret) in &secrets {
        assert!(secret.len() >= 6, "{what} is too short to search for");
        assert!(
            !contains_secret(&text, secret),
            "the log holds the {what}:\n{}",
            text.lines()
                .filter(|l| contains_secret(l, secret))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    // Nor any e-mail link at all.
    assert!(!text.contains("token="), "a link's token in the log");
    let _ = between;
}

#[tokio::test]
async fn a_scanners_garbage_writes_no_error_line_and_client_mistakes_are_info() {
    let app = spawn_app().await;
    let (node, path) = logged_node(&app).await;
    let addr = node.address.trim_start_matches("http://").to_string();
    let garbage: [&[u8]; 6] = [
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n",
        b"GET /\x01\x02 HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nshort",
        b"GET / HTTP/9.9\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
    ];
    for _ in 0..20 {
        for g in garbage {
            if let Ok(mut s) = std::net::TcpStream::connect(&addr) {
                let _ = s.set_read_timeout(Some(std::time::Duration::from_millis(300)));
                let _ = s.write_all(g);
                let _ = s.shutdown(std::net::Shutdown::Write);
                let mut sink = Vec::new();
                let _ = s.read_to_end(&mut sink);
            }
        }
    }
    // Client mistakes through the pages: a bad CSRF token, a wrong password, a form
    // field twice, an unknown page.
    let b = Browser::new(&node.address);
    let csrf = b.get("/login").await.csrf();
    let r = b
        .post_form(
            "/login",
            &[
                ("csrf_token", "forged"),
                ("email", "a@b.c"),
                ("password", "x"),
            ],
        )
        .await;
    assert_eq!(r.status, 403);
    let r = b
        .post_form(
            "/login",
            &[
                ("csrf_token", &csrf),
                ("email", "a@b.c"),
                ("password", "nope"),
            ],
        )
        .await;
    assert_eq!(r.status, 401);
    let r = b
        .post_form("/login", &[("csrf_token", &csrf), ("csrf_token", &csrf)])
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(b.get("/no/such/page").await.status, 404);
    // The node still answers, and counted what it did not log.
    let metrics = reqwest::get(format!("{}/metrics", node.address))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let counted: f64 = metrics
        .lines()
        .find(|l| l.starts_with("gatehouse_http_protocol_errors_total"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(counted >= 20.0, "protocol errors counted: {counted}");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    drop(node);
    let (text, lines) = log_lines(&path);
    let _ = std::fs::remove_file(&path);
    let errors: Vec<&Value> = lines.iter().filter(|l| l["level"] == "ERROR").collect();
    assert!(errors.is_empty(), "ERROR lines: {errors:?}");
    let warnings: Vec<&Value> = lines.iter().filter(|l| l["level"] == "WARN").collect();
    assert!(
        warnings.iter().all(|w| w["message"]
            .as_str()
            .is_some_and(|m| m.contains("DEVELOPMENT") || m.contains("signing keys"))),
        "warnings from client mistakes: {warnings:?}"
    );
    // Each mistake is one info line with its route pattern and reason code.
    let find = |route: &str, status: u64| {
        lines.iter().find(|l| {
            l["message"] == "request" && l["route"] == route && l["status"].as_u64() == Some(status)
        })
    };
    let csrf_line = find("/login", 403).unwrap_or_else(|| panic!("no 403 line:\n{text}"));
    assert_eq!(csrf_line["level"], "INFO");
    assert_eq!(csrf_line["reason"], "forbidden");
    assert_eq!(find("/login", 400).unwrap()["reason"], "validation");
    assert_eq!(find("unmatched", 404).unwrap()["reason"], "not_found");
    assert!(find("/login", 401).is_some());
}
