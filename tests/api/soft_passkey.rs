//! A software passkey for the tests: an authenticator written here from `p256` (ECDSA
//! P-256) and `serde_cbor_2` (CBOR), independent of the server's webauthn-rs. It
//! makes WebAuthn registration and assertion responses the way a browser hands them
//! over (base64url JSON), and can be told to lie: another origin, another RP id, no
//! user verification, a counter that goes backwards.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use serde_cbor_2::Value as Cbor;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn unb64(text: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(text).expect("base64url")
}

/// A passkey on a pretend authenticator.
pub struct SoftPasskey {
    key: SigningKey,
    pub credential_id: Vec<u8>,
    /// The user handle the relying party gave at registration.
    pub user_handle: Vec<u8>,
    pub counter: u32,
    /// Backup eligible and backed up: a synced passkey (`swk`); else bound to its
    /// device (`hwk`).
    pub synced: bool,
    /// What the authenticator claims; the tests change these to lie.
    pub origin: String,
    pub rp_id: String,
    pub user_verified: bool,
}

impl SoftPasskey {
    /// A passkey for the site at `origin` (the RP id is its host).
    pub fn new(origin: &str) -> Self {
        let mut secret = [0u8; 32];
        loop {
            getrandom::fill(&mut secret).expect("randomness");
            if let Ok(key) = SigningKey::from_slice(&secret) {
                let mut credential_id = vec![0u8; 32];
                getrandom::fill(&mut credential_id).expect("randomness");
                let rp_id = url::Url::parse(origin)
                    .expect("an origin")
                    .host_str()
                    .expect("a host")
                    .to_string();
                return Self {
                    key,
                    credential_id,
                    user_handle: Vec::new(),
                    counter: 0,
                    synced: false,
                    origin: origin.to_string(),
                    rp_id,
                    user_verified: true,
                };
            }
        }
    }

    fn flags(&self, attested: bool) -> u8 {
        let mut f = 0x01; // user present
        if self.user_verified {
            f |= 0x04;
        }
        if self.synced {
            f |= 0x08 | 0x10; // backup eligible, backed up
        }
        if attested {
            f |= 0x40;
        }
        f
    }

    fn auth_data(&self, attested: bool) -> Vec<u8> {
        let mut data = Sha256::digest(self.rp_id.as_bytes()).to_vec();
        data.push(self.flags(attested));
        data.extend_from_slice(&self.counter.to_be_bytes());
        if attested {
            data.extend_from_slice(&[0u8; 16]); // AAGUID: none
            data.extend_from_slice(
                &u16::try_from(self.credential_id.len())
                    .unwrap()
                    .to_be_bytes(),
            );
            data.extend_from_slice(&self.credential_id);
            data.extend(self.cose_key());
        }
        data
    }

    /// The public key as COSE_Key (RFC 9053): EC2, ES256, P-256, x, y.
    fn cose_key(&self) -> Vec<u8> {
        let point = self.key.verifying_key().to_sec1_point(false);
        let bytes = point.as_bytes();
        let (x, y) = (bytes[1..33].to_vec(), bytes[33..65].to_vec());
        let mut map = BTreeMap::new();
        map.insert(Cbor::Integer(1), Cbor::Integer(2));
        map.insert(Cbor::Integer(3), Cbor::Integer(-7));
        map.insert(Cbor::Integer(-1), Cbor::Integer(1));
        map.insert(Cbor::Integer(-2), Cbor::Bytes(x));
        map.insert(Cbor::Integer(-3), Cbor::Bytes(y));
        serde_cbor_2::to_vec(&Cbor::Map(map)).expect("CBOR")
    }

    fn client_data(&self, kind: &str, challenge: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "type": kind,
            "challenge": challenge,
            "origin": self.origin,
            "crossOrigin": false,
        }))
        .unwrap()
    }

    /// Answers registration options (the server's `publicKey`) as the browser would.
    pub fn register(&mut self, options: &Value) -> Value {
        let pk = &options["publicKey"];
        self.user_handle = unb64(pk["user"]["id"].as_str().expect("a user handle"));
        let client_data = self.client_data(
            "webauthn.create",
            pk["challenge"].as_str().expect("a challenge"),
        );
        let mut att = BTreeMap::new();
        att.insert(Cbor::Text("fmt".into()), Cbor::Text("none".into()));
        att.insert(Cbor::Text("attStmt".into()), Cbor::Map(BTreeMap::new()));
        att.insert(
            Cbor::Text("authData".into()),
            Cbor::Bytes(self.auth_data(true)),
        );
        let attestation = serde_cbor_2::to_vec(&Cbor::Map(att)).expect("CBOR");
        json!({
            "id": b64(&self.credential_id),
            "rawId": b64(&self.credential_id),
            "type": "public-key",
            "response": {
                "attestationObject": b64(&attestation),
                "clientDataJSON": b64(&client_data),
                "transports": ["internal"],
            },
            "extensions": {},
        })
    }

    /// Answers authentication options as the browser would; the counter goes up
    /// first (as a real authenticator's does) unless it is a passkey without one.
    pub fn assert(&mut self, options: &Value) -> Value {
        let pk = &options["publicKey"];
        if self.counter > 0 || !self.synced {
            self.counter += 1;
        }
        self.assertion(pk["challenge"].as_str().expect("a challenge"))
    }

    /// An assertion over `challenge` with the counter as it is.
    pub fn assertion(&self, challenge: &str) -> Value {
        let client_data = self.client_data("webauthn.get", challenge);
        let auth_data = self.auth_data(false);
        let mut signed = auth_data.clone();
        signed.extend_from_slice(&Sha256::digest(&client_data));
        let signature: Signature = self.key.sign(&signed);
        json!({
            "id": b64(&self.credential_id),
            "rawId": b64(&self.credential_id),
            "type": "public-key",
            "response": {
                "authenticatorData": b64(&auth_data),
                "clientDataJSON": b64(&client_data),
                "signature": b64(signature.to_der().as_bytes()),
                "userHandle": b64(&self.user_handle),
            },
            "extensions": {},
        })
    }
}
