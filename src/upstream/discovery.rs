//! OpenID Connect Discovery 1.0 documents and JWK sets of upstreams: fetched,
//! checked, cached; and the signature check of the tokens they sign (jsonwebtoken
//! does the JOSE work; this file only picks the key and the algorithm).

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::http::send_json;
use super::{
    DISCOVERY_TTL, JWKS_REFETCH_INTERVAL, JWKS_TTL, Upstream, UpstreamError, UpstreamKind,
};
use crate::settings::is_loopback_host;

/// The parts of a discovery document (OIDC Discovery 1.0 §3) Gatehouse uses.
#[derive(Clone, Debug, Deserialize)]
pub(super) struct Discovery {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    pub jwks_uri: String,
    #[serde(default)]
    pub token_endpoint_auth_methods_supported: Option<Vec<String>>,
    /// RFC 9207 §3: the upstream puts `iss` in every authorization response.
    #[serde(default)]
    pub authorization_response_iss_parameter_supported: bool,
}

impl Discovery {
    /// RFC 6749 §2.3.1: `client_secret_basic` unless the upstream says it takes
    /// only `client_secret_post` (the list's absence means basic, OIDC Discovery §3).
    pub fn secret_in_body(&self) -> bool {
        match &self.token_endpoint_auth_methods_supported {
            Some(methods) => {
                !methods.iter().any(|m| m == "client_secret_basic")
                    && methods.iter().any(|m| m == "client_secret_post")
            }
            None => false,
        }
    }
}

/// Microsoft Entra's multi-tenant endpoints (`/common`, `/organizations`,
/// `/consumers`) publish one discovery document for every tenant, whose `issuer` is
/// a template; each token names its tenant (`tid`) and its `iss` is the template
/// filled with it (Microsoft identity platform, "Validate the issuer").
const ENTRA_TEMPLATE: &str = "{tenantid}";

/// How the issuer an upstream names is checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum IssuerRule {
    /// Exactly this string (OIDC Core §3.1.3.7 step 2, Discovery §4.3).
    Exact(String),
    /// Google names itself `https://accounts.google.com` in discovery, and its ID
    /// tokens may say `accounts.google.com` (Google's OpenID Connect guide).
    Google,
    /// Entra multi-tenant: `https://login.microsoftonline.com/{tenantid}/v2.0`,
    /// filled with the token's `tid`.
    EntraTemplate { before: String, after: String },
}

const GOOGLE: &str = "https://accounts.google.com";

impl IssuerRule {
    pub fn of(up: &Upstream) -> Result<Self, UpstreamError> {
        let issuer = up
            .issuer
            .as_deref()
            .ok_or_else(|| UpstreamError::refused("upstream has no issuer"))?;
        if issuer == GOOGLE {
            return Ok(IssuerRule::Google);
        }
        if is_multi_tenant(issuer) {
            return Ok(IssuerRule::EntraTemplate {
                before: "https://login.microsoftonline.com/".into(),
                after: "/v2.0".into(),
            });
        }
        Ok(IssuerRule::Exact(issuer.to_string()))
    }

    /// Whether a discovery document's `issuer` is the one configured.
    pub fn names_document(&self, issuer: &str) -> bool {
        match self {
            IssuerRule::Exact(i) => i == issuer,
            IssuerRule::Google => issuer == GOOGLE,
            // `/consumers` names its one tenant rather than the template.
            IssuerRule::EntraTemplate { before, after } => {
                issuer == format!("{before}{ENTRA_TEMPLATE}{after}") || self.names_response(issuer)
            }
        }
    }

    /// Whether an `iss` (RFC 9207 response parameter) can be this upstream's.
    pub fn names_response(&self, iss: &str) -> bool {
        match self {
            IssuerRule::Exact(i) => i == iss,
            IssuerRule::Google => iss == GOOGLE,
            IssuerRule::EntraTemplate { before, after } => iss
                .strip_prefix(before.as_str())
                .and_then(|r| r.strip_suffix(after.as_str()))
                .is_some_and(is_tenant_id),
        }
    }

    /// Whether a token's `iss` is this upstream's; `tid` is the token's tenant.
    pub fn names_token(&self, iss: &str, tid: Option<&str>) -> bool {
        match self {
            IssuerRule::Exact(i) => i == iss,
            IssuerRule::Google => iss == GOOGLE || iss == "accounts.google.com",
            IssuerRule::EntraTemplate { before, after } => {
                tid.is_some_and(|t| is_tenant_id(t) && iss == format!("{before}{t}{after}"))
            }
        }
    }
}

/// Whether `issuer` is one of Entra's multi-tenant endpoints, whose tokens come from
/// whichever tenant the person belongs to (each tenant's administrators type its
/// users' addresses themselves).
pub(super) fn is_multi_tenant(issuer: &str) -> bool {
    issuer
        .strip_prefix("https://login.microsoftonline.com/")
        .and_then(|rest| rest.strip_suffix("/v2.0"))
        .is_some_and(|tenant| matches!(tenant, "common" | "organizations" | "consumers"))
}

/// An Entra tenant id: a GUID.
fn is_tenant_id(s: &str) -> bool {
    uuid::Uuid::parse_str(s).is_ok_and(|u| u.hyphenated().to_string() == s.to_ascii_lowercase())
}

/// `ISSUER/.well-known/openid-configuration` (Discovery §4: a trailing `/` of the
/// issuer is removed before appending).
pub(super) fn discovery_url(issuer: &str) -> String {
    format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    )
}

/// Whether Gatehouse may talk to `url` (an issuer, an endpoint its discovery names,
/// a GitHub base): `https://`, or plain `http://` only to a loopback host in dev
/// mode. Checked at every use, not only by `upstream add`: a row written by a dev-mode
/// command, or a discovery document, must not send codes and secrets in the clear.
pub(super) fn transport_ok(url: &str, dev: bool) -> bool {
    match url::Url::parse(url) {
        Ok(u) if u.scheme() == "https" => true,
        Ok(u) if u.scheme() == "http" => dev && u.host().is_some_and(|h| is_loopback_host(&h)),
        _ => false,
    }
}

struct KeySet {
    fetched_at: Instant,
    /// The last fetch an unknown `kid` caused (the rate limit's clock).
    refetched_at: Option<Instant>,
    keys: Arc<Vec<Jwk>>,
}

/// This node's discovery documents (by issuer) and key sets (by `jwks_uri`).
#[derive(Default)]
pub(super) struct Cache {
    docs: RwLock<HashMap<String, (Instant, Arc<Discovery>)>>,
    keys: RwLock<HashMap<String, KeySet>>,
    /// One fetch of a key set at a time per `jwks_uri`, so the refetch interval
    /// holds under concurrent requests.
    fetching: RwLock<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

#[derive(Deserialize)]
struct RawKeySet {
    keys: Vec<serde_json::Value>,
}

impl Cache {
    pub async fn discovery(
        &self,
        http: &reqwest::Client,
        up: &Upstream,
        dev: bool,
    ) -> Result<Arc<Discovery>, UpstreamError> {
        if up.kind != UpstreamKind::Oidc {
            return Err(UpstreamError::refused("not an OpenID Connect upstream"));
        }
        let rule = IssuerRule::of(up)?;
        let issuer = up.issuer.clone().unwrap_or_default();
        if !transport_ok(&issuer, dev) {
            return Err(UpstreamError::refused(
                "issuer is not https (plain http only on loopback in dev mode)",
            ));
        }
        if let Ok(docs) = self.docs.read()
            && let Some((at, d)) = docs.get(&issuer)
            && at.elapsed() < DISCOVERY_TTL
        {
            return Ok(d.clone());
        }
        let d: Discovery = send_json(
            http.get(discovery_url(&issuer))
                .header(reqwest::header::ACCEPT, "application/json"),
            "discovery",
        )
        .await?;
        // Discovery §4.3: the document's issuer must be exactly the one asked for,
        // or a document from elsewhere could redirect sign-ins and keys.
        if !rule.names_document(&d.issuer) {
            return Err(UpstreamError::refused(format!(
                "discovery names issuer {:?}, not {issuer:?}",
                d.issuer
            )));
        }
        for endpoint in [&d.authorization_endpoint, &d.token_endpoint, &d.jwks_uri] {
            if !transport_ok(endpoint, dev) {
                return Err(UpstreamError::refused(format!(
                    "discovery names an endpoint that is not https (plain http only on loopback in dev mode): {endpoint:?}"
                )));
            }
        }
        let d = Arc::new(d);
        if let Ok(mut docs) = self.docs.write() {
            docs.insert(issuer, (Instant::now(), d.clone()));
        }
        Ok(d)
    }

    /// The key set at `uri`, cached for `JWKS_TTL`. `refetch` (a token names a `kid`
    /// the cached set lacks: the upstream may have rotated) fetches it again, unless
    /// an unknown `kid` already did so in the last `JWKS_REFETCH_INTERVAL`.
    async fn key_set(
        &self,
        http: &reqwest::Client,
        uri: &str,
        refetch: bool,
    ) -> Result<Arc<Vec<Jwk>>, UpstreamError> {
        let cached = || {
            self.keys.read().ok().and_then(|keys| {
                keys.get(uri)
                    .map(|k| (k.fetched_at, k.refetched_at, k.keys.clone()))
            })
        };
        // Whether the cached set (if any) is what this call should answer with.
        let usable = |entry: &(Instant, Option<Instant>, Arc<Vec<Jwk>>)| {
            if refetch {
                entry
                    .1
                    .is_some_and(|at| at.elapsed() < JWKS_REFETCH_INTERVAL)
            } else {
                entry.0.elapsed() < JWKS_TTL
            }
        };
        if let Some(entry) = cached().filter(usable) {
            return Ok(entry.2);
        }
        let lock = {
            let mut fetching = self
                .fetching
                .write()
                .map_err(|_| UpstreamError::Unreachable("key cache poisoned".into()))?;
            fetching.entry(uri.to_string()).or_default().clone()
        };
        let _one_at_a_time = lock.lock().await;
        // Another request may have fetched it while this one waited.
        let before = cached();
        if let Some(entry) = before.clone().filter(usable) {
            return Ok(entry.2);
        }
        let raw: RawKeySet = send_json(
            http.get(uri)
                .header(reqwest::header::ACCEPT, "application/json"),
            "jwks",
        )
        .await?;
        // Keys this crate cannot read (other types, encryption algorithms) are
        // skipped one by one rather than failing the whole set.
        let keys: Vec<Jwk> = raw
            .keys
            .into_iter()
            .filter_map(|k| serde_json::from_value(k).ok())
            .collect();
        let keys = Arc::new(keys);
        let now = Instant::now();
        let refetched_at = if refetch {
            Some(now)
        } else {
            before.and_then(|b| b.1)
        };
        if let Ok(mut cache) = self.keys.write() {
            cache.insert(
                uri.to_string(),
                KeySet {
                    fetched_at: now,
                    refetched_at,
                    keys: keys.clone(),
                },
            );
        }
        Ok(keys)
    }

    /// Checks the signature of `token` with the upstream's keys and returns its
    /// claims and algorithm. The claims are not checked here.
    pub async fn verify_signature(
        &self,
        http: &reqwest::Client,
        d: &Discovery,
        token: &str,
    ) -> Result<(serde_json::Map<String, serde_json::Value>, Algorithm), UpstreamError> {
        // Rejects `alg: none` and any algorithm jsonwebtoken does not know.
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| UpstreamError::refused(format!("token header: {e}")))?;
        let alg = header.alg;
        if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
            // A shared-secret MAC would let anyone holding the client secret forge
            // tokens; upstream tokens must be signed with the upstream's keys.
            return Err(UpstreamError::refused(format!("token alg {alg:?} refused")));
        }
        let kid = header.kid.as_deref();
        let keys = self.key_set(http, &d.jwks_uri, false).await?;
        let jwk = match pick_key(&keys, kid, alg) {
            Some(k) => k.clone(),
            None if kid.is_some() => {
                // A new key the upstream rotated in: fetch once more (rate-limited).
                let keys = self.key_set(http, &d.jwks_uri, true).await?;
                pick_key(&keys, kid, alg).cloned().ok_or_else(|| {
                    UpstreamError::refused(format!(
                        "no key {kid:?} for {alg:?} in the upstream's JWKS"
                    ))
                })?
            }
            None => {
                return Err(UpstreamError::refused(
                    "token names no kid and the JWKS has no single key for its alg",
                ));
            }
        };
        let key = DecodingKey::from_jwk(&jwk)
            .map_err(|e| UpstreamError::refused(format!("unusable JWK: {e}")))?;
        let mut validation = Validation::new(alg);
        // The claims are checked by the caller, against the injected clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        validation.leeway = 0;
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            &key,
            &validation,
        )
        .map_err(|e| UpstreamError::refused(format!("token signature: {e}")))?;
        Ok((data.claims, alg))
    }
}

/// The key for a token signed with `alg` naming `kid`: a signing key whose type
/// (and curve, and `alg` when the JWK names one) fits `alg`, so that a key can never
/// be used with an algorithm of another family. Without a `kid`, only a set with a
/// single fitting key answers.
fn pick_key<'a>(keys: &'a [Jwk], kid: Option<&str>, alg: Algorithm) -> Option<&'a Jwk> {
    let mut fitting = keys.iter().filter(|k| {
        let for_signing = matches!(
            k.common.public_key_use,
            None | Some(PublicKeyUse::Signature)
        );
        let named = match kid {
            Some(kid) => k.common.key_id.as_deref() == Some(kid),
            None => true,
        };
        let declared = k
            .common
            .key_algorithm
            .is_none_or(|a| Algorithm::from_str(&a.to_string()).ok() == Some(alg));
        for_signing && named && declared && key_fits(k, alg)
    });
    let first = fitting.next()?;
    match kid {
        Some(_) => Some(first),
        None => fitting.next().is_none().then_some(first),
    }
}

fn key_fits(k: &Jwk, alg: Algorithm) -> bool {
    use Algorithm::*;
    match &k.algorithm {
        AlgorithmParameters::RSA(_) => {
            matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512)
        }
        AlgorithmParameters::EllipticCurve(ec) => matches!(
            (&ec.curve, alg),
            (EllipticCurve::P256, ES256) | (EllipticCurve::P384, ES384)
        ),
        AlgorithmParameters::OctetKeyPair(okp) => {
            okp.curve == EllipticCurve::Ed25519 && alg == EdDSA
        }
        // Symmetric keys never verify an upstream's token.
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(issuer: &str) -> Upstream {
        Upstream {
            id: uuid::Uuid::nil(),
            name: "x".into(),
            kind: UpstreamKind::Oidc,
            preset: None,
            label: "X".into(),
            trust_email: false,
            issuer: Some(issuer.into()),
            base_url: None,
            api_url: None,
            client_id: "c".into(),
            scopes: "openid".into(),
            created_at: time::OffsetDateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn an_exact_issuer_matches_only_itself() {
        let r = IssuerRule::of(&up("https://idp.example/realm")).unwrap();
        assert!(r.names_document("https://idp.example/realm"));
        assert!(!r.names_document("https://idp.example/realm/"));
        assert!(!r.names_response("https://evil.example/realm"));
        assert!(r.names_token("https://idp.example/realm", None));
        assert!(!r.names_token("https://idp.example", None));
    }

    #[test]
    fn entra_multi_tenant_tokens_must_name_the_issuer_of_their_own_tenant() {
        let r = IssuerRule::of(&up("https://login.microsoftonline.com/common/v2.0")).unwrap();
        assert!(r.names_document("https://login.microsoftonline.com/{tenantid}/v2.0"));
        assert!(!r.names_document("https://login.microsoftonline.com/common/v2.0"));
        assert!(r.names_document(
            "https://login.microsoftonline.com/9188040d-6c67-4c5b-b112-36a304b66dad/v2.0"
        ));
        let tid = "72f988bf-86f1-41af-91ab-2d7cd011db47";
        let iss = format!("https://login.microsoftonline.com/{tid}/v2.0");
        assert!(r.names_token(&iss, Some(tid)));
        assert!(!r.names_token(&iss, Some("00000000-0000-0000-0000-000000000001")));
        assert!(!r.names_token(&iss, None));
        assert!(r.names_response(&iss));
        assert!(!r.names_response("https://login.microsoftonline.com/evil/v2.0"));
        // A tenant-specific issuer is an exact one.
        let one = IssuerRule::of(&up(&iss)).unwrap();
        assert_eq!(one, IssuerRule::Exact(iss.clone()));
    }

    #[test]
    fn google_tokens_may_name_the_issuer_without_its_scheme() {
        let r = IssuerRule::of(&up("https://accounts.google.com")).unwrap();
        assert!(r.names_token("accounts.google.com", None));
        assert!(r.names_token("https://accounts.google.com", None));
        assert!(!r.names_document("accounts.google.com"));
    }

    #[test]
    fn a_key_is_used_only_with_algorithms_of_its_own_type() {
        let rsa: Jwk = serde_json::from_value(serde_json::json!({
            "kty": "RSA", "kid": "r1", "use": "sig", "n": "AQAB", "e": "AQAB"
        }))
        .unwrap();
        let ec: Jwk = serde_json::from_value(serde_json::json!({
            "kty": "EC", "kid": "e1", "crv": "P-256", "x": "AA", "y": "AA"
        }))
        .unwrap();
        let oct: Jwk = serde_json::from_value(serde_json::json!({
            "kty": "oct", "kid": "s1", "k": "c2VjcmV0"
        }))
        .unwrap();
        let keys = vec![rsa, ec, oct];
        assert!(pick_key(&keys, Some("r1"), Algorithm::RS256).is_some());
        assert!(pick_key(&keys, Some("r1"), Algorithm::PS256).is_some());
        assert!(pick_key(&keys, Some("r1"), Algorithm::ES256).is_none());
        assert!(pick_key(&keys, Some("e1"), Algorithm::ES256).is_some());
        assert!(pick_key(&keys, Some("e1"), Algorithm::ES384).is_none());
        assert!(pick_key(&keys, Some("s1"), Algorithm::HS256).is_none());
        // No kid: only an unambiguous key answers.
        assert!(pick_key(&keys, None, Algorithm::ES256).is_some());
        assert!(pick_key(&keys[..1], None, Algorithm::RS256).is_some());
    }

    #[test]
    fn plain_http_is_spoken_only_to_loopback_in_dev_mode() {
        assert!(transport_ok("https://idp.example/token", false));
        assert!(transport_ok("https://idp.example/token", true));
        assert!(transport_ok("http://127.0.0.1:8080/token", true));
        assert!(transport_ok("http://localhost:8080/token", true));
        assert!(transport_ok("http://[::1]:8080/token", true));
        assert!(!transport_ok("http://127.0.0.1:8080/token", false));
        // An http issuer does not open the door to http endpoints elsewhere.
        assert!(!transport_ok("http://idp.example/token", true));
        assert!(!transport_ok("http://10.0.0.1/token", true));
        assert!(!transport_ok("ftp://idp.example/token", true));
        assert!(!transport_ok("not a url", true));
    }

    #[test]
    fn client_secret_post_only_when_basic_is_not_offered() {
        let mut d = Discovery {
            issuer: "i".into(),
            authorization_endpoint: "a".into(),
            token_endpoint: "t".into(),
            jwks_uri: "j".into(),
            token_endpoint_auth_methods_supported: None,
            authorization_response_iss_parameter_supported: false,
        };
        assert!(!d.secret_in_body());
        d.token_endpoint_auth_methods_supported = Some(vec!["client_secret_post".into()]);
        assert!(d.secret_in_body());
        d.token_endpoint_auth_methods_supported = Some(vec![
            "client_secret_post".into(),
            "client_secret_basic".into(),
        ]);
        assert!(!d.secret_in_body());
    }
}
