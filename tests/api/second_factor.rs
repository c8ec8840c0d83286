//! Second factor and step-up: TOTP enrolment and sign-in, recovery codes, e-mailed
//! codes, code throttling, step-up of sensitive actions, password change.
//! Codes are computed by the tests' own RFC 6238 implementation (`otp`), from the key
//! the enrolment page shows.

use std::time::Duration;

use futures_util::future::join_all;

use crate::helpers::{Options, PASSWORD, TestApp, spawn_app, spawn_app_with};
use crate::otp::{
    Enrolled, base32_decode, between, code_mails, decode_qr_svg, enrol, password_step,
    pending_cookie_name, recovery_codes_on, step_up_by_email, totp, unescape, wait_code,
};

fn frozen() -> Options {
    Options {
        frozen_clock: true,
        ..Options::default()
    }
}

fn sha256_hex(token: &str) -> String {
    gatehouse::crypto::token_hash(token)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn now(app: &TestApp) -> i64 {
    app.clock.now().unix_timestamp()
}

/// A six-digit code that is not valid for any step near now.
fn wrong_code(secret: &[u8], t: i64) -> String {
    let near: Vec<String> = (-3..=3).map(|k| totp(secret, t + 30 * k)).collect();
    (0..1000)
        .map(|i| format!("{:06}", 123_457 + i * 7919))
        .find(|c| !near.contains(c))
        .unwrap()
}

async fn user_with_totp(app: &TestApp, email: &str) -> Enrolled {
    let b = app.signed_in(email).await;
    enrol(app, &b, email).await
}

#[tokio::test]
async fn enrolment_shows_qr_key_and_uri_and_needs_one_right_code() {
    // M9 (enrolling needs re-auth and a valid first code)
    let app = spawn_app_with(frozen()).await;
    let b = app.signed_in("alice@example.com").await;

    // Without a recent second factor, starting is refused with a challenge.
    let page = b.get("/account/mfa").await;
    assert_eq!(page.status, 200);
    assert!(
        page.body
            .contains("Two-step verification is <strong>off</strong>")
    );
    assert!(page.body.contains("/step-up?return_to=%2Faccount%2Fmfa"));
    let r = b
        .post_form(
            "/account/mfa",
            &[("csrf_token", &page.csrf()), ("action", "start")],
        )
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(
        r.body.contains("/step-up?return_to=%2Faccount%2Fmfa"),
        "{}",
        r.body
    );
    assert_eq!(app.count("SELECT count(*) FROM totp_credentials").await, 0);

    step_up_by_email(&app, &b, "alice@example.com", "/account/mfa").await;
    let page = b.get("/account/mfa").await;
    let r = b
        .post_form(
            "/account/mfa",
            &[("csrf_token", &page.csrf()), ("action", "start")],
        )
        .await;
    assert_eq!(r.status, 303);
    let page = b.get("/account/mfa").await;
    assert_eq!(page.header("cache-control").as_deref(), Some("no-store"));
    let shown = between(&page.body, r#"<code class="secret">"#, "</code>").unwrap();
    // Shown in groups of four for reading; apps accept it with or without spaces.
    let key = &shown.replace(' ', "");
    let uri = unescape(between(&page.body, r#"<code class="uri">"#, "</code>").unwrap());
    let svg = between(&page.body, r#"<div class="qr">"#, "</div>").unwrap();

    // What a phone's scanner reads from the QR code is exactly the URI shown.
    let scanned = decode_qr_svg(svg);
    assert_eq!(scanned, uri);
    let parsed = url::Url::parse(&uri).unwrap();
    assert_eq!(parsed.scheme(), "otpauth");
    assert_eq!(parsed.host_str(), Some("totp"));
    assert_eq!(
        percent(parsed.path()),
        "/Gatehouse:alice@example.com",
        "label = issuer:e-mail"
    );
    let q: std::collections::HashMap<String, String> = parsed.query_pairs().into_owned().collect();
    assert_eq!(q.get("secret"), Some(key));
    assert_eq!(q.get("issuer").map(String::as_str), Some("Gatehouse"));
    // SHA-1, 6 digits and 30 s are the defaults an app assumes when absent.
    assert!(q.get("algorithm").is_none_or(|a| a == "SHA1"));
    assert!(q.get("digits").is_none_or(|d| d == "6"));
    assert!(q.get("period").is_none_or(|p| p == "30"));
    let secret = base32_decode(key);
    assert_eq!(secret.len(), 20, "a 160-bit secret");

    // A wrong code: refused, nothing turned on.
    let wrong = wrong_code(&secret, now(&app));
    let r = b
        .post_form(
            "/account/mfa",
            &[
                ("csrf_token", &page.csrf()),
                ("action", "confirm"),
                ("code", &wrong),
            ],
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("That code is not right"));
    assert_eq!(
        app.count("SELECT count(*) FROM totp_credentials WHERE confirmed_at IS NOT NULL")
            .await,
        0
    );
    // The right one: on, ten recovery codes shown once, a notice mailed.
    let r = b
        .post_form(
            "/account/mfa",
            &[
                ("csrf_token", &page.csrf()),
                ("action", "confirm"),
                ("code", &totp(&secret, now(&app))),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let codes = recovery_codes_on(&r.body);
    assert_eq!(codes.len(), 10);
    for c in &codes {
        assert_eq!(c.len(), 11);
        assert_eq!(&c[5..6], "-");
        assert!(
            c.chars()
                .all(|ch| ch == '-' || "23456789abcdefghjkmnpqrstuvwxyz".contains(ch)),
            "{c}"
        );
    }
    app.mail
        .wait_for_subject("alice@example.com", "Two-step verification is on")
        .await;
    let again = b.get("/account/mfa").await;
    assert!(recovery_codes_on(&again.body).is_empty(), "shown only once");
    assert!(again.body.contains("10 of 10 left"));
    let account = b.get("/account").await;
    assert!(
        account
            .body
            .contains("On: authenticator app, 10 recovery codes left")
    );
}

fn percent(s: &str) -> String {
    percent_decode(s)
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn sign_in_demands_the_code_and_the_password_step_opens_no_signed_in_route() {
    // M1: after the password only, every signed-in route of the route table refuses
    let app = spawn_app().await;
    let first = app.signed_in("alice@example.com").await;
    let enrolled = enrol(&app, &first, "alice@example.com").await;
    let live_id: String = sqlx::query_scalar(
        "SELECT id::text FROM sessions WHERE revoked_at IS NULL ORDER BY created_at DESC LIMIT 1",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();

    let b = app.browser();
    let page = password_step(&app, &b, "alice@example.com").await;
    assert!(page.body.contains("authenticator app"));
    assert!(app.session_cookie(&b).is_none(), "no session yet");
    assert!(b.cookie(pending_cookie_name(&app)).is_some());
    let csrf = page.csrf();

    let session_routes: Vec<_> = gatehouse::web::ROUTES
        .iter()
        .filter(|r| r.access != gatehouse::web::Access::Public)
        .collect();
    assert!(session_routes.len() >= 10, "{session_routes:?}");
    for route in session_routes {
        let path = route.path.replace("{session_id}", &live_id);
        for method in route.methods {
            let r = match *method {
                "get" => b.get(&path).await,
                "post" => {
                    b.post_form(
                        &path,
                        &[
                            ("csrf_token", &csrf),
                            ("action", "start"),
                            ("code", "123456"),
                        ],
                    )
                    .await
                }
                other => panic!("method {other}"),
            };
            match *method {
                "get" => assert!(
                    r.is_sign_in_redirect(),
                    "GET {path}: {} {}",
                    r.status,
                    r.body
                ),
                _ => assert_eq!(r.status, 401, "POST {path}: {}", r.body),
            }
            assert!(!r.body.contains("alice@example.com"), "{method} {path}");
        }
    }
    // The other session is untouched and nothing was changed.
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) FROM sessions WHERE id = '{live_id}' AND revoked_at IS NULL"
        ))
        .await,
        1
    );
    assert_eq!(app.count("SELECT count(*) FROM totp_credentials").await, 1);
    // The home page does not count it as signed in either.
    assert_eq!(b.get("/").await.location(), "/login");

    // The code finishes it: an aal2 session with amr [pwd, otp].
    let r = b
        .post_form(
            "/login/verify",
            &[
                ("csrf_token", &csrf),
                ("code", &totp(&enrolled.secret, now(&app) + 30)),
            ],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.location(), "/account");
    assert!(app.session_cookie(&b).is_some());
    assert!(
        b.cookie(pending_cookie_name(&app)).is_none(),
        "pending cookie spent"
    );
    let (aal, amr, reached): (String, Vec<String>, bool) = sqlx::query_as(
        "SELECT aal, amr, aal_reached_at = created_at FROM sessions
         WHERE revoked_at IS NULL ORDER BY created_at DESC LIMIT 1",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(aal, "aal2");
    assert_eq!(amr, vec!["pwd", "otp"]);
    assert!(reached, "aal_reached_at is stored");
    let devices = b.get("/account/devices").await;
    assert!(
        devices.body.contains("Password + authenticator code"),
        "{}",
        devices.body
    );
    assert!(devices.body.contains("Second factor proven"));
    assert!(devices.body.contains("(aal2)"));
    // The pending cookie cannot be used twice.
    let again = b
        .post_form(
            "/login/verify",
            &[("csrf_token", &csrf), ("code", "000000")],
        )
        .await;
    assert_ne!(again.status, 303);
}

#[tokio::test]
async fn a_totp_code_is_accepted_once_even_from_two_parallel_sign_ins() {
    // M2
    let app = spawn_app_with(frozen()).await;
    let e = user_with_totp(&app, "alice@example.com").await;
    // The enrolment used this step's code; the next step's code is new.
    app.clock.advance(Duration::from_secs(30));
    let code = totp(&e.secret, now(&app));

    let a = app.browser();
    let page_a = password_step(&app, &a, "alice@example.com").await;
    let r = a
        .post_form(
            "/login/verify",
            &[("csrf_token", &page_a.csrf()), ("code", &code)],
        )
        .await;
    assert_eq!(r.status, 303);
    // A fresh sign-in replaying the same code in the same step: refused.
    let b = app.browser();
    let page_b = password_step(&app, &b, "alice@example.com").await;
    let r = b
        .post_form(
            "/login/verify",
            &[("csrf_token", &page_b.csrf()), ("code", &code)],
        )
        .await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(app.session_cookie(&b).is_none());

    // Two sign-ins bring the next step's code at the same moment: exactly one wins.
    app.clock.advance(Duration::from_secs(30));
    let code = totp(&e.secret, now(&app));
    let (c, d) = (app.browser(), app.browser());
    let pc = password_step(&app, &c, "alice@example.com").await.csrf();
    let pd = password_step(&app, &d, "alice@example.com").await.csrf();
    let form_c = [("csrf_token", pc.as_str()), ("code", code.as_str())];
    let form_d = [("csrf_token", pd.as_str()), ("code", code.as_str())];
    let (rc, rd) = tokio::join!(
        c.post_form("/login/verify", &form_c),
        d.post_form("/login/verify", &form_d),
    );
    let wins = [rc.status, rd.status].iter().filter(|s| **s == 303).count();
    assert_eq!(wins, 1, "{} {}", rc.status, rd.status);
}

#[tokio::test]
async fn the_totp_window_is_one_step_either_side_of_server_time() {
    // M4
    let app = spawn_app_with(frozen()).await;
    let e = user_with_totp(&app, "alice@example.com").await;
    app.clock.advance(Duration::from_secs(300));
    let t = now(&app);
    for (offset, accepted) in [
        (-90, false),
        (90, false),
        (-60, false),
        (60, false),
        (30, true),
    ] {
        let b = app.browser();
        let page = password_step(&app, &b, "alice@example.com").await;
        // A client-sent time is ignored: only the server's clock counts.
        let r = b
            .post_form(
                "/login/verify",
                &[
                    ("csrf_token", &page.csrf()),
                    ("code", &totp(&e.secret, t + offset)),
                    ("time", &(t + offset).to_string()),
                ],
            )
            .await;
        assert_eq!(
            r.status == 303,
            accepted,
            "offset {offset}: {} {}",
            r.status,
            r.body
        );
    }
}

#[tokio::test]
async fn fifty_parallel_wrong_codes_evaluate_at_most_five_then_the_sign_in_is_void() {
    // M3, peer CVE 8 (OTP checks with no lockout)
    let app = spawn_app().await;
    let e = user_with_totp(&app, "alice@example.com").await;
    let b = app.browser();
    let page = password_step(&app, &b, "alice@example.com").await;
    let csrf = page.csrf();
    let old_pending = b.cookie(pending_cookie_name(&app)).unwrap();
    let wrong = wrong_code(&e.secret, now(&app));
    let answers = join_all((0..50).map(|_| {
        let b = b.clone();
        let (csrf, wrong) = (csrf.clone(), wrong.clone());
        async move {
            b.post_form("/login/verify", &[("csrf_token", &csrf), ("code", &wrong)])
                .await
                .status
        }
    }))
    .await;
    let evaluated = app
        .count("SELECT count(*) FROM security_events WHERE kind = 'second_factor_failed'")
        .await;
    assert!(evaluated <= 5, "{evaluated} codes evaluated");
    assert!(
        answers.iter().all(|s| *s == 401 || *s == 400),
        "{answers:?}"
    );
    assert_eq!(
        app.count("SELECT count(*) FROM mfa_challenges WHERE kind = 'sign_in'")
            .await,
        0,
        "the half-finished sign-in is void"
    );
    // Replaying the old pending cookie with the right code does not revive it.
    b.set_cookie(pending_cookie_name(&app), &old_pending);
    let r = b
        .post_form(
            "/login/verify",
            &[
                ("csrf_token", &csrf),
                ("code", &totp(&e.secret, now(&app) + 30)),
            ],
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("sign in again"), "{}", r.body);
    assert!(app.session_cookie(&b).is_none());
}

#[tokio::test]
async fn five_wrong_codes_discard_the_pending_sign_in() {
    let app = spawn_app().await;
    let e = user_with_totp(&app, "alice@example.com").await;
    let b = app.browser();
    let csrf = password_step(&app, &b, "alice@example.com").await.csrf();
    let wrong = wrong_code(&e.secret, now(&app));
    for left in (1..=4).rev() {
        let r = b
            .post_form("/login/verify", &[("csrf_token", &csrf), ("code", &wrong)])
            .await;
        assert_eq!(r.status, 401);
        let tries = if left == 1 { "try" } else { "tries" };
        assert!(
            r.body.contains(&format!("{left} {tries} left")),
            "{}",
            r.body
        );
    }
    let r = b
        .post_form("/login/verify", &[("csrf_token", &csrf), ("code", &wrong)])
        .await;
    assert_eq!(r.status, 400);
    assert!(r.body.contains("Too many wrong codes for this sign-in"));
    assert!(b.cookie(pending_cookie_name(&app)).is_none());
    // Starting again works.
    let csrf = password_step(&app, &b, "alice@example.com").await.csrf();
    let r = b
        .post_form(
            "/login/verify",
            &[
                ("csrf_token", &csrf),
                ("code", &totp(&e.secret, now(&app) + 30)),
            ],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
}

#[tokio::test]
async fn the_per_user_code_limit_holds_across_two_browsers() {
    // M3: at most 10 wrong codes per user per 15 minutes, across every sign-in
    let app = spawn_app_with(frozen()).await;
    let e = user_with_totp(&app, "alice@example.com").await;
    app.clock.advance(Duration::from_secs(30));
    let wrong = wrong_code(&e.secret, now(&app));
    for _ in 0..2 {
        let b = app.browser();
        let csrf = password_step(&app, &b, "alice@example.com").await.csrf();
        for _ in 0..5 {
            b.post_form("/login/verify", &[("csrf_token", &csrf), ("code", &wrong)])
                .await;
        }
    }
    // A third browser, even with the right code, must wait.
    let c = app.browser();
    let csrf = password_step(&app, &c, "alice@example.com").await.csrf();
    let right = totp(&e.secret, now(&app));
    let r = c
        .post_form("/login/verify", &[("csrf_token", &csrf), ("code", &right)])
        .await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(r.header("retry-after").is_some());
    assert_eq!(
        app.count("SELECT count(*) FROM security_events WHERE kind = 'second_factor_failed'")
            .await,
        10
    );
    // After the window the right code works.
    app.clock.advance(Duration::from_secs(900));
    let csrf = password_step(&app, &c, "alice@example.com").await.csrf();
    let r = c
        .post_form(
            "/login/verify",
            &[("csrf_token", &csrf), ("code", &totp(&e.secret, now(&app)))],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
}

#[tokio::test]
async fn a_recovery_code_works_once_and_says_how_many_are_left() {
    // M9 (recovery codes are single-use and mail a notice)
    let app = spawn_app().await;
    let e = user_with_totp(&app, "alice@example.com").await;
    let code = e.recovery_codes[3].clone();
    let b = app.browser();
    let csrf = password_step(&app, &b, "alice@example.com").await.csrf();
    // Typed loosely (upper case, a space instead of the dash): still recognised.
    let typed = code.to_uppercase().replace('-', " ");
    let r = b
        .post_form("/login/verify", &[("csrf_token", &csrf), ("code", &typed)])
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("9 of ten are left"), "{}", r.body);
    assert!(app.session_cookie(&b).is_some());
    let mail = app
        .mail
        .wait_for_subject("alice@example.com", "A recovery code was used")
        .await;
    assert!(mail.text().contains("9 of ten are left"));
    let amr: Vec<String> = sqlx::query_scalar(
        "SELECT amr FROM sessions WHERE revoked_at IS NULL ORDER BY created_at DESC LIMIT 1",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(amr, vec!["pwd", "recovery"]);
    assert!(
        b.get("/account")
            .await
            .body
            .contains("9 recovery codes left")
    );

    // The same code again: refused.
    let c = app.browser();
    let csrf = password_step(&app, &c, "alice@example.com").await.csrf();
    let r = c
        .post_form("/login/verify", &[("csrf_token", &csrf), ("code", &code)])
        .await;
    assert_eq!(r.status, 401, "{}", r.body);
}

/// Three wrong passwords for the account: its next sign-in from a new browser is
/// asked for a second factor by the contextual checks (DESIGN.md, M7).
async fn recent_failures(app: &TestApp, email: &str) {
    for _ in 0..3 {
        let r = app.login(&app.browser(), email, "not the password").await;
        assert_eq!(r.status, 401);
    }
}

#[tokio::test]
async fn an_emailed_code_signs_in_once_and_only_for_its_own_sign_in() {
    // M5 (sign-in): ≥ 6 digits, single use, bound to one sign-in, voided by a resend,
    // dead after 10 minutes, resends limited, never in a response. The e-mailed code
    // is for a person without an authenticator app or a passkey, when the contextual
    // checks ask for a second factor (here: recent failures, a new browser).
    let app = spawn_app_with(frozen()).await;
    app.user("alice@example.com").await;
    recent_failures(&app, "alice@example.com").await;
    let mut bodies = Vec::new();
    let a = app.browser();
    let before = code_mails(&app, "alice@example.com");
    let page = password_step(&app, &a, "alice@example.com").await;
    assert!(
        page.body
            .contains("We e-mailed a 6-digit code to a•••@example.com"),
        "{}",
        page.body
    );
    bodies.push(page.body.clone());
    let first = wait_code(&app, "alice@example.com", before + 1).await;
    assert_eq!(first.len(), 6);
    assert!(first.chars().all(|c| c.is_ascii_digit()));

    // A resend voids the first code.
    let r = a
        .post_form(
            "/login/verify",
            &[("csrf_token", &page.csrf()), ("action", "email")],
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(
        r.body
            .contains("We sent a 6-digit code to a•••@example.com"),
        "{}",
        r.body
    );
    bodies.push(r.body.clone());
    let second = wait_code(&app, "alice@example.com", before + 2).await;
    if first != second {
        let r = a
            .post_form(
                "/login/verify",
                &[("csrf_token", &page.csrf()), ("code", &first)],
            )
            .await;
        assert_eq!(r.status, 401, "a resent code voids the previous one");
        bodies.push(r.body.clone());
    }
    // Another sign-in's code does not work here.
    let other = app.browser();
    let other_page = password_step(&app, &other, "alice@example.com").await;
    let others = wait_code(&app, "alice@example.com", before + 3).await;
    if others != second {
        let r = a
            .post_form(
                "/login/verify",
                &[("csrf_token", &page.csrf()), ("code", &others)],
            )
            .await;
        assert_eq!(r.status, 401, "a code is bound to its own sign-in");
    }
    // The right code signs in, with amr [pwd, email].
    let r = a
        .post_form(
            "/login/verify",
            &[("csrf_token", &page.csrf()), ("code", &second)],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    // (The clock is frozen: the session is found by its cookie, not by its age.)
    let hash = sha256_hex(&app.session_cookie(&a).unwrap());
    let amr: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT amr FROM sessions WHERE token_hash = '\\x{hash}'::bytea"
    )))
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(amr, vec!["pwd", "email"]);
    // Reused in the other sign-in: refused.
    let r = other
        .post_form(
            "/login/verify",
            &[("csrf_token", &other_page.csrf()), ("code", &second)],
        )
        .await;
    assert_eq!(r.status, 401);

    // After 10 minutes the other sign-in's code is dead (and so is the sign-in).
    app.clock.advance(Duration::from_secs(601));
    let r = other
        .post_form(
            "/login/verify",
            &[("csrf_token", &other_page.csrf()), ("code", &others)],
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(app.session_cookie(&other).is_none());

    // Code mails are limited: five per 15 minutes, the first (sent with the password
    // step) included (a fresh window here; the failures are renewed too).
    app.clock.advance(Duration::from_secs(300));
    recent_failures(&app, "alice@example.com").await;
    let c = app.browser();
    let page = password_step(&app, &c, "alice@example.com").await;
    let mut statuses = Vec::new();
    for _ in 0..6 {
        let r = c
            .post_form(
                "/login/verify",
                &[("csrf_token", &page.csrf()), ("action", "email")],
            )
            .await;
        statuses.push(r.status);
        bodies.push(r.body);
    }
    assert_eq!(statuses, vec![200, 200, 200, 200, 429, 429]);

    // No code ever appeared in a response.
    for code in [&first, &second, &others] {
        for body in &bodies {
            assert!(!body.contains(code.as_str()), "a code leaked into a page");
        }
    }
}

#[tokio::test]
async fn a_person_with_an_authenticator_app_is_never_offered_nor_sent_an_emailed_code() {
    // L7: at sign-in the app (or a recovery code) is the only way; asking for a code
    // by mail answers 400 and sends nothing.
    let app = spawn_app_with(frozen()).await;
    let e = user_with_totp(&app, "alice@example.com").await;
    // Even when the contextual checks ask too.
    recent_failures(&app, "alice@example.com").await;
    let before = code_mails(&app, "alice@example.com");
    let a = app.browser();
    let page = password_step(&app, &a, "alice@example.com").await;
    assert!(!page.body.contains("E-mail me"), "{}", page.body);
    assert!(!page.body.contains(r#"value="email""#), "{}", page.body);
    let r = a
        .post_form(
            "/login/verify",
            &[("csrf_token", &page.csrf()), ("action", "email")],
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        code_mails(&app, "alice@example.com"),
        before,
        "no code mailed"
    );
    assert_eq!(
        app.count(
            "SELECT count(*) FROM mfa_challenges WHERE attempts = 0 AND email_code_mac IS NULL"
        )
        .await,
        1,
        "nothing spent, no code stored"
    );
    // The app still works.
    app.clock.advance(Duration::from_secs(30));
    let r = a
        .post_form(
            "/login/verify",
            &[
                ("csrf_token", &page.csrf()),
                ("code", &totp(&e.secret, now(&app))),
            ],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
}

#[tokio::test]
async fn step_up_guards_each_sensitive_action_and_rotates_the_session() {
    // M6, S2 (a new session id on step-up)
    let app = spawn_app_with(frozen()).await;
    let b = app.signed_in("alice@example.com").await;
    let name = app.session_cookie_name();
    let old = app.session_cookie(&b).unwrap();

    // Stale (aal1): each sensitive page sends to step-up and back; each POST is 403.
    for page in ["/account/password", "/account/email"] {
        let r = b.get(page).await;
        assert_eq!(r.status, 303, "{page}");
        let expected = format!(
            "/step-up?return_to={}",
            url::form_urlencoded::byte_serialize(page.as_bytes()).collect::<String>()
        );
        assert_eq!(r.location(), expected);
    }
    let csrf = b.get("/account").await.csrf();
    let posts: [(&str, Vec<(&str, &str)>); 5] = [
        (
            "/account/password",
            vec![
                ("current_password", PASSWORD),
                ("new_password", "a brand new passphrase"),
                ("new_password_again", "a brand new passphrase"),
            ],
        ),
        (
            "/account/email",
            vec![
                ("new_email", "new@example.com"),
                ("current_password", PASSWORD),
            ],
        ),
        ("/account/mfa", vec![("action", "start")]),
        ("/account/mfa", vec![("action", "regenerate")]),
        ("/account/mfa", vec![("action", "remove")]),
    ];
    for (path, fields) in &posts {
        let mut form = vec![("csrf_token", csrf.as_str())];
        form.extend(fields.iter().cloned());
        let r = b.post_form(path, &form).await;
        assert_eq!(r.status, 403, "{path} {fields:?}: {}", r.body);
        assert!(r.body.contains("Confirm it"), "{}", r.body);
        assert!(r.body.contains("/step-up?return_to="), "{}", r.body);
    }
    assert_eq!(app.count("SELECT count(*) FROM totp_credentials").await, 0);
    assert_eq!(
        app.count("SELECT count(*) FROM email_tokens WHERE purpose = 'change'")
            .await,
        0
    );

    // Protective actions never need it.
    let r = b
        .post_form("/account/devices/revoke-others", &[("csrf_token", &csrf)])
        .await;
    assert_eq!(r.status, 303, "{}", r.body);

    // Step up: back to the page, under a new session cookie; the old one is dead.
    let r = step_up_by_email(&app, &b, "alice@example.com", "/account/password").await;
    assert_eq!(r.location(), "/account/password");
    let new = app.session_cookie(&b).unwrap();
    assert_ne!(new, old);
    let replay = app.browser();
    replay.set_cookie(name, &old);
    assert!(replay.get("/account").await.is_sign_in_redirect());
    let (aal, amr): (String, Vec<String>) = sqlx::query_as(
        "SELECT aal, amr FROM sessions WHERE revoked_at IS NULL ORDER BY created_at DESC LIMIT 1",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!(
        (aal.as_str(), amr),
        ("aal2", vec!["pwd".to_string(), "email".to_string()])
    );

    // Now the page opens and the action succeeds.
    let page = b.get("/account/password").await;
    assert_eq!(page.status, 200);
    let r = b
        .post_form(
            "/account/email",
            &[
                ("csrf_token", &page.csrf()),
                ("new_email", "new@example.com"),
                ("current_password", PASSWORD),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);

    // Ten minutes on, it is stale again.
    app.clock.advance(Duration::from_secs(601));
    assert_eq!(b.get("/account/password").await.status, 303);
    let r = b
        .post_form(
            "/account/mfa",
            &[("csrf_token", &page.csrf()), ("action", "start")],
        )
        .await;
    assert_eq!(r.status, 403);
}

#[tokio::test]
async fn a_wrong_step_up_code_answers_a_page_whose_form_may_still_lead_to_the_app() {
    // The right code after a wrong one redirects through /oauth2/authorize to an app,
    // and Chrome applies CSP form-action to that redirect: no answer of /step-up, the
    // wrong-code page included, may restrict it. Pages that never lead off-site keep it.
    let app = spawn_app_with(frozen()).await;
    let b = app.signed_in("alice@example.com").await;
    let e = enrol(&app, &b, "alice@example.com").await;
    app.clock.advance(Duration::from_secs(601));
    let csp = |r: &crate::helpers::Resp| {
        r.headers
            .get("content-security-policy")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let page = b.get("/step-up").await;
    assert_eq!(page.status, 200);
    assert!(!csp(&page).contains("form-action"), "{}", csp(&page));
    let wrong = if totp(&e.secret, now(&app)) == "000000" {
        "111111"
    } else {
        "000000"
    };
    let r = b
        .post_form("/step-up", &[("csrf_token", &page.csrf()), ("code", wrong)])
        .await;
    assert_eq!(r.status, 401, "{}", r.body);
    assert!(
        r.body.contains("name=\"code\""),
        "the form again: {}",
        r.body
    );
    assert!(!csp(&r).contains("form-action"), "{}", csp(&r));
    for path in ["/account/password", "/account/mfa"] {
        let other = b.get(path).await;
        assert!(
            csp(&other).contains("form-action 'self'"),
            "{path}: {}",
            csp(&other)
        );
    }
}

#[tokio::test]
async fn step_up_with_totp_and_a_bad_return_to_stays_on_this_site() {
    // M6 with an authenticator app; W6 for return_to
    let app = spawn_app_with(frozen()).await;
    let b = app.signed_in("alice@example.com").await;
    let e = enrol(&app, &b, "alice@example.com").await;
    app.clock.advance(Duration::from_secs(601));
    let page = b.get("/step-up?return_to=//evil.test").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("authenticator app"));
    let r = b
        .post_form(
            "/step-up",
            &[
                ("csrf_token", &page.csrf()),
                ("code", &totp(&e.secret, now(&app))),
                ("return_to", "//evil.test"),
            ],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.location(), "/account");
    let (amr,): (Vec<String>,) = sqlx::query_as(
        "SELECT amr FROM sessions WHERE revoked_at IS NULL ORDER BY created_at DESC LIMIT 1",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert!(amr.contains(&"otp".to_string()), "{amr:?}");
    // The same code, still inside its time step (the clock is frozen), cannot step
    // up a second time.
    let code = totp(&e.secret, now(&app));
    let page = b.get("/step-up").await;
    let r = b
        .post_form("/step-up", &[("csrf_token", &page.csrf()), ("code", &code)])
        .await;
    assert_eq!(r.status, 401, "{}", r.body);
    // The next step's code works.
    let r = b
        .post_form(
            "/step-up",
            &[
                ("csrf_token", &page.csrf()),
                ("code", &totp(&e.secret, now(&app) + 30)),
            ],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    // An e-mailed code is not offered, nor accepted, to a user with an app.
    app.clock.advance(Duration::from_secs(601));
    let page = b.get("/step-up").await;
    assert!(
        !page.body.contains(r#"name="action" value="email""#),
        "{}",
        page.body
    );
    let before = code_mails(&app, "alice@example.com");
    let r = b
        .post_form(
            "/step-up",
            &[("csrf_token", &page.csrf()), ("action", "email")],
        )
        .await;
    assert_eq!(r.status, 400);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        code_mails(&app, "alice@example.com"),
        before,
        "no code mailed"
    );
}

#[tokio::test]
async fn changing_the_password_ends_the_other_sessions_and_renews_this_one() {
    // S8
    let app = spawn_app().await;
    let a = app.signed_in("alice@example.com").await;
    let b = app.browser();
    assert_eq!(
        app.login(&b, "alice@example.com", PASSWORD).await.status,
        303
    );
    let bob = app.signed_in("bob@example.com").await;

    step_up_by_email(&app, &a, "alice@example.com", "/account/password").await;
    let before = app.session_cookie(&a).unwrap();
    let page = a.get("/account/password").await;
    // Mismatch and a wrong current password change nothing.
    let r = a
        .post_form(
            "/account/password",
            &[
                ("csrf_token", &page.csrf()),
                ("current_password", PASSWORD),
                ("new_password", "a brand new passphrase"),
                ("new_password_again", "a brand new passphrase!"),
            ],
        )
        .await;
    assert_eq!(r.status, 400);
    let r = a
        .post_form(
            "/account/password",
            &[
                ("csrf_token", &page.csrf()),
                ("current_password", "not my password"),
                ("new_password", "a brand new passphrase"),
                ("new_password_again", "a brand new passphrase"),
            ],
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(b.get("/account").await.status == 200, "B still signed in");

    let r = a
        .post_form(
            "/account/password",
            &[
                ("csrf_token", &page.csrf()),
                ("current_password", PASSWORD),
                ("new_password", "a brand new passphrase"),
                ("new_password_again", "a brand new passphrase"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("Password changed"));
    let after = app.session_cookie(&a).unwrap();
    assert_ne!(after, before, "A gets a new session id");
    // The page answered with the new cookie carries a form that works with it.
    let out = a.post_form("/logout", &[("csrf_token", &r.csrf())]).await;
    assert_eq!(out.status, 303);
    assert!(a.get("/account").await.is_sign_in_redirect());
    let old = app.browser();
    old.set_cookie(app.session_cookie_name(), &before);
    assert!(old.get("/account").await.is_sign_in_redirect());
    // B is signed out; bob is not.
    assert!(b.get("/account").await.is_sign_in_redirect());
    assert_eq!(bob.get("/account").await.status, 200);
    app.mail
        .wait_for_subject("alice@example.com", "Your password was changed")
        .await;
    // The new password signs in; the old does not.
    let c = app.browser();
    assert_eq!(
        app.login(&c, "alice@example.com", PASSWORD).await.status,
        401
    );
    assert_eq!(
        app.login(&c, "alice@example.com", "a brand new passphrase")
            .await
            .status,
        303
    );
}

#[tokio::test]
async fn removing_the_authenticator_needs_step_up_mails_a_notice_and_ends_other_sessions() {
    // M9 (removing MFA needs step-up and sends a notification)
    let app = spawn_app_with(frozen()).await;
    let a = app.signed_in("alice@example.com").await;
    let e = enrol(&app, &a, "alice@example.com").await;
    app.clock.advance(Duration::from_secs(30));
    let other = app.browser();
    let csrf = password_step(&app, &other, "alice@example.com")
        .await
        .csrf();
    let r = other
        .post_form(
            "/login/verify",
            &[("csrf_token", &csrf), ("code", &totp(&e.secret, now(&app)))],
        )
        .await;
    assert_eq!(r.status, 303);

    app.clock.advance(Duration::from_secs(601));
    let page = a.get("/account/mfa").await;
    assert!(
        page.body.contains("Confirm it&#39;s you to make changes")
            || page.body.contains("Confirm it's you to make changes"),
        "{}",
        page.body
    );
    let r = a
        .post_form(
            "/account/mfa",
            &[("csrf_token", &page.csrf()), ("action", "remove")],
        )
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(app.count("SELECT count(*) FROM totp_credentials").await, 1);

    // Step up with a recovery code this time (same field as TOTP codes).
    let page = a.get("/step-up?return_to=%2Faccount%2Fmfa").await;
    let r = a
        .post_form(
            "/step-up",
            &[
                ("csrf_token", &page.csrf()),
                ("code", &e.recovery_codes[0]),
                ("return_to", "/account/mfa"),
            ],
        )
        .await;
    // The page says how many recovery codes are left, and leads back.
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("9 of ten are left"), "{}", r.body);
    assert!(r.body.contains(r#"href="/account/mfa""#), "{}", r.body);
    let page = a.get("/account/mfa").await;
    let r = a
        .post_form(
            "/account/mfa",
            &[("csrf_token", &page.csrf()), ("action", "remove")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("Two-step verification is off"));
    assert_eq!(app.count("SELECT count(*) FROM totp_credentials").await, 0);
    assert_eq!(app.count("SELECT count(*) FROM recovery_codes").await, 0);
    app.mail
        .wait_for_subject("alice@example.com", "Two-step verification was turned off")
        .await;
    assert!(
        other.get("/account").await.is_sign_in_redirect(),
        "other sessions end"
    );
    assert_eq!(
        a.get("/account").await.status,
        200,
        "this one stays (renewed)"
    );
    // Signing in now takes the password alone.
    let c = app.browser();
    let r = app.login(&c, "alice@example.com", PASSWORD).await;
    assert_eq!(r.location(), "/account");
}

#[tokio::test]
async fn new_recovery_codes_replace_the_old_ones() {
    // M9
    let app = spawn_app().await;
    let a = app.signed_in("alice@example.com").await;
    let e = enrol(&app, &a, "alice@example.com").await;
    let page = a.get("/account/mfa").await;
    let r = a
        .post_form(
            "/account/mfa",
            &[("csrf_token", &page.csrf()), ("action", "regenerate")],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let fresh = recovery_codes_on(&r.body);
    assert_eq!(fresh.len(), 10);
    assert!(fresh.iter().all(|c| !e.recovery_codes.contains(c)));
    app.mail
        .wait_for_subject("alice@example.com", "New recovery codes were made")
        .await;
    let b = app.browser();
    let csrf = password_step(&app, &b, "alice@example.com").await.csrf();
    let r = b
        .post_form(
            "/login/verify",
            &[("csrf_token", &csrf), ("code", &e.recovery_codes[1])],
        )
        .await;
    assert_eq!(r.status, 401, "an old code no longer works");
    let r = b
        .post_form(
            "/login/verify",
            &[("csrf_token", &csrf), ("code", &fresh[1])],
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
}

#[tokio::test]
async fn second_factor_secrets_are_not_readable_in_the_database() {
    // Principle 2: the TOTP secret sealed, recovery and e-mailed codes only as MACs
    let app = spawn_app().await;
    let a = app.signed_in("alice@example.com").await;
    let e = enrol(&app, &a, "alice@example.com").await;
    // An e-mailed code waiting in a sign-in of bob's (no app: the checks asked).
    app.user("bob@example.com").await;
    recent_failures(&app, "bob@example.com").await;
    let b = app.browser();
    password_step(&app, &b, "bob@example.com").await;
    let emailed = wait_code(&app, "bob@example.com", 1).await;

    let mut needles: Vec<Vec<u8>> = vec![
        e.secret.clone(),
        e.secret_b32.as_bytes().to_vec(),
        e.secret_b32.to_lowercase().into_bytes(),
        emailed.as_bytes().to_vec(),
    ];
    for c in &e.recovery_codes {
        needles.push(c.as_bytes().to_vec());
        needles.push(c.replace('-', "").into_bytes());
    }
    for table in [
        "totp_credentials",
        "recovery_codes",
        "mfa_challenges",
        "mail_outbox",
        "security_events",
        "sessions",
        "sign_in_throttle",
    ] {
        let rows: Vec<(String,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT row_to_json(t)::text FROM {table} t"
        )))
        .fetch_all(&app.db)
        .await
        .unwrap();
        let bytea: Vec<(Vec<u8>,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT convert_to(row_to_json(t)::text, 'UTF8') FROM {table} t"
        )))
        .fetch_all(&app.db)
        .await
        .unwrap();
        for (text,) in &rows {
            for n in &needles {
                let needle = String::from_utf8_lossy(n);
                assert!(
                    !text.contains(needle.as_ref()),
                    "{table} holds a secret in clear"
                );
                // bytea columns print as hex in JSON.
                let hex: String = n.iter().map(|b| format!("{b:02x}")).collect();
                assert!(!text.contains(&hex), "{table} holds a secret as bytes");
            }
        }
        assert_eq!(rows.len(), bytea.len());
    }
    // The sealed secret opens with the server's key to the secret the page showed.
    let sealed: Vec<u8> = sqlx::query_scalar("SELECT secret_enc FROM totp_credentials")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(
        app.keys().open("totp_credentials.secret", &sealed).unwrap(),
        e.secret
    );
    // And the code mail's subject (stored in the clear) does not carry the code.
    let subjects: Vec<String> = sqlx::query_scalar("SELECT subject FROM mail_outbox")
        .fetch_all(&app.db)
        .await
        .unwrap();
    assert!(subjects.iter().all(|s| !s.contains(&emailed)));
}

#[tokio::test]
async fn a_password_reset_voids_a_half_finished_sign_in() {
    let app = spawn_app().await;
    let e = user_with_totp(&app, "alice@example.com").await;
    let attacker = app.browser();
    let csrf = password_step(&app, &attacker, "alice@example.com")
        .await
        .csrf();
    // The owner resets the password by mail.
    let owner = app.browser();
    let page = owner.get("/password/forgot").await;
    owner
        .post_form(
            "/password/forgot",
            &[("csrf_token", &page.csrf()), ("email", "alice@example.com")],
        )
        .await;
    let mail = app
        .mail
        .wait_for_subject("alice@example.com", "Reset your password")
        .await;
    let token = mail.token("/password/reset");
    let page = owner.get(&format!("/password/reset?token={token}")).await;
    let r = owner
        .post_form(
            "/password/reset",
            &[
                ("csrf_token", &page.csrf()),
                ("token", &token),
                ("password", "an entirely new secret"),
                ("password_again", "an entirely new secret"),
            ],
        )
        .await;
    assert!(r.status < 400, "{}", r.body);
    assert_eq!(app.count("SELECT count(*) FROM mfa_challenges").await, 0);
    let r = attacker
        .post_form(
            "/login/verify",
            &[
                ("csrf_token", &csrf),
                ("code", &totp(&e.secret, now(&app) + 30)),
            ],
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(app.session_cookie(&attacker).is_none());
}

#[tokio::test]
async fn an_unfinished_enrolment_shows_its_key_only_while_the_step_up_is_fresh() {
    // M9: seeing the secret is part of adding a factor
    let app = spawn_app_with(frozen()).await;
    let b = app.signed_in("alice@example.com").await;
    step_up_by_email(&app, &b, "alice@example.com", "/account/mfa").await;
    let page = b.get("/account/mfa").await;
    b.post_form(
        "/account/mfa",
        &[("csrf_token", &page.csrf()), ("action", "start")],
    )
    .await;
    assert!(
        b.get("/account/mfa")
            .await
            .body
            .contains(r#"<code class="secret">"#)
    );
    app.clock.advance(Duration::from_secs(601));
    let page = b.get("/account/mfa").await;
    assert_eq!(page.status, 200);
    assert!(
        !page.body.contains(r#"<code class="secret">"#),
        "{}",
        page.body
    );
    assert!(!page.body.contains("otpauth://"));
    assert!(page.body.contains("/step-up?return_to=%2Faccount%2Fmfa"));
}
