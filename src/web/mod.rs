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

use actix_web::web;

/// Who may use a route. The route table carries it, so tests can walk every
/// signed-in route (a half-finished sign-in must open none of them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Answers anyone (sign-in pages, mailed links, operations).
    Public,
    /// Needs a live session: a signed-out GET is sent to sign in, anything else is 401.
    Session,
}

/// One row of the route table, as data.
#[derive(Clone, Copy, Debug)]
pub struct RouteInfo {
    pub path: &'static str,
    /// Lower-case HTTP methods: `get`, `post`, `options` (CORS preflight).
    pub methods: &'static [&'static str],
    pub access: Access,
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
/// data (`ROUTES`), so the two cannot drift apart.
macro_rules! route_table {
    ($( $path:literal [$access:ident] { $($method:ident => $handler:path),+ $(,)? } )*) => {
        /// Every route Gatehouse answers, with who may use it.
        pub const ROUTES: &[RouteInfo] = &[
            $( RouteInfo {
                path: $path,
                methods: &[$(stringify!($method)),+],
                access: Access::$access,
            }, )*
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
    "/login" [Public] { get => pages::login_page, post => pages::login_submit }
    "/login/verify" [Public] {
        get => second_factor::verify_page,
        post => second_factor::verify_submit,
    }
    "/register" [Public] { get => pages::register_page, post => pages::register_submit }
    "/logout" [Public] { post => pages::logout }
    "/step-up" [Session] {
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
    "/webauthn/register/options" [Session] { post => passkeys::register_options }
    "/webauthn/register" [Session] { post => passkeys::register }
    "/webauthn/sign-in/options" [Public] { post => passkeys::sign_in_options }
    "/webauthn/sign-in" [Public] { post => passkeys::sign_in }
    "/webauthn/verify/options" [Public] { post => passkeys::verify_options }
    "/webauthn/verify" [Public] { post => passkeys::verify }
    "/webauthn/step-up/options" [Session] { post => passkeys::step_up_options }
    "/webauthn/step-up" [Session] { post => passkeys::step_up }
    "/account/devices" [Session] { get => devices::devices_page }
    "/account/devices/revoke-others" [Session] { post => devices::revoke_others }
    "/account/devices/revoke-all" [Session] { post => devices::revoke_all }
    "/account/devices/{session_id}/revoke" [Session] { post => devices::revoke_device }
    "/account/trusted/{device_id}/remove" [Session] { post => devices::untrust_device }
    "/account/activity" [Session] { get => devices::activity_page }
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
    "/.well-known/openid-configuration" [Public] { get => oauth::openid_configuration }
    "/.well-known/oauth-authorization-server" [Public] { get => oauth::openid_configuration }
    "/jwks.json" [Public] { get => oauth::jwks }
    "/oauth2/authorize" [Public] {
        get => oauth_pages::authorize_page,
        post => oauth_pages::authorize_post,
    }
    "/oauth2/consent" [Public] {
        get => oauth_pages::authorize_page,
        post => oauth_pages::consent_post,
    }
    "/oauth2/token" [Public] { post => oauth::token_endpoint, options => cors::preflight }
    "/oauth2/introspect" [Public] { post => oauth::introspect_endpoint }
    "/oauth2/revoke" [Public] { post => oauth::revoke_endpoint, options => cors::preflight }
    "/oauth2/userinfo" [Public] {
        get => oauth::userinfo_get,
        post => oauth::userinfo_post,
        options => cors::preflight,
    }
    "/oauth2/logout" [Public] {
        get => oauth_pages::logout_get,
        post => oauth_pages::logout_post,
    }
    "/healthz" [Public] { get => ops::healthz }
    "/readyz" [Public] { get => ops::readyz }
    "/metrics" [Public] { get => ops::metrics }
    "/static/css/gatehouse.css" [Public] { get => ops::stylesheet }
    "/static/js/gatehouse.js" [Public] { get => ops::script }
    "/static/js/passkeys.js" [Public] { get => ops::passkeys_script }
}
