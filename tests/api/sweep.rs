//! The hostile-input sweep (H1–H3, R5 over the whole surface): every route of the
//! route table, every method it takes, signed out and signed in, gets malformed,
//! oversized, duplicated and wrongly typed input — forms, JSON, queries, headers.
//! Never a 5xx; always a 4xx (or a redirect) in the route's own shape — a page for
//! people, RFC 6749 JSON on the OAuth endpoints, RFC 9457 problem JSON elsewhere for
//! machines; and no row is created or deleted anywhere in the database.

use gatehouse::web::{Access, ROUTES};

use crate::helpers::{Browser, Resp, TestApp, spawn_app};

/// A concrete path for a route pattern (its `{…}` parameters filled with junk that
/// is shaped like a value).
fn concrete(path: &str, filler: &str) -> String {
    let mut out = String::new();
    let mut rest = path;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..].find('}').map_or(rest.len(), |c| open + c + 1);
        out.push_str(filler);
        rest = &rest[close..];
    }
    out.push_str(rest);
    out
}

/// One hostile request: a name, and how to make it from a base request.
struct Probe {
    name: &'static str,
    /// Input no route may accept: sent a second time with the browser's real CSRF
    /// token in place of `{csrf}`, so the handler's own checks are reached too.
    malformed: bool,
    query: &'static str,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    headers: Vec<(&'static str, String)>,
}

fn probes() -> Vec<Probe> {
    let deep_json = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let big_form = format!("csrf_token=x&email={}", "a".repeat(200 * 1024));
    let form = Some("application/x-www-form-urlencoded");
    let json = Some("application/json");
    let p = |name, query, content_type, body: &str| Probe {
        name,
        malformed: true,
        query,
        content_type,
        body: body.as_bytes().to_vec(),
        headers: Vec::new(),
    };
    vec![
        p(
            "bad escapes in the query",
            "?return_to=%zz&x=%c0%af",
            None,
            "",
        ),
        p(
            "NUL and CRLF in the query",
            "?return_to=%00%0d%0aSet-Cookie:%20x=1&state=%0d%0a",
            None,
            "",
        ),
        p(
            "a parameter twice",
            "?return_to=/a&return_to=/b&client_id=a&client_id=b",
            None,
            "",
        ),
        p(
            "an off-site return_to",
            "?return_to=//evil.test/&redirect_uri=https://evil.test",
            None,
            "",
        ),
        p(
            "a long query",
            "?q=xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
            None,
            "",
        ),
        p(
            "a form with bad escapes",
            "",
            form,
            "csrf_token={csrf}&email=%c0%af&password=%00&x=%zz",
        ),
        p(
            "a form with a field twice",
            "",
            form,
            "csrf_token={csrf}&email=a&email=b&action=x&action=y",
        ),
        p(
            "a form of arrays",
            "",
            form,
            "email[]=a&password[0]=b&action[x]=y",
        ),
        p(
            "SQL in a form",
            "",
            form,
            "email=alice'--&password=' OR '1'='1&name=%25_\\",
        ),
        p("an empty form", "", form, ""),
        p(
            "truncated JSON",
            "",
            json,
            "{\"csrf_token\": \"{csrf}\", \"credential\": {",
        ),
        p(
            "wrongly typed JSON",
            "",
            json,
            "{\"csrf_token\": \"{csrf}\", \"ceremony\": [], \"name\": {}, \"credential\": 123, \"conditional\": \"yes\", \"password\": 123}",
        ),
        p("JSON nested 10,000 deep", "", json, &deep_json),
        p("plain text", "", Some("text/plain"), "csrf_token={csrf}"),
        p(
            "multipart",
            "",
            Some("multipart/form-data; boundary=x"),
            "--x\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nb\r\n--x--\r\n",
        ),
        p("a 200 KB form", "", form, &big_form),
        Probe {
            name: "hostile headers",
            malformed: false,
            query: "",
            content_type: form,
            body: b"csrf_token=x".to_vec(),
            headers: vec![
                ("origin", "null".into()),
                (
                    "x-forwarded-for",
                    "999.1.1.1, ::ffff:zz, \r".replace('\r', ""),
                ),
                (
                    "forwarded",
                    "for=\"[::1\";proto=gopher;by=\u{7f}".replace('\u{7f}', ""),
                ),
                ("authorization", "Basic !!!notbase64".into()),
                ("sec-secure-session-id", "../../etc/passwd".into()),
                ("accept", "application/json".into()),
            ],
        },
        Probe {
            name: "a 12 KB cookie",
            malformed: false,
            query: "",
            content_type: None,
            body: Vec::new(),
            headers: vec![(
                "cookie",
                format!("__Host-gatehouse_session={}", "z".repeat(12 * 1024)),
            )],
        },
    ]
}

/// Every table's content, hashed: the sweep must create, delete or change no row.
/// Sessions are hashed without the columns a signed-in request touches by design
/// (last seen, idle expiry); a signed-in visit to /step-up opens the session's
/// step-up challenge (one per session, made on first sight): a page view, whatever
/// its odd headers.
async fn census(app: &TestApp) -> Vec<(String, String)> {
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_name::text FROM information_schema.tables
         WHERE table_schema = 'public' AND table_type = 'BASE TABLE'
           AND table_name NOT IN ('_sqlx_migrations')
         ORDER BY table_name",
    )
    .fetch_all(&app.db)
    .await
    .unwrap();
    let mut digests = Vec::new();
    for t in tables {
        let rows = match t.as_str() {
            "sessions" => "(SELECT id, token_hash, user_id, revoked_at, revoked_reason, aal, amr,
                                   aal_reached_at, risk_flagged, risk_needs_proof, passkey_id,
                                   dbsc_jwk
                            FROM sessions)"
                .to_string(),
            "mfa_challenges" => {
                "(SELECT * FROM mfa_challenges WHERE kind <> 'step_up')".to_string()
            }
            other => format!("\"{other}\""),
        };
        let sql = format!(
            "SELECT count(*)::text || ':' || COALESCE(md5(string_agg(t::text, ',' ORDER BY t::text)), '')
             FROM {rows} t"
        );
        let digest: String = sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
            .fetch_one(&app.db)
            .await
            .unwrap();
        digests.push((t, digest));
    }
    digests
}

/// Whether an answer is in the shape its route promises.
fn check_shape(path: &str, method: &str, probe: &str, r: &Resp, must_refuse: bool) {
    let ct = r.header("content-type").unwrap_or_default();
    let what = format!("{method} {path} ({probe}) → {}", r.status);
    assert!(r.status < 500, "{what}: {}", r.body);
    // Malformed input with the real CSRF token reaches the handler: it must still
    // be refused, never taken.
    assert!(
        !must_refuse || r.status >= 400,
        "{what}: accepted: {}",
        r.body
    );
    if r.status < 400 {
        return;
    }
    if ct.starts_with("application/problem+json") {
        let v: serde_json::Value =
            serde_json::from_str(&r.body).unwrap_or_else(|_| panic!("{what}: bad JSON"));
        assert!(
            v["status"].as_u64() == Some(u64::from(r.status)),
            "{what}: {v}"
        );
        assert!(v["detail"].is_string(), "{what}: {v}");
    } else if ct.starts_with("application/json") {
        let v: serde_json::Value =
            serde_json::from_str(&r.body).unwrap_or_else(|_| panic!("{what}: bad JSON"));
        assert!(v["error"].is_string(), "{what}: {v}");
        assert!(
            path.starts_with("/oauth2/")
                || path.starts_with("/.well-known/")
                || path == "/jwks.json",
            "{what}: OAuth JSON off the OAuth endpoints"
        );
    } else {
        assert!(ct.starts_with("text/html"), "{what}: content type {ct:?}");
        assert!(
            r.body.to_ascii_lowercase().starts_with("<!doctype html>"),
            "{what}: {}",
            r.body
        );
        assert!(
            !r.body.contains("panicked") && !r.body.contains("sqlx") && !r.body.contains("SELECT"),
            "{what}"
        );
    }
}

async fn sweep(app: &TestApp, b: &Browser, signed_in: bool, csrf: &str) -> usize {
    let mut sent = 0;
    for route in ROUTES {
        if signed_in && route.access == Access::Public && route.path == "/logout" {
            continue; // signing out is not hostile input
        }
        for filler in [
            "00000000-0000-0000-0000-000000000000",
            "%zz",
            "..%2f..%2fetc",
        ] {
            if filler != "%zz" && !route.path.contains('{') {
                continue;
            }
            let path = concrete(route.path, filler);
            for method in route.methods {
                for probe in probes() {
                    let m = match *method {
                        "get" => reqwest::Method::GET,
                        "post" => reqwest::Method::POST,
                        "options" => reqwest::Method::OPTIONS,
                        other => panic!("a method the sweep does not know: {other}"),
                    };
                    if m != reqwest::Method::POST && !probe.body.is_empty() {
                        continue;
                    }
                    let has_slot = probe.body.windows(6).any(|w| w == b"{csrf}");
                    let tokens: &[&str] =
                        if probe.malformed && has_slot && m == reqwest::Method::POST {
                            &["forged", csrf]
                        } else {
                            &["forged"]
                        };
                    for token in tokens {
                        let body = String::from_utf8_lossy(&probe.body).replace("{csrf}", token);
                        let mut rb = b.request(m.clone(), &format!("{path}{}", probe.query));
                        if let Some(ct) = probe.content_type {
                            rb = rb.header("content-type", ct);
                        }
                        for (k, v) in &probe.headers {
                            rb = rb.header(*k, v.as_str());
                        }
                        if m == reqwest::Method::POST {
                            rb = rb.body(body);
                        }
                        let r = b.send(rb).await;
                        // The DBSC endpoints read headers only (a body is ignored, as
                        // the draft has it).
                        let reads_body = !path.starts_with("/dbsc/");
                        check_shape(&path, method, probe.name, &r, *token == csrf && reads_body);
                        sent += 1;
                    }
                }
            }
        }
    }
    let _ = app;
    sent
}

#[tokio::test]
async fn every_route_answers_hostile_input_with_a_clear_4xx_and_changes_nothing() {
    let app = spawn_app().await;
    // A signed-in person (the sweep's second pass goes as them) and an account others
    // might aim at.
    let b = app.signed_in("sweep@example.com").await;
    app.user("alice@example.com").await;
    let before = census(&app).await;
    let anonymous = app.browser();
    let pre_session = anonymous.get("/login").await.csrf();
    let session = b.get("/account").await.csrf();
    let sent =
        sweep(&app, &anonymous, false, &pre_session).await + sweep(&app, &b, true, &session).await;
    assert!(sent > 1000, "only {sent} requests");
    println!(
        "sweep: {sent} hostile requests over {} routes",
        ROUTES.len()
    );
    // Still signed in: nothing hostile ended the session either.
    assert_eq!(b.get("/account").await.status, 200);
    let after = census(&app).await;
    let changed: Vec<_> = before
        .iter()
        .zip(&after)
        .filter(|(a, z)| a != z)
        .map(|(a, z)| format!("{}: {} → {}", a.0, a.1, z.1))
        .collect();
    assert!(changed.is_empty(), "rows created or deleted: {changed:?}");
    assert!(
        app.count("SELECT count(*) FROM mfa_challenges WHERE kind = 'step_up'")
            .await
            <= 1,
        "one step-up challenge per session at most"
    );
}
