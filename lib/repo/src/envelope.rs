//! Every metadata file is a DSSE envelope (the Dead Simple Signing Envelope
//! of in-toto and Sigstore): the signed document travels as exact bytes
//! (base64), and each signature covers PAE(payloadType, bytes). No canonical
//! JSON is needed: what was signed is what is parsed.

use crate::keys::{KeyId, PrivateKey, PublicKey};
use base64::Engine;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    pub keyid: String,
    pub sig: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Envelope {
    pub payload_type: String,
    pub payload: String,
    pub signatures: Vec<Signature>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvelopeError {
    #[error("not a signed envelope: {0}")]
    Malformed(String),
    #[error("payload type is {found:?}, expected {expected:?}")]
    WrongType { found: String, expected: String },
    #[error("{valid} valid signature(s) from the {role} keys, {threshold} needed{detail}")]
    Threshold { role: String, valid: usize, threshold: usize, detail: String },
}

/// DSSE's pre-authentication encoding.
pub fn pae(payload_type: &str, body: &[u8]) -> Vec<u8> {
    let mut m = format!("DSSEv1 {} {} {} ", payload_type.len(), payload_type, body.len()).into_bytes();
    m.extend_from_slice(body);
    m
}

impl Envelope {
    pub fn new(payload_type: &str, body: &[u8]) -> Envelope {
        Envelope { payload_type: payload_type.to_string(), payload: B64.encode(body), signatures: Vec::new() }
    }

    pub fn parse(bytes: &[u8]) -> Result<Envelope, EnvelopeError> {
        serde_json::from_slice(bytes).map_err(|e| EnvelopeError::Malformed(e.to_string()))
    }

    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).expect("envelope serializes");
        s.push('\n');
        s
    }

    /// The signed bytes, before any signature is checked: for tools that
    /// show or re-sign a document, never for trusting it.
    pub fn body_unverified(&self) -> Result<Vec<u8>, EnvelopeError> {
        B64.decode(&self.payload).map_err(|e| EnvelopeError::Malformed(format!("payload is not base64: {e}")))
    }

    /// Adds (or replaces) `key`'s signature.
    pub fn sign(&mut self, key: &PrivateKey) -> Result<(), EnvelopeError> {
        let body = self.body_unverified()?;
        let id = key.public().id().to_string();
        self.signatures.retain(|s| s.keyid != id);
        self.signatures.push(Signature { keyid: id, sig: B64.encode(key.sign(&pae(&self.payload_type, &body))) });
        Ok(())
    }

    /// Checks the type and that at least `threshold` distinct keys among
    /// `allowed` signed the body; returns the body.
    pub fn verify(&self, expected_type: &str, role: &str, keys: &BTreeMap<KeyId, PublicKey>, allowed: &[KeyId], threshold: usize) -> Result<Vec<u8>, EnvelopeError> {
        if self.payload_type != expected_type {
            return Err(EnvelopeError::WrongType { found: self.payload_type.clone(), expected: expected_type.to_string() });
        }
        let body = self.body_unverified()?;
        let message = pae(&self.payload_type, &body);
        let mut good = BTreeSet::new();
        let mut problems = Vec::new();
        for s in &self.signatures {
            let Some(id) = KeyId::parse(&s.keyid) else {
                problems.push(format!("key id {:?} is malformed", s.keyid));
                continue;
            };
            let Some(key) = keys.get(&id).filter(|_| allowed.contains(&id)) else {
                problems.push(format!("key {} is not a {role} key", short(&s.keyid)));
                continue;
            };
            match B64.decode(&s.sig) {
                Ok(sig) if key.verify(&message, &sig) => {
                    good.insert(id);
                }
                _ => problems.push(format!("signature by {} does not verify", short(&s.keyid))),
            }
        }
        if threshold == 0 || good.len() < threshold {
            let detail = if problems.is_empty() { String::new() } else { format!(" ({})", problems.join("; ")) };
            return Err(EnvelopeError::Threshold { role: role.to_string(), valid: good.len(), threshold, detail });
        }
        Ok(body)
    }
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyring(keys: &[&PrivateKey]) -> (BTreeMap<KeyId, PublicKey>, Vec<KeyId>) {
        let map: BTreeMap<_, _> = keys.iter().map(|k| (k.public().id(), k.public())).collect();
        let ids = map.keys().copied().collect();
        (map, ids)
    }

    #[test]
    fn pae_matches_the_dsse_specification() {
        // The example from the DSSE protocol document.
        assert_eq!(pae("http://example.com/HelloWorld", b"hello world"), b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec());
    }

    #[test]
    fn thresholds_count_distinct_allowed_keys() {
        let (a, b, c) = (PrivateKey::generate().unwrap(), PrivateKey::generate().unwrap(), PrivateKey::generate().unwrap());
        let (keys, ids) = keyring(&[&a, &b]);
        let mut e = Envelope::new("t", b"{}");
        e.sign(&a).unwrap();
        e.sign(&a).unwrap(); // a second signature by the same key counts once
        assert_eq!(e.signatures.len(), 1);
        let err = e.verify("t", "root", &keys, &ids, 2).unwrap_err();
        assert!(err.to_string().contains("1 valid signature(s) from the root keys, 2 needed"), "{err}");
        e.sign(&c).unwrap(); // not a root key
        assert!(e.verify("t", "root", &keys, &ids, 2).unwrap_err().to_string().contains("is not a root key"));
        e.sign(&b).unwrap();
        let round = Envelope::parse(e.to_json().as_bytes()).unwrap();
        assert_eq!(round.verify("t", "root", &keys, &ids, 2).unwrap(), b"{}");
        assert!(matches!(round.verify("u", "root", &keys, &ids, 2), Err(EnvelopeError::WrongType { .. })));
        assert!(round.verify("t", "root", &keys, &ids, 0).is_err(), "a zero threshold never passes");
    }

    #[test]
    fn a_changed_body_or_signature_fails() {
        let a = PrivateKey::generate().unwrap();
        let (keys, ids) = keyring(&[&a]);
        let mut e = Envelope::new("t", b"{\"version\":1}");
        e.sign(&a).unwrap();
        let mut forged = e.clone();
        forged.payload = B64.encode(b"{\"version\":2}");
        assert!(forged.verify("t", "channel", &keys, &ids, 1).unwrap_err().to_string().contains("does not verify"));
        let mut forged = e.clone();
        forged.payload_type = "u".into();
        assert!(forged.verify("u", "channel", &keys, &ids, 1).is_err());
        assert!(Envelope::parse(b"{\"payload\": 1}").is_err());
        assert!(Envelope::parse(b"\x00\xff").is_err());
    }
}
