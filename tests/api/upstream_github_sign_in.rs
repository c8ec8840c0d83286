//! GitHub as an upstream (OAuth 2.0 and its REST API, not OpenID Connect), through a
//! local stand-in registered with `--base-url` / `--api-url` as GitHub Enterprise
//! would be: the identity is GitHub's numeric user id, the address the primary
//! verified one; `state` and PKCE are sent and checked.

use serde_json::json;

use crate::helpers::TestApp;
use crate::upstream_rig::{StandInGithub, Visitor, assert_refused, counts, downstream, query_of};

const GH: &str = "github";

async fn github_rig() -> (TestApp, StandInGithub) {
    let down = downstream().await;
    let gh = StandInGithub::start().await;
    gh.register(&down, GH, &["--label", "GitHub"]).await;
    (down, gh)
}

async fn attempt(down: &TestApp) -> (Visitor, crate::helpers::Resp) {
    let v = Visitor::new(down);
    let authorize = v.begin(GH).await;
    let callback = v.through_upstream(&authorize, None).await;
    let r = v.open(&callback).await;
    (v, r)
}

#[tokio::test]
async fn github_signs_in_by_its_numeric_id_with_the_primary_verified_address() {
    let (down, gh) = github_rig().await;
    let before = counts(&down).await;
    let v = Visitor::new(&down);
    let authorize = v.begin(GH).await;
    assert!(
        authorize.starts_with(&format!("{}/login/oauth/authorize?", gh.base_url)),
        "{authorize}"
    );
    let q = query_of(&authorize);
    assert_eq!(q["code_challenge_method"], "S256", "{authorize}");
    assert!(
        q.contains_key("code_challenge") && q.contains_key("state"),
        "{authorize}"
    );
    assert_eq!(
        q["redirect_uri"],
        format!("{}/login/upstream/{GH}/callback", down.address)
    );
    let callback = v.through_upstream(&authorize, None).await;
    let r = v.open(&callback).await;
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.location(), "/account");

    let after = counts(&down).await;
    assert_eq!(after.users, before.users + 1);
    let (subject, email, verified): (String, String, bool) = sqlx::query_as(
        "SELECT f.subject, u.email, u.email_verified_at IS NOT NULL
         FROM federated_identities f JOIN users u ON u.id = f.user_id",
    )
    .fetch_one(&down.db)
    .await
    .unwrap();
    assert_eq!(subject, "12345", "GitHub's numeric id");
    assert_eq!(email, "octo@example.com", "the primary verified address");
    assert!(verified);
    {
        let c = gh.config.lock().unwrap();
        let (form, accepted) = c.token_requests.last().unwrap().clone();
        assert!(accepted, "client secret, code and PKCE verifier: {form:?}");
        assert!(c.refused_api_calls.is_empty(), "{:?}", c.refused_api_calls);
    }
    let devices = v.down.get("/account/devices").await;
    assert!(
        devices.body.contains("Signed in with GitHub"),
        "{}",
        devices.body
    );

    // The same GitHub account with a new primary address is still the same person.
    gh.set(|c| {
        c.emails = vec![json!({"email": "new@example.com", "primary": true, "verified": true})]
    });
    let (_, r) = attempt(&down).await;
    assert_eq!(r.location(), "/account", "{}", r.body);
    assert_eq!(counts(&down).await.users, after.users, "no second account");
}

#[tokio::test]
async fn github_without_a_verified_primary_address_makes_no_account() {
    let (down, gh) = github_rig().await;
    gh.set(|c| {
        c.emails = vec![
            json!({"email": "octo@example.com", "primary": true, "verified": false}),
            json!({"email": "other@example.com", "primary": false, "verified": true}),
        ]
    });
    let before = counts(&down).await;
    let (v, r) = attempt(&down).await;
    assert_ne!(r.location(), "/account", "{}", r.body);
    assert!(r.status != 303 || !r.location().starts_with("/account"));
    assert_eq!(v.down.get("/account").await.status, 303, "not signed in");
    let users: i64 = down
        .count("SELECT count(*) FROM users WHERE email = 'octo@example.com' AND email_verified_at IS NOT NULL")
        .await;
    assert_eq!(users, 0, "an unverified address is never taken as verified");
    assert_eq!(counts(&down).await.sessions, before.sessions);
}

#[tokio::test]
async fn a_github_code_that_does_not_redeem_is_refused_and_creates_nothing() {
    // U2/U3 for GitHub: its token endpoint answers a bad code with 200 and an error.
    let (down, gh) = github_rig().await;
    let before = counts(&down).await;
    gh.set(|c| c.client_secret = "rotated-at-github".into());
    let (_, r) = attempt(&down).await;
    assert_refused(&r, &down);
    assert_eq!(counts(&down).await, before);
}
