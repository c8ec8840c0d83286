//! What operators do from the command line: list and end sessions, disable and
//! enable accounts, re-encrypt under a new key; and housekeeping.

use std::time::Duration;

use base64::Engine;

use crate::devices::{browser_at, devices_app};
use crate::geoip_fixture;
use crate::helpers::{Options, PASSWORD, random_key, spawn_app_with};

const UA: &str = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";

#[test]
fn the_operator_commands_have_help() {
    for args in [
        &["sessions", "list", "--help"][..],
        &["sessions", "revoke", "--help"],
        &["user", "disable", "--help"],
        &["user", "enable", "--help"],
        &["keys", "reencrypt", "--help"],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_gatehouse"))
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage"),
            "{args:?}"
        );
    }
}

#[tokio::test]
async fn sessions_list_prints_json_lines_and_revoke_ends_one_or_all() {
    // D2 (admin "end sessions")
    let app = devices_app().await;
    let a = browser_at(&app, UA, "192.0.2.20");
    app.register(&a, "ops@example.com", PASSWORD).await;
    let b = browser_at(&app, UA, "198.51.100.20");
    crate::otp::login_completing_code(&app, &b, "ops@example.com").await;

    let (ok, out, err) = app.cli(&["sessions", "list", "--user", "ops@example.com"], &[]);
    assert!(ok, "{err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    assert_eq!(lines.len(), 2, "{out}");
    let sydney = lines
        .iter()
        .find(|l| l["location"] == "Sydney, Australia")
        .expect("the Sydney session");
    assert_eq!(sydney["ip"], "198.51.100.20");
    assert_eq!(sydney["device"], "Firefox on Linux");
    assert_eq!(sydney["device_type"], "desktop");
    let id = sydney["session_id"].as_str().unwrap().to_string();

    let (ok, out, err) = app.cli(
        &[
            "sessions",
            "revoke",
            "--user",
            "ops@example.com",
            "--session",
            &id,
        ],
        &[],
    );
    assert!(ok, "{err}");
    assert!(out.contains("\"revoked\":1"), "{out}");
    assert!(b.get("/account").await.is_sign_in_redirect());
    assert_eq!(a.get("/account").await.status, 200);
    let (ok, _, err) = app.cli(
        &[
            "sessions",
            "revoke",
            "--user",
            "ops@example.com",
            "--session",
            &id,
        ],
        &[],
    );
    assert!(!ok, "a dead session cannot be revoked again");
    assert!(err.contains("no live session"), "{err}");

    let bystander = app.signed_in("bystander@example.com").await;
    let (ok, out, _) = app.cli(&["sessions", "revoke", "--user", "ops@example.com"], &[]);
    assert!(ok);
    assert_eq!(
        bystander.get("/account").await.status,
        200,
        "only that account"
    );
    assert!(out.contains("\"revoked\":1"), "{out}");
    assert!(a.get("/account").await.is_sign_in_redirect());
    let admin_events = app
        .count("SELECT count(*) FROM security_events WHERE actor = 'admin' AND kind = 'session_revoked'")
        .await;
    assert_eq!(admin_events, 2);

    let (ok, _, err) = app.cli(&["sessions", "list", "--user", "nobody@example.com"], &[]);
    assert!(!ok);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("no account"), "{err}");
}

#[tokio::test]
async fn disabling_a_user_kills_every_session_at_once_and_enabling_lets_them_back() {
    // S9
    let app = devices_app().await;
    let a = app.signed_in("disable@example.com").await;
    let bystander = app.signed_in("bystander@example.com").await;
    let b = app.browser();
    crate::otp::login_completing_code(&app, &b, "disable@example.com").await;
    let (ok, out, err) = app.cli(&["user", "disable", "--email", "disable@example.com"], &[]);
    assert!(ok, "{err}");
    assert!(out.contains("\"changed\":true"), "{out}");
    for x in [&a, &b] {
        assert!(x.get("/account").await.is_sign_in_redirect());
        let post = x
            .post_form("/account/devices/revoke-others", &[("csrf_token", "x")])
            .await;
        assert_eq!(post.status, 401);
    }
    assert_eq!(
        app.count(
            "SELECT count(*) FROM sessions s JOIN users u ON u.id = s.user_id
             WHERE s.revoked_at IS NULL AND u.email = 'disable@example.com'"
        )
        .await,
        0,
        "revoked in the same transaction, not merely hidden"
    );
    assert_eq!(
        bystander.get("/account").await.status,
        200,
        "only that account"
    );
    assert_eq!(
        app.login(&app.browser(), "disable@example.com", PASSWORD)
            .await
            .status,
        401
    );
    let (ok, out, _) = app.cli(&["user", "disable", "--email", "disable@example.com"], &[]);
    assert!(ok);
    assert!(out.contains("\"changed\":false"));

    let (ok, _, err) = app.cli(&["user", "enable", "--email", "disable@example.com"], &[]);
    assert!(ok, "{err}");
    assert_eq!(
        app.login(&app.browser(), "disable@example.com", PASSWORD)
            .await
            .status,
        303
    );
    let kinds: Vec<String> = sqlx::query_scalar(
        "SELECT kind FROM security_events WHERE actor = 'admin' ORDER BY at, kind",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert_eq!(
        kinds,
        [
            "user_disabled",
            "session_revoked",
            "session_revoked",
            "user_enabled"
        ],
        "{kinds:?}"
    );
}

#[tokio::test]
async fn keys_reencrypt_moves_every_sealed_value_to_the_current_key() {
    let app = devices_app().await;
    let a = browser_at(&app, UA, "192.0.2.30");
    app.register(&a, "rotate@example.com", PASSWORD).await;
    let b = browser_at(&app, UA, "198.51.100.30");
    crate::otp::login_completing_code(&app, &b, "rotate@example.com").await;

    let old = app.settings.secret_key.as_ref().unwrap();
    let old_b64 = base64::engine::general_purpose::STANDARD.encode(old.expose());
    let new_b64 = random_key();
    let new = gatehouse::settings::SecretKey::parse(&new_b64).unwrap();
    let new_only = gatehouse::crypto::Keys::new(&new, &[]);
    let with_old = gatehouse::crypto::Keys::new(&new, std::slice::from_ref(old));
    let ips = || async {
        sqlx::query_scalar::<_, Vec<u8>>("SELECT ip_enc FROM sessions")
            .fetch_all(&app.db)
            .await
            .unwrap()
    };
    for ip in ips().await {
        assert!(
            with_old.open("sessions.ip", &ip).is_ok(),
            "readable with the old key listed"
        );
        assert!(new_only.open("sessions.ip", &ip).is_err());
    }
    let rotated = [
        ("GATEHOUSE_SECRET_KEY", new_b64.as_str()),
        ("GATEHOUSE_OLD_SECRET_KEYS", old_b64.as_str()),
    ];
    // The rotated configuration still reads what the old key sealed.
    let (ok, out, err) = app.cli(
        &["sessions", "list", "--user", "rotate@example.com"],
        &rotated,
    );
    assert!(ok, "{err}");
    assert!(out.contains("198.51.100.30"), "{out}");

    let (ok, out, err) = app.cli(&["keys", "reencrypt"], &rotated);
    assert!(ok, "{err}");
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(report["rewritten"].as_u64().unwrap() >= 4, "{out}");
    assert_eq!(report["unreadable"], 0);
    assert_eq!(report["remaining"], 0, "nothing is left under the old key");

    // Now the new key alone opens everything.
    for ip in ips().await {
        assert!(new_only.open("sessions.ip", &ip).is_ok());
    }
    type Sealed = (Option<Vec<u8>>, Option<Vec<u8>>, Option<Vec<u8>>);
    let events: Vec<Sealed> =
        sqlx::query_as("SELECT ip_enc, user_agent_enc, location_enc FROM security_events")
            .fetch_all(&app.db)
            .await
            .unwrap();
    for (ip, ua, loc) in events {
        for (ctx, v) in [
            ("security_events.ip", ip),
            ("security_events.user_agent", ua),
            ("security_events.location", loc),
        ] {
            if let Some(v) = v {
                assert!(new_only.open(ctx, &v).is_ok(), "{ctx}");
            }
        }
    }
    let labels: Vec<Vec<u8>> = sqlx::query_scalar("SELECT label_enc FROM devices")
        .fetch_all(&app.db)
        .await
        .unwrap();
    for l in labels {
        assert_eq!(
            new_only.open("devices.label", &l).unwrap(),
            b"Firefox on Linux"
        );
    }
    // The "seen before" HMACs were recomputed under the new key.
    let macs: Vec<Vec<u8>> = sqlx::query_scalar("SELECT ip_mac FROM sessions")
        .fetch_all(&app.db)
        .await
        .unwrap();
    for m in macs {
        assert_eq!(&m[..4], &new_only.current_key_id());
    }
    let sydney = new_only.mac("seen/ip", b"198.51.100.30");
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) FROM sessions WHERE ip_mac = '\\x{}'::bytea",
            sydney
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        ))
        .await,
        1
    );
    // And the old key can go: the listing works with the new key alone.
    let (ok, out, err) = app.cli(
        &["sessions", "list", "--user", "rotate@example.com"],
        &[("GATEHOUSE_SECRET_KEY", new_b64.as_str())],
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("198.51.100.30") && out.contains("Sydney, Australia"),
        "{out}"
    );
    // Running it again finds nothing left to do.
    let (ok, out, _) = app.cli(&["keys", "reencrypt"], &rotated);
    assert!(ok);
    assert!(out.contains("\"rewritten\":0"), "{out}");
}

#[tokio::test]
async fn a_missing_geoip_database_stops_start_up_with_one_line_naming_the_key() {
    let app = devices_app().await;
    let (ok, _, err) = app.cli(
        &["sessions", "list", "--user", "x@example.com"],
        &[("GATEHOUSE_GEOIP_DB", "/nonexistent/GeoLite2-City.mmdb")],
    );
    assert!(!ok);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("GATEHOUSE_GEOIP_DB"), "{err}");
    assert!(err.contains("/nonexistent/GeoLite2-City.mmdb"), "{err}");
    let garbage = std::env::temp_dir().join(format!("gatehouse-bad-{}.mmdb", uuid::Uuid::new_v4()));
    std::fs::write(&garbage, b"not a database").unwrap();
    let (ok, _, err) = app.cli(
        &["sessions", "list", "--user", "x@example.com"],
        &[("GATEHOUSE_GEOIP_DB", &garbage.display().to_string())],
    );
    assert!(!ok);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("GATEHOUSE_GEOIP_DB"), "{err}");
    let _ = std::fs::remove_file(garbage);
}

#[tokio::test]
async fn housekeeping_deletes_what_no_rule_needs_and_counts_it() {
    let app = spawn_app_with(Options {
        frozen_clock: true,
        extra: vec![
            ("GATEHOUSE_HOUSEKEEPING_INTERVAL", "100ms".into()),
            ("GATEHOUSE_EVENT_RETENTION", "90d".into()),
            (
                "GATEHOUSE_GEOIP_DB",
                geoip_fixture::write_fixture().display().to_string(),
            ),
        ],
        ..Options::default()
    })
    .await;
    let a = app.signed_in("sweep@example.com").await;
    let csrf = a.get("/account").await.csrf();
    a.post_form("/logout", &[("csrf_token", &csrf)]).await;
    let live = app.signed_in("keep@example.com").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Nothing is due yet.
    assert_eq!(app.count("SELECT count(*) FROM sessions").await, 2);

    // 31 days on: the signed-out session's grace is over; the live one expired too
    // (12 h absolute) and goes as well. Events stay (90 days).
    app.clock.advance(Duration::from_secs(31 * 86400));
    app.wait_until("SELECT count(*) FROM sessions", 0).await;
    assert!(app.count("SELECT count(*) FROM security_events").await > 0);
    assert!(live.get("/account").await.is_sign_in_redirect());
    // 100 days on: the events are past retention.
    app.clock.advance(Duration::from_secs(70 * 86400));
    app.wait_until("SELECT count(*) FROM security_events", 0)
        .await;
    // The round's counts are added once the round is over.
    assert!(
        app.wait_for_metric(
            "gatehouse_housekeeping_deleted_total{kind=\"sessions\"}",
            2.0
        )
        .await
            >= 2.0
    );
    assert!(
        app.wait_for_metric("gatehouse_housekeeping_deleted_total{kind=\"events\"}", 4.0)
            .await
            >= 4.0
    );
    assert!(app.metric("gatehouse_housekeeping_runs_total").await >= 2.0);
    // The accounts themselves are never housekeeping's business.
    assert_eq!(app.count("SELECT count(*) FROM users").await, 2);
}
