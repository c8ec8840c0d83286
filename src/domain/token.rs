use secrecy::{ExposeSecret, SecretString};

use crate::crypto;

/// A 32-byte random bearer value, base64url (43 characters). Only its SHA-256 is
/// stored; it prints as `[redacted]`.
macro_rules! bearer_token {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        pub struct $name(SecretString);

        impl $name {
            pub fn generate() -> Self {
                Self(SecretString::from(crypto::random_token()))
            }

            /// A cookie value that could be one of ours. Anything else is not even
            /// looked up.
            pub fn parse(value: &str) -> Option<Self> {
                (value.len() == 43
                    && value
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
                .then(|| Self(SecretString::from(value.to_string())))
            }

            pub fn hash(&self) -> Vec<u8> {
                crypto::token_hash(self.0.expose_secret())
            }

            pub fn expose(&self) -> &str {
                self.0.expose_secret()
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("[redacted]")
            }
        }
    };
}

bearer_token!(
    /// The session cookie's value: 32 random bytes, base64url. Only its SHA-256 is stored.
    SessionToken
);

bearer_token!(
    /// The device cookie's value (`__Host-gatehouse_device`): links one browser's
    /// sessions. Never a credential on its own; only its SHA-256 is stored.
    DeviceToken
);

bearer_token!(
    /// The cookie of a half-finished sign-in (`__Host-gatehouse_pending`): names the
    /// challenge waiting for a second factor. Grants nothing; only its SHA-256 is stored.
    PendingToken
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_parse_and_hash_stably() {
        let t = SessionToken::generate();
        let again = SessionToken::parse(t.expose()).unwrap();
        assert_eq!(t.hash(), again.hash());
        assert_eq!(t.hash().len(), 32);
        assert_ne!(t.hash(), SessionToken::generate().hash());
    }

    #[test]
    fn foreign_cookie_values_are_not_tokens() {
        assert!(SessionToken::parse("").is_none());
        assert!(SessionToken::parse("abc").is_none());
        assert!(SessionToken::parse(&"a".repeat(44)).is_none());
        assert!(SessionToken::parse(&format!("{}=", "a".repeat(42))).is_none());
    }
}
