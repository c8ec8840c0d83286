//! Gatehouse: a self-hosted identity server with server-side, revocable sessions.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod auth;
pub mod cli;
pub mod clock;
pub mod cookies;
pub mod crypto;
pub mod doctor;
pub mod domain;
pub mod error;
pub mod geoip;
pub mod hasher;
pub mod liveness;
pub mod mail;
pub mod metrics;
pub mod oauth;
pub mod settings;
pub mod signing;
pub mod startup;
pub mod state;
pub mod store;
pub mod telemetry;
pub mod upstream;
pub mod web;
