//! The two signed documents of a repository.
//!
//! `root.json` (and `N.root.json` for every version, so clients can walk a
//! rotation) lists the keys and which of them, how many at least, may sign
//! the next root and the channels. `channels/NAME.json` names the release
//! a channel offers: its version, its payload and deltas (path, size,
//! sha256), the verity root hash of its /usr, and its rollout waves.

use crate::keys::{KeyId, PublicKey};
use crate::version::Version;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::SystemTime;

pub const ROOT_TYPE: &str = "application/vnd.basalt.root+json";
pub const CHANNEL_TYPE: &str = "application/vnd.basalt.channel+json";
/// Largest metadata document a client reads.
pub const MAX_METADATA_BYTES: usize = 1 << 20;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Role {
    pub keyids: Vec<String>,
    pub threshold: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Roles {
    pub root: Role,
    pub channel: Role,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Root {
    #[serde(rename = "type")]
    pub kind: String,
    pub version: u64,
    /// RFC 3339, UTC.
    pub expires: String,
    /// Key id → `ed25519 <hex>`.
    pub keys: BTreeMap<String, String>,
    pub roles: Roles,
}

/// One file of the repository, as the signed metadata pins it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRef {
    /// Relative to the repository's base URL.
    pub path: String,
    pub size: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Delta {
    /// The version the delta applies to.
    pub from: String,
    #[serde(flatten)]
    pub file: FileRef,
}

/// From `from` on, machines whose rollout position is below `share` may
/// take the release. Waves are listed in time order with growing shares.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wave {
    pub from: String,
    pub share: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Release {
    /// The image name (`name:` in the spec): a machine takes only its own.
    pub name: String,
    pub version: String,
    /// The verity root hash of the release's /usr: the agent declares a slot
    /// valid only when what it wrote hashes to this.
    pub usr_root_hash: String,
    pub payload: FileRef,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deltas: Vec<Delta>,
    /// Empty: everybody at once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rollout: Vec<Wave>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Channel {
    #[serde(rename = "type")]
    pub kind: String,
    pub channel: String,
    /// Grows with every published change; clients refuse a lower one.
    pub version: u64,
    pub expires: String,
    pub release: Release,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{doc}: {message}")]
pub struct MetaError {
    pub doc: String,
    pub message: String,
}

fn err(doc: &str, message: impl Into<String>) -> MetaError {
    MetaError { doc: doc.to_string(), message: message.into() }
}

pub fn parse_time(doc: &str, field: &str, s: &str) -> Result<SystemTime, MetaError> {
    humantime::parse_rfc3339(s).map_err(|e| err(doc, format!("{field} {s:?} is not an RFC 3339 UTC time like 2027-01-31T00:00:00Z ({e})")))
}

pub fn format_time(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Channel names: what a URL path segment and a file name can both carry.
pub fn check_channel_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 64 || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        return Err(format!("channel {name:?} must be 1-64 characters of a-z, 0-9 and -"));
    }
    Ok(())
}

/// Repository paths: relative, no `..`, no surprises in a URL.
pub fn check_path(doc: &str, p: &str) -> Result<(), MetaError> {
    let ok =
        !p.is_empty() && p.len() <= 255 && !p.starts_with('/') && p.split('/').all(|c| !c.is_empty() && c != "." && c != "..") && p.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-+/".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(err(doc, format!("path {p:?} must be relative, without `..`, of letters, digits and ._-+/")))
    }
}

fn check_sha256(doc: &str, field: &str, s: &str) -> Result<(), MetaError> {
    if s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        Ok(())
    } else {
        Err(err(doc, format!("{field} {s:?} is not 64 lowercase hex digits")))
    }
}

impl FileRef {
    fn check(&self, doc: &str) -> Result<(), MetaError> {
        check_path(doc, &self.path)?;
        check_sha256(doc, &format!("sha256 of {}", self.path), &self.sha256)?;
        if self.size == 0 {
            return Err(err(doc, format!("{} has size 0", self.path)));
        }
        Ok(())
    }
}

impl Root {
    pub fn parse(body: &[u8]) -> Result<Root, MetaError> {
        let root: Root = serde_json::from_slice(body).map_err(|e| err("root", e.to_string()))?;
        root.check()?;
        Ok(root)
    }

    pub fn doc(&self) -> String {
        format!("root v{}", self.version)
    }

    pub fn check(&self) -> Result<(), MetaError> {
        let doc = self.doc();
        if self.kind != "root" {
            return Err(err(&doc, format!("type is {:?}, not \"root\"", self.kind)));
        }
        if self.version == 0 {
            return Err(err(&doc, "version must be at least 1"));
        }
        parse_time(&doc, "expires", &self.expires)?;
        for (id, text) in &self.keys {
            let key = PublicKey::from_text(text).ok_or_else(|| err(&doc, format!("key {id} is not `ed25519 <64 hex digits>`")))?;
            if key.id().to_string() != *id {
                return Err(err(&doc, format!("key id {id} is not the sha256 of its key ({})", key.id())));
            }
        }
        for (name, role) in [("root", &self.roles.root), ("channel", &self.roles.channel)] {
            if role.threshold == 0 || role.threshold > role.keyids.len() {
                return Err(err(&doc, format!("role {name}: threshold {} with {} key(s); it must be 1..=keys", role.threshold, role.keyids.len())));
            }
            let mut seen = std::collections::BTreeSet::new();
            for id in &role.keyids {
                if !self.keys.contains_key(id) {
                    return Err(err(&doc, format!("role {name} names key {id}, which `keys` does not list")));
                }
                if !seen.insert(id) {
                    return Err(err(&doc, format!("role {name} lists key {id} twice")));
                }
            }
        }
        Ok(())
    }

    pub fn expires_at(&self) -> SystemTime {
        parse_time("root", "expires", &self.expires).expect("checked")
    }

    /// The keys and allowed ids of a role, for [`crate::Envelope::verify`].
    pub fn keyring(&self, role: &Role) -> (BTreeMap<KeyId, PublicKey>, Vec<KeyId>) {
        let keys = self.keys.iter().filter_map(|(id, text)| Some((KeyId::parse(id)?, PublicKey::from_text(text)?))).collect();
        let ids = role.keyids.iter().filter_map(|id| KeyId::parse(id)).collect();
        (keys, ids)
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("root serializes");
        v.push(b'\n');
        v
    }
}

impl Channel {
    pub fn parse(body: &[u8]) -> Result<Channel, MetaError> {
        let c: Channel = serde_json::from_slice(body).map_err(|e| err("channel", e.to_string()))?;
        c.check()?;
        Ok(c)
    }

    pub fn check(&self) -> Result<(), MetaError> {
        let doc = format!("channel {} v{}", self.channel, self.version);
        if self.kind != "channel" {
            return Err(err(&doc, format!("type is {:?}, not \"channel\"", self.kind)));
        }
        check_channel_name(&self.channel).map_err(|m| err(&doc, m))?;
        parse_time(&doc, "expires", &self.expires)?;
        let r = &self.release;
        Version::parse(&r.version).map_err(|m| err(&doc, m))?;
        check_sha256(&doc, "usr_root_hash", &r.usr_root_hash)?;
        r.payload.check(&doc)?;
        for d in &r.deltas {
            Version::parse(&d.from).map_err(|m| err(&doc, format!("delta: {m}")))?;
            d.file.check(&doc)?;
        }
        let mut last: Option<(SystemTime, f64)> = None;
        for w in &r.rollout {
            let t = parse_time(&doc, "rollout from", &w.from)?;
            if !(w.share > 0.0 && w.share <= 1.0) {
                return Err(err(&doc, format!("rollout share {} must be in (0, 1]", w.share)));
            }
            if let Some((lt, ls)) = last {
                if t <= lt || w.share <= ls {
                    return Err(err(&doc, "rollout waves must go forward in time with growing shares"));
                }
            }
            last = Some((t, w.share));
        }
        Ok(())
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("channel serializes");
        v.push(b'\n');
        v
    }
}

impl Release {
    /// The share of the fleet allowed to update at `now`: 0 before the
    /// first wave, 1 with no waves.
    pub fn share_at(&self, now: SystemTime) -> f64 {
        if self.rollout.is_empty() {
            return 1.0;
        }
        self.rollout.iter().filter(|w| humantime::parse_rfc3339(&w.from).is_ok_and(|t| t <= now)).map(|w| w.share).fold(0.0, f64::max)
    }

    /// When a machine at `position` (its seed, in [0, 1)) may first update.
    pub fn allowed_from(&self, position: f64) -> Option<SystemTime> {
        if self.rollout.is_empty() {
            return Some(SystemTime::UNIX_EPOCH);
        }
        self.rollout.iter().find(|w| position < w.share).and_then(|w| humantime::parse_rfc3339(&w.from).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn release() -> Release {
        Release {
            name: "basalt".into(),
            version: "0.2.0".into(),
            usr_root_hash: "a".repeat(64),
            payload: FileRef { path: "payloads/basalt-0.2.0.payload".into(), size: 10, sha256: "b".repeat(64) },
            deltas: vec![],
            rollout: vec![],
        }
    }

    fn channel(r: Release) -> Channel {
        Channel { kind: "channel".into(), channel: "stable".into(), version: 1, expires: "2030-01-01T00:00:00Z".into(), release: r }
    }

    #[test]
    fn channel_documents_are_checked_field_by_field() {
        assert!(channel(release()).check().is_ok());
        let mut r = release();
        r.payload.path = "../etc/passwd".into();
        assert!(channel(r).check().unwrap_err().to_string().contains("without `..`"));
        let mut r = release();
        r.version = "two".into();
        assert!(channel(r).check().unwrap_err().to_string().contains("version \"two\""));
        let mut r = release();
        r.usr_root_hash = "xyz".into();
        assert!(channel(r).check().unwrap_err().to_string().contains("usr_root_hash"));
        let mut c = channel(release());
        c.expires = "tomorrow".into();
        assert!(c.check().unwrap_err().to_string().contains("RFC 3339"));
        let mut r = release();
        r.rollout = vec![Wave { from: "2030-01-02T00:00:00Z".into(), share: 0.5 }, Wave { from: "2030-01-01T00:00:00Z".into(), share: 1.0 }];
        assert!(channel(r).check().unwrap_err().to_string().contains("forward in time"));
        let e = Channel::parse(br#"{"type":"channel","channel":"stable","version":1,"expires":"2030-01-01T00:00:00Z","release":{},"extra":1}"#).unwrap_err();
        assert!(e.to_string().contains("unknown field") || e.to_string().contains("missing field"), "{e}");
    }

    #[test]
    fn rollout_waves_open_the_fleet_share_by_share() {
        let mut r = release();
        let t0 = humantime::parse_rfc3339("2030-01-01T00:00:00Z").unwrap();
        r.rollout = vec![Wave { from: format_time(t0), share: 0.1 }, Wave { from: format_time(t0 + Duration::from_secs(86400)), share: 1.0 }];
        assert_eq!(r.share_at(t0 - Duration::from_secs(1)), 0.0);
        assert_eq!(r.share_at(t0), 0.1);
        assert_eq!(r.share_at(t0 + Duration::from_secs(86400)), 1.0);
        assert_eq!(r.allowed_from(0.05), Some(t0));
        assert_eq!(r.allowed_from(0.5), Some(t0 + Duration::from_secs(86400)));
        assert_eq!(release().allowed_from(0.99), Some(SystemTime::UNIX_EPOCH));
    }
}
