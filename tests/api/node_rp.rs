//! panva's `openid-client` 6 (the strictest relying party there is: exact issuer,
//! RFC 9207 `iss`, `azp`, `auth_time` with `max_age`) signs in against the real
//! server, for a confidential and a public client. The driver is
//! `tests/node/rp.mjs`; its packages come from the committed lock file (`npm ci`,
//! which the README's test command runs first).

use std::path::Path;

use crate::helpers::{Options, spawn_app_with};
use crate::oauth_helpers::create_client;

const REDIRECT: &str = "http://127.0.0.1:9/cb";

#[tokio::test]
async fn openid_client_signs_in_refreshes_introspects_and_revokes_for_both_kinds_of_client() {
    let node_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node");
    assert!(
        node_dir.join("node_modules/openid-client").is_dir(),
        "tests/node/node_modules is missing: run `npm ci --prefix tests/node` (the README's test command does)"
    );
    let app = spawn_app_with(Options {
        issuer_is_address: true,
        ..Options::default()
    })
    .await;
    let conf = create_client(&app, &["--redirect-uri", REDIRECT, "--first-party"]);
    let public = create_client(
        &app,
        &["--redirect-uri", REDIRECT, "--first-party", "--public"],
    );
    let b = app.signed_in("alice@example.com").await;
    let out = tokio::process::Command::new("node")
        .arg(node_dir.join("rp.mjs"))
        .env("GH_ISSUER", &app.address)
        .env("GH_COOKIE", b.cookie_header())
        .env("GH_REDIRECT", REDIRECT)
        .env("GH_EMAIL", "alice@example.com")
        .env("GH_CONF_ID", &conf.id)
        .env("GH_CONF_SECRET", conf.secret.as_deref().unwrap())
        .env("GH_PUB_ID", &public.id)
        .output()
        .await
        .expect("node runs (Node.js 20 is needed for the tests)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "openid-client failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains(", 0 failed"), "{stdout}");
    assert!(!stdout.contains("not ok"), "{stdout}");
    // The public client's replayed refresh token revoked its family and the session.
    assert_eq!(
        app.count("SELECT count(*) FROM sessions WHERE revoked_reason = 'refresh_token_reuse'")
            .await,
        1
    );
}
