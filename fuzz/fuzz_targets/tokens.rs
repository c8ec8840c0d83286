//! Tokens as they arrive: cookie values (session, pending sign-in, device) and
//! bearer JWTs at introspection. Never a panic; nothing unsigned verifies.
#![no_main]

use gatehouse::domain::{DeviceToken, PendingToken, SessionToken};
use gatehouse::signing::SigningKeys;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|raw: &str| {
    if let Some(t) = SessionToken::parse(raw) {
        assert_eq!(t.expose(), raw);
    }
    let _ = PendingToken::parse(raw);
    let _ = DeviceToken::parse(raw);
    // No keys loaded: whatever the input, it cannot verify.
    let keys = SigningKeys::default();
    assert!(
        keys.verify::<serde_json::Value>(raw, Some("at+jwt"))
            .is_err()
    );
    assert!(keys.verify::<serde_json::Value>(raw, None).is_err());
});
