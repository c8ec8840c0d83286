//! Extractors: everything a handler needs from a request, checked once here — the
//! session, CSRF, the CSP nonce; the client address is in `client`, strict forms in
//! `forms`.

use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{FromRequest, HttpMessage, HttpRequest, web};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::future::LocalBoxFuture;
use std::rc::Rc;
use tokio::sync::OnceCell;

use crate::auth::sessions::{self, Authenticated};
use crate::auth::{dbsc, risk};
use crate::crypto;
use crate::domain::{PendingToken, SessionToken};
use crate::error::AppError;
use crate::state::AppState;
use crate::store::SessionRecord;
use crate::web::Access;
use crate::web::edge::{CspNonce, Representation, queue_cookie, representation, route_of};

pub(super) fn state(req: &HttpRequest) -> Result<web::Data<AppState>, AppError> {
    req.app_data::<web::Data<AppState>>()
        .cloned()
        .ok_or_else(|| AppError::Unexpected(anyhow::anyhow!("application state missing")))
}

/// The signed-in session, if the request carries a live one.
#[derive(Clone)]
pub struct MaybeSession(pub Option<SessionRecord>);

/// Cached per request so that several extractors share one database read.
#[derive(Clone)]
struct SessionLookup {
    session: Option<SessionRecord>,
    /// The cookie token's hash, which CSRF tokens are bound to: the live session's,
    /// or that of a device-bound session refused for want of its bound cookie.
    token_hash: Option<Vec<u8>>,
    /// A live device-bound session refused for want of its bound cookie (not signed
    /// in; only `SessionToEnd` sees it).
    refused: Option<SessionRecord>,
}

/// The request's session, looked up once however many extractors ask, even at the
/// same moment (a handler's extractors are polled together): one database read, one
/// watch of the session's use, one count of a refusal.
async fn lookup(req: &HttpRequest) -> Result<SessionLookup, AppError> {
    let once = {
        let mut ext = req.extensions_mut();
        match ext.get::<Rc<OnceCell<SessionLookup>>>() {
            Some(cell) => cell.clone(),
            None => {
                let cell = Rc::new(OnceCell::new());
                ext.insert(cell.clone());
                cell
            }
        }
    };
    once.get_or_try_init(|| resolve(req)).await.cloned()
}

async fn resolve(req: &HttpRequest) -> Result<SessionLookup, AppError> {
    let state = state(req)?;
    let policy = &state.cookies;
    let found = match req.cookie(policy.session_name) {
        None => SessionLookup {
            session: None,
            token_hash: None,
            refused: None,
        },
        Some(cookie) => match SessionToken::parse(cookie.value()) {
            // A value we never issued is not even looked up; the cookie is cleared.
            None => {
                queue_cookie(req, policy.clear_session());
                SessionLookup {
                    session: None,
                    token_hash: None,
                    refused: None,
                }
            }
            Some(token) => {
                let skipped = req.headers().get("secure-session-skipped");
                if let Some(reason) = skipped {
                    dbsc::skipped(&state, reason.to_str().unwrap_or(""));
                }
                let presented = req.cookie(policy.bound_name);
                let from = crate::web::client::client_ip(req, &state.settings.trusted_proxies);
                let bound = sessions::BoundCookie {
                    presented: presented.as_ref().map(|c| c.value()),
                    skipped: skipped.is_some(),
                    from,
                };
                let location = state.geo.locate(from);
                match sessions::authenticate(&state, &token, &location, bound).await? {
                    Authenticated::Live(record) => SessionLookup {
                        session: Some(*record),
                        token_hash: Some(token.hash()),
                        refused: None,
                    },
                    // A device-bound session without its bound cookie: not signed in
                    // for this request. The cookie is left alone: its owner's browser
                    // refreshes and comes back.
                    // Its forms stay bound to the session's token, so the owner's
                    // own "Sign out" from a page shown before still works.
                    Authenticated::Refused(record) => SessionLookup {
                        session: None,
                        token_hash: Some(token.hash()),
                        refused: Some(*record),
                    },
                    Authenticated::Gone => {
                        // Revoked, expired or the user disabled: signed out, cookie cleared.
                        queue_cookie(req, policy.clear_session());
                        SessionLookup {
                            session: None,
                            token_hash: None,
                            refused: None,
                        }
                    }
                }
            }
        },
    };
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

/// The session the request's cookie names, for ending it (sign-out, RP-initiated
/// logout): the live one, or a device-bound one refused for want of its bound cookie.
/// Whoever holds the session cookie may end the session — ending is protective
/// (DESIGN.md "A copied device-bound cookie") — and nothing else is done with a
/// refused one.
pub struct SessionToEnd(pub Option<SessionRecord>);

impl FromRequest for SessionToEnd {
    type Error = AppError;
    type Future = LocalBoxFuture<'static, Result<Self, AppError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            let found = lookup(&req).await?;
            Ok(SessionToEnd(found.session.or(found.refused)))
        })
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
            let page_visit = matches!(
                *req.method(),
                actix_web::http::Method::GET | actix_web::http::Method::HEAD
            ) && representation(&req) == Representation::Html;
            if let Some(session) = lookup(&req).await?.session {
                // A session the contextual checks want proven again (its cookie used
                // from another country) does nothing signed in — no page (addresses,
                // places, keys are on them), no JSON, no form — but what the route
                // table opens to it (`Access::Proving`: prove a second factor at
                // /step-up, or end every session at once). Signing out is /logout's,
                // open.
                let open = route_of(&req).is_some_and(|r| r.access == Access::Proving);
                if !open && risk::needs_proof(&session) {
                    return Err(AppError::StepUpRequired {
                        return_to: match req.query_string() {
                            "" => req.path().to_string(),
                            q => format!("{}?{q}", req.path()),
                        },
                        redirect: page_visit,
                    });
                }
                return Ok(CurrentSession(session));
            }
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
    /// The CSRF token for a session's new cookie token, for the page answered in the
    /// same response that rotated it (the browser sends the new cookie from then on).
    pub fn for_rotated(state: &AppState, token: &SessionToken) -> Self {
        Csrf {
            expected: Some(csrf_token(state, "csrf/session", &token.hash())),
        }
    }

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
    // Browsers send `Origin: null` on their own same-origin form posts when the
    // referrer policy is `no-referrer` (Fetch, "serializing a request origin"), which
    // ours is (checklist W3). Such a `null` is believed only when the browser also
    // vouches with `Sec-Fetch-Site: same-origin`; a bare `null` (a sandboxed frame,
    // an old browser) is refused.
    let vouched_same_origin = req
        .headers()
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes() == b"same-origin");
    if let Some(origin) = req.headers().get(header::ORIGIN)
        && !(origin.as_bytes() == b"null" && vouched_same_origin)
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

/// The pending-sign-in cookie, if it is shaped like ours (whether it names a live
/// challenge is the service's question).
pub struct PendingCookie(pub Option<PendingToken>);

impl FromRequest for PendingCookie {
    type Error = AppError;
    type Future = std::future::Ready<Result<Self, AppError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let token = state(req).ok().and_then(|state| {
            req.cookie(state.cookies.pending_name)
                .and_then(|c| PendingToken::parse(c.value()))
        });
        std::future::ready(Ok(PendingCookie(token)))
    }
}
