//! One error type for the whole HTTP surface. Handlers return `AppError`; this file
//! alone decides status codes. Bodies never carry the cause; the log does.
//!
//! The response made here is plain; the edge middleware (`web::edge`) turns any error
//! response that carries an `ErrorPage` into the HTML page with the site's layout,
//! because only it can see the request (CSP nonce, dev banner).

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
    #[error("service unavailable")]
    Unavailable(#[source] anyhow::Error),
    #[error("unexpected error")]
    Unexpected(#[source] anyhow::Error),
}

/// What the HTML error page shows. Stored in the response's extensions.
#[derive(Clone, Debug)]
pub struct ErrorPage {
    pub title: &'static str,
    pub message: String,
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
        Self {
            title,
            message: message.to_string(),
        }
    }
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict => AppError::Conflict("That already exists.".into()),
            StoreError::Unavailable(e) => AppError::Unavailable(e.into()),
            StoreError::Other(e) => AppError::Unexpected(e.into()),
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
            AppError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Unexpected(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        match self {
            AppError::Unavailable(cause) => {
                tracing::warn!(error = format!("{cause:#}"), "database unavailable")
            }
            AppError::Unexpected(cause) => {
                tracing::error!(error = format!("{cause:#}"), "unexpected error")
            }
            _ => {}
        }
        let mut page = ErrorPage::for_status(status);
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
            _ => {}
        }
        let mut builder = HttpResponse::build(status);
        if let AppError::RateLimited { retry_after_secs } = self {
            builder.insert_header(("Retry-After", retry_after_secs.to_string()));
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
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
    fn waits_read_naturally() {
        assert_eq!(human_wait(1), "1 second");
        assert_eq!(human_wait(30), "30 seconds");
        assert_eq!(human_wait(900), "15 minutes");
    }
}
