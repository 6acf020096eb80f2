//! The update repository: what `basalt repo` publishes and what the update
//! agent accepts. docs/updates.md describes the same rules in prose.
//!
//! - [`keys`]: ed25519 key files and key ids.
//! - [`envelope`]: DSSE signing envelopes around every metadata file.
//! - [`meta`]: the root (keys, roles, thresholds) and channel (the release
//!   offered, its payloads and rollout waves) documents.
//! - [`trust`]: the client's rules: root rotation, thresholds, expiry,
//!   rollback protection, no downgrades.
//! - [`payload`]: the update payload (USR slot image and the slot's UKIs,
//!   zstd-compressed, optionally as a delta against an older version).
//! - [`version`]: ordering of release versions.

pub mod envelope;
pub mod keys;
pub mod meta;
pub mod payload;
pub mod trust;
pub mod version;

pub use envelope::Envelope;
pub use keys::{KeyId, PrivateKey, PublicKey};
pub use meta::{Channel, FileRef, Release, Role, Root, Wave};
pub use trust::{TrustError, Trusted};

pub use basalt_verity::{hex, parse_hex};

/// sha256 of `data` in lowercase hex.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex(&sha2::Sha256::digest(data))
}
