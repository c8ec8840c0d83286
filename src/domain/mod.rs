//! Pure types, no I/O. Each is built by `parse`, so a value that exists is valid.

mod email;
mod ids;
pub mod mail;
pub mod net;
mod password;
mod token;

pub use email::{Email, EmailError};
pub use ids::{SessionId, UserId};
pub use mail::{OutboundMail, QueuedMail};
pub use net::throttle_network;
pub use password::{Password, PasswordError};
pub use token::SessionToken;
