//! Upstream sign-ins face the same contextual checks as a password sign-in: the
//! GeoIP fixture (Berlin, Sydney) and client addresses from a trusted proxy, as in
//! `risk.rs`; the second factor demanded is Gatehouse's own.

use crate::devices::browser_at;
use crate::geoip_fixture;
use crate::helpers::Options;
use crate::otp::wait_code;
use crate::upstream_rig::{LABEL, UP, Visitor, rig_with};

const FIREFOX: &str =
    "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";
const IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1";
const BERLIN_IP: &str = "192.0.2.10";
const SYDNEY_IP: &str = "198.51.100.7";
const ALICE: &str = "alice@example.com";

fn behind_a_proxy_with_geoip() -> Options {
    Options {
        trusted_proxies: Some("127.0.0.1/32".into()),
        extra: vec![(
            "GATEHOUSE_GEOIP_DB",
            geoip_fixture::write_fixture().display().to_string(),
        )],
        ..Options::default()
    }
}

async fn live_sessions(down: &crate::helpers::TestApp) -> i64 {
    down.count("SELECT count(*) FROM sessions WHERE revoked_at IS NULL")
        .await
}

#[tokio::test]
async fn a_federated_sign_in_from_far_away_right_after_one_at_home_asks_for_a_second_factor() {
    // U5
    let rig = rig_with(behind_a_proxy_with_geoip(), &[]).await;
    rig.up.person(ALICE, true);
    let home = Visitor::from(&rig.down, browser_at(&rig.down, FIREFOX, BERLIN_IP));
    let r = home.sign_in_with(UP, ALICE).await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.location(), "/account", "the first sign-in ever passes");

    // Moments later, a new device in Sydney, through the same upstream.
    let far = Visitor::from(&rig.down, browser_at(&rig.down, IPHONE, SYDNEY_IP));
    let r = far.sign_in_with(UP, ALICE).await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.location(), "/login/verify", "a second factor is demanded");
    assert_eq!(
        live_sessions(&rig.down).await,
        1,
        "no session before the code"
    );
    assert_eq!(far.down.get("/account").await.status, 303);

    // Gatehouse's own second factor: the e-mailed code (she has no authenticator).
    let page = far.down.get("/login/verify").await;
    assert_eq!(page.status, 200, "{}", page.body);
    let page = if page.body.contains("Send the code") {
        let sent = far
            .down
            .post_form(
                "/login/verify",
                &[("csrf_token", &page.csrf()), ("action", "email")],
            )
            .await;
        if sent.status == 303 {
            far.down.get("/login/verify").await
        } else {
            assert_eq!(sent.status, 200, "{}", sent.body);
            sent
        }
    } else {
        page
    };
    let code = wait_code(&rig.down, ALICE, 1).await;
    let r = far
        .down
        .post_form(
            "/login/verify",
            &[
                ("csrf_token", &page.csrf()),
                ("action", "verify"),
                ("code", &code),
            ],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(far.down.get("/account").await.status, 200);

    // The session remembers where it came from and what was proven.
    let (aal, amr, from_upstream, flagged): (String, Vec<String>, bool, bool) = sqlx::query_as(
        "SELECT aal, amr, upstream_id IS NOT NULL, risk_flagged FROM sessions
         WHERE revoked_at IS NULL ORDER BY created_at DESC LIMIT 1",
    )
    .fetch_one(&rig.down.db)
    .await
    .unwrap();
    assert_eq!(aal, "aal2");
    assert_eq!(amr.first().map(String::as_str), Some("fed"), "{amr:?}");
    assert!(amr.len() == 2, "fed plus the second factor: {amr:?}");
    assert!(from_upstream, "the session is tied to its upstream session");
    assert!(flagged, "flagged with its reasons");
    // The far session's own row on the device list (the home one says the same
    // words, so the whole page would prove nothing about the far one).
    let devices = home.down.get("/account/devices").await;
    let rows: Vec<&str> = devices
        .body
        .split("<li class=\"device")
        .skip(1)
        .map(|r| r.split("</li>").next().unwrap_or_default())
        .collect();
    assert_eq!(rows.len(), 2, "{}", devices.body);
    let far_row = rows
        .iter()
        .find(|r| r.contains("<dd>Sydney, Australia</dd>"))
        .unwrap_or_else(|| panic!("no row from Sydney: {}", devices.body));
    assert!(
        far_row.contains(&format!("Signed in with {LABEL}")),
        "{far_row}"
    );
}
