//! Extractors: everything a handler needs from a request, checked once here.

use std::net::IpAddr;

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{FromRequest, HttpMessage, HttpRequest, web};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::StreamExt;
use futures_util::future::LocalBoxFuture;
use serde::de::DeserializeOwned;

use crate::auth::RequestContext;
use crate::auth::sessions;
use crate::crypto;
use crate::domain::SessionToken;
use crate::error::AppError;
use crate::state::AppState;
use crate::store::SessionRecord;
use crate::web::edge::{CspNonce, Representation, queue_cookie, representation};

/// Form and JSON bodies larger than this are refused with 413 (DESIGN.md "Limits").
pub const BODY_LIMIT: usize = 64 * 1024;

fn state(req: &HttpRequest) -> Result<web::Data<AppState>, AppError> {
    req.app_data::<web::Data<AppState>>()
        .cloned()
        .ok_or_else(|| AppError::Unexpected(anyhow::anyhow!("application state missing")))
}

/// The client's address (checklist M8, Apereo CAS CVE-2023-4612). `X-Forwarded-For`
/// and `Forwarded` are believed only when the direct peer is in
/// `GATEHOUSE_TRUSTED_PROXIES`, and then read right to left, hop by hop: each trusted
/// proxy vouches for the entry to its left, so the first address that is not a
/// trusted proxy is the client. An entry that does not parse (garbage, `unknown`, an
/// obfuscated name) ends the walk, and the client is the last address that did parse
/// (the socket peer if none): an entry further left is whatever the client wrote.
/// Entries may carry ports (`203.0.113.9:4711`, `"[2001:db8::1]:4711"`).
///
/// One rule decides between the two headers: `X-Forwarded-For` when the request
/// has it, `Forwarded` (RFC 7239) only when it does not. Most proxies write
/// `X-Forwarded-For` and pass a client's own `Forwarded` header through untouched,
/// so preferring `Forwarded` would let any client choose its address behind them; a
/// proxy that writes `Forwarded` must drop a client-sent `X-Forwarded-For` (README).
pub fn client_ip(req: &HttpRequest, trusted: &[ipnet::IpNet]) -> IpAddr {
    use forwarded_header_value::{ForwardedStanza, Identifier};

    let peer = req
        .peer_addr()
        .map(|a| a.ip())
        .unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let joined = |name: header::HeaderName| -> Option<String> {
        let values: Vec<&str> = req
            .headers()
            .get_all(name)
            .map(|v| v.to_str().unwrap_or("\u{0}"))
            .collect();
        (!values.is_empty()).then(|| values.join(","))
    };
    // Each hop as the walk sees it: an address, or `None` for an entry that does not
    // parse as one.
    let hops: Vec<Option<IpAddr>> =
        if let Some(xff) = joined(header::HeaderName::from_static("x-forwarded-for")) {
            xff.split(',')
                .map(|entry| entry.parse::<Identifier>().ok().and_then(|id| id.ip()))
                .collect()
        } else if let Some(fwd) = joined(header::FORWARDED) {
            fwd.split(',')
                .map(|element| {
                    element
                        .parse::<ForwardedStanza>()
                        .ok()
                        .and_then(|s| s.forwarded_for_ip())
                })
                .collect()
        } else {
            return peer;
        };
    let mut client = peer;
    for hop in hops.into_iter().rev() {
        match hop {
            None => return client,
            Some(ip) if !is_trusted(&ip) => return ip,
            Some(ip) => client = ip,
        }
    }
    client
}

impl FromRequest for RequestContext {
    type Error = AppError;
    type Future = std::future::Ready<Result<Self, AppError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        std::future::ready(state(req).map(|state| {
            RequestContext {
                ip: client_ip(req, &state.settings.trusted_proxies),
                user_agent: req
                    .headers()
                    .get(header::USER_AGENT)
                    .and_then(|v| v.to_str().ok())
                    .map(|s| s.chars().take(512).collect()),
            }
        }))
    }
}

/// The signed-in session, if the request carries a live one.
#[derive(Clone)]
pub struct MaybeSession(pub Option<SessionRecord>);

/// Cached per request so that several extractors share one database read.
#[derive(Clone)]
struct SessionLookup {
    session: Option<SessionRecord>,
    token_hash: Option<Vec<u8>>,
}

async fn lookup(req: &HttpRequest) -> Result<SessionLookup, AppError> {
    if let Some(found) = req.extensions().get::<SessionLookup>() {
        return Ok(found.clone());
    }
    let state = state(req)?;
    let policy = &state.cookies;
    let found = match req.cookie(policy.session_name) {
        None => SessionLookup {
            session: None,
            token_hash: None,
        },
        Some(cookie) => match SessionToken::parse(cookie.value()) {
            // A value we never issued is not even looked up; the cookie is cleared.
            None => {
                queue_cookie(req, policy.clear_session());
                SessionLookup {
                    session: None,
                    token_hash: None,
                }
            }
            Some(token) => match sessions::authenticate(&state, &token).await? {
                Some(record) => SessionLookup {
                    session: Some(record),
                    token_hash: Some(token.hash()),
                },
                None => {
                    // Revoked, expired or the user disabled: signed out, cookie cleared.
                    queue_cookie(req, policy.clear_session());
                    SessionLookup {
                        session: None,
                        token_hash: None,
                    }
                }
            },
        },
    };
    req.extensions_mut().insert(found.clone());
    Ok(found)
}

impl FromRequest for MaybeSession {
    type Error = AppError;
    type Future = LocalBoxFuture<'static, Result<Self, AppError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move { Ok(MaybeSession(lookup(&req).await?.session)) })
    }
}

/// A signed-in session. Without one, a person's page visit (GET) is sent to sign in
/// and back (303 to `/login?return_to=…`); anything else — a form POST, a JSON
/// caller — gets 401, since a POST is never replayed after signing in.
pub struct CurrentSession(pub SessionRecord);

impl FromRequest for CurrentSession {
    type Error = AppError;
    type Future = LocalBoxFuture<'static, Result<Self, AppError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            if let Some(session) = lookup(&req).await?.session {
                return Ok(CurrentSession(session));
            }
            let page_visit = matches!(
                *req.method(),
                actix_web::http::Method::GET | actix_web::http::Method::HEAD
            ) && representation(&req) == Representation::Html;
            if page_visit {
                let return_to = match req.query_string() {
                    "" => req.path().to_string(),
                    q => format!("{}?{q}", req.path()),
                };
                return Err(AppError::SignInRequired { return_to });
            }
            Err(AppError::Unauthorized)
        })
    }
}

/// CSRF protection for forms: a token bound to the session (or, before sign-in, to a
/// short-lived pre-session cookie), plus an `Origin` / `Sec-Fetch-Site` check on every
/// unsafe request. A token is an HMAC, so nothing needs storing.
pub struct Csrf {
    expected: Option<String>,
}

impl Csrf {
    pub fn token(&self) -> &str {
        self.expected.as_deref().unwrap_or("")
    }

    /// Compares in constant time; a missing or wrong token is 403 and nothing happens.
    pub fn verify(&self, submitted: &str) -> Result<(), AppError> {
        match &self.expected {
            Some(expected) if crypto::constant_time_eq(expected.as_bytes(), submitted.as_bytes()) => Ok(()),
            _ => Err(AppError::Forbidden(
                "This form has expired or did not come from this site. Go back, reload the page and try again.".into(),
            )),
        }
    }
}

fn csrf_token(state: &AppState, purpose: &str, binding: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(state.keys.mac(purpose, binding))
}

/// Refuses cross-site unsafe requests by the browser's own word (Fetch Metadata and
/// `Origin`); requests without either header (old browsers, tools) rely on the token.
pub fn check_origin(req: &HttpRequest, state: &AppState) -> Result<(), AppError> {
    if req.method().is_safe() {
        return Ok(());
    }
    if let Some(site) = req.headers().get("sec-fetch-site") {
        let site = site.to_str().unwrap_or("");
        if site != "same-origin" && site != "none" {
            return Err(AppError::Forbidden(
                "Cross-site form submissions are refused.".into(),
            ));
        }
    }
    if let Some(origin) = req.headers().get(header::ORIGIN)
        && origin.to_str().unwrap_or("") != state.settings.public_origin()
    {
        return Err(AppError::Forbidden(format!(
            "This form was sent from another site. Gatehouse accepts forms only from {}.",
            state.settings.public_origin()
        )));
    }
    Ok(())
}

impl FromRequest for Csrf {
    type Error = AppError;
    type Future = LocalBoxFuture<'static, Result<Self, AppError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            let state = state(&req)?;
            check_origin(&req, &state)?;
            let found = lookup(&req).await?;
            if let Some(hash) = &found.token_hash {
                return Ok(Csrf {
                    expected: Some(csrf_token(&state, "csrf/session", hash)),
                });
            }
            let policy = &state.cookies;
            let pre = req
                .cookie(policy.pre_session_name)
                .map(|c| c.value().to_string())
                .filter(|v| SessionToken::parse(v).is_some());
            match pre {
                Some(value) => Ok(Csrf {
                    expected: Some(csrf_token(&state, "csrf/pre-session", value.as_bytes())),
                }),
                // A page view starts a pre-session; a POST without one can only fail.
                None if req.method().is_safe() => {
                    let value = crypto::random_token();
                    queue_cookie(&req, policy.pre_session_cookie(value.clone()));
                    Ok(Csrf {
                        expected: Some(csrf_token(&state, "csrf/pre-session", value.as_bytes())),
                    })
                }
                None => Ok(Csrf { expected: None }),
            }
        })
    }
}

impl FromRequest for CspNonce {
    type Error = AppError;
    type Future = std::future::Ready<Result<Self, AppError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        std::future::ready(
            req.extensions()
                .get::<CspNonce>()
                .cloned()
                .ok_or_else(|| AppError::Unexpected(anyhow::anyhow!("CSP nonce missing"))),
        )
    }
}

/// Decodes one percent-encoded component strictly: every `%` starts a two-digit hex
/// escape, the result is UTF-8, and it holds no NUL or other control characters (tab
/// and newlines aside). Malformed input fails closed instead of being decoded
/// leniently (checklist H2, H3).
pub fn decode_strict(raw: &[u8], plus_as_space: bool) -> Result<String, AppError> {
    let bad = || AppError::Validation("The request was malformed.".into());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' {
            let ok = raw.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && raw.get(i + 2).is_some_and(u8::is_ascii_hexdigit);
            if !ok {
                return Err(bad());
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    let bytes: Vec<u8> = if plus_as_space {
        raw.iter()
            .map(|b| if *b == b'+' { b' ' } else { *b })
            .collect()
    } else {
        raw.to_vec()
    };
    let text = percent_encoding::percent_decode(&bytes)
        .decode_utf8()
        .map_err(|_| bad())?
        .into_owned();
    if text
        .chars()
        .any(|c| c.is_control() && !matches!(c, '\t' | '\n' | '\r'))
    {
        return Err(bad());
    }
    Ok(text)
}

/// Checks that `bytes` is well-formed `application/x-www-form-urlencoded` (each name
/// and value as `decode_strict`) and that no name repeats (duplicated parameters are
/// ambiguous; RFC 6749 §3.1 refuses them).
pub fn check_urlencoded(bytes: &[u8]) -> Result<(), AppError> {
    let mut names: Vec<String> = Vec::new();
    for pair in bytes.split(|b| *b == b'&').filter(|p| !p.is_empty()) {
        let mut parts = pair.splitn(2, |b| *b == b'=');
        let name = decode_strict(parts.next().unwrap_or_default(), true)?;
        decode_strict(parts.next().unwrap_or_default(), true)?;
        if names.contains(&name) {
            return Err(AppError::Validation("A form field was sent twice.".into()));
        }
        names.push(name);
    }
    Ok(())
}

/// A urlencoded form body, read with a size cap and parsed strictly.
pub struct StrictForm<T>(pub T);

impl<T: DeserializeOwned + 'static> FromRequest for StrictForm<T> {
    type Error = AppError;
    type Future = LocalBoxFuture<'static, Result<Self, AppError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let content_type_ok = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|essence| {
                essence
                    .trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            });
        let declared_len = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        let mut payload = payload.take();
        Box::pin(async move {
            if !content_type_ok {
                return Err(AppError::UnsupportedMediaType);
            }
            if declared_len.is_some_and(|n| n > BODY_LIMIT) {
                return Err(AppError::PayloadTooLarge);
            }
            // Chunked bodies have no length up front: count as they arrive.
            let mut body = web::BytesMut::new();
            while let Some(chunk) = payload.next().await {
                let chunk = chunk.map_err(|_| {
                    AppError::Validation("The request body could not be read.".into())
                })?;
                if body.len() + chunk.len() > BODY_LIMIT {
                    return Err(AppError::PayloadTooLarge);
                }
                body.extend_from_slice(&chunk);
            }
            check_urlencoded(&body)?;
            serde_urlencoded::from_bytes::<T>(&body)
                .map(StrictForm)
                .map_err(|_| AppError::Validation("The form was incomplete or malformed.".into()))
        })
    }
}

/// A query string parsed as strictly as `StrictForm`.
pub struct StrictQuery<T>(pub T);

impl<T: DeserializeOwned> FromRequest for StrictQuery<T> {
    type Error = AppError;
    type Future = std::future::Ready<Result<Self, AppError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let q = req.query_string().as_bytes();
        std::future::ready(check_urlencoded(q).and_then(|()| {
            serde_urlencoded::from_bytes::<T>(q)
                .map(StrictQuery)
                .map_err(|_| AppError::Validation("The address had malformed parameters.".into()))
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn strict_forms_refuse_bad_escapes_nul_and_duplicates() {
        assert!(check_urlencoded(b"email=a%40b.com&password=p+w%C3%A9").is_ok());
        assert!(check_urlencoded(b"").is_ok());
        for bad in [
            &b"email=%zz"[..],
            b"email=%c0%af",
            b"email=a%00",
            b"email=%4",
            b"a=1&a=2",
            b"e=%e2%82",
        ] {
            assert!(
                check_urlencoded(bad).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn forwarded_headers_count_only_from_trusted_proxies() {
        let proxies: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let direct = TestRequest::default()
            .peer_addr("203.0.113.7:5000".parse().unwrap())
            .insert_header(("x-forwarded-for", "198.51.100.1"))
            .to_http_request();
        assert_eq!(client_ip(&direct, &proxies).to_string(), "203.0.113.7");
        let proxied = TestRequest::default()
            .peer_addr("10.0.0.2:5000".parse().unwrap())
            .insert_header(("x-forwarded-for", "1.2.3.4, 198.51.100.1, 10.0.0.9"))
            .to_http_request();
        assert_eq!(client_ip(&proxied, &proxies).to_string(), "198.51.100.1");
        let forwarded = TestRequest::default()
            .peer_addr("10.0.0.2:5000".parse().unwrap())
            .insert_header(("forwarded", "for=\"[2001:db8::1]:4711\";proto=https"))
            .to_http_request();
        assert_eq!(client_ip(&forwarded, &proxies).to_string(), "2001:db8::1");
    }

    fn via_proxy(headers: &[(&str, &str)]) -> String {
        let proxies: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut r = TestRequest::default().peer_addr("10.0.0.2:5000".parse().unwrap());
        for (k, v) in headers {
            r = r.append_header((*k, *v));
        }
        client_ip(&r.to_http_request(), &proxies).to_string()
    }

    #[test]
    fn unparsable_forwarded_entries_end_the_walk_and_never_let_a_left_entry_win() {
        // Defect 3: `ip:port`, `[v6]:port` and garbage no longer fail open.
        assert_eq!(
            via_proxy(&[("x-forwarded-for", "1.2.3.4, 198.51.100.1:4711")]),
            "198.51.100.1"
        );
        assert_eq!(
            via_proxy(&[("x-forwarded-for", "1.2.3.4, [2001:db8::7]:4711, 10.0.0.9")]),
            "2001:db8::7"
        );
        // Garbage written by the client between its spoof and the proxy's entry: the
        // walk stops at the last address that parsed (a trusted proxy here), never
        // reaching the spoof on the left.
        assert_eq!(
            via_proxy(&[("x-forwarded-for", "1.2.3.4, garbage, 10.0.0.9")]),
            "10.0.0.9"
        );
        assert_eq!(
            via_proxy(&[("x-forwarded-for", "1.2.3.4, unknown")]),
            "10.0.0.2"
        );
        assert_eq!(via_proxy(&[("x-forwarded-for", "1.2.3.4, ")]), "10.0.0.2");
        // Every hop trusted: the left-most one is the client.
        assert_eq!(
            via_proxy(&[("x-forwarded-for", "10.1.1.1, 10.0.0.9")]),
            "10.1.1.1"
        );
        // Two header lines are one list, in order.
        assert_eq!(
            via_proxy(&[
                ("x-forwarded-for", "1.2.3.4"),
                ("x-forwarded-for", "198.51.100.3")
            ]),
            "198.51.100.3"
        );
    }

    #[test]
    fn forwarded_is_walked_the_same_way_and_x_forwarded_for_wins_when_both_come() {
        assert_eq!(
            via_proxy(&[(
                "forwarded",
                "for=1.2.3.4, for=198.51.100.2;proto=https, for=10.0.0.9"
            )]),
            "198.51.100.2"
        );
        assert_eq!(
            via_proxy(&[("forwarded", "for=1.2.3.4, for=_hidden, for=10.0.0.9")]),
            "10.0.0.9"
        );
        assert_eq!(
            via_proxy(&[("forwarded", "for=1.2.3.4, nonsense")]),
            "10.0.0.2"
        );
        assert_eq!(
            via_proxy(&[
                ("forwarded", "for=1.2.3.4"),
                ("x-forwarded-for", "198.51.100.5"),
            ]),
            "198.51.100.5",
            "one documented rule: X-Forwarded-For wins"
        );
    }
}
