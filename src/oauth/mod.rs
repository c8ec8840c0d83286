//! The OAuth 2.0 / OpenID Connect provider (DESIGN.md "Apps"): the services behind
//! `/oauth2/*`, discovery and the JWKS. Handlers in `web::oauth` extract and render;
//! the rules live here, the SQL in `store::{oauth, tokens}`.

pub mod authorize;
pub mod backchannel;
pub mod clients;
pub mod consents;
pub mod discovery;
pub mod introspect;
pub mod invalidation;
pub mod keys;
pub mod logout;
pub mod rules;
pub mod token;
pub mod tokens;
