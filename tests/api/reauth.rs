//! Signing in again for one app (`prompt=login`, `max_age`) in the same browser: the
//! person's other apps stay signed in (DESIGN "Signing in again for an app").

use serde_json::json;

use crate::helpers::{Options, PASSWORD, spawn_app_with};
use crate::oauth_helpers::{
    Client, authorize_url, create_client, exchange, inactive, introspect, jwt_parts,
    location_params, param, pkce, refresh, sign_in_app,
};

/// Signs the browser in again through the form `prompt=login` leads to, as `email`,
/// and follows the way back to authorize; returns the ID token's claims and the tokens.
async fn sign_in_again(
    app: &crate::helpers::TestApp,
    b: &crate::helpers::Browser,
    client: &Client,
    email: &str,
    ask: &[(&str, &str)],
) -> (serde_json::Value, serde_json::Value) {
    let r = b.get(&authorize_url(client, ask)).await;
    assert_eq!(r.status, 303);
    let login = r.location();
    assert!(login.starts_with("/login?return_to="), "{login}");
    let page = b.get(&login).await;
    let return_to = url::Url::parse(&format!("https://x{login}"))
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "return_to")
        .unwrap()
        .1
        .into_owned();
    let r = b
        .post_form(
            "/login",
            &[
                ("csrf_token", &page.csrf()),
                ("email", email),
                ("password", PASSWORD),
                ("return_to", &return_to),
            ],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let (verifier, challenge) = pkce();
    let back = format!(
        "{}&code_challenge={challenge}&code_challenge_method=S256",
        r.location()
    );
    let r = b.get(&back).await;
    let code = param(&location_params(&r), "code").expect("a code after signing in again");
    let (s, body) = exchange(app, client, &code, Some(&verifier)).await;
    assert_eq!(s, 200, "{body}");
    let (_, claims) = jwt_parts(body["id_token"].as_str().unwrap());
    (claims, body)
}

#[tokio::test]
async fn signing_in_again_for_one_app_keeps_the_other_apps_signed_in() {
    // O8: sid and auth_time change for the app that asked; the other apps' grants move
    // to the new session in the same transaction, with no logout token.
    let app = spawn_app_with(Options {
        frozen_clock: true,
        ..Options::default()
    })
    .await;
    let a = create_client(&app, &["--first-party"]);
    let other = create_client(
        &app,
        &[
            "--first-party",
            "--backchannel-logout-uri",
            "https://other-app.test/backchannel-logout",
        ],
    );
    let b = app.signed_in("alice@example.com").await;
    let old_cookie = app.session_cookie(&b).expect("signed in");
    let theirs = sign_in_app(&app, &b, &other, &[]).await;
    let mine = sign_in_app(&app, &b, &a, &[]).await;
    let (_, before) = jwt_parts(mine.id.as_deref().unwrap());

    for ask in [[("prompt", "login")], [("max_age", "0")]] {
        app.clock.advance(std::time::Duration::from_secs(5));
        let (_, prev) = jwt_parts(mine.id.as_deref().unwrap());
        let (now, _) = sign_in_again(&app, &b, &a, "alice@example.com", &ask).await;
        assert_ne!(
            now["sid"], prev["sid"],
            "{ask:?}: a new sign-in is a new session"
        );
        assert!(
            now["auth_time"].as_i64() > before["auth_time"].as_i64(),
            "{ask:?}"
        );
        assert_eq!(now["sub"], before["sub"]);
        assert_ne!(
            app.session_cookie(&b),
            Some(old_cookie.clone()),
            "the cookie token changes"
        );

        // The other app's tokens still work.
        let seen = introspect(&app, &other, &theirs.access).await;
        assert_eq!(seen["active"], json!(true), "{ask:?}: {seen}");
        let moved = app
            .count(&format!(
                "SELECT count(*) FROM oauth_grants WHERE client_id = '{}' AND session_id::text = {}",
                other.id,
                now["sid"].to_string().replace('"', "'")
            ))
            .await;
        assert_eq!(
            moved, 1,
            "{ask:?}: the other app's grant belongs to the new session"
        );
        assert_eq!(
            app.count(&format!(
                "SELECT count(*) FROM backchannel_outbox WHERE client_id = '{}'",
                other.id
            ))
            .await,
            0,
            "{ask:?}: no logout token to the other app"
        );
    }
    // Its refresh token keeps working, and the new tokens name the new sid.
    let (s, body) = refresh(&app, &other, &theirs.refresh).await;
    assert_eq!(s, 200, "{body}");
    let (_, claims) = jwt_parts(body["access_token"].as_str().unwrap());
    let live: Vec<String> =
        sqlx::query_scalar("SELECT id::text FROM sessions WHERE revoked_at IS NULL")
            .fetch_all(&app.db)
            .await
            .unwrap();
    assert_eq!(live.len(), 1, "one browser, one live session");
    assert_eq!(claims["sid"], json!(live[0]));
    let seen = introspect(&app, &other, body["access_token"].as_str().unwrap()).await;
    assert_eq!(seen["active"], json!(true), "{seen}");
    assert_eq!(seen["sid"], json!(live[0]), "{seen}");

    // The other app still knows the session by the sid of its first ID token: its
    // id_token_hint signs out at once (no confirmation asked), and the logout token
    // names that sid too (as well as the session's own).
    let (_, told) = jwt_parts(theirs.id.as_deref().unwrap());
    assert_ne!(told["sid"], json!(live[0]));
    let r = b
        .get(&format!(
            "/oauth2/logout?id_token_hint={}",
            theirs.id.as_deref().unwrap()
        ))
        .await;
    assert!(r.status < 400, "{} {}", r.status, r.body);
    assert_eq!(
        app.count("SELECT count(*) FROM sessions WHERE revoked_at IS NULL")
            .await,
        0,
        "the other app's old hint names this session: signed out without asking"
    );
    let named: Vec<String> = sqlx::query_scalar(
        "SELECT session_id::text FROM backchannel_outbox WHERE client_id = $1 ORDER BY 1",
    )
    .bind(&other.id)
    .fetch_all(&app.db)
    .await
    .unwrap();
    let mut expected = vec![told["sid"].as_str().unwrap().to_string(), live[0].clone()];
    expected.sort();
    assert_eq!(
        named, expected,
        "a logout token for each sid the app may know"
    );
}

#[tokio::test]
async fn someone_else_signing_in_in_the_same_browser_ends_the_other_apps_sessions() {
    // O8 and Keycloak CVE-2023-6787: another person's sign-in moves nothing.
    let app = spawn_app_with(Options::default()).await;
    let a = create_client(&app, &["--first-party"]);
    let other = create_client(
        &app,
        &[
            "--first-party",
            "--backchannel-logout-uri",
            "https://other-app.test/backchannel-logout",
        ],
    );
    app.user("bob@example.com").await;
    let b = app.signed_in("alice@example.com").await;
    let alices = sign_in_app(&app, &b, &other, &[]).await;
    let (bob, _) = sign_in_again(&app, &b, &a, "bob@example.com", &[("prompt", "login")]).await;
    assert_eq!(bob["email"], "bob@example.com");
    assert_eq!(introspect(&app, &other, &alices.access).await, inactive());
    let (s, _) = refresh(&app, &other, &alices.refresh).await;
    assert_eq!(s, 400, "alice's refresh token died with her session");
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) FROM backchannel_outbox WHERE client_id = '{}'",
            other.id
        ))
        .await,
        1,
        "the other app hears that alice's session ended"
    );
}
