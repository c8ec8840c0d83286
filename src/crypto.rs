//! Keys and primitives for data at rest (DESIGN.md principle 2). Everything here is a
//! thin layer over RustCrypto crates: HKDF-SHA256 derives one key per purpose from
//! `GATEHOUSE_SECRET_KEY`, XChaCha20-Poly1305 seals personal data, HMAC-SHA256 gives
//! equality look-ups and CSRF tokens, SHA-256 stores bearer tokens.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::settings::SecretKey;

type HmacSha256 = Hmac<Sha256>;

/// The associated-data context of every sealed column and the purpose of every keyed
/// HMAC column: what seals a value and what re-seals it (`keys reencrypt`) must agree.
pub mod columns {
    pub const SESSION_IP: &str = "sessions.ip";
    pub const SESSION_USER_AGENT: &str = "sessions.user_agent";
    pub const SESSION_LOCATION: &str = "sessions.location";
    pub const SESSION_RISK_REASON: &str = "sessions.risk_reason";
    pub const SESSION_ANCHOR: &str = "sessions.anchor";
    pub const CHALLENGE_RISK_FLAG: &str = "mfa_challenges.risk_flag";
    pub const EVENT_IP: &str = "security_events.ip";
    pub const EVENT_USER_AGENT: &str = "security_events.user_agent";
    pub const EVENT_LOCATION: &str = "security_events.location";
    pub const DEVICE_LABEL: &str = "devices.label";
    pub const TOTP_SECRET: &str = "totp_credentials.secret";
    pub const SIGNING_KEY: &str = "signing_keys.private";
    pub const UPSTREAM_CLIENT_SECRET: &str = "upstreams.client_secret";
    pub const MAIL_TEXT: &str = "mail_outbox.text_body";
    pub const MAIL_HTML: &str = "mail_outbox.html_body";
    /// HMAC purposes of `sessions.ip_mac` and `sessions.country_mac`.
    pub const SEEN_IP: &str = "seen/ip";
    pub const SEEN_COUNTRY: &str = "seen/country";
    /// HMAC purposes of recovery codes and e-mailed codes (bound to their challenge),
    /// and of the per-user and per-address wrong-code counters' keys.
    pub const RECOVERY_CODE: &str = "mfa/recovery-code";
    pub const EMAIL_CODE: &str = "mfa/email-code";
    pub const THROTTLE_CODE: &str = "throttle/code";
    pub const THROTTLE_CODE_ADDRESS: &str = "throttle/code-address";
    pub const THROTTLE_CODE_MAIL: &str = "throttle/code-mail";
    pub const THROTTLE_RISK_MAIL: &str = "throttle/risk-mail";
}

/// Format byte in front of every ciphertext, so the layout can change later.
const SEALED_V1: u8 = 1;

/// 32 bytes from the operating system's RNG, base64url without padding (43 chars).
pub fn random_token() -> String {
    URL_SAFE_NO_PAD.encode(random_bytes::<32>())
}

/// `N` bytes from the operating system's RNG (`getrandom`). There is no fallback:
/// an OS that cannot give randomness cannot run an identity server.
#[allow(clippy::panic)]
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    if let Err(e) = getrandom::fill(&mut bytes) {
        panic!("the operating system's random number generator failed: {e}");
    }
    bytes
}

/// SHA-256 of a bearer token: what the database keeps instead of the token.
pub fn token_hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// Constant-time equality, for anything a caller could probe byte by byte.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// One generation of derived keys.
struct KeySet {
    id: [u8; 4],
    aead: XChaCha20Poly1305,
    hmac: [u8; 32],
}

impl KeySet {
    fn derive(root: &SecretKey) -> Self {
        let hk = Hkdf::<Sha256>::new(Some(b"gatehouse"), root.expose());
        let mut aead_key = [0u8; 32];
        let mut hmac = [0u8; 32];
        let mut id = [0u8; 4];
        // HKDF-SHA256 can produce up to 8160 bytes, so these never fail.
        let _ = hk.expand(b"gatehouse/v1/aead", &mut aead_key);
        let _ = hk.expand(b"gatehouse/v1/hmac", &mut hmac);
        let _ = hk.expand(b"gatehouse/v1/key-id", &mut id);
        Self {
            id,
            aead: XChaCha20Poly1305::new(&aead_key.into()),
            hmac,
        }
    }
}

/// The current key and the older ones still accepted for reading.
pub struct Keys {
    current: KeySet,
    old: Vec<KeySet>,
}

/// A sealed value could not be opened (unknown key id, tampered, wrong context).
#[derive(Debug, thiserror::Error)]
#[error("sealed value cannot be opened")]
pub struct OpenError;

/// Encryption failed. XChaCha20-Poly1305 fails only for messages beyond its length
/// limit (256 GiB); the error exists so that a failure can never turn into a
/// header-only "ciphertext" stored as if it were sealed data.
#[derive(Debug, thiserror::Error)]
#[error("value could not be sealed")]
pub struct SealError;

/// Length of a keyed HMAC value as stored: key id (4) ‖ HMAC-SHA256 (32).
pub const MAC_LEN: usize = 4 + 32;

impl Keys {
    pub fn new(current: &SecretKey, old: &[SecretKey]) -> Self {
        Self {
            current: KeySet::derive(current),
            old: old.iter().map(KeySet::derive).collect(),
        }
    }

    /// Seals `plaintext` for a column. `context` (e.g. `"sessions.ip"`) is bound as
    /// associated data, so a ciphertext moved to another column does not open.
    /// Layout: version (1) ‖ key id (4) ‖ nonce (24) ‖ ciphertext+tag.
    pub fn seal(&self, context: &str, plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        let nonce_bytes = random_bytes::<24>();
        let nonce = XNonce::from(nonce_bytes);
        let ciphertext = self
            .current
            .aead
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| SealError)?;
        let mut out = Vec::with_capacity(1 + 4 + 24 + ciphertext.len());
        out.push(SEALED_V1);
        out.extend_from_slice(&self.current.id);
        out.extend_from_slice(&nonce_bytes);
        out.extend_from_slice(&ciphertext);
        Ok(out)
    }

    /// The id of the key that seals and MACs now (the first 4 bytes after the version
    /// byte of a sealed value, the first 4 bytes of a MAC).
    pub fn current_key_id(&self) -> [u8; 4] {
        self.current.id
    }

    pub fn open(&self, context: &str, sealed: &[u8]) -> Result<Vec<u8>, OpenError> {
        if sealed.len() < 1 + 4 + 24 + 16 || sealed[0] != SEALED_V1 {
            return Err(OpenError);
        }
        let (id, rest) = sealed[1..].split_at(4);
        let (nonce, ciphertext) = rest.split_at(24);
        let keys = std::iter::once(&self.current).chain(self.old.iter());
        let key = keys.into_iter().find(|k| k.id == id).ok_or(OpenError)?;
        let nonce = XNonce::try_from(nonce).map_err(|_| OpenError)?;
        key.aead
            .decrypt(
                &nonce,
                Payload {
                    msg: ciphertext,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| OpenError)
    }

    /// Whether `sealed` names a key this process holds (current or old), whatever its
    /// content: a value that fails to open under a known key is damaged; one under an
    /// unknown key may belong to a key another node already has (a rotation rolling
    /// through the nodes).
    pub fn knows_key_of(&self, sealed: &[u8]) -> bool {
        match sealed.get(1..5) {
            Some(id) if sealed[0] == SEALED_V1 => std::iter::once(&self.current)
                .chain(self.old.iter())
                .any(|k| k.id == id),
            _ => false,
        }
    }

    /// Keyed HMAC for equality look-ups and bindings; `purpose` separates uses.
    /// The value starts with the id of the key that made it (`MAC_LEN` bytes in all),
    /// so a column can hold values of several key generations and a look-up can ask
    /// for every generation at once (`mac_candidates`) while `keys reencrypt` moves
    /// rows to the current key.
    pub fn mac(&self, purpose: &str, data: &[u8]) -> Vec<u8> {
        mac_with(&self.current, purpose, data)
    }

    /// The MAC of `data` under the current key and under every old key still
    /// accepted, current first: what an equality look-up must match after rotation.
    pub fn mac_candidates(&self, purpose: &str, data: &[u8]) -> Vec<Vec<u8>> {
        std::iter::once(&self.current)
            .chain(self.old.iter())
            .map(|k| mac_with(k, purpose, data))
            .collect()
    }
}

fn mac_with(key: &KeySet, purpose: &str, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAC_LEN);
    out.extend_from_slice(&key.id);
    let Ok(mut mac) = HmacSha256::new_from_slice(&key.hmac) else {
        return out; // HMAC accepts keys of any length; unreachable.
    };
    mac.update(purpose.as_bytes());
    mac.update(&[0]);
    mac.update(data);
    out.extend_from_slice(&mac.finalize().into_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn keys(byte: u8) -> Keys {
        Keys::new(&SecretKey::from_bytes([byte; 32]), &[])
    }

    #[test]
    fn sealed_values_open_only_with_their_context_and_key() {
        let k = keys(1);
        let sealed = k.seal("sessions.ip", b"203.0.113.9").unwrap();
        assert_eq!(k.open("sessions.ip", &sealed).unwrap(), b"203.0.113.9");
        assert!(k.open("sessions.user_agent", &sealed).is_err());
        assert!(keys(2).open("sessions.ip", &sealed).is_err());
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(k.open("sessions.ip", &tampered).is_err());
        assert!(k.knows_key_of(&tampered), "damaged, not foreign");
        assert!(!keys(2).knows_key_of(&sealed));
        assert_ne!(
            k.seal("sessions.ip", b"x").unwrap(),
            k.seal("sessions.ip", b"x").unwrap()
        );
    }

    #[test]
    fn an_old_key_still_opens_what_it_sealed() {
        let old = SecretKey::from_bytes([1; 32]);
        let sealed = Keys::new(&old, &[]).seal("c", b"data").unwrap();
        let rotated = Keys::new(&SecretKey::from_bytes([9; 32]), &[old]);
        assert_eq!(rotated.open("c", &sealed).unwrap(), b"data");
    }

    #[test]
    fn tokens_are_256_bit_unique_and_hash_to_32_bytes() {
        let tokens: HashSet<String> = (0..1000).map(|_| random_token()).collect();
        assert_eq!(tokens.len(), 1000);
        for t in tokens.iter().take(10) {
            assert_eq!(URL_SAFE_NO_PAD.decode(t).unwrap().len(), 32);
            assert_eq!(token_hash(t).len(), 32);
        }
        assert_eq!(
            token_hash("abc"),
            Sha256::digest(b"abc").to_vec(),
            "the stored hash is plain SHA-256 of the cookie value"
        );
    }

    #[test]
    fn macs_differ_by_purpose_and_key() {
        let k = keys(1);
        assert_eq!(k.mac("a", b"x"), k.mac("a", b"x"));
        assert_ne!(k.mac("a", b"x"), k.mac("b", b"x"));
        assert_ne!(k.mac("a", b"x"), keys(2).mac("a", b"x"));
        assert_eq!(k.mac("a", b"x").len(), MAC_LEN);
    }

    #[test]
    fn hmac_values_carry_their_key_id_and_stay_findable_after_rotation() {
        // Defect 7: a value keyed under an old key is still matched by a look-up
        // once that key is only an old key, and tells which generation made it.
        let old = SecretKey::from_bytes([1; 32]);
        let stored = Keys::new(&old, &[]).mac("devices/seen", b"203.0.113.9");
        let rotated = Keys::new(&SecretKey::from_bytes([9; 32]), &[old]);
        assert_ne!(rotated.mac("devices/seen", b"203.0.113.9"), stored);
        let candidates = rotated.mac_candidates("devices/seen", b"203.0.113.9");
        assert_eq!(candidates.len(), 2);
        assert_eq!(candidates[0], rotated.mac("devices/seen", b"203.0.113.9"));
        assert!(candidates.contains(&stored));
        assert_eq!(
            &stored[..4],
            &Keys::new(&SecretKey::from_bytes([1; 32]), &[]).current_key_id()
        );
    }
}
