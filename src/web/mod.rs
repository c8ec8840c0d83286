//! HTTP: the route table, extractors, the edge middleware and the handlers.

pub mod account;
pub mod client;
pub mod cors;
pub mod dbsc;
pub mod devices;
pub mod edge;
pub mod extract;
pub mod forms;
pub mod mail_pages;
pub mod mfa;
pub mod not_me;
pub mod oauth;
pub mod oauth_pages;
pub mod ops;
pub mod pages;
pub mod passkeys;
pub mod second_factor;
pub mod upstreams;

use actix_web::web;

/// Who may use a route. The route table carries it, so tests can walk every
/// signed-in route (a half-finished sign-in must open none of them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Answers anyone (sign-in pages, mailed links, operations).
    Public,
    /// Needs a live session: a signed-out GET is sent to sign in, anything else is 401.
    /// A session the contextual checks want proven again (its cookie used from another
    /// country) is sent to `/step-up` instead.
    Session,
    /// Needs a live session, and stays open to one the contextual checks want proven
    /// again: proving a second factor, or ending every session at once. Everything
    /// else a flagged session asks for waits for the proof.
    Proving,
}

/// How a route's errors are told (`web::edge::representation`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Errors {
    /// A page for a person, or problem JSON for a caller that prefers JSON (`Accept`).
    Page,
    /// `{"error": …}` (RFC 6749 §5.2): OAuth endpoints that machines call.
    OAuth,
    /// `application/problem+json` (RFC 9457) whoever asks: discovery, keys, ceremonies.
    Problem,
}

/// One row of the route table, as data: the path, its methods and its policy. The edge
/// middleware reads the policy once per request from the matched row
/// (`web::edge::edge`), and `CurrentSession` reads its access; nothing else decides
/// per path.
#[derive(Clone, Copy, Debug)]
pub struct RouteInfo {
    pub path: &'static str,
    /// Lower-case HTTP methods: `get`, `post`, `options` (CORS preflight).
    pub methods: &'static [&'static str],
    pub access: Access,
    pub errors: Errors,
    /// A form on this route may end in a redirect to an application (sign-in, second
    /// factor, consent, logout): its pages carry no CSP `form-action`, since Chrome
    /// applies `form-action` to every redirect that follows a form POST.
    pub leaves_site: bool,
    /// Answered however busy the node is: health checks and metrics must see it.
    pub operational: bool,
}

impl RouteInfo {
    const fn new(path: &'static str, methods: &'static [&'static str], access: Access) -> Self {
        RouteInfo {
            path,
            methods,
            access,
            errors: Errors::Page,
            leaves_site: false,
            operational: false,
        }
    }

    const fn leaves_site(mut self) -> Self {
        self.leaves_site = true;
        self
    }

    const fn operational(mut self) -> Self {
        self.operational = true;
        self
    }

    const fn oauth(mut self) -> Self {
        self.errors = Errors::OAuth;
        self
    }

    const fn problem(mut self) -> Self {
        self.errors = Errors::Problem;
        self
    }

    /// The row of a matched route pattern (`HttpRequest::match_pattern`).
    pub fn of_pattern(pattern: &str) -> Option<&'static RouteInfo> {
        ROUTES.iter().find(|r| r.path == pattern)
    }

    /// The row of a request's route: what the request matches in the route table,
    /// before routing too (the router matches the percent-decoded path, so the
    /// decoded path is tried when the raw one matches nothing).
    pub fn of(req: &actix_web::HttpRequest) -> Option<&'static RouteInfo> {
        req.match_pattern()
            .or_else(|| req.resource_map().match_pattern(req.match_info().as_str()))
            .and_then(|p| Self::of_pattern(&p))
    }
}

/// The methods a route row may name: actix's `get` and `post`, and `options`
/// (a CORS preflight), for which actix has no shorthand.
mod verb {
    pub use actix_web::web::{get, post};

    pub fn options() -> actix_web::Route {
        actix_web::web::route().method(actix_web::http::Method::OPTIONS)
    }
}

/// Writes the route table once, as both the actix configuration (`routes`) and the
/// data (`ROUTES`), so the two cannot drift apart. A row reads
/// `"path" [Access, policy…] { method => handler, … }`, where each policy word is one
/// of `RouteInfo`'s builder methods (`leaves_site`, `operational`, `oauth`, `problem`).
macro_rules! route_table {
    ($( $path:literal [$access:ident $(, $policy:ident)*] { $($method:ident => $handler:path),+ $(,)? } )*) => {
        /// Every route Gatehouse answers, with who may use it and its policy.
        pub const ROUTES: &[RouteInfo] = &[
            $( RouteInfo::new($path, &[$(stringify!($method)),+], Access::$access)$(.$policy())*, )*
        ];

        /// Every route Gatehouse answers. Anything else is a 404 page; a known path
        /// with the wrong method is a 405 page.
        pub fn routes(cfg: &mut web::ServiceConfig) {
            $( cfg.service(web::resource($path)$(.route(verb::$method().to($handler)))+); )*
            cfg.default_service(web::to(pages::not_found));
        }
    };
}

route_table! {
    "/" [Public] { get => pages::home }
    "/login" [Public, leaves_site] { get => pages::login_page, post => pages::login_submit }
    "/login/verify" [Public, leaves_site] {
        get => second_factor::verify_page,
        post => second_factor::verify_submit,
    }
    // Its "Continue with …" forms lead to an upstream.
    "/register" [Public, leaves_site] { get => pages::register_page, post => pages::register_submit }
    // Sign-in with an upstream: a CSRF-protected POST leaves for the upstream; its
    // callback and the link offer may end at an app (a waiting /oauth2/authorize).
    "/login/upstream/{name}" [Public, leaves_site] { post => upstreams::start }
    "/login/upstream/{name}/callback" [Public, leaves_site] { get => upstreams::callback }
    "/login/upstream/{name}/link" [Public, leaves_site] { get => upstreams::link_finish }
    // Called by the upstream, not a browser: no session, no CSRF, JSON errors.
    "/login/upstream/{name}/backchannel-logout" [Public, problem] {
        post => upstreams::backchannel_logout,
    }
    "/logout" [Public] { post => pages::logout }
    "/step-up" [Proving, leaves_site] {
        get => second_factor::step_up_page,
        post => second_factor::step_up_submit,
    }
    "/account" [Session] { get => account::account }
    "/account/password" [Session] {
        get => account::password_page,
        post => account::password_submit,
    }
    "/account/mfa" [Session] { get => mfa::mfa_page, post => mfa::mfa_submit }
    "/account/passkeys" [Session] {
        get => passkeys::passkeys_page,
        post => passkeys::passkeys_submit,
    }
    "/webauthn/register/options" [Session, problem] { post => passkeys::register_options }
    "/webauthn/register" [Session, problem] { post => passkeys::register }
    "/webauthn/sign-in/options" [Public, problem] { post => passkeys::sign_in_options }
    "/webauthn/sign-in" [Public, problem] { post => passkeys::sign_in }
    "/webauthn/verify/options" [Public, problem] { post => passkeys::verify_options }
    "/webauthn/verify" [Public, problem] { post => passkeys::verify }
    "/webauthn/step-up/options" [Proving, problem] { post => passkeys::step_up_options }
    "/webauthn/step-up" [Proving, problem] { post => passkeys::step_up }
    "/account/devices" [Session] { get => devices::devices_page }
    "/account/devices/revoke-others" [Session] { post => devices::revoke_others }
    "/account/devices/revoke-all" [Proving] { post => devices::revoke_all }
    "/account/devices/{session_id}/revoke" [Session] { post => devices::revoke_device }
    "/account/trusted/{device_id}/remove" [Session] { post => devices::untrust_device }
    "/account/activity" [Session] { get => devices::activity_page }
    "/account/connections" [Session, leaves_site] { get => upstreams::connections }
    "/account/connections/{name}/connect" [Session, leaves_site] { post => upstreams::connect }
    "/account/connections/{name}/remove" [Session] { post => upstreams::remove }
    "/verify-email" [Public] {
        get => mail_pages::verify_email_page,
        post => mail_pages::verify_email,
    }
    "/verify-email/resend" [Public] { post => mail_pages::resend_verification }
    "/password/forgot" [Public] {
        get => mail_pages::forgot_page,
        post => mail_pages::forgot_submit,
    }
    "/password/reset" [Public] {
        get => mail_pages::reset_page,
        post => mail_pages::reset_submit,
    }
    "/account/email" [Session] {
        get => mail_pages::change_email_page,
        post => mail_pages::change_email_submit,
    }
    "/account/email/confirm" [Public] {
        get => mail_pages::change_email_confirm_page,
        post => mail_pages::change_email_confirm,
    }
    "/dbsc/register" [Public] { post => dbsc::register }
    "/dbsc/refresh" [Public] { post => dbsc::refresh }
    "/not-me" [Public] { get => not_me::not_me_page, post => not_me::not_me }
    "/account/apps/{client_id}/withdraw" [Session] { post => account::withdraw_app }
    "/.well-known/openid-configuration" [Public, problem] { get => oauth::openid_configuration }
    "/.well-known/oauth-authorization-server" [Public, problem] { get => oauth::openid_configuration }
    "/jwks.json" [Public, problem] { get => oauth::jwks }
    "/oauth2/authorize" [Public, leaves_site] {
        get => oauth_pages::authorize_page,
        post => oauth_pages::authorize_post,
    }
    "/oauth2/consent" [Public, leaves_site] {
        get => oauth_pages::authorize_page,
        post => oauth_pages::consent_post,
    }
    "/oauth2/token" [Public, oauth] { post => oauth::token_endpoint, options => cors::preflight }
    "/oauth2/introspect" [Public, oauth] { post => oauth::introspect_endpoint }
    "/oauth2/revoke" [Public, oauth] { post => oauth::revoke_endpoint, options => cors::preflight }
    "/oauth2/userinfo" [Public, oauth] {
        get => oauth::userinfo_get,
        post => oauth::userinfo_post,
        options => cors::preflight,
    }
    "/oauth2/logout" [Public, leaves_site] {
        get => oauth_pages::logout_get,
        post => oauth_pages::logout_post,
    }
    "/healthz" [Public, operational] { get => ops::healthz }
    "/readyz" [Public, operational] { get => ops::readyz }
    "/metrics" [Public, operational] { get => ops::metrics }
    "/static/css/gatehouse.css" [Public] { get => ops::stylesheet }
    "/static/js/gatehouse.js" [Public] { get => ops::script }
    "/static/js/passkeys.js" [Public] { get => ops::passkeys_script }
}
