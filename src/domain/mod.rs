//! Pure types, no I/O. Each is built by `parse`, so a value that exists is valid.

pub mod claims;
pub mod context;
mod email;
mod ids;
pub mod mail;
pub mod net;
pub mod oauth;
pub mod otp;
mod password;
pub mod risk;
mod token;

pub use context::{Agent, DeviceKind, Location};
pub use email::{Email, EmailError};
pub use ids::{DeviceId, SessionId, UserId};
pub use mail::{OutboundMail, QueuedMail};
pub use net::throttle_network;
pub use otp::SubmittedCode;
pub use password::{Password, PasswordError};
pub use token::{DeviceToken, PendingToken, SessionToken};
