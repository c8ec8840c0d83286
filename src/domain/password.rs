use std::collections::HashSet;
use std::sync::OnceLock;

use secrecy::{ExposeSecret, SecretString};
use unicode_normalization::UnicodeNormalization;

/// A password as the person typed it, NFKC-normalised so that the same characters
/// entered on another keyboard give the same bytes (NIST 800-63B §5.1.1.2).
/// Never printed, never serialised.
pub struct Password(SecretString);

/// The 10,000 most common passwords (lower-case), one per line.
const COMMON: &str = include_str!("common-passwords.txt");

fn common() -> &'static HashSet<&'static str> {
    static SET: OnceLock<HashSet<&'static str>> = OnceLock::new();
    SET.get_or_init(|| {
        COMMON
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect()
    })
}

pub const MIN_CHARS: usize = 8;
pub const MAX_CHARS: usize = 128;

/// Why a new password was refused; the text is shown to the person.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PasswordError {
    #[error("Use at least 8 characters.")]
    TooShort,
    #[error("Use at most 128 characters.")]
    TooLong,
    #[error("That password is one of the most common ones and is guessed first. Choose another.")]
    Common,
}

impl Password {
    /// For a password being *checked* (sign-in): no policy, only normalisation, so
    /// that a policy change never locks anyone out. Length is still capped so that a
    /// huge input cannot make argon2 hash megabytes.
    pub fn for_verification(input: &str) -> Option<Self> {
        let normalised: String = input.nfkc().collect();
        (normalised.chars().count() <= MAX_CHARS * 4).then(|| Self(SecretString::from(normalised)))
    }

    /// For a password being *set*: 8–128 characters of any kind, not a common one.
    /// No composition rules (NIST 800-63B §5.1.1.2; ASVS 6.2.5).
    pub fn new_password(input: &str) -> Result<Self, PasswordError> {
        let normalised: String = input.nfkc().collect();
        let chars = normalised.chars().count();
        if chars < MIN_CHARS {
            return Err(PasswordError::TooShort);
        }
        if chars > MAX_CHARS {
            return Err(PasswordError::TooLong);
        }
        if common().contains(normalised.to_lowercase().as_str()) {
            return Err(PasswordError::Common);
        }
        Ok(Self(SecretString::from(normalised)))
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_common_list_has_ten_thousand_entries() {
        assert_eq!(common().len(), 10_000);
    }

    #[test]
    fn policy_is_length_and_commonness_only() {
        // L5
        assert_eq!(
            Password::new_password("seven77").unwrap_err(),
            PasswordError::TooShort
        );
        assert_eq!(
            Password::new_password("password123").unwrap_err(),
            PasswordError::Common
        );
        assert_eq!(
            Password::new_password("PassWord123").unwrap_err(),
            PasswordError::Common
        );
        assert_eq!(
            Password::new_password(&"x".repeat(129)).unwrap_err(),
            PasswordError::TooLong
        );
        assert!(Password::new_password("correct horse battery staple").is_ok());
        assert!(
            Password::new_password("aaaaaaaaaaaa").is_ok(),
            "no composition rules"
        );
        let emoji = "🔐🦀 gate-house ключ 鍵 ".repeat(4);
        assert!(emoji.chars().count() >= 64);
        assert_eq!(Password::new_password(&emoji).unwrap().expose(), emoji);
    }

    #[test]
    fn length_counts_characters_not_bytes() {
        assert!(Password::new_password("🦀🦀🦀🦀🦀🦀🦀🦀").is_ok());
        assert_eq!(
            Password::new_password("🦀🦀🦀🦀🦀🦀🦀").unwrap_err(),
            PasswordError::TooShort
        );
    }

    #[test]
    fn nfkc_makes_equivalent_input_equal() {
        let composed = Password::new_password("caf\u{e9} au lait").unwrap();
        let decomposed = Password::new_password("cafe\u{301} au lait").unwrap();
        assert_eq!(composed.expose(), decomposed.expose());
        assert_eq!(
            Password::for_verification("ｐａｓｓ").unwrap().expose(),
            "pass"
        );
    }

    #[test]
    fn passwords_never_print() {
        assert_eq!(
            format!("{:?}", Password::new_password("hunter2hunter2").unwrap()),
            "[redacted]"
        );
    }
}
