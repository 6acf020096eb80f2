//! The client's rules (TUF's, cut to what basalt's repository has):
//!
//! 1. Trust starts from a root shipped in the image, signed by a threshold
//!    of its own root keys.
//! 2. A new root is accepted only as version N+1, signed by a threshold of
//!    the current root keys *and* a threshold of its own: rotation needs
//!    the old keys, and the new ones prove they are held.
//! 3. After walking the roots, the newest must not be expired.
//! 4. A channel document must be signed by a threshold of the channel keys
//!    the trusted root names, carry the channel asked for, not be expired,
//!    and not be older (lower `version`) than one seen before.

use crate::envelope::{Envelope, EnvelopeError};
use crate::meta::{self, Channel, MetaError, Root, CHANNEL_TYPE, ROOT_TYPE};
use std::time::SystemTime;

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("{doc}: {source}")]
    Signature { doc: String, source: EnvelopeError },
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error("{doc} is version {found}; the next root must be version {expected}")]
    RootVersion { doc: String, found: u64, expected: u64 },
    #[error("{doc} expired at {expires}")]
    Expired { doc: String, expires: String },
    #[error("{doc} is older than version {seen}, seen before: refusing a rollback of the metadata")]
    Rollback { doc: String, seen: u64 },
    #[error("asked for channel {asked:?}, the document is for {found:?}")]
    WrongChannel { asked: String, found: String },
    #[error("{doc} is larger than {limit} bytes")]
    TooLarge { doc: String, limit: usize },
}

#[derive(Debug, Clone)]
pub struct Trusted {
    root: Root,
    /// The envelope the root came in, to keep on disk.
    root_envelope: Vec<u8>,
}

fn open(bytes: &[u8], doc: &str) -> Result<Envelope, TrustError> {
    if bytes.len() > meta::MAX_METADATA_BYTES {
        return Err(TrustError::TooLarge { doc: doc.to_string(), limit: meta::MAX_METADATA_BYTES });
    }
    Envelope::parse(bytes).map_err(|source| TrustError::Signature { doc: doc.to_string(), source })
}

fn self_signed(env: &Envelope, doc: &str) -> Result<Root, TrustError> {
    let body = env.body_unverified().map_err(|source| TrustError::Signature { doc: doc.to_string(), source })?;
    let root = Root::parse(&body)?;
    let (keys, ids) = root.keyring(&root.roles.root);
    env.verify(ROOT_TYPE, "root", &keys, &ids, root.roles.root.threshold).map_err(|source| TrustError::Signature { doc: root.doc(), source })?;
    Ok(root)
}

impl Trusted {
    /// Rule 1: the root the image ships.
    pub fn bootstrap(bytes: &[u8]) -> Result<Trusted, TrustError> {
        let env = open(bytes, "root")?;
        let root = self_signed(&env, "root")?;
        Ok(Trusted { root, root_envelope: bytes.to_vec() })
    }

    pub fn root(&self) -> &Root {
        &self.root
    }

    pub fn root_envelope(&self) -> &[u8] {
        &self.root_envelope
    }

    /// Rule 2: accepts `bytes` as the next root.
    pub fn rotate(&mut self, bytes: &[u8]) -> Result<(), TrustError> {
        let doc = format!("root v{}", self.root.version + 1);
        let env = open(bytes, &doc)?;
        let (keys, ids) = self.root.keyring(&self.root.roles.root);
        let body = env.verify(ROOT_TYPE, &format!("root v{}", self.root.version), &keys, &ids, self.root.roles.root.threshold).map_err(|source| TrustError::Signature { doc: doc.clone(), source })?;
        let next = Root::parse(&body)?;
        if next.version != self.root.version + 1 {
            return Err(TrustError::RootVersion { doc: next.doc(), found: next.version, expected: self.root.version + 1 });
        }
        self_signed(&env, &doc)?;
        self.root = next;
        self.root_envelope = bytes.to_vec();
        Ok(())
    }

    /// Rule 3.
    pub fn check_expiry(&self, now: SystemTime) -> Result<(), TrustError> {
        if self.root.expires_at() <= now {
            return Err(TrustError::Expired { doc: self.root.doc(), expires: self.root.expires.clone() });
        }
        Ok(())
    }

    /// Rule 4. `seen` is the highest channel version accepted before.
    pub fn channel(&self, bytes: &[u8], name: &str, now: SystemTime, seen: u64) -> Result<Channel, TrustError> {
        let doc = format!("channel {name}");
        self.check_expiry(now)?;
        let env = open(bytes, &doc)?;
        let (keys, ids) = self.root.keyring(&self.root.roles.channel);
        let body = env.verify(CHANNEL_TYPE, "channel", &keys, &ids, self.root.roles.channel.threshold).map_err(|source| TrustError::Signature { doc: doc.clone(), source })?;
        let channel = Channel::parse(&body)?;
        let doc = format!("channel {} v{}", channel.channel, channel.version);
        if channel.channel != name {
            return Err(TrustError::WrongChannel { asked: name.to_string(), found: channel.channel });
        }
        if meta::parse_time(&doc, "expires", &channel.expires)? <= now {
            return Err(TrustError::Expired { doc, expires: channel.expires });
        }
        if channel.version < seen {
            return Err(TrustError::Rollback { doc, seen });
        }
        Ok(channel)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::keys::PrivateKey;
    use crate::meta::{FileRef, Release, Role, Roles};
    use std::time::Duration;

    pub fn root_doc(version: u64, root_keys: &[&PrivateKey], root_threshold: usize, channel_keys: &[&PrivateKey], expires: &str) -> Root {
        let mut keys = std::collections::BTreeMap::new();
        let mut ids = |ks: &[&PrivateKey]| -> Vec<String> {
            ks.iter()
                .map(|k| {
                    keys.insert(k.public().id().to_string(), k.public().to_text());
                    k.public().id().to_string()
                })
                .collect()
        };
        let root = Role { keyids: ids(root_keys), threshold: root_threshold };
        let channel = Role { keyids: ids(channel_keys), threshold: 1 };
        Root { kind: "root".into(), version, expires: expires.into(), keys, roles: Roles { root, channel } }
    }

    fn signed(type_: &str, body: &[u8], by: &[&PrivateKey]) -> Vec<u8> {
        let mut e = Envelope::new(type_, body);
        for k in by {
            e.sign(k).unwrap();
        }
        e.to_json().into_bytes()
    }

    fn channel_doc(version: u64, release_version: &str, expires: &str) -> Vec<u8> {
        let c = Channel {
            kind: "channel".into(),
            channel: "stable".into(),
            version,
            expires: expires.into(),
            release: Release {
                name: "basalt".into(),
                version: release_version.into(),
                usr_root_hash: "0".repeat(64),
                payload: FileRef { path: "p".into(), size: 1, sha256: "0".repeat(64) },
                deltas: vec![],
                rollout: vec![],
            },
        };
        c.to_json()
    }

    const LATER: &str = "2099-01-01T00:00:00Z";

    #[test]
    fn root_rotation_needs_old_and_new_thresholds() {
        let (r1, r2, r3, c) = (PrivateKey::generate().unwrap(), PrivateKey::generate().unwrap(), PrivateKey::generate().unwrap(), PrivateKey::generate().unwrap());
        let v1 = root_doc(1, &[&r1, &r2], 2, &[&c], LATER);
        assert!(Trusted::bootstrap(&signed(ROOT_TYPE, &v1.to_json(), &[&r1])).unwrap_err().to_string().contains("1 valid signature(s) from the root keys, 2 needed"));
        let mut t = Trusted::bootstrap(&signed(ROOT_TYPE, &v1.to_json(), &[&r1, &r2])).unwrap();

        // v2 replaces r2 by r3.
        let v2 = root_doc(2, &[&r1, &r3], 2, &[&c], LATER).to_json();
        let only_new = t.clone().rotate(&signed(ROOT_TYPE, &v2, &[&r1, &r3])).unwrap_err();
        assert!(only_new.to_string().contains("root v1"), "old threshold not met: {only_new}");
        let only_old = t.clone().rotate(&signed(ROOT_TYPE, &v2, &[&r1, &r2])).unwrap_err();
        assert!(only_old.to_string().contains("1 valid signature(s)"), "new threshold not met: {only_old}");
        t.rotate(&signed(ROOT_TYPE, &v2, &[&r1, &r2, &r3])).unwrap();
        assert_eq!(t.root().version, 2);

        // Skipping a version is refused.
        let v4 = root_doc(4, &[&r1, &r3], 2, &[&c], LATER).to_json();
        assert!(matches!(t.clone().rotate(&signed(ROOT_TYPE, &v4, &[&r1, &r3])), Err(TrustError::RootVersion { .. })));
    }

    #[test]
    fn channels_need_channel_keys_fresh_and_not_older() {
        let (r, c, other) = (PrivateKey::generate().unwrap(), PrivateKey::generate().unwrap(), PrivateKey::generate().unwrap());
        let t = Trusted::bootstrap(&signed(ROOT_TYPE, &root_doc(1, &[&r], 1, &[&c], LATER).to_json(), &[&r])).unwrap();
        let now = SystemTime::now();
        let good = signed(CHANNEL_TYPE, &channel_doc(5, "0.2.0", LATER), &[&c]);
        assert_eq!(t.channel(&good, "stable", now, 5).unwrap().release.version, "0.2.0");
        assert!(matches!(t.channel(&good, "stable", now, 6), Err(TrustError::Rollback { .. })));
        assert!(matches!(t.channel(&good, "beta", now, 0), Err(TrustError::WrongChannel { .. })));
        let by_root = signed(CHANNEL_TYPE, &channel_doc(5, "0.2.0", LATER), &[&r]);
        assert!(t.channel(&by_root, "stable", now, 0).unwrap_err().to_string().contains("not a channel key"));
        let by_other = signed(CHANNEL_TYPE, &channel_doc(5, "0.2.0", LATER), &[&other]);
        assert!(t.channel(&by_other, "stable", now, 0).is_err());
        let unsigned = signed(CHANNEL_TYPE, &channel_doc(5, "0.2.0", LATER), &[]);
        assert!(t.channel(&unsigned, "stable", now, 0).unwrap_err().to_string().contains("0 valid signature(s)"));
        let expired = signed(CHANNEL_TYPE, &channel_doc(5, "0.2.0", "2001-01-01T00:00:00Z"), &[&c]);
        assert!(t.channel(&expired, "stable", now, 0).unwrap_err().to_string().contains("expired at 2001-01-01T00:00:00Z"));
        assert!(t.channel(&good, "stable", now + Duration::from_secs(200 * 365 * 86400), 0).unwrap_err().to_string().contains("root v1 expired"));
        assert!(t.channel(b"junk", "stable", now, 0).unwrap_err().to_string().contains("not a signed envelope"));
    }
}
