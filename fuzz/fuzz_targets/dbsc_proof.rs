//! DBSC proofs (`Secure-Session-Response`): a registration proof signed by the key in
//! its own header, and a refresh proof against a stored key. Never a panic; `alg:
//! none`, HMAC over a public key and keys of other kinds never verify.
#![no_main]

use gatehouse::auth::dbsc::{proof_by_key, self_signed_proof};
use libfuzzer_sys::fuzz_target;

/// A P-256 public key as a DBSC session would have stored it.
const STORED: &str = r#"{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}"#;

fuzz_target!(|input: (&str, &str)| {
    let (proof, jwk) = input;
    let _ = self_signed_proof(proof);
    let _ = proof_by_key(proof, jwk);
    let _ = proof_by_key(proof, STORED);
    // An unsigned proof never passes.
    if proof.ends_with('.') {
        assert!(self_signed_proof(proof).is_none());
    }
});
