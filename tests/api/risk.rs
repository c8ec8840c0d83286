//! Contextual sign-in checks over HTTP, with the GeoIP fixture (Berlin, Sydney,
//! loopback in Amsterdam) and client addresses from a trusted proxy: who is asked for
//! a code, what is flagged, who is told, and what an operator sees.

use std::net::IpAddr;
use std::time::Duration;

use crate::devices::browser_at;
use crate::geoip_fixture;
use crate::helpers::{Browser, Options, PASSWORD, TestApp, spawn_app_with};
use crate::oauth_helpers::{
    app_client, authorize_url, introspect, location_params, param, sign_in_app,
};
use crate::otp::{code_mails, enrol, totp, wait_code};

const FIREFOX: &str =
    "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";
const IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1";
const WINDOWS: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36";
const BERLIN_IP: &str = "192.0.2.10";
const BERLIN_IP_2: &str = "192.0.2.77";
const SYDNEY_IP: &str = "198.51.100.7";
const ALICE: &str = "alice@example.com";
const NEW_SIGN_IN: &str = "New sign-in to your account";

/// Behind a trusted proxy (the test client, 127.0.0.1), with the GeoIP fixture and
/// a clock that moves only when the test moves it.
async fn risk_app(extra: Vec<(&'static str, String)>) -> TestApp {
    let mut all = vec![(
        "GATEHOUSE_GEOIP_DB",
        geoip_fixture::write_fixture().display().to_string(),
    )];
    all.extend(extra);
    spawn_app_with(Options {
        trusted_proxies: Some("127.0.0.1/32".into()),
        frozen_clock: true,
        extra: all,
        ..Options::default()
    })
    .await
}

/// alice registers (her first sign-in ever) in Berlin, in Firefox.
async fn alice_at_home(app: &TestApp) -> Browser {
    let home = browser_at(app, FIREFOX, BERLIN_IP);
    let r = app.register(&home, ALICE, PASSWORD).await;
    assert_eq!(r.status, 303, "{}", r.body);
    home
}

fn mails_titled(app: &TestApp, subject: &str) -> usize {
    app.mail
        .to(ALICE)
        .iter()
        .filter(|m| m.subject() == subject)
        .count()
}

async fn live_sessions(app: &TestApp) -> i64 {
    app.count(
        "SELECT count(*) FROM sessions s JOIN users u ON u.id = s.user_id
         WHERE u.email = 'alice@example.com' AND s.revoked_at IS NULL",
    )
    .await
}

/// Finishes a half-finished sign-in with the e-mailed code (the `n`-th code mail).
async fn finish_with_mailed_code(app: &TestApp, b: &Browser, n: usize, extra: &[(&str, &str)]) {
    let page = b.get("/login/verify").await;
    assert_eq!(page.status, 200, "{}", page.body);
    let code = wait_code(app, ALICE, n).await;
    let mut form = vec![("csrf_token", page.csrf()), ("code", code)];
    for (k, v) in extra {
        form.push((k, v.to_string()));
    }
    let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let r = b.post_form("/login/verify", &form).await;
    assert_eq!(r.status, 303, "{}", r.body);
}

/// The same browser (cookie jar, user agent) seen from another address.
fn moved_to(b: &Browser, ip: &str) -> Browser {
    let mut moved = b.clone();
    moved.extra_headers.retain(|(k, _)| k != "x-forwarded-for");
    moved
        .extra_headers
        .push(("x-forwarded-for".into(), ip.into()));
    moved
}

/// The device-list row (`<li class="device…">`) whose text contains `needle`.
fn device_row(body: &str, needle: &str) -> String {
    body.split("<li class=\"device")
        .skip(1)
        .map(|s| s.split("</li>").next().unwrap_or_default().to_string())
        .find(|r| r.contains(needle))
        .unwrap_or_else(|| panic!("no device row with {needle:?} in {body}"))
}

#[tokio::test]
async fn the_first_sign_in_ever_passes_without_a_code_even_from_far_away() {
    // M7: no history, nothing to compare with.
    let app = risk_app(vec![]).await;
    let b = browser_at(&app, IPHONE, SYDNEY_IP);
    let r = app.register(&b, ALICE, PASSWORD).await;
    assert_eq!(r.status, 303);
    assert_eq!(r.location(), "/account");
    assert_eq!(b.get("/account").await.status, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(code_mails(&app, ALICE), 0);
    assert_eq!(
        mails_titled(&app, NEW_SIGN_IN),
        0,
        "no notice for the first"
    );
    assert_eq!(
        app.metric("gatehouse_risk_decisions_total{decision=\"allow\"}")
            .await,
        0.0,
        "registration is not a password sign-in"
    );
}

#[tokio::test]
async fn a_new_device_in_the_home_city_passes_and_mails_a_notice_naming_it() {
    // M7 (allow and notify), L9.
    let app = risk_app(vec![]).await;
    alice_at_home(&app).await;
    app.clock.advance(Duration::from_secs(600));
    let phone = browser_at(&app, IPHONE, BERLIN_IP_2);
    let r = app.login(&phone, ALICE, PASSWORD).await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.location(), "/account", "no code for a new device at home");
    let notice = app.mail.wait_for_subject(ALICE, NEW_SIGN_IN).await;
    let text = notice.text();
    assert!(text.contains("Safari on iPhone"), "{text}");
    assert!(text.contains("Berlin, Germany"), "{text}");
    assert!(text.contains(BERLIN_IP_2), "{text}");
    assert!(text.contains("/account/devices"), "{text}");
    assert!(text.contains("This wasn't me"), "{text}");
    assert_eq!(notice.token("/not-me").len(), 43);
    assert_eq!(code_mails(&app, ALICE), 0);
    assert_eq!(
        app.metric("gatehouse_risk_decisions_total{decision=\"notify\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn a_new_device_in_the_far_city_ten_minutes_later_needs_a_code_and_is_flagged() {
    // M7: new device + new country + impossible travel + two countries at once.
    let app = risk_app(vec![]).await;
    let home = alice_at_home(&app).await;
    app.clock.advance(Duration::from_secs(600));
    let far = browser_at(&app, IPHONE, SYDNEY_IP);
    let r = app.login(&far, ALICE, PASSWORD).await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.location(), "/login/verify");
    // No session exists before the code: only the Berlin one is live.
    assert_eq!(live_sessions(&app).await, 1);
    assert_eq!(far.get("/account").await.status, 303);
    finish_with_mailed_code(&app, &far, 1, &[]).await;
    assert_eq!(far.get("/account").await.status, 200);
    assert_eq!(live_sessions(&app).await, 2);

    // The owner's device list: the Sydney session carries its reasons...
    let page = home.get("/account/devices").await;
    assert_eq!(page.status, 200);
    let sydney = device_row(&page.body, "Sydney, Australia");
    assert!(sydney.contains("Unusual sign-in"), "{sydney}");
    assert!(sydney.contains("New country: Australia"), "{sydney}");
    assert!(
        sydney.contains("16,100 km from Berlin 10 minutes earlier"),
        "{sydney}"
    );
    // ...and the Berlin one is flagged too: two countries at once, one mail.
    let berlin = device_row(&page.body, "Berlin, Germany");
    assert!(
        berlin.contains("Also signed in from Australia at the same time"),
        "{berlin}"
    );
    app.mail
        .wait_for_subject(ALICE, "Unusual activity on your account")
        .await;
    // More requests from both places change nothing and mail nothing more.
    for _ in 0..3 {
        assert_eq!(home.get("/account").await.status, 200);
        assert_eq!(far.get("/account").await.status, 200);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(mails_titled(&app, "Unusual activity on your account"), 1);

    // The activity page shows the decision with its reasons.
    let activity = home.get("/account/activity").await;
    assert!(
        activity
            .body
            .contains("Second factor demanded: New device · New country · Impossible travel"),
        "{}",
        activity.body
    );
    assert_eq!(
        app.metric("gatehouse_risk_signals_total{signal=\"impossible_travel\"}")
            .await,
        1.0
    );
    // The Sydney session was born flagged but proven; its cookie used from Berlin
    // later is flagged again (one more mail) and must prove itself again.
    app.clock.advance(Duration::from_secs(60));
    let moved = moved_to(&far, BERLIN_IP_2);
    assert!(
        moved
            .get("/account")
            .await
            .location()
            .starts_with("/step-up")
    );
    assert!(far.get("/account").await.location().starts_with("/step-up"));
    for _ in 0..50 {
        if mails_titled(&app, "Unusual activity on your account") == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(mails_titled(&app, "Unusual activity on your account"), 2);
}

#[tokio::test]
async fn three_failures_then_the_right_password_from_a_new_device_demand_a_code() {
    // M7: unknown device + ≥ 3 recent failures (any device).
    let app = risk_app(vec![]).await;
    alice_at_home(&app).await;
    app.clock.advance(Duration::from_secs(3600));
    let other = browser_at(&app, WINDOWS, BERLIN_IP_2);
    for _ in 0..3 {
        let r = app.login(&other, ALICE, "not the password").await;
        assert_eq!(r.status, 401);
    }
    app.clock.advance(Duration::from_secs(60));
    let r = app.login(&other, ALICE, PASSWORD).await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.location(), "/login/verify");
    assert_eq!(live_sessions(&app).await, 1);
    // Two failures would not have done it (the control).
    let app = risk_app(vec![]).await;
    alice_at_home(&app).await;
    app.clock.advance(Duration::from_secs(3600));
    let other = browser_at(&app, WINDOWS, BERLIN_IP_2);
    for _ in 0..2 {
        assert_eq!(app.login(&other, ALICE, "nope nope nope").await.status, 401);
    }
    let r = app.login(&other, ALICE, PASSWORD).await;
    assert_eq!(r.location(), "/account");
}

#[tokio::test]
async fn a_spoofed_forwarded_for_from_an_untrusted_peer_cannot_make_a_risky_sign_in_look_familiar()
{
    // M8, Apereo CAS CVE-2023-4612: only 127.0.0.2 is a trusted proxy. alice lives in
    // Berlin (through the proxy); the attacker connects from 127.0.0.1 (Amsterdam, a
    // new country) and claims her Berlin address in every header it can.
    let app = spawn_app_with(Options {
        trusted_proxies: Some("127.0.0.2/32".into()),
        frozen_clock: true,
        extra: vec![(
            "GATEHOUSE_GEOIP_DB",
            geoip_fixture::write_fixture().display().to_string(),
        )],
        ..Options::default()
    })
    .await;
    let proxy: IpAddr = "127.0.0.2".parse().unwrap();
    let mut home = Browser::from_address(&app.address, proxy);
    home.extra_headers
        .push(("x-forwarded-for".into(), BERLIN_IP.into()));
    assert_eq!(app.register(&home, ALICE, PASSWORD).await.status, 303);
    app.clock.advance(Duration::from_secs(600));

    // The control: a new browser through the trusted proxy from Berlin is familiar
    // enough (a new device at home: allowed, notified).
    let mut neighbour = Browser::from_address(&app.address, proxy);
    neighbour
        .extra_headers
        .push(("x-forwarded-for".into(), BERLIN_IP_2.into()));
    let r = app.login(&neighbour, ALICE, PASSWORD).await;
    assert_eq!(r.location(), "/account");

    let mut attacker = app.browser();
    for (h, v) in [
        ("x-forwarded-for", BERLIN_IP),
        ("x-real-ip", BERLIN_IP),
        ("forwarded", "for=192.0.2.10"),
        ("user-agent", WINDOWS),
    ] {
        attacker.extra_headers.push((h.into(), v.into()));
    }
    let r = app.login(&attacker, ALICE, PASSWORD).await;
    assert_eq!(r.location(), "/login/verify", "still challenged");
    finish_with_mailed_code(&app, &attacker, 1, &[]).await;
    let page = attacker.get("/account/devices").await;
    let row = device_row(&page.body, "This device");
    assert!(row.contains("127.0.0.1"), "the peer's own address: {row}");
    assert!(row.contains("Amsterdam, Netherlands"), "{row}");
    assert!(row.contains("New country: Netherlands"), "{row}");
}

#[tokio::test]
async fn prompt_none_from_the_far_city_gets_no_code_and_an_interactive_request_steps_up() {
    // M7 on the SSO and prompt=none paths: alice's Berlin session, then the same
    // cookie used from Sydney.
    let app = risk_app(vec![]).await;
    let home = alice_at_home(&app).await;
    let client = app_client(&app);
    let silent = [("prompt", "none")];
    // At home, a silent sign-in to the app works (the control).
    let r = home.get(&authorize_url(&client, &silent)).await;
    assert!(
        param(&location_params(&r), "code").is_some(),
        "{}",
        r.location()
    );
    app.clock.advance(Duration::from_secs(600));
    let stolen = moved_to(&home, SYDNEY_IP);
    let r = stolen.get(&authorize_url(&client, &silent)).await;
    assert_eq!(r.status, 303, "{}", r.body);
    let params = location_params(&r);
    assert_eq!(
        param(&params, "error").as_deref(),
        Some("interaction_required")
    );
    assert!(param(&params, "code").is_none());
    // The session is flagged once, with one mail, and stays flagged for its owner too.
    app.mail
        .wait_for_subject(ALICE, "Unusual activity on your account")
        .await;
    let r = home.get(&authorize_url(&client, &silent)).await;
    assert_eq!(
        param(&location_params(&r), "error").as_deref(),
        Some("interaction_required"),
        "a flagged session signs in to no app silently"
    );
    // Nor does it show an account page (addresses and places are on them), to the
    // thief or the owner, until a second factor is proven.
    for b in [&stolen, &home] {
        let r = b.get("/account/activity").await;
        assert_eq!(r.location(), "/step-up?return_to=%2Faccount%2Factivity");
    }
    // Nor JSON, nor any form but "Sign out everywhere": not adding an authenticator
    // app, not signing the owner's other devices out.
    let json = stolen
        .send(
            stolen
                .request(reqwest::Method::GET, "/account/devices")
                .header("accept", "application/json"),
        )
        .await;
    assert_eq!(json.status, 403, "{}", json.body);
    assert!(!json.body.contains(BERLIN_IP), "{}", json.body);
    let csrf = stolen.get("/step-up?return_to=%2Faccount").await.csrf();
    for (path, form) in [
        (
            "/account/mfa",
            vec![("csrf_token", csrf.as_str()), ("action", "start")],
        ),
        (
            "/account/devices/revoke-others",
            vec![("csrf_token", csrf.as_str())],
        ),
        (
            "/account/password",
            vec![
                ("csrf_token", csrf.as_str()),
                ("current_password", PASSWORD),
                ("new_password", "a thief's new passphrase"),
                ("new_password_again", "a thief's new passphrase"),
            ],
        ),
    ] {
        let r = stolen.post_form(path, &form).await;
        assert_eq!(r.status, 403, "{path}: {}", r.body);
    }
    assert_eq!(app.count("SELECT count(*) FROM totp_credentials").await, 0);
    assert_eq!(live_sessions(&app).await, 1);
    // Interactively it asks for a second factor; once proven, the app gets its code.
    let r = home.get(&authorize_url(&client, &[])).await;
    assert_eq!(r.status, 303);
    assert!(r.location().starts_with("/step-up?"), "{}", r.location());
    crate::otp::step_up_by_email(&app, &home, ALICE, "/account").await;
    let page = home.get("/account/devices").await;
    assert_eq!(page.status, 200);
    assert!(
        page.body
            .contains("Used from Australia, another country than its sign-in"),
        "{}",
        page.body
    );
    let r = home.get(&authorize_url(&client, &silent)).await;
    assert!(
        param(&location_params(&r), "code").is_some(),
        "{}",
        r.location()
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(mails_titled(&app, "Unusual activity on your account"), 1);
}

#[tokio::test]
async fn this_wasnt_me_revokes_that_session_once_and_its_access_token_dies() {
    // L9, M7: the notice's one-click link.
    let app = risk_app(vec![]).await;
    alice_at_home(&app).await;
    let client = app_client(&app);
    app.clock.advance(Duration::from_secs(600));
    let intruder = browser_at(&app, WINDOWS, BERLIN_IP_2);
    assert_eq!(
        app.login(&intruder, ALICE, PASSWORD).await.location(),
        "/account"
    );
    let tokens = sign_in_app(&app, &intruder, &client, &[]).await;
    assert_eq!(
        introspect(&app, &client, &tokens.access).await["active"],
        true
    );
    let token = app
        .mail
        .wait_for_subject(ALICE, NEW_SIGN_IN)
        .await
        .token("/not-me");
    // The intruder signs in again from the same browser: a new session, and (a
    // known device now) no new notice. The link must end that one too.
    let csrf = intruder.get("/account").await.csrf();
    intruder
        .post_form("/logout", &[("csrf_token", &csrf)])
        .await;
    assert_eq!(
        app.login(&intruder, ALICE, PASSWORD).await.location(),
        "/account"
    );
    assert_eq!(mails_titled(&app, NEW_SIGN_IN), 1);
    let tokens = sign_in_app(&app, &intruder, &client, &[]).await;
    assert_eq!(
        introspect(&app, &client, &tokens.access).await["active"],
        true
    );

    // A mail scanner's GET changes nothing.
    let owner = app.browser();
    let page = owner.get(&format!("/not-me?token={token}")).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("Sign that device out"));
    assert_eq!(intruder.get("/account").await.status, 200);

    let r = owner.open_link(&format!("/not-me?token={token}")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("That device is signed out"), "{}", r.body);
    assert!(
        r.body.contains("/password/forgot"),
        "asks for a new password"
    );
    assert!(intruder.get("/account").await.is_sign_in_redirect());
    assert_eq!(
        introspect(&app, &client, &tokens.access).await["active"],
        false
    );
    // Once only.
    let again = owner.open_link(&format!("/not-me?token={token}")).await;
    assert_eq!(again.status, 400);
    let bogus = owner.open_link("/not-me?token=AAAA").await;
    assert_eq!(bogus.status, 400);
    assert_eq!(
        app.count("SELECT count(*) FROM security_events WHERE kind = 'reported_not_me'")
            .await,
        1
    );
    assert_eq!(
        live_sessions(&app).await,
        1,
        "only alice's own Berlin browser"
    );
    // The browser is forgotten: its next sign-in is a new device again (a notice).
    assert_eq!(app.count("SELECT count(*) FROM devices").await, 1);
    app.clock.advance(Duration::from_secs(600));
    assert_eq!(
        app.login(&intruder, ALICE, PASSWORD).await.location(),
        "/account"
    );
    app.mail.wait_for(ALICE, 2).await;
    for _ in 0..50 {
        if mails_titled(&app, NEW_SIGN_IN) == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(mails_titled(&app, NEW_SIGN_IN), 2);
}

#[tokio::test]
async fn a_trusted_browser_skips_the_code_only_while_every_condition_holds() {
    // M7 with "Trust this browser" (DESIGN.md): alice has an authenticator app.
    let app = risk_app(vec![]).await;
    let home = alice_at_home(&app).await;
    let enrolled = enrol(&app, &home, ALICE).await;
    let mut step = app.clock.now().unix_timestamp();
    let mut next_code = || {
        step += 30;
        app.clock.advance(Duration::from_secs(30));
        totp(&enrolled.secret, step)
    };
    let laptop = browser_at(&app, WINDOWS, BERLIN_IP_2);
    let sign_in = |b: &Browser| {
        let b = b.clone();
        let app = &app;
        async move { app.login(&b, ALICE, PASSWORD).await.location() }
    };
    let sign_out = |b: &Browser| {
        let b = b.clone();
        async move {
            let csrf = b.get("/account").await.csrf();
            b.post_form("/logout", &[("csrf_token", &csrf)]).await;
        }
    };
    // First time: the code, and "Trust this browser" ticked.
    assert_eq!(sign_in(&laptop).await, "/login/verify");
    let page = laptop.get("/login/verify").await;
    assert!(page.body.contains("Trust this browser for 30 days"));
    let r = laptop
        .post_form(
            "/login/verify",
            &[
                ("csrf_token", &page.csrf()),
                ("code", &next_code()),
                ("trust_browser", "on"),
            ],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let list = laptop.get("/account/devices").await;
    assert!(list.body.contains("Trusted browser"), "{}", list.body);
    assert!(list.body.contains("Trusted browsers"));
    sign_out(&laptop).await;

    // Later, from the same browser at home: no code, and only aal1.
    app.clock.advance(Duration::from_secs(3600));
    assert_eq!(sign_in(&laptop).await, "/account");
    let aal: String = sqlx::query_scalar(
        "SELECT aal FROM sessions WHERE revoked_at IS NULL ORDER BY created_at DESC LIMIT 1",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(aal, "aal1", "sensitive actions still need step-up");
    assert!(
        laptop
            .get("/account/password")
            .await
            .location()
            .starts_with("/step-up"),
        "a trusted sign-in is not a second factor"
    );
    sign_out(&laptop).await;

    // Any signal ends the skip: recent failures...
    for _ in 0..3 {
        assert_eq!(
            app.login(&laptop, ALICE, "wrong wrong wrong").await.status,
            401
        );
    }
    assert_eq!(sign_in(&laptop).await, "/login/verify");
    app.clock.advance(Duration::from_secs(16 * 60));
    assert_eq!(sign_in(&laptop).await, "/account", "failures aged out");
    sign_out(&laptop).await;
    // ...another country (the same browser, travelling)...
    let abroad = moved_to(&laptop, SYDNEY_IP);
    app.clock.advance(Duration::from_secs(48 * 3600));
    assert_eq!(sign_in(&abroad).await, "/login/verify");
    // ...and trust withdrawn on the device list (back home, still trusted).
    assert_eq!(sign_in(&laptop).await, "/account");
    let page = laptop.get("/account/devices").await;
    let device_id = page
        .body
        .split("/account/trusted/")
        .nth(1)
        .expect("a trusted browser listed")[..36]
        .to_string();
    let remove = format!("/account/trusted/{device_id}/remove");
    let r = laptop
        .post_form(&remove, &[("csrf_token", &page.csrf())])
        .await;
    assert_eq!(r.status, 303);
    // Gone: removing again, or a malformed id, is not found and changes nothing.
    let r = laptop
        .post_form(&remove, &[("csrf_token", &page.csrf())])
        .await;
    assert_eq!(r.status, 404);
    let r = laptop
        .post_form(
            "/account/trusted/not-an-id/remove",
            &[("csrf_token", &page.csrf())],
        )
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(
        app.count("SELECT count(*) FROM devices WHERE trusted_until IS NOT NULL")
            .await,
        0
    );
    sign_out(&laptop).await;
    assert_eq!(sign_in(&laptop).await, "/login/verify");
    assert!(
        app.count("SELECT count(*) FROM security_events WHERE kind = 'device_untrusted'")
            .await
            == 1
    );
    drop(home);
}

#[tokio::test]
async fn a_password_change_ends_every_trusted_browser() {
    let app = risk_app(vec![]).await;
    let home = alice_at_home(&app).await;
    let enrolled = enrol(&app, &home, ALICE).await;
    app.clock.advance(Duration::from_secs(30));
    let laptop = browser_at(&app, WINDOWS, BERLIN_IP_2);
    assert_eq!(
        app.login(&laptop, ALICE, PASSWORD).await.location(),
        "/login/verify"
    );
    let page = laptop.get("/login/verify").await;
    let code = totp(&enrolled.secret, app.clock.now().unix_timestamp());
    let r = laptop
        .post_form(
            "/login/verify",
            &[
                ("csrf_token", &page.csrf()),
                ("code", &code),
                ("trust_browser", "on"),
            ],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(
        app.count("SELECT count(*) FROM devices WHERE trusted_until IS NOT NULL")
            .await,
        1
    );
    // A reset by mail (the path of someone who lost control) clears it.
    let forgot = app.browser();
    let page = forgot.get("/password/forgot").await;
    forgot
        .post_form(
            "/password/forgot",
            &[("csrf_token", &page.csrf()), ("email", ALICE)],
        )
        .await;
    let token = app
        .mail
        .wait_for_subject(ALICE, "Reset your password")
        .await
        .token("/password/reset");
    let page = forgot.get(&format!("/password/reset?token={token}")).await;
    let r = forgot
        .post_form(
            "/password/reset",
            &[
                ("csrf_token", &page.csrf()),
                ("token", &token),
                ("password", "a brand new passphrase here"),
            ],
        )
        .await;
    assert!(r.status < 400, "{}", r.body);
    assert_eq!(
        app.count("SELECT count(*) FROM devices WHERE trusted_until IS NOT NULL")
            .await,
        0
    );
    let r = app
        .login(&laptop, ALICE, "a brand new passphrase here")
        .await;
    assert_eq!(r.location(), "/login/verify");
}

#[tokio::test]
async fn a_credential_stuffing_address_in_a_new_country_is_blocked_and_the_owner_told() {
    // M7 (deny): the address has failed on other accounts; the owner has never been
    // in Australia. Nothing is created, no code is mailed, a clear page says why.
    let app = risk_app(vec![("GATEHOUSE_RISK_IP_FAILURES", "3".into())]).await;
    alice_at_home(&app).await;
    app.clock.advance(Duration::from_secs(6 * 3600));
    let bot = browser_at(&app, WINDOWS, SYDNEY_IP);
    for victim in ["bob@example.com", "carol@example.com", "dave@example.com"] {
        assert_eq!(app.login(&bot, victim, "Summer2026!").await.status, 401);
    }
    let r = app.login(&bot, ALICE, PASSWORD).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.body.contains("This sign-in was blocked"), "{}", r.body);
    assert_eq!(live_sessions(&app).await, 1);
    assert!(bot.cookie(app.session_cookie_name()).is_none());
    let mail = app
        .mail
        .wait_for_subject(ALICE, "We blocked a sign-in to your account")
        .await;
    assert!(mail.text().contains("Sydney, Australia"), "{}", mail.text());
    assert_eq!(code_mails(&app, ALICE), 0);
    assert_eq!(
        app.count("SELECT count(*) FROM security_events WHERE kind = 'sign_in_denied'")
            .await,
        1
    );
    assert_eq!(
        app.metric("gatehouse_risk_decisions_total{decision=\"deny\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn operators_list_flagged_sessions_newest_first() {
    let app = spawn_app_with(Options {
        trusted_proxies: Some("127.0.0.1/32".into()),
        extra: vec![(
            "GATEHOUSE_GEOIP_DB",
            geoip_fixture::write_fixture().display().to_string(),
        )],
        ..Options::default()
    })
    .await;
    alice_at_home(&app).await;
    let far = browser_at(&app, IPHONE, SYDNEY_IP);
    assert_eq!(
        app.login(&far, ALICE, PASSWORD).await.location(),
        "/login/verify"
    );
    finish_with_mailed_code(&app, &far, 1, &[]).await;
    // Later, the Sydney session's cookie turns up in Berlin: flagged again, newest.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let moved = moved_to(&far, BERLIN_IP_2);
    assert!(
        moved
            .get("/account")
            .await
            .location()
            .starts_with("/step-up")
    );
    let (ok, out, err) = app.cli(&["sessions", "flagged"], &[]);
    assert!(ok, "{err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON lines"))
        .collect();
    assert_eq!(lines.len(), 2, "{out}");
    // Newest first, each naming alice, why, where and whether it still lives.
    for l in &lines {
        assert_eq!(l["user"], ALICE);
        assert!(l["revoked_at"].is_null());
    }
    assert_eq!(lines[0]["location"], "Sydney, Australia", "{out}");
    assert_eq!(lines[0]["ip"], SYDNEY_IP);
    assert_eq!(
        lines[0]["reason"],
        "Used from Germany, another country than its sign-in"
    );
    assert_eq!(lines[1]["location"], "Berlin, Germany");
    assert_eq!(
        lines[1]["reason"],
        "Also signed in from Australia at the same time"
    );
    assert!(lines[0]["flagged_at"].as_str() > lines[1]["flagged_at"].as_str());
    let (ok, out, _) = app.cli(&["sessions", "flagged", "--since", "1h"], &[]);
    assert!(ok);
    assert_eq!(out.lines().count(), 2);
    let (ok, out, _) = app.cli(
        &["sessions", "flagged", "--since", "2999-01-01T00:00:00Z"],
        &[],
    );
    assert!(ok);
    assert_eq!(out.lines().count(), 0);
    let (ok, _, err) = app.cli(&["sessions", "flagged", "--since", "yesterday-ish"], &[]);
    assert!(!ok);
    assert!(err.contains("--since"), "{err}");
}

#[tokio::test]
async fn a_traveller_who_proves_a_second_factor_abroad_is_not_asked_again_there() {
    // M7 without nagging: alice's own session, taken to Sydney, is flagged once; a
    // step-up there makes Sydney the session's place too.
    let app = risk_app(vec![]).await;
    let home = alice_at_home(&app).await;
    let client = app_client(&app);
    app.clock.advance(Duration::from_secs(20 * 60));
    let abroad = moved_to(&home, SYDNEY_IP);
    let r = abroad.get("/account").await;
    assert_eq!(r.location(), "/step-up?return_to=%2Faccount");
    app.clock.advance(Duration::from_secs(1));
    crate::otp::step_up_by_email(&app, &abroad, ALICE, "/account").await;
    app.clock.advance(Duration::from_secs(60));
    for _ in 0..3 {
        assert_eq!(abroad.get("/account").await.status, 200);
    }
    let r = abroad
        .get(&authorize_url(&client, &[("prompt", "none")]))
        .await;
    assert!(
        param(&location_params(&r), "code").is_some(),
        "{}",
        r.location()
    );
    // Home is still home.
    assert_eq!(home.get("/account").await.status, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(mails_titled(&app, "Unusual activity on your account"), 1);
    // Anywhere else is not.
    let third = moved_to(&home, "127.0.0.1");
    assert!(
        third
            .get("/account")
            .await
            .location()
            .starts_with("/step-up")
    );
}

#[tokio::test]
async fn trust_ends_with_a_shorter_setting_and_with_sign_out_everywhere() {
    let app = risk_app(vec![("GATEHOUSE_MFA_TRUST_DEVICE", "2h".into())]).await;
    let home = alice_at_home(&app).await;
    let enrolled = enrol(&app, &home, ALICE).await;
    // Each code for a later time step than the last one used.
    let code = || {
        app.clock.advance(Duration::from_secs(30));
        totp(&enrolled.secret, app.clock.now().unix_timestamp())
    };
    let laptop = browser_at(&app, WINDOWS, BERLIN_IP_2);
    let trust = |laptop: Browser, code: String| {
        let app = &app;
        async move {
            assert_eq!(
                app.login(&laptop, ALICE, PASSWORD).await.location(),
                "/login/verify"
            );
            let page = laptop.get("/login/verify").await;
            assert!(
                page.body.contains("Trust this browser for 2 hours"),
                "{}",
                page.body
            );
            let r = laptop
                .post_form(
                    "/login/verify",
                    &[
                        ("csrf_token", &page.csrf()),
                        ("code", &code),
                        ("trust_browser", "on"),
                    ],
                )
                .await;
            assert_eq!(r.status, 303, "{}", r.body);
            let csrf = laptop.get("/account").await.csrf();
            laptop.post_form("/logout", &[("csrf_token", &csrf)]).await;
        }
    };
    trust(laptop.clone(), code()).await;
    app.clock.advance(Duration::from_secs(3600));
    assert_eq!(
        app.login(&laptop, ALICE, PASSWORD).await.location(),
        "/account"
    );
    let csrf = laptop.get("/account").await.csrf();
    laptop.post_form("/logout", &[("csrf_token", &csrf)]).await;
    // Two hours after it was given, it is over.
    app.clock.advance(Duration::from_secs(3700));
    assert_eq!(
        app.login(&laptop, ALICE, PASSWORD).await.location(),
        "/login/verify"
    );
    // Trusted again, then "Sign out everywhere" from another browser ends it.
    trust(laptop.clone(), code()).await;
    let phone = browser_at(&app, IPHONE, BERLIN_IP);
    assert_eq!(
        app.login(&phone, ALICE, PASSWORD).await.location(),
        "/login/verify"
    );
    let page = phone.get("/login/verify").await;
    let r = phone
        .post_form(
            "/login/verify",
            &[("csrf_token", &page.csrf()), ("code", &code())],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let csrf = phone.get("/account/devices").await.csrf();
    let r = phone
        .post_form("/account/devices/revoke-all", &[("csrf_token", &csrf)])
        .await;
    assert_eq!(r.status, 303);
    assert_eq!(
        app.count("SELECT count(*) FROM devices WHERE trusted_until IS NOT NULL")
            .await,
        0
    );
    assert_eq!(
        app.login(&laptop, ALICE, PASSWORD).await.location(),
        "/login/verify"
    );
}
