use std::fmt;
use unicode_normalization::UnicodeNormalization;

/// An e-mail address in canonical form: trimmed, NFKC-normalised, lower-case ASCII.
///
/// Only ASCII survives normalisation: that is what stops a look-alike second account
/// (`Ａlice` folds to `alice`; Cyrillic `аlice` is refused instead of being a second
/// "alice", checklist H5, Keycloak CVE-2021-3424). International domains are accepted
/// in their punycode (`xn--…`) form.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

/// Why an address was refused; the text is shown to the person.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmailError {
    #[error("Enter your e-mail address.")]
    Empty,
    #[error("Enter an e-mail address like name@example.com.")]
    Malformed,
    #[error("Use the plain (ASCII) form of the address; international domains in their xn-- form.")]
    NotAscii,
    #[error("That e-mail address is too long.")]
    TooLong,
}

impl Email {
    pub fn parse(input: &str) -> Result<Self, EmailError> {
        let folded: String = input.trim().nfkc().collect::<String>().to_lowercase();
        if folded.is_empty() {
            return Err(EmailError::Empty);
        }
        if folded.len() > 254 {
            return Err(EmailError::TooLong);
        }
        if !folded.is_ascii() {
            return Err(EmailError::NotAscii);
        }
        let (local, domain) = folded.rsplit_once('@').ok_or(EmailError::Malformed)?;
        let local_ok = !local.is_empty()
            && local.len() <= 64
            && !local.starts_with('.')
            && !local.ends_with('.')
            && !local.contains("..")
            && local
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~.".contains(&b));
        let labels: Vec<&str> = domain.split('.').collect();
        let domain_ok = labels.len() >= 2
            && labels.iter().all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if local_ok && domain_ok {
            Ok(Self(folded))
        } else {
            Err(EmailError::Malformed)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Email({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_trimmed_and_folded_to_one_canonical_form() {
        for variant in [
            "alice@example.com",
            "  Alice@Example.COM ",
            "ALICE@EXAMPLE.COM",
            "Ａlice@example.com",
        ] {
            assert_eq!(
                Email::parse(variant).unwrap().as_str(),
                "alice@example.com",
                "{variant}"
            );
        }
    }

    #[test]
    fn look_alikes_and_malformed_addresses_are_refused() {
        assert_eq!(
            Email::parse("\u{430}lice@example.com"),
            Err(EmailError::NotAscii)
        );
        for bad in [
            "",
            "alice",
            "@example.com",
            "alice@",
            "alice@localhost",
            "a b@example.com",
            "alice@exa_mple.com",
            "alice@-example.com",
            ".alice@example.com",
            "al..ice@example.com",
            "alice@example.com\0",
            "' OR '1'='1",
            "alice'--",
            "a%zz@x",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} was accepted");
        }
        assert_eq!(
            Email::parse(&format!("{}@example.com", "a".repeat(250))),
            Err(EmailError::TooLong)
        );
    }

    #[test]
    fn ordinary_addresses_are_accepted() {
        for good in [
            "bob+tag@example.co.uk",
            "o'brien@example.ie",
            "x@xn--bcher-kva.example",
            "a%b@example.com",
        ] {
            assert!(Email::parse(good).is_ok(), "{good}");
        }
    }
}
