//! `gatehouse upstream add|list|delete`: what the operator types, what is stored
//! (the client secret sealed, never printed), and every refusal writing nothing.

use std::io::Write;
use std::process::Stdio;

use base64::Engine;
use serde_json::Value;

use crate::helpers::{PUBLIC_URL, TestApp, random_key, spawn_app};

/// Runs the `gatehouse` binary as `TestApp::cli` does, with `stdin` piped in.
/// Returns (success, stdout, stderr).
pub fn cli_with_input(
    app: &TestApp,
    args: &[&str],
    stdin: &str,
    extra: &[(&str, &str)],
) -> (bool, String, String) {
    let key = app.settings.secret_key.as_ref().expect("tests set a key");
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_gatehouse"));
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("GATEHOUSE_DATABASE_URL", &app.db_url)
        .env("GATEHOUSE_PUBLIC_URL", PUBLIC_URL)
        .env(
            "GATEHOUSE_SMTP_URL",
            format!("smtp://127.0.0.1:{}", app.mail.port),
        )
        .env(
            "GATEHOUSE_SECRET_KEY",
            base64::engine::general_purpose::STANDARD.encode(key.expose()),
        )
        .env("GATEHOUSE_LOG_FORMAT", "json")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in extra {
        c.env(k, v);
    }
    let mut child = c.spawn().expect("the gatehouse binary runs");
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(stdin.as_bytes())
        .expect("writing the secret");
    let out = child.wait_with_output().expect("the gatehouse binary ends");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `gatehouse upstream add ARGS` with `secret` on standard input; asserts success and
/// returns the printed JSON object.
pub fn add_upstream(app: &TestApp, args: &[&str], secret: &str, extra: &[(&str, &str)]) -> Value {
    let mut all = vec!["upstream", "add"];
    all.extend_from_slice(args);
    let (ok, out, err) = cli_with_input(app, &all, &format!("{secret}\n"), extra);
    assert!(ok, "upstream add {args:?} failed: {err}");
    serde_json::from_str(out.trim()).unwrap_or_else(|_| panic!("upstream add printed {out}"))
}

fn list(app: &TestApp, extra: &[(&str, &str)]) -> Vec<Value> {
    let (ok, out, err) = app.cli(&["upstream", "list"], extra);
    assert!(ok, "{err}");
    out.lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object a line"))
        .collect()
}

#[tokio::test]
async fn adding_an_upstream_prints_the_uris_to_register_and_keeps_the_secret_sealed() {
    let app = spawn_app().await;
    let secret = "GOCSPX-very-secret-value";
    let added = add_upstream(
        &app,
        &[
            "--name",
            "google",
            "--kind",
            "google",
            "--client-id",
            "123.apps.googleusercontent.com",
            "--trust-email",
            "--label",
            "Google",
        ],
        secret,
        &[],
    );
    assert_eq!(
        added["redirect_uri"],
        format!("{PUBLIC_URL}/login/upstream/google/callback")
    );
    assert_eq!(
        added["backchannel_logout_uri"],
        format!("{PUBLIC_URL}/login/upstream/google/backchannel-logout")
    );
    assert_eq!(added["issuer"], "https://accounts.google.com");
    assert_eq!(added["kind"], "oidc");
    assert_eq!(added["preset"], "google");
    assert_eq!(added["scopes"], "openid email profile");
    assert_eq!(added["trust_email"], true);
    assert!(!added.to_string().contains(secret));

    let (ok, out, err) = app.cli(&["upstream", "list"], &[]);
    assert!(ok, "{err}");
    assert!(!out.contains(secret) && !err.contains(secret));
    let rows = list(&app, &[]);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["name"], "google");
    assert_eq!(rows[0]["label"], "Google");
    assert_eq!(rows[0]["client_id"], "123.apps.googleusercontent.com");
    assert!(rows[0].get("client_secret").is_none());

    // At rest: sealed under its column's context, not the plain value.
    let sealed: Vec<u8> =
        sqlx::query_scalar("SELECT client_secret_enc FROM upstreams WHERE name = 'google'")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert!(!sealed.windows(secret.len()).any(|w| w == secret.as_bytes()));
    let opened = gatehouse::upstream::open_client_secret(&app.keys(), &sealed).unwrap();
    assert_eq!(secrecy::ExposeSecret::expose_secret(&opened), secret);
}

#[tokio::test]
async fn presets_fill_in_their_issuers_and_github_its_addresses() {
    let app = spawn_app().await;
    let id = ["--client-id", "cid"];
    let ms = add_upstream(
        &app,
        &[&["--name", "ms", "--kind", "microsoft"][..], &id].concat(),
        "s",
        &[],
    );
    assert_eq!(
        ms["issuer"],
        "https://login.microsoftonline.com/common/v2.0"
    );
    assert_eq!(ms["label"], "ms", "the label defaults to the name");
    let tenant = add_upstream(
        &app,
        &[
            &[
                "--name",
                "corp",
                "--kind",
                "microsoft",
                "--issuer",
                "https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/v2.0",
            ][..],
            &id,
        ]
        .concat(),
        "s",
        &[],
    );
    assert_eq!(tenant["preset"], "microsoft");
    assert_eq!(
        tenant["issuer"],
        "https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/v2.0"
    );
    let gl = add_upstream(
        &app,
        &[&["--name", "gl", "--kind", "gitlab"][..], &id].concat(),
        "s",
        &[],
    );
    assert_eq!(gl["issuer"], "https://gitlab.com");
    let gh = add_upstream(
        &app,
        &[&["--name", "gh", "--kind", "github"][..], &id].concat(),
        "s",
        &[],
    );
    assert_eq!(gh["kind"], "github");
    assert_eq!(gh["issuer"], Value::Null);
    assert_eq!(gh["base_url"], "https://github.com");
    assert_eq!(gh["api_url"], "https://api.github.com");
    assert_eq!(gh["scopes"], "read:user user:email");
    let ghe = add_upstream(
        &app,
        &[
            &[
                "--name",
                "ghe",
                "--kind",
                "github",
                "--base-url",
                "https://ghe.example",
            ][..],
            &id,
        ]
        .concat(),
        "s",
        &[],
    );
    assert_eq!(ghe["base_url"], "https://ghe.example");
    assert_eq!(ghe["api_url"], "https://ghe.example/api/v3");
    let names: Vec<String> = list(&app, &[])
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["corp", "gh", "ghe", "gl", "ms"]);
}

#[tokio::test]
async fn bad_upstream_input_is_refused_with_a_clear_error_and_nothing_is_written() {
    let app = spawn_app().await;
    add_upstream(
        &app,
        &[
            "--name",
            "taken",
            "--kind",
            "oidc",
            "--issuer",
            "https://idp.example",
            "--client-id",
            "c",
        ],
        "s",
        &[],
    );
    // (arguments after `upstream add`, split at single spaces; the secret; what the
    // one line of error must name)
    let cases = [
        (
            "--name x --kind oidc --issuer http://idp.example --client-id c",
            "s",
            "--issuer",
        ),
        (
            "--name x --kind oidc --issuer http://127.0.0.1:9 --client-id c",
            "s",
            "--issuer",
        ),
        (
            "--name x --kind oidc --issuer not-a-url --client-id c",
            "s",
            "--issuer",
        ),
        ("--name x --kind oidc --client-id c", "s", "--issuer"),
        ("--name x --kind saml --client-id c", "s", "--kind"),
        ("--name Bad_Name --kind google --client-id c", "s", "--name"),
        ("--name=-x --kind google --client-id c", "s", "--name"),
        (
            "--name x --kind github --issuer https://idp.example --client-id c",
            "s",
            "--issuer",
        ),
        (
            "--name x --kind google --base-url https://ghe.example --client-id c",
            "s",
            "--base-url",
        ),
        (
            "--name x --kind github --base-url http://ghe.example --client-id c",
            "s",
            "--base-url",
        ),
        (
            "--name x --kind github --api-url https://ghe.example/?q --client-id c",
            "s",
            "--api-url",
        ),
        (
            "--name x --kind google --scopes=email --client-id c",
            "s",
            "--scopes",
        ),
        (
            "--name x --kind google --label= --client-id c",
            "s",
            "--label",
        ),
        (
            "--name x --kind google --client-id a\tb",
            "s",
            "--client-id",
        ),
        ("--name x --kind google --client-id c", "", "secret"),
        // U1: a multi-tenant issuer vouches for every tenant's typed-in addresses.
        (
            "--name x --kind microsoft --trust-email --client-id c",
            "s",
            "--trust-email",
        ),
        (
            "--name x --kind oidc --issuer https://login.microsoftonline.com/organizations/v2.0 --trust-email --client-id c",
            "s",
            "--trust-email",
        ),
        (
            "--name taken --kind google --client-id c",
            "s",
            "exists already",
        ),
    ];
    for (args, secret, names) in cases {
        let mut all = vec!["upstream", "add"];
        all.extend(args.split(' '));
        let (ok, out, err) = cli_with_input(&app, &all, &format!("{secret}\n"), &[]);
        assert!(!ok, "{args} was accepted: {out}");
        assert!(err.contains(names), "{args}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one clear line: {err}");
    }
    assert_eq!(app.count("SELECT count(*) FROM upstreams").await, 1);
}

#[tokio::test]
async fn a_plain_http_issuer_is_accepted_only_on_loopback_in_dev_mode() {
    let app = spawn_app().await;
    let dev = [("GATEHOUSE_DEV", "true")];
    let added = add_upstream(
        &app,
        &[
            "--name",
            "local",
            "--kind",
            "oidc",
            "--issuer",
            "http://127.0.0.1:8081",
            "--client-id",
            "c",
        ],
        "s",
        &dev,
    );
    assert_eq!(added["issuer"], "http://127.0.0.1:8081");
    let (ok, _, err) = cli_with_input(
        &app,
        &[
            "upstream",
            "add",
            "--name",
            "far",
            "--kind",
            "oidc",
            "--issuer",
            "http://idp.example",
            "--client-id",
            "c",
        ],
        "s\n",
        &dev,
    );
    assert!(!ok);
    assert!(err.contains("loopback"), "{err}");
    assert_eq!(app.count("SELECT count(*) FROM upstreams").await, 1);
}

#[tokio::test]
async fn deleting_an_upstream_takes_its_links_with_it_and_tells_each_person() {
    let app = spawn_app().await;
    add_upstream(
        &app,
        &[
            "--name",
            "idp",
            "--kind",
            "oidc",
            "--issuer",
            "https://idp.example",
            "--client-id",
            "c",
        ],
        "s",
        &[],
    );
    app.user("linked@example.com").await;
    sqlx::query(
        "INSERT INTO federated_identities (id, upstream_id, subject, user_id, created_at, last_used_at)
         SELECT gen_random_uuid(), u.id, 'sub-1', p.id, now(), now()
         FROM upstreams u, users p WHERE u.name = 'idp' AND p.email = 'linked@example.com'",
    )
    .execute(&app.db)
    .await
    .unwrap();
    assert_eq!(
        app.count("SELECT count(*) FROM federated_identities").await,
        1
    );

    let (ok, out, err) = app.cli(&["upstream", "delete", "idp"], &[]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), r#"{"deleted":"idp"}"#);
    assert_eq!(app.count("SELECT count(*) FROM upstreams").await, 0);
    assert_eq!(
        app.count("SELECT count(*) FROM federated_identities").await,
        0
    );
    assert_eq!(
        app.count("SELECT count(*) FROM users WHERE email = 'linked@example.com'")
            .await,
        1,
        "the person stays"
    );
    // The person's activity says an administrator removed that way to sign in.
    let events: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT e.kind, e.actor, e.detail FROM security_events e
         JOIN users u ON u.id = e.user_id
         WHERE u.email = 'linked@example.com' AND e.actor = 'admin'",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(
        events,
        [(
            "upstream_unlinked".to_string(),
            "admin".to_string(),
            Some("idp".to_string())
        )]
    );
    let (ok, _, err) = app.cli(&["upstream", "delete", "idp"], &[]);
    assert!(!ok);
    assert!(err.contains("no upstream"), "{err}");
}

#[tokio::test]
async fn keys_reencrypt_reseals_upstream_client_secrets() {
    let app = spawn_app().await;
    add_upstream(
        &app,
        &[
            "--name",
            "idp",
            "--kind",
            "oidc",
            "--issuer",
            "https://idp.example",
            "--client-id",
            "c",
        ],
        "the-client-secret",
        &[],
    );
    let old = app.settings.secret_key.as_ref().unwrap();
    let old_b64 = base64::engine::general_purpose::STANDARD.encode(old.expose());
    let new_b64 = random_key();
    let new = gatehouse::settings::SecretKey::parse(&new_b64).unwrap();
    let new_only = gatehouse::crypto::Keys::new(&new, &[]);
    let sealed = || async {
        sqlx::query_scalar::<_, Vec<u8>>("SELECT client_secret_enc FROM upstreams")
            .fetch_one(&app.db)
            .await
            .unwrap()
    };
    assert!(gatehouse::upstream::open_client_secret(&new_only, &sealed().await).is_err());

    let rotated = [
        ("GATEHOUSE_SECRET_KEY", new_b64.as_str()),
        ("GATEHOUSE_OLD_SECRET_KEYS", old_b64.as_str()),
    ];
    let (ok, out, err) = app.cli(&["keys", "reencrypt"], &rotated);
    assert!(ok, "{err}");
    let report: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(report["remaining"], 0, "{out}");
    let opened = gatehouse::upstream::open_client_secret(&new_only, &sealed().await).unwrap();
    assert_eq!(
        secrecy::ExposeSecret::expose_secret(&opened),
        "the-client-secret"
    );
}
