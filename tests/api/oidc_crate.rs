//! A relying party built on the `openidconnect` crate (4.x), a client we did not write:
//! discovery, the code flow with PKCE and a nonce, ID token verification by the crate,
//! userinfo and refresh-token rotation, over our own reqwest 0.13 (the crate's bundled
//! reqwest 0.12 is off).

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use openidconnect::core::{
    CoreAuthDisplay, CoreAuthPrompt, CoreAuthenticationFlow, CoreErrorResponseType,
    CoreGenderClaim, CoreJsonWebKey, CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm,
    CoreProviderMetadata, CoreRevocableToken, CoreRevocationErrorResponse,
    CoreTokenIntrospectionResponse, CoreTokenType, CoreUserInfoClaims,
};
use openidconnect::{
    AccessTokenHash, AdditionalClaims, AuthorizationCode, ClientId, ClientSecret, CsrfToken,
    EmptyExtraTokenFields, EndpointMaybeSet, EndpointNotSet, EndpointSet, HttpClientError,
    HttpRequest, HttpResponse, IssuerUrl, Nonce, OAuth2TokenResponse, PkceCodeChallenge,
    RedirectUrl, RequestTokenError, Scope, StandardErrorResponse, StandardTokenResponse,
    TokenResponse,
};
use serde::{Deserialize, Serialize};

use crate::helpers::{Options, spawn_app_with};

const REDIRECT: &str = "http://127.0.0.1:9/cb";
const EMAIL: &str = "alice@example.com";

/// The claims Gatehouse adds beyond OpenID Connect's standard ones (`amr`, `acr`,
/// `auth_time`, `email`… are standard and have getters). Optional so that an ID token
/// from a refresh without `sid` would still parse; the test asserts it is there.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct GatehouseClaims {
    sid: Option<String>,
}
impl AdditionalClaims for GatehouseClaims {}

/// `CoreClient` with `GatehouseClaims` in place of `EmptyAdditionalClaims`, in the
/// endpoint states `from_provider_metadata` returns (auth URL set; token and userinfo
/// URLs "maybe", so their calls return `Result`).
type IdTokenFields = openidconnect::IdTokenFields<
    GatehouseClaims,
    EmptyExtraTokenFields,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;
type Tokens = StandardTokenResponse<IdTokenFields, CoreTokenType>;
type RpClient = openidconnect::Client<
    GatehouseClaims,
    CoreAuthDisplay,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJsonWebKey,
    CoreAuthPrompt,
    StandardErrorResponse<CoreErrorResponseType>,
    Tokens,
    CoreTokenIntrospectionResponse,
    CoreRevocableToken,
    CoreRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// openidconnect's HTTP client, on the tests' reqwest: the crate implements
/// `AsyncHttpClient` for any `Fn(HttpRequest) -> impl Future<Output = Result<HttpResponse, E>>`.
/// `web` must not follow redirects, so that a 3xx from an endpoint reaches the crate.
async fn send(
    web: reqwest::Client,
    request: HttpRequest,
) -> Result<HttpResponse, HttpClientError<reqwest::Error>> {
    let response = web
        .execute(request.try_into().map_err(Box::new)?)
        .await
        .map_err(Box::new)?;
    let (status, version, headers) = (
        response.status(),
        response.version(),
        response.headers().clone(),
    );
    let body = response.bytes().await.map_err(Box::new)?.to_vec();
    let mut out = HttpResponse::new(body);
    *out.status_mut() = status;
    *out.version_mut() = version;
    *out.headers_mut() = headers;
    Ok(out)
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs() as i64
}

/// A JWT's header, decoded without verifying anything.
fn jwt_header(jwt: &str) -> serde_json::Value {
    let part = jwt.split('.').next().unwrap_or_default();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part)
        .expect("the JWT header is base64url");
    serde_json::from_slice(&bytes).expect("the JWT header is JSON")
}

#[tokio::test]
async fn openidconnect_crate_signs_in_with_code_and_pkce_refreshes_and_reads_userinfo() {
    let app = spawn_app_with(Options {
        issuer_is_address: true,
        ..Options::default()
    })
    .await;
    let b = app.signed_in(EMAIL).await;
    let c =
        crate::oauth_helpers::create_client(&app, &["--redirect-uri", REDIRECT, "--first-party"]);
    let (client_id, secret) = (c.id, c.secret);
    let secret = secret.expect("a confidential client has a secret");

    let web = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("reqwest client");
    let http = |request: HttpRequest| send(web.clone(), request);

    // Discovery: the crate compares the document's `issuer` with this string exactly
    // (IssuerUrl::new keeps it as given; from_url would add a trailing slash).
    let issuer = IssuerUrl::new(app.address.clone()).expect("the address is a URL");
    let metadata = CoreProviderMetadata::discover_async(issuer, &http)
        .await
        .unwrap_or_else(|e| panic!("discovery: {e:?}"));
    assert_eq!(metadata.issuer().as_str(), app.address);
    assert!(
        !metadata.jwks().keys().is_empty(),
        "the JWKS has a signing key"
    );

    let client = RpClient::from_provider_metadata(
        metadata,
        ClientId::new(client_id.clone()),
        Some(ClientSecret::new(secret)),
    )
    .set_redirect_uri(RedirectUrl::new(REDIRECT.to_string()).expect("a URL"));

    // The authorization request: code flow, PKCE S256, nonce, state; `openid` is
    // added by the crate.
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let (auth_url, state, nonce) = client
        .authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        )
        .add_scope(Scope::new("email".to_string()))
        .add_scope(Scope::new("offline_access".to_string()))
        .set_pkce_challenge(challenge)
        .set_max_age(Duration::from_secs(300))
        .url();
    assert!(
        auth_url.as_str().starts_with(&app.address),
        "the authorization endpoint is on the issuer: {auth_url}"
    );

    // Signed in, first-party client: straight back to the client with the code.
    let r = b.get(&auth_url[url::Position::BeforePath..]).await;
    assert_eq!(r.status, 303, "{:?} {}", r.location(), r.body);
    let location = r.location();
    assert!(
        location.starts_with(&format!("{REDIRECT}?")),
        "redirected to the client: {location}"
    );
    let params: HashMap<String, String> = url::Url::parse(&location)
        .expect("Location is an absolute URL")
        .query_pairs()
        .into_owned()
        .collect();
    assert!(!params.contains_key("error"), "{params:?}");
    assert_eq!(
        params.get("state"),
        Some(state.secret()),
        "state comes back"
    );
    assert_eq!(params.get("iss"), Some(&app.address), "RFC 9207 iss");
    let code = params.get("code").expect("a code").clone();

    let tokens = client
        .exchange_code(AuthorizationCode::new(code))
        .expect("discovery gave a token endpoint")
        .set_pkce_verifier(verifier)
        .request_async(&http)
        .await
        .unwrap_or_else(|e| panic!("code exchange: {e:?}"));
    assert_eq!(
        jwt_header(tokens.access_token().secret())["typ"],
        "at+jwt",
        "RFC 9068 access token"
    );

    // The crate checks the signature (RS256 from the JWKS), iss, aud, exp, iat and the
    // nonce; auth_time against max_age is ours to check, and azp it leaves to us.
    let id_verifier = client
        .id_token_verifier()
        .set_auth_time_verifier_fn(|auth_time| match auth_time {
            Some(t) if now() - t.timestamp() <= 300 => Ok(()),
            Some(t) => Err(format!("auth_time {t} is older than max_age")),
            None => Err("max_age was sent but there is no auth_time".to_string()),
        });
    let id_token = tokens.id_token().expect("scope openid gives an ID token");
    let claims = id_token
        .claims(&id_verifier, &nonce)
        .unwrap_or_else(|e| panic!("ID token: {e:?}"));
    let sub = claims.subject().clone();
    assert!(!sub.as_str().is_empty());
    assert_ne!(sub.as_str(), EMAIL, "sub is an opaque id");
    assert_eq!(claims.email().map(|e| e.as_str()), Some(EMAIL));
    assert!(claims.email_verified().is_some(), "scope email");
    assert_eq!(
        claims
            .audiences()
            .iter()
            .map(|a| a.as_str())
            .collect::<Vec<_>>(),
        [client_id.as_str()]
    );
    assert_eq!(
        claims.authorized_party().map(|c| c.as_str()),
        Some(client_id.as_str())
    );
    let amr: Vec<&str> = claims
        .auth_method_refs()
        .expect("amr")
        .iter()
        .map(|m| m.as_str())
        .collect();
    assert!(amr.contains(&"pwd"), "signed in with a password: {amr:?}");
    assert!(claims.auth_context_ref().is_some(), "acr");
    let sid = claims
        .additional_claims()
        .sid
        .clone()
        .expect("the ID token names the session");
    assert!(!sid.is_empty());
    let at_hash = AccessTokenHash::from_token(
        tokens.access_token(),
        id_token.signing_alg().expect("signed"),
        id_token.signing_key(&id_verifier).expect("key in the JWKS"),
    )
    .expect("RS256 hashes");
    assert_eq!(claims.access_token_hash(), Some(&at_hash), "at_hash");

    // Userinfo; the crate checks its sub against the ID token's.
    let info: CoreUserInfoClaims = client
        .user_info(tokens.access_token().clone(), Some(sub.clone()))
        .expect("discovery gave a userinfo endpoint")
        .request_async(&http)
        .await
        .unwrap_or_else(|e| panic!("userinfo: {e:?}"));
    assert_eq!(info.email().map(|e| e.as_str()), Some(EMAIL));

    // Refresh: a new access token and a rotated refresh token.
    let old_refresh = tokens
        .refresh_token()
        .expect("offline_access gives a refresh token");
    let renewed = client
        .exchange_refresh_token(old_refresh)
        .expect("token endpoint")
        .request_async(&http)
        .await
        .unwrap_or_else(|e| panic!("refresh: {e:?}"));
    assert_ne!(
        renewed.access_token().secret(),
        tokens.access_token().secret()
    );
    let new_refresh = renewed.refresh_token().expect("rotation issues a new one");
    assert_ne!(new_refresh.secret(), old_refresh.secret(), "rotated");
    if let Some(id_token) = renewed.id_token() {
        // A refreshed ID token carries no nonce (OIDC Core 12.2) but the same subject.
        let again = id_token
            .claims(&id_verifier, |_: Option<&Nonce>| Ok(()))
            .unwrap_or_else(|e| panic!("refreshed ID token: {e:?}"));
        assert_eq!(again.subject(), &sub);
    }

    // Replaying the rotated-out token is refused, and takes the family with it.
    for (what, token) in [("replayed", old_refresh), ("same family", new_refresh)] {
        match client
            .exchange_refresh_token(token)
            .expect("token endpoint")
            .request_async(&http)
            .await
        {
            Err(RequestTokenError::ServerResponse(e)) => {
                assert_eq!(
                    *e.error(),
                    CoreErrorResponseType::InvalidGrant,
                    "{what}: {e:?}"
                )
            }
            other => panic!("{what} refresh token: expected invalid_grant, got {other:?}"),
        }
    }
}
