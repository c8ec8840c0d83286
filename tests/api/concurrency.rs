//! Concurrency storms: two (or more) requests on the same rows released at once,
//! round after round. Whatever the order PostgreSQL picks, nobody gets a 5xx, the
//! database counts no deadlock (the store takes its locks in one order, see
//! `store` module documentation), and each request's effect holds.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::future::join_all;
use serde_json::Value;
use tokio::sync::Barrier;

use crate::helpers::{Browser, PASSWORD, Resp, TestApp, spawn_app};
use crate::oauth_helpers::{
    CB, Client, app_client, authorize_url, code_for, create_client, exchange, inactive, introspect,
    location_params, param, pkce, refresh, sign_in_app,
};

const ROUNDS: usize = 12;

/// Deadlocks PostgreSQL detected in this test's database. The server's connections
/// are ended first: a backend reports its pending statistics when it exits (they are
/// otherwise flushed at most once a second, or ten seconds after going idle).
async fn deadlocks(app: &TestApp) -> i64 {
    sqlx::query(
        "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity
         WHERE datname = current_database() AND application_name = 'gatehouse'",
    )
    .execute(&app.db)
    .await
    .expect("ending the server's connections");
    let mut conn = app.db.acquire().await.expect("a connection");
    let mut seen = 0;
    for _ in 0..5 {
        sqlx::query("SELECT pg_stat_clear_snapshot()")
            .execute(&mut *conn)
            .await
            .expect("clearing the statistics snapshot");
        seen = sqlx::query_scalar(
            "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()",
        )
        .fetch_one(&mut *conn)
        .await
        .expect("reading pg_stat_database");
        if seen > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    seen
}

fn no_5xx(what: &str, statuses: &[u16]) {
    assert!(
        statuses.iter().all(|s| *s < 500),
        "{what}: a request failed with {statuses:?}"
    );
}

async fn user_id(app: &TestApp, email: &str) -> uuid::Uuid {
    sqlx::query_scalar("SELECT id FROM users WHERE email = $1")
        .bind(email)
        .fetch_one(&app.db)
        .await
        .expect("the user")
}

async fn live_sessions(app: &TestApp, user: uuid::Uuid) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM sessions WHERE user_id = $1 AND revoked_at IS NULL")
        .bind(user)
        .fetch_one(&app.db)
        .await
        .expect("counting sessions")
}

/// Stores a mailed link for `user` as the server would, and returns its token.
async fn plant_link(
    app: &TestApp,
    user: uuid::Uuid,
    purpose: &str,
    new_email: Option<&str>,
    session: Option<uuid::Uuid>,
) -> String {
    let token = gatehouse::crypto::random_token();
    sqlx::query(
        "INSERT INTO email_tokens (token_hash, purpose, user_id, new_email, session_id,
                                   created_at, expires_at)
         VALUES ($1, $2, $3, $4, $5, now(), now() + interval '1 hour')",
    )
    .bind(gatehouse::crypto::token_hash(&token))
    .bind(purpose)
    .bind(user)
    .bind(new_email)
    .bind(session)
    .execute(&app.db)
    .await
    .expect("planting a link");
    token
}

/// The form behind a mailed link, ready to be posted: (path, csrf, token).
async fn link_form(b: &Browser, path: &str, token: &str) -> String {
    let page = b.get(&format!("{path}?token={token}")).await;
    assert_eq!(page.status, 200, "{path}: {}", page.body);
    page.csrf()
}

#[tokio::test]
async fn a_replayed_code_racing_a_refresh_of_its_grant_always_ends_the_grant() {
    // O10: a replayed code revokes its grant, even while the grant is being refreshed.
    let app = spawn_app().await;
    let client = app_client(&app);
    let b = app.signed_in("replay@example.com").await;
    for _ in 0..ROUNDS {
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
        assert_eq!(s, 200, "{first}");
        let refresh_token = first["refresh_token"]
            .as_str()
            .expect("refresh")
            .to_string();
        let gate = Barrier::new(2);
        let ((replay, replayed), (rotation, rotated)) = tokio::join!(
            async {
                gate.wait().await;
                exchange(&app, &client, &code, Some(&verifier)).await
            },
            async {
                gate.wait().await;
                refresh(&app, &client, &refresh_token).await
            },
        );
        no_5xx("replay and refresh", &[replay, rotation]);
        assert_eq!(replay, 400, "{replayed}");
        if rotation == 200 {
            let newer = rotated["refresh_token"].as_str().expect("refresh");
            assert_eq!(introspect(&app, &client, newer).await, inactive());
            let access = rotated["access_token"].as_str().expect("access");
            assert_eq!(introspect(&app, &client, access).await, inactive());
        }
        assert_eq!(
            app.count(&format!(
                "SELECT count(*) FROM oauth_grants WHERE client_id = '{}' AND revoked_at IS NULL",
                client.id
            ))
            .await,
            0,
            "the replayed code's grant is dead"
        );
    }
    assert_eq!(deadlocks(&app).await, 0);
}

/// Refreshes in a loop (each with the token the last one gave) until `stop`;
/// returns every status seen.
async fn keep_refreshing(
    address: String,
    client: Client,
    mut token: String,
    stop: Arc<AtomicBool>,
) -> Vec<u16> {
    let http = reqwest::Client::new();
    let mut seen = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let res = http
            .post(format!("{address}/oauth2/token"))
            .basic_auth(&client.id, client.secret.as_deref())
            .form(&[("grant_type", "refresh_token"), ("refresh_token", &token)])
            .send()
            .await;
        let Ok(res) = res else {
            break;
        };
        let status = res.status().as_u16();
        seen.push(status);
        if status != 200 {
            break;
        }
        let body: Value =
            serde_json::from_str(&res.text().await.unwrap_or_default()).expect("JSON");
        token = body["refresh_token"].as_str().expect("refresh").to_string();
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_client_while_its_tokens_rotate_succeeds_and_ends_them_all() {
    // An operator can remove a compromised client while it is in use.
    let app = spawn_app().await;
    let b = app.signed_in("busy@example.com").await;
    for _ in 0..3 {
        let client = app_client(&app);
        let mut refreshers = Vec::new();
        let stop = Arc::new(AtomicBool::new(false));
        for _ in 0..4 {
            let t = sign_in_app(&app, &b, &client, &[("scope", "openid offline_access")]).await;
            refreshers.push(tokio::spawn(keep_refreshing(
                app.address.clone(),
                client.clone(),
                t.refresh,
                stop.clone(),
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (ok, _, err) =
            tokio::task::block_in_place(|| app.cli(&["client", "delete", &client.id], &[]));
        stop.store(true, Ordering::Relaxed);
        assert!(ok, "client delete failed: {err}");
        let mut statuses = Vec::new();
        for r in refreshers {
            statuses.extend(r.await.expect("the refresher finishes"));
        }
        no_5xx("refreshes during the delete", &statuses);
        for table in ["oauth_clients WHERE id", "oauth_grants WHERE client_id"] {
            assert_eq!(
                app.count(&format!("SELECT count(*) FROM {table} = '{}'", client.id))
                    .await,
                0,
                "{table}"
            );
        }
        assert_eq!(
            app.count("SELECT count(*) FROM oauth_refresh_tokens").await,
            0,
            "every refresh token died with its client"
        );
    }
    assert_eq!(deadlocks(&app).await, 0);
}

#[tokio::test]
async fn withdrawing_consent_racing_an_authorization_leaves_no_token_pair_without_consent() {
    let app = spawn_app().await;
    let client = create_client(&app, &[]);
    let b = app.signed_in("consent@example.com").await;
    let url = authorize_url(&client, &[]);
    // Allowed once on the consent page.
    let r = b.get(&url).await;
    assert!(
        r.location().starts_with("/oauth2/consent?"),
        "{}",
        r.location()
    );
    let page = b.get(&r.location()).await;
    let request = page
        .body
        .split("name=\"request\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .map(crate::otp::unescape)
        .expect("the consent form");
    let csrf = page.csrf();
    let fields = [
        ("csrf_token", csrf.as_str()),
        ("request", request.as_str()),
        ("decision", "allow"),
    ];
    let allowed = b.post_form("/oauth2/consent", &fields).await;
    assert!(
        allowed.location().starts_with(CB),
        "{}: {}",
        allowed.location(),
        allowed.body
    );
    let consent: (uuid::Uuid, String, String) =
        sqlx::query_as("SELECT user_id, client_id, scope FROM oauth_consents")
            .fetch_one(&app.db)
            .await
            .expect("the consent");
    let csrf = b.get("/account").await.csrf();
    let withdraw = format!("/account/apps/{}/withdraw", client.id);
    for _ in 0..ROUNDS * 2 {
        sqlx::query(
            "INSERT INTO oauth_consents (user_id, client_id, scope, granted_at)
             VALUES ($1, $2, $3, now()) ON CONFLICT DO NOTHING",
        )
        .bind(consent.0)
        .bind(&consent.1)
        .bind(&consent.2)
        .execute(&app.db)
        .await
        .expect("consent again");
        let gate = Barrier::new(2);
        let (authorized, withdrawn) = tokio::join!(
            async {
                gate.wait().await;
                b.get(&url).await
            },
            async {
                gate.wait().await;
                b.post_form(&withdraw, &[("csrf_token", &csrf)]).await
            },
        );
        no_5xx(
            "authorize and withdraw",
            &[authorized.status, withdrawn.status],
        );
        assert_eq!(withdrawn.status, 303);
        if let Some(code) = authorized
            .location()
            .starts_with(CB)
            .then(|| param(&location_params(&authorized), "code"))
            .flatten()
        {
            let (s, tokens) = exchange(&app, &client, &code, None).await;
            no_5xx("exchange", &[s]);
            if s == 200 {
                let access = tokens["access_token"].as_str().expect("access");
                assert_eq!(
                    introspect(&app, &client, access).await,
                    inactive(),
                    "a token pair outlived the consent"
                );
            }
        }
        assert_eq!(app.count("SELECT count(*) FROM oauth_consents").await, 0);
        assert_eq!(
            app.count("SELECT count(*) FROM oauth_grants WHERE revoked_at IS NULL")
                .await,
            0,
            "no live grant without consent"
        );
    }
    assert_eq!(deadlocks(&app).await, 0);
}

#[tokio::test]
async fn sign_ins_from_one_address_neither_deadlock_nor_count_backoff_answers_as_failures() {
    // A busy office behind one address: a dozen browsers signing in to one account
    // at once. Per-account backoff may answer 429 while right passwords are in
    // flight; those answers are not failures of the address.
    let app = spawn_app().await;
    app.user("office@example.com").await;
    for _ in 0..3 {
        let browsers: Vec<Browser> = (0..12).map(|_| app.browser()).collect();
        let mut forms = Vec::new();
        for b in &browsers {
            forms.push(b.get("/login").await.csrf_or_empty());
        }
        let gate = Barrier::new(browsers.len());
        let answers: Vec<Resp> = join_all(browsers.iter().zip(&forms).map(|(b, csrf)| {
            let gate = &gate;
            async move {
                gate.wait().await;
                b.post_form(
                    "/login",
                    &[
                        ("csrf_token", csrf.as_str()),
                        ("email", "office@example.com"),
                        ("password", PASSWORD),
                    ],
                )
                .await
            }
        }))
        .await;
        let statuses: Vec<u16> = answers.iter().map(|r| r.status).collect();
        no_5xx("sign-ins from one address", &statuses);
        assert!(
            statuses.iter().all(|s| *s == 303 || *s == 429),
            "{statuses:?}"
        );
        assert_eq!(
            app.count(
                "SELECT COALESCE(sum(failures), 0)::bigint FROM sign_in_throttle WHERE scope = 'ip'"
            )
            .await,
            0,
            "right passwords and backoff answers are no failures of the address"
        );
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    assert_eq!(deadlocks(&app).await, 0);
}

#[tokio::test]
async fn a_double_submitted_sign_in_leaves_one_live_session() {
    let app = spawn_app().await;
    app.user("twice@example.com").await;
    let user = user_id(&app, "twice@example.com").await;
    let b = app.browser();
    // Known to the server (a device cookie) from an earlier sign-in.
    assert_eq!(
        app.login(&b, "twice@example.com", PASSWORD).await.status,
        303
    );
    for _ in 0..ROUNDS / 2 {
        let csrf = b.get("/account").await.csrf();
        assert_eq!(
            b.post_form("/logout", &[("csrf_token", &csrf)])
                .await
                .status,
            303
        );
        let csrf = b.get("/login").await.csrf();
        let form = [
            ("csrf_token", csrf.as_str()),
            ("email", "twice@example.com"),
            ("password", PASSWORD),
        ];
        let gate = Barrier::new(2);
        let (one, two) = tokio::join!(
            async {
                gate.wait().await;
                b.post_form("/login", &form).await
            },
            async {
                gate.wait().await;
                b.post_form("/login", &form).await
            },
        );
        no_5xx("double submit", &[one.status, two.status]);
        assert_eq!(
            live_sessions(&app, user).await,
            1,
            "one browser, one session"
        );
        // Whichever cookie the browser kept last, it must be the live one: sign in
        // once more the ordinary way so the next round starts signed in.
        if b.get("/account").await.status != 200 {
            assert_eq!(
                app.login(&b, "twice@example.com", PASSWORD).await.status,
                303
            );
        }
    }
    assert_eq!(deadlocks(&app).await, 0);
}

#[tokio::test]
async fn concurrent_forgot_passwords_leave_one_live_reset_link() {
    let app = spawn_app().await;
    for n in 0..4 {
        let email = format!("forgot{n}@example.com");
        app.user(&email).await;
        let user = user_id(&app, &email).await;
        let browsers: Vec<Browser> = (0..3).map(|_| app.browser()).collect();
        let mut forms = Vec::new();
        for b in &browsers {
            forms.push(b.get("/password/forgot").await.csrf());
        }
        let gate = Barrier::new(browsers.len());
        let answers: Vec<Resp> = join_all(browsers.iter().zip(&forms).map(|(b, csrf)| {
            let (gate, email) = (&gate, &email);
            async move {
                gate.wait().await;
                b.post_form(
                    "/password/forgot",
                    &[("csrf_token", csrf.as_str()), ("email", email.as_str())],
                )
                .await
            }
        }))
        .await;
        no_5xx(
            "forgot-password",
            &answers.iter().map(|r| r.status).collect::<Vec<_>>(),
        );
        app.wait_until(
            &format!(
                "SELECT count(*) FROM email_tokens WHERE purpose = 'reset' AND user_id = '{user}'"
            ),
            3,
        )
        .await;
        assert_eq!(
            app.count(&format!(
                "SELECT count(*) FROM email_tokens WHERE purpose = 'reset' AND user_id = '{user}'
                   AND used_at IS NULL"
            ))
            .await,
            1,
            "only the newest works"
        );
    }
    assert_eq!(deadlocks(&app).await, 0);
}

/// Races two mailed links of one person against each other, `ROUNDS` times.
async fn race_links(app: &TestApp, user: uuid::Uuid, first: (&str, &str), second: (&str, &str)) {
    for round in 0..ROUNDS {
        let mut posts = Vec::new();
        for (purpose, path) in [first, second] {
            let new_email =
                (purpose == "change").then(|| format!("moved{round}-{purpose}@example.com"));
            let token = plant_link(app, user, purpose, new_email.as_deref(), None).await;
            let b = app.browser();
            let csrf = link_form(&b, path, &token).await;
            posts.push((b, path, csrf, token));
        }
        let gate = Barrier::new(2);
        let answers = join_all(posts.iter().map(|(b, path, csrf, token)| {
            let gate = &gate;
            async move {
                gate.wait().await;
                let mut form = vec![("csrf_token", csrf.as_str()), ("token", token.as_str())];
                if *path == "/password/reset" {
                    form.push(("password", "a brand new passphrase"));
                }
                b.post_form(path, &form).await
            }
        }))
        .await;
        no_5xx(
            &format!("{first:?} and {second:?}"),
            &answers.iter().map(|r| r.status).collect::<Vec<_>>(),
        );
    }
}

#[tokio::test]
async fn mailed_links_of_one_person_used_at_once_never_deadlock() {
    let app = spawn_app().await;
    app.user("links@example.com").await;
    let user = user_id(&app, "links@example.com").await;
    // Verification and change of address; a reset and a change of address; two
    // resets at once.
    race_links(
        &app,
        user,
        ("verify", "/verify-email"),
        ("change", "/account/email/confirm"),
    )
    .await;
    race_links(
        &app,
        user,
        ("reset", "/password/reset"),
        ("change", "/account/email/confirm"),
    )
    .await;
    race_links(
        &app,
        user,
        ("reset", "/password/reset"),
        ("reset", "/password/reset"),
    )
    .await;
    assert_eq!(deadlocks(&app).await, 0);
}

#[tokio::test]
async fn this_wasnt_me_racing_the_same_browser_signing_in_again_ends_the_reported_session() {
    let app = spawn_app().await;
    app.user("owner@example.com").await;
    let user = user_id(&app, "owner@example.com").await;
    let intruder = app.browser();
    assert_eq!(
        app.login(&intruder, "owner@example.com", PASSWORD)
            .await
            .status,
        303
    );
    for _ in 0..ROUNDS {
        if intruder.get("/account").await.status != 200 {
            assert_eq!(
                app.login(&intruder, "owner@example.com", PASSWORD)
                    .await
                    .status,
                303
            );
        }
        let reported: uuid::Uuid =
            sqlx::query_scalar("SELECT id FROM sessions WHERE user_id = $1 AND revoked_at IS NULL")
                .bind(user)
                .fetch_one(&app.db)
                .await
                .expect("the intruder's session");
        let token = plant_link(&app, user, "not-me", None, Some(reported)).await;
        let owner = app.browser();
        let owner_csrf = link_form(&owner, "/not-me", &token).await;
        let csrf = intruder.get("/account").await.csrf();
        let gate = Barrier::new(2);
        let (report, again) = tokio::join!(
            async {
                gate.wait().await;
                owner
                    .post_form("/not-me", &[("csrf_token", &owner_csrf), ("token", &token)])
                    .await
            },
            async {
                gate.wait().await;
                intruder
                    .post_form(
                        "/login",
                        &[
                            ("csrf_token", csrf.as_str()),
                            ("email", "owner@example.com"),
                            ("password", PASSWORD),
                        ],
                    )
                    .await
            },
        );
        no_5xx("report and sign-in", &[report.status, again.status]);
        assert_eq!(report.status, 200, "{}", report.body);
        assert_eq!(
            app.count(&format!(
                "SELECT count(*) FROM sessions WHERE id = '{reported}' AND revoked_at IS NULL"
            ))
            .await,
            0,
            "the reported session is dead"
        );
    }
    assert_eq!(deadlocks(&app).await, 0);
}

#[tokio::test]
async fn a_password_change_racing_signing_out_the_other_devices_never_deadlocks() {
    let app = spawn_app().await;
    let email = "protect@example.com";
    let owner = app.signed_in(email).await;
    let mut password = PASSWORD.to_string();
    for round in 0..ROUNDS {
        // A few other sessions to sign out.
        let others: Vec<Browser> = (0..3).map(|_| app.browser()).collect();
        for b in &others {
            assert_eq!(app.login(b, email, &password).await.status, 303);
        }
        // "Sign out all other devices" or "sign out everywhere" from another
        // browser: both end the owner's session too.
        let path = if round % 2 == 0 {
            "/account/devices/revoke-others"
        } else {
            "/account/devices/revoke-all"
        };
        let devices_csrf = others[0].get("/account/devices").await.csrf();
        if owner.get("/account").await.status != 200 {
            // Signed out by the last round: sign in again.
            assert_eq!(app.login(&owner, email, &password).await.status, 303);
        }
        if owner.get("/account/password").await.status != 200 {
            // Stepped up by e-mail the first time; later sign-ins are raised by
            // hand (the mailbox allows a few codes an hour).
            if round == 0 {
                crate::otp::step_up_by_email(&app, &owner, email, "/account/password").await;
            } else {
                sqlx::query(
                    "UPDATE sessions SET aal = 'aal2', aal_reached_at = now()
                     WHERE id = (SELECT id FROM sessions WHERE revoked_at IS NULL
                                 ORDER BY created_at DESC LIMIT 1)",
                )
                .execute(&app.db)
                .await
                .expect("raising the session");
            }
        }
        let next = format!("a brand new passphrase {round}");
        // The owner's session was used last: its row is the newest.
        let page = owner.get("/account/password").await;
        assert_eq!(page.status, 200, "{}", page.body);
        let csrf = page.csrf();
        let gate = Barrier::new(2);
        let (changed, signed_out) = tokio::join!(
            async {
                gate.wait().await;
                owner
                    .post_form(
                        "/account/password",
                        &[
                            ("csrf_token", csrf.as_str()),
                            ("current_password", password.as_str()),
                            ("new_password", next.as_str()),
                            ("new_password_again", next.as_str()),
                        ],
                    )
                    .await
            },
            async {
                gate.wait().await;
                // The password change hashes before its transaction: the sign-out
                // is released a little later each round, to meet it there.
                tokio::time::sleep(Duration::from_millis(2 * round as u64)).await;
                others[0]
                    .post_form(path, &[("csrf_token", devices_csrf.as_str())])
                    .await
            },
        );
        no_5xx(
            "password change and sign-out",
            &[changed.status, signed_out.status],
        );
        if changed.status == 200 {
            password = next;
        }
        for b in &others[1..] {
            assert!(b.get("/account").await.is_sign_in_redirect(), "signed out");
        }
    }
    assert_eq!(deadlocks(&app).await, 0);
}
