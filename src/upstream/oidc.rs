//! OpenID Connect with an upstream: the authorization request, the code exchange,
//! and the claim checks of ID tokens (OIDC Core 1.0 §3.1.3.7) and logout tokens
//! (OIDC Back-Channel Logout 1.0 §2.6). Signatures are checked before any of this,
//! in `discovery`.

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Map, Value};
use time::OffsetDateTime;

use super::discovery::{Discovery, IssuerRule};
use super::http::send_json;
use super::{
    LEEWAY, LOGOUT_TOKEN_MAX_AGE, LogoutClaims, Upstream, UpstreamError, UpstreamIdentity,
};
use crate::crypto::constant_time_eq;

/// OIDC Back-Channel Logout 1.0 §2.4: the event that makes a JWT a logout token.
pub const LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

pub(super) fn authorization_url(
    d: &Discovery,
    up: &Upstream,
    redirect_uri: &str,
    state: &str,
    nonce: &str,
    code_challenge: &str,
) -> Result<url::Url, UpstreamError> {
    let mut url = url::Url::parse(&d.authorization_endpoint)
        .map_err(|_| UpstreamError::refused("authorization endpoint is not a URL"))?;
    url.query_pairs_mut()
        .append_pair("response_type", "code")
        .append_pair("client_id", &up.client_id)
        .append_pair("redirect_uri", redirect_uri)
        .append_pair("scope", &up.scopes)
        .append_pair("state", state)
        .append_pair("nonce", nonce)
        .append_pair("code_challenge", code_challenge)
        .append_pair("code_challenge_method", "S256");
    Ok(url)
}

/// OIDC Core §3.1.2.1: `prompt=login` makes the upstream authenticate the person
/// again; `max_age=0` says the same to providers that honour only it, and obliges
/// it to return `auth_time` (§2), which the caller checks.
pub(super) fn demand_reauthentication(url: &mut url::Url) {
    url.query_pairs_mut()
        .append_pair("prompt", "login")
        .append_pair("max_age", "0");
}

/// RFC 9207 §2.4: an `iss` in the authorization response must be the upstream's; none
/// at all is refused when the upstream advertises that it always sends one.
pub(super) fn check_response_iss(
    d: &Discovery,
    rule: &IssuerRule,
    iss: Option<&str>,
) -> Result<(), UpstreamError> {
    match iss {
        Some(iss) if rule.names_response(iss) => Ok(()),
        Some(_) => Err(UpstreamError::refused(
            "authorization response iss is not the upstream's (mix-up)",
        )),
        None if d.authorization_response_iss_parameter_supported => Err(UpstreamError::refused(
            "authorization response without the iss the upstream advertises",
        )),
        None => Ok(()),
    }
}

#[derive(Deserialize)]
struct TokenAnswer {
    #[serde(default)]
    id_token: Option<String>,
}

/// Redeems `code` at the token endpoint (RFC 6749 §4.1.3 with the RFC 7636 verifier)
/// and returns the ID token, unverified.
pub(super) async fn redeem_code(
    http: &reqwest::Client,
    d: &Discovery,
    up: &Upstream,
    secret: &SecretString,
    code: &str,
    redirect_uri: &str,
    code_verifier: &str,
) -> Result<String, UpstreamError> {
    let mut form: Vec<(&str, &str)> = vec![
        ("grant_type", "authorization_code"),
        ("code", code),
        ("redirect_uri", redirect_uri),
        ("code_verifier", code_verifier),
    ];
    let mut rb = http
        .post(&d.token_endpoint)
        .header(reqwest::header::ACCEPT, "application/json");
    if d.secret_in_body() {
        form.push(("client_id", &up.client_id));
        form.push(("client_secret", secret.expose_secret()));
    } else {
        // RFC 6749 §2.3.1: both halves are form-encoded before Basic encoding.
        rb = rb.basic_auth(
            form_encode(&up.client_id),
            Some(form_encode(secret.expose_secret())),
        );
    }
    let answer: TokenAnswer = send_json(rb.form(&form), "token endpoint").await?;
    answer
        .id_token
        .ok_or_else(|| UpstreamError::refused("token answer without an id_token"))
}

fn form_encode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn string<'a>(claims: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    claims.get(name).and_then(Value::as_str)
}

/// A NumericDate (RFC 7519 §2): seconds, possibly with a fraction.
fn seconds(claims: &Map<String, Value>, name: &str) -> Result<Option<i64>, UpstreamError> {
    match claims.get(name) {
        None => Ok(None),
        Some(v) => v
            .as_f64()
            .filter(|f| f.is_finite())
            .map(|f| Some(f.floor() as i64))
            .ok_or_else(|| UpstreamError::refused(format!("{name} is not a number"))),
    }
}

/// `aud` as a list (a single string or an array of strings).
fn audiences(claims: &Map<String, Value>) -> Result<Vec<&str>, UpstreamError> {
    match claims.get("aud") {
        Some(Value::String(a)) => Ok(vec![a.as_str()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| {
                v.as_str()
                    .ok_or_else(|| UpstreamError::refused("aud holds a non-string"))
            })
            .collect(),
        _ => Err(UpstreamError::refused("no aud")),
    }
}

/// `iss` (exactly the upstream's) and `aud` (contains our client id), shared by ID
/// and logout tokens.
fn check_issuer_and_audience<'a>(
    claims: &'a Map<String, Value>,
    rule: &IssuerRule,
    up: &Upstream,
) -> Result<Vec<&'a str>, UpstreamError> {
    let iss = string(claims, "iss").ok_or_else(|| UpstreamError::refused("no iss"))?;
    if !rule.names_token(iss, string(claims, "tid")) {
        return Err(UpstreamError::refused("iss is not the upstream's"));
    }
    let aud = audiences(claims)?;
    if !aud.contains(&up.client_id.as_str()) {
        return Err(UpstreamError::refused("aud does not name our client id"));
    }
    Ok(aud)
}

/// OIDC Core §3.1.3.7 steps 4–5: with several audiences `azp` must be present, and
/// when present it must be our client id. Logout tokens are held to the same rule
/// (Back-Channel Logout 1.0 §2.6 step 3 validates them as ID tokens are).
fn check_azp(
    claims: &Map<String, Value>,
    aud: &[&str],
    up: &Upstream,
) -> Result<(), UpstreamError> {
    // A present `azp` that is not a string names no client at all: refused rather
    // than read as absent.
    match claims.get("azp") {
        Some(Value::String(azp)) if *azp == up.client_id => Ok(()),
        Some(_) => Err(UpstreamError::refused("azp is not our client id")),
        None if aud.len() > 1 => Err(UpstreamError::refused("several audiences and no azp")),
        None => Ok(()),
    }
}

/// `iat` present and not in the future (beyond the leeway); `exp`, when `required`
/// or present, not past; `nbf`, when present, reached.
fn check_times(
    claims: &Map<String, Value>,
    now: i64,
    exp_required: bool,
) -> Result<i64, UpstreamError> {
    // Saturating: the upstream chooses these numbers, and an `exp` near i64::MAX
    // must not wrap round (a panic in debug builds, a past time in release ones).
    let iat = seconds(claims, "iat")?.ok_or_else(|| UpstreamError::refused("no iat"))?;
    if iat > now.saturating_add(LEEWAY) {
        return Err(UpstreamError::refused("iat is in the future"));
    }
    match seconds(claims, "exp")? {
        Some(exp) if exp.saturating_add(LEEWAY) < now => {
            return Err(UpstreamError::refused("expired"));
        }
        None if exp_required => return Err(UpstreamError::refused("no exp")),
        _ => {}
    }
    if let Some(nbf) = seconds(claims, "nbf")?
        && nbf > now.saturating_add(LEEWAY)
    {
        return Err(UpstreamError::refused("nbf not reached"));
    }
    Ok(iat)
}

/// The longest `sid` taken from an upstream (as for `sub` and `jti`).
const MAX_SID: usize = 255;

/// An upstream's address, as stored: none at all when it is longer than an address
/// can be (RFC 5321 §4.5.3.1: a path of 256 octets, 254 for the address itself), so
/// an upstream cannot fill rows with whatever it likes.
pub(super) fn usable_email(email: Option<&str>) -> Option<String> {
    email
        .filter(|e| !e.is_empty() && e.len() <= 254)
        .map(str::to_string)
}

/// OIDC Core §3.1.3.7 steps 2–11 on a token whose signature checked out.
pub(super) fn check_id_token(
    claims: &Map<String, Value>,
    rule: &IssuerRule,
    up: &Upstream,
    nonce: &str,
    now: OffsetDateTime,
) -> Result<UpstreamIdentity, UpstreamError> {
    let aud = check_issuer_and_audience(claims, rule, up)?;
    check_azp(claims, &aud, up)?;
    check_times(claims, now.unix_timestamp(), true)?;
    // §3.1.3.7 step 11: the nonce of this browser's request, so a token from
    // another sign-in cannot be replayed into this one.
    let given = string(claims, "nonce").ok_or_else(|| UpstreamError::refused("no nonce"))?;
    if !constant_time_eq(given.as_bytes(), nonce.as_bytes()) {
        return Err(UpstreamError::refused("nonce does not match"));
    }
    let subject = string(claims, "sub")
        .filter(|s| !s.is_empty() && s.len() <= 255)
        .ok_or_else(|| UpstreamError::refused("no usable sub"))?;
    // `sid` is stored with the session and indexed; an upstream gets no say in how
    // large that row is.
    let sid = match claims.get("sid") {
        None => None,
        Some(Value::String(sid)) if !sid.is_empty() && sid.len() <= MAX_SID => Some(sid.clone()),
        Some(_) => return Err(UpstreamError::refused("sid is not a usable string")),
    };
    let email = usable_email(string(claims, "email"));
    // Only a JSON `true` says the address is verified (OIDC Core §5.1).
    let email_verified =
        email.is_some() && claims.get("email_verified") == Some(&Value::Bool(true));
    Ok(UpstreamIdentity {
        subject: subject.to_string(),
        email,
        email_verified,
        sid,
        auth_time: claims.get("auth_time").and_then(Value::as_i64),
    })
}

/// OIDC Back-Channel Logout 1.0 §2.6 steps 3–8 (all but the `jti` replay check,
/// which the caller makes last through the store). Returns the `jti` and what the
/// token names.
pub(super) fn check_logout_token(
    claims: &Map<String, Value>,
    rule: &IssuerRule,
    up: &Upstream,
    now: OffsetDateTime,
) -> Result<(String, LogoutClaims), UpstreamError> {
    let aud = check_issuer_and_audience(claims, rule, up)?;
    check_azp(claims, &aud, up)?;
    let now = now.unix_timestamp();
    // §2.4: `exp` is REQUIRED in a logout token.
    let iat = check_times(claims, now, true)?;
    if iat.saturating_add(LOGOUT_TOKEN_MAX_AGE + LEEWAY) < now {
        return Err(UpstreamError::refused("logout token too old"));
    }
    // §2.4: `events` holds the back-channel logout event, whose value is an object.
    let event = claims
        .get("events")
        .and_then(Value::as_object)
        .and_then(|e| e.get(LOGOUT_EVENT));
    if !matches!(event, Some(Value::Object(_))) {
        return Err(UpstreamError::refused("no back-channel logout event"));
    }
    // §2.6 step 5: a nonce means it is not a logout token (e.g. an ID token).
    if claims.contains_key("nonce") {
        return Err(UpstreamError::refused("logout token carries a nonce"));
    }
    let sub = string(claims, "sub")
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    // No session here has a longer `sid` (see `check_id_token`).
    let sid = string(claims, "sid")
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    if sid.as_ref().is_some_and(|s| s.len() > MAX_SID) {
        return Err(UpstreamError::refused("sid too long"));
    }
    if sub.is_none() && sid.is_none() {
        return Err(UpstreamError::refused(
            "logout token names neither sub nor sid",
        ));
    }
    let jti = string(claims, "jti")
        .filter(|j| !j.is_empty() && j.len() <= 255)
        .ok_or_else(|| UpstreamError::refused("no usable jti"))?;
    Ok((jti.to_string(), LogoutClaims { sub, sid }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::UpstreamKind;
    use serde_json::json;

    const ISS: &str = "https://idp.example";

    fn up() -> Upstream {
        Upstream {
            id: uuid::Uuid::nil(),
            name: "idp".into(),
            kind: UpstreamKind::Oidc,
            preset: None,
            label: "IdP".into(),
            trust_email: false,
            issuer: Some(ISS.into()),
            base_url: None,
            api_url: None,
            client_id: "gatehouse".into(),
            scopes: "openid email".into(),
            created_at: OffsetDateTime::UNIX_EPOCH,
        }
    }

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap()
    }

    fn id_claims(extra: Value) -> Map<String, Value> {
        let t = now().unix_timestamp();
        let mut c = json!({
            "iss": ISS, "sub": "u-1", "aud": "gatehouse", "iat": t, "exp": t + 300,
            "nonce": "n-1", "email": "a@example.com", "email_verified": true, "sid": "s-1"
        });
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        c.as_object().unwrap().clone()
    }

    fn check(extra: Value) -> Result<UpstreamIdentity, UpstreamError> {
        let rule = IssuerRule::of(&up()).unwrap();
        check_id_token(&id_claims(extra), &rule, &up(), "n-1", now())
    }

    #[test]
    fn a_good_id_token_gives_the_identity() {
        let id = check(json!({})).unwrap();
        assert_eq!(
            id,
            UpstreamIdentity {
                subject: "u-1".into(),
                email: Some("a@example.com".into()),
                email_verified: true,
                sid: Some("s-1".into()),
                auth_time: None,
            }
        );
        assert!(
            !check(json!({"email_verified": "true"}))
                .unwrap()
                .email_verified
        );
    }

    #[test]
    fn every_id_token_claim_check_refuses() {
        // U3
        let t = now().unix_timestamp();
        for bad in [
            json!({"iss": "https://evil.example"}),
            json!({"iss": null}),
            json!({"aud": "other"}),
            json!({"aud": ["other", "gatehouse"]}),
            json!({"aud": ["other", "gatehouse"], "azp": "other"}),
            json!({"azp": "other"}),
            json!({"azp": 7}),
            json!({"azp": ["gatehouse"]}),
            json!({"aud": ["other", "gatehouse"], "azp": false}),
            json!({"exp": t - LEEWAY - 1}),
            json!({"exp": null}),
            json!({"iat": t + LEEWAY + 1}),
            json!({"iat": null}),
            json!({"nonce": "n-2"}),
            json!({"nonce": null}),
            json!({"sub": ""}),
            json!({"nbf": t + LEEWAY + 1}),
        ] {
            assert!(
                matches!(check(bad.clone()), Err(UpstreamError::Refused(_))),
                "{bad}"
            );
        }
        // Upstream-chosen sizes: a sid longer than 255 is refused, an address
        // longer than 254 is no address (and so not a verified one).
        assert!(check(json!({"sid": "s".repeat(255)})).is_ok());
        for bad in [json!({"sid": "s".repeat(256)}), json!({"sid": 7})] {
            assert!(
                matches!(check(bad.clone()), Err(UpstreamError::Refused(_))),
                "{bad}"
            );
        }
        let long = format!("{}@example.com", "a".repeat(243));
        assert_eq!(long.len(), 255);
        let id = check(json!({"email": long})).unwrap();
        assert_eq!(id.email, None);
        assert!(!id.email_verified);
        let fits = format!("{}@example.com", "a".repeat(242));
        assert_eq!(
            check(json!({"email": fits.clone()})).unwrap().email,
            Some(fits)
        );
        // Far-future and far-past times neither wrap round nor panic.
        assert!(check(json!({"exp": i64::MAX})).is_ok());
        assert!(check(json!({"exp": 1e300})).is_ok());
        assert!(matches!(
            check(json!({"exp": i64::MIN})),
            Err(UpstreamError::Refused(_))
        ));
        assert!(matches!(
            check(json!({"nbf": i64::MAX})),
            Err(UpstreamError::Refused(_))
        ));
        // Within the leeway, and several audiences with the right azp.
        assert!(check(json!({"exp": t - LEEWAY + 1, "iat": t + LEEWAY})).is_ok());
        assert!(check(json!({"aud": ["other", "gatehouse"], "azp": "gatehouse"})).is_ok());
    }

    fn logout(extra: Value) -> Result<(String, LogoutClaims), UpstreamError> {
        let t = now().unix_timestamp();
        let mut c = json!({
            "iss": ISS, "sub": "u-1", "aud": "gatehouse", "iat": t, "exp": t + 120,
            "jti": "j-1", "sid": "s-1", "events": { LOGOUT_EVENT: {} }
        });
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                c.as_object_mut().unwrap().remove(k);
            } else {
                c[k] = v.clone();
            }
        }
        let rule = IssuerRule::of(&up()).unwrap();
        check_logout_token(c.as_object().unwrap(), &rule, &up(), now())
    }

    #[test]
    fn a_logout_token_passes_only_every_check_of_section_2_6() {
        // U6
        let (jti, claims) = logout(json!({})).unwrap();
        assert_eq!(jti, "j-1");
        assert_eq!(claims.sid.as_deref(), Some("s-1"));
        assert!(logout(json!({"sid": null})).is_ok());
        assert!(logout(json!({"sub": null})).is_ok());
        assert!(logout(json!({"aud": ["other", "gatehouse"], "azp": "gatehouse"})).is_ok());
        let t = now().unix_timestamp();
        for bad in [
            json!({"iss": "https://evil.example"}),
            json!({"aud": "other"}),
            json!({"iat": null}),
            json!({"iat": t + LEEWAY + 1}),
            json!({"iat": t - LOGOUT_TOKEN_MAX_AGE - LEEWAY - 1}),
            json!({"exp": t - LEEWAY - 1}),
            // §2.4: exp is required; the azp rule is the ID token's.
            json!({"exp": null}),
            json!({"azp": "other"}),
            json!({"azp": 7}),
            json!({"aud": ["other", "gatehouse"]}),
            json!({"events": null}),
            json!({"events": {"other": {}}}),
            json!({"events": {LOGOUT_EVENT: "yes"}}),
            json!({"sid": "s".repeat(256)}),
            json!({"nonce": "n"}),
            json!({"sub": null, "sid": null}),
            json!({"jti": null}),
        ] {
            assert!(
                matches!(logout(bad.clone()), Err(UpstreamError::Refused(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn the_response_iss_is_checked_and_required_when_advertised() {
        // U4
        let mut d = Discovery {
            issuer: ISS.into(),
            authorization_endpoint: format!("{ISS}/authorize"),
            token_endpoint: format!("{ISS}/token"),
            jwks_uri: format!("{ISS}/jwks"),
            token_endpoint_auth_methods_supported: None,
            authorization_response_iss_parameter_supported: false,
        };
        let rule = IssuerRule::of(&up()).unwrap();
        assert!(check_response_iss(&d, &rule, None).is_ok());
        assert!(check_response_iss(&d, &rule, Some(ISS)).is_ok());
        assert!(check_response_iss(&d, &rule, Some("https://evil.example")).is_err());
        d.authorization_response_iss_parameter_supported = true;
        assert!(check_response_iss(&d, &rule, None).is_err());
        assert!(check_response_iss(&d, &rule, Some(ISS)).is_ok());
    }
}
