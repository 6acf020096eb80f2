//! GUIDs as GPT stores them: the first three fields little-endian, the rest
//! in byte order ("mixed endian"). `Guid` keeps the on-disk bytes.

use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Guid(pub [u8; 16]);

impl Guid {
    pub const ZERO: Guid = Guid([0; 16]);

    pub fn is_zero(&self) -> bool {
        self.0 == [0; 16]
    }

    /// A stable GUID derived from names (a name-based, version-8 UUID over
    /// sha256), so two builds of the same spec give the same disk.
    pub fn derived(parts: &[&str]) -> Guid {
        let mut h = Sha256::new();
        h.update(b"basalt-guid");
        for p in parts {
            h.update((p.len() as u64).to_le_bytes());
            h.update(p.as_bytes());
        }
        let digest = h.finalize();
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&digest[..16]);
        uuid[6] = (uuid[6] & 0x0f) | 0x80; // version 8
        uuid[8] = (uuid[8] & 0x3f) | 0x80; // RFC 4122 variant
        Guid::from_uuid_bytes(uuid)
    }

    /// From the big-endian byte order of the textual form.
    pub fn from_uuid_bytes(b: [u8; 16]) -> Guid {
        let mut g = b;
        g[0..4].reverse();
        g[4..6].reverse();
        g[6..8].reverse();
        Guid(g)
    }

    /// The big-endian byte order of the textual form (what a UUID library holds).
    pub fn to_uuid_bytes(self) -> [u8; 16] {
        let mut b = self.0;
        b[0..4].reverse();
        b[4..6].reverse();
        b[6..8].reverse();
        b
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.to_uuid_bytes();
        for (i, byte) in b.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Guid({self})")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a GUID: {0:?} (expected 8-4-4-4-12 hex digits)")]
pub struct BadGuid(pub String);

impl FromStr for Guid {
    type Err = BadGuid;
    fn from_str(s: &str) -> Result<Guid, BadGuid> {
        let groups: Vec<&str> = s.split('-').collect();
        let lens: Vec<usize> = groups.iter().map(|g| g.len()).collect();
        if lens != [8, 4, 4, 4, 12] || !s.chars().all(|c| c == '-' || c.is_ascii_hexdigit()) {
            return Err(BadGuid(s.to_string()));
        }
        let hex: String = groups.concat();
        let mut b = [0u8; 16];
        for (i, byte) in b.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| BadGuid(s.to_string()))?;
        }
        Ok(Guid::from_uuid_bytes(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn esp_type_guid_has_the_known_disk_bytes() {
        let g: Guid = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b".parse().unwrap();
        assert_eq!(g.0, [0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e, 0xc9, 0x3b]);
        assert_eq!(g.to_string(), "c12a7328-f81f-11d2-ba4b-00a0c93ec93b");
    }

    #[test]
    fn derived_is_stable_and_distinct() {
        let a = Guid::derived(&["basalt", "USR-A"]);
        assert_eq!(a, Guid::derived(&["basalt", "USR-A"]));
        assert_ne!(a, Guid::derived(&["basalt", "USR-B"]));
        assert_ne!(Guid::derived(&["ab", "c"]), Guid::derived(&["a", "bc"]));
        let s = a.to_string();
        assert_eq!(&s[14..15], "8", "version nibble in {s}");
    }

    #[test]
    fn rejects_malformed() {
        for bad in ["", "c12a7328f81f11d2ba4b00a0c93ec93b", "c12a7328-f81f-11d2-ba4b-00a0c93ec93x", "c12a7328-f81f-11d2-ba4b00-a0c93ec93b"] {
            assert!(bad.parse::<Guid>().is_err(), "{bad}");
        }
    }
}
