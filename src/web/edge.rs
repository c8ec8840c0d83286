//! The edge middleware: the one place that every request and response passes.
//! Refuses malformed requests before routing, gives each request a CSP nonce, renders
//! error responses as pages, applies queued cookie changes, sets security headers,
//! and records metrics and a log line.

use std::time::Instant;

use actix_web::body::{BoxBody, MessageBody};
use actix_web::cookie::Cookie;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::{Method, StatusCode, header};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};
use askama::Template;

use crate::crypto;
use crate::error::{AppError, ErrorPage};
use crate::metrics::method_label;
use crate::state::AppState;
use crate::web::forms::{check_urlencoded, decode_strict};
use crate::web::pages::ErrorTemplate;
use crate::web::{Errors, RouteInfo};
use actix_web::ResponseError;

/// Cookie headers above this are refused with 431 (DESIGN.md "Limits").
pub const COOKIE_HEADER_LIMIT: usize = 8 * 1024;

/// Per-request nonce for `script-src` (CSP Level 3 §6.6.3.1).
#[derive(Clone, Debug)]
pub struct CspNonce(pub String);

/// Cookies to set on whatever response this request ends in.
#[derive(Default)]
struct QueuedCookies(Vec<Cookie<'static>>);

/// Queues a cookie for the response (used by extractors, which cannot touch it).
/// A cookie of the same name set by the handler itself wins.
pub fn queue_cookie(req: &HttpRequest, cookie: Cookie<'static>) {
    let mut ext = req.extensions_mut();
    match ext.get_mut::<QueuedCookies>() {
        Some(q) => q.0.push(cookie),
        None => {
            ext.insert(QueuedCookies(vec![cookie]));
        }
    }
}

/// The route-table row a request matched, found once by the edge middleware.
#[derive(Clone, Copy)]
struct MatchedRoute(Option<&'static RouteInfo>);

/// The route-table row of a request (its policy: access, errors, forms, load), or
/// `None` for a path no route answers.
pub fn route_of(req: &HttpRequest) -> Option<&'static RouteInfo> {
    if let Some(MatchedRoute(route)) = req.extensions().get::<MatchedRoute>() {
        return *route;
    }
    RouteInfo::of(req)
}

fn early_rejection(req: &ServiceRequest) -> Option<StatusCode> {
    if [Method::TRACE, Method::CONNECT].contains(req.method()) || req.method().as_str() == "TRACK" {
        return Some(StatusCode::METHOD_NOT_ALLOWED);
    }
    let cookie_bytes: usize = req.headers().get_all(header::COOKIE).map(|v| v.len()).sum();
    if cookie_bytes > COOKIE_HEADER_LIMIT {
        return Some(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    }
    // A path or query that does not decode cleanly is refused before any routing or
    // authentication decision is made (Authelia CVE-2021-32637 failed open here).
    let path = req.uri().path().as_bytes();
    if decode_strict(path, false).is_err() || path.contains(&b'\\') {
        return Some(StatusCode::BAD_REQUEST);
    }
    if check_urlencoded(req.query_string().as_bytes()).is_err() {
        return Some(StatusCode::BAD_REQUEST);
    }
    None
}

/// A request in progress, counted against `GATEHOUSE_HTTP_MAX_IN_FLIGHT` until it is
/// dropped (answered, failed or cancelled alike).
struct InFlight(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl InFlight {
    /// A place, or `None` when the node is at its bound.
    fn enter(state: &AppState) -> Option<Self> {
        use std::sync::atomic::Ordering;
        let max = usize::try_from(state.settings.http_max_in_flight).unwrap_or(usize::MAX);
        let counter = state.in_flight.clone();
        if counter.fetch_add(1, Ordering::AcqRel) >= max {
            counter.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Self(counter))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

pub async fn edge(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let started = Instant::now();
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let nonce = CspNonce(crypto::random_token());
    let method = req.method().to_string();
    let label = method_label(&method);

    // The route's policy, read once: every decision below and the extractors use it.
    let route = RouteInfo::of(req.request());
    req.extensions_mut().insert(MatchedRoute(route));
    // Beyond the bound of requests in progress the answer is 503 at once, never a
    // queue of seconds; the operational endpoints are always answered.
    let slot = state
        .as_ref()
        .filter(|_| !route.is_some_and(|r| r.operational))
        .map(|s| InFlight::enter(s));
    let response = match (early_rejection(&req), slot) {
        (_, Some(None)) => req.into_response(AppError::Busy.error_response()),
        (Some(status), _) => {
            let mut res = HttpResponse::new(status);
            res.extensions_mut().insert(ErrorPage::for_status(status));
            req.into_response(res)
        }
        (None, _slot) => {
            req.extensions_mut().insert(nonce.clone());
            next.call(req).await?.map_into_boxed_body()
        }
    };
    let Some(state) = state else {
        return Ok(response);
    };
    // Why an error answered, as a code (never its message: it may quote the input).
    let reason = response
        .response()
        .extensions()
        .get::<ErrorPage>()
        .map(|p| p.reason);
    let mut response = render_error_page(response, &state, &nonce);
    apply_queued_cookies(&mut response);
    set_security_headers(&mut response, &state, &nonce);

    let route = response
        .request()
        .match_pattern()
        .unwrap_or_else(|| "unmatched".into());
    let status = response.status();
    let elapsed = started.elapsed();
    state
        .metrics
        .http_requests
        .with_label_values(&[route.as_str(), label, status.as_str()])
        .inc();
    state
        .metrics
        .http_duration
        .with_label_values(&[route.as_str(), label])
        .observe(elapsed.as_secs_f64());
    // Route pattern, never the raw path or query: those can carry tokens.
    tracing::info!(
        method = label,
        route = %route,
        status = status.as_u16(),
        reason,
        ms = elapsed.as_secs_f64() * 1000.0,
        "request"
    );
    Ok(response)
}

/// How an error is told to the caller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Representation {
    /// The site's error page, for a person.
    Html,
    /// `{"error": …, "error_description": …}` (RFC 6749 §5.2), on the OAuth
    /// endpoints that machines call.
    OAuth,
    /// `application/problem+json` (RFC 9457), for other machine callers.
    Problem,
}

/// Decides, in one place, who is asking, from the route table's `Errors`: OAuth
/// endpoints called by machines get RFC 6749 errors; discovery documents, keys and
/// ceremonies get problem details; elsewhere a caller that prefers JSON over HTML
/// (`Accept`) gets problem details and everyone else a page.
pub fn representation(req: &HttpRequest) -> Representation {
    let accept = req
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let errors = route_of(req)
        .map(|r| r.errors)
        .or_else(|| unrouted_errors(req.path()));
    representation_for(errors, accept)
}

/// A path no route answers still gets the error shape of its family: machines call
/// anything under `/oauth2/` (but its pages), `/.well-known/` and `/webauthn/`.
fn unrouted_errors(path: &str) -> Option<Errors> {
    if path.starts_with("/oauth2/") {
        Some(Errors::OAuth)
    } else if path.starts_with("/.well-known/") || path.starts_with("/webauthn/") {
        Some(Errors::Problem)
    } else {
        None
    }
}

fn representation_for(errors: Option<Errors>, accept: &str) -> Representation {
    match errors {
        Some(Errors::OAuth) => Representation::OAuth,
        Some(Errors::Problem) => Representation::Problem,
        Some(Errors::Page) | None if prefers_json(accept) => Representation::Problem,
        Some(Errors::Page) | None => Representation::Html,
    }
}

/// Whether an `Accept` header ranks a JSON type above HTML (RFC 9110 §12.5.1),
/// quality values included; `*/*` and absent headers mean a page.
fn prefers_json(accept: &str) -> bool {
    let mut json = 0.0f32;
    let mut html = 0.0f32;
    for item in accept.split(',') {
        let mut parts = item.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        match media.as_str() {
            "application/json" | "application/problem+json" => json = json.max(q),
            "text/html" | "application/xhtml+xml" => html = html.max(q),
            _ => {}
        }
    }
    json > 0.0 && json > html
}

/// Error responses become the site's error page (or JSON, see `representation`),
/// unless a handler already rendered a body itself.
fn render_error_page(
    res: ServiceResponse<BoxBody>,
    state: &AppState,
    nonce: &CspNonce,
) -> ServiceResponse<BoxBody> {
    let status = res.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return res;
    }
    let marked = res.response().extensions().get::<ErrorPage>().cloned();
    let page = match marked {
        Some(page) => page,
        None if !res.headers().contains_key(header::CONTENT_TYPE) => ErrorPage::for_status(status),
        None => return res,
    };
    let kind = representation(res.request());
    let (content_type, body) = match kind {
        Representation::Html => {
            let mut template = ErrorTemplate::new(state, nonce, page.title, &page.message, status);
            template.action = page.action.as_ref().map(|(l, h)| (*l, h.as_str()));
            let Ok(html) = template.render() else {
                return res;
            };
            ("text/html; charset=utf-8", html)
        }
        Representation::OAuth => (
            "application/json",
            serde_json::json!({
                "error": page.oauth_code(status),
                "error_description": page.message,
            })
            .to_string(),
        ),
        Representation::Problem => (
            "application/problem+json",
            serde_json::json!({
                "type": "about:blank",
                "title": page.title,
                "status": status.as_u16(),
                "detail": page.message,
            })
            .to_string(),
        ),
    };
    let (req, old) = res.into_parts();
    let mut new = HttpResponse::build(status);
    for (name, value) in old.headers() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            new.append_header((name.clone(), value.clone()));
        }
    }
    // RFC 6749 §5.2: a 401 from an endpoint that authenticates clients names the
    // scheme it expects.
    if kind == Representation::OAuth
        && status == StatusCode::UNAUTHORIZED
        && !old.headers().contains_key(header::WWW_AUTHENTICATE)
    {
        new.insert_header((header::WWW_AUTHENTICATE, "Basic realm=\"gatehouse\""));
    }
    let new = new.content_type(content_type).body(body);
    ServiceResponse::new(req, new)
}

fn apply_queued_cookies(res: &mut ServiceResponse<BoxBody>) {
    let queued = res.request().extensions_mut().remove::<QueuedCookies>();
    let Some(QueuedCookies(cookies)) = queued else {
        return;
    };
    let already: Vec<String> = res
        .response()
        .cookies()
        .map(|c| c.name().to_string())
        .collect();
    for cookie in cookies {
        if !already.iter().any(|n| n == cookie.name()) {
            let _ = res.response_mut().add_cookie(&cookie);
        }
    }
}

fn set_security_headers(res: &mut ServiceResponse<BoxBody>, state: &AppState, nonce: &CspNonce) {
    // A form that may end in a redirect to an application (the route table's
    // `leaves_site`) must not restrict `form-action`: Chrome applies it to every
    // redirect that follows a form POST.
    let form_action = if route_of(res.request()).is_some_and(|r| r.leaves_site) {
        ""
    } else {
        " form-action 'self';"
    };
    let is_html = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html"));
    let sets_cookie = res.headers().contains_key(header::SET_COOKIE);
    let h = res.headers_mut();
    // Scripts only with this response's nonce; no plugins; no <base> hijack; no framing
    // (clickjacking, ASVS 3.4.6).
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_str(&format!(
            "default-src 'self'; script-src 'nonce-{}'; style-src 'self'; img-src 'self' data:; \
             object-src 'none'; base-uri 'none'; frame-ancestors 'none';{form_action}",
            nonce.0
        ))
        .unwrap_or(header::HeaderValue::from_static("default-src 'none'")),
    );
    // Browsers must not guess content types (a JSON error rendered as HTML, say).
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    // Tokens in URLs (links in mail, OAuth) never leak to other sites via Referer.
    h.insert(
        header::REFERRER_POLICY,
        header::HeaderValue::from_static("no-referrer"),
    );
    // Legacy twin of frame-ancestors for browsers without CSP 2.
    h.insert(
        header::X_FRAME_OPTIONS,
        header::HeaderValue::from_static("DENY"),
    );
    // No other window may keep a handle on ours.
    h.insert(
        header::HeaderName::from_static("cross-origin-opener-policy"),
        header::HeaderValue::from_static("same-origin"),
    );
    // HTTPS only, for a year, subdomains included; not in dev mode, where plain HTTP
    // on localhost is allowed and HSTS would break other local sites.
    if !state.settings.dev {
        h.insert(
            header::STRICT_TRANSPORT_SECURITY,
            header::HeaderValue::from_static("max-age=31536000; includeSubDomains"),
        );
    }
    // Pages with forms or personal data, and anything setting a cookie, must not be
    // stored by browsers or proxies (ASVS 14.3.2; RFC 6749 §5.1 for tokens).
    if (is_html || sets_cookie) && !h.contains_key(header::CACHE_CONTROL) {
        h.insert(
            header::CACHE_CONTROL,
            header::HeaderValue::from_static("no-store"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machines_get_json_and_people_get_pages() {
        let rep = |path: &str, accept: &str| {
            representation_for(RouteInfo::of_pattern(path).map(|r| r.errors), accept)
        };
        assert_eq!(rep("/oauth2/token", ""), Representation::OAuth);
        assert_eq!(
            rep("/oauth2/introspect", "text/html"),
            Representation::OAuth
        );
        assert_eq!(rep("/oauth2/authorize", ""), Representation::Html);
        assert_eq!(
            rep("/.well-known/openid-configuration", ""),
            Representation::Problem
        );
        assert_eq!(
            rep("/webauthn/sign-in", "text/html"),
            Representation::Problem
        );
        assert_eq!(rep("/account", ""), Representation::Html);
        assert_eq!(rep("/account", "*/*"), Representation::Html);
        assert_eq!(rep("/account", "application/json"), Representation::Problem);
        assert_eq!(
            rep(
                "/account",
                "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
            ),
            Representation::Html
        );
        assert_eq!(
            rep("/account", "text/html;q=0.5, application/json"),
            Representation::Problem
        );
        assert_eq!(rep("/no/such/page", ""), Representation::Html);
        let unrouted = |path: &str| representation_for(unrouted_errors(path), "");
        assert_eq!(unrouted("/oauth2/nothing"), Representation::OAuth);
        assert_eq!(
            unrouted("/.well-known/oauth-protected-resource"),
            Representation::Problem
        );
        assert_eq!(unrouted("/webauthn/nothing"), Representation::Problem);
        assert_eq!(unrouted("/nothing"), Representation::Html);
    }

    #[test]
    fn pages_whose_forms_lead_to_apps_are_marked_in_the_route_table() {
        let leaves: Vec<_> = crate::web::ROUTES
            .iter()
            .filter(|r| r.leaves_site)
            .map(|r| r.path)
            .collect();
        for path in [
            "/login",
            "/login/verify",
            "/step-up",
            "/oauth2/authorize",
            "/oauth2/consent",
            "/oauth2/logout",
        ] {
            assert!(leaves.contains(&path), "{path} must allow any form-action");
        }
        assert!(!leaves.contains(&"/account/password"));
        // Their "Continue with …" and "Connect" forms lead to an upstream.
        for path in [
            "/register",
            "/login/upstream/{name}",
            "/account/connections",
        ] {
            assert!(leaves.contains(&path), "{path} must allow any form-action");
        }
        let operational: Vec<_> = crate::web::ROUTES
            .iter()
            .filter(|r| r.operational)
            .map(|r| r.path)
            .collect();
        assert_eq!(operational, ["/healthz", "/readyz", "/metrics"]);
    }
}
