//! The federated entry point (`auth::sign_in::federated`), the fourth caller of the
//! one way a sign-in becomes a session, driven directly with a request context
//! that looks like a browser's, against the running server's database; what comes
//! out is then used over HTTP like any sign-in: the cookie it gives, the second
//! factor it asks for, the device list that labels it. (The upstream round trip
//! that calls it is tested end to end with a real upstream elsewhere.)

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use gatehouse::auth::RequestContext;
use gatehouse::auth::sign_in::{self, Federated, SignInOutcome};
use gatehouse::domain::{DeviceToken, Email};
use gatehouse::state::AppState;

use crate::devices::browser_at;
use crate::geoip_fixture;
use crate::helpers::{Browser, Options, PASSWORD, TestApp, spawn_app_with};
use crate::otp::{enrol, wait_code};

const FIREFOX: &str =
    "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0";
const IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1";
const BERLIN_IP: &str = "192.0.2.10";
const BERLIN_IP_2: &str = "192.0.2.77";
const SYDNEY_IP: &str = "198.51.100.7";
const ALICE: &str = "alice@example.com";
const LABEL: &str = "Example IdP";
const SUBJECT: &str = "alice-at-example";

/// Behind a trusted proxy, with the GeoIP fixture and a clock the test moves.
async fn app_with(require_verified_email: bool) -> TestApp {
    spawn_app_with(Options {
        trusted_proxies: Some("127.0.0.1/32".into()),
        frozen_clock: true,
        require_verified_email,
        extra: vec![(
            "GATEHOUSE_GEOIP_DB",
            geoip_fixture::write_fixture().display().to_string(),
        )],
        ..Options::default()
    })
    .await
}

/// The services over the app's own database, keys and clock.
async fn state_of(app: &TestApp) -> AppState {
    AppState::new(app.settings.clone(), app.clock.clone(), false)
        .await
        .expect("the state builds")
}

/// An upstream as its table holds it (its client secret is never read here).
async fn upstream(app: &TestApp) -> uuid::Uuid {
    let id = uuid::Uuid::new_v4();
    sqlx::query(
        "INSERT INTO upstreams (id, name, kind, issuer, client_id, client_secret_enc, scopes,
                                label, created_at, updated_at)
         VALUES ($1, 'example', 'oidc', 'https://idp.example.com', 'gatehouse', '\\x00',
                 'openid email', $2, now(), now())",
    )
    .bind(id)
    .bind(LABEL)
    .execute(&app.db)
    .await
    .expect("an upstream row");
    // Alice's identity there: a session is made only while it is linked.
    sqlx::query(
        "INSERT INTO federated_identities (id, upstream_id, subject, user_id, created_at, last_used_at)
         SELECT gen_random_uuid(), $1, $2, id, now(), now() FROM users WHERE email = $3",
    )
    .bind(id)
    .bind(SUBJECT)
    .bind(ALICE)
    .execute(&app.db)
    .await
    .expect("alice's identity there");
    id
}

/// What a request from `b` (its user agent, address and device cookie) would carry.
fn context_of(state: &AppState, app: &TestApp, ua: &str, ip: &str, b: &Browser) -> RequestContext {
    let ip: IpAddr = ip.parse().expect("an address");
    RequestContext {
        ip,
        user_agent: Some(ua.into()),
        location: state.geo.locate(ip),
        device: b
            .cookie(app.device_cookie_name())
            .and_then(|v| DeviceToken::parse(&v))
            .map(Arc::new),
    }
}

async fn user(state: &AppState, email: &str) -> gatehouse::store::UserRecord {
    state
        .store
        .user_by_email(&Email::parse(email).expect("an address"))
        .await
        .expect("the store answers")
        .expect("the account exists")
}

fn origin(upstream_id: uuid::Uuid, sid: Option<&str>) -> Federated {
    Federated {
        upstream_id,
        label: LABEL.into(),
        sid: sid.map(str::to_string),
        subject: SUBJECT.into(),
        fresh: true,
    }
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
async fn an_upstream_sign_in_is_aal1_fed_tied_to_its_upstream_session_and_labelled_on_the_device_list()
 {
    // U5: the session is aal1 / amr ["fed"]; the device list says where it came from.
    let app = app_with(false).await;
    let state = state_of(&app).await;
    let home = browser_at(&app, FIREFOX, BERLIN_IP);
    assert_eq!(app.register(&home, ALICE, PASSWORD).await.status, 303);
    let upstream_id = upstream(&app).await;
    app.clock.advance(Duration::from_secs(600));

    // A new phone at home: no code asked for, a new-device notice like any sign-in.
    let phone = browser_at(&app, IPHONE, BERLIN_IP_2);
    let ctx = context_of(&state, &app, IPHONE, BERLIN_IP_2, &phone);
    let alice = user(&state, ALICE).await;
    let outcome = sign_in::federated(
        &state,
        &alice,
        origin(upstream_id, Some("upstream-sid-1")),
        false,
        Some("/account/devices".into()),
        None,
        &ctx,
    )
    .await
    .expect("the sign-in is weighed");
    let SignInOutcome::SignedIn(new) = outcome else {
        panic!("a usual upstream sign-in makes a session at once");
    };
    phone.set_cookie(app.session_cookie_name(), new.token.expose());
    phone.set_cookie(app.device_cookie_name(), new.device.0.expose());

    let row: (String, Vec<String>, Option<uuid::Uuid>, Option<String>) = sqlx::query_as(
        "SELECT aal, amr, upstream_id, upstream_sid FROM sessions
         WHERE revoked_at IS NULL AND 'fed' = ANY(amr)",
    )
    .fetch_one(&app.db)
    .await
    .expect("one upstream session");
    assert_eq!(row.0, "aal1");
    assert_eq!(row.1, vec!["fed".to_string()]);
    assert_eq!(row.2, Some(upstream_id));
    assert_eq!(row.3.as_deref(), Some("upstream-sid-1"));

    // The person's own device list, from the phone and from home.
    let page = phone.get("/account/devices").await;
    assert_eq!(page.status, 200, "{}", page.body);
    let this = device_row(&page.body, "This device");
    assert!(this.contains("Signed in with Example IdP"), "{this}");
    assert!(this.contains("Example IdP only (aal1)"), "{this}");
    let page = home.get("/account/devices").await;
    let firefox = device_row(&page.body, "This device");
    assert!(!firefox.contains("Signed in with"), "{firefox}");
    assert!(firefox.contains("Password only (aal1)"), "{firefox}");
    let phone_row = device_row(&page.body, "Safari on iPhone");
    assert!(
        phone_row.contains("Signed in with Example IdP"),
        "{phone_row}"
    );

    // The account's history names the upstream; the owner hears of the new device.
    let detail: Option<String> = sqlx::query_scalar(
        "SELECT detail FROM security_events WHERE kind = 'signed_in' ORDER BY at DESC LIMIT 1",
    )
    .fetch_one(&app.db)
    .await
    .expect("a signed_in event");
    assert!(
        detail
            .as_deref()
            .unwrap_or_default()
            .starts_with("Signed in with Example IdP"),
        "{detail:?}"
    );
    let notice = app
        .mail
        .wait_for_subject(ALICE, "New sign-in to your account")
        .await;
    assert!(
        notice.text().contains("Safari on iPhone"),
        "{}",
        notice.text()
    );

    // The upstream going away ends the sessions made from it.
    gatehouse::upstream::admin::delete(&state, "example")
        .await
        .expect("deleting the upstream");
    assert!(phone.get("/account/devices").await.is_sign_in_redirect());
    let reason: Option<String> =
        sqlx::query_scalar("SELECT revoked_reason FROM sessions WHERE token_hash = $1")
            .bind(gatehouse::crypto::token_hash(new.token.expose()))
            .fetch_one(&app.db)
            .await
            .expect("the session row");
    assert_eq!(reason.as_deref(), Some("upstream deleted"));
    // A sign-in finishing after the upstream (and so the link) went makes nothing,
    // and is no error.
    let late = sign_in::federated(
        &state,
        &alice,
        origin(upstream_id, Some("upstream-sid-1")),
        false,
        None,
        None,
        &ctx,
    )
    .await
    .expect("no error");
    assert!(matches!(late, SignInOutcome::Failed));
}

#[tokio::test]
async fn an_upstream_sign_in_from_far_away_right_after_home_gives_gatehouses_own_code_and_keeps_its_origin()
 {
    // U5: a far place ten minutes after a home sign-in is asked for a second factor;
    // the session made after it is aal2 with ["fed", "email"] and still tied to the
    // upstream session.
    let app = app_with(false).await;
    let state = state_of(&app).await;
    let home = browser_at(&app, FIREFOX, BERLIN_IP);
    assert_eq!(app.register(&home, ALICE, PASSWORD).await.status, 303);
    let upstream_id = upstream(&app).await;
    app.clock.advance(Duration::from_secs(600));

    let far = browser_at(&app, IPHONE, SYDNEY_IP);
    let ctx = context_of(&state, &app, IPHONE, SYDNEY_IP, &far);
    let alice = user(&state, ALICE).await;
    let outcome = sign_in::federated(
        &state,
        &alice,
        origin(upstream_id, Some("far-sid")),
        false,
        None,
        None,
        &ctx,
    )
    .await
    .expect("the sign-in is weighed");
    let SignInOutcome::SecondFactor(pending) = outcome else {
        panic!("a far upstream sign-in right after home must prove a second factor");
    };
    // Nothing but the home session is live; the waiting sign-in carries its origin.
    assert_eq!(
        app.count("SELECT count(*) FROM sessions WHERE revoked_at IS NULL")
            .await,
        1
    );
    let waiting: (Option<uuid::Uuid>, Option<String>) =
        sqlx::query_as("SELECT upstream_id, upstream_sid FROM mfa_challenges")
            .fetch_one(&app.db)
            .await
            .expect("one waiting sign-in");
    assert_eq!(waiting, (Some(upstream_id), Some("far-sid".into())));

    let cookies = gatehouse::cookies::CookiePolicy::from_settings(&app.settings);
    far.set_cookie(cookies.pending_name, pending.token.expose());
    let page = far.get("/login/verify").await;
    assert_eq!(page.status, 200, "{}", page.body);
    let code = wait_code(&app, ALICE, 1).await;
    let r = far
        .post_form(
            "/login/verify",
            &[("csrf_token", &page.csrf()), ("code", &code)],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(far.get("/account").await.status, 200);

    let row: (
        String,
        Vec<String>,
        Option<uuid::Uuid>,
        Option<String>,
        bool,
    ) = sqlx::query_as(
        "SELECT aal, amr, upstream_id, upstream_sid, risk_flagged FROM sessions
         WHERE revoked_at IS NULL AND 'fed' = ANY(amr)",
    )
    .fetch_one(&app.db)
    .await
    .expect("the session made after the code");
    assert_eq!(row.0, "aal2");
    assert_eq!(row.1, vec!["fed".to_string(), "email".to_string()]);
    assert_eq!(row.2, Some(upstream_id));
    assert_eq!(row.3.as_deref(), Some("far-sid"));
    assert!(row.4, "born flagged with the checks' reasons");

    let page = home.get("/account/devices").await;
    let sydney = device_row(&page.body, "Sydney, Australia");
    assert!(sydney.contains("Signed in with Example IdP"), "{sydney}");
    assert!(sydney.contains("Example IdP + e-mailed code"), "{sydney}");
    assert!(sydney.contains("Unusual sign-in"), "{sydney}");
    let detail: Option<String> = sqlx::query_scalar(
        "SELECT detail FROM security_events WHERE kind = 'signed_in' ORDER BY at DESC LIMIT 1",
    )
    .fetch_one(&app.db)
    .await
    .expect("a signed_in event");
    assert!(
        detail
            .as_deref()
            .unwrap_or_default()
            .starts_with("Signed in with Example IdP; flagged:"),
        "{detail:?}"
    );
}

#[tokio::test]
async fn an_authenticator_app_is_asked_for_after_an_upstream_too() {
    // An upstream is one factor, like a password: whoever set up an app gives its code.
    let app = app_with(false).await;
    let state = state_of(&app).await;
    let home = browser_at(&app, FIREFOX, BERLIN_IP);
    assert_eq!(app.register(&home, ALICE, PASSWORD).await.status, 303);
    enrol(&app, &home, ALICE).await;
    let upstream_id = upstream(&app).await;

    let same = browser_at(&app, FIREFOX, BERLIN_IP);
    same.set_cookie(
        app.device_cookie_name(),
        &home
            .cookie(app.device_cookie_name())
            .expect("a device cookie"),
    );
    let ctx = context_of(&state, &app, FIREFOX, BERLIN_IP, &same);
    let alice = user(&state, ALICE).await;
    let outcome = sign_in::federated(
        &state,
        &alice,
        origin(upstream_id, None),
        false,
        None,
        None,
        &ctx,
    )
    .await
    .expect("the sign-in is weighed");
    assert!(
        matches!(outcome, SignInOutcome::SecondFactor(_)),
        "an authenticator app's code is asked for"
    );
    let reason: String = sqlx::query_scalar("SELECT reason FROM mfa_challenges")
        .fetch_one(&app.db)
        .await
        .expect("one waiting sign-in");
    assert!(reason.contains("authenticator app set up"), "{reason}");
}

#[tokio::test]
async fn an_unverified_address_waits_for_its_link_when_verified_ones_are_required() {
    let app = app_with(true).await;
    let state = state_of(&app).await;
    // An account without a password, as an operator (or an upstream) makes it.
    gatehouse::auth::login::create_user(&state, ALICE, None, false, false)
        .await
        .expect("the account is made");
    let upstream_id = upstream(&app).await;
    let b = browser_at(&app, FIREFOX, BERLIN_IP);
    let ctx = context_of(&state, &app, FIREFOX, BERLIN_IP, &b);
    let alice = user(&state, ALICE).await;
    assert!(alice.password_hash.is_none());
    let outcome = sign_in::federated(
        &state,
        &alice,
        origin(upstream_id, None),
        false,
        None,
        None,
        &ctx,
    )
    .await
    .expect("the sign-in is weighed");
    assert!(
        matches!(outcome, SignInOutcome::Unverified { ref email } if email == ALICE),
        "no session before the address is confirmed"
    );
    assert_eq!(app.count("SELECT count(*) FROM sessions").await, 0);
}
