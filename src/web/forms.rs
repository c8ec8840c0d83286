//! Strict parsing of form bodies and query strings: malformed input fails closed
//! (checklist H2, H3) instead of being decoded leniently.

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{FromRequest, HttpRequest, web};
use futures_util::StreamExt;
use futures_util::future::LocalBoxFuture;
use serde::de::DeserializeOwned;

use crate::error::AppError;

/// Form and JSON bodies larger than this are refused with 413 (DESIGN.md "Limits").
pub const BODY_LIMIT: usize = 64 * 1024;

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

/// A body must have arrived this long after its head: a trickled body (slowloris)
/// would otherwise hold a place among the requests in progress for as long as it
/// likes.
pub const BODY_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// Reads a body up to `BODY_LIMIT`, counted as it arrives (chunked bodies too), within
/// `BODY_DEADLINE` (else 408).
pub async fn read_capped<S, E>(payload: &mut S) -> Result<web::BytesMut, AppError>
where
    S: futures_util::Stream<Item = Result<web::Bytes, E>> + Unpin,
{
    tokio::time::timeout(BODY_DEADLINE, read_all(payload))
        .await
        .map_err(|_| AppError::RequestTimeout)?
}

async fn read_all<S, E>(payload: &mut S) -> Result<web::BytesMut, AppError>
where
    S: futures_util::Stream<Item = Result<web::Bytes, E>> + Unpin,
{
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk
            .map_err(|_| AppError::Validation("The request body could not be read.".into()))?;
        if body.len() + chunk.len() > BODY_LIMIT {
            return Err(AppError::PayloadTooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Reads a urlencoded body with the size cap (chunked bodies counted as they arrive)
/// and checks it strictly: content type, escapes, no repeated field.
fn read_form(
    req: &HttpRequest,
    payload: &mut Payload,
) -> LocalBoxFuture<'static, Result<web::BytesMut, AppError>> {
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
        let body = read_capped(&mut payload).await?;
        check_urlencoded(&body)?;
        Ok(body)
    })
}

/// A urlencoded form body, read with a size cap and parsed strictly.
pub struct StrictForm<T>(pub T);

impl<T: DeserializeOwned + 'static> FromRequest for StrictForm<T> {
    type Error = AppError;
    type Future = LocalBoxFuture<'static, Result<Self, AppError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let body = read_form(req, payload);
        Box::pin(async move {
            let body = body.await?;
            serde_urlencoded::from_bytes::<T>(&body)
                .map(StrictForm)
                .map_err(|_| AppError::Validation("The form was incomplete or malformed.".into()))
        })
    }
}

/// A JSON body (`application/json`), read with the size cap and parsed into `T`: a
/// missing, repeated or wrongly typed field is a 400, never a guess.
pub struct StrictJson<T>(pub T);

impl<T: DeserializeOwned + 'static> FromRequest for StrictJson<T> {
    type Error = AppError;
    type Future = LocalBoxFuture<'static, Result<Self, AppError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let content_type_ok = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"));
        let mut payload = payload.take();
        Box::pin(async move {
            if !content_type_ok {
                return Err(AppError::UnsupportedMediaType);
            }
            let body = read_capped(&mut payload).await?;
            serde_json::from_slice::<T>(&body)
                .map(StrictJson)
                .map_err(|_| {
                    AppError::Validation(
                        "The request body is not the JSON this endpoint takes.".into(),
                    )
                })
        })
    }
}

/// A urlencoded body checked like `StrictForm` but kept as text, for endpoints whose
/// parameters are read by name (the OAuth endpoints).
pub struct RawForm(pub String);

impl FromRequest for RawForm {
    type Error = AppError;
    type Future = LocalBoxFuture<'static, Result<Self, AppError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let body = read_form(req, payload);
        Box::pin(async move {
            let body = body.await?;
            String::from_utf8(body.to_vec())
                .map(RawForm)
                .map_err(|_| AppError::Validation("The request body is not text.".into()))
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
}
