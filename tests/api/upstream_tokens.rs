//! What comes back from an upstream is checked before anyone is signed in: the ID
//! token (issuer, audience, authorized party, nonce, times, signature, algorithm),
//! the RFC 9207 `iss` of the authorization response, and an upstream that does not
//! answer. A stand-in provider in the test crafts each bad answer; each refusal leaves
//! no account, link or session behind, and the same stand-in answering well signs in
//! (so the refusals are the checks at work, not a broken rig).

use serde_json::{Value, json};

use crate::helpers::{Resp, TestApp};
use crate::upstream_rig::{
    Counts, IssParam, Signing, StandInOp, Visitor, assert_refused, counts, downstream, now,
};

const OP: &str = "op";

async fn op_rig(
    configure: impl FnOnce(&mut crate::upstream_rig::OpConfig),
) -> (TestApp, StandInOp) {
    let down = downstream().await;
    let op = StandInOp::start().await;
    op.set(configure);
    op.register(&down, OP, &[]).await;
    (down, op)
}

/// One whole attempt in a fresh browser: press the button, the stand-in approves at
/// once, the callback is opened. Returns the downstream's answer.
async fn attempt(down: &TestApp) -> Resp {
    let v = Visitor::new(down);
    let authorize = v.begin(OP).await;
    let callback = v.through_upstream(&authorize, None).await;
    v.open(&callback).await
}

/// What is wrong with a token, and the edit of its claims that makes it so.
type Case = (&'static str, fn(&mut Value));

/// Each edit of the ID token's claims is refused and leaves nothing behind.
async fn each_refused(down: &TestApp, op: &StandInOp, cases: Vec<Case>) {
    let before = counts(down).await;
    for (what, edit) in cases {
        op.edit(edit);
        let r = attempt(down).await;
        assert_refused(&r, down);
        assert_eq!(
            counts(down).await,
            before,
            "{what}: nothing created or linked"
        );
    }
}

/// The stand-in answering well: signed in, one account, one link.
async fn signs_in(down: &TestApp, op: &StandInOp, before: Counts) {
    let r = attempt(down).await;
    assert_eq!(r.status, 303, "the good answer signs in: {}", r.body);
    assert_eq!(r.location(), "/account");
    let after = counts(down).await;
    assert_eq!(after.users, before.users + 1);
    assert_eq!(after.identities, before.identities + 1);
    // The code was redeemed with client authentication and the PKCE verifier (the
    // stand-in accepts nothing less).
    let c = op.config.lock().unwrap();
    let (form, accepted) = c.token_requests.last().expect("a token request").clone();
    assert!(accepted, "{form:?}");
    assert!(form.contains_key("code_verifier"), "{form:?}");
}

#[tokio::test]
async fn an_id_token_for_another_issuer_audience_or_party_is_refused() {
    // U3
    let (down, op) = op_rig(|_| {}).await;
    let before = counts(&down).await;
    each_refused(
        &down,
        &op,
        vec![
            ("another issuer", |c| {
                c["iss"] = json!("https://other.example")
            }),
            ("no issuer", |c| {
                c.as_object_mut().unwrap().remove("iss");
            }),
            ("another audience", |c| c["aud"] = json!("someone-else")),
            ("an audience list without us", |c| {
                c["aud"] = json!(["someone-else", "another"])
            }),
            ("issued to another party", |c| {
                let us = c["aud"].clone();
                c["aud"] = json!([us, "someone-else"]);
                c["azp"] = json!("someone-else");
            }),
            ("azp naming another party", |c| {
                c["azp"] = json!("someone-else")
            }),
            ("no subject", |c| {
                c.as_object_mut().unwrap().remove("sub");
            }),
        ],
    )
    .await;
    op.set(|c| c.edit = None);
    signs_in(&down, &op, before).await;
}

#[tokio::test]
async fn an_id_token_with_a_wrong_or_missing_nonce_is_refused() {
    // U3
    let (down, op) = op_rig(|_| {}).await;
    let before = counts(&down).await;
    each_refused(
        &down,
        &op,
        vec![
            ("another nonce", |c| {
                c["nonce"] = json!("a-nonce-from-elsewhere")
            }),
            ("no nonce", |c| {
                c.as_object_mut().unwrap().remove("nonce");
            }),
            ("an empty nonce", |c| c["nonce"] = json!("")),
        ],
    )
    .await;
    // A token minted for another browser's sign-in (its nonce) is refused here too.
    let other = Visitor::new(&down);
    let theirs = other.begin(OP).await;
    other.through_upstream(&theirs, None).await;
    let their_nonce = op.last_authorization()["nonce"].clone();
    op.edit(move |c| c["nonce"] = json!(their_nonce));
    assert_refused(&attempt(&down).await, &down);
    assert_eq!(counts(&down).await, before);
    op.set(|c| c.edit = None);
    signs_in(&down, &op, before).await;
}

#[tokio::test]
async fn an_expired_or_not_yet_valid_id_token_is_refused_with_a_minute_of_leeway() {
    // U3
    let (down, op) = op_rig(|_| {}).await;
    let before = counts(&down).await;
    each_refused(
        &down,
        &op,
        vec![
            ("expired two minutes ago", |c| {
                c["iat"] = json!(now() - 600);
                c["exp"] = json!(now() - 120);
            }),
            ("no expiry", |c| {
                c.as_object_mut().unwrap().remove("exp");
            }),
            ("issued ten minutes from now", |c| {
                c["iat"] = json!(now() + 600);
                c["exp"] = json!(now() + 900);
            }),
        ],
    )
    .await;
    // 30 s past its expiry is within the 60 s leeway for clocks apart.
    op.edit(|c| {
        c["iat"] = json!(now() - 330);
        c["exp"] = json!(now() - 30);
    });
    signs_in(&down, &op, before).await;
}

#[tokio::test]
async fn a_wrongly_signed_id_token_is_refused() {
    // U3
    let (down, op) = op_rig(|_| {}).await;
    let before = counts(&down).await;
    for signing in [Signing::ForgedSameKid, Signing::UnknownKid] {
        op.set(|c| c.signing = signing);
        let r = attempt(&down).await;
        assert_refused(&r, &down);
        assert_eq!(counts(&down).await, before, "{signing:?}");
    }
    op.set(|c| c.signing = Signing::Good);
    signs_in(&down, &op, before).await;
}

#[tokio::test]
async fn an_unsigned_or_hmac_id_token_is_refused() {
    // U3: alg none, and HS256 keyed with the client secret or the public key.
    let (down, op) = op_rig(|_| {}).await;
    let before = counts(&down).await;
    for signing in [
        Signing::None,
        Signing::Hs256ClientSecret,
        Signing::Hs256PublicKey,
    ] {
        op.set(|c| c.signing = signing);
        let r = attempt(&down).await;
        assert_refused(&r, &down);
        assert_eq!(counts(&down).await, before, "{signing:?}");
    }
    op.set(|c| c.signing = Signing::Good);
    signs_in(&down, &op, before).await;
}

#[tokio::test]
async fn a_wrong_or_missing_iss_is_refused_when_the_upstream_advertises_it() {
    // U4: RFC 9207 §2.4.
    let (down, op) = op_rig(|c| c.advertise_iss = true).await;
    let before = counts(&down).await;
    for iss in [IssParam::Wrong, IssParam::Missing] {
        op.set(|c| c.iss_param = iss);
        let r = attempt(&down).await;
        assert_refused(&r, &down);
        assert_eq!(counts(&down).await, before, "{iss:?}");
        // Refused before the code was redeemed.
        assert!(
            op.config.lock().unwrap().token_requests.is_empty(),
            "{iss:?}: the code went to the token endpoint"
        );
    }
    op.set(|c| c.iss_param = IssParam::Right);
    signs_in(&down, &op, before).await;
}

#[tokio::test]
async fn a_wrong_iss_is_refused_even_when_the_upstream_does_not_advertise_it() {
    // U4: a mix-up shows in any `iss` that is present; without the metadata flag, a
    // missing one is accepted.
    let (down, op) = op_rig(|c| c.iss_param = IssParam::Wrong).await;
    let before = counts(&down).await;
    let r = attempt(&down).await;
    assert_refused(&r, &down);
    assert_eq!(counts(&down).await, before);
    assert!(op.config.lock().unwrap().token_requests.is_empty());
    op.set(|c| c.iss_param = IssParam::Missing);
    signs_in(&down, &op, before).await;
}

#[tokio::test]
async fn an_upstream_that_does_not_answer_gives_a_502_and_creates_nothing() {
    // U8
    let (down, op) = op_rig(|_| {}).await;
    let before = counts(&down).await;
    // The token endpoint in trouble.
    op.set(|c| c.token_status = Some(503));
    let r = attempt(&down).await;
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(counts(&down).await, before);

    // The upstream gone between the approval and the callback.
    op.set(|c| c.token_status = None);
    let v = Visitor::new(&down);
    let authorize = v.begin(OP).await;
    let callback = v.through_upstream(&authorize, None).await;
    op.stop().await;
    let r = v.open(&callback).await;
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(counts(&down).await, before);
    assert_eq!(v.down.get("/account").await.status, 303);
}

#[tokio::test]
async fn an_upstream_gone_before_the_sign_in_starts_gives_a_502() {
    // U8: discovery cannot be fetched.
    let (down, op) = op_rig(|_| {}).await;
    op.stop().await;
    let before = counts(&down).await;
    let v = Visitor::new(&down);
    let r = v.press("/login", OP).await;
    assert_eq!(r.status, 502, "{} {}", r.location(), r.body);
    assert_eq!(counts(&down).await, before);
}

#[tokio::test]
async fn a_key_the_upstream_rotated_in_is_fetched_once_and_accepted() {
    // U3: the JWKS is cached; an unknown `kid` refetches it (once), so a provider
    // rotating its keys keeps working and a forged `kid` costs one fetch at most.
    let (down, op) = op_rig(|_| {}).await;
    let before = counts(&down).await;
    signs_in(&down, &op, before).await;
    let fetched = op.config.lock().unwrap().jwks_fetches;
    assert!(fetched >= 1);
    // Cached: the next sign-in does not fetch it again.
    attempt(&down).await;
    assert_eq!(
        op.config.lock().unwrap().jwks_fetches,
        fetched,
        "the JWKS is cached"
    );

    op.set(|c| {
        c.publish_next = true;
        c.signing = Signing::NextKey;
    });
    let r = attempt(&down).await;
    assert_eq!(r.status, 303, "the rotated-in key is fetched: {}", r.body);
    assert_eq!(r.location(), "/account");
    assert_eq!(op.config.lock().unwrap().jwks_fetches, fetched + 1);

    // A kid nobody published, again and again: refused, and not a fetch per try.
    op.set(|c| c.signing = Signing::UnknownKid);
    let sessions = counts(&down).await.sessions;
    for _ in 0..3 {
        assert_refused(&attempt(&down).await, &down);
    }
    assert_eq!(counts(&down).await.sessions, sessions);
    let after = op.config.lock().unwrap().jwks_fetches;
    assert!(
        after <= fetched + 2,
        "refetches are rate-limited: {after} fetches"
    );
}
