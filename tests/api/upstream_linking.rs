//! The linking rule without takeover (checklist U1) and `/account/connections`
//! (checklist U7), against a real upstream Gatehouse: an upstream account with
//! someone's address never reaches their account without their own credentials;
//! connecting and removing need a recent second factor; the last way to sign in stays.

use crate::helpers::{PASSWORD, Resp, TestApp};
use crate::otp::step_up_by_email;
use crate::upstream_rig::{UP, Visitor, counts, create_user, form_fields, rig};

const VICTIM: &str = "victim@example.com";
const MALLORY: &str = "mallory@example.com";

/// The browser holds no session of `email` (and none at all).
async fn not_signed_in_as(down: &TestApp, v: &Visitor, email: &str) {
    assert_eq!(v.down.get("/account").await.status, 303, "not signed in");
    let live: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sessions s JOIN users u ON u.id = s.user_id
         WHERE u.email = $1 AND s.revoked_at IS NULL",
    )
    .bind(email)
    .fetch_one(&down.db)
    .await
    .unwrap();
    assert_eq!(live, 0, "no session of {email}");
}

/// The page offering to sign in to the existing account: 200, names the address,
/// links nothing, signs nobody in.
fn is_link_offer(r: &Resp, email: &str) {
    assert_eq!(r.status, 200, "{} {}", r.location(), r.body);
    assert!(r.body.contains(email), "{}", r.body);
    assert!(
        form_fields(&r.body, "/login").is_some(),
        "it offers to sign in to that account: {}",
        r.body
    );
}

/// Answers the offer's own form with `password` (the address is fixed on it).
async fn answer_offer(v: &Visitor, offer: &Resp, email: &str, password: &str) -> Resp {
    let mut fields = form_fields(&offer.body, "/login").expect("the offer's form");
    fields.push(("email".into(), email.into()));
    fields.push(("password".into(), password.into()));
    let form: Vec<(&str, &str)> = fields
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    v.down.post_form("/login", &form).await
}

async fn identities_of(down: &TestApp, email: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM federated_identities f JOIN users u ON u.id = f.user_id WHERE u.email = $1",
    )
    .bind(email)
    .fetch_one(&down.db)
    .await
    .unwrap()
}

#[tokio::test]
async fn an_unverified_upstream_address_does_not_reach_the_victims_account_even_with_trust_email() {
    // U1: the "nOAuth" takeover, with the operator's --trust-email on.
    let rig = rig(&["--trust-email"]).await;
    create_user(&rig.down, VICTIM, true);
    rig.down.user(MALLORY).await;
    rig.up.person(VICTIM, false);
    let before = counts(&rig.down).await;

    let attacker = Visitor::new(&rig.down);
    let offer = attacker.sign_in_with(UP, VICTIM).await;
    is_link_offer(&offer, VICTIM);
    not_signed_in_as(&rig.down, &attacker, VICTIM).await;
    assert_eq!(
        counts(&rig.down).await.identities,
        before.identities,
        "nothing linked"
    );

    // Guessing at the offer's form does not link.
    let r = answer_offer(&attacker, &offer, VICTIM, "not her password").await;
    assert_ne!(r.status, 303, "{} {}", r.location(), r.body);
    assert_eq!(identities_of(&rig.down, VICTIM).await, 0);

    // Nor does signing in to an account of the attacker's own in that browser.
    let r = rig.down.login(&attacker.down, MALLORY, PASSWORD).await;
    assert_eq!(r.status, 303, "{}", r.body);
    let r = attacker
        .down
        .get(&format!("/login/upstream/{UP}/link"))
        .await;
    assert_ne!(
        r.location(),
        "/account/connections?connected=up",
        "{}",
        r.body
    );
    assert_eq!(identities_of(&rig.down, VICTIM).await, 0);
    assert_eq!(identities_of(&rig.down, MALLORY).await, 0);
    let after = counts(&rig.down).await;
    assert_eq!(after.users, before.users, "no account made either");
    assert_eq!(after.identities, before.identities);
}

#[tokio::test]
async fn a_verified_upstream_address_does_not_reach_the_victims_account_without_trust_email() {
    // U1: the address alone, verified or not, is never the identity.
    let rig = rig(&[]).await;
    create_user(&rig.down, VICTIM, true);
    rig.up.person(VICTIM, true);
    let before = counts(&rig.down).await;
    let attacker = Visitor::new(&rig.down);
    let offer = attacker.sign_in_with(UP, VICTIM).await;
    is_link_offer(&offer, VICTIM);
    not_signed_in_as(&rig.down, &attacker, VICTIM).await;
    // The offer spent nothing the victim needs and made nothing.
    let after = counts(&rig.down).await;
    assert_eq!(
        (after.users, after.identities),
        (before.users, before.identities)
    );
    // A second try is the same.
    let again = Visitor::new(&rig.down).sign_in_with(UP, VICTIM).await;
    is_link_offer(&again, VICTIM);
    assert_eq!(identities_of(&rig.down, VICTIM).await, 0);
}

#[tokio::test]
async fn the_owner_links_by_proving_her_own_password_then_signs_in_directly() {
    // U1: the link is made only after that account's own credentials.
    let rig = rig(&[]).await;
    create_user(&rig.down, VICTIM, true);
    rig.up.person(VICTIM, true);
    let owner = Visitor::new(&rig.down);
    let offer = owner.sign_in_with(UP, VICTIM).await;
    is_link_offer(&offer, VICTIM);
    let r = answer_offer(&owner, &offer, VICTIM, PASSWORD).await;
    assert_eq!(r.status, 303, "{}", r.body);
    let r = owner.follow(&r).await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert!(
        r.location().starts_with("/account"),
        "linked and signed in: {}",
        r.location()
    );
    assert_eq!(identities_of(&rig.down, VICTIM).await, 1);
    assert_eq!(owner.down.get("/account").await.status, 200);

    // From now on the upstream signs her in to her account directly.
    let users = counts(&rig.down).await.users;
    let later = Visitor::new(&rig.down);
    let r = later.sign_in_with(UP, VICTIM).await;
    assert_eq!(r.location(), "/account", "{}", r.body);
    assert_eq!(counts(&rig.down).await.users, users);
}

#[tokio::test]
async fn trust_email_and_a_verified_address_link_at_once() {
    // U1: the documented exception.
    let rig = rig(&["--trust-email"]).await;
    create_user(&rig.down, VICTIM, true);
    rig.up.person(VICTIM, true);
    let before = counts(&rig.down).await;
    let v = Visitor::new(&rig.down);
    let r = v.sign_in_with(UP, VICTIM).await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.location(), "/account");
    assert_eq!(identities_of(&rig.down, VICTIM).await, 1);
    assert_eq!(
        counts(&rig.down).await.users,
        before.users,
        "her own account"
    );
}

/// Presses "Connect …" for `UP` on /account/connections.
async fn press_connect(v: &Visitor) -> Resp {
    let page = v.down.get("/account/connections").await;
    assert_eq!(page.status, 200, "{}", page.body);
    let action = format!("/account/connections/{UP}/connect");
    match form_fields(&page.body, &action) {
        Some(fields) => {
            let form: Vec<(&str, &str)> = fields
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            v.down.post_form(&action, &form).await
        }
        None => {
            v.down
                .post_form(&action, &[("csrf_token", &page.csrf())])
                .await
        }
    }
}

async fn press_remove(v: &Visitor) -> Resp {
    let page = v.down.get("/account/connections").await;
    assert_eq!(page.status, 200, "{}", page.body);
    v.down
        .post_form(
            &format!("/account/connections/{UP}/remove"),
            &[("csrf_token", &page.csrf())],
        )
        .await
}

fn asks_for_step_up(r: &Resp) {
    assert!(
        r.status == 403 || (r.status == 303 && r.location().starts_with("/step-up")),
        "a second factor first: {} {} {}",
        r.status,
        r.location(),
        r.body
    );
}

#[tokio::test]
async fn connecting_and_removing_a_provider_need_a_recent_second_factor() {
    // U7
    let rig = rig(&[]).await;
    const ALICE: &str = "alice@example.com";
    const WORK: &str = "alice.work@example.com";
    rig.up.person(WORK, true);
    let v = Visitor::from(&rig.down, rig.down.signed_in(ALICE).await);

    let r = press_connect(&v).await;
    asks_for_step_up(&r);
    assert_eq!(identities_of(&rig.down, ALICE).await, 0);

    step_up_by_email(&rig.down, &v.down, ALICE, "/account/connections").await;
    let r = press_connect(&v).await;
    assert_eq!(r.status, 303, "{}", r.body);
    let callback = v
        .through_upstream(&r.location(), Some((WORK, PASSWORD)))
        .await;
    let r = v.open(&callback).await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert!(
        r.location().starts_with("/account/connections"),
        "{}",
        r.location()
    );
    assert_eq!(identities_of(&rig.down, ALICE).await, 1, "linked to her");
    assert_eq!(
        counts(&rig.down).await.users,
        1,
        "no account for the work address"
    );
    let page = v.down.get("/account/connections").await;
    assert!(
        page.body.contains(crate::upstream_rig::LABEL),
        "{}",
        page.body
    );
    assert!(page.body.contains("Last used"), "{}", page.body);

    // She has a password too: removing it is allowed while the step-up is fresh.
    let r = press_remove(&v).await;
    assert!(
        r.status == 200 || r.status == 303,
        "{} {}",
        r.status,
        r.body
    );
    assert_eq!(identities_of(&rig.down, ALICE).await, 0);
}

#[tokio::test]
async fn the_last_way_to_sign_in_cannot_be_removed() {
    // U7: a person from the upstream has no password, no passkey, no other link.
    let rig = rig(&[]).await;
    const DANA: &str = "dana@example.com";
    rig.up.person(DANA, true);
    let v = Visitor::new(&rig.down);
    assert_eq!(v.sign_in_with(UP, DANA).await.location(), "/account");

    let r = press_remove(&v).await;
    asks_for_step_up(&r);
    step_up_by_email(&rig.down, &v.down, DANA, "/account/connections").await;
    let r = press_remove(&v).await;
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body.contains("last way"), "the page says why: {}", r.body);
    assert_eq!(identities_of(&rig.down, DANA).await, 1, "still linked");
}

#[tokio::test]
async fn an_upstream_account_linked_to_someone_else_is_not_connected_to_another() {
    // U1/U7: connecting links to the signed-in person only if nobody has it.
    let rig = rig(&[]).await;
    const DANA: &str = "dana@example.com";
    const ALICE: &str = "alice@example.com";
    rig.up.person(DANA, true);
    let dana = Visitor::new(&rig.down);
    assert_eq!(dana.sign_in_with(UP, DANA).await.location(), "/account");

    let alice = Visitor::from(&rig.down, rig.down.signed_in(ALICE).await);
    step_up_by_email(&rig.down, &alice.down, ALICE, "/account/connections").await;
    let r = press_connect(&alice).await;
    assert_eq!(r.status, 303, "{}", r.body);
    let callback = alice
        .through_upstream(&r.location(), Some((DANA, PASSWORD)))
        .await;
    let r = alice.open(&callback).await;
    assert!((400..500).contains(&r.status), "{} {}", r.status, r.body);
    assert_eq!(identities_of(&rig.down, ALICE).await, 0);
    assert_eq!(identities_of(&rig.down, DANA).await, 1, "still Dana's");
}
