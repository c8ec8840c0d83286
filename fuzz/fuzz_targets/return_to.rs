//! `return_to`: whatever is accepted is a path on this site, read again by the URL
//! standard, and a fixed point (checklist W6).
#![no_main]

use gatehouse::web::pages::safe_return_to;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|raw: &str| {
    if let Some(local) = safe_return_to(Some(raw)) {
        assert!(
            local.starts_with('/') && !local.starts_with("//"),
            "{local:?}"
        );
        assert!(!local.contains('\\') && !local.chars().any(char::is_control));
        let base = url::Url::parse("https://gatehouse.test/").unwrap();
        assert_eq!(
            base.join(&local).unwrap().origin(),
            base.origin(),
            "{local:?}"
        );
        assert_eq!(safe_return_to(Some(&local)), Some(local.clone()));
    }
});
