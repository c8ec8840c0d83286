//! CORS for browser apps (single-page apps): a public client registered with
//! `--web-origin` may be called from pages of exactly those origins on the token,
//! revocation and userinfo endpoints, error answers included, and never with
//! credentials (no `Access-Control-Allow-Credentials`: these endpoints take no
//! cookies). The handler of such an endpoint names the origins once it knows the
//! client (`allow`); the middleware `cors` then answers the browser's `Origin`.
//! Discovery and the JWKS answer `*` on their own (`web::oauth::public_json`).

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};

use crate::error::AppError;
use crate::oauth::clients;
use crate::state::AppState;

/// How long a browser may keep a preflight's answer (seconds).
const MAX_AGE: &str = "600";

/// The origins that may read this request's answer (a request extension).
#[derive(Clone, Debug)]
struct WebOrigins(Vec<String>);

/// The request's `Origin`, if it names one (a page's cross-origin request).
fn origin(req: &HttpRequest) -> Option<&str> {
    req.headers()
        .get(header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .filter(|o| !o.is_empty())
}

/// Whether this request came from a page of another origin (only then is the work
/// of finding the client's origins worth doing).
pub fn asked(req: &HttpRequest) -> bool {
    origin(req).is_some()
}

/// Lets pages of `origins` (the client's web origins) read this request's answer,
/// whatever it turns out to be.
pub fn allow(req: &HttpRequest, origins: &[String]) {
    if !origins.is_empty() {
        req.extensions_mut().insert(WebOrigins(origins.to_vec()));
    }
}

/// Adds the CORS headers to an answer whose handler named origins (`allow`): the
/// request's own origin echoed when it is one of them, and `Vary: Origin` either way.
pub async fn cors(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<BoxBody>, actix_web::Error> {
    let mut res = next.call(req).await?.map_into_boxed_body();
    let allowed = res.request().extensions().get::<WebOrigins>().cloned();
    let Some(WebOrigins(allowed)) = allowed else {
        return Ok(res);
    };
    let echo = origin(res.request())
        .filter(|o| allowed.iter().any(|a| a == o))
        .and_then(|o| HeaderValue::from_str(o).ok());
    let h = res.headers_mut();
    h.append(header::VARY, HeaderValue::from_static("Origin"));
    if let Some(echo) = echo {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, echo);
        // An app must see why a bearer token was refused (RFC 6750 §3).
        h.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static("WWW-Authenticate"),
        );
    }
    Ok(res)
}

/// `OPTIONS` on a CORS endpoint: the preflight of a page's request (Fetch §4.8). It
/// names no client, so it is granted to an origin some browser app registered; the
/// request itself is then answered for its own client's origins only.
pub async fn preflight(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, AppError> {
    let methods = if req.path() == "/oauth2/userinfo" {
        "GET, POST"
    } else {
        "POST"
    };
    let mut res = HttpResponse::NoContent();
    res.insert_header((header::ALLOW, format!("{methods}, OPTIONS")))
        .insert_header((
            header::VARY,
            "Origin, Access-Control-Request-Method, Access-Control-Request-Headers",
        ));
    let asking = req
        .headers()
        .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
    if let (Some(origin), true) = (origin(&req), asking)
        && clients::web_origin_registered(&state, origin).await?
    {
        res.insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, origin))
            .insert_header((header::ACCESS_CONTROL_ALLOW_METHODS, methods))
            .insert_header((
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                "Authorization, Content-Type",
            ))
            .insert_header((header::ACCESS_CONTROL_MAX_AGE, MAX_AGE));
    }
    Ok(res.finish())
}
