//! Two nodes as one: a second `gatehouse serve` process on the test's database, and
//! the revocation promise (DESIGN.md "Scale-out") checked across the two — sign in on
//! node A, revoke on node B, dead on A. Checklist D1, D2 and R2 across nodes.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;

use crate::helpers::{Browser, Options, PASSWORD, PUBLIC_URL, TestApp, spawn_app, spawn_app_with};
use crate::oauth_helpers::*;

/// Another node: the real binary, same database, keys and issuer, its own port.
pub struct Node {
    pub address: String,
    child: Child,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn second_node(app: &TestApp) -> Node {
    start_node(app, Stdio::null(), &[]).await
}

/// A node of `app`'s database whose JSON log goes to `log` (with `env` on top).
pub async fn start_node(app: &TestApp, log: Stdio, env: &[(&str, &str)]) -> Node {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let key = app.settings.secret_key.as_ref().expect("tests set a key");
    // Through the app's database proxy when it has one, so a cut reaches both nodes.
    let db_url = app
        .proxy
        .as_ref()
        .map_or(app.db_url.clone(), |p| p.url.clone());
    let child = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("GATEHOUSE_DATABASE_URL", db_url)
        .env("GATEHOUSE_PUBLIC_URL", PUBLIC_URL)
        .env("GATEHOUSE_BIND", format!("127.0.0.1:{port}"))
        .env(
            "GATEHOUSE_SMTP_URL",
            format!("smtp://127.0.0.1:{}", app.mail.port),
        )
        .env(
            "GATEHOUSE_SECRET_KEY",
            base64::engine::general_purpose::STANDARD.encode(key.expose()),
        )
        .env(
            "GATEHOUSE_REQUIRE_VERIFIED_EMAIL",
            app.settings.require_verified_email.to_string(),
        )
        .env("GATEHOUSE_LOG_FORMAT", "json")
        .envs(env.iter().copied())
        .args(["serve", "--no-migrate"])
        .stdout(log)
        .stderr(Stdio::null())
        .spawn()
        .expect("the gatehouse binary starts");
    let node = Node {
        address: format!("http://127.0.0.1:{port}"),
        child,
    };
    let http = reqwest::Client::new();
    for _ in 0..200 {
        if http
            .get(format!("{}/healthz", node.address))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            return node;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the second node did not start");
}

/// The same browser (its cookies) pointed at another node.
fn on(node: &Node, b: &Browser) -> Browser {
    let other = Browser::new(&node.address);
    for pair in b.cookie_header().split("; ").filter(|p| !p.is_empty()) {
        if let Some((k, v)) = pair.split_once('=') {
            other.set_cookie(k, v);
        }
    }
    other
}

/// Introspection at a node other than the test's app.
async fn introspect_at(node: &Node, caller: &Client, token: &str) -> (u16, serde_json::Value) {
    let http = reqwest::Client::new();
    let res = http
        .post(format!("{}/oauth2/introspect", node.address))
        .basic_auth(&caller.id, caller.secret.as_deref())
        .form(&[("token", token)])
        .send()
        .await
        .expect("introspection reaches the node");
    let status = res.status().as_u16();
    let body = res.text().await.unwrap_or_default();
    (
        status,
        serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
    )
}

fn session_id_of(app_page: &str) -> String {
    let start =
        app_page.find("/account/devices/").expect("a revoke form") + "/account/devices/".len();
    app_page[start..start + 36].to_string()
}

#[tokio::test]
async fn a_device_revoked_on_node_b_is_dead_on_node_a_cookie_tokens_and_all() {
    // D1 across nodes; DESIGN.md principle 3 (every node, within 1 s).
    let app = spawn_app().await;
    let client = app_client(&app);
    let node_b = second_node(&app).await;
    let owner = app.signed_in("alice@example.com").await;
    let device = app.browser();
    app.login(&device, "alice@example.com", PASSWORD).await;
    let t = sign_in_app(&app, &device, &client, &[]).await;
    let (_, claims) = jwt_parts(&t.access);
    let sid = claims["sid"].as_str().unwrap().to_string();
    assert_eq!(
        introspect_at(&node_b, &client, &t.access).await.1["active"],
        true,
        "node B sees node A's token"
    );
    // Both nodes have the answer in their caches now.
    for _ in 0..2 {
        assert_eq!(
            introspect_at(&node_b, &client, &t.access).await.1["active"],
            true
        );
    }
    crate::liveness::assert_hit(&app, &client, &t.access).await;

    // The owner revokes the device on node B.
    let owner_b = on(&node_b, &owner);
    let page = owner_b.get("/account/devices").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains(&sid));
    let r = owner_b
        .post_form(
            &format!("/account/devices/{sid}/revoke"),
            &[("csrf_token", &page.csrf())],
        )
        .await;
    assert_eq!(r.status, 303);
    let revoked_at = Instant::now();

    // On node A, at once: 20 parallel requests with the device's cookie, none served
    // (the cookie is checked against PostgreSQL on every request).
    let tries = futures_util::future::join_all((0..20).map(|_| device.get("/account"))).await;
    assert!(
        tries.iter().all(|r| r.is_sign_in_redirect()),
        "a request got through"
    );
    // Its cached introspection answer goes with the notification: measured.
    while introspect(&app, &client, &t.access).await != inactive() {
        assert!(
            revoked_at.elapsed() < Duration::from_secs(1),
            "node A still says active"
        );
    }
    assert_eq!(userinfo(&app, &t.access).await.0, 401);
    let (s, body) = refresh(&app, &client, &t.refresh).await;
    assert_eq!((s, body["error"].as_str()), (400, Some("invalid_grant")));
    let delay = revoked_at.elapsed();
    assert!(
        delay < Duration::from_secs(1),
        "dead on node A only after {delay:?}"
    );
    // The owner's own session is fine on both nodes.
    assert_eq!(owner.get("/account").await.status, 200);
    assert_eq!(owner_b.get("/account").await.status, 200);
}

#[tokio::test]
async fn signing_out_everywhere_on_one_node_and_an_admin_revoke_end_everything_on_the_other() {
    // D2 across nodes.
    let app = spawn_app().await;
    let client = app_client(&app);
    let node_b = second_node(&app).await;
    let owner = app.signed_in("alice@example.com").await;
    let t = sign_in_app(&app, &owner, &client, &[]).await;
    let owner_b = on(&node_b, &owner);
    let page = owner_b.get("/account/devices").await;
    let r = owner_b
        .post_form(
            "/account/devices/revoke-all",
            &[("csrf_token", &page.csrf())],
        )
        .await;
    assert_eq!(r.status, 303);
    assert!(owner.get("/account").await.is_sign_in_redirect());
    assert_eq!(introspect(&app, &client, &t.access).await, inactive());
    assert_eq!(refresh(&app, &client, &t.refresh).await.0, 400);

    // An operator's `sessions revoke` on a signed-in session, seen on node B.
    let again = app.browser();
    app.login(&again, "alice@example.com", PASSWORD).await;
    let t = sign_in_app(&app, &again, &client, &[]).await;
    assert_eq!(
        introspect_at(&node_b, &client, &t.access).await.1["active"],
        true
    );
    let (ok, _, err) = app.cli(&["sessions", "revoke", "--user", "alice@example.com"], &[]);
    assert!(ok, "{err}");
    assert_eq!(
        introspect_at(&node_b, &client, &t.access).await.1,
        inactive()
    );
    assert!(
        on(&node_b, &again)
            .get("/account")
            .await
            .is_sign_in_redirect()
    );
}

#[tokio::test]
async fn with_the_database_down_both_nodes_fail_closed_and_recover() {
    // R2 across nodes.
    let app = spawn_app_with(Options {
        db_proxy: true,
        ..Options::default()
    })
    .await;
    let client = app_client(&app);
    let node_b = second_node(&app).await;
    let owner = app.signed_in("alice@example.com").await;
    let t = sign_in_app(&app, &owner, &client, &[]).await;
    let page = owner.get("/account/devices").await;
    let sid = session_id_of(&page.body);
    let owner_b = on(&node_b, &owner);
    let csrf = owner_b.get("/account/devices").await.csrf();
    app.proxy.as_ref().unwrap().cut();
    let (s, body) = introspect_at(&node_b, &client, &t.access).await;
    assert_eq!(s, 503, "{body}");
    assert_ne!(body["active"], true);
    assert_eq!(owner_b.get("/account").await.status, 503);
    assert_eq!(owner.get("/account").await.status, 503);
    let r = owner_b
        .post_form(
            &format!("/account/devices/{sid}/revoke"),
            &[("csrf_token", &csrf)],
        )
        .await;
    assert_eq!(r.status, 503);
    app.proxy.as_ref().unwrap().restore();
    // Both recover by themselves, and the failed revocation changed nothing.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, body) = introspect_at(&node_b, &client, &t.access).await;
        if s == 200 {
            assert_eq!(body["active"], true);
            break;
        }
        assert!(Instant::now() < deadline, "node B did not recover");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Node A recovers too (its pool reconnects on its own schedule).
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut status = owner.get("/account").await.status;
    while status == 503 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        status = owner.get("/account").await.status;
    }
    assert_eq!(status, 200);
}
