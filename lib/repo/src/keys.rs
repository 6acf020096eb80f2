//! ed25519 keys. A private key file holds one line, `ed25519-private <hex
//! seed>`; a public key is written `ed25519 <hex>`. A key id is the sha256 of
//! the 32 public key bytes, in hex: metadata names keys by id.

use crate::{hex, parse_hex};
use ed25519_dalek::Signer;
use std::fmt;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{what}: expected `{prefix} <64 hex digits>`")]
    Format { what: String, prefix: &'static str },
    #[error("no randomness for a new key: {0}")]
    Random(std::io::Error),
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(pub [u8; 32]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

impl KeyId {
    pub fn parse(s: &str) -> Option<KeyId> {
        parse_hex(s)?.try_into().ok().map(KeyId)
    }
}

#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey(ed25519_dalek::VerifyingKey);

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_text())
    }
}

impl PublicKey {
    pub fn id(&self) -> KeyId {
        use sha2::Digest;
        KeyId(sha2::Sha256::digest(self.0.as_bytes()).into())
    }

    pub fn to_text(&self) -> String {
        format!("ed25519 {}", hex(self.0.as_bytes()))
    }

    /// Parses `ed25519 <hex>` or just the 64 hex digits.
    pub fn from_text(text: &str) -> Option<PublicKey> {
        let t = text.trim();
        let h = t.strip_prefix("ed25519 ").unwrap_or(t).trim();
        let bytes: [u8; 32] = parse_hex(h)?.try_into().ok()?;
        ed25519_dalek::VerifyingKey::from_bytes(&bytes).ok().map(PublicKey)
    }

    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        let Ok(sig) = ed25519_dalek::Signature::from_slice(signature) else { return false };
        self.0.verify_strict(message, &sig).is_ok()
    }

    pub fn load(path: &Path) -> Result<PublicKey, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io { path: path.display().to_string(), source })?;
        PublicKey::from_text(&text).ok_or(KeyError::Format { what: path.display().to_string(), prefix: "ed25519" })
    }
}

pub struct PrivateKey(ed25519_dalek::SigningKey);

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "PrivateKey(for {})", self.public().id())
    }
}

impl PrivateKey {
    pub fn generate() -> Result<PrivateKey, KeyError> {
        use std::io::Read;
        let mut seed = [0u8; 32];
        std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut seed)).map_err(KeyError::Random)?;
        Ok(PrivateKey(ed25519_dalek::SigningKey::from_bytes(&seed)))
    }

    pub fn from_seed(seed: [u8; 32]) -> PrivateKey {
        PrivateKey(ed25519_dalek::SigningKey::from_bytes(&seed))
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.0.sign(message).to_bytes().to_vec()
    }

    pub fn to_text(&self) -> String {
        format!("ed25519-private {}\n", hex(self.0.as_bytes()))
    }

    pub fn from_text(text: &str, what: &str) -> Result<PrivateKey, KeyError> {
        let bad = || KeyError::Format { what: what.to_string(), prefix: "ed25519-private" };
        let h = text.trim().strip_prefix("ed25519-private ").ok_or_else(bad)?;
        let seed: [u8; 32] = parse_hex(h.trim()).ok_or_else(bad)?.try_into().map_err(|_| bad())?;
        Ok(PrivateKey::from_seed(seed))
    }

    pub fn load(path: &Path) -> Result<PrivateKey, KeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io { path: path.display().to_string(), source })?;
        PrivateKey::from_text(&text, &path.display().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_text_and_sign() {
        let k = PrivateKey::generate().unwrap();
        let again = PrivateKey::from_text(&k.to_text(), "k").unwrap();
        assert_eq!(k.public(), again.public());
        let p = PublicKey::from_text(&k.public().to_text()).unwrap();
        assert_eq!(p.id(), k.public().id());
        let sig = k.sign(b"hello");
        assert!(p.verify(b"hello", &sig));
        assert!(!p.verify(b"hellO", &sig));
        assert!(!p.verify(b"hello", &sig[..63]));
        assert!(PublicKey::from_text("ed25519 12").is_none());
        assert!(PrivateKey::from_text("ed25519 00", "k").unwrap_err().to_string().contains("ed25519-private"));
    }
}
