//! The store's side of linked identities, against PostgreSQL: identity is
//! (upstream, subject); one identity per upstream per person; unlinking never takes
//! a person's last way to sign in.

use std::sync::Arc;

use gatehouse::domain::UserId;
use gatehouse::store::{NewEvent, NewLink, PgStore, StoreError, Unlinked, UpstreamStore};

use crate::helpers::{Options, TestApp, spawn_app, spawn_app_with};
use crate::upstream_cli::add_upstream;

fn event(app: &TestApp, kind: &'static str) -> NewEvent {
    NewEvent {
        kind,
        actor: "user",
        at: app.clock.now(),
        ip_enc: None,
        user_agent_enc: None,
        location_enc: None,
        detail: None,
    }
}

async fn user_id(app: &TestApp, email: &str) -> UserId {
    app.user(email).await;
    let id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM users WHERE email = $1")
        .bind(email)
        .fetch_one(&app.db)
        .await
        .unwrap();
    UserId(id)
}

#[tokio::test]
async fn identities_link_once_touch_and_unlink_only_while_another_way_is_left() {
    let app = spawn_app().await;
    for name in ["one", "two"] {
        add_upstream(
            &app,
            &[
                "--name",
                name,
                "--kind",
                "oidc",
                "--issuer",
                "https://idp.example",
                "--client-id",
                "c",
                "--label",
                &name.to_uppercase(),
            ],
            "s",
            &[],
        );
    }
    let store = PgStore::new(app.db.clone(), Arc::new(app.keys()));
    let (one, _) = store.upstream_by_name("one").await.unwrap().unwrap();
    let (two, _) = store.upstream_by_name("two").await.unwrap().unwrap();
    let alice = user_id(&app, "alice@example.com").await;
    let bob = user_id(&app, "bob@example.com").await;
    let link = |user, upstream_id, subject| NewLink {
        user_id: user,
        upstream_id,
        subject,
        email: Some("alice@idp.example"),
        now: app.clock.now(),
    };

    let made = store
        .link_identity(
            &link(alice, one.id, "sub-a"),
            &event(&app, "upstream_linked"),
        )
        .await
        .unwrap();
    assert_eq!(made.user_id, alice.0);
    let found = store.federated_identity(one.id, "sub-a").await.unwrap();
    assert_eq!(found.as_ref(), Some(&made));
    assert_eq!(
        store.federated_identity(two.id, "sub-a").await.unwrap(),
        None
    );
    // (upstream, subject) belongs to one person; one identity per upstream each.
    for (who, upstream, subject) in [(bob, one.id, "sub-a"), (alice, one.id, "sub-other")] {
        let r = store
            .link_identity(
                &link(who, upstream, subject),
                &event(&app, "upstream_linked"),
            )
            .await;
        assert!(matches!(r, Err(StoreError::Conflict)), "{r:?}");
    }
    store
        .link_identity(
            &link(alice, two.id, "sub-a"),
            &event(&app, "upstream_linked"),
        )
        .await
        .unwrap();
    let later = app.clock.now() + time::Duration::hours(1);
    store
        .touch_identity(made.id, Some("new@idp.example"), later)
        .await
        .unwrap();
    let listed = store.identities_of(alice).await.unwrap();
    let labels: Vec<&str> = listed.iter().map(|c| c.label.as_str()).collect();
    assert_eq!(labels, ["ONE", "TWO"]);
    assert_eq!(listed[0].upstream_name, "one");
    assert_eq!(listed[0].email.as_deref(), Some("new@idp.example"));
    assert_eq!(listed[0].last_used_at, later);
    assert!(store.identities_of(bob).await.unwrap().is_empty());

    // Without a password or passkey, the last link stays.
    sqlx::query("UPDATE users SET password_hash = NULL WHERE id = $1")
        .bind(alice.0)
        .execute(&app.db)
        .await
        .unwrap();
    let unlink = |upstream_id| {
        let e = event(&app, "upstream_unlinked");
        let store = store.clone();
        async move { store.unlink_identity(alice, upstream_id, &e).await.unwrap() }
    };
    assert_eq!(unlink(one.id).await, Unlinked::Done);
    assert_eq!(unlink(one.id).await, Unlinked::NotLinked);
    assert_eq!(unlink(two.id).await, Unlinked::LastWay);
    assert_eq!(store.identities_of(alice).await.unwrap().len(), 1);
    let events = app
        .count(&format!(
            "SELECT count(*) FROM security_events WHERE user_id = '{}' AND kind IN ('upstream_linked', 'upstream_unlinked')",
            alice.0
        ))
        .await;
    assert_eq!(events, 3, "two links and one unlink, each with its event");
}

#[tokio::test]
async fn housekeeping_forgets_spent_logout_token_ids_once_they_are_past_their_age() {
    let app = spawn_app_with(Options {
        frozen_clock: true,
        extra: vec![("GATEHOUSE_HOUSEKEEPING_INTERVAL", "100ms".into())],
        ..Options::default()
    })
    .await;
    add_upstream(
        &app,
        &[
            "--name",
            "idp",
            "--kind",
            "oidc",
            "--issuer",
            "https://idp.example",
            "--client-id",
            "c",
        ],
        "s",
        &[],
    );
    let store = PgStore::new(app.db.clone(), Arc::new(app.keys()));
    let (up, _) = store.upstream_by_name("idp").await.unwrap().unwrap();
    let now = app.clock.now();
    let hour = time::Duration::hours(1);
    assert!(
        store
            .spend_upstream_jti(up.id, "old", now - hour)
            .await
            .unwrap()
    );
    assert!(
        store
            .spend_upstream_jti(up.id, "new", now + hour)
            .await
            .unwrap()
    );
    assert!(
        !store
            .spend_upstream_jti(up.id, "new", now + hour)
            .await
            .unwrap()
    );
    app.wait_until("SELECT count(*) FROM upstream_logout_jtis", 1)
        .await;
    assert_eq!(
        app.count("SELECT count(*) FROM upstream_logout_jtis WHERE jti = 'new'")
            .await,
        1,
        "a jti is kept while a token with it could still be accepted"
    );
}
