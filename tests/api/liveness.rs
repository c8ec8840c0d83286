//! The per-node liveness cache (issue "revocation reach", item 3): introspection is
//! answered from memory while PostgreSQL's notifications keep it exact, and never
//! says `active: true` for a session revoked while the listener could not hear it —
//! cut, stalled, or down with the database (R2).

use std::time::{Duration, Instant};

use crate::helpers::{Options, PASSWORD, TestApp, spawn_app_with};
use crate::oauth_helpers::*;

const HIT: &str = "gatehouse_liveness_lookups_total{source=\"hit\"}";
const BYPASS: &str = "gatehouse_liveness_lookups_total{source=\"bypass\"}";
const UP: &str = "gatehouse_invalidation_listener_up";

async fn listening(app: &TestApp) {
    assert_eq!(
        app.wait_for_metric(UP, 1.0).await,
        1.0,
        "the listener connects"
    );
}

async fn deaf(app: &TestApp) {
    for _ in 0..200 {
        if app.metric(UP).await == 0.0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the listener never noticed");
}

/// Introspects `token` until an answer comes from the cache (a proof that took
/// too long on a loaded machine makes one answer read PostgreSQL: allowed).
pub async fn assert_hit(app: &TestApp, client: &Client, token: &str) {
    for _ in 0..50 {
        let hits = app.metric(HIT).await;
        assert_eq!(introspect(app, client, token).await["active"], true);
        if app.metric(HIT).await > hits {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no answer came from the cache");
}

/// A signed-in app session, its token introspected until the answer is cached.
async fn cached_token(app: &TestApp, client: &Client) -> (Tokens, String) {
    listening(app).await;
    let b = app.browser();
    app.user("alice@example.com").await;
    app.login(&b, "alice@example.com", PASSWORD).await;
    let t = sign_in_app(app, &b, client, &[]).await;
    assert_hit(app, client, &t.access).await;
    let sid = jwt_parts(&t.access).1["sid"].as_str().unwrap().to_string();
    (t, sid)
}

/// Ends a session behind the server's back (as another node or the CLI would).
async fn revoke_in_db(app: &TestApp, sid: &str) {
    sqlx::query(
        "UPDATE sessions SET revoked_at = now(), revoked_reason = 'test' WHERE id = $1::uuid",
    )
    .bind(sid)
    .execute(&app.db)
    .await
    .unwrap();
}

#[tokio::test]
async fn a_cached_answer_is_evicted_by_the_revocation_notification() {
    let app = spawn_app_with(Options::default()).await;
    let client = app_client(&app);
    let (t, sid) = cached_token(&app, &client).await;
    revoke_in_db(&app, &sid).await;
    let revoked = Instant::now();
    loop {
        if introspect(&app, &client, &t.access).await == inactive() {
            break;
        }
        assert!(
            revoked.elapsed() < Duration::from_secs(1),
            "still active after 1 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(userinfo(&app, &t.access).await.0, 401);
    // A token revoked by its client is evicted the same way.
    let b = app.signed_in("bob@example.com").await;
    let t = sign_in_app(&app, &b, &client, &[]).await;
    assert_hit(&app, &client, &t.access).await;
    // Revoked through this very node: its own cache forgets before the answer.
    let r = reqwest::Client::new()
        .post(format!("{}/oauth2/revoke", app.address))
        .basic_auth(&client.id, client.secret.as_deref())
        .form(&[("token", t.access.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(introspect(&app, &client, &t.access).await, inactive());
}

#[tokio::test]
async fn with_the_listener_cut_introspection_rechecks_postgres() {
    let app = spawn_app_with(Options {
        listen_proxy: true,
        ..Options::default()
    })
    .await;
    let client = app_client(&app);
    let (t, sid) = cached_token(&app, &client).await;
    let proxy = app.listen_proxy.as_ref().unwrap();
    proxy.cut();
    deaf(&app).await;
    // Revoked while nobody listens: the notification is lost for good.
    revoke_in_db(&app, &sid).await;
    let bypassed = app.metric(BYPASS).await;
    assert_eq!(introspect(&app, &client, &t.access).await, inactive());
    assert_eq!(userinfo(&app, &t.access).await.0, 401);
    assert!(app.metric(BYPASS).await > bypassed, "read from PostgreSQL");
    // Back: the cache starts empty and works again.
    proxy.restore();
    listening(&app).await;
    assert_eq!(introspect(&app, &client, &t.access).await, inactive());
    let b = app.signed_in("bob@example.com").await;
    let t = sign_in_app(&app, &b, &client, &[]).await;
    assert_hit(&app, &client, &t.access).await;
}

#[tokio::test]
async fn a_silently_stalled_listener_stops_the_cache_within_a_second() {
    // The connection stays open but nothing gets through either way (a network that
    // stopped without telling anyone): the notification of the revocation below is
    // held back, and only the listener's failing proof can stop the cache.
    let app = spawn_app_with(Options {
        listen_proxy: true,
        ..Options::default()
    })
    .await;
    let client = app_client(&app);
    let (t, sid) = cached_token(&app, &client).await;
    let proxy = app.listen_proxy.as_ref().unwrap();
    proxy.stall();
    revoke_in_db(&app, &sid).await;
    let revoked = Instant::now();
    let mut dead_after = None;
    while revoked.elapsed() < Duration::from_secs(2) {
        let started = revoked.elapsed();
        let answer = introspect(&app, &client, &t.access).await;
        match dead_after {
            None if answer == inactive() => dead_after = Some(started),
            None => assert!(
                started < Duration::from_secs(1),
                "active:true {started:?} after the revocation"
            ),
            Some(_) => assert_eq!(answer, inactive(), "active again after being dead"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let dead_after = dead_after.expect("dead within the loop");
    assert!(dead_after < Duration::from_secs(1), "{dead_after:?}");
    proxy.unstall();
    listening(&app).await;
    assert_eq!(introspect(&app, &client, &t.access).await, inactive());
}

#[tokio::test]
async fn with_the_database_down_the_cache_never_answers_active() {
    // R2: every connection, the listener's included, goes through the cut proxy. A
    // closed connection is noticed at once; a database that stalls without closing
    // anything stops the cache within the trust window (750 ms), the stated bound.
    let app = spawn_app_with(Options {
        db_proxy: true,
        ..Options::default()
    })
    .await;
    let client = app_client(&app);
    let (t, _) = cached_token(&app, &client).await;
    app.proxy.as_ref().unwrap().cut();
    let cut = Instant::now();
    // A closed connection is noticed at once (the stated bound is the trust window).
    deaf(&app).await;
    assert!(
        cut.elapsed() < Duration::from_secs(1),
        "{:?}",
        cut.elapsed()
    );
    for _ in 0..10 {
        let r = reqwest::Client::new()
            .post(format!("{}/oauth2/introspect", app.address))
            .basic_auth(&client.id, client.secret.as_deref())
            .form(&[("token", t.access.as_str())])
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body: serde_json::Value =
            serde_json::from_str(&r.text().await.unwrap_or_default()).unwrap_or_default();
        assert_eq!(status, 503, "{body}");
        assert_ne!(body["active"], true);
    }
    app.proxy.as_ref().unwrap().restore();
}

#[tokio::test]
async fn a_listener_on_another_database_never_makes_the_cache_trusted() {
    // GATEHOUSE_LISTEN_DATABASE_URL pointing elsewhere (a typo, an old primary): its
    // LISTEN works, but no notification of this database ever reaches it. The echo
    // sent through the pool never comes back, so nothing is answered from memory.
    let (other_db, other_url) = crate::helpers::fresh_database().await;
    let app = spawn_app_with(Options {
        extra: vec![("GATEHOUSE_LISTEN_DATABASE_URL", other_url)],
        ..Options::default()
    })
    .await;
    let client = app_client(&app);
    let b = app.signed_in("alice@example.com").await;
    let t = sign_in_app(&app, &b, &client, &[]).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    for _ in 0..3 {
        assert_eq!(introspect(&app, &client, &t.access).await["active"], true);
    }
    assert_eq!(app.metric(UP).await, 0.0);
    assert_eq!(app.metric(HIT).await, 0.0, "no answer came from the cache");
    assert!(app.metric(BYPASS).await >= 3.0);
    let sid = jwt_parts(&t.access).1["sid"].as_str().unwrap().to_string();
    revoke_in_db(&app, &sid).await;
    assert_eq!(introspect(&app, &client, &t.access).await, inactive());
    crate::helpers::drop_database(&other_db).await;
}

const MISS: &str = "gatehouse_liveness_lookups_total{source=\"miss\"}";

// Issue 24, item 7: `/oauth2/revoke` with a public client's id and a junk token used
// to empty this node's caches, so anyone could make every introspection read
// PostgreSQL again. Only what a real revocation touched is forgotten now.
#[tokio::test]
async fn revoking_junk_or_someone_elses_token_leaves_the_cache_alone() {
    let app = spawn_app_with(Options::default()).await;
    let client = app_client(&app);
    let (t, _) = cached_token(&app, &client).await;
    let anyone = create_client(&app, &["--public"]);
    let misses = app.metric(MISS).await;
    let hits = app.metric(HIT).await;
    // Junk, a JWT-shaped junk, and a genuine token of another client.
    for junk in ["junk", "a.b.c", t.access.as_str(), t.refresh.as_str()] {
        let (s, _, _) = post(&app, "/oauth2/revoke", &anyone, &[("token", junk)]).await;
        assert_eq!(s, 200, "RFC 7009 §2.2: the same answer for anything");
        assert_eq!(introspect(&app, &client, &t.access).await["active"], true);
    }
    // A spent code replayed: the first replay ends its grant (and forgets that grant
    // only); replaying it again ends nothing and forgets nothing.
    let c = app.signed_in("carol@example.com").await;
    let (verifier, challenge) = crate::oauth_helpers::pkce();
    let code = crate::oauth_helpers::code_for(
        &c,
        &client,
        &[
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ],
    )
    .await;
    let (s, _) = crate::oauth_helpers::exchange(&app, &client, &code, Some(&verifier)).await;
    assert_eq!(s, 200);
    for _ in 0..3 {
        let (s, _) = crate::oauth_helpers::exchange(&app, &client, &code, Some(&verifier)).await;
        assert_eq!(s, 400, "a replayed code is refused");
        assert_eq!(introspect(&app, &client, &t.access).await["active"], true);
    }
    assert_eq!(
        app.metric(MISS).await,
        misses,
        "no cached answer was forgotten"
    );
    assert!(app.metric(HIT).await > hits, "answers came from the cache");

    // A real revocation of another token of the same client forgets that token only.
    let b = app.signed_in("bob@example.com").await;
    let other = sign_in_app(&app, &b, &client, &[]).await;
    assert_hit(&app, &client, &other.access).await;
    let (s, _, _) = post(&app, "/oauth2/revoke", &client, &[("token", &other.access)]).await;
    assert_eq!(s, 200);
    assert_eq!(introspect(&app, &client, &other.access).await, inactive());
    let third = sign_in_app(&app, &b, &client, &[]).await;
    let (s, _, _) = post(
        &app,
        "/oauth2/revoke",
        &client,
        &[("token", &third.refresh)],
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(introspect(&app, &client, &third.access).await, inactive());
    let after = app.metric(MISS).await;
    assert_eq!(introspect(&app, &client, &t.access).await["active"], true);
    assert_eq!(
        app.metric(MISS).await,
        after,
        "alice's token is still answered from the cache"
    );
}

// Issue 24, item 8: the cache kept a live answer until the row's expiry, which keeps
// the fraction of a second the JWT's whole-second `exp` drops.
#[tokio::test]
async fn a_cached_answer_ends_with_the_tokens_exp_to_the_second() {
    let app = spawn_app_with(Options {
        frozen_clock: true,
        ..Options::default()
    })
    .await;
    // Half past a second, so the row ends half a second after the JWT's exp.
    let frac = i64::from(app.clock.now().millisecond());
    app.clock
        .advance(Duration::from_millis(((1500 - frac) % 1000) as u64));
    let client = app_client(&app);
    let (t, _) = cached_token(&app, &client).await;
    let exp = jwt_parts(&t.access).1["exp"].as_i64().unwrap();
    let row: time::OffsetDateTime =
        sqlx::query_scalar("SELECT expires_at FROM oauth_access_tokens")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert!(row.unix_timestamp_nanos() > i128::from(exp) * 1_000_000_000 + 400_000_000);
    // 200 ms after exp, 300 ms before the row's expiry.
    let now = app.clock.now().unix_timestamp_nanos();
    let to = i128::from(exp) * 1_000_000_000 + 200_000_000;
    app.clock
        .advance(Duration::from_millis(((to - now) / 1_000_000) as u64));
    assert!(app.clock.now().unix_timestamp() >= exp);
    assert_eq!(introspect(&app, &client, &t.access).await, inactive());
    assert_eq!(userinfo(&app, &t.access).await.0, 401);
}
