//! One error type for the whole HTTP surface. Handlers return `AppError`; this file
//! alone decides status codes. Bodies never carry the cause; the log does.
//!
//! The response made here is plain; the edge middleware (`web::edge`) turns any error
//! response that carries an `ErrorPage` into what the caller reads — the HTML page
//! with the site's layout for people, RFC 6749 §5.2 JSON on OAuth endpoints, RFC 9457
//! problem details for other machine callers — because only it can see the request
//! (route, `Accept`, CSP nonce, dev banner). `web::edge::representation` decides
//! which, in one place.

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Bad input the person can fix; the message is shown.
    #[error("{0}")]
    Validation(String),
    /// Not signed in (always the same words).
    #[error("unauthorized")]
    Unauthorized,
    /// Refused, e.g. a failed CSRF check; the message is shown.
    #[error("{0}")]
    Forbidden(String),
    #[error("not found")]
    NotFound,
    #[error("{0}")]
    Conflict(String),
    #[error("payload too large")]
    PayloadTooLarge,
    #[error("unsupported media type")]
    UnsupportedMediaType,
    #[error("rate limited")]
    RateLimited { retry_after_secs: u64 },
    /// A signed-out visit to a signed-in page (a GET): sent to sign in, and back.
    /// `return_to` is the page's path and query.
    #[error("sign-in required")]
    SignInRequired { return_to: String },
    /// A sensitive action without a second factor proven in the last 10 minutes
    /// (DESIGN.md "Second factor and step-up"). A page visit (`redirect`) is sent to
    /// `/step-up` and back to `return_to`; a form POST is refused (403) with a link
    /// there — it is never replayed.
    #[error("step-up required")]
    StepUpRequired { return_to: String, redirect: bool },
    /// An OAuth 2.0 error with its RFC 6749 §5.2 code, e.g. `invalid_grant` (400) or
    /// `invalid_client` (401, with `WWW-Authenticate: Basic`).
    #[error("oauth error {error}")]
    OAuth {
        status: StatusCode,
        error: &'static str,
        description: String,
    },
    /// A bearer token that is missing, invalid or no longer live (RFC 6750 §3.1):
    /// 401 with `WWW-Authenticate: Bearer error="invalid_token"`.
    #[error("invalid token")]
    InvalidToken,
    /// No bearer token at all (RFC 6750 §3.1: then no `error` is named).
    #[error("no token")]
    NoBearerToken,
    /// The password hash queue is full: try again in a moment (503).
    #[error("overloaded")]
    Overloaded,
    /// The node has as many requests in progress as it takes
    /// (`GATEHOUSE_HTTP_MAX_IN_FLIGHT`): try again in a moment (503).
    #[error("busy")]
    Busy,
    /// The request body did not arrive in time (a trickled body): 408.
    #[error("request timeout")]
    RequestTimeout,
    #[error("service unavailable")]
    Unavailable(#[source] anyhow::Error),
    #[error("unexpected error")]
    Unexpected(#[source] anyhow::Error),
}

impl AppError {
    /// The reason code the request's log line carries.
    pub fn reason(&self) -> &'static str {
        match self {
            AppError::Validation(_) => "validation",
            AppError::Unauthorized => "unauthorized",
            AppError::Forbidden(_) => "forbidden",
            AppError::NotFound => "not_found",
            AppError::Conflict(_) => "conflict",
            AppError::PayloadTooLarge => "payload_too_large",
            AppError::UnsupportedMediaType => "unsupported_media_type",
            AppError::RateLimited { .. } => "throttled",
            AppError::SignInRequired { .. } => "sign_in_required",
            AppError::StepUpRequired { .. } => "step_up_required",
            AppError::OAuth { error, .. } => error,
            AppError::InvalidToken => "invalid_token",
            AppError::NoBearerToken => "no_token",
            AppError::Overloaded => "overloaded",
            AppError::Busy => "busy",
            AppError::RequestTimeout => "timeout",
            AppError::Unavailable(_) => "database_unavailable",
            AppError::Unexpected(_) => "unexpected",
        }
    }
}

/// What an error response says, whatever its representation. Stored in the
/// response's extensions for the edge middleware.
#[derive(Clone, Debug)]
pub struct ErrorPage {
    pub title: &'static str,
    pub message: String,
    /// The RFC 6749 §5.2 `error` code, where a handler knows a more precise one than
    /// the status gives (e.g. `invalid_grant`).
    pub oauth_error: Option<&'static str>,
    /// A way on for the person: a button's label and link.
    pub action: Option<(&'static str, String)>,
    /// Why, as a code for the request's log line (`validation`, `csrf`, `throttled`…):
    /// never the message, which may quote what the client sent.
    pub reason: &'static str,
}

/// `/step-up?return_to=…`
pub fn step_up_location(return_to: &str) -> String {
    let encoded: String = url::form_urlencoded::byte_serialize(return_to.as_bytes()).collect();
    format!("/step-up?return_to={encoded}")
}

impl ErrorPage {
    /// The page for a bare status (e.g. actix's own 404/405 answers).
    pub fn for_status(status: StatusCode) -> Self {
        let (title, message) = match status.as_u16() {
            400 => ("Bad request", "The request could not be understood."),
            401 => ("Please sign in", "You need to sign in to see this page."),
            403 => ("Not allowed", "This request was refused."),
            404 => ("Page not found", "There is no page at this address."),
            405 => (
                "Method not allowed",
                "This page does not accept that kind of request.",
            ),
            409 => (
                "Conflict",
                "That conflicts with something that already exists.",
            ),
            413 => (
                "Too large",
                "The request was larger than this server accepts.",
            ),
            415 => (
                "Unsupported format",
                "Send this form as an ordinary web form.",
            ),
            429 => (
                "Too many attempts",
                "Too many attempts. Please wait and try again.",
            ),
            408 => (
                "Too slow",
                "The request did not arrive in time. Please try again.",
            ),
            431 => (
                "Headers too large",
                "The request's headers (often cookies) are too large.",
            ),
            503 => (
                "Temporarily unavailable",
                "Gatehouse cannot reach its database right now. Please try again in a moment.",
            ),
            _ if status.is_server_error() => (
                "Something went wrong",
                "Something went wrong on our side. Please try again.",
            ),
            _ => ("Error", "The request could not be completed."),
        };
        let reason = match status.as_u16() {
            400 => "bad_request",
            401 => "unauthorized",
            403 => "forbidden",
            404 => "not_found",
            405 => "method_not_allowed",
            408 => "timeout",
            409 => "conflict",
            413 => "payload_too_large",
            415 => "unsupported_media_type",
            429 => "throttled",
            431 => "headers_too_large",
            503 => "unavailable",
            _ if status.is_server_error() => "server_error",
            _ => "error",
        };
        Self {
            title,
            message: message.to_string(),
            oauth_error: None,
            action: None,
            reason,
        }
    }

    /// The RFC 6749 §5.2 error code for this response.
    pub fn oauth_code(&self, status: StatusCode) -> &'static str {
        if let Some(code) = self.oauth_error {
            return code;
        }
        match status.as_u16() {
            401 => "invalid_client",
            403 => "access_denied",
            429 | 503 => "temporarily_unavailable",
            s if s >= 500 => "server_error",
            _ => "invalid_request",
        }
    }
}

impl AppError {
    /// An OAuth error answered 400 (RFC 6749 §5.2).
    pub fn oauth(error: &'static str, description: impl Into<String>) -> Self {
        AppError::OAuth {
            status: StatusCode::BAD_REQUEST,
            error,
            description: description.into(),
        }
    }
    /// `invalid_client`: 401, the same words whatever was wrong.
    pub fn invalid_client() -> Self {
        AppError::OAuth {
            status: StatusCode::UNAUTHORIZED,
            error: "invalid_client",
            description: "Client authentication failed.".into(),
        }
    }
}

impl From<crate::hasher::HashError> for AppError {
    fn from(e: crate::hasher::HashError) -> Self {
        match e {
            crate::hasher::HashError::TimedOut => AppError::Overloaded,
            crate::hasher::HashError::Failed(e) => AppError::Unexpected(e),
        }
    }
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict => AppError::Conflict("That already exists.".into()),
            StoreError::Unavailable(e) => AppError::Unavailable(e.into()),
            StoreError::Other(e) => AppError::Unexpected(e.into()),
            e @ StoreError::Seal(_) => AppError::Unexpected(e.into()),
        }
    }
}

impl ResponseError for AppError {
    fn status_code(&self) -> StatusCode {
        match self {
            AppError::Validation(_) => StatusCode::BAD_REQUEST,
            AppError::Unauthorized => StatusCode::UNAUTHORIZED,
            AppError::Forbidden(_) => StatusCode::FORBIDDEN,
            AppError::NotFound => StatusCode::NOT_FOUND,
            AppError::Conflict(_) => StatusCode::CONFLICT,
            AppError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            AppError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            AppError::SignInRequired { .. } => StatusCode::SEE_OTHER,
            AppError::StepUpRequired { redirect: true, .. } => StatusCode::SEE_OTHER,
            AppError::StepUpRequired { .. } => StatusCode::FORBIDDEN,
            AppError::OAuth { status, .. } => *status,
            AppError::InvalidToken | AppError::NoBearerToken => StatusCode::UNAUTHORIZED,
            AppError::Overloaded | AppError::Busy => StatusCode::SERVICE_UNAVAILABLE,
            AppError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            AppError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Unexpected(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        if let AppError::SignInRequired { return_to } = self {
            let encoded: String =
                url::form_urlencoded::byte_serialize(return_to.as_bytes()).collect();
            // 303: the browser comes back with a GET (RFC 9110 §15.4.4).
            return HttpResponse::SeeOther()
                .insert_header(("Location", format!("/login?return_to={encoded}")))
                .finish();
        }
        if let AppError::StepUpRequired {
            return_to,
            redirect: true,
        } = self
        {
            return HttpResponse::SeeOther()
                .insert_header(("Location", step_up_location(return_to)))
                .finish();
        }
        match self {
            AppError::Unavailable(cause) => {
                // An operator must act: an error (held back to ten a minute).
                tracing::error!(error = format!("{cause:#}"), "database unavailable")
            }
            AppError::Overloaded => {
                tracing::warn!("password hashing queue full; answered 503") // log-ok: no secret
            }
            AppError::Unexpected(cause) => {
                tracing::error!(error = format!("{cause:#}"), "unexpected error")
            }
            _ => {}
        }
        let mut page = ErrorPage::for_status(status);
        page.reason = self.reason();
        match self {
            AppError::Validation(m) | AppError::Forbidden(m) | AppError::Conflict(m) => {
                page.message = m.clone();
            }
            AppError::RateLimited { retry_after_secs } => {
                page.message = format!(
                    "Too many attempts. Please wait {} before trying again.",
                    human_wait(*retry_after_secs)
                );
            }
            AppError::Overloaded | AppError::Busy => {
                page.message =
                    "Gatehouse is very busy right now. Please try again in a moment.".into();
            }
            AppError::OAuth {
                error, description, ..
            } => {
                page.oauth_error = Some(error);
                page.message = description.clone();
            }
            AppError::NoBearerToken => {
                page.oauth_error = Some("invalid_request");
                page.message = "An access token is needed (Authorization: Bearer …).".into();
            }
            AppError::InvalidToken => {
                page.oauth_error = Some("invalid_token");
                page.message = "The access token is missing, invalid or no longer active.".into();
            }
            AppError::StepUpRequired { return_to, .. } => {
                page.title = "Confirm it's you";
                page.message = "For your security, this needs a second factor proven in the last 10 minutes. Confirm it's you, then do it again.".into();
                page.action = Some(("Confirm it's you", step_up_location(return_to)));
            }
            _ => {}
        }
        let mut builder = HttpResponse::build(status);
        if let AppError::RateLimited { retry_after_secs } = self {
            builder.insert_header(("Retry-After", retry_after_secs.to_string()));
        }
        // RFC 6750 §3: bearer-token errors name the scheme (and the error, once a
        // token was sent).
        match self {
            AppError::InvalidToken => {
                builder.insert_header((
                    "WWW-Authenticate",
                    "Bearer realm=\"gatehouse\", error=\"invalid_token\"",
                ));
            }
            AppError::NoBearerToken => {
                builder.insert_header(("WWW-Authenticate", "Bearer realm=\"gatehouse\""));
            }
            AppError::OAuth {
                error: "insufficient_scope",
                ..
            } => {
                builder.insert_header((
                    "WWW-Authenticate",
                    "Bearer realm=\"gatehouse\", error=\"insufficient_scope\", scope=\"openid\"",
                ));
            }
            _ => {}
        }
        if let AppError::Overloaded | AppError::Busy = self {
            builder.insert_header(("Retry-After", "1"));
        } else if status == StatusCode::SERVICE_UNAVAILABLE {
            builder.insert_header(("Retry-After", "5"));
        }
        let mut response = builder
            .content_type("text/plain; charset=utf-8")
            .body(page.message.clone());
        response.extensions_mut().insert(page);
        response
    }
}

/// "1 second", "30 seconds", "2 minutes"; for the person reading a 429 page.
pub fn human_wait(secs: u64) -> String {
    match secs {
        0 | 1 => "1 second".into(),
        s if s < 90 => format!("{s} seconds"),
        s => format!("{} minutes", s.div_ceil(60)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_the_one_table() {
        assert_eq!(AppError::Validation("x".into()).status_code(), 400);
        assert_eq!(AppError::Unauthorized.status_code(), 401);
        assert_eq!(
            AppError::RateLimited {
                retry_after_secs: 3
            }
            .status_code(),
            429
        );
        let r = AppError::RateLimited {
            retry_after_secs: 3,
        }
        .error_response();
        assert_eq!(r.headers().get("retry-after").unwrap(), "3");
        let r = AppError::Unexpected(anyhow::anyhow!("SELECT secret FROM x")).error_response();
        assert_eq!(r.status(), 500);
        assert!(
            r.extensions()
                .get::<ErrorPage>()
                .unwrap()
                .message
                .contains("our side")
        );
    }

    #[test]
    fn signed_out_page_visits_redirect_to_sign_in_and_back() {
        // Defect 11
        let r = AppError::SignInRequired {
            return_to: "/account/email?x=1&y=2".into(),
        }
        .error_response();
        assert_eq!(r.status(), 303);
        assert_eq!(
            r.headers().get("location").unwrap(),
            "/login?return_to=%2Faccount%2Femail%3Fx%3D1%26y%3D2"
        );
        let r = AppError::Overloaded.error_response();
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers().get("retry-after").unwrap(), "1");
    }

    #[test]
    fn oauth_codes_follow_the_status_unless_a_handler_names_one() {
        let page = ErrorPage::for_status(StatusCode::BAD_REQUEST);
        assert_eq!(page.oauth_code(StatusCode::BAD_REQUEST), "invalid_request");
        assert_eq!(page.oauth_code(StatusCode::UNAUTHORIZED), "invalid_client");
        assert_eq!(
            page.oauth_code(StatusCode::INTERNAL_SERVER_ERROR),
            "server_error"
        );
        let named = ErrorPage {
            oauth_error: Some("invalid_grant"),
            ..page
        };
        assert_eq!(named.oauth_code(StatusCode::BAD_REQUEST), "invalid_grant");
    }

    #[test]
    fn waits_read_naturally() {
        assert_eq!(human_wait(1), "1 second");
        assert_eq!(human_wait(30), "30 seconds");
        assert_eq!(human_wait(900), "15 minutes");
    }
}
