//! Mail as the outbox stores it. Bodies carry single-use links, so `Debug` never
//! prints them.

use std::fmt;

/// A message to put in the outbox.
#[derive(Clone)]
pub struct OutboundMail {
    pub to: String,
    pub subject: String,
    pub text: String,
    pub html: String,
}

impl fmt::Debug for OutboundMail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboundMail")
            .field("to", &self.to)
            .field("subject", &self.subject)
            .field("text", &"[redacted]")
            .field("html", &"[redacted]")
            .finish()
    }
}

/// A message taken from the outbox for delivery, or why its sealed body cannot be
/// opened here.
#[derive(Clone, Debug)]
pub struct QueuedMail {
    pub id: uuid::Uuid,
    pub attempts: i32,
    pub mail: Result<OutboundMail, Unopenable>,
}

/// Why a queued body cannot be opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unopenable {
    /// Sealed under a key this node does not hold: perhaps one another node already
    /// has (a rotation under way), perhaps one dropped for good. Worth retrying.
    UnknownKey,
    /// Under a key this node holds, but it does not open: it never will.
    Damaged,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_never_shows_a_mail_body() {
        // Defect 9: bodies hold reset and confirmation links.
        let mail = OutboundMail {
            to: "a@example.com".into(),
            subject: "Reset".into(),
            text: "https://id.example.com/password/reset?token=SECRET1".into(),
            html: "<a href=\"https://id.example.com/password/reset?token=SECRET2\">".into(),
        };
        let queued = QueuedMail {
            id: uuid::Uuid::nil(),
            attempts: 0,
            mail: Ok(mail.clone()),
        };
        for shown in [
            format!("{mail:?}"),
            format!("{queued:?}"),
            format!("{queued:#?}"),
        ] {
            assert!(!shown.contains("SECRET"), "{shown}");
            assert!(shown.contains("[redacted]"), "{shown}");
            assert!(shown.contains("a@example.com"), "{shown}");
        }
    }
}
