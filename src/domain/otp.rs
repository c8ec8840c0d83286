//! One-time codes as people type them: six-digit codes (an authenticator app's, or
//! one sent by e-mail) and recovery codes (`xxxxx-xxxxx`). Both go in one field.

use secrecy::{ExposeSecret, SecretString};

use crate::crypto;

/// Recovery codes use lower-case letters and digits without look-alikes (no 0/o,
/// 1/l/i): 31 symbols, so ten of them carry 49 bits.
const RECOVERY_ALPHABET: &[u8] = b"23456789abcdefghjkmnpqrstuvwxyz";
/// Ten codes per set (DESIGN.md "Precise rules").
pub const RECOVERY_CODES_PER_SET: usize = 10;

/// What a person typed into the code field, recognised by its shape. Spaces and a
/// missing dash are forgiven; case is not significant.
pub enum SubmittedCode {
    /// Six digits: a TOTP code or an e-mailed code.
    Digits(SecretString),
    /// A recovery code in its canonical form `xxxxx-xxxxx`.
    Recovery(SecretString),
}

impl SubmittedCode {
    pub fn parse(raw: &str) -> Option<Self> {
        let compact: String = raw
            .chars()
            .filter(|c| !c.is_whitespace() && *c != '-')
            .map(|c| c.to_ascii_lowercase())
            .collect();
        if compact.len() == 6 && compact.bytes().all(|b| b.is_ascii_digit()) {
            return Some(Self::Digits(SecretString::from(compact)));
        }
        if compact.len() == 10 && compact.bytes().all(|b| RECOVERY_ALPHABET.contains(&b)) {
            let canonical = format!("{}-{}", &compact[..5], &compact[5..]);
            return Some(Self::Recovery(SecretString::from(canonical)));
        }
        None
    }
}

impl std::fmt::Debug for SubmittedCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Uniform over `0..n` from the OS RNG (rejection sampling: no modulo bias).
fn uniform_below(n: u32) -> u32 {
    let zone = u32::MAX - (u32::MAX % n);
    loop {
        let v = u32::from_le_bytes(crypto::random_bytes::<4>());
        if v < zone {
            return v % n;
        }
    }
}

/// A fresh set of recovery codes, canonical form. Shown once; only MACs are kept.
pub fn new_recovery_codes() -> Vec<SecretString> {
    let len = u32::try_from(RECOVERY_ALPHABET.len()).unwrap_or(31);
    (0..RECOVERY_CODES_PER_SET)
        .map(|_| {
            let mut s = String::with_capacity(11);
            for i in 0..10 {
                if i == 5 {
                    s.push('-');
                }
                let idx = usize::try_from(uniform_below(len)).unwrap_or(0);
                s.push(char::from(RECOVERY_ALPHABET[idx]));
            }
            SecretString::from(s)
        })
        .collect()
}

/// A six-digit code to send by e-mail (uniform, leading zeros kept).
pub fn new_email_code() -> SecretString {
    SecretString::from(format!("{:06}", uniform_below(1_000_000)))
}

/// The bytes a code is MAC'd over: its canonical text.
pub fn code_bytes(code: &SecretString) -> &[u8] {
    code.expose_secret().as_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_recognised_by_shape() {
        assert!(matches!(
            SubmittedCode::parse(" 123 456 "),
            Some(SubmittedCode::Digits(_))
        ));
        match SubmittedCode::parse("ABCDE FGHJK") {
            Some(SubmittedCode::Recovery(c)) => assert_eq!(c.expose_secret(), "abcde-fghjk"),
            _ => panic!("a recovery code"),
        }
        for bad in [
            "",
            "12345",
            "1234567",
            "abcde-fghj0",
            "abcde-fghij1",
            "12345a",
        ] {
            assert!(SubmittedCode::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn recovery_codes_have_the_documented_format_and_differ() {
        let codes = new_recovery_codes();
        assert_eq!(codes.len(), 10);
        let mut seen = std::collections::HashSet::new();
        for c in &codes {
            let c = c.expose_secret();
            assert_eq!(c.len(), 11);
            assert_eq!(&c[5..6], "-");
            assert!(
                c.bytes()
                    .filter(|b| *b != b'-')
                    .all(|b| RECOVERY_ALPHABET.contains(&b))
            );
            assert!(matches!(
                SubmittedCode::parse(c),
                Some(SubmittedCode::Recovery(_))
            ));
            assert!(seen.insert(c.to_string()));
        }
    }

    #[test]
    fn email_codes_are_six_digits() {
        for _ in 0..100 {
            let c = new_email_code();
            assert_eq!(c.expose_secret().len(), 6);
            assert!(c.expose_secret().bytes().all(|b| b.is_ascii_digit()));
        }
    }
}
