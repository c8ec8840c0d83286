//! The fault campaign (DESIGN.md "Reliability"; checklist R1, R3): two nodes on one
//! database serve sign-ins, page views, token refreshes, introspections, sign-outs
//! everywhere and password-reset mails while (a) the database is cut off by a TCP
//! proxy and comes back, (b) the SMTP relay refuses everything for a while, (c) one of
//! the two nodes is killed with SIGKILL. Then: no 5xx but 503 during the outage;
//! nothing answered success that did not happen (every session, refresh token and
//! revocation that was answered is what the database holds); no revocation undone;
//! every reset that was answered is mailed exactly once; the surviving node served
//! throughout and both the database and the mail came back without a restart.
//!
//! `GATEHOUSE_CAMPAIGN_SECS` (default 12) sets its length; `scripts/fault-campaign`
//! runs it longer and prints the figures (docs/reliability.md).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::helpers::{Browser, Options, PASSWORD, Resp, TestApp, spawn_app_with};
use crate::nodes::second_node;
use crate::oauth_helpers::{Client, Tokens, app_client, sign_in_app};

#[derive(Default)]
struct Tally {
    counts: Mutex<BTreeMap<String, u64>>,
    broken: Mutex<Vec<String>>,
    killed: std::sync::atomic::AtomicBool,
}

impl Tally {
    fn add(&self, what: String) {
        *self.counts.lock().unwrap().entry(what).or_default() += 1;
    }
    fn broken(&self, what: String) {
        self.broken.lock().unwrap().push(what);
    }
    /// Counts an answer (`None`: the node could not be reached) and flags any 5xx
    /// but 503.
    fn answer(&self, node: &str, op: &str, r: &Option<Resp>, allowed: &[u16]) -> Option<u16> {
        let status = r.as_ref().map(|r| r.status);
        let label = status.map_or("unreachable".to_string(), |s| s.to_string());
        self.add(format!("{node} {op} {label}"));
        if node == "A" && status.is_none() {
            // The node that is never killed must answer every request.
            self.broken(format!("A {op}: no answer"));
        }
        if node == "A" && status.is_some_and(|s| s < 400) {
            let killed = self.killed.load(std::sync::atomic::Ordering::SeqCst);
            let label = if killed {
                "after the kill"
            } else {
                "before the kill"
            };
            self.add(format!("A served {label}"));
        }
        if let Some(s) = status
            && s != 503
            && !allowed.contains(&s)
        {
            self.broken(format!(
                "{node} {op} answered {s}: {}",
                r.as_ref()
                    .map(|r| r.body.chars().take(200).collect::<String>())
                    .unwrap_or_default()
            ));
        }
        status
    }
}

/// The phases, from the start of the campaign.
struct Plan {
    length: Duration,
    cut_at: Duration,
    restore_at: Duration,
    mail_stop_at: Duration,
    mail_resume_at: Duration,
    kill_at: Duration,
}

impl Plan {
    fn new() -> Self {
        let secs: u64 = std::env::var("GATEHOUSE_CAMPAIGN_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .filter(|s| *s >= 8)
            .unwrap_or(12);
        let at = |f: f64| Duration::from_secs_f64(secs as f64 * f);
        Self {
            length: at(1.0),
            cut_at: at(0.15),
            restore_at: at(0.4),
            mail_stop_at: at(0.3),
            mail_resume_at: at(0.75),
            kill_at: at(0.6),
        }
    }
}

/// One person with a live session and an app's tokens.
struct Person {
    email: String,
    browser: Browser,
    tokens: Mutex<Tokens>,
    /// A refresh or a sign-out everywhere answered 503 (the database went away
    /// around it): it may or may not have happened, so what follows may go either
    /// way (a refresh that did happen makes the old token a replay, which rightly
    /// ends the grant).
    uncertain: std::sync::atomic::AtomicBool,
}

async fn person(app: &TestApp, client: &Client, email: &str) -> Person {
    let browser = app.signed_in(email).await;
    let tokens = sign_in_app(app, &browser, client, &[]).await;
    Person {
        email: email.to_string(),
        browser,
        tokens: Mutex::new(tokens),
        uncertain: std::sync::atomic::AtomicBool::new(false),
    }
}

async fn post_oauth(
    base: &str,
    client: &Client,
    path: &str,
    form: &[(&str, &str)],
) -> Option<Resp> {
    let res = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .basic_auth(&client.id, client.secret.as_deref())
        .form(form)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .ok()?;
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let body = res.text().await.unwrap_or_default();
    Some(Resp {
        status,
        headers,
        body,
    })
}

#[tokio::test]
async fn two_nodes_ride_out_a_database_cut_a_mail_outage_and_a_killed_node() {
    let plan = Plan::new();
    let app = spawn_app_with(Options {
        db_proxy: true,
        ..Options::default()
    })
    .await;
    let node_b = second_node(&app).await;
    let (a, b) = (app.address.clone(), node_b.address.clone());
    let client = app_client(&app);
    let mut people = Vec::new();
    for i in 0..6 {
        people.push(Arc::new(
            person(&app, &client, &format!("p{i}@example.com")).await,
        ));
    }
    // Accounts for sign-ins and for reset mails.
    for i in 0..4 {
        app.user(&format!("s{i}@example.com")).await;
    }
    let mail_users: Vec<String> = (0..40).map(|i| format!("m{i}@example.com")).collect();
    for m in &mail_users {
        app.user(m).await;
    }
    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    let deadline = started + plan.length;
    let killed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let node_for = {
        let killed = killed.clone();
        let (a, b) = (a.clone(), b.clone());
        move |i: usize| -> (String, &'static str) {
            if i % 2 == 1 && !killed.load(std::sync::atomic::Ordering::SeqCst) {
                (b.clone(), "B")
            } else {
                (a.clone(), "A")
            }
        }
    };

    let mut tasks = Vec::new();
    // Sign-ins: every one answered 303 is a session the database must hold.
    let sessions: Arc<Mutex<Vec<Browser>>> = Arc::default();
    for w in 0..2 {
        let (tally, sessions, node_for) = (tally.clone(), sessions.clone(), node_for.clone());
        let a = a.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = w;
            while Instant::now() < deadline {
                i += 1;
                let (base, node) = node_for(i);
                let br = Browser::new(&base);
                let page = br
                    .try_send(br.request(reqwest::Method::GET, "/login"))
                    .await;
                if tally.answer(node, "login page", &page, &[200]) != Some(200) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                let csrf = page.unwrap().csrf();
                let email = format!("s{}@example.com", i % 4);
                let r = br
                    .try_send(br.request(reqwest::Method::POST, "/login").form(&[
                        ("csrf_token", csrf.as_str()),
                        ("email", &email),
                        ("password", PASSWORD),
                    ]))
                    .await;
                if tally.answer(node, "sign-in", &r, &[303, 401, 429]) == Some(303) {
                    // A 303 to /login/verify is a sign-in waiting for a code (attempts
                    // cut off by the outage stay counted as failures, and three make
                    // the checks ask for one): no session yet, and none is claimed.
                    if r.as_ref().is_some_and(|r| r.location() == "/account") {
                        sessions.lock().unwrap().push(br.at(&a));
                    } else {
                        tally.add(format!("{node} sign-in went on to a second factor"));
                    }
                }
            }
        }));
    }
    // Page views, refreshes and introspections for the people with tokens; half of
    // them sign out everywhere along the way.
    let revoked: Arc<Mutex<Vec<usize>>> = Arc::default();
    for (n, p) in people.iter().enumerate() {
        let (tally, p, client, node_for, revoked) = (
            tally.clone(),
            p.clone(),
            client.clone(),
            node_for.clone(),
            revoked.clone(),
        );
        let a = a.clone();
        let revoke_after = started + plan.length.mul_f64(0.1 + 0.12 * n as f64);
        tasks.push(tokio::spawn(async move {
            let mut i = n;
            let mut gone = false;
            let mut gone_at = None;
            let unsure = |p: &Person| p.uncertain.load(std::sync::atomic::Ordering::SeqCst);
            while Instant::now() < deadline {
                i += 1;
                let (base, node) = node_for(i);
                let br = p.browser.at(&base);
                let r = br
                    .try_send(br.request(reqwest::Method::GET, "/account"))
                    .await;
                let expected: &[u16] = if gone {
                    &[303]
                } else if unsure(&p) {
                    &[200, 303]
                } else {
                    &[200]
                };
                tally.answer(node, "page view", &r, expected);
                let access = p.tokens.lock().unwrap().access.clone();
                let r =
                    post_oauth(&base, &client, "/oauth2/introspect", &[("token", &access)]).await;
                // Revocation reaches every node's cache within a second.
                let settled =
                    gone_at.is_some_and(|t: Instant| t.elapsed() > Duration::from_millis(1500));
                if tally.answer(node, "introspect", &r, &[200]) == Some(200) && settled {
                    let v: serde_json::Value = serde_json::from_str(&r.unwrap().body).unwrap();
                    if v["active"] != false {
                        tally.broken(format!(
                            "{} introspected active after sign-out everywhere",
                            p.email
                        ));
                    }
                }
                // Refreshes on the node that survives (a killed node may take an
                // answer with it; a replay of the old token would then rightly end
                // the grant).
                if !gone {
                    let refresh = p.tokens.lock().unwrap().refresh.clone();
                    let r = post_oauth(
                        &a,
                        &client,
                        "/oauth2/token",
                        &[("grant_type", "refresh_token"), ("refresh_token", &refresh)],
                    )
                    .await;
                    let status = tally.answer("A", "refresh", &r, &[200, 400]);
                    if status == Some(503) {
                        p.uncertain.store(true, std::sync::atomic::Ordering::SeqCst);
                    }
                    if status == Some(400) && !unsure(&p) {
                        tally.broken(format!(
                            "{}: the last answered refresh token was refused",
                            p.email
                        ));
                    }
                    if status == Some(200) {
                        // The token we held worked: whatever the 503 before it left
                        // undone, nothing is uncertain any more.
                        p.uncertain
                            .store(false, std::sync::atomic::Ordering::SeqCst);
                        let v: serde_json::Value = serde_json::from_str(&r.unwrap().body).unwrap();
                        let mut t = p.tokens.lock().unwrap();
                        t.access = v["access_token"].as_str().unwrap().to_string();
                        t.refresh = v["refresh_token"].as_str().unwrap().to_string();
                    }
                }
                if n % 2 == 0 && !gone && Instant::now() > revoke_after {
                    let ba = p.browser.at(&a);
                    let page = ba
                        .try_send(ba.request(reqwest::Method::GET, "/account/devices"))
                        .await;
                    if tally.answer("A", "devices", &page, &[200]) == Some(200) {
                        let csrf = page.unwrap().csrf();
                        let r = ba
                            .try_send(
                                ba.request(reqwest::Method::POST, "/account/devices/revoke-all")
                                    .form(&[("csrf_token", csrf.as_str())]),
                            )
                            .await;
                        match tally.answer("A", "sign out everywhere", &r, &[303]) {
                            Some(303) => {
                                gone = true;
                                gone_at = Some(Instant::now());
                                revoked.lock().unwrap().push(n);
                            }
                            Some(503) => {
                                p.uncertain.store(true, std::sync::atomic::Ordering::SeqCst)
                            }
                            _ => {}
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }));
    }
    // Reset mails, each to an address of its own: every one answered must arrive
    // exactly once.
    let mailed: Arc<Mutex<Vec<String>>> = Arc::default();
    {
        let (tally, mailed, node_for) = (tally.clone(), mailed.clone(), node_for.clone());
        let users = mail_users.clone();
        let gap = plan.length / 42;
        tasks.push(tokio::spawn(async move {
            for (i, email) in users.iter().enumerate() {
                if Instant::now() > deadline {
                    break;
                }
                let (base, node) = node_for(i);
                let br = Browser::new(&base);
                let page = br
                    .try_send(br.request(reqwest::Method::GET, "/password/forgot"))
                    .await;
                if tally.answer(node, "forgot page", &page, &[200]) == Some(200) {
                    let csrf = page.unwrap().csrf();
                    let r = br
                        .try_send(
                            br.request(reqwest::Method::POST, "/password/forgot")
                                .form(&[("csrf_token", csrf.as_str()), ("email", email)]),
                        )
                        .await;
                    // 429: the address allowance of reset mails (20 an hour from one
                    // client address) is spent; nothing is mailed then.
                    if tally.answer(node, "forgot", &r, &[200, 429]) == Some(200) {
                        mailed.lock().unwrap().push(email.clone());
                    }
                }
                tokio::time::sleep(gap).await;
            }
        }));
    }

    // The faults.
    let mut node_b = Some(node_b);
    let mut recovered_after = None;
    let mut restored = None;
    let mut phases = vec![
        (plan.cut_at, "cut"),
        (plan.restore_at, "restore"),
        (plan.mail_stop_at, "mail stop"),
        (plan.kill_at, "kill"),
        (plan.mail_resume_at, "mail resume"),
    ];
    phases.sort();
    for (at, what) in phases {
        tokio::time::sleep_until((started + at).into()).await;
        match what {
            "cut" => app.proxy.as_ref().unwrap().cut(),
            "restore" => {
                app.proxy.as_ref().unwrap().restore();
                restored = Some(Instant::now());
            }
            "mail stop" => app.mail.stop(),
            "mail resume" => app.mail.resume(),
            "kill" => {
                killed.store(true, std::sync::atomic::Ordering::SeqCst);
                tally
                    .killed
                    .store(true, std::sync::atomic::Ordering::SeqCst);
                drop(node_b.take()); // SIGKILL
            }
            _ => unreachable!(),
        }
        if what == "restore" {
            // Time until node A answers /readyz again, without a restart.
            let probe = Browser::new(&a);
            for _ in 0..400 {
                if probe
                    .try_send(probe.request(reqwest::Method::GET, "/readyz"))
                    .await
                    .is_some_and(|r| r.status == 200)
                {
                    recovered_after = restored.map(|t| t.elapsed());
                    break;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
    }
    for t in tasks {
        t.await.expect("a campaign worker panicked");
    }

    // Afterwards, through the surviving node.
    let recovered = recovered_after.expect("node A answered /readyz again after the cut");
    let sessions = sessions.lock().unwrap().clone();
    let mut missing = 0;
    for br in &sessions {
        let r = br.get("/account").await;
        if r.status != 200 {
            missing += 1;
            println!("  missing: {} {}", r.status, r.location());
        }
    }
    assert_eq!(
        missing,
        0,
        "{missing} of {} answered sign-ins hold no session",
        sessions.len()
    );
    let revoked = revoked.lock().unwrap().clone();
    for (n, p) in people.iter().enumerate() {
        let br = p.browser.at(&a);
        let page = br.get("/account").await;
        let tokens = p.tokens.lock().unwrap().refresh.clone();
        let (status, _, body) = crate::oauth_helpers::post(
            &app,
            "/oauth2/token",
            &client,
            &[("grant_type", "refresh_token"), ("refresh_token", &tokens)],
        )
        .await;
        if revoked.contains(&n) {
            assert!(
                page.is_sign_in_redirect(),
                "{}: a sign-out everywhere was undone",
                p.email
            );
            assert_eq!(
                status, 400,
                "{}: refresh after sign-out everywhere: {body}",
                p.email
            );
        } else if p.uncertain.load(std::sync::atomic::Ordering::SeqCst) {
            println!(
                "  {}: an answer lost in the cut; either outcome is right",
                p.email
            );
        } else {
            assert_eq!(page.status, 200, "{}: a live session was lost", p.email);
            assert_eq!(
                status, 200,
                "{}: the last answered refresh token: {body}",
                p.email
            );
        }
    }
    let mailed = mailed.lock().unwrap().clone();
    // Everything answered is queued; wait until the outbox has delivered it all (a
    // duplicate would come late, so count only then).
    for _ in 0..600 {
        let pending = app
            .count("SELECT count(*) FROM mail_outbox WHERE sent_at IS NULL AND failed_at IS NULL")
            .await;
        if pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut duplicates = Vec::new();
    for email in &mail_users {
        let expected = usize::from(mailed.contains(email));
        let mut got = 0;
        for _ in 0..300 {
            got = app
                .mail
                .to(email)
                .iter()
                .filter(|m| m.subject() == "Reset your password")
                .count();
            if got >= expected {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if got > expected {
            duplicates.push(email.clone());
        }
        assert!(
            got >= expected,
            "{email}: an answered reset was never mailed"
        );
    }
    assert!(
        duplicates.is_empty(),
        "mailed more than once: {duplicates:?}"
    );
    let broken = tally.broken.lock().unwrap().clone();
    let counts = tally.counts.lock().unwrap().clone();
    let total: u64 = counts.values().sum();
    let a_after_kill = counts.get("A served after the kill").copied().unwrap_or(0);
    println!(
        "fault campaign: {} s, {total} requests",
        plan.length.as_secs()
    );
    for (k, v) in &counts {
        println!("  {k}: {v}");
    }
    println!(
        "  database back: node A ready {} ms after the proxy let it through again",
        recovered.as_millis()
    );
    println!(
        "  sessions answered: {}, sign-outs everywhere: {}, reset mails answered: {}",
        sessions.len(),
        revoked.len(),
        mailed.len()
    );
    assert!(broken.is_empty(), "answers outside the rules: {broken:#?}");
    assert!(
        a_after_kill > 20,
        "node A served {a_after_kill} requests after B was killed"
    );
    assert!(
        counts.keys().any(|k| k.ends_with(" 503")),
        "the cut produced no 503: the campaign did not reach the database outage"
    );
    assert!(
        !mailed.is_empty() && !sessions.is_empty(),
        "too little load to prove anything"
    );
}
