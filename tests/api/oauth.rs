//! The OAuth 2.0 / OIDC provider over raw HTTP: the negative cases of RFC 9700 and
//! the checklist's sections F, G and H, each with what an app or attacker observes.

use serde_json::{Value, json};

use crate::helpers::{Options, spawn_app, spawn_app_with};
use crate::oauth_helpers::*;

#[tokio::test]
async fn discovery_offers_only_code_and_s256_and_the_jwks_only_public_keys() {
    // O6, T2
    let app = spawn_app().await;
    let b = app.browser();
    let oidc = b.get("/.well-known/openid-configuration").await;
    assert_eq!(oidc.status, 200);
    let m: Value = serde_json::from_str(&oidc.body).unwrap();
    assert_eq!(m["issuer"], "https://gatehouse.test");
    assert_eq!(m["response_types_supported"], json!(["code"]));
    assert_eq!(m["code_challenge_methods_supported"], json!(["S256"]));
    assert_eq!(m["authorization_response_iss_parameter_supported"], true);
    assert!(
        !m["grant_types_supported"]
            .as_array()
            .unwrap()
            .contains(&json!("password"))
    );
    assert!(
        !m["grant_types_supported"]
            .as_array()
            .unwrap()
            .contains(&json!("implicit"))
    );
    let rfc8414: Value =
        serde_json::from_str(&b.get("/.well-known/oauth-authorization-server").await.body).unwrap();
    assert_eq!(rfc8414["issuer"], m["issuer"]);
    let jwks: Value = serde_json::from_str(&b.get("/jwks.json").await.body).unwrap();
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    for k in keys {
        assert_eq!(k["kty"], "RSA");
        assert!(k["kid"].as_str().is_some_and(|s| !s.is_empty()));
        for private in ["d", "p", "q", "dp", "dq", "qi", "k"] {
            assert!(k.get(private).is_none(), "JWKS leaks {private}");
        }
    }
}

#[tokio::test]
async fn every_redirect_uri_variant_is_refused_with_a_page_and_no_location() {
    // O1 (authentik CVE-2024-52289, Keycloak CVE-2024-8883)
    let app = spawn_app().await;
    let client = app_client(&app);
    let b = app.signed_in("alice@example.com").await;
    for bad in [
        "https://rp.test/cb/x",
        "https://rp.test/cb?x=1",
        "https://rp.test/CB",
        "https://RP.test/cb",
        "https://rp.test.evil.test/cb",
        "https://rp.test@evil.test/cb",
        "https://evil.test#@rp.test/cb",
        "https://rp.test/cb/..;/",
        "https://rp.test/%2e%2e/cb",
        "http://rp.test/cb",
        "https://rp.test/cb/",
        "https://rp.test:443/cb",
        "https://rpatest/cb",
        "http://localhost/cb",
    ] {
        let r = b
            .get(&authorize_url(&client, &[("redirect_uri", bad)]))
            .await;
        assert_eq!(r.status, 400, "{bad}");
        assert!(r.header("location").is_none(), "{bad} redirected");
        assert!(r.body.contains("has not registered"), "{bad}: {}", r.body);
    }
    // An unknown client and a missing redirect_uri: a page too (O2).
    let ghost = Client {
        id: "nobody".into(),
        secret: None,
    };
    let r = b.get(&authorize_url(&ghost, &[])).await;
    assert_eq!(r.status, 400);
    assert!(r.header("location").is_none());
    let r = b
        .get(&authorize_url(&client, &[("redirect_uri", "")]))
        .await;
    assert_eq!(r.status, 400);
    assert!(r.header("location").is_none());
    assert_eq!(app.count("SELECT count(*) FROM oauth_codes").await, 0);
}

#[tokio::test]
async fn a_bad_scope_is_sent_back_to_the_app_only_after_the_person_signed_in() {
    // O2, O6
    let app = spawn_app().await;
    let client = app_client(&app);
    let b = app.browser();
    let url = authorize_url(&client, &[("scope", "openid admin")]);
    let r = b.get(&url).await;
    assert_eq!(r.status, 303);
    assert!(
        r.location().starts_with("/login?return_to="),
        "{}",
        r.location()
    );
    app.register(&b, "alice@example.com", crate::helpers::PASSWORD)
        .await;
    let r = b.get(&url).await;
    assert_eq!(r.status, 303);
    let p = location_params(&r);
    assert!(r.location().starts_with(CB));
    assert_eq!(param(&p, "error").as_deref(), Some("invalid_scope"));
    assert_eq!(param(&p, "state").as_deref(), Some("st-123"));
    assert_eq!(param(&p, "iss").as_deref(), Some("https://gatehouse.test"));
    let r = b
        .get(&authorize_url(&client, &[("response_type", "token")]))
        .await;
    assert_eq!(
        param(&location_params(&r), "error").as_deref(),
        Some("unsupported_response_type")
    );
    let (s, _, body) = post(
        &app,
        "/oauth2/token",
        &client,
        &[
            ("grant_type", "password"),
            ("username", "a"),
            ("password", "b"),
        ],
    )
    .await;
    assert_eq!(
        (s, body["error"].as_str()),
        (400, Some("unsupported_grant_type"))
    );
}

#[tokio::test]
async fn the_code_flow_issues_truthful_tokens_and_revoking_the_device_kills_them_at_once() {
    // O7, O9, T3, I4, and the device list's promise.
    let app = spawn_app().await;
    let client = app_client(&app);
    let b = app.signed_in("alice@example.com").await;
    let (verifier, challenge) = pkce();
    let r = b
        .get(&authorize_url(
            &client,
            &[
                ("code_challenge", &challenge),
                ("code_challenge_method", "S256"),
                ("nonce", "n-0S6"),
            ],
        ))
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let p = location_params(&r);
    assert_eq!(param(&p, "state").as_deref(), Some("st-123"));
    assert_eq!(param(&p, "iss").as_deref(), Some("https://gatehouse.test"));
    let code = param(&p, "code").unwrap();
    let (status, body) = exchange(&app, &client, &code, Some(&verifier)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    let access = body["access_token"].as_str().unwrap();
    let refresh_token = body["refresh_token"].as_str().unwrap();
    let (ah, ac) = jwt_parts(access);
    assert_eq!(ah["typ"], "at+jwt");
    assert_eq!(ah["alg"], "RS256");
    let (_, id) = jwt_parts(body["id_token"].as_str().unwrap());
    assert_eq!(id["iss"], "https://gatehouse.test");
    assert_eq!(id["aud"], client.id.as_str());
    assert_eq!(id["azp"], client.id.as_str());
    assert_eq!(id["nonce"], "n-0S6");
    assert_eq!(id["amr"], json!(["pwd"]));
    assert_eq!(id["acr"], "urn:gatehouse:aal1");
    assert_eq!(id["email"], "alice@example.com");
    assert_ne!(id["sub"], "alice@example.com");
    assert!(id["exp"].as_i64().unwrap() - id["iat"].as_i64().unwrap() <= 900);
    assert!(id["at_hash"].is_string());
    assert_eq!(ac["sid"], id["sid"]);
    assert_eq!(ac["aud"], client.id.as_str());
    assert!((300..=900).contains(&(ac["exp"].as_i64().unwrap() - ac["iat"].as_i64().unwrap())));
    let sid = id["sid"].as_str().unwrap().to_string();
    let stored: i64 = app
        .count(&format!(
            "SELECT count(*) FROM sessions WHERE id = '{sid}' AND revoked_at IS NULL"
        ))
        .await;
    assert_eq!(stored, 1, "sid is the device list's session id");

    let live = introspect(&app, &client, access).await;
    assert_eq!(live["active"], true);
    assert_eq!(live["sid"], sid.as_str());
    assert_eq!(live["client_id"], client.id.as_str());
    assert_eq!(live["sub"], id["sub"]);
    assert_eq!(live["iss"], "https://gatehouse.test");
    assert_eq!(live["aud"], client.id.as_str());
    assert_eq!(live["scope"], "email openid");
    assert_eq!(live["amr"], json!(["pwd"]));
    let (s, _, info) = userinfo(&app, access).await;
    assert_eq!(s, 200, "{info}");
    let info: Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info["sub"], id["sub"]);
    assert_eq!(info["email"], "alice@example.com");

    // Revoke this very session on the device list.
    let csrf = b.get("/account/devices").await.csrf();
    let r = b
        .post_form(
            &format!("/account/devices/{sid}/revoke"),
            &[("csrf_token", &csrf)],
        )
        .await;
    assert_eq!(r.status, 303);
    assert_eq!(introspect(&app, &client, access).await, inactive());
    let (s, body) = refresh(&app, &client, refresh_token).await;
    assert_eq!((s, body["error"].as_str()), (400, Some("invalid_grant")));
    let (s, headers, _) = userinfo(&app, access).await;
    assert_eq!(s, 401);
    assert!(
        headers["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
}
