//! Pure types, no I/O. Each is built by `parse`, so a value that exists is valid.

mod email;
mod ids;
mod password;
mod token;

pub use email::{Email, EmailError};
pub use ids::{SessionId, UserId};
pub use password::{Password, PasswordError};
pub use token::SessionToken;
