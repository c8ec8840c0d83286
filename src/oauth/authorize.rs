//! `/oauth2/authorize` and its consent step (RFC 6749 §4.1, OIDC Core §3.1.2,
//! RFC 9700 §2.1, RFC 9207). The request is judged in a fixed order: until the client
//! and its exact redirect URI are known, every error is a page and nothing is sent
//! anywhere; after that, errors go back to the app, but only once the person has
//! signed in (RFC 9700 §4.11.2), except `prompt=none`'s own answers.

use time::Duration;

use crate::crypto::{constant_time_eq, random_token, token_hash};
use crate::domain::oauth::{
    ACR_AAL1, ACR_AAL2, AuthorizeError, AuthorizeRequest, LOGIN_MARK, Params, client_and_redirect,
    login_mark_hash, parse_authorize,
};
use crate::domain::{SessionId, UserId};
use crate::error::AppError;
use crate::state::AppState;
use crate::store::{ClientRecord, NewCode, SessionRecord};

/// How long a code lives (DESIGN.md "Apps").
pub const CODE_TTL: Duration = Duration::seconds(60);
/// How soon after the sign-in a mark is honoured (the way back from `/login`,
/// through a second factor if needed).
const LOGIN_MARK_TTL: Duration = Duration::minutes(10);

/// What to do with the browser.
pub enum Outcome {
    /// Redirect to the app (a code, or an error for it).
    ToClient(String),
    /// Sign in (again, if `force`), then come back to `return_to`.
    SignIn { return_to: String, force: bool },
    /// Prove a second factor, then come back (`acr_values=urn:gatehouse:aal2`).
    StepUp { return_to: String },
    /// Ask the person (third-party client, no remembered consent).
    Consent(ConsentView),
}

pub struct ConsentView {
    pub client_name: String,
    pub scopes: Vec<&'static str>,
    /// The authorization request, to be sent back with the answer.
    pub request: String,
}

/// The person's answer on the consent page, if this is its POST.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    None,
    Allow,
    Deny,
}

fn page(message: impl Into<String>) -> AppError {
    AppError::Validation(message.into())
}

/// `redirect_uri` with the response parameters, `iss` always (RFC 9207 §2).
fn to_client(
    state: &AppState,
    redirect_uri: &str,
    state_param: Option<&str>,
    params: &[(&str, &str)],
) -> Result<Outcome, AppError> {
    let mut url =
        url::Url::parse(redirect_uri).map_err(|_| page("The return address is not valid."))?;
    {
        let mut q = url.query_pairs_mut();
        for (k, v) in params {
            q.append_pair(k, v);
        }
        if let Some(s) = state_param {
            q.append_pair("state", s);
        }
        q.append_pair("iss", &state.settings.issuer());
    }
    Ok(Outcome::ToClient(url.to_string()))
}

fn error_to_client(
    state: &AppState,
    req_redirect: &str,
    state_param: Option<&str>,
    error: &str,
    description: &str,
) -> Result<Outcome, AppError> {
    to_client(
        state,
        req_redirect,
        state_param,
        &[("error", error), ("error_description", description)],
    )
}

/// Whether this session's sign-in was made for this very request (its `gh_login`
/// mark), recently. A mark copied from history, another browser or another request
/// never matches another session's.
fn signed_in_for(state: &AppState, params: &Params, session: &SessionRecord) -> Option<Vec<u8>> {
    let hash = login_mark_hash(Some(&format!(
        "/oauth2/authorize?{}",
        params.encode_without(&[])
    )))?;
    let stored = session.login_mark.as_ref()?;
    let recent = state.clock.now() - session.auth_time <= LOGIN_MARK_TTL;
    (recent && constant_time_eq(stored, &hash)).then_some(hash)
}

/// Answers the app with an error once its redirect URI is trusted and the person has
/// signed in; the session's mark, if this request carried it, is spent with it.
struct Reply<'a> {
    state: &'a AppState,
    session: &'a SessionRecord,
    mark: &'a Option<Vec<u8>>,
    redirect_uri: &'a str,
    state_param: Option<&'a str>,
}

impl Reply<'_> {
    async fn error(&self, error: &str, description: &str) -> Result<Outcome, AppError> {
        spend(self.state, self.session, self.mark).await?;
        error_to_client(
            self.state,
            self.redirect_uri,
            self.state_param,
            error,
            description,
        )
    }
}

/// Spends the session's mark, if this request carried it; false when a parallel
/// request spent it first.
async fn spend(
    state: &AppState,
    session: &SessionRecord,
    mark: &Option<Vec<u8>>,
) -> Result<bool, AppError> {
    match mark {
        None => Ok(true),
        Some(hash) => Ok(state.store.spend_login_mark(session.id, hash).await?),
    }
}

fn again(params: &Params, mark: Option<String>) -> String {
    let mut query = params.encode_without(&[LOGIN_MARK]);
    if let Some(m) = mark {
        let mut ser = url::form_urlencoded::Serializer::new(String::new());
        ser.append_pair(LOGIN_MARK, &m);
        if !query.is_empty() {
            query.push('&');
        }
        query.push_str(&ser.finish());
    }
    format!("/oauth2/authorize?{query}")
}

/// The session's assurance as an `acr` value.
pub fn session_acr(session: &SessionRecord) -> &'static str {
    if session.aal == "aal2" {
        ACR_AAL2
    } else {
        ACR_AAL1
    }
}

/// Judges an authorization request (`query`, as sent) for the browser's `session`.
pub async fn authorize(
    state: &AppState,
    session: Option<&SessionRecord>,
    query: &str,
    answer: Answer,
) -> Result<Outcome, AppError> {
    let (params, client_id, redirect_uri) = match client_and_redirect(query) {
        Ok(v) => v,
        Err(AuthorizeError::Page(m)) => return Err(page(m)),
        Err(AuthorizeError::Redirect { description, .. }) => return Err(page(description)),
    };
    let client = state
        .store
        .client(&client_id)
        .await?
        .ok_or_else(|| page("The application that sent you here is not registered."))?;
    // Exact string match, no normalisation (checklist O1; authentik CVE-2024-52289),
    // but for the port of a loopback IP (RFC 8252 §7.3).
    if !crate::domain::oauth::redirect_registered(&client.redirect_uris, &redirect_uri) {
        return Err(page(
            "The application asked to return to an address it has not registered.",
        ));
    }
    let state_param = params.get("state").map(str::to_string);
    let parsed = parse_authorize(
        &params,
        client_id.clone(),
        redirect_uri.clone(),
        client.is_public(),
    );
    let wants_none = matches!(&parsed, Ok(r) if r.prompt.none);

    let Some(session) = session else {
        if wants_none {
            return error_to_client(
                state,
                &redirect_uri,
                state_param.as_deref(),
                "login_required",
                "The person is not signed in.",
            );
        }
        // The mark is needed only where a fresh sign-in is asked for.
        let mark =
            matches!(&parsed, Ok(r) if r.prompt.login || r.max_age.is_some()).then(random_token);
        return Ok(Outcome::SignIn {
            return_to: again(&params, mark),
            force: false,
        });
    };
    // Whether this session's sign-in was made for this request. Whatever the answer
    // to the app, the mark is spent with it (`spend`): it stands for one request.
    let mark = signed_in_for(state, &params, session);
    let reply = Reply {
        state,
        session,
        mark: &mark,
        redirect_uri: &redirect_uri,
        state_param: state_param.as_deref(),
    };
    let req = match parsed {
        Ok(r) => r,
        Err(AuthorizeError::Redirect { error, description }) => {
            return reply.error(error, &description).await;
        }
        Err(AuthorizeError::Page(m)) => return Err(page(m)),
    };
    let now = state.clock.now();

    // prompt=login and max_age (OIDC Core §3.1.2.1): a sign-in made after this
    // request sent the person to sign in satisfies them.
    let fresh_enough = req.max_age.is_none_or(|m| {
        now - session.auth_time <= Duration::seconds(m.min(i64::MAX as u64) as i64)
    });
    let needs_sign_in = req.prompt.login || !fresh_enough;
    if needs_sign_in && mark.is_none() {
        if req.prompt.none {
            return reply
                .error("login_required", "A new sign-in is required.")
                .await;
        }
        return Ok(Outcome::SignIn {
            return_to: again(&params, Some(random_token())),
            force: true,
        });
    }
    // A session the contextual checks want proven again (its cookie used from another
    // country) proves a second factor before any app gets a code from it: a risky
    // context never gets a silent code (checklist M7).
    if crate::auth::risk::needs_proof(session) {
        if req.prompt.none {
            return reply
                .error(
                    "interaction_required",
                    "This sign-in must be confirmed with a second factor.",
                )
                .await;
        }
        return Ok(Outcome::StepUp {
            return_to: again(&params, params.get(LOGIN_MARK).map(str::to_string)),
        });
    }
    // acr_values=urn:gatehouse:aal2: never an answer with a lower acr (checklist O9).
    if req.wants_aal2 && session.aal != "aal2" {
        if req.prompt.none {
            return reply
                .error("interaction_required", "A second factor is required.")
                .await;
        }
        return Ok(Outcome::StepUp {
            return_to: again(&params, params.get(LOGIN_MARK).map(str::to_string)),
        });
    }
    if answer == Answer::Deny {
        return reply.error("access_denied", "The person declined.").await;
    }
    if !client.first_party {
        let scope = req.scopes.to_string();
        let remembered = state
            .store
            .has_consent(session.user_id, &client.id, &scope)
            .await?;
        if answer == Answer::Allow {
            state
                .store
                .grant_consent(session.user_id, &client.id, &scope, now)
                .await?;
        } else if !remembered || req.prompt.consent {
            if req.prompt.none {
                return reply
                    .error(
                        "consent_required",
                        "The person has not allowed this application.",
                    )
                    .await;
            }
            return Ok(Outcome::Consent(ConsentView {
                client_name: client.name.clone(),
                scopes: req.scopes.iter().collect(),
                request: params.encode_without(&[]),
            }));
        }
    }
    // The mark answers one request: spent with the code it lets through, so the same
    // address replayed later (or a parallel copy) signs in again.
    if !spend(state, session, &mark).await? && needs_sign_in {
        return Ok(Outcome::SignIn {
            return_to: again(&params, Some(random_token())),
            force: true,
        });
    }
    issue_code(state, &client, session, &req).await
}

async fn issue_code(
    state: &AppState,
    client: &ClientRecord,
    session: &SessionRecord,
    req: &AuthorizeRequest,
) -> Result<Outcome, AppError> {
    let now = state.clock.now();
    let code = random_token();
    let stored = state
        .store
        .insert_code(&NewCode {
            code_hash: token_hash(&code),
            client_id: client.id.clone(),
            user_id: UserId(session.user_id.0),
            session_id: SessionId(session.id.0),
            redirect_uri: req.redirect_uri.clone(),
            scope: req.scopes.to_string(),
            nonce: req.nonce.clone(),
            code_challenge: req.code_challenge.clone(),
            acr: session_acr(session).to_string(),
            amr: session.amr.clone(),
            auth_time: session.auth_time,
            created_at: now,
            expires_at: now + CODE_TTL,
            needs_consent: !client.first_party,
        })
        .await?;
    if !stored {
        // The consent was withdrawn while this request was on its way.
        return error_to_client(
            state,
            &req.redirect_uri,
            req.state.as_deref(),
            "access_denied",
            "The person withdrew their consent.",
        );
    }
    to_client(
        state,
        &req.redirect_uri,
        req.state.as_deref(),
        &[("code", &code)],
    )
}

/// Scopes as the consent page words them.
pub fn describe_scope(scope: &str) -> &'static str {
    match scope {
        "openid" => "Know who you are (your account id)",
        "profile" => "See your basic profile",
        "email" => "See your e-mail address",
        "offline_access" => "Stay connected while you are away",
        _ => "Unknown permission",
    }
}
