//! The RS256 keys tokens are signed and verified with, parsed once and held in memory.
//! The keys themselves live in PostgreSQL (`signing_keys`, private half sealed); this
//! node's copy is refreshed by `oauth::keys`. Key material for a `kid` never changes,
//! so a cached key is never stale; only *which* key signs and whether one is retired
//! can change, and every liveness decision (introspection, userinfo) reads that from
//! the database.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{RSA_PKCS1_SHA256, RsaKeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Serialize;
use serde::de::DeserializeOwned;
use time::OffsetDateTime;

/// The key that signs: parsed once. jsonwebtoken's `encode` parses the DER key on
/// every call, which would put a key parse on the token path; signing here uses the
/// parsed aws-lc-rs key directly and leaves verification to jsonwebtoken.
pub struct Signer {
    pub kid: String,
    pair: RsaKeyPair,
}

/// A key that verifies, and until when (`None`: it is the signing key).
pub struct Verifier {
    pub kid: String,
    pub n: Vec<u8>,
    pub e: Vec<u8>,
    pub verify_until: Option<OffsetDateTime>,
    decoding: DecodingKey,
}

#[derive(Default)]
struct Ring {
    current: Option<Arc<Signer>>,
    verifiers: HashMap<String, Arc<Verifier>>,
    loaded_at: Option<Instant>,
}

/// This node's signing keys.
#[derive(Default)]
pub struct SigningKeys {
    ring: RwLock<Arc<Ring>>,
    /// One reload at a time: requests that find the keys stale while another is
    /// reloading them use the current copy instead of piling onto the database.
    pub reload: tokio::sync::Mutex<()>,
}

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("no signing key is loaded")]
    NoKey,
    #[error("token could not be signed")]
    Failed,
}

/// Why a token was not accepted. Callers answer all of them the same way.
#[derive(Debug, PartialEq, Eq)]
pub enum VerifyError {
    Malformed,
    UnknownKey,
    BadSignature,
}

impl Signer {
    /// Signs `claims` as a compact JWS (RFC 7515 §7.1) with this key.
    pub fn sign<T: Serialize>(&self, typ: &str, claims: &T) -> Result<String, SignError> {
        let header = serde_json::to_vec(&Header {
            alg: "RS256",
            typ,
            kid: &self.kid,
        })
        .map_err(|_| SignError::Failed)?;
        let body = serde_json::to_vec(claims).map_err(|_| SignError::Failed)?;
        let mut message = URL_SAFE_NO_PAD.encode(header);
        message.push('.');
        message.push_str(&URL_SAFE_NO_PAD.encode(body));
        let mut signature = vec![0; self.pair.public_modulus_len()];
        self.pair
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                message.as_bytes(),
                &mut signature,
            )
            .map_err(|_| SignError::Failed)?;
        message.push('.');
        message.push_str(&URL_SAFE_NO_PAD.encode(signature));
        Ok(message)
    }

    /// Parses a PKCS#8 RSA private key.
    pub fn from_pkcs8(kid: &str, pkcs8: &[u8]) -> Option<Self> {
        Some(Self {
            kid: kid.to_string(),
            pair: RsaKeyPair::from_pkcs8(pkcs8).ok()?,
        })
    }
}

impl Verifier {
    pub fn new(kid: &str, n: &[u8], e: &[u8], verify_until: Option<OffsetDateTime>) -> Self {
        Self {
            kid: kid.to_string(),
            n: n.to_vec(),
            e: e.to_vec(),
            verify_until,
            decoding: DecodingKey::from_rsa_raw_components(n, e),
        }
    }
}

/// A freshly generated RSA-2048 key: PKCS#8 private half, public n and e, and its
/// `kid` (base64url SHA-256 of n ‖ e, so equal keys have equal ids).
pub struct GeneratedKey {
    pub kid: String,
    pub pkcs8: Vec<u8>,
    pub n: Vec<u8>,
    pub e: Vec<u8>,
}

pub fn generate_key() -> Option<GeneratedKey> {
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::rsa::{KeyPair, KeySize, PublicKeyComponents};
    use aws_lc_rs::signature::KeyPair as _;
    use sha2::{Digest, Sha256};
    let pair = KeyPair::generate(KeySize::Rsa2048).ok()?;
    let pkcs8 = pair.as_der().ok()?.as_ref().to_vec();
    let public: PublicKeyComponents<Vec<u8>> = pair.public_key().into();
    let mut h = Sha256::new();
    h.update(&public.n);
    h.update(&public.e);
    Some(GeneratedKey {
        kid: URL_SAFE_NO_PAD.encode(&h.finalize()[..16]),
        pkcs8,
        n: public.n,
        e: public.e,
    })
}

#[derive(Serialize)]
struct Header<'a> {
    alg: &'static str,
    typ: &'a str,
    kid: &'a str,
}

impl SigningKeys {
    /// Replaces this node's keys (after reading them from the database).
    pub fn install(
        &self,
        current: Option<Arc<Signer>>,
        verifiers: Vec<Arc<Verifier>>,
        at: Instant,
    ) {
        let ring = Ring {
            current,
            verifiers: verifiers.into_iter().map(|v| (v.kid.clone(), v)).collect(),
            loaded_at: Some(at),
        };
        if let Ok(mut guard) = self.ring.write() {
            *guard = Arc::new(ring);
        }
    }

    fn ring(&self) -> Arc<Ring> {
        self.ring.read().map(|g| g.clone()).unwrap_or_default()
    }

    /// When the keys were last read from the database.
    pub fn loaded_at(&self) -> Option<Instant> {
        self.ring().loaded_at
    }

    /// The parsed key for `kid`, if this node has it (to reuse instead of re-parsing).
    pub fn known(&self, kid: &str) -> (Option<Arc<Signer>>, Option<Arc<Verifier>>) {
        let ring = self.ring();
        (
            ring.current.clone().filter(|s| s.kid == kid),
            ring.verifiers.get(kid).cloned(),
        )
    }

    /// The signing key's id.
    pub fn current_kid(&self) -> Option<String> {
        self.ring().current.as_ref().map(|s| s.kid.clone())
    }

    /// Every key that still verifies at `now`, for the JWKS.
    pub fn published(&self, now: OffsetDateTime) -> Vec<Arc<Verifier>> {
        let mut keys: Vec<Arc<Verifier>> = self
            .ring()
            .verifiers
            .values()
            .filter(|v| v.verify_until.is_none_or(|t| t > now))
            .cloned()
            .collect();
        keys.sort_by(|a, b| {
            a.verify_until
                .is_some()
                .cmp(&b.verify_until.is_some())
                .then(a.kid.cmp(&b.kid))
        });
        keys
    }

    /// The key that signs now. A request takes it once and signs everything with
    /// it, so the `kid` it records is the one in its tokens.
    pub fn current(&self) -> Option<Arc<Signer>> {
        self.ring().current.clone()
    }

    /// Signs `claims` with the current key (see `Signer::sign`).
    pub fn sign<T: Serialize>(&self, typ: &str, claims: &T) -> Result<String, SignError> {
        self.current().ok_or(SignError::NoKey)?.sign(typ, claims)
    }

    /// Checks a token's signature against the key its `kid` names and returns its
    /// claims and `kid`. Only RS256 and only our own keys: `alg: none`, HMAC with a
    /// public key, and keys embedded in the header (`jwk`, `jku`) never verify
    /// (checklist T1). `typ`, when given, must match (RFC 9068 §4). Expiry, issuer and
    /// audience are the caller's to check, against the injected clock.
    pub fn verify<T: DeserializeOwned>(
        &self,
        token: &str,
        typ: Option<&str>,
    ) -> Result<(T, String), VerifyError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| VerifyError::Malformed)?;
        if header.alg != Algorithm::RS256 {
            return Err(VerifyError::BadSignature);
        }
        if let Some(want) = typ
            && !header
                .typ
                .as_deref()
                .is_some_and(|t| t.eq_ignore_ascii_case(want))
        {
            return Err(VerifyError::Malformed);
        }
        let kid = header.kid.ok_or(VerifyError::UnknownKey)?;
        let verifier = self
            .ring()
            .verifiers
            .get(&kid)
            .cloned()
            .ok_or(VerifyError::UnknownKey)?;
        let mut validation = Validation::new(Algorithm::RS256);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        let data = jsonwebtoken::decode::<T>(token, &verifier.decoding, &validation)
            .map_err(|_| VerifyError::BadSignature)?;
        Ok((data.claims, kid))
    }

    /// Whether `kid` is known here and still verifies at `now`.
    pub fn verifies_at(&self, kid: &str, now: OffsetDateTime) -> bool {
        self.ring()
            .verifiers
            .get(kid)
            .is_some_and(|v| v.verify_until.is_none_or(|t| t > now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> SigningKeys {
        let g = generate_key().unwrap();
        let keys = SigningKeys::default();
        keys.install(
            Some(Arc::new(Signer::from_pkcs8(&g.kid, &g.pkcs8).unwrap())),
            vec![Arc::new(Verifier::new(&g.kid, &g.n, &g.e, None))],
            Instant::now(),
        );
        keys
    }

    #[test]
    fn a_signed_token_verifies_and_an_edited_one_does_not() {
        let keys = keys();
        let token = keys
            .sign(
                "at+jwt",
                &serde_json::json!({"sub": "a", "scope": "openid"}),
            )
            .unwrap();
        let kid = keys.current_kid().unwrap();
        let (claims, k): (serde_json::Value, _) = keys.verify(&token, Some("at+jwt")).unwrap();
        assert_eq!(claims["sub"], "a");
        assert_eq!(k, kid);
        assert_eq!(
            keys.verify::<serde_json::Value>(&token, Some("JWT"))
                .unwrap_err(),
            VerifyError::Malformed
        );
        let parts: Vec<&str> = token.split('.').collect();
        let edited = URL_SAFE_NO_PAD.encode(br#"{"sub":"b","scope":"openid"}"#);
        let forged = format!("{}.{}.{}", parts[0], edited, parts[2]);
        assert!(keys.verify::<serde_json::Value>(&forged, None).is_err());
        let stripped = format!("{}.{}.", parts[0], parts[1]);
        assert!(keys.verify::<serde_json::Value>(&stripped, None).is_err());
    }

    #[test]
    fn alg_none_and_foreign_kids_never_verify() {
        let keys = keys();
        let kid = keys.current_kid().unwrap();
        let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"none","kid":"{kid}"}}"#));
        let body = URL_SAFE_NO_PAD.encode(br#"{"sub":"a"}"#);
        assert!(
            keys.verify::<serde_json::Value>(&format!("{header}.{body}."), None)
                .is_err()
        );
        let other = SigningKeys::default();
        let g = generate_key().unwrap();
        other.install(
            Some(Arc::new(Signer::from_pkcs8(&g.kid, &g.pkcs8).unwrap())),
            vec![],
            Instant::now(),
        );
        let token = other.sign("JWT", &serde_json::json!({"sub": "a"})).unwrap();
        assert_eq!(
            keys.verify::<serde_json::Value>(&token, None).unwrap_err(),
            VerifyError::UnknownKey
        );
    }
}
