//! Integration tests: the real server over HTTP against real PostgreSQL, one fresh
//! database per test. Checklist items (../shared/SECURITY-CHECKLIST.md) are named in
//! comments where a test proves one.

mod helpers;
mod oauth_helpers;
mod oidc_crate;
mod soft_passkey;

mod accounts;
mod backchannel;
mod cli;
mod concurrency;
mod cors;
mod csrf;
mod dbsc;
mod dev_server;
mod devices;
mod doctor;
mod example_rp;
mod factor_changes;
mod faults;
mod fuzz_regressions;
mod geoip_fixture;
mod hardening;
mod headers;
mod input;
mod liveness;
mod logs;
mod mail;
mod node_rp;
mod nodes;
mod oauth;
mod operations;
mod operators;
mod otp;
mod passkeys;
mod reauth;
mod risk;
mod second_factor;
mod session_cap;
mod sessions;
mod sweep;
mod throttle;
mod tls;
