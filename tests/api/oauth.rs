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

#[tokio::test]
async fn pkce_is_required_for_public_clients_and_cannot_be_downgraded() {
    // O3 (authentik CVE-2023-48228, CVE-2024-23647)
    let app = spawn_app().await;
    let public = create_client(&app, &["--first-party", "--public"]);
    let conf = app_client(&app);
    let b = app.signed_in("alice@example.com").await;
    let (verifier, challenge) = pkce();
    // A public client without a challenge, or with `plain`: invalid_request.
    for params in [
        vec![],
        vec![
            ("code_challenge", verifier.as_str()),
            ("code_challenge_method", "plain"),
        ],
        vec![("code_challenge", challenge.as_str())],
    ] {
        let r = b.get(&authorize_url(&public, &params)).await;
        assert_eq!(r.status, 303);
        assert_eq!(
            param(&location_params(&r), "error").as_deref(),
            Some("invalid_request"),
            "{params:?}"
        );
    }
    let s256 = [
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
    ];
    // Verifier missing, wrong, or the challenge itself: invalid_grant.
    for bad in [None, Some("x".repeat(43)), Some(challenge.clone())] {
        let code = code_for(&b, &public, &s256).await;
        let (s, body) = exchange(&app, &public, &code, bad.as_deref()).await;
        assert_eq!(
            (s, body["error"].as_str()),
            (400, Some("invalid_grant")),
            "{bad:?}"
        );
    }
    // A verifier sent for a code issued with no challenge (confidential client).
    let code = code_for(&b, &conf, &[]).await;
    let (s, body) = exchange(&app, &conf, &code, Some(&verifier)).await;
    assert_eq!((s, body["error"].as_str()), (400, Some("invalid_grant")));
    // The right verifier works.
    let code = code_for(&b, &public, &s256).await;
    let (s, body) = exchange(&app, &public, &code, Some(&verifier)).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(app.count("SELECT count(*) FROM oauth_grants").await, 1);
}

#[tokio::test]
async fn a_replayed_code_is_refused_and_revokes_what_it_issued() {
    // O4
    let app = spawn_app().await;
    let client = app_client(&app);
    let b = app.signed_in("alice@example.com").await;
    let (verifier, challenge) = pkce();
    let code = code_for(
        &b,
        &client,
        &[
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ],
    )
    .await;
    let (s, first) = exchange(&app, &client, &code, Some(&verifier)).await;
    assert_eq!(s, 200);
    let access = first["access_token"].as_str().unwrap();
    assert_eq!(introspect(&app, &client, access).await["active"], true);
    let (s, second) = exchange(&app, &client, &code, Some(&verifier)).await;
    assert_eq!((s, second["error"].as_str()), (400, Some("invalid_grant")));
    assert_eq!(introspect(&app, &client, access).await, inactive());
    let (s, body) = refresh(&app, &client, first["refresh_token"].as_str().unwrap()).await;
    assert_eq!((s, body["error"].as_str()), (400, Some("invalid_grant")));
    let replayed =
        "gatehouse_oauth_token_requests_total{grant=\"authorization_code\",outcome=\"replayed\"}";
    assert_eq!(app.metric(replayed).await, 1.0);
}

#[tokio::test]
async fn codes_are_bound_to_their_client_redirect_uri_and_sixty_seconds() {
    // O5
    let app = spawn_app_with(Options {
        frozen_clock: true,
        ..Options::default()
    })
    .await;
    let client = create_client(
        &app,
        &[
            "--first-party",
            "--redirect-uri",
            CB,
            "--redirect-uri",
            "https://rp.test/other",
        ],
    );
    let other = app_client(&app);
    let b = app.signed_in("alice@example.com").await;
    let code = code_for(&b, &client, &[]).await;
    let (s, body) = exchange(&app, &other, &code, None).await;
    assert_eq!(
        (s, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "another client"
    );
    let (s, _, body) = post(
        &app,
        "/oauth2/token",
        &client,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", "https://rp.test/other"),
        ],
    )
    .await;
    assert_eq!(
        (s, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "another redirect_uri"
    );
    app.clock.advance(std::time::Duration::from_secs(61));
    let (s, body) = exchange(&app, &client, &code, None).await;
    assert_eq!(
        (s, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "expired"
    );
    // Within its minute it works (the refusals above did not spend it).
    let code = code_for(&b, &client, &[]).await;
    app.clock.advance(std::time::Duration::from_secs(59));
    let (s, _) = exchange(&app, &client, &code, None).await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn prompt_and_max_age_are_honoured() {
    // O8
    let app = spawn_app_with(Options {
        frozen_clock: true,
        ..Options::default()
    })
    .await;
    let client = app_client(&app);
    let b = app.browser();
    // Signed out with prompt=none: login_required, straight back to the app.
    let r = b.get(&authorize_url(&client, &[("prompt", "none")])).await;
    assert_eq!(r.status, 303);
    assert_eq!(
        param(&location_params(&r), "error").as_deref(),
        Some("login_required")
    );
    assert_eq!(
        param(&location_params(&r), "state").as_deref(),
        Some("st-123")
    );
    app.register(&b, "alice@example.com", crate::helpers::PASSWORD)
        .await;
    let t1 = sign_in_app(&app, &b, &client, &[]).await;
    let (_, id1) = jwt_parts(t1.id.as_deref().unwrap());
    // none with another value.
    let r = b
        .get(&authorize_url(&client, &[("prompt", "none login")]))
        .await;
    assert_eq!(
        param(&location_params(&r), "error").as_deref(),
        Some("invalid_request")
    );
    app.clock.advance(std::time::Duration::from_secs(5));
    for ask in [[("prompt", "login")], [("max_age", "0")]] {
        let url = authorize_url(&client, &ask);
        let r = b.get(&url).await;
        assert_eq!(r.status, 303);
        let login = r.location();
        assert!(
            login.starts_with("/login?return_to=") && login.ends_with("&prompt=login"),
            "{login}"
        );
        // The sign-in form is shown although the browser is signed in.
        let page = b.get(&login).await;
        assert_eq!(page.status, 200, "{}", page.body);
        assert!(page.body.contains("name=\"password\""));
        let return_to = return_to_of(&login);
        let r = sign_in_form(&b, &page, "alice@example.com", &return_to).await;
        assert_eq!(r.status, 303, "{}", r.body);
        assert!(
            r.location().starts_with("/oauth2/authorize?"),
            "{}",
            r.location()
        );
        // Back at authorize: now a code, not another sign-in.
        let (verifier, challenge) = pkce();
        let back = format!(
            "{}&code_challenge={challenge}&code_challenge_method=S256",
            r.location()
        );
        let r = b.get(&back).await;
        assert_eq!(r.status, 303);
        assert!(r.location().starts_with(CB), "{}", r.location());
        let code = param(&location_params(&r), "code").unwrap();
        let (s, body) = exchange(&app, &client, &code, Some(&verifier)).await;
        assert_eq!(s, 200, "{body}");
        let (_, id2) = jwt_parts(body["id_token"].as_str().unwrap());
        assert!(
            id2["auth_time"].as_i64() > id1["auth_time"].as_i64(),
            "{ask:?}"
        );
        assert_ne!(
            id2["sid"], id1["sid"],
            "{ask:?}: a new sign-in is a new session"
        );
        assert_eq!(id2["sub"], id1["sub"]);
        app.clock.advance(std::time::Duration::from_secs(5));
    }
    // The way back (its gh_login mark) works once: replayed from history, it asks
    // for a sign-in again.
    let r = b.get(&authorize_url(&client, &[("prompt", "login")])).await;
    let login = r.location();
    let page = b.get(&login).await;
    let return_to = return_to_of(&login);
    let r = sign_in_form(&b, &page, "alice@example.com", &return_to).await;
    let back = r.location();
    assert!(b.get(&back).await.location().starts_with(CB));
    assert!(
        b.get(&back).await.location().starts_with("/login?"),
        "a spent mark"
    );
    // Marks left unspent (the sign-in made, the way back not taken) stand only for
    // their own request, in their own browser.
    let other_client = app_client(&app);
    let abandon = |b: crate::helpers::Browser, c: Client| async move {
        let r = b.get(&authorize_url(&c, &[("prompt", "login")])).await;
        let login = r.location();
        let page = b.get(&login).await;
        let r = sign_in_form(&b, &page, "alice@example.com", &return_to_of(&login)).await;
        assert!(r.location().contains("gh_login="), "{}", r.location());
        r.location()
    };
    let mine = abandon(b.clone(), client.clone()).await;
    let mark = url::Url::parse(&format!("https://x{mine}"))
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "gh_login")
        .unwrap()
        .1
        .into_owned();
    // On another app's request, this browser's own fresh mark asks for a sign-in.
    let r = b
        .get(&authorize_url(
            &other_client,
            &[("prompt", "login"), ("max_age", "0"), ("gh_login", &mark)],
        ))
        .await;
    assert!(
        r.location().starts_with("/login?"),
        "another client: {}",
        r.location()
    );
    // Another browser's unspent mark does not count here.
    let other = app.browser();
    app.login(&other, "alice@example.com", crate::helpers::PASSWORD)
        .await;
    let foreign = abandon(other.clone(), client.clone()).await;
    let b = app.browser();
    app.login(&b, "alice@example.com", crate::helpers::PASSWORD)
        .await;
    let r = b.get(&foreign).await;
    assert!(
        r.location().starts_with("/login?"),
        "another browser: {}",
        r.location()
    );
    // Its own browser's way back works, once.
    assert!(other.get(&foreign).await.location().starts_with(CB));
    assert!(other.get(&foreign).await.location().starts_with("/login?"));
    // An ordinary sign-in (no prompt, no max_age) carries no mark at all.
    let fresh = app.browser();
    let r = fresh.get(&authorize_url(&client, &[])).await;
    assert!(!r.location().contains("gh_login"), "{}", r.location());
    // Nor does a mark from before this session's sign-in, once it is older than 10 min.
    app.clock.advance(std::time::Duration::from_secs(11 * 60));
    let r = b.get(&authorize_url(&client, &[("prompt", "login")])).await;
    let login = r.location();
    let page = b.get(&login).await;
    let r = b
        .post_form(
            "/login",
            &[
                ("csrf_token", &page.csrf()),
                ("email", "alice@example.com"),
                ("password", crate::helpers::PASSWORD),
                ("return_to", &return_to_of(&login)),
            ],
        )
        .await;
    let back = r.location();
    app.clock.advance(std::time::Duration::from_secs(11 * 60));
    assert!(
        b.get(&back).await.location().starts_with("/login?"),
        "a stale mark"
    );
}

fn return_to_of(login: &str) -> String {
    url::Url::parse(&format!("https://x{login}"))
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "return_to")
        .unwrap()
        .1
        .into_owned()
}

#[tokio::test]
async fn prompt_login_signing_in_as_someone_else_gives_their_sub_and_a_new_sid() {
    // Keycloak CVE-2023-6787: a new sub must never keep the old session id.
    let app = spawn_app().await;
    let client = app_client(&app);
    app.user("bob@example.com").await;
    let b = app.signed_in("alice@example.com").await;
    let alice = sign_in_app(&app, &b, &client, &[]).await;
    let (_, a) = jwt_parts(alice.id.as_deref().unwrap());
    let r = b.get(&authorize_url(&client, &[("prompt", "login")])).await;
    let login = r.location();
    let page = b.get(&login).await;
    let return_to = return_to_of(&login);
    let r = sign_in_form(&b, &page, "bob@example.com", &return_to).await;
    assert_eq!(r.status, 303, "{}", r.body);
    let r = b.get(&r.location()).await;
    let code = param(&location_params(&r), "code").expect("a code for bob");
    let (s, body) = exchange(&app, &client, &code, None).await;
    assert_eq!(s, 200);
    let (_, bob) = jwt_parts(body["id_token"].as_str().unwrap());
    assert_eq!(bob["email"], "bob@example.com");
    assert_ne!(bob["sub"], a["sub"]);
    assert_ne!(bob["sid"], a["sid"]);
    // Alice's session ended with the new sign-in, and her tokens with it.
    assert_eq!(introspect(&app, &client, &alice.access).await, inactive());
}

#[tokio::test]
async fn acr_and_amr_are_truthful_and_aal2_is_never_answered_with_less() {
    // O9
    let app = spawn_app().await;
    let client = app_client(&app);
    let b = app.signed_in("alice@example.com").await;
    let t = sign_in_app(&app, &b, &client, &[]).await;
    let (_, id) = jwt_parts(t.id.as_deref().unwrap());
    assert_eq!(id["amr"], json!(["pwd"]));
    assert_eq!(id["acr"], "urn:gatehouse:aal1");
    let url = authorize_url(&client, &[("acr_values", "urn:gatehouse:aal2")]);
    let r = b.get(&url).await;
    assert_eq!(r.status, 303);
    assert!(
        r.location().starts_with("/step-up?return_to="),
        "{}",
        r.location()
    );
    assert_eq!(
        app.count("SELECT count(*) FROM oauth_codes").await,
        1,
        "no code with a lower acr"
    );
    // prompt=none cannot do the step-up: interaction_required.
    let r = b
        .get(&authorize_url(
            &client,
            &[("acr_values", "urn:gatehouse:aal2"), ("prompt", "none")],
        ))
        .await;
    assert_eq!(
        param(&location_params(&r), "error").as_deref(),
        Some("interaction_required")
    );
    let done = crate::otp::step_up_by_email(&app, &b, "alice@example.com", &url).await;
    assert_eq!(done.status, 303, "{}", done.body);
    let t = sign_in_app(&app, &b, &client, &[("acr_values", "urn:gatehouse:aal2")]).await;
    let (_, id) = jwt_parts(t.id.as_deref().unwrap());
    assert_eq!(id["acr"], "urn:gatehouse:aal2");
    assert!(id["amr"].as_array().unwrap().len() >= 2, "{}", id["amr"]);
    assert_eq!(
        introspect(&app, &client, &t.access).await["acr"],
        "urn:gatehouse:aal2"
    );
}

#[tokio::test]
async fn third_party_apps_get_a_csrf_protected_consent_page_remembered_until_withdrawn() {
    // O10
    let app = spawn_app().await;
    let client = create_client(&app, &[]);
    let b = app.signed_in("alice@example.com").await;
    let url = authorize_url(&client, &[("scope", "openid email")]);
    let r = b.get(&url).await;
    assert_eq!(r.status, 303);
    assert!(
        r.location().starts_with("/oauth2/consent?"),
        "{}",
        r.location()
    );
    let page = b.get(&r.location()).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("Test app"));
    assert!(page.body.contains("See your e-mail address"));
    let csp = page.header("content-security-policy").unwrap();
    assert!(
        !csp.contains("form-action"),
        "the consent POST redirects to the app: {csp}"
    );
    let request: String = page
        .body
        .split("name=\"request\" value=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap()
        .to_string();
    let request = crate::otp::unescape(&request);
    // Without the CSRF token: refused, nothing remembered.
    let r = b
        .post_form(
            "/oauth2/consent",
            &[("request", &request), ("decision", "allow")],
        )
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(app.count("SELECT count(*) FROM oauth_consents").await, 0);
    // prompt=none without consent: consent_required.
    let r = b.get(&authorize_url(&client, &[("prompt", "none")])).await;
    assert_eq!(
        param(&location_params(&r), "error").as_deref(),
        Some("consent_required")
    );
    // Deny: access_denied to the app, nothing remembered.
    let r = b
        .post_form(
            "/oauth2/consent",
            &[
                ("csrf_token", &page.csrf()),
                ("request", &request),
                ("decision", "deny"),
            ],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(
        param(&location_params(&r), "error").as_deref(),
        Some("access_denied")
    );
    // Allow: a code, and the next request skips the page.
    let r = b
        .post_form(
            "/oauth2/consent",
            &[
                ("csrf_token", &page.csrf()),
                ("request", &request),
                ("decision", "allow"),
            ],
        )
        .await;
    assert_eq!(r.status, 303);
    let code = param(&location_params(&r), "code").expect("a code");
    let (s, tokens) = exchange(&app, &client, &code, None).await;
    assert_eq!(s, 200);
    let r = b.get(&url).await;
    assert!(r.location().starts_with(CB), "remembered: {}", r.location());
    // A wider scope set asks again.
    let r = b
        .get(&authorize_url(
            &client,
            &[("scope", "openid email offline_access")],
        ))
        .await;
    assert!(r.location().starts_with("/oauth2/consent?"));
    // Withdrawn on the account page: the app's tokens die and the page is back.
    let account = b.get("/account").await;
    assert!(account.body.contains("Apps you have allowed") && account.body.contains("Test app"));
    let r = b
        .post_form(
            &format!("/account/apps/{}/withdraw", client.id),
            &[("csrf_token", &account.csrf())],
        )
        .await;
    assert_eq!(r.status, 303);
    assert_eq!(
        introspect(&app, &client, tokens["access_token"].as_str().unwrap()).await,
        inactive()
    );
    let r = b.get(&url).await;
    assert!(r.location().starts_with("/oauth2/consent?"));
}

#[tokio::test]
async fn refresh_tokens_rotate_and_a_reused_one_revokes_its_family_and_the_session() {
    // O11
    let app = spawn_app().await;
    let client = app_client(&app);
    let b = app.signed_in("alice@example.com").await;
    let t = sign_in_app(&app, &b, &client, &[]).await;
    let (s, second) = refresh(&app, &client, &t.refresh).await;
    assert_eq!(s, 200, "{second}");
    let r2 = second["refresh_token"].as_str().unwrap();
    assert_ne!(r2, t.refresh);
    let (_, id) = jwt_parts(second["id_token"].as_str().unwrap());
    let (_, first_id) = jwt_parts(t.id.as_deref().unwrap());
    assert_eq!(
        (
            id["sub"].clone(),
            id["sid"].clone(),
            id["auth_time"].clone()
        ),
        (
            first_id["sub"].clone(),
            first_id["sid"].clone(),
            first_id["auth_time"].clone()
        )
    );
    // Another client cannot use it (and learns nothing).
    let thief = app_client(&app);
    let (s, body) = refresh(&app, &thief, r2).await;
    assert_eq!((s, body["error"].as_str()), (400, Some("invalid_grant")));
    // The spent one again: theft. Everything of the family dies, and the session.
    let (s, body) = refresh(&app, &client, &t.refresh).await;
    assert_eq!((s, body["error"].as_str()), (400, Some("invalid_grant")));
    let (s, body) = refresh(&app, &client, r2).await;
    assert_eq!(
        (s, body["error"].as_str()),
        (400, Some("invalid_grant")),
        "the rotated token died too"
    );
    assert_eq!(
        introspect(&app, &client, second["access_token"].as_str().unwrap()).await,
        inactive()
    );
    assert!(
        b.get("/account").await.is_sign_in_redirect(),
        "the browser session was revoked"
    );
    assert_eq!(
        app.count("SELECT count(*) FROM security_events WHERE kind = 'refresh_token_reused'")
            .await,
        1
    );
    let reused = "gatehouse_oauth_token_requests_total{grant=\"refresh_token\",outcome=\"reused\"}";
    assert_eq!(app.metric(reused).await, 1.0);
    // The owner sees it on the activity page.
    let again = app.browser();
    app.login(&again, "alice@example.com", crate::helpers::PASSWORD)
        .await;
    let activity = again.get("/account/activity").await;
    assert!(
        activity.body.contains("refresh token was used twice"),
        "{}",
        activity.body
    );
}

#[tokio::test]
async fn refresh_tokens_never_outlive_their_session() {
    // O11: an absolute expiry, the session's.
    let app = spawn_app_with(Options {
        frozen_clock: true,
        ..Options::default()
    })
    .await;
    let client = app_client(&app);
    let b = app.signed_in("alice@example.com").await;
    let t = sign_in_app(&app, &b, &client, &[]).await;
    let expires: i64 = app
        .count("SELECT extract(epoch FROM expires_at)::bigint FROM oauth_refresh_tokens")
        .await;
    let session_end: i64 = app.count("SELECT extract(epoch FROM absolute_expires_at)::bigint FROM sessions WHERE revoked_at IS NULL").await;
    assert!(expires <= session_end, "{expires} > {session_end}");
    // Refreshing keeps the session alive while idle rules allow, never past 12 h.
    let mut token = t.refresh.clone();
    for round in 1..=25 {
        app.clock.advance(std::time::Duration::from_secs(29 * 60));
        let (s, body) = refresh(&app, &client, &token).await;
        if s != 200 {
            assert_eq!(body["error"], "invalid_grant");
            // 24 × 29 min = 11 h 36 min were fine: refreshing kept the idle session
            // alive; the 25th (12 h 5 min) is past the absolute lifetime.
            assert_eq!(round, 25, "refused too early");
            return;
        }
        token = body["refresh_token"].as_str().unwrap().to_string();
    }
    panic!("a refresh token outlived the session's 12 h");
}

#[tokio::test]
async fn rp_logout_needs_a_hint_of_this_session_or_the_persons_confirmation() {
    // O12
    let app = spawn_app().await;
    let client = create_client(
        &app,
        &[
            "--first-party",
            "--post-logout-redirect-uri",
            "https://rp.test/bye",
        ],
    );
    let b = app.signed_in("alice@example.com").await;
    let t = sign_in_app(&app, &b, &client, &[]).await;
    let hint = t.id.clone().unwrap();
    // An unregistered post_logout_redirect_uri: a page, no redirect, still signed in.
    for bad in ["https://rp.test/bye/", "https://evil.test/bye"] {
        let r = b
            .get(&format!(
                "/oauth2/logout?id_token_hint={hint}&post_logout_redirect_uri={}",
                urlenc(bad)
            ))
            .await;
        assert_eq!(r.status, 400, "{bad}");
        assert!(r.header("location").is_none());
    }
    // No hint: a confirmation page (a GET alone signs no one out).
    let r = b
        .get(&format!(
            "/oauth2/logout?client_id={}&post_logout_redirect_uri={}&state=s1",
            client.id,
            urlenc("https://rp.test/bye")
        ))
        .await;
    assert_eq!(r.status, 200);
    assert!(r.body.contains("Sign out of Gatehouse?"));
    assert_eq!(introspect(&app, &client, &t.access).await["active"], true);
    // A forged hint: a page.
    // A forged hint, or an access token as the hint: no hint at all, so the person
    // is asked.
    let forged = format!("{}x", &hint[..hint.len() - 1]);
    for not_a_hint in [forged.as_str(), t.access.as_str()] {
        let r = b
            .get(&format!("/oauth2/logout?id_token_hint={not_a_hint}"))
            .await;
        assert_eq!(r.status, 200);
        assert!(r.body.contains("Sign out of Gatehouse?"));
    }
    assert_eq!(introspect(&app, &client, &t.access).await["active"], true);
    // The confirmation needs the CSRF token.
    let page = b
        .get(&format!(
            "/oauth2/logout?client_id={}&post_logout_redirect_uri={}&state=s1",
            client.id,
            urlenc("https://rp.test/bye")
        ))
        .await;
    let request = crate::otp::unescape(
        page.body
            .split("name=\"request\" value=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap(),
    );
    let r = b
        .post_form("/oauth2/logout", &[("request", &request)])
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(introspect(&app, &client, &t.access).await["active"], true);
    // With the hint of this session: signed out at once, back to the app with state.
    let r = b
        .get(&format!(
            "/oauth2/logout?id_token_hint={hint}&post_logout_redirect_uri={}&state=s2",
            urlenc("https://rp.test/bye")
        ))
        .await;
    assert_eq!(r.status, 303);
    assert_eq!(r.location(), "https://rp.test/bye?state=s2");
    assert!(b.get("/account").await.is_sign_in_redirect());
    assert_eq!(introspect(&app, &client, &t.access).await, inactive());
    // Confirmed sign-out of a second session.
    let b2 = app.browser();
    app.login(&b2, "alice@example.com", crate::helpers::PASSWORD)
        .await;
    let page = b2
        .get(&format!(
            "/oauth2/logout?client_id={}&post_logout_redirect_uri={}&state=s3",
            client.id,
            urlenc("https://rp.test/bye")
        ))
        .await;
    let request = crate::otp::unescape(
        page.body
            .split("name=\"request\" value=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap(),
    );
    let r = b2
        .post_form(
            "/oauth2/logout",
            &[("csrf_token", &page.csrf()), ("request", &request)],
        )
        .await;
    assert_eq!(r.status, 303);
    assert_eq!(r.location(), "https://rp.test/bye?state=s3");
    assert!(b2.get("/account").await.is_sign_in_redirect());
}

fn urlenc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[tokio::test]
async fn clients_must_authenticate_and_bad_credentials_get_401_invalid_client() {
    // I1
    let app = spawn_app().await;
    let client = app_client(&app);
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/oauth2/introspect", app.address))
        .form(&[("token", "x")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(
        r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic")
    );
    let body: Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    assert_eq!(body["error"], "invalid_client");
    let wrong = Client {
        id: client.id.clone(),
        secret: Some("wrong".into()),
    };
    for path in ["/oauth2/token", "/oauth2/revoke", "/oauth2/introspect"] {
        let (s, h, body) = post(
            &app,
            path,
            &wrong,
            &[("grant_type", "client_credentials"), ("token", "x")],
        )
        .await;
        assert_eq!(
            (s, body["error"].as_str()),
            (401, Some("invalid_client")),
            "{path}"
        );
        assert!(h.contains_key("www-authenticate"), "{path}");
    }
    // The secret in the form works too; both at once is refused.
    let (s, _, _) = post(
        &app,
        "/oauth2/introspect",
        &Client {
            id: client.id.clone(),
            secret: None,
        },
        &[
            ("client_secret", client.secret.as_deref().unwrap()),
            ("token", "x"),
        ],
    )
    .await;
    assert_eq!(s, 200);
    let (s, _, body) = post(
        &app,
        "/oauth2/introspect",
        &client,
        &[
            ("client_secret", client.secret.as_deref().unwrap()),
            ("token", "x"),
        ],
    )
    .await;
    assert_eq!((s, body["error"].as_str()), (400, Some("invalid_request")));
    let r = http
        .get(format!("{}/oauth2/introspect?token=x", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    // Repeated parameters are refused (RFC 6749 §3.1).
    let (s, _, body) = post(
        &app,
        "/oauth2/token",
        &client,
        &[
            ("grant_type", "client_credentials"),
            ("grant_type", "client_credentials"),
        ],
    )
    .await;
    assert_eq!((s, body["error"].as_str()), (400, Some("invalid_request")));
}

#[tokio::test]
async fn inactive_tokens_get_exactly_active_false() {
    // I2
    let app = spawn_app_with(Options {
        frozen_clock: true,
        ..Options::default()
    })
    .await;
    let client = app_client(&app);
    let b = app.signed_in("alice@example.com").await;
    let t = sign_in_app(&app, &b, &client, &[]).await;
    for garbage in [
        "",
        "x",
        "a.b.c",
        "eyJhbGciOiJub25lIn0.e30.",
        &"A".repeat(5000),
    ] {
        if garbage.is_empty() {
            continue;
        }
        assert_eq!(
            introspect(&app, &client, garbage).await,
            inactive(),
            "{garbage}"
        );
    }
    let revoked = sign_in_app(&app, &b, &client, &[]).await;
    let (s, _, _) = post(
        &app,
        "/oauth2/revoke",
        &client,
        &[("token", &revoked.access)],
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(introspect(&app, &client, &revoked.access).await, inactive());
    app.clock.advance(std::time::Duration::from_secs(11 * 60));
    assert_eq!(
        introspect(&app, &client, &t.access).await,
        inactive(),
        "expired"
    );
}

#[tokio::test]
async fn clients_cannot_see_or_revoke_each_others_tokens() {
    // I3, T4 (authentik CVE-2024-47077)
    let app = spawn_app().await;
    let a = app_client(&app);
    let bclient = app_client(&app);
    let api = create_client(&app, &["--introspect-any"]);
    let b = app.signed_in("alice@example.com").await;
    let t = sign_in_app(&app, &b, &a, &[]).await;
    let (_, claims) = jwt_parts(&t.access);
    assert_eq!(claims["aud"], a.id.as_str(), "the token names its audience");
    assert_eq!(introspect(&app, &bclient, &t.access).await, inactive());
    assert_eq!(introspect(&app, &bclient, &t.refresh).await, inactive());
    let (s, _, _) = post(&app, "/oauth2/revoke", &bclient, &[("token", &t.access)]).await;
    assert_eq!(s, 200);
    let (s, _, _) = post(&app, "/oauth2/revoke", &bclient, &[("token", &t.refresh)]).await;
    assert_eq!(s, 200);
    assert_eq!(
        introspect(&app, &a, &t.access).await["active"],
        true,
        "B's revocation did nothing"
    );
    let (s, _) = refresh(&app, &a, &t.refresh).await;
    assert_eq!(s, 200);
    // An --introspect-any API sees it.
    assert_eq!(introspect(&app, &api, &t.access).await["active"], true);
}

#[tokio::test]
async fn revoking_a_refresh_token_kills_its_grant_and_unknown_tokens_answer_200() {
    // I4, I5
    let app = spawn_app().await;
    let client = app_client(&app);
    let b = app.signed_in("alice@example.com").await;
    let t = sign_in_app(&app, &b, &client, &[]).await;
    let live = introspect(&app, &client, &t.refresh).await;
    assert_eq!(live["active"], true);
    assert_eq!(live["token_type"], "refresh_token");
    // A wrong hint: still found.
    let (s, _, _) = post(
        &app,
        "/oauth2/revoke",
        &client,
        &[("token", &t.refresh), ("token_type_hint", "access_token")],
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(introspect(&app, &client, &t.refresh).await, inactive());
    assert_eq!(
        introspect(&app, &client, &t.access).await,
        inactive(),
        "the grant's access token died"
    );
    let (s, body) = refresh(&app, &client, &t.refresh).await;
    assert_eq!((s, body["error"].as_str()), (400, Some("invalid_grant")));
    let (s, _, _) = post(
        &app,
        "/oauth2/revoke",
        &client,
        &[("token", "never-issued")],
    )
    .await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn forged_tokens_never_pass_introspection_or_userinfo() {
    // T1
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let app = spawn_app().await;
    let client = app_client(&app);
    let b = app.signed_in("alice@example.com").await;
    let t = sign_in_app(&app, &b, &client, &[]).await;
    let parts: Vec<&str> = t.access.split('.').collect();
    let (header, mut claims) = jwt_parts(&t.access);
    let enc = |v: &Value| URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
    let mut none = header.clone();
    none["alg"] = json!("none");
    claims["scope"] = json!("openid email profile offline_access");
    let jwks: Value = serde_json::from_str(&b.get("/jwks.json").await.body).unwrap();
    let n = jwks["keys"][0]["n"].as_str().unwrap();
    let mut hs = header.clone();
    hs["alg"] = json!("HS256");
    let hs_msg = format!("{}.{}", enc(&hs), parts[1]);
    use hmac::{Hmac, KeyInit, Mac};
    let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(n.as_bytes()).unwrap();
    mac.update(hs_msg.as_bytes());
    let hs_token = format!(
        "{hs_msg}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    );
    let mut jwk = header.clone();
    jwk["jwk"] = jwks["keys"][0].clone();
    jwk["kid"] = json!("attacker");
    let forged = [
        format!("{}.{}.", enc(&none), parts[1]),
        hs_token,
        format!("{}.{}.", parts[0], parts[1]),
        format!("{}.{}.{}", parts[0], enc(&claims), parts[2]),
        format!("{}.{}.{}", enc(&jwk), parts[1], parts[2]),
        // An ID token is not an access token.
        t.id.clone().unwrap(),
    ];
    for f in &forged {
        assert_eq!(introspect(&app, &client, f).await, inactive(), "{f}");
        let (s, _, _) = userinfo(&app, f).await;
        assert_eq!(s, 401, "{f}");
    }
    assert_eq!(introspect(&app, &client, &t.access).await["active"], true);
}

#[tokio::test]
async fn key_rotation_keeps_verifying_the_previous_key_and_refuses_a_retired_ones_tokens() {
    // T2
    let app = spawn_app().await;
    let client = app_client(&app);
    let b = app.signed_in("alice@example.com").await;
    let t1 = sign_in_app(&app, &b, &client, &[]).await;
    let (h1, _) = jwt_parts(&t1.access);
    let (ok, out, err) = app.cli(&["keys", "rotate"], &[]);
    assert!(ok, "{err}");
    let new_kid: Value = serde_json::from_str(out.trim()).unwrap();
    // Within the node's refresh bound, the new key signs.
    tokio::time::sleep(std::time::Duration::from_millis(5200)).await;
    let t2 = sign_in_app(&app, &b, &client, &[]).await;
    let (h2, _) = jwt_parts(&t2.access);
    assert_eq!(h2["kid"], new_kid["signing_kid"]);
    assert_ne!(h1["kid"], h2["kid"]);
    let jwks: Value = serde_json::from_str(&b.get("/jwks.json").await.body).unwrap();
    assert_eq!(
        jwks["keys"].as_array().unwrap().len(),
        2,
        "current and previous"
    );
    assert_eq!(
        introspect(&app, &client, &t1.access).await["active"],
        true,
        "the previous key still verifies"
    );
    // A second rotation retires the first key: its tokens are refused as soon as the
    // node hears of it (the rotation is another process: its notification, within
    // the 1 s every cache promises).
    let (ok, _, err) = app.cli(&["keys", "rotate"], &[]);
    assert!(ok, "{err}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    while introspect(&app, &client, &t1.access).await != inactive()
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(introspect(&app, &client, &t1.access).await, inactive());
    assert_eq!(userinfo(&app, &t1.access).await.0, 401);
    assert_eq!(introspect(&app, &client, &t2.access).await["active"], true);
    assert_eq!(
        app.count("SELECT count(*) FROM signing_keys WHERE verify_until IS NULL")
            .await,
        1
    );
    // The private halves are sealed, not stored as DER.
    let clear: i64 = app
        .count(
            "SELECT count(*) FROM signing_keys WHERE position('\\x3082'::bytea in private_enc) = 1",
        )
        .await;
    assert_eq!(clear, 0);
}

#[tokio::test]
async fn a_disabled_user_loses_every_token_at_once() {
    // S9 (ZITADEL CVE-2023-22492)
    let app = spawn_app().await;
    let client = app_client(&app);
    let b = app.signed_in("alice@example.com").await;
    let t = sign_in_app(&app, &b, &client, &[]).await;
    let (ok, _, err) = app.cli(&["user", "disable", "--email", "alice@example.com"], &[]);
    assert!(ok, "{err}");
    assert_eq!(introspect(&app, &client, &t.access).await, inactive());
    assert_eq!(introspect(&app, &client, &t.refresh).await, inactive());
    let (s, body) = refresh(&app, &client, &t.refresh).await;
    assert_eq!((s, body["error"].as_str()), (400, Some("invalid_grant")));
    assert_eq!(userinfo(&app, &t.access).await.0, 401);
}

#[tokio::test]
async fn cors_never_reflects_an_origin_on_token_or_authorize() {
    // W4
    let app = spawn_app().await;
    let client = app_client(&app);
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/oauth2/token", app.address))
        .header("origin", "https://evil.test")
        .basic_auth(&client.id, client.secret.as_deref())
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("access-control-allow-origin").is_none());
    assert_eq!(r.headers()["cache-control"], "no-store");
    let b = app.browser();
    let mut b2 = b.clone();
    b2.extra_headers
        .push(("origin".into(), "https://evil.test".into()));
    let r = b2.get(&authorize_url(&client, &[])).await;
    assert!(r.header("access-control-allow-origin").is_none());
    let r = b2.get("/.well-known/openid-configuration").await;
    assert_eq!(
        r.header("access-control-allow-origin").as_deref(),
        Some("*")
    );
    assert!(r.header("access-control-allow-credentials").is_none());
}

#[tokio::test]
async fn client_credentials_tokens_have_no_session_and_no_refresh_token() {
    let app = spawn_app().await;
    let api = app_client(&app);
    let public = create_client(&app, &["--public"]);
    let (s, _, body) = post(
        &app,
        "/oauth2/token",
        &api,
        &[("grant_type", "client_credentials")],
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert!(body.get("refresh_token").is_none());
    let (_, c) = jwt_parts(body["access_token"].as_str().unwrap());
    assert_eq!(c["sub"], api.id.as_str());
    assert!(c.get("sid").is_none());
    let live = introspect(&app, &api, body["access_token"].as_str().unwrap()).await;
    assert_eq!(live["active"], true);
    assert_eq!(
        userinfo(&app, body["access_token"].as_str().unwrap())
            .await
            .0,
        403
    );
    let (s, _, body) = post(
        &app,
        "/oauth2/token",
        &public,
        &[("grant_type", "client_credentials")],
    )
    .await;
    assert_eq!(
        (s, body["error"].as_str()),
        (400, Some("unauthorized_client"))
    );
    let (s, _, body) = post(
        &app,
        "/oauth2/token",
        &api,
        &[("grant_type", "client_credentials"), ("scope", "openid")],
    )
    .await;
    assert_eq!((s, body["error"].as_str()), (400, Some("invalid_scope")));
}

#[tokio::test]
async fn with_the_database_down_introspection_and_revocation_fail_closed() {
    // R2, I5 (Ory fosite CVE-2020-15223)
    let app = spawn_app_with(Options {
        db_proxy: true,
        ..Options::default()
    })
    .await;
    let client = app_client(&app);
    let b = app.signed_in("alice@example.com").await;
    let t = sign_in_app(&app, &b, &client, &[]).await;
    app.proxy.as_ref().unwrap().cut();
    for path in ["/oauth2/introspect", "/oauth2/revoke"] {
        let (s, _, body) = post(&app, path, &client, &[("token", &t.access)]).await;
        assert_eq!(s, 503, "{path}: {body}");
        assert_ne!(body["active"], true);
    }
    let (s, _) = refresh(&app, &client, &t.refresh).await;
    assert_eq!(s, 503);
    app.proxy.as_ref().unwrap().restore();
    // The pool reconnects on its own schedule: wait for the first answer.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let body = loop {
        let (s, _, body) = post(&app, "/oauth2/introspect", &client, &[("token", &t.access)]).await;
        if s == 200 {
            break body;
        }
        assert!(std::time::Instant::now() < deadline, "no recovery: {body}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(
        body["active"], true,
        "the failed revocation changed nothing"
    );
}

#[tokio::test]
async fn nodes_starting_at_once_agree_on_one_signing_key() {
    let app = spawn_app().await;
    sqlx::query("DELETE FROM signing_keys")
        .execute(&app.db)
        .await
        .unwrap();
    let mut nodes = Vec::new();
    for _ in 0..4 {
        nodes.push(
            gatehouse::state::AppState::new(
                app.settings.clone(),
                gatehouse::clock::Clock::system(),
                false,
            )
            .await
            .unwrap(),
        );
    }
    let results =
        futures_util::future::join_all(nodes.iter().map(gatehouse::oauth::keys::ensure)).await;
    for r in results {
        r.unwrap();
    }
    assert_eq!(app.count("SELECT count(*) FROM signing_keys").await, 1);
    let kids: Vec<Option<String>> = nodes.iter().map(|n| n.signing.current_kid()).collect();
    assert!(kids[0].is_some());
    assert!(kids.iter().all(|k| *k == kids[0]), "{kids:?}");
}

#[tokio::test]
async fn housekeeping_deletes_expired_codes_tokens_empty_grants_and_retired_keys() {
    let app = spawn_app_with(Options {
        frozen_clock: true,
        extra: vec![("GATEHOUSE_HOUSEKEEPING_INTERVAL", "100ms".into())],
        ..Options::default()
    })
    .await;
    let api = app_client(&app);
    let b = app.signed_in("alice@example.com").await;
    let _unused_code = code_for(&b, &api, &[]).await;
    let (s, _, _) = post(
        &app,
        "/oauth2/token",
        &api,
        &[("grant_type", "client_credentials")],
    )
    .await;
    assert_eq!(s, 200);
    for _ in 0..2 {
        let (ok, _, err) = app.cli(&["keys", "rotate"], &[]);
        assert!(ok, "{err}");
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(
        app.count("SELECT count(*) FROM oauth_access_tokens").await,
        1,
        "nothing is due yet"
    );
    assert_eq!(app.count("SELECT count(*) FROM oauth_codes").await, 1);
    app.clock
        .advance(std::time::Duration::from_secs(40 * 86400));
    app.wait_until("SELECT count(*) FROM oauth_access_tokens", 0)
        .await;
    app.wait_until("SELECT count(*) FROM oauth_codes", 0).await;
    app.wait_until("SELECT count(*) FROM oauth_grants", 0).await;
    // The signing key stays; the two rotated away go once no token names them.
    app.wait_until("SELECT count(*) FROM signing_keys", 1).await;
    assert_eq!(
        app.count("SELECT count(*) FROM signing_keys WHERE verify_until IS NULL")
            .await,
        1
    );
    assert!(
        app.wait_for_metric(
            "gatehouse_housekeeping_deleted_total{kind=\"oauth_tokens\"}",
            1.0
        )
        .await
            >= 1.0
    );
}

#[tokio::test]
async fn a_wider_scope_at_refresh_is_refused_without_spending_the_token_and_a_narrower_one_binds_userinfo()
 {
    // O6, RFC 6749 §6
    let app = spawn_app().await;
    let client = app_client(&app);
    let b = app.signed_in("alice@example.com").await;
    let t = sign_in_app(&app, &b, &client, &[]).await;
    let (s, _, body) = post(
        &app,
        "/oauth2/token",
        &client,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &t.refresh),
            ("scope", "openid email profile"),
        ],
    )
    .await;
    assert_eq!((s, body["error"].as_str()), (400, Some("invalid_scope")));
    // Not spent: it still rotates, and asking for less gives a token with less.
    let (s, _, body) = post(
        &app,
        "/oauth2/token",
        &client,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", &t.refresh),
            ("scope", "openid"),
        ],
    )
    .await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(body["scope"], "openid");
    assert!(
        b.get("/account").await.status == 200,
        "no theft was suspected"
    );
    let (s, _, info) = userinfo(&app, body["access_token"].as_str().unwrap()).await;
    assert_eq!(s, 200);
    let info: Value = serde_json::from_str(&info).unwrap();
    assert!(
        info.get("email").is_none(),
        "the narrowed token does not read the e-mail: {info}"
    );
}

#[tokio::test]
async fn parallel_redemptions_of_one_code_give_one_answer_and_parallel_refreshes_one_rotation() {
    // O4, O11 under concurrency: the rules run inside one locked transaction.
    let app = spawn_app().await;
    let client = app_client(&app);
    let b = app.signed_in("alice@example.com").await;
    let code = code_for(&b, &client, &[]).await;
    let tries =
        futures_util::future::join_all((0..8).map(|_| exchange(&app, &client, &code, None))).await;
    let ok: Vec<&Value> = tries
        .iter()
        .filter(|(s, _)| *s == 200)
        .map(|(_, b)| b)
        .collect();
    assert_eq!(ok.len(), 1, "{tries:?}");
    assert!(
        tries
            .iter()
            .all(|(s, b)| *s == 200 || b["error"] == "invalid_grant")
    );
    // The others were replays: what the one success issued is revoked.
    assert_eq!(
        introspect(&app, &client, ok[0]["access_token"].as_str().unwrap()).await,
        inactive()
    );

    let b = app.signed_in("bob@example.com").await;
    let t = sign_in_app(&app, &b, &client, &[]).await;
    let tries =
        futures_util::future::join_all((0..8).map(|_| refresh(&app, &client, &t.refresh))).await;
    let rotated: Vec<&Value> = tries
        .iter()
        .filter(|(s, _)| *s == 200)
        .map(|(_, b)| b)
        .collect();
    assert_eq!(rotated.len(), 1, "exactly one rotation: {tries:?}");
    assert!(
        tries
            .iter()
            .all(|(s, b)| *s == 200 || b["error"] == "invalid_grant")
    );
    // The other seven presented a spent token: the family and the session are gone.
    let (s, _) = refresh(&app, &client, rotated[0]["refresh_token"].as_str().unwrap()).await;
    assert_eq!(s, 400);
    assert!(b.get("/account").await.is_sign_in_redirect());
}

#[tokio::test]
async fn control_characters_in_client_ids_and_carried_requests_are_refused_not_500() {
    // H2, H3
    let app = spawn_app().await;
    let client = create_client(&app, &[]);
    let nul = Client {
        id: "a\u{0}b".into(),
        secret: Some("x".into()),
    };
    let (s, _, body) = post(
        &app,
        "/oauth2/token",
        &nul,
        &[("grant_type", "client_credentials")],
    )
    .await;
    assert_eq!((s, body["error"].as_str()), (401, Some("invalid_client")));
    let b = app.signed_in("alice@example.com").await;
    let page = b.get(&authorize_url(&client, &[])).await;
    let consent = b.get(&page.location()).await;
    for request in [
        format!("client_id=%00{}", client.id),
        format!(
            "client_id={}&redirect_uri=https%3A%2F%2Frp.test%2Fcb&state=%00",
            client.id
        ),
    ] {
        let r = b
            .post_form(
                "/oauth2/consent",
                &[
                    ("csrf_token", &consent.csrf()),
                    ("request", &request),
                    ("decision", "allow"),
                ],
            )
            .await;
        assert_eq!(r.status, 400, "{request}: {}", r.body);
    }
    let r = b
        .post_form(
            "/oauth2/logout",
            &[
                ("csrf_token", &consent.csrf()),
                ("request", "client_id=%00"),
            ],
        )
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(app.count("SELECT count(*) FROM oauth_consents").await, 0);
}

#[tokio::test]
async fn withdrawing_consent_also_kills_codes_not_yet_redeemed() {
    // O10
    let app = spawn_app().await;
    let client = create_client(&app, &[]);
    let b = app.signed_in("alice@example.com").await;
    let r = b.get(&authorize_url(&client, &[])).await;
    let page = b.get(&r.location()).await;
    let request = crate::otp::unescape(
        page.body
            .split("name=\"request\" value=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap(),
    );
    let r = b
        .post_form(
            "/oauth2/consent",
            &[
                ("csrf_token", &page.csrf()),
                ("request", &request),
                ("decision", "allow"),
            ],
        )
        .await;
    let code = param(&location_params(&r), "code").unwrap();
    let account = b.get("/account").await;
    b.post_form(
        &format!("/account/apps/{}/withdraw", client.id),
        &[("csrf_token", &account.csrf())],
    )
    .await;
    let (s, body) = exchange(&app, &client, &code, None).await;
    assert_eq!((s, body["error"].as_str()), (400, Some("invalid_grant")));
}

#[tokio::test]
async fn a_signed_out_person_signs_in_through_the_second_factor_and_lands_in_the_app() {
    // The authorize → /login → /login/verify → authorize path; none of its pages
    // restricts form-action, so the final redirect to the app is not blocked.
    let app = spawn_app().await;
    let client = app_client(&app);
    let setup = app.signed_in("alice@example.com").await;
    let enrolled = crate::otp::enrol(&app, &setup, "alice@example.com").await;
    let b = app.browser();
    let (verifier, challenge) = pkce();
    let url = authorize_url(
        &client,
        &[
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ],
    );
    let r = b.get(&url).await;
    let login = r.location();
    assert!(
        login.starts_with("/login?return_to=%2Foauth2%2Fauthorize"),
        "{login}"
    );
    let page = b.get(&login).await;
    assert!(
        !page
            .header("content-security-policy")
            .unwrap()
            .contains("form-action")
    );
    let r = b
        .post_form(
            "/login",
            &[
                ("csrf_token", &page.csrf()),
                ("email", "alice@example.com"),
                ("password", crate::helpers::PASSWORD),
                ("return_to", &return_to_of(&login)),
            ],
        )
        .await;
    assert_eq!(r.location(), "/login/verify");
    let verify = b.get("/login/verify").await;
    assert!(
        !verify
            .header("content-security-policy")
            .unwrap()
            .contains("form-action")
    );
    let code = crate::otp::totp(&enrolled.secret, app.clock.now().unix_timestamp() + 30);
    let r = b
        .post_form(
            "/login/verify",
            &[("csrf_token", &verify.csrf()), ("code", &code)],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert!(
        r.location().starts_with("/oauth2/authorize?"),
        "{}",
        r.location()
    );
    let r = b.get(&r.location()).await;
    assert!(r.location().starts_with(CB), "{}", r.location());
    let code = param(&location_params(&r), "code").unwrap();
    let (s, body) = exchange(&app, &client, &code, Some(&verifier)).await;
    assert_eq!(s, 200);
    let (_, id) = jwt_parts(body["id_token"].as_str().unwrap());
    assert_eq!(id["acr"], "urn:gatehouse:aal2");
    assert!(
        id["amr"].as_array().unwrap().contains(&json!("otp")),
        "{}",
        id["amr"]
    );
}

/// Posts the sign-in form of `page` (a `/login?return_to=…` page) as `email`.
async fn sign_in_form(
    b: &crate::helpers::Browser,
    page: &crate::helpers::Resp,
    email: &str,
    return_to: &str,
) -> crate::helpers::Resp {
    b.post_form(
        "/login",
        &[
            ("csrf_token", &page.csrf()),
            ("email", email),
            ("password", crate::helpers::PASSWORD),
            ("return_to", return_to),
        ],
    )
    .await
}

#[tokio::test]
async fn authorize_accepts_post_and_userinfo_names_bearer_errors() {
    // OIDC Core §3.1.2.1 (GET and POST); RFC 6750 §3.1.
    let app = spawn_app().await;
    let client = app_client(&app);
    let mut b = app.signed_in("alice@example.com").await;
    // An app's page posts it cross-site: no CSRF token, and still a code.
    b.extra_headers
        .push(("sec-fetch-site".into(), "cross-site".into()));
    let query = authorize_url(&client, &[])
        .split_once('?')
        .unwrap()
        .1
        .to_string();
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let form: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let r = b.post_form("/oauth2/authorize", &form).await;
    // Answered as a GET of the same request: a top-level navigation, which carries
    // the SameSite=Lax session cookie that a cross-site POST does not.
    assert_eq!(r.status, 303, "{}", r.body);
    assert!(
        r.location().starts_with("/oauth2/authorize?"),
        "{}",
        r.location()
    );
    assert_eq!(
        app.count("SELECT count(*) FROM oauth_codes").await,
        0,
        "the POST itself issued nothing"
    );
    let r = b.get(&r.location()).await;
    assert!(r.location().starts_with(CB));
    assert!(param(&location_params(&r), "code").is_some());

    let http = reqwest::Client::new();
    let r = http
        .get(format!("{}/oauth2/userinfo", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let h = r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(h.starts_with("Bearer") && !h.contains("error="), "{h}");
    let (s, _, body) = post(
        &app,
        "/oauth2/token",
        &client,
        &[("grant_type", "client_credentials")],
    )
    .await;
    assert_eq!(s, 200);
    let (s, h, _) = userinfo(&app, body["access_token"].as_str().unwrap()).await;
    assert_eq!(s, 403);
    assert!(
        h["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("insufficient_scope")
    );
}

#[tokio::test]
async fn client_commands_check_uris_show_the_secret_once_and_delete_everything_of_a_client() {
    let app = spawn_app().await;
    for bad in [
        "http://rp.test/cb",
        "https://rp.test/cb#frag",
        "/cb",
        "https://RP.test/cb",
        "javascript:alert(1)",
    ] {
        let (ok, _, err) = app.cli(
            &["client", "create", "--name", "X", "--redirect-uri", bad],
            &[],
        );
        assert!(!ok, "{bad} was accepted");
        assert!(
            err.contains(bad) || err.contains("redirect"),
            "{bad}: {err}"
        );
    }
    let (ok, _, err) = app.cli(
        &[
            "client",
            "create",
            "--name",
            "X",
            "--redirect-uri",
            CB,
            "--backchannel-logout-uri",
            "com.example.app:/x",
        ],
        &[],
    );
    assert!(!ok, "{err}");
    let public = create_client(&app, &["--public"]);
    assert!(public.secret.is_none());
    let conf = app_client(&app);
    let secret = conf.secret.clone().unwrap();
    assert_eq!(secret.len(), 43, "32 random bytes, base64url");
    // Only the SHA-256 is stored.
    let stored: Vec<u8> = sqlx::query_scalar("SELECT secret_hash FROM oauth_clients WHERE id = $1")
        .bind(&conf.id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(stored.len(), 32);
    assert!(!String::from_utf8_lossy(&stored).contains(&secret));
    let (ok, out, _) = app.cli(&["client", "list"], &[]);
    assert!(ok);
    assert_eq!(out.lines().count(), 2);
    assert!(!out.contains(&secret), "list never shows a secret");
    let b = app.signed_in("alice@example.com").await;
    let t = sign_in_app(&app, &b, &conf, &[]).await;
    let (ok, _, err) = app.cli(&["client", "delete", &conf.id], &[]);
    assert!(ok, "{err}");
    let (ok, _, _) = app.cli(&["client", "delete", &conf.id], &[]);
    assert!(!ok, "deleting twice says so");
    assert_eq!(app.count("SELECT count(*) FROM oauth_grants").await, 0);
    assert_eq!(userinfo(&app, &t.access).await.0, 401);
    let (s, _, body) = post(
        &app,
        "/oauth2/token",
        &conf,
        &[("grant_type", "client_credentials")],
    )
    .await;
    assert_eq!((s, body["error"].as_str()), (401, Some("invalid_client")));
}

#[tokio::test]
async fn prompt_login_for_a_totp_user_goes_through_the_second_factor_once_and_back() {
    // O8 with a second factor: the mark is carried through /login/verify.
    let app = spawn_app().await;
    let client = app_client(&app);
    let b = app.signed_in("alice@example.com").await;
    let enrolled = crate::otp::enrol(&app, &b, "alice@example.com").await;
    let r = b.get(&authorize_url(&client, &[("prompt", "login")])).await;
    let login = r.location();
    let page = b.get(&login).await;
    let r = sign_in_form(&b, &page, "alice@example.com", &return_to_of(&login)).await;
    assert_eq!(r.location(), "/login/verify");
    let verify = b.get("/login/verify").await;
    let code = crate::otp::totp(&enrolled.secret, app.clock.now().unix_timestamp() + 30);
    let r = b
        .post_form(
            "/login/verify",
            &[("csrf_token", &verify.csrf()), ("code", &code)],
        )
        .await;
    assert!(
        r.location().starts_with("/oauth2/authorize?"),
        "{}",
        r.location()
    );
    let r = b.get(&r.location()).await;
    assert!(
        r.location().starts_with(CB),
        "no second round: {}",
        r.location()
    );
}

#[tokio::test]
async fn logout_without_anything_naming_the_app_asks_and_does_not_follow_the_address() {
    // O12: a return address that nothing vouches for is not followed.
    let app = spawn_app().await;
    let b = app.signed_in("alice@example.com").await;
    let r = b.get("/oauth2/logout?post_logout_redirect_uri=https%3A%2F%2Fevil.test%2F&id_token_hint=x.y.z").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let request = crate::otp::unescape(
        r.body
            .split("name=\"request\" value=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap(),
    );
    let r = b
        .post_form(
            "/oauth2/logout",
            &[("csrf_token", &r.csrf()), ("request", &request)],
        )
        .await;
    assert_eq!(r.status, 200, "a signed-out page, not a redirect");
    assert!(r.header("location").is_none());
    assert!(r.body.contains("You are signed out"));
}

#[tokio::test]
async fn a_spent_code_without_its_verifier_revokes_nothing() {
    // O4: only the code's own client, with its own proof, triggers the revocation.
    let app = spawn_app().await;
    let public = create_client(&app, &["--first-party", "--public"]);
    let b = app.signed_in("alice@example.com").await;
    let (verifier, challenge) = pkce();
    let code = code_for(
        &b,
        &public,
        &[
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ],
    )
    .await;
    let (s, body) = exchange(&app, &public, &code, Some(&verifier)).await;
    assert_eq!(s, 200);
    let (s, _) = exchange(&app, &public, &code, None).await;
    assert_eq!(s, 400);
    let (s, _) = refresh(&app, &public, body["refresh_token"].as_str().unwrap()).await;
    assert_eq!(
        s, 200,
        "someone who only saw the spent code revoked nothing"
    );
}

#[tokio::test]
async fn housekeeping_keeps_a_live_familys_spent_refresh_tokens_so_theft_is_still_seen() {
    let app = spawn_app_with(Options {
        frozen_clock: true,
        extra: vec![
            ("GATEHOUSE_HOUSEKEEPING_INTERVAL", "100ms".into()),
            ("GATEHOUSE_REFRESH_TOKEN_TTL", "1h".into()),
        ],
        ..Options::default()
    })
    .await;
    let client = app_client(&app);
    let b = app.browser();
    app.register(&b, "alice@example.com", crate::helpers::PASSWORD)
        .await;
    let csrf = b.get("/account").await.csrf();
    b.post_form("/logout", &[("csrf_token", &csrf)]).await;
    let r = app
        .login_with(
            &b,
            "alice@example.com",
            crate::helpers::PASSWORD,
            &[("remember", "1")],
        )
        .await;
    assert_eq!(r.status, 303);
    let t = sign_in_app(&app, &b, &client, &[]).await;
    let first = t.refresh.clone();
    let mut token = t.refresh;
    // Two days of refreshing every 50 minutes: the first token expired long ago.
    for _ in 0..58 {
        app.clock.advance(std::time::Duration::from_secs(50 * 60));
        let (s, body) = refresh(&app, &client, &token).await;
        assert_eq!(s, 200, "{body}");
        token = body["refresh_token"].as_str().unwrap().to_string();
    }
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert!(app.metric("gatehouse_housekeeping_runs_total").await >= 1.0);
    let kept: i64 = app
        .count(&format!(
            "SELECT count(*) FROM oauth_refresh_tokens WHERE token_hash = decode('{}', 'hex')",
            sha256_hex(&first)
        ))
        .await;
    assert_eq!(
        kept, 1,
        "the spent first token is kept while its family lives"
    );
    // The stolen first token comes back: theft, the family and the session die.
    let (s, _) = refresh(&app, &client, &first).await;
    assert_eq!(s, 400);
    let (s, _) = refresh(&app, &client, &token).await;
    assert_eq!(s, 400, "the family is revoked");
    assert!(b.get("/account").await.is_sign_in_redirect());
}

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The code flow of a native app listening on `redirect` (a loopback port of its own):
/// authorize, then exchange with `token_redirect`. Returns the token endpoint's answer.
async fn native_flow(
    app: &crate::helpers::TestApp,
    b: &crate::helpers::Browser,
    client: &Client,
    redirect: &str,
    token_redirect: &str,
) -> (u16, Value) {
    let (verifier, challenge) = pkce();
    let r = b
        .get(&authorize_url(
            client,
            &[
                ("redirect_uri", redirect),
                ("code_challenge", &challenge),
                ("code_challenge_method", "S256"),
            ],
        ))
        .await;
    assert_eq!(r.status, 303, "{redirect}: {}", r.body);
    assert!(
        r.location().starts_with(&format!("{redirect}?")),
        "{redirect}: sent to {}",
        r.location()
    );
    let code = param(&location_params(&r), "code").expect("a code");
    let (s, _, body) = post(
        app,
        "/oauth2/token",
        client,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", token_redirect),
            ("code_verifier", &verifier),
        ],
    )
    .await;
    (s, body)
}

// Issue 24, item 10 (RFC 8252 §7.3): a native app registers its loopback IP redirect
// without (or with any) port and listens on whatever port the system gives it.
#[tokio::test]
async fn a_native_app_on_a_loopback_ip_may_use_any_port_and_nothing_else_changes() {
    let app = spawn_app().await;
    let client = create_client(
        &app,
        &[
            "--public",
            "--first-party",
            "--redirect-uri",
            "http://127.0.0.1/callback",
            "--redirect-uri",
            "http://[::1]:8400/callback",
            "--redirect-uri",
            "http://localhost:3000/callback",
        ],
    );
    let b = app.signed_in("alice@example.com").await;
    for redirect in [
        "http://127.0.0.1:51234/callback",
        "http://127.0.0.1/callback",
        "http://[::1]:61000/callback",
        "http://[::1]/callback",
        "http://localhost:3000/callback",
    ] {
        let (s, body) = native_flow(&app, &b, &client, redirect, redirect).await;
        assert_eq!(s, 200, "{redirect}: {body}");
        assert!(body["access_token"].is_string());
    }
    // The token request names the very URI of the authorization request: the
    // registered one, or another port, is not it.
    for (used, other) in [
        (
            "http://127.0.0.1:51234/callback",
            "http://127.0.0.1/callback",
        ),
        (
            "http://127.0.0.1:51234/callback",
            "http://127.0.0.1:51235/callback",
        ),
        ("http://[::1]:61000/callback", "http://[::1]:8400/callback"),
    ] {
        let (s, body) = native_flow(&app, &b, &client, used, other).await;
        assert_eq!(s, 400, "{used} then {other}: {body}");
        assert_eq!(body["error"], "invalid_grant");
    }
    // localhost, and anything but the port, still match exactly (O1).
    for bad in [
        "http://localhost:3001/callback",
        "http://localhost/callback",
        "http://127.0.0.1:51234/callback/",
        "http://127.0.0.1:51234/Callback",
        "http://127.0.0.1:51234/callback?x=1",
        "http://127.0.0.1:0/callback",
        "http://127.0.0.1:/callback",
        "http://127.0.0.2:51234/callback",
        "http://127.0.0.1.evil.test/callback",
        "https://127.0.0.1:51234/callback",
        "http://[::1]:61000/callback/x",
    ] {
        let r = b
            .get(&authorize_url(&client, &[("redirect_uri", bad)]))
            .await;
        assert_eq!(r.status, 400, "{bad}");
        assert!(r.header("location").is_none(), "{bad} redirected");
        assert!(r.body.contains("has not registered"), "{bad}: {}", r.body);
    }
}

// Issue 24, item 12: the README states the access token's size (some proxies' caches
// key on the Authorization header, and some limit header sizes).
#[tokio::test]
async fn an_access_token_is_about_nine_hundred_bytes() {
    let app = spawn_app().await;
    let client = app_client(&app);
    let b = app.signed_in("alice@example.com").await;
    let t = sign_in_app(&app, &b, &client, &[]).await;
    println!("access token: {} bytes", t.access.len());
    assert!(
        (800..=1000).contains(&t.access.len()),
        "{} bytes: update the README",
        t.access.len()
    );
}
