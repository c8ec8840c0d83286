//! The review findings on the core and mail, one test each, named after the finding.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::helpers::{Browser, Options, PASSWORD, TestApp, spawn_app, spawn_app_with};

fn behind_proxy() -> Options {
    Options {
        trusted_proxies: Some("127.0.0.1/32".into()),
        ..Default::default()
    }
}

fn from_address(app: &TestApp, address: &str) -> Browser {
    let mut b = app.browser();
    b.extra_headers
        .push(("x-forwarded-for".into(), address.to_string()));
    b
}

/// Counter and gauge samples of `/metrics`, without latency histograms (their
/// buckets move with timing, not with what was asked).
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.contains("_duration_seconds"))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_string(), value.parse().ok()?))
        })
        .collect()
}

fn delta(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    after
        .iter()
        .filter_map(|(k, v)| {
            let d = v - before.get(k).copied().unwrap_or(0.0);
            (d != 0.0).then(|| (k.clone(), d))
        })
        .collect()
}

#[tokio::test]
async fn defect_1_metrics_labels_take_only_known_methods() {
    let app = spawn_app().await;
    let b = app.browser();
    for method in ["FOOBAR", "BREW", "X-ANYTHING-0", "X-ANYTHING-1"] {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let r = b.send(b.request(m, "/login")).await;
        assert!(r.status == 405 || r.status == 404, "{method}: {}", r.status);
    }
    let text = app.metrics_text().await;
    for made_up in ["FOOBAR", "BREW", "X-ANYTHING"] {
        assert!(!text.contains(made_up), "{made_up} became a label");
    }
    assert!(
        text.contains(r#"method="other""#),
        "unknown methods are counted as other"
    );
}

#[tokio::test]
async fn defect_2_metrics_move_alike_for_known_and_unknown_addresses() {
    // L2 (metrics side): a watcher of /metrics learns nothing from mail requests.
    let app = spawn_app_with(Options {
        require_verified_email: true,
        ..Default::default()
    })
    .await;
    let r = app
        .register(&app.browser(), "waiting@example.com", PASSWORD)
        .await;
    assert_eq!(r.status, 200);
    let link = app.mail.wait_for("waiting@example.com", 1).await[0].token("/verify-email");
    let known = app.browser();
    let r = app.register(&known, "known@example.com", PASSWORD).await;
    assert_eq!(r.status, 200);
    let confirm = app.mail.wait_for("known@example.com", 1).await[0].token("/verify-email");
    assert_eq!(
        known
            .open_link(&format!("/verify-email?token={confirm}"))
            .await
            .status,
        200
    );
    let _ = link;
    app.wait_until("SELECT count(*) FROM mail_outbox WHERE sent_at IS NULL", 0)
        .await;

    // Each request, then until its mail (if any) is delivered.
    // Each request; for a real account, until its mail is delivered.
    let ask = |path: &'static str, email: &'static str, mails_after: usize| {
        let app = &app;
        async move {
            let before = samples(&app.metrics_text().await);
            let b = app.browser();
            let csrf = b.get("/login").await.csrf();
            let r = b
                .post_form(path, &[("csrf_token", &csrf), ("email", email)])
                .await;
            assert_eq!(r.status, 200, "{}", r.body);
            if mails_after > 0 {
                app.mail.wait_for(email, mails_after).await;
            }
            app.wait_until("SELECT count(*) FROM mail_outbox WHERE sent_at IS NULL", 0)
                .await;
            let after = samples(&app.metrics_text().await);
            delta(&before, &after)
        }
    };
    let known_reset = ask("/password/forgot", "known@example.com", 2).await;
    let unknown_reset = ask("/password/forgot", "nobody@example.com", 0).await;
    assert_eq!(known_reset, unknown_reset, "forgot-password");
    assert!(
        known_reset
            .keys()
            .any(|k| k.contains(r#"mail_requests_total{purpose="password_reset"}"#)),
        "{known_reset:?}"
    );

    let waiting_resend = ask("/verify-email/resend", "waiting@example.com", 2).await;
    let unknown_resend = ask("/verify-email/resend", "nobody2@example.com", 0).await;
    assert_eq!(waiting_resend, unknown_resend, "resend");
}

#[tokio::test]
async fn defect_3_the_client_address_walk_parses_ports_and_stops_at_garbage() {
    // M8: a client-written entry left of garbage or of a port-carrying entry never wins.
    let app = spawn_app_with(behind_proxy()).await;
    let cases = [
        ("203.0.113.66, 198.51.100.1:4711", "198.51.100.1"),
        ("203.0.113.66, [2001:db8::5]:4711", "2001:db8::5"),
        ("203.0.113.66, not-an-address", "127.0.0.1"),
    ];
    for (i, (header, expected)) in cases.iter().enumerate() {
        let email = format!("walk{i}@example.com");
        let b = from_address(&app, header);
        assert_eq!(app.register(&b, &email, PASSWORD).await.status, 303);
        let ip: Vec<u8> = sqlx::query_scalar(
            "SELECT s.ip_enc FROM sessions s JOIN users u ON u.id = s.user_id
             WHERE u.email = $1 AND s.revoked_at IS NULL",
        )
        .bind(&email)
        .fetch_one(&app.db)
        .await
        .unwrap();
        let seen = app.keys().open("sessions.ip", &ip).unwrap();
        assert_eq!(String::from_utf8(seen).unwrap(), *expected, "{header}");
    }
    // With both headers, X-Forwarded-For decides (the documented rule).
    let mut b = from_address(&app, "198.51.100.9");
    b.extra_headers
        .push(("forwarded".into(), "for=203.0.113.66".into()));
    assert_eq!(
        app.register(&b, "both@example.com", PASSWORD).await.status,
        303
    );
    let ip: Vec<u8> = sqlx::query_scalar(
        "SELECT s.ip_enc FROM sessions s JOIN users u ON u.id = s.user_id WHERE u.email = 'both@example.com'",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(
        app.keys().open("sessions.ip", &ip).unwrap(),
        b"198.51.100.9"
    );
}

#[tokio::test]
async fn defect_4_registration_and_mail_limits_count_ipv6_clients_by_their_64() {
    let app = spawn_app_with(Options {
        registrations_per_ip_hour: 3,
        ..behind_proxy()
    })
    .await;
    let mut statuses = Vec::new();
    for i in 1..=4 {
        let b = from_address(&app, &format!("2001:db8:aa:bb::{i:x}"));
        let r = app
            .register(&b, &format!("v6-{i}@example.com"), PASSWORD)
            .await;
        statuses.push(r.status);
    }
    assert_eq!(statuses, [303, 303, 303, 429], "one /64, one budget");
    let other = from_address(&app, "2001:db8:aa:cc::1");
    assert_eq!(
        app.register(&other, "v6-other@example.com", PASSWORD)
            .await
            .status,
        303,
        "the next /64 has its own"
    );

    // The mail allowance per client address (20 an hour) too.
    let mut last = 0;
    for i in 0..21 {
        let b = from_address(&app, &format!("2001:db8:ee:ff::{:x}", i + 1));
        let csrf = b.get("/password/forgot").await.csrf();
        last = b
            .post_form(
                "/password/forgot",
                &[
                    ("csrf_token", &csrf),
                    ("email", &format!("x{i}@example.com")),
                ],
            )
            .await
            .status;
        if i < 20 {
            assert_eq!(last, 200, "request {i}");
        }
    }
    assert_eq!(last, 429, "the 21st mail request from one /64 waits");
}

#[tokio::test]
async fn defect_5_resend_answers_as_fast_for_a_waiting_account_as_for_none() {
    // L2 (timing): with every database round trip made slow, work done before the
    // answer would show as a gap of several round trips.
    let app = spawn_app_with(Options {
        require_verified_email: true,
        db_proxy: true,
        ..behind_proxy()
    })
    .await;
    for i in 0..8 {
        let r = app
            .register(&app.browser(), &format!("wait{i}@example.com"), PASSWORD)
            .await;
        assert_eq!(r.status, 200);
    }
    app.mail.wait_for("wait7@example.com", 1).await;
    app.proxy.as_ref().unwrap().set_latency(40);
    let mut waiting = Vec::new();
    let mut unknown = Vec::new();
    for i in 0..16 {
        let (email, times) = if i % 2 == 0 {
            (format!("wait{}@example.com", i / 2), &mut waiting)
        } else {
            (format!("none{}@example.com", i / 2), &mut unknown)
        };
        let b = from_address(&app, &format!("198.51.100.{}", i + 1));
        let csrf = b.get("/login").await.csrf();
        let started = std::time::Instant::now();
        let r = b
            .post_form(
                "/verify-email/resend",
                &[("csrf_token", &csrf), ("email", &email)],
            )
            .await;
        times.push(started.elapsed().as_secs_f64());
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let gap = (median(&mut waiting) - median(&mut unknown)).abs();
    assert!(
        gap < 0.060,
        "median gap {gap:.3}s with 40 ms round trips: the answer waits for account work"
    );
    app.proxy.as_ref().unwrap().set_latency(0);
    // The work still happens, after the answer.
    app.mail.wait_for("wait7@example.com", 2).await;
}

async fn queue_sealed(app: &TestApp, keys: &gatehouse::crypto::Keys, to: &str) -> uuid::Uuid {
    let id = uuid::Uuid::new_v4();
    sqlx::query(
        "INSERT INTO mail_outbox (id, to_address, subject, text_body, html_body, created_at, next_attempt_at)
         VALUES ($1, $2, 'Old', $3, $4, now() - interval '1 minute', now() - interval '1 minute')",
    )
    .bind(id)
    .bind(to)
    .bind(keys.seal("mail_outbox.text_body", b"old body").unwrap())
    .bind(keys.seal("mail_outbox.html_body", b"old body").unwrap())
    .execute(&app.db)
    .await
    .unwrap();
    id
}

#[tokio::test]
async fn registration_answers_as_fast_for_a_taken_address_as_for_a_new_one() {
    // L2 (timing), found in review: the account (or the notice) is written after the
    // answer, so slow database round trips show no gap.
    let app = spawn_app_with(Options {
        require_verified_email: true,
        db_proxy: true,
        ..behind_proxy()
    })
    .await;
    for i in 0..6 {
        app.register(&app.browser(), &format!("taken{i}@example.com"), PASSWORD)
            .await;
    }
    app.wait_until("SELECT count(*) FROM users", 6).await;
    app.proxy.as_ref().unwrap().set_latency(40);
    let mut taken = Vec::new();
    let mut fresh = Vec::new();
    for i in 0..12 {
        let (email, times) = if i % 2 == 0 {
            (format!("taken{}@example.com", i / 2), &mut taken)
        } else {
            (format!("fresh{}@example.com", i / 2), &mut fresh)
        };
        let b = from_address(&app, &format!("198.51.100.{}", i + 1));
        let page = b.get("/register").await;
        let started = std::time::Instant::now();
        let r = b
            .post_form(
                "/register",
                &[
                    ("csrf_token", &page.csrf()),
                    ("email", &email),
                    ("password", PASSWORD),
                ],
            )
            .await;
        times.push(started.elapsed().as_secs_f64());
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let gap = (median(&mut taken) - median(&mut fresh)).abs();
    assert!(gap < 0.060, "median gap {gap:.3}s with 40 ms round trips");
    app.proxy.as_ref().unwrap().set_latency(0);
    app.wait_until("SELECT count(*) FROM users", 12).await;
}

#[tokio::test]
async fn defect_7_mail_under_a_foreign_key_backs_off_then_ends_and_damaged_mail_ends_at_once() {
    let app = spawn_app().await;
    // A key this node does not hold: perhaps a node that already rotated sealed it.
    let foreign = gatehouse::crypto::Keys::new(
        &gatehouse::settings::SecretKey::parse(&crate::helpers::random_key()).unwrap(),
        &[],
    );
    let id = queue_sealed(&app, &foreign, "lost@example.com").await;
    // Damaged under this node's own key: never going to open.
    let own = app.keys();
    let damaged = uuid::Uuid::new_v4();
    let mut text = own.seal("mail_outbox.text_body", b"x").unwrap();
    let last = text.len() - 1;
    text[last] ^= 1;
    sqlx::query(
        "INSERT INTO mail_outbox (id, to_address, subject, text_body, html_body, created_at, next_attempt_at)
         VALUES ($1, 'broken@example.com', 'Broken', $2, $2, now(), now())",
    )
    .bind(damaged)
    .bind(&text)
    .execute(&app.db)
    .await
    .unwrap();
    app.wait_until(
        &format!("SELECT count(*) FROM mail_outbox WHERE id = '{damaged}' AND failed_at IS NOT NULL AND attempts = 1"),
        1,
    )
    .await;
    // The foreign one is retried with backoff, not given up at its first attempt…
    app.wait_until(
        &format!("SELECT count(*) FROM mail_outbox WHERE id = '{id}' AND attempts = 1 AND failed_at IS NULL AND lease_until IS NULL"),
        1,
    )
    .await;
    // …and given up, with its body dropped, once the attempts are spent.
    for _ in 0..40 {
        app.clock.advance(Duration::from_secs(3600));
        let done = app
            .count(&format!(
                "SELECT count(*) FROM mail_outbox WHERE id = '{id}' AND failed_at IS NOT NULL"
            ))
            .await;
        if done == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let (attempts, error, body): (i32, String, Option<Vec<u8>>) = sqlx::query_as(
        "SELECT attempts, last_error, text_body FROM mail_outbox WHERE id = $1 AND failed_at IS NOT NULL",
    )
    .bind(id)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(attempts, 20);
    assert!(error.contains("key"), "{error}");
    assert!(body.is_none(), "terminal, body dropped");
    // Mail behind them still goes out.
    app.user("after@example.com").await;
    let b = app.browser();
    let csrf = b.get("/password/forgot").await.csrf();
    b.post_form(
        "/password/forgot",
        &[("csrf_token", &csrf), ("email", "after@example.com")],
    )
    .await;
    app.mail.wait_for("after@example.com", 1).await;
    assert!(app.mail.to("lost@example.com").is_empty());
}

#[tokio::test]
async fn defect_7_mail_sealed_by_a_node_that_rotated_first_is_delivered_by_one_that_has_the_key() {
    // A rolling rotation: the new key seals on one node before the other has it.
    let app = spawn_app().await;
    let newer = gatehouse::crypto::Keys::new(
        &gatehouse::settings::SecretKey::parse(&crate::helpers::random_key()).unwrap(),
        &[],
    );
    let id = queue_sealed(&app, &newer, "rolled@example.com").await;
    app.wait_until(
        &format!("SELECT count(*) FROM mail_outbox WHERE id = '{id}' AND attempts >= 1"),
        1,
    )
    .await;
    // A worker that holds the key (the node already restarted) delivers it.
    let store: std::sync::Arc<dyn gatehouse::store::Store> = std::sync::Arc::new(
        gatehouse::store::PgStore::new(app.db.clone(), std::sync::Arc::new(newer)),
    );
    let worker = gatehouse::mail::worker::Worker {
        store,
        transport: gatehouse::mail::Transport::from_settings(&app.settings).unwrap(),
        from: app.settings.mail_from.clone(),
        clock: app.clock.clone(),
        metrics: std::sync::Arc::new(gatehouse::metrics::Metrics::new().unwrap()),
    };
    app.clock.advance(Duration::from_secs(3600));
    for _ in 0..50 {
        worker.deliver_due().await.unwrap();
        if !app.mail.to("rolled@example.com").is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(app.mail.to("rolled@example.com").len(), 1, "not lost");
}

#[tokio::test]
async fn defect_8_a_sign_in_replaces_the_browsers_session_in_the_same_statement() {
    let app = spawn_app().await;
    let b = app.signed_in("same@example.com").await;
    let first = app.session_cookie(&b).unwrap();
    // Signing in again from a browser that is signed in (e.g. a second tab's form).
    let csrf = b.get("/account").await.csrf();
    let r = b
        .post_form(
            "/login",
            &[
                ("csrf_token", &csrf),
                ("email", "same@example.com"),
                ("password", PASSWORD),
            ],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert_ne!(app.session_cookie(&b).unwrap(), first);
    // One statement stamps both rows with its one `now`; two statements could not.
    let (revoked_at, reason, created_at): (time::OffsetDateTime, String, time::OffsetDateTime) =
        sqlx::query_as(
            "SELECT old.revoked_at, old.revoked_reason, new.created_at
             FROM sessions old, sessions new
             WHERE old.revoked_at IS NOT NULL AND new.revoked_at IS NULL",
        )
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(reason, "replaced by a new sign-in");
    assert_eq!(revoked_at, created_at);
    let kinds: Vec<String> = sqlx::query_scalar(
        "SELECT kind FROM security_events WHERE session_id IS NOT NULL ORDER BY at, kind",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    assert!(
        kinds.contains(&"session_revoked".to_string()) && kinds.contains(&"signed_in".to_string()),
        "{kinds:?}"
    );

    // Atomic: make the revocation's event impossible, and the new session must not
    // exist either (nor the old one be revoked).
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_revocation() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF NEW.kind = 'session_revoked' THEN RAISE EXCEPTION 'refused for the test'; END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER refuse_revocation BEFORE INSERT ON security_events
             FOR EACH ROW EXECUTE FUNCTION refuse_revocation();",
    )
    .execute(&app.db)
    .await
    .unwrap();
    let before = app.count("SELECT count(*) FROM sessions").await;
    let csrf = b.get("/account").await.csrf();
    let r = b
        .post_form(
            "/login",
            &[
                ("csrf_token", &csrf),
                ("email", "same@example.com"),
                ("password", PASSWORD),
            ],
        )
        .await;
    assert_eq!(r.status, 500, "the database refused the statement");
    assert_eq!(app.count("SELECT count(*) FROM sessions").await, before);
    assert_eq!(
        app.count("SELECT count(*) FROM sessions WHERE revoked_at IS NULL")
            .await,
        1,
        "the browser's session is still the live one"
    );
    assert_eq!(b.get("/account").await.status, 200);
}

#[tokio::test]
async fn defect_9_a_full_argon2_queue_answers_503_and_counts_nothing() {
    // One thread, one place: the production cost keeps it busy while the rest arrive.
    let app = spawn_app_with(Options {
        argon2: gatehouse::settings::Argon2Cost::PRODUCTION,
        argon2_threads: 1,
        argon2_queue: 1,
        login_max_failures: 100,
        ..behind_proxy()
    })
    .await;
    app.user("queue@example.com").await;
    let mut tasks = Vec::new();
    for i in 0..12 {
        let b = from_address(&app, &format!("198.51.100.{}", i + 1));
        let csrf = b.get("/login").await.csrf();
        tasks.push(tokio::spawn(async move {
            b.post_form(
                "/login",
                &[
                    ("csrf_token", &csrf),
                    ("email", "queue@example.com"),
                    ("password", "wrong wrong wrong"),
                ],
            )
            .await
        }));
    }
    let mut refused = 0;
    let mut evaluated = 0;
    for t in tasks {
        let r = t.await.unwrap();
        match r.status {
            503 => {
                refused += 1;
                assert_eq!(r.header("retry-after").as_deref(), Some("1"));
                assert!(r.body.contains("busy"), "{}", r.body);
            }
            401 => evaluated += 1,
            other => panic!("unexpected {other}: {}", r.body),
        }
    }
    assert!(refused >= 1, "the queue is bounded");
    assert!(evaluated >= 1);
    assert_eq!(
        app.metric("gatehouse_argon2_refused_total").await,
        refused as f64
    );
    // Refused attempts were not counted against the account: the failures stored
    // are exactly the evaluated ones.
    let failures: i32 =
        sqlx::query_scalar("SELECT failures FROM sign_in_throttle WHERE scope = 'account'")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(failures as usize, evaluated);
    // And the server is fine afterwards.
    assert_eq!(
        app.login(&app.browser(), "queue@example.com", PASSWORD)
            .await
            .status,
        303
    );
}

#[tokio::test]
async fn defect_9_hash_jobs_whose_requester_stopped_waiting_are_skipped() {
    // One thread at production cost, and requests that wait at most 50 ms for it: a
    // burst leaves most of them waiting past that, and their jobs must not run.
    let app = spawn_app_with(Options {
        argon2: gatehouse::settings::Argon2Cost::PRODUCTION,
        argon2_threads: 1,
        argon2_max_wait: Duration::from_millis(50),
        login_max_failures: 100,
        ..behind_proxy()
    })
    .await;
    let mut tasks = Vec::new();
    for i in 0..10 {
        let b = from_address(&app, &format!("198.51.100.{}", i + 1));
        let csrf = b.get("/login").await.csrf();
        tasks.push(tokio::spawn(async move {
            b.post_form(
                "/login",
                &[
                    ("csrf_token", &csrf),
                    ("email", &format!("gone{i}@example.com")),
                    ("password", "whatever whatever"),
                ],
            )
            .await
        }));
    }
    let mut gave_up = 0;
    let mut evaluated = 0;
    for t in tasks {
        let r = t.await.unwrap();
        match r.status {
            401 => evaluated += 1,
            503 => {
                gave_up += 1;
                assert_eq!(r.header("retry-after").as_deref(), Some("1"));
            }
            other => panic!("unexpected {other}: {}", r.body),
        }
    }
    assert!(gave_up >= 1, "some requests stopped waiting");
    // Every job is either computed or skipped; the skipped ones are those whose
    // requester had stopped waiting before a thread reached them.
    let mut skipped = 0.0;
    for _ in 0..100 {
        skipped = app.metric("gatehouse_argon2_skipped_total").await;
        if app.metric("gatehouse_argon2_queue_depth").await == 0.0
            && app.metric("gatehouse_argon2_in_flight").await == 0.0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let computed = app
        .metric(r#"gatehouse_sign_ins_total{outcome="failure"}"#)
        .await;
    assert!(skipped >= 1.0, "no job was skipped ({computed} computed)");
    assert!(computed + skipped <= 10.0);
    assert!(computed < 10.0, "not every job ran");
    // Requests that gave up were never evaluated, so they count against no one.
    assert_eq!(
        app.count("SELECT coalesce(sum(failures), 0)::bigint FROM sign_in_throttle WHERE scope = 'account'")
            .await,
        evaluated
    );
}

#[tokio::test]
async fn defect_10_opening_a_mailed_link_does_not_use_it_up() {
    let app = spawn_app_with(Options {
        require_verified_email: true,
        ..Default::default()
    })
    .await;
    app.register(&app.browser(), "scan@example.com", PASSWORD)
        .await;
    let token = app.mail.wait_for("scan@example.com", 1).await[0].token("/verify-email");
    let url = format!("/verify-email?token={token}");
    // A mail scanner fetches the link, twice, with no cookies.
    for _ in 0..2 {
        let r = app.browser().get(&url).await;
        assert_eq!(r.status, 200);
        assert!(
            r.body
                .contains(r#"<form method="post" action="/verify-email">"#)
        );
    }
    assert_eq!(
        app.count("SELECT count(*) FROM email_tokens WHERE used_at IS NULL")
            .await,
        1,
        "still unused"
    );
    // A POST without the page's CSRF token changes nothing.
    let r = app
        .browser()
        .post_form("/verify-email", &[("token", &token)])
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(
        app.count("SELECT count(*) FROM users WHERE email_verified_at IS NOT NULL")
            .await,
        0
    );
    // The person presses the button.
    let r = app.browser().open_link(&url).await;
    assert_eq!(r.status, 200);
    assert!(r.body.contains("Address confirmed"));
    assert_eq!(
        app.count("SELECT count(*) FROM users WHERE email_verified_at IS NOT NULL")
            .await,
        1
    );
    assert_eq!(app.browser().get(&url).await.status, 400, "spent now");
}

#[tokio::test]
async fn defect_10_the_address_change_link_is_used_only_by_its_button() {
    let app = spawn_app().await;
    let b = app.signed_in("move@example.com").await;
    crate::otp::step_up_by_email(&app, &b, "move@example.com", "/account/email").await;
    let page = b.get("/account/email").await;
    let r = b
        .post_form(
            "/account/email",
            &[
                ("csrf_token", &page.csrf()),
                ("new_email", "moved@example.com"),
                ("current_password", PASSWORD),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let token = app.mail.wait_for("moved@example.com", 1).await[0].token("/account/email/confirm");
    let url = format!("/account/email/confirm?token={token}");
    let r = app.browser().get(&url).await;
    assert_eq!(r.status, 200);
    assert!(r.body.contains("Use this address"));
    assert_eq!(
        app.count("SELECT count(*) FROM users WHERE email = 'move@example.com'")
            .await,
        1,
        "a GET changes nothing"
    );
    let r = app.browser().open_link(&url).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        app.count("SELECT count(*) FROM users WHERE email = 'moved@example.com'")
            .await,
        1
    );
}

#[tokio::test]
async fn defect_11_a_signed_out_visit_goes_to_sign_in_and_comes_back() {
    let app = spawn_app().await;
    app.user("back@example.com").await;
    let b = app.browser();
    let r = b.get("/account/email?from=mail").await;
    assert_eq!(r.status, 303);
    assert_eq!(
        r.location(),
        "/login?return_to=%2Faccount%2Femail%3Ffrom%3Dmail"
    );
    let page = b.get(&r.location()).await;
    assert_eq!(page.status, 200);
    assert!(
        page.body
            .contains(r#"name="return_to" value="/account/email?from=mail""#),
        "the form carries the way back"
    );
    let r = app
        .login_with(
            &b,
            "back@example.com",
            PASSWORD,
            &[("return_to", "/account/email?from=mail")],
        )
        .await;
    assert_eq!(r.status, 303);
    assert_eq!(r.location(), "/account/email?from=mail");
    // A form POST is never replayed: signed out, it is refused.
    let anon = app.browser();
    let r = anon.post_form("/account/email", &[]).await;
    assert_eq!(r.status, 401);
    // And a machine asking for JSON gets a 401 problem, not a redirect.
    let r = anon
        .send(
            anon.request(reqwest::Method::GET, "/account")
                .header("accept", "application/json"),
        )
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/problem+json")
    );
}

#[tokio::test]
async fn machine_callers_get_json_errors_people_get_pages() {
    let app = spawn_app().await;
    let b = app.browser();
    let r = b
        .send(
            b.request(reqwest::Method::POST, "/oauth2/no-such-endpoint")
                .form(&[("grant_type", "x")]),
        )
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json")
    );
    let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(body["error"], "invalid_request");
    assert!(body["error_description"].is_string());
    // A percent-encoded path reaches its route, and its errors keep their shape.
    let r = b
        .send(b.request(reqwest::Method::POST, "/oauth2/%74oken").form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "nobody"),
        ]))
        .await;
    assert_eq!(r.status, 401, "{}", r.body);
    let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(body["error"], "invalid_client", "{}", r.body);

    let r = b
        .send(
            b.request(reqwest::Method::GET, "/no/such/thing")
                .header("accept", "application/json"),
        )
        .await;
    assert_eq!(r.status, 404);
    let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(body["status"], 404);
    assert_eq!(body["title"], "Page not found");

    let r = b.get("/no/such/thing").await;
    assert!(r.header("content-type").unwrap().starts_with("text/html"));
    assert!(r.body.contains("Page not found"));
}

#[tokio::test]
async fn security_events_record_what_happened_with_personal_fields_sealed() {
    let app = spawn_app_with(behind_proxy()).await;
    let mut b = from_address(&app, "203.0.113.77");
    b.extra_headers
        .push(("user-agent".into(), "EventAgent/1.0".into()));
    assert_eq!(
        app.register(&b, "events@example.com", PASSWORD)
            .await
            .status,
        303
    );
    let mut other_tab = from_address(&app, "203.0.113.77");
    other_tab
        .extra_headers
        .push(("user-agent".into(), "EventAgent/1.0".into()));
    assert_eq!(
        app.login(&other_tab, "events@example.com", "wrong wrong wrong")
            .await
            .status,
        401
    );
    let csrf = b.get("/account").await.csrf();
    assert_eq!(
        b.post_form("/logout", &[("csrf_token", &csrf)])
            .await
            .status,
        303
    );
    type EventRow = (String, String, Option<Vec<u8>>, Option<Vec<u8>>);
    let rows: Vec<EventRow> = sqlx::query_as(
        "SELECT kind, actor, ip_enc, user_agent_enc FROM security_events ORDER BY at, kind",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    let kinds: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(
        kinds,
        ["registered", "signed_in", "sign_in_failed", "signed_out"],
        "{kinds:?}"
    );
    let keys = app.keys();
    for (kind, actor, ip, ua) in &rows {
        assert_eq!(actor, "user");
        let ip = ip.as_ref().unwrap();
        assert!(
            !String::from_utf8_lossy(ip).contains("203.0.113.77"),
            "{kind}"
        );
        assert_eq!(
            keys.open("security_events.ip", ip).unwrap(),
            b"203.0.113.77"
        );
        let ua = ua.as_ref().unwrap();
        assert_eq!(
            keys.open("security_events.user_agent", ua).unwrap(),
            b"EventAgent/1.0"
        );
    }
}
