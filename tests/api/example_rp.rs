//! The example app in `examples/relying-party/` (issue "revocation reach", item 5),
//! run in-process against a real Gatehouse: it signs its user in through the code
//! flow, calls its own API (which introspects), and when the device is revoked in
//! Gatehouse's device list, its API refuses the session's tokens and the back-channel
//! logout ends its own session.

use std::time::{Duration, Instant};

#[path = "../../examples/relying-party/app.rs"]
mod app;

use crate::helpers::{Browser, Options, PASSWORD, spawn_app_with};
use crate::oauth_helpers::*;

fn path_of(url: &str) -> String {
    let u = url::Url::parse(url).expect("an absolute URL");
    match u.query() {
        Some(q) => format!("{}?{q}", u.path()),
        None => u.path().to_string(),
    }
}

#[tokio::test]
async fn the_example_app_signs_in_calls_its_api_and_ends_with_the_device() {
    let gh = spawn_app_with(Options {
        issuer_is_address: true,
        ..Options::default()
    })
    .await;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let rp_url = format!("http://{}", listener.local_addr().unwrap());
    let client = create_client(
        &gh,
        &[
            "--first-party",
            "--redirect-uri",
            &format!("{rp_url}/callback"),
            "--redirect-uri",
            CB,
            "--backchannel-logout-uri",
            &format!("{rp_url}/backchannel-logout"),
        ],
    );
    let server = app::serve(
        app::Config {
            issuer: gh.address.clone(),
            client_id: client.id.clone(),
            client_secret: client.secret.clone().unwrap(),
            url: rp_url.clone(),
        },
        listener,
    )
    .await
    .expect("the example app discovers Gatehouse and starts");
    tokio::spawn(server);
    gh.user("alice@example.com").await;

    // Sign in to the app through Gatehouse, as a browser does.
    let rp = Browser::new(&rp_url);
    let at_gh = rp.at(&gh.address);
    assert!(rp.get("/").await.body.contains("Not signed in"));
    let to_gh = rp.get("/login").await;
    assert_eq!(to_gh.status, 303);
    let authorize = path_of(&to_gh.location());
    assert!(authorize.starts_with("/oauth2/authorize?"), "{authorize}");
    let r = at_gh.get(&authorize).await;
    assert_eq!(r.status, 303);
    assert!(
        r.location().starts_with("/login?return_to="),
        "{}",
        r.location()
    );
    gh.login(&at_gh, "alice@example.com", PASSWORD).await;
    let back = at_gh.get(&authorize).await;
    assert_eq!(back.status, 303, "{}", back.body);
    assert!(back.location().starts_with(&format!("{rp_url}/callback?")));
    let done = rp.get(&path_of(&back.location())).await;
    assert_eq!(done.status, 303, "{}", done.body);
    let home = rp.get("/").await;
    assert!(
        home.body
            .contains("Signed in as <strong>alice@example.com</strong>"),
        "{}",
        home.body
    );

    // Its API introspects the access token.
    let called = rp.get("/call").await;
    assert!(called.body.contains("HTTP 200"), "{}", called.body);
    // A token of the same Gatehouse session, held by the test, for after the revoke.
    let t = sign_in_app(&gh, &at_gh, &client, &[]).await;
    let api = |token: String| {
        let url = format!("{rp_url}/api/me");
        async move {
            reqwest::Client::new()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(api(t.access.clone()).await, 200);
    assert_eq!(api("not-a-token".into()).await, 401);

    // The owner revokes that device from another browser's device list.
    let sid = jwt_parts(&t.access).1["sid"].as_str().unwrap().to_string();
    let other = gh.browser();
    gh.login(&other, "alice@example.com", PASSWORD).await;
    let page = other.get("/account/devices").await;
    assert!(page.body.contains(&sid));
    let r = other
        .post_form(
            &format!("/account/devices/{sid}/revoke"),
            &[("csrf_token", &page.csrf())],
        )
        .await;
    assert_eq!(r.status, 303);
    let revoked = Instant::now();
    // The API refuses the session's token at once; the app's session ends by the
    // back-channel logout.
    assert_eq!(api(t.access.clone()).await, 401);
    loop {
        let home = rp.get("/").await;
        if home.body.contains("Not signed in") {
            break;
        }
        assert!(
            revoked.elapsed() < Duration::from_secs(5),
            "the app's session outlived the device"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(rp.get("/call").await.status, 303);
    // A forged logout token is refused with a JSON error and changes nothing.
    let r = reqwest::Client::new()
        .post(format!("{rp_url}/backchannel-logout"))
        .form(&[("logout_token", t.id.as_deref().unwrap())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}
