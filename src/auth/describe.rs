//! Words for people: times, sign-in methods and event kinds as the account pages and
//! mails say them.

use time::OffsetDateTime;

/// "2026-12-02 09:30 UTC".
pub fn when(t: OffsetDateTime) -> String {
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute] UTC");
    t.format(&format).unwrap_or_default()
}

/// "just now", "5 minutes ago", "3 hours ago", "2 days ago".
pub fn ago(now: OffsetDateTime, t: OffsetDateTime) -> String {
    let secs = (now - t).whole_seconds().max(0);
    let (n, unit) = match secs {
        0..60 => return "just now".into(),
        60..3600 => (secs / 60, "minute"),
        3600..86400 => (secs / 3600, "hour"),
        _ => (secs / 86400, "day"),
    };
    format!("{n} {unit}{} ago", if n == 1 { "" } else { "s" })
}

/// How the person proved themselves, from `amr`: "Password", "Password +
/// authenticator code", "Passkey" (`user`, the verification a passkey itself asks
/// for, is part of the passkey, not a method of its own).
pub fn methods(amr: &[String]) -> String {
    methods_with(amr, None)
}

/// `methods`, naming the upstream identity provider (`fed`) by its label when it is
/// known: "Google + authenticator code".
pub fn methods_with(amr: &[String], upstream: Option<&str>) -> String {
    let mut words: Vec<&str> = amr
        .iter()
        .filter(|m| m.as_str() != "user")
        .map(|m| match m.as_str() {
            "pwd" => "password",
            "fed" => upstream.unwrap_or("another identity provider"),
            "otp" => "authenticator code",
            "email" => "e-mailed code",
            "recovery" => "recovery code",
            "hwk" | "swk" => "passkey",
            _ => "other method",
        })
        .collect();
    words.dedup();
    let mut text = words.join(" + ");
    if let Some(first) = text.get(..1) {
        text = first.to_uppercase() + &text[1..];
    }
    text
}

/// A security event's kind as a heading.
pub fn event_title(kind: &str) -> &'static str {
    match kind {
        "registered" => "Account created",
        "signed_in" => "Signed in",
        "sign_in_failed" => "Failed sign-in",
        "signed_out" => "Signed out",
        "session_revoked" => "Session ended",
        "new_device" => "Sign-in from a new device",
        "password_reset" => "Password reset by e-mail link",
        "password_changed" => "Password changed",
        "email_verified" => "E-mail address confirmed",
        "email_change_requested" => "E-mail change requested",
        "email_changed" => "E-mail address changed",
        "user_disabled" => "Account disabled",
        "user_enabled" => "Account enabled",
        "second_factor_required" => "Second factor asked for",
        "second_factor_failed" => "Wrong second-factor code",
        "stepped_up" => "Identity confirmed with a second factor",
        "totp_enabled" => "Two-step verification turned on",
        "totp_removed" => "Two-step verification turned off",
        "recovery_codes_regenerated" => "New recovery codes made",
        "sign_in_denied" => "Sign-in blocked: it looked unusual",
        "session_flagged" => "Unusual activity on a session",
        "reported_not_me" => "You reported a sign-in that wasn't you",
        "device_untrusted" => "A browser is no longer trusted",
        "passkey_added" => "Passkey added",
        "passkey_removed" => "Passkey removed",
        "passkey_clone_suspected" => "A passkey may have been copied: it no longer signs in",
        "upstream_linked" => "Sign-in with another provider connected",
        "upstream_unlinked" => "Sign-in with another provider removed",
        "upstream_refused" => "A sign-in with another provider was refused",
        "refresh_token_reused" => "An app's refresh token was used twice: its sign-in was ended",
        _ => "Account event",
    }
}

/// Who did it, as the activity page says it.
pub fn actor(actor: &str) -> &'static str {
    match actor {
        "admin" => "an administrator",
        "system" => "Gatehouse",
        _ => "you",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_and_methods_read_naturally() {
        let now = OffsetDateTime::UNIX_EPOCH + time::Duration::days(10);
        assert_eq!(ago(now, now), "just now");
        assert_eq!(ago(now, now - time::Duration::minutes(1)), "1 minute ago");
        assert_eq!(ago(now, now - time::Duration::hours(3)), "3 hours ago");
        assert_eq!(ago(now, now - time::Duration::days(2)), "2 days ago");
        assert_eq!(methods(&["pwd".into()]), "Password");
        assert_eq!(
            methods(&["pwd".into(), "otp".into()]),
            "Password + authenticator code"
        );
        assert_eq!(methods(&["hwk".into(), "user".into()]), "Passkey");
        assert_eq!(
            methods(&["pwd".into(), "swk".into(), "user".into()]),
            "Password + passkey"
        );
        assert_eq!(methods(&["fed".into()]), "Another identity provider");
        assert_eq!(
            methods_with(&["fed".into(), "otp".into()], Some("Google")),
            "Google + authenticator code"
        );
    }
}
