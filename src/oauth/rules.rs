//! The token endpoint's rules as pure functions: what a code redemption, a refresh
//! and a client's credentials must satisfy. The store applies them inside its
//! transactions (`store::tokens`), so a rule and the write it allows cannot be split
//! by a concurrent request.

use time::OffsetDateTime;

use crate::crypto::{constant_time_eq, token_hash};
use crate::domain::oauth::{Scopes, pkce_matches};
use crate::store::{ClientRecord, CodeRecord, CodeVerdict, RefreshRecord, RefreshVerdict};

/// RFC 6749 §4.1.3 and RFC 7636 §4.6: the code was issued to this client for this
/// redirect URI, is unexpired, its session still live, and the verifier matches the
/// challenge. A verifier sent for a code issued without a challenge is refused too
/// (checklist O3: no PKCE downgrade either way).
pub fn check_code(
    code: &CodeRecord,
    client_id: &str,
    redirect_uri: Option<&str>,
    verifier: Option<&str>,
    now: OffsetDateTime,
) -> CodeVerdict {
    if code.client_id != client_id {
        return CodeVerdict::Refuse("the code was issued to another client");
    }
    if redirect_uri != Some(code.redirect_uri.as_str()) {
        return CodeVerdict::Refuse("redirect_uri differs from the authorization request");
    }
    match (&code.code_challenge, verifier) {
        (Some(challenge), Some(v)) if pkce_matches(v, challenge) => {}
        (Some(_), Some(_)) => return CodeVerdict::Refuse("code_verifier does not match"),
        (Some(_), None) => return CodeVerdict::Refuse("code_verifier is missing"),
        (None, Some(_)) => {
            return CodeVerdict::Refuse("code_verifier sent, but no code_challenge was");
        }
        (None, None) => {}
    }
    // A replay counts only from the code's own client with its own proof (secret, or
    // for a public client the PKCE verifier): someone who merely saw a spent code
    // cannot revoke the grant it made.
    if code.used {
        return CodeVerdict::Replay;
    }
    if code.expires_at <= now {
        return CodeVerdict::Refuse("the code has expired");
    }
    if !code.live {
        return CodeVerdict::Refuse("the session behind the code has ended");
    }
    if !code.consented {
        return CodeVerdict::Refuse("the consent behind the code was withdrawn");
    }
    CodeVerdict::Issue
}

/// RFC 6749 §6 and RFC 9700 §4.14.2: a refresh token works once, for the client it
/// was issued to, while its grant and session live. A spent one presented again by
/// its own client means two parties hold it: the family and the session are revoked.
///
/// `asked` is the request's `scope`: narrower than the grant's is fine (RFC 6749 §6),
/// wider is refused before anything is spent.
pub fn check_refresh(
    rec: &RefreshRecord,
    client_id: &str,
    asked: Option<&Scopes>,
    now: OffsetDateTime,
) -> RefreshVerdict {
    if rec.client_id != client_id {
        return RefreshVerdict::Refuse("the refresh token was issued to another client");
    }
    if rec.used && !rec.grant_revoked {
        return RefreshVerdict::Reuse;
    }
    if rec.used || rec.grant_revoked {
        return RefreshVerdict::Refuse("the refresh token has been revoked");
    }
    if rec.expires_at <= now || rec.session_expires_at.is_some_and(|t| t <= now) {
        return RefreshVerdict::Refuse("the refresh token has expired");
    }
    if !rec.live {
        return RefreshVerdict::Refuse("the session behind the refresh token has ended");
    }
    if let Some(asked) = asked
        && !asked.is_subset_of(&Scopes::parse(&rec.scope).unwrap_or_default())
    {
        return RefreshVerdict::WiderScope;
    }
    RefreshVerdict::Rotate
}

/// RFC 6749 §2.3.1: a confidential client proves its secret (SHA-256 compared in
/// constant time); a public client sends none, and one that sends a secret anyway is
/// refused rather than silently believed.
pub fn client_authenticates(client: &ClientRecord, secret: Option<&str>) -> bool {
    match (&client.secret_hash, secret) {
        (Some(stored), Some(given)) => constant_time_eq(&token_hash(given), stored),
        (None, None) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::Duration;
    use uuid::Uuid;

    const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

    fn code(now: OffsetDateTime) -> CodeRecord {
        CodeRecord {
            client_id: "app".into(),
            user_id: Uuid::new_v4(),
            session_id: Uuid::new_v4(),
            redirect_uri: "https://rp.test/cb".into(),
            scope: "openid".into(),
            nonce: None,
            code_challenge: Some(CHALLENGE.into()),
            acr: "urn:gatehouse:aal1".into(),
            amr: vec!["pwd".into()],
            auth_time: now,
            expires_at: now + Duration::seconds(60),
            used: false,
            live: true,
            consented: true,
            email: "a@example.com".into(),
            email_verified: true,
        }
    }

    #[test]
    fn a_code_is_bound_to_client_redirect_uri_verifier_and_time() {
        let now = OffsetDateTime::UNIX_EPOCH + Duration::days(20000);
        let c = code(now);
        let ok = |c: &CodeRecord, client, uri, v, at| check_code(c, client, uri, v, at);
        assert_eq!(
            ok(&c, "app", Some("https://rp.test/cb"), Some(VERIFIER), now),
            CodeVerdict::Issue
        );
        assert!(matches!(
            ok(&c, "other", Some("https://rp.test/cb"), Some(VERIFIER), now),
            CodeVerdict::Refuse(_)
        ));
        assert!(matches!(
            ok(&c, "app", Some("https://rp.test/cb/"), Some(VERIFIER), now),
            CodeVerdict::Refuse(_)
        ));
        assert!(matches!(
            ok(&c, "app", None, Some(VERIFIER), now),
            CodeVerdict::Refuse(_)
        ));
        assert!(matches!(
            ok(&c, "app", Some("https://rp.test/cb"), None, now),
            CodeVerdict::Refuse(_)
        ));
        assert!(matches!(
            ok(&c, "app", Some("https://rp.test/cb"), Some(CHALLENGE), now),
            CodeVerdict::Refuse(_)
        ));
        assert!(matches!(
            ok(
                &c,
                "app",
                Some("https://rp.test/cb"),
                Some(VERIFIER),
                now + Duration::seconds(60)
            ),
            CodeVerdict::Refuse(_)
        ));
        let mut no_pkce = c.clone();
        no_pkce.code_challenge = None;
        assert_eq!(
            ok(&no_pkce, "app", Some("https://rp.test/cb"), None, now),
            CodeVerdict::Issue
        );
        assert!(matches!(
            ok(
                &no_pkce,
                "app",
                Some("https://rp.test/cb"),
                Some(VERIFIER),
                now
            ),
            CodeVerdict::Refuse(_)
        ));
        let mut used = c.clone();
        used.used = true;
        assert_eq!(
            ok(
                &used,
                "app",
                Some("https://rp.test/cb"),
                Some(VERIFIER),
                now
            ),
            CodeVerdict::Replay
        );
        assert!(matches!(
            ok(&used, "other", Some("https://rp.test/cb"), None, now),
            CodeVerdict::Refuse(_)
        ));
        // Without the verifier, a spent code revokes nothing.
        assert!(matches!(
            ok(&used, "app", Some("https://rp.test/cb"), None, now),
            CodeVerdict::Refuse(_)
        ));
        let mut dead = c.clone();
        dead.live = false;
        assert!(matches!(
            ok(
                &dead,
                "app",
                Some("https://rp.test/cb"),
                Some(VERIFIER),
                now
            ),
            CodeVerdict::Refuse(_)
        ));
    }

    fn refresh(now: OffsetDateTime) -> RefreshRecord {
        RefreshRecord {
            grant_id: Uuid::new_v4(),
            client_id: "app".into(),
            user_id: Some(Uuid::new_v4()),
            session_id: Some(Uuid::new_v4()),
            scope: "openid".into(),
            acr: None,
            amr: None,
            auth_time: None,
            expires_at: now + Duration::hours(1),
            used: false,
            grant_revoked: false,
            live: true,
            session_expires_at: Some(now + Duration::hours(2)),
            email: None,
            email_verified: None,
        }
    }

    #[test]
    fn a_refresh_token_rotates_once_and_its_reuse_is_theft() {
        let now = OffsetDateTime::UNIX_EPOCH + Duration::days(20000);
        let r = refresh(now);
        assert_eq!(check_refresh(&r, "app", None, now), RefreshVerdict::Rotate);
        assert!(matches!(
            check_refresh(&r, "other", None, now),
            RefreshVerdict::Refuse(_)
        ));
        let mut used = r.clone();
        used.used = true;
        assert_eq!(
            check_refresh(&used, "app", None, now),
            RefreshVerdict::Reuse
        );
        // Another client presenting it learns nothing and revokes nothing.
        assert!(matches!(
            check_refresh(&used, "other", None, now),
            RefreshVerdict::Refuse(_)
        ));
        used.grant_revoked = true;
        assert!(matches!(
            check_refresh(&used, "app", None, now),
            RefreshVerdict::Refuse(_)
        ));
        assert!(matches!(
            check_refresh(&r, "app", None, now + Duration::hours(1)),
            RefreshVerdict::Refuse(_)
        ));
        let mut dead = r.clone();
        dead.live = false;
        assert!(matches!(
            check_refresh(&dead, "app", None, now),
            RefreshVerdict::Refuse(_)
        ));
    }

    #[test]
    fn clients_authenticate_by_secret_or_not_at_all() {
        let mut c = ClientRecord {
            id: "app".into(),
            name: "App".into(),
            secret_hash: Some(token_hash("s3cret")),
            redirect_uris: vec![],
            post_logout_redirect_uris: vec![],
            backchannel_logout_uri: None,
            first_party: false,
            introspect_any: false,
            created_at: OffsetDateTime::UNIX_EPOCH,
            web_origins: vec![],
        };
        assert!(client_authenticates(&c, Some("s3cret")));
        assert!(!client_authenticates(&c, Some("s3cret ")));
        assert!(!client_authenticates(&c, None));
        c.secret_hash = None;
        assert!(client_authenticates(&c, None));
        assert!(!client_authenticates(&c, Some("anything")));
    }
}
