//! Signing in with an upstream, the browser's side: new accounts, the link offer to
//! an existing account, /account/connections, and the upstream's back-channel
//! logout receiver refusing bad tokens. The upstream is a second, real Gatehouse
//! (`upstream_rig`).

use crate::helpers::PASSWORD;
use crate::otp::step_up_by_email;
use crate::upstream_rig::{
    LABEL, UP, Visitor, assert_refused, counts, create_user, form_fields, rig,
};

#[tokio::test]
async fn a_new_person_from_the_upstream_gets_an_account_without_a_password_and_a_federated_session()
{
    let r = rig(&[]).await;
    r.up.person("newcomer@example.com", true);
    let v = Visitor::new(&r.down);
    let answer = v.sign_in_with(UP, "newcomer@example.com").await;
    assert_eq!(answer.status, 303, "{}", answer.body);
    assert_eq!(answer.location(), "/account");
    assert!(r.down.session_cookie(&v.down).is_some());
    // No password; verified because the upstream said so; one link.
    assert_eq!(
        r.down
            .count(
                "SELECT count(*) FROM users WHERE email = 'newcomer@example.com'
                 AND password_hash IS NULL AND email_verified_at IS NOT NULL"
            )
            .await,
        1
    );
    assert_eq!(
        r.down
            .count("SELECT count(*) FROM federated_identities")
            .await,
        1
    );
    // U5: aal1, amr ["fed"], and the session knows which upstream it came from.
    assert_eq!(
        r.down
            .count(
                "SELECT count(*) FROM sessions WHERE revoked_at IS NULL AND aal = 'aal1'
                 AND amr = ARRAY['fed'] AND upstream_id IS NOT NULL"
            )
            .await,
        1
    );
    // The activity page tells of the link.
    let activity = v.down.get("/account/activity").await;
    assert!(
        activity
            .body
            .contains("Sign-in with another provider connected"),
        "{}",
        activity.body
    );
    // Signing in again with the same upstream account reaches the same account.
    let again = Visitor::new(&r.down)
        .sign_in_with(UP, "newcomer@example.com")
        .await;
    assert_eq!(again.status, 303, "{}", again.body);
    assert_eq!(counts(&r.down).await.users, 1);
}

#[tokio::test]
async fn an_address_with_an_account_is_linked_only_after_that_accounts_own_password() {
    // U1
    let r = rig(&[]).await;
    create_user(&r.down, "alice@example.com", true);
    r.up.person("alice@example.com", true);
    let v = Visitor::new(&r.down);
    let offer = v.sign_in_with(UP, "alice@example.com").await;
    assert_eq!(offer.status, 200, "{}", offer.body);
    assert!(offer.body.contains("already exists"), "{}", offer.body);
    assert!(offer.body.contains(LABEL), "{}", offer.body);
    assert!(r.down.session_cookie(&v.down).is_none(), "not signed in");
    assert_eq!(counts(&r.down).await.identities, 0, "nothing linked yet");

    // The offer's form signs in to that account, and returns to finish the link.
    let fields = form_fields(&offer.body, "/login").expect("a sign-in form");
    let finish = format!("/login/upstream/{UP}/link");
    assert!(
        fields.iter().any(|(k, v)| k == "return_to" && *v == finish),
        "{fields:?}"
    );
    let csrf = offer.csrf();
    let wrong = v
        .down
        .post_form(
            "/login",
            &[
                ("csrf_token", &csrf),
                ("email", "alice@example.com"),
                ("password", "not the password at all"),
                ("return_to", &finish),
            ],
        )
        .await;
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    assert_eq!(counts(&r.down).await.identities, 0);

    let right = v
        .down
        .post_form(
            "/login",
            &[
                ("csrf_token", &csrf),
                ("email", "alice@example.com"),
                ("password", PASSWORD),
                ("return_to", &finish),
            ],
        )
        .await;
    assert_eq!(right.status, 303, "{}", right.body);
    assert_eq!(right.location(), finish);
    let linked = v.follow(&right).await;
    assert_eq!(linked.status, 303, "{}", linked.body);
    assert_eq!(
        r.down
            .count(
                "SELECT count(*) FROM federated_identities f JOIN users u ON u.id = f.user_id
                 WHERE u.email = 'alice@example.com'"
            )
            .await,
        1
    );
    // Single use: the finish URL does nothing a second time.
    let again = v.down.get(&finish).await;
    assert_eq!(again.status, 400, "{}", again.body);

    // From now on the upstream signs in to Alice's account directly.
    let later = Visitor::new(&r.down)
        .sign_in_with(UP, "alice@example.com")
        .await;
    assert_eq!(later.status, 303, "{}", later.body);
    assert_eq!(counts(&r.down).await.users, 1);
}

#[tokio::test]
async fn the_link_offer_completes_only_in_its_own_browser_for_a_later_session_of_that_account() {
    // U1: another browser signed in to the account, or this browser signed in to
    // another account, finishes nothing.
    let r = rig(&[]).await;
    create_user(&r.down, "alice@example.com", true);
    create_user(&r.down, "mallory@example.com", true);
    r.up.person("alice@example.com", false);
    let attacker = Visitor::new(&r.down);
    let offer = attacker.sign_in_with(UP, "alice@example.com").await;
    assert_eq!(offer.status, 200, "{}", offer.body);
    let finish = format!("/login/upstream/{UP}/link");

    // Alice, signed in in her own browser, opening the finish URL: no offer there.
    let alice = r.down.browser();
    let page = r.down.login(&alice, "alice@example.com", PASSWORD).await;
    assert_eq!(page.status, 303, "{}", page.body);
    let r1 = alice.get(&finish).await;
    assert_refused(&r1, &r.down);

    // The attacker signing in to their own account in the offering browser.
    let csrf = offer.csrf();
    let own = attacker
        .down
        .post_form(
            "/login",
            &[
                ("csrf_token", &csrf),
                ("email", "mallory@example.com"),
                ("password", PASSWORD),
                ("return_to", &finish),
            ],
        )
        .await;
    assert_eq!(own.status, 303, "{}", own.body);
    let r2 = attacker.follow(&own).await;
    assert_refused(&r2, &r.down);
    assert_eq!(counts(&r.down).await.identities, 0, "nothing linked");
    // Alice's activity page records the refused attempt.
    assert_eq!(
        r.down
            .count(
                "SELECT count(*) FROM security_events e JOIN users u ON u.id = e.user_id
                 WHERE u.email = 'alice@example.com' AND e.kind = 'upstream_refused'"
            )
            .await,
        1
    );
}

#[tokio::test]
async fn connecting_and_removing_need_step_up_and_the_last_way_to_sign_in_stays() {
    // U7
    let r = rig(&[]).await;
    r.up.person("solo@example.com", true);
    let v = Visitor::new(&r.down);
    let answer = v.sign_in_with(UP, "solo@example.com").await;
    assert_eq!(answer.status, 303, "{}", answer.body);

    let page = v.down.get("/account/connections").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains(LABEL), "{}", page.body);
    assert!(page.body.contains("Last used"), "{}", page.body);
    assert!(
        page.body.contains("Confirm it"),
        "no step-up yet: {}",
        page.body
    );
    // Without a recent second factor, removing is refused.
    let remove = format!("/account/connections/{UP}/remove");
    let early = v
        .down
        .post_form(&remove, &[("csrf_token", &page.csrf())])
        .await;
    assert_eq!(early.status, 403, "{}", early.body);
    assert_eq!(counts(&r.down).await.identities, 1);

    step_up_by_email(&r.down, &v.down, "solo@example.com", "/account/connections").await;
    let page = v.down.get("/account/connections").await;
    assert!(form_fields(&page.body, &remove).is_some(), "{}", page.body);
    let last = v
        .down
        .post_form(&remove, &[("csrf_token", &page.csrf())])
        .await;
    assert_eq!(last.status, 409, "{}", last.body);
    assert!(last.body.contains("last way"), "{}", last.body);
    assert_eq!(counts(&r.down).await.identities, 1, "still linked");
}

#[tokio::test]
async fn a_signed_in_person_connects_the_upstream_to_their_own_account_after_step_up() {
    // U7
    let r = rig(&[]).await;
    create_user(&r.down, "bob@example.com", true);
    r.up.person("bob-elsewhere@example.com", true);
    let v = Visitor::new(&r.down);
    let signed = r.down.login(&v.down, "bob@example.com", PASSWORD).await;
    assert_eq!(signed.status, 303, "{}", signed.body);
    let connect = format!("/account/connections/{UP}/connect");
    let page = v.down.get("/account/connections").await;
    let early = v
        .down
        .post_form(&connect, &[("csrf_token", &page.csrf())])
        .await;
    assert_eq!(early.status, 403, "step-up first: {}", early.body);

    step_up_by_email(&r.down, &v.down, "bob@example.com", "/account/connections").await;
    let page = v.down.get("/account/connections").await;
    let fields = form_fields(&page.body, &connect).expect("a Connect form");
    let form: Vec<(&str, &str)> = fields
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let out = v.down.post_form(&connect, &form).await;
    assert_eq!(out.status, 303, "{}", out.body);
    let callback = v
        .through_upstream(
            &out.location(),
            Some(("bob-elsewhere@example.com", PASSWORD)),
        )
        .await;
    let back = v.open(&callback).await;
    assert_eq!(back.status, 303, "{}", back.body);
    assert!(back.location().starts_with("/account/connections"));
    assert_eq!(
        r.down
            .count(
                "SELECT count(*) FROM federated_identities f JOIN users u ON u.id = f.user_id
                 WHERE u.email = 'bob@example.com'"
            )
            .await,
        1
    );
    // Bob has a password: the connection can go.
    let page = v.down.get("/account/connections").await;
    let removed = v
        .down
        .post_form(
            &format!("/account/connections/{UP}/remove"),
            &[("csrf_token", &page.csrf())],
        )
        .await;
    assert_eq!(removed.status, 200, "{}", removed.body);
    assert_eq!(counts(&r.down).await.identities, 0);
    assert_eq!(
        r.down
            .count("SELECT count(*) FROM security_events WHERE kind = 'upstream_unlinked'")
            .await,
        1
    );
}

#[tokio::test]
async fn a_replayed_callback_is_refused_and_a_bad_logout_token_ends_nothing() {
    // U2, U6
    let r = rig(&[]).await;
    r.up.person("carol@example.com", true);
    let v = Visitor::new(&r.down);
    let authorize = v.begin(UP).await;
    let callback = v
        .through_upstream(&authorize, Some(("carol@example.com", PASSWORD)))
        .await;
    let first = v.open(&callback).await;
    assert_eq!(first.status, 303, "{}", first.body);
    let before = counts(&r.down).await;
    let replay = v.open(&callback).await;
    assert_refused(&replay, &r.down);
    assert_eq!(counts(&r.down).await, before);

    let bad = reqwest::Client::new()
        .post(format!(
            "{}/login/upstream/{UP}/backchannel-logout",
            r.down.address
        ))
        .form(&[("logout_token", "not.a.token")])
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert_eq!(
        bad.headers()
            .get("cache-control")
            .and_then(|v| v.to_str().ok()),
        Some("no-store")
    );
    assert_eq!(
        r.down
            .count("SELECT count(*) FROM sessions WHERE revoked_at IS NULL")
            .await,
        1,
        "nothing ended"
    );
}
