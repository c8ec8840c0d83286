//! Devices: the device cookie, what is known about each sign-in, the device list, its
//! three revocations, the activity history and the new-device notice.

use crate::geoip_fixture::{self, UNKNOWN_ADDRESS};
use crate::helpers::{Browser, Options, PASSWORD, TestApp, spawn_app_with};

const FIREFOX: &str =
    "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";
const IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1";
const WINDOWS: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36";

const BERLIN_IP: &str = "192.0.2.10";
const SYDNEY_IP: &str = "198.51.100.7";

/// Behind a trusted proxy (the test client is 127.0.0.1), with the GeoIP fixture.
pub async fn devices_app() -> TestApp {
    let geoip = geoip_fixture::write_fixture();
    spawn_app_with(Options {
        trusted_proxies: Some("127.0.0.1/32".into()),
        extra: vec![("GATEHOUSE_GEOIP_DB", geoip.display().to_string())],
        ..Options::default()
    })
    .await
}

/// A browser with its own cookie jar, user agent and (through the proxy) address.
pub fn browser_at(app: &TestApp, user_agent: &str, ip: &str) -> Browser {
    let mut b = app.browser();
    b.extra_headers
        .push(("user-agent".into(), user_agent.into()));
    b.extra_headers.push(("x-forwarded-for".into(), ip.into()));
    b
}

/// alice in three browsers: Firefox in Berlin (registered there), Safari on an
/// iPhone in Sydney, Chrome on Windows at an address the database does not know.
async fn three_browsers(app: &TestApp) -> (Browser, Browser, Browser) {
    let a = browser_at(app, FIREFOX, BERLIN_IP);
    assert_eq!(
        app.register(&a, "alice@example.com", PASSWORD).await.status,
        303
    );
    let b = browser_at(app, IPHONE, SYDNEY_IP);
    assert_eq!(
        crate::otp::login_completing_code(app, &b, "alice@example.com")
            .await
            .status,
        303
    );
    let c = browser_at(app, WINDOWS, UNKNOWN_ADDRESS);
    assert_eq!(
        crate::otp::login_completing_code(app, &c, "alice@example.com")
            .await
            .status,
        303
    );
    (a, b, c)
}

fn signed_in(r: &crate::helpers::Resp) -> bool {
    r.status == 200
}

/// The `<li class="device…">` blocks of the device list, in order.
fn rows(body: &str) -> Vec<String> {
    body.split("<li class=\"device")
        .skip(1)
        .map(|s| s.split("</li>").next().unwrap_or_default().to_string())
        .collect()
}

fn session_id_in(row: &str) -> String {
    let start = row.find("/account/devices/").expect("a revoke form") + "/account/devices/".len();
    row[start..start + 36].to_string()
}

#[tokio::test]
async fn the_device_list_shows_each_browser_with_its_label_place_and_this_device() {
    // D4
    let app = devices_app().await;
    let (a, b, c) = three_browsers(&app).await;
    // The viewing browser is listed first.
    let page = a.get("/account/devices").await;
    assert_eq!(page.status, 200, "{}", page.body);
    let rows = rows(&page.body);
    assert_eq!(rows.len(), 3, "{}", page.body);
    assert!(rows[0].contains("Firefox on Linux"), "{}", rows[0]);
    assert!(rows[0].contains("Berlin, Germany"), "{}", rows[0]);
    assert!(rows[0].contains(BERLIN_IP));
    assert!(rows[0].contains("This device"));
    assert!(rows[0].contains("Computer"));
    let iphone = rows
        .iter()
        .find(|r| r.contains("Safari on iPhone"))
        .expect("the iPhone row");
    assert!(iphone.contains("Sydney, Australia"), "{iphone}");
    assert!(iphone.contains(SYDNEY_IP));
    assert!(iphone.contains("Phone"));
    let windows = rows
        .iter()
        .find(|r| r.contains("Chrome on Windows 10"))
        .expect("the Windows row");
    assert!(windows.contains("Unknown location"), "{windows}");
    assert!(windows.contains(UNKNOWN_ADDRESS));
    assert_eq!(page.body.matches("This device").count(), 1);
    for r in &rows {
        assert!(r.contains("Password"), "how they proved themselves: {r}");
        assert!(r.contains(" ago") || r.contains("just now"), "{r}");
    }
    // Seen from the iPhone, "This device" moves to its row.
    let from_b = b.get("/account/devices").await;
    let b_rows = rows_of(&from_b.body);
    let mine = b_rows.iter().find(|r| r.contains("This device")).unwrap();
    assert!(mine.contains("Safari on iPhone"));

    // No token, and no hash of one, is on the page.
    for browser in [&a, &b, &c] {
        let token = app.session_cookie(browser).unwrap();
        assert!(!page.body.contains(&token));
        let device = browser.cookie(app.device_cookie_name()).unwrap();
        assert!(!page.body.contains(&device));
    }
    let hashes: Vec<Vec<u8>> = sqlx::query_scalar("SELECT token_hash FROM sessions")
        .fetch_all(&app.db)
        .await
        .unwrap();
    for h in hashes {
        let hex: String = h.iter().map(|b| format!("{b:02x}")).collect();
        assert!(!page.body.contains(&hex));
    }
    // A dead session is gone from the list.
    let csrf = c.get("/account").await.csrf();
    assert_eq!(
        c.post_form("/logout", &[("csrf_token", &csrf)])
            .await
            .status,
        303
    );
    let after = a.get("/account/devices").await;
    assert_eq!(rows_of(&after.body).len(), 2);
    assert!(!after.body.contains("Chrome on Windows 10"));
}

fn rows_of(body: &str) -> Vec<String> {
    rows(body)
}

#[tokio::test]
async fn revoking_one_device_signs_out_exactly_that_browser_on_its_next_request() {
    // D1
    let app = devices_app().await;
    let (a, b, c) = three_browsers(&app).await;
    let page = a.get("/account/devices").await;
    let b_row = rows(&page.body)
        .into_iter()
        .find(|r| r.contains("Safari on iPhone"))
        .unwrap();
    let b_id = session_id_in(&b_row);
    let b_cookie = app.session_cookie(&b).unwrap();
    let done = a
        .post_form(
            &format!("/account/devices/{b_id}/revoke"),
            &[("csrf_token", &page.csrf())],
        )
        .await;
    assert_eq!(done.status, 303);
    assert_eq!(done.location(), "/account/devices?done=revoked");
    // 20 requests in parallel with the revoked cookie, all sent after the revoke
    // returned: not one gets through.
    let copies: Vec<Browser> = (0..20)
        .map(|_| {
            let x = browser_at(&app, IPHONE, SYDNEY_IP);
            x.set_cookie(app.session_cookie_name(), &b_cookie);
            x
        })
        .collect();
    let answers = futures_util::future::join_all(copies.iter().map(|x| x.get("/account"))).await;
    for r in &answers {
        assert!(r.is_sign_in_redirect(), "{} {}", r.status, r.body);
        assert!(
            r.raw_set_cookie(app.session_cookie_name())
                .is_some_and(|c| c.contains("Max-Age=0")),
            "the dead cookie is cleared"
        );
    }
    // The revoked browser's next request of any kind: signed out, cookie cleared.
    let post = b
        .post_form("/account/devices/revoke-others", &[("csrf_token", "x")])
        .await;
    assert_eq!(post.status, 401);
    assert!(app.session_cookie(&b).is_none(), "cleared");
    assert!(b.get("/account").await.is_sign_in_redirect());
    // The others are untouched.
    assert!(signed_in(&a.get("/account").await));
    assert!(signed_in(&c.get("/account").await));
    let list = a.get(&done.location()).await;
    assert!(list.body.contains("The device was signed out."));
    assert_eq!(rows(&list.body).len(), 2);
    let reason: String =
        sqlx::query_scalar("SELECT revoked_reason FROM sessions WHERE id = $1::uuid")
            .bind(&b_id)
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(reason, "signed out from the device list");
}

#[tokio::test]
async fn sign_out_all_other_devices_keeps_only_this_browser() {
    // D2
    let app = devices_app().await;
    let (a, b, c) = three_browsers(&app).await;
    let bob = app.signed_in("bob@example.com").await;
    let csrf = a.get("/account/devices").await.csrf();
    let done = a
        .post_form("/account/devices/revoke-others", &[("csrf_token", &csrf)])
        .await;
    assert_eq!(done.status, 303);
    assert!(b.get("/account").await.is_sign_in_redirect());
    assert!(c.get("/account").await.is_sign_in_redirect());
    assert!(signed_in(&a.get("/account").await));
    assert!(
        signed_in(&bob.get("/account").await),
        "another user is untouched"
    );
    let list = a.get(&done.location()).await;
    assert_eq!(rows(&list.body).len(), 1);
    assert!(list.body.contains("All other devices were signed out."));
}

#[tokio::test]
async fn sign_out_everywhere_ends_this_session_too() {
    // D2
    let app = devices_app().await;
    let (a, b, c) = three_browsers(&app).await;
    let bob = app.signed_in("bob@example.com").await;
    let csrf = a.get("/account/devices").await.csrf();
    let done = a
        .post_form("/account/devices/revoke-all", &[("csrf_token", &csrf)])
        .await;
    assert_eq!(done.status, 303);
    assert_eq!(done.location(), "/login");
    assert!(
        app.session_cookie(&a).is_none(),
        "this browser's cookie is cleared"
    );
    for x in [&a, &b, &c] {
        assert!(x.get("/account").await.is_sign_in_redirect());
    }
    let live = app
        .count("SELECT count(*) FROM sessions WHERE revoked_at IS NULL")
        .await;
    assert_eq!(live, 1, "only bob's session is left");
    assert!(signed_in(&bob.get("/account").await));
    // The device cookie outlives the sessions: the next sign-in is a known device.
    assert!(a.cookie(app.device_cookie_name()).is_some());
}

#[tokio::test]
async fn another_users_session_id_answers_like_an_unknown_one_and_changes_nothing() {
    // D3
    let app = devices_app().await;
    let alice = browser_at(&app, FIREFOX, BERLIN_IP);
    app.register(&alice, "alice@example.com", PASSWORD).await;
    let bob = browser_at(&app, IPHONE, SYDNEY_IP);
    app.register(&bob, "bob@example.com", PASSWORD).await;
    let bob_id = session_id_in(&rows(&bob.get("/account/devices").await.body)[0]);

    let csrf = alice.get("/account/devices").await.csrf();
    let mut answers = Vec::new();
    for id in [
        bob_id.as_str(),
        "00000000-0000-4000-8000-000000000000",
        "not-a-session",
        &bob_id.to_uppercase(),
        "%27%20OR%20%271%27%3D%271",
    ] {
        let r = alice
            .post_form(
                &format!("/account/devices/{id}/revoke"),
                &[("csrf_token", &csrf)],
            )
            .await;
        answers.push((r.status, r.page()));
    }
    for (status, body) in &answers {
        assert_eq!(*status, 404);
        assert_eq!(body, &answers[0].1, "the same page, word for word");
    }
    assert!(
        signed_in(&bob.get("/account").await),
        "bob's session still works"
    );
    assert_eq!(
        app.count("SELECT count(*) FROM sessions WHERE revoked_at IS NOT NULL")
            .await,
        0
    );
    // A GET of the action's address is no way in either.
    let get = alice
        .get(&format!("/account/devices/{bob_id}/revoke"))
        .await;
    assert!(get.status == 404 || get.status == 405, "{}", get.status);
    assert!(signed_in(&bob.get("/account").await));
}

#[tokio::test]
async fn revoking_needs_the_forms_csrf_token() {
    let app = devices_app().await;
    let (a, b, _c) = three_browsers(&app).await;
    let b_id = session_id_in(
        &rows(&a.get("/account/devices").await.body)
            .into_iter()
            .find(|r| r.contains("iPhone"))
            .unwrap(),
    );
    for path in [
        format!("/account/devices/{b_id}/revoke"),
        "/account/devices/revoke-others".into(),
        "/account/devices/revoke-all".into(),
    ] {
        let r = a.post_form(&path, &[("csrf_token", "forged")]).await;
        assert_eq!(r.status, 403, "{path}");
    }
    assert!(signed_in(&b.get("/account").await));
    assert!(signed_in(&a.get("/account").await));
}

#[tokio::test]
async fn a_hostile_user_agent_is_shown_escaped() {
    // W5
    let app = devices_app().await;
    let evil = "\"><script>alert(1)</script>";
    let b = browser_at(&app, evil, BERLIN_IP);
    app.register(&b, "w5@example.com", PASSWORD).await;
    let page = b.get("/account/devices").await;
    assert_eq!(page.status, 200);
    assert!(
        !page.body.contains("<script>alert(1)</script>"),
        "{}",
        page.body
    );
    assert!(
        page.body
            .contains("&#60;script&#62;alert(1)&#60;/script&#62;"),
        "{}",
        page.body
    );
    assert!(page.body.contains("Unknown browser"));
}

#[tokio::test]
async fn x_forwarded_for_from_an_untrusted_peer_is_ignored() {
    // (Client address from the socket unless the peer is a trusted proxy; loopback is
    // looked up in the GeoIP database like any address.)
    let geoip = geoip_fixture::write_fixture();
    let app = spawn_app_with(Options {
        extra: vec![("GATEHOUSE_GEOIP_DB", geoip.display().to_string())],
        ..Options::default()
    })
    .await;
    let b = browser_at(&app, FIREFOX, BERLIN_IP);
    app.register(&b, "xff@example.com", PASSWORD).await;
    let row = rows(&b.get("/account/devices").await.body).remove(0);
    assert!(row.contains("127.0.0.1"), "{row}");
    assert!(!row.contains(BERLIN_IP));
    assert!(row.contains("Amsterdam, Netherlands"), "{row}");
}

/// `bytes` as PostgreSQL prints a bytea (`\x…` hex), to find plaintext inside one.
fn pg_hex(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn nothing_personal_or_secret_is_stored_in_the_clear() {
    // D4, DESIGN.md principle 2
    let app = devices_app().await;
    let (a, b, _c) = three_browsers(&app).await;
    let mut secrets: Vec<String> = vec![
        BERLIN_IP.into(),
        SYDNEY_IP.into(),
        UNKNOWN_ADDRESS.into(),
        "Berlin".into(),
        "Sydney".into(),
        "Germany".into(),
        "Firefox".into(),
        "iPhone".into(),
        "Mozilla/5.0".into(),
    ];
    for x in [&a, &b] {
        secrets.push(app.session_cookie(x).unwrap());
        secrets.push(x.cookie(app.device_cookie_name()).unwrap());
    }
    app.mail.wait_for("alice@example.com", 2).await;
    for table in [
        "sessions",
        "devices",
        "security_events",
        "users",
        "mail_outbox",
    ] {
        let dump: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT t::text FROM {table} t"
        )))
        .fetch_all(&app.db)
        .await
        .unwrap();
        assert!(!dump.is_empty(), "{table} has rows");
        for row in &dump {
            for s in &secrets {
                assert!(
                    !row.contains(s.as_str()),
                    "{table} holds {s:?} in the clear: {row}"
                );
                assert!(
                    !row.contains(&pg_hex(s)),
                    "{table} holds {s:?} as bytes: {row}"
                );
            }
        }
    }
    // What is sealed opens to the right values with the server's key.
    let keys = app.keys();
    let (ip, location): (Vec<u8>, Vec<u8>) = sqlx::query_as(
        "SELECT s.ip_enc, s.location_enc FROM sessions s
         JOIN devices d ON d.id = s.device_id WHERE d.device_type = 'phone'",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(keys.open("sessions.ip", &ip).unwrap(), SYDNEY_IP.as_bytes());
    let place: serde_json::Value =
        serde_json::from_slice(&keys.open("sessions.location", &location).unwrap()).unwrap();
    assert_eq!(place["city"], "Sydney");
    assert_eq!(place["country_code"], "AU");
    assert_eq!(place["accuracy_km"], 50);
    // The "seen before" column is a keyed HMAC, not a bare hash of the address.
    let ip_mac: Vec<u8> = sqlx::query_scalar(
        "SELECT s.ip_mac FROM sessions s JOIN devices d ON d.id = s.device_id WHERE d.device_type = 'phone'",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(ip_mac, keys.mac("seen/ip", SYDNEY_IP.as_bytes()));
    let bare: Vec<u8> = sqlx::query_scalar("SELECT sha256($1::bytea)")
        .bind(SYDNEY_IP.as_bytes())
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert!(!ip_mac.windows(bare.len()).any(|w| w == bare.as_slice()));
}

#[tokio::test]
async fn the_device_cookie_survives_sign_out_and_marks_the_browser_as_known() {
    let app = devices_app().await;
    let a = browser_at(&app, FIREFOX, BERLIN_IP);
    let r = app.register(&a, "known@example.com", PASSWORD).await;
    let set = r
        .raw_set_cookie(app.device_cookie_name())
        .expect("set at sign-in");
    for attr in [
        "HttpOnly",
        "SameSite=Lax",
        "Secure",
        "Path=/",
        "Max-Age=31536000",
    ] {
        assert!(set.contains(attr), "{set} lacks {attr}");
    }
    assert!(set.starts_with("__Host-gatehouse_device="));
    let device = a.cookie(app.device_cookie_name()).unwrap();
    let csrf = a.get("/account").await.csrf();
    a.post_form("/logout", &[("csrf_token", &csrf)]).await;
    assert_eq!(
        a.cookie(app.device_cookie_name()).as_deref(),
        Some(device.as_str())
    );
    assert_eq!(
        crate::otp::login_completing_code(&app, &a, "known@example.com")
            .await
            .status,
        303
    );
    assert_eq!(
        a.cookie(app.device_cookie_name()).as_deref(),
        Some(device.as_str())
    );
    assert_eq!(app.count("SELECT count(*) FROM devices").await, 1);
    assert_eq!(
        app.count("SELECT count(DISTINCT device_id) FROM sessions")
            .await,
        1,
        "both sign-ins are one device"
    );
    // Only its hash is stored.
    let stored = app
        .count(&format!(
            "SELECT count(*) FROM devices WHERE token_hash = sha256('{device}'::bytea)"
        ))
        .await;
    assert_eq!(stored, 1);
    // Known device, no notice (and the registration, the first sign-in ever, sent none).
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(app.mail.to("known@example.com").is_empty());
}

#[tokio::test]
async fn a_new_device_gets_a_notice_naming_device_place_and_time() {
    let app = devices_app().await;
    let (_a, _b, _c) = three_browsers(&app).await;
    app.mail
        .wait_for_subject("alice@example.com", "New sign-in to your account")
        .await;
    let notices = || {
        app.mail
            .to("alice@example.com")
            .into_iter()
            .filter(|m| m.subject() == "New sign-in to your account")
            .collect::<Vec<_>>()
    };
    for _ in 0..50 {
        if notices().len() >= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let mails = notices();
    let iphone = mails
        .iter()
        .find(|m| m.text().contains("Safari on iPhone"))
        .expect("a notice for the iPhone");
    assert_eq!(iphone.subject(), "New sign-in to your account");
    let text = iphone.text();
    assert!(text.contains("Sydney, Australia"), "{text}");
    assert!(text.contains(SYDNEY_IP));
    assert!(text.contains(" UTC"));
    assert!(text.contains("https://gatehouse.test/account/devices"));
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        notices().len(),
        2,
        "one per new device; none for the registration's own browser"
    );
    assert_eq!(
        app.count("SELECT count(*) FROM security_events WHERE kind = 'new_device'")
            .await,
        2
    );
}

#[tokio::test]
async fn a_device_cookie_gatehouse_never_issued_is_ignored() {
    let app = devices_app().await;
    let a = browser_at(&app, FIREFOX, BERLIN_IP);
    app.register(&a, "plant@example.com", PASSWORD).await;
    let b = browser_at(&app, IPHONE, SYDNEY_IP);
    let planted = "A".repeat(43);
    b.set_cookie(app.device_cookie_name(), &planted);
    assert_eq!(
        crate::otp::login_completing_code(&app, &b, "plant@example.com")
            .await
            .status,
        303
    );
    let now = b.cookie(app.device_cookie_name()).unwrap();
    assert_ne!(now, planted, "a new cookie replaces the planted one");
    assert_eq!(app.count("SELECT count(*) FROM devices").await, 2);
    app.mail
        .wait_for_subject("plant@example.com", "New sign-in to your account")
        .await;
    // A cookie issued to another account's browser is no known device of this one
    // either: a second account in the same browser gets a device and a cookie of its
    // own.
    let csrf = b.get("/account").await.csrf();
    b.post_form("/logout", &[("csrf_token", &csrf)]).await;
    app.register(&b, "second@example.com", PASSWORD).await;
    assert_ne!(b.cookie(app.device_cookie_name()).unwrap(), now);
    assert_eq!(app.count("SELECT count(*) FROM devices").await, 3);
    // And back: plant@'s sign-in there is a new device for plant@ again (notice).
    let csrf = b.get("/account").await.csrf();
    b.post_form("/logout", &[("csrf_token", &csrf)]).await;
    crate::otp::login_completing_code(&app, &b, "plant@example.com").await;
    assert_eq!(
        app.count("SELECT count(*) FROM security_events e JOIN users u ON u.id = e.user_id WHERE u.email = 'plant@example.com' AND e.kind = 'new_device'").await,
        2
    );
}

#[tokio::test]
async fn the_activity_page_lists_events_newest_first_a_page_at_a_time() {
    let app = spawn_app_with(Options {
        trusted_proxies: Some("127.0.0.1/32".into()),
        login_max_failures: 100,
        extra: vec![(
            "GATEHOUSE_GEOIP_DB",
            geoip_fixture::write_fixture().display().to_string(),
        )],
        ..Options::default()
    })
    .await;
    let a = browser_at(&app, FIREFOX, BERLIN_IP);
    app.register(&a, "history@example.com", PASSWORD).await;
    let attacker = browser_at(&app, WINDOWS, SYDNEY_IP);
    for _ in 0..30 {
        assert_eq!(
            app.login(&attacker, "history@example.com", "wrong password!")
                .await
                .status,
            401
        );
    }
    let first = a.get("/account/activity").await;
    assert_eq!(first.status, 200);
    let events = first.body.matches("<li class=\"event\">").count();
    assert_eq!(events, 25, "a page holds 25");
    assert!(first.body.contains("Failed sign-in"));
    assert!(first.body.contains("Chrome on Windows 10"));
    assert!(first.body.contains("Sydney, Australia"));
    assert!(
        !first.body.contains("Account created"),
        "the oldest is on the next page"
    );
    let start = first
        .body
        .find("/account/activity?before=")
        .expect("an older page");
    let link = &first.body[start..start + "/account/activity?before=".len() + 36];
    let second = a.get(link).await;
    assert_eq!(second.status, 200);
    assert_eq!(second.body.matches("<li class=\"event\">").count(), 7);
    assert!(second.body.contains("Account created"));
    assert!(second.body.contains("Signed in"));
    assert!(second.body.contains("Berlin, Germany"));
    assert!(
        !second.body.contains("/account/activity?before="),
        "no third page"
    );
    // Newest first: the first page starts with the latest failure.
    let first_title = first.body.split("<li class=\"event\">").nth(1).unwrap();
    assert!(first_title.contains("Failed sign-in"));

    // A cursor that is malformed, unknown or someone else's: 404, nothing shown.
    let other = app.signed_in("other@example.com").await;
    let theirs: uuid::Uuid =
        sqlx::query_scalar("SELECT e.id FROM security_events e JOIN users u ON u.id = e.user_id WHERE u.email = 'other@example.com' LIMIT 1")
            .fetch_one(&app.db)
            .await
            .unwrap();
    for cursor in [
        "nope",
        "00000000-0000-4000-8000-000000000000",
        &theirs.to_string(),
    ] {
        let r = a.get(&format!("/account/activity?before={cursor}")).await;
        assert_eq!(r.status, 404, "{cursor}");
    }
    assert!(signed_in(&other.get("/account/activity").await));
}

#[tokio::test]
async fn revocations_appear_in_the_history_with_who_did_them() {
    let app = devices_app().await;
    let (a, b, _c) = three_browsers(&app).await;
    let page = a.get("/account/devices").await;
    let b_id = session_id_in(
        &rows(&page.body)
            .into_iter()
            .find(|r| r.contains("iPhone"))
            .unwrap(),
    );
    a.post_form(
        &format!("/account/devices/{b_id}/revoke"),
        &[("csrf_token", &page.csrf())],
    )
    .await;
    let (ok, _, err) = app.cli(&["sessions", "revoke", "--user", "alice@example.com"], &[]);
    assert!(ok, "{err}");
    let history = a.get("/account/activity").await;
    assert!(b.get("/account").await.is_sign_in_redirect());
    // a's own session was ended by the operator too.
    assert!(history.is_sign_in_redirect());
    assert_eq!(
        crate::otp::login_completing_code(&app, &a, "alice@example.com")
            .await
            .status,
        303
    );
    let history = a.get("/account/activity").await;
    assert!(
        history.body.contains("signed out from the device list"),
        "{}",
        history.body
    );
    assert!(history.body.contains("by an administrator"));
    assert!(history.body.contains("ended by an administrator"));
    assert!(history.body.contains("Sign-in from a new device"));
}

#[tokio::test]
async fn revoking_while_the_database_is_down_fails_closed() {
    // R2
    let app = spawn_app_with(Options {
        db_proxy: true,
        ..Options::default()
    })
    .await;
    let a = app.signed_in("r2@example.com").await;
    let b = app.browser();
    crate::otp::login_completing_code(&app, &b, "r2@example.com").await;
    let page = a.get("/account/devices").await;
    let b_id = session_id_in(
        &rows(&page.body)
            .into_iter()
            .find(|r| !r.contains("This device"))
            .unwrap(),
    );
    let proxy = app.proxy.as_ref().unwrap();
    proxy.cut();
    for path in [
        format!("/account/devices/{b_id}/revoke"),
        "/account/devices/revoke-others".into(),
        "/account/devices/revoke-all".into(),
    ] {
        let r = a.post_form(&path, &[("csrf_token", &page.csrf())]).await;
        assert_eq!(
            r.status, 503,
            "{path}: never a success while the database is away"
        );
    }
    let list = a.get("/account/devices").await;
    assert_eq!(
        list.status, 503,
        "a valid cookie is not let through unchecked"
    );
    proxy.restore();
    // Nothing happened meanwhile; the revoke works once the database is back.
    assert!(signed_in(&b.get("/account").await));
    let r = a
        .post_form(
            &format!("/account/devices/{b_id}/revoke"),
            &[("csrf_token", &page.csrf())],
        )
        .await;
    assert_eq!(r.status, 303);
    assert!(b.get("/account").await.is_sign_in_redirect());
}
