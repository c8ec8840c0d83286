//! The strict form and query decoder: any bytes either decode or are refused with a
//! 400-shaped error; never a panic. What it accepts decodes the same way twice.
#![no_main]

use gatehouse::web::forms::{check_urlencoded, decode_strict};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let accepted = check_urlencoded(data).is_ok();
    for plus_as_space in [true, false] {
        if let Ok(text) = decode_strict(data, plus_as_space) {
            assert_eq!(decode_strict(data, plus_as_space).ok(), Some(text));
        }
    }
    if accepted {
        // Every field of an accepted body is itself well formed.
        for pair in data.split(|b| *b == b'&').filter(|p| !p.is_empty()) {
            let mut parts = pair.splitn(2, |b| *b == b'=');
            assert!(decode_strict(parts.next().unwrap_or_default(), true).is_ok());
            assert!(decode_strict(parts.next().unwrap_or_default(), true).is_ok());
        }
    }
});
