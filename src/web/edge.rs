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
use crate::error::ErrorPage;
use crate::startup::AppState;
use crate::web::extract::{check_urlencoded, decode_strict};
use crate::web::pages::ErrorTemplate;

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

/// Marks a response whose page must not restrict `form-action`: Chrome applies
/// form-action to the redirects that follow a form POST, and a sign-in may end in a
/// redirect to an application.
#[derive(Clone, Copy)]
pub struct AllowAnyFormAction;

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

pub async fn edge(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let started = Instant::now();
    let state = req.app_data::<web::Data<AppState>>().cloned();
    let nonce = CspNonce(crypto::random_token());
    let method = req.method().to_string();

    let response = match early_rejection(&req) {
        Some(status) => {
            let mut res = HttpResponse::new(status);
            res.extensions_mut().insert(ErrorPage::for_status(status));
            req.into_response(res)
        }
        None => {
            req.extensions_mut().insert(nonce.clone());
            next.call(req).await?.map_into_boxed_body()
        }
    };
    let Some(state) = state else {
        return Ok(response);
    };
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
        .with_label_values(&[route.as_str(), method.as_str(), status.as_str()])
        .inc();
    state
        .metrics
        .http_duration
        .with_label_values(&[route.as_str(), method.as_str()])
        .observe(elapsed.as_secs_f64());
    // Route pattern, never the raw path or query: those can carry tokens.
    tracing::info!(
        method = %method,
        route = %route,
        status = status.as_u16(),
        ms = elapsed.as_secs_f64() * 1000.0,
        "request"
    );
    Ok(response)
}

/// Error responses become the site's error page, unless a handler already rendered
/// a page (or JSON) itself.
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
    let html = ErrorTemplate::new(state, nonce, page.title, &page.message, status).render();
    let Ok(html) = html else {
        return res;
    };
    let (req, old) = res.into_parts();
    let mut new = HttpResponse::build(status);
    for (name, value) in old.headers() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            new.append_header((name.clone(), value.clone()));
        }
    }
    let new = new.content_type("text/html; charset=utf-8").body(html);
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
    let form_action = if res
        .response()
        .extensions()
        .get::<AllowAnyFormAction>()
        .is_some()
    {
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
