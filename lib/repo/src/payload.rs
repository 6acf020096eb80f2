//! The update payload: one file with everything a slot needs.
//!
//! ```text
//! "BASALTUP"              8 bytes, magic
//! header length           u32, little-endian (at most 64 KiB)
//! header                  JSON: name, version, the parts' sizes and sha256s,
//!                         the delta's reference when it is one
//! zstd frame              usr slot image (squashfs + verity tree),
//!                         then the UKI for slot A, then the UKI for slot B
//! ```
//!
//! Both UKIs travel because a UKI's command line names its slot; the second
//! costs almost nothing, as the long zstd window finds it in the first. A
//! *delta* payload is the same frame compressed against a reference prefix
//! (zstd's "patch-from"): the older version's usr slot image, kernel and
//! initramfs, which the machine running that version has at hand.

use crate::sha256_hex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::io::{self, BufRead, Read, Write};

pub const MAGIC: &[u8; 8] = b"BASALTUP";
/// 2: the header names the usr image's verity salt.
pub const FORMAT: u32 = 2;
const MAX_HEADER: usize = 64 << 10;
/// Largest usr slot image and UKI a header may announce.
pub const MAX_USR_BYTES: u64 = 16 << 30;
pub const MAX_UKI_BYTES: u64 = 256 << 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Part {
    pub bytes: u64,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Usr {
    pub bytes: u64,
    pub sha256: String,
    /// Where the verity superblock starts (the size of the squashfs).
    pub hash_offset: u64,
    pub root_hash: String,
    /// The verity tree's salt (hex), as in the superblock: with it the
    /// machine can hash the slot while it is still being written.
    pub salt: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ukis {
    pub a: Part,
    pub b: Part,
}

/// The reference a delta was made against, part by part, so a machine can
/// check it has exactly these bytes before it starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeltaFrom {
    pub version: String,
    pub usr: Part,
    pub kernel: Part,
    pub initrd: Part,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    pub format: u32,
    pub name: String,
    pub version: String,
    pub usr: Usr,
    pub uki: Ukis,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<DeltaFrom>,
}

impl Header {
    /// The usr image's verity salt, None when the header's is not hex of
    /// at most 256 bytes (what dm-verity takes).
    pub fn salt(&self) -> Option<Vec<u8>> {
        crate::parse_hex(&self.usr.salt).filter(|s| s.len() <= 256)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("not a basalt update payload (bad magic)")]
    Magic,
    #[error("payload header: {0}")]
    Header(String),
    #[error("payload ends early, in the {0}")]
    Truncated(&'static str),
    #[error("payload {what} has sha256 {found}, expected {expected}")]
    Digest { what: String, found: String, expected: String },
    #[error("payload data after the last part")]
    Trailing,
    #[error("delta reference: {0}")]
    Reference(String),
    #[error("{0}")]
    Io(#[from] io::Error),
}

/// What the reference of a delta is made of, in this order.
pub struct Reference<'a> {
    pub version: &'a str,
    pub usr: &'a [u8],
    pub kernel: &'a [u8],
    pub initrd: &'a [u8],
}

impl Reference<'_> {
    fn describe(&self) -> DeltaFrom {
        let part = |d: &[u8]| Part { bytes: d.len() as u64, sha256: sha256_hex(d) };
        DeltaFrom { version: self.version.to_string(), usr: part(self.usr), kernel: part(self.kernel), initrd: part(self.initrd) }
    }

    fn concat(&self) -> Vec<u8> {
        [self.usr, self.kernel, self.initrd].concat()
    }
}

/// What goes into a payload.
pub struct Contents<'a> {
    pub name: &'a str,
    pub version: &'a str,
    pub usr: &'a [u8],
    pub hash_offset: u64,
    pub root_hash: &'a str,
    pub uki_a: &'a [u8],
    pub uki_b: &'a [u8],
}

fn window_log(bytes: usize) -> u32 {
    (usize::BITS - bytes.max(1 << 20).next_power_of_two().leading_zeros() - 1).clamp(20, 30)
}

/// Writes a payload, a delta when `reference` is given. `level` is zstd's.
pub fn write<W: Write>(out: &mut W, c: &Contents, reference: Option<&Reference>, level: i32) -> io::Result<Header> {
    let part = |d: &[u8]| Part { bytes: d.len() as u64, sha256: sha256_hex(d) };
    let superblock = usize::try_from(c.hash_offset).ok().and_then(|at| c.usr.get(at..)).unwrap_or_default();
    let (_, salt, _) = basalt_verity::read_superblock(superblock).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("the usr image's verity superblock: {e}")))?;
    let header = Header {
        format: FORMAT,
        name: c.name.to_string(),
        version: c.version.to_string(),
        usr: Usr { bytes: c.usr.len() as u64, sha256: sha256_hex(c.usr), hash_offset: c.hash_offset, root_hash: c.root_hash.to_string(), salt: crate::hex(&salt) },
        uki: Ukis { a: part(c.uki_a), b: part(c.uki_b) },
        delta: reference.map(Reference::describe),
    };
    let json = serde_json::to_vec(&header).expect("header serializes");
    out.write_all(MAGIC)?;
    out.write_all(&(json.len() as u32).to_le_bytes())?;
    out.write_all(&json)?;
    let prefix = reference.map(Reference::concat);
    // The window the decoder on the machine must hold: a delta's matches
    // reach back through the whole reference; a full payload's longest
    // useful match is the second UKI finding the first.
    let window = match &prefix {
        Some(p) => p.len() + c.usr.len() + c.uki_a.len() + c.uki_b.len(),
        None => c.uki_a.len().max(c.uki_b.len()) + (1 << 20),
    };
    let mut enc = match &prefix {
        Some(p) => zstd::stream::write::Encoder::with_ref_prefix(out, level, p)?,
        None => zstd::stream::write::Encoder::new(out, level)?,
    };
    enc.window_log(window_log(window))?;
    enc.long_distance_matching(true)?;
    enc.include_checksum(true)?;
    enc.set_pledged_src_size(Some((c.usr.len() + c.uki_a.len() + c.uki_b.len()) as u64))?;
    for d in [c.usr, c.uki_a, c.uki_b] {
        enc.write_all(d)?;
    }
    enc.finish()?;
    Ok(header)
}

/// Reads magic and header; `r` is then at the compressed frame.
pub fn read_header<R: Read>(r: &mut R) -> Result<Header, PayloadError> {
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic).map_err(|_| PayloadError::Truncated("magic"))?;
    if &magic != MAGIC {
        return Err(PayloadError::Magic);
    }
    let mut len = [0u8; 4];
    r.read_exact(&mut len).map_err(|_| PayloadError::Truncated("header"))?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_HEADER {
        return Err(PayloadError::Header(format!("{len} bytes, more than {MAX_HEADER}")));
    }
    let mut json = vec![0u8; len];
    r.read_exact(&mut json).map_err(|_| PayloadError::Truncated("header"))?;
    let h: Header = serde_json::from_slice(&json).map_err(|e| PayloadError::Header(e.to_string()))?;
    if h.format != FORMAT {
        return Err(PayloadError::Header(format!("format {} (this agent reads format {FORMAT})", h.format)));
    }
    if h.usr.bytes == 0 || h.usr.bytes > MAX_USR_BYTES || !h.usr.bytes.is_multiple_of(4096) || h.usr.hash_offset >= h.usr.bytes || !h.usr.hash_offset.is_multiple_of(4096) {
        return Err(PayloadError::Header(format!("usr of {} bytes with verity at {} is not a slot image", h.usr.bytes, h.usr.hash_offset)));
    }
    if h.salt().is_none() {
        return Err(PayloadError::Header(format!("verity salt {:?} is not hex of at most 256 bytes", h.usr.salt)));
    }
    for (n, p) in [("a", &h.uki.a), ("b", &h.uki.b)] {
        if p.bytes == 0 || p.bytes > MAX_UKI_BYTES {
            return Err(PayloadError::Header(format!("UKI {n} of {} bytes", p.bytes)));
        }
    }
    Ok(h)
}

/// Checks that `reference` is what the delta was made against.
pub fn check_reference(from: &DeltaFrom, reference: &Reference) -> Result<(), PayloadError> {
    let have = reference.describe();
    for (what, want, got) in [("usr", &from.usr, &have.usr), ("kernel", &from.kernel, &have.kernel), ("initrd", &from.initrd, &have.initrd)] {
        if want != got {
            return Err(PayloadError::Reference(format!(
                "this machine's {what} ({} bytes, sha256 {}) is not the one of version {} the delta was made from",
                got.bytes,
                &got.sha256[..12],
                from.version
            )));
        }
    }
    Ok(())
}

/// Where the decompressed parts go while they stream.
pub trait Sink {
    /// Bytes of the usr slot image, in order.
    fn usr(&mut self, data: &[u8]) -> io::Result<()>;
    /// Bytes of UKI `slot` ('a' or 'b'), in order.
    fn uki(&mut self, slot: char, data: &[u8]) -> io::Result<()>;
    /// Whether [`unpack`] checks each part's sha256 as it ends. A sink that
    /// checks the whole payload's signed sha256 and the usr image's verity
    /// tree itself has no use for a third pass over the same bytes.
    fn check_parts(&self) -> bool {
        true
    }
}

/// Decompresses the frame after the header into `sink`, checking each
/// part's size and sha256 as it ends. `reference` must be given for a delta
/// (and checked with [`check_reference`] first).
pub fn unpack<R: BufRead, S: Sink>(r: R, h: &Header, reference: Option<&Reference>, sink: &mut S) -> Result<(), PayloadError> {
    let prefix = match (&h.delta, reference) {
        (Some(from), Some(rf)) => {
            check_reference(from, rf)?;
            Some(rf.concat())
        }
        (Some(_), None) => return Err(PayloadError::Reference("a delta payload needs the reference it was made against".into())),
        (None, _) => None,
    };
    let mut dec = match &prefix {
        Some(p) => zstd::stream::read::Decoder::with_ref_prefix(r, p)?,
        None => zstd::stream::read::Decoder::with_buffer(r)?,
    };
    dec.window_log_max(31)?;
    let mut buf = vec![0u8; 1 << 20];
    let parts: [(&str, u64, &str); 3] = [("usr", h.usr.bytes, &h.usr.sha256), ("uki a", h.uki.a.bytes, &h.uki.a.sha256), ("uki b", h.uki.b.bytes, &h.uki.b.sha256)];
    let check = sink.check_parts();
    for (what, bytes, sha) in parts {
        let mut left = bytes;
        let mut hasher = check.then(Sha256::new);
        while left > 0 {
            let want = left.min(buf.len() as u64) as usize;
            let n = match dec.read(&mut buf[..want]) {
                Ok(0) => return Err(PayloadError::Truncated(part_name(what))),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(PayloadError::Truncated(part_name(what))),
                Err(e) => return Err(PayloadError::Io(io::Error::new(e.kind(), format!("decompressing the {what}: {e}")))),
            };
            if let Some(h) = &mut hasher {
                h.update(&buf[..n]);
            }
            match what {
                "usr" => sink.usr(&buf[..n])?,
                "uki a" => sink.uki('a', &buf[..n])?,
                _ => sink.uki('b', &buf[..n])?,
            }
            left -= n as u64;
        }
        if let Some(h) = hasher {
            let found = crate::hex(&h.finalize());
            if found != sha {
                return Err(PayloadError::Digest { what: what.to_string(), found, expected: sha.to_string() });
            }
        }
    }
    // The frame must end here, and its checksum is checked at its end.
    match dec.read(&mut buf[..1]) {
        Ok(0) => Ok(()),
        Ok(_) => Err(PayloadError::Trailing),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(PayloadError::Truncated("end of the payload")),
        Err(e) => Err(PayloadError::Io(io::Error::new(e.kind(), format!("the end of the compressed frame: {e}")))),
    }
}

fn part_name(what: &str) -> &'static str {
    match what {
        "usr" => "usr slot image",
        "uki a" => "UKI for slot A",
        _ => "UKI for slot B",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Collect {
        usr: Vec<u8>,
        a: Vec<u8>,
        b: Vec<u8>,
    }

    impl Sink for Collect {
        fn usr(&mut self, d: &[u8]) -> io::Result<()> {
            self.usr.extend_from_slice(d);
            Ok(())
        }
        fn uki(&mut self, s: char, d: &[u8]) -> io::Result<()> {
            if s == 'a' { &mut self.a } else { &mut self.b }.extend_from_slice(d);
            Ok(())
        }
    }

    fn noise(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// `n` bytes of noise with a verity superblock at 4096, where
    /// [`contents`] says the hash area starts.
    fn slot(n: usize, seed: u64) -> Vec<u8> {
        let mut usr = io::Cursor::new(noise(n, seed));
        basalt_verity::format(&mut usr, 4096, b"salt", [0; 16]).unwrap();
        usr.into_inner()
    }

    fn contents<'a>(usr: &'a [u8], a: &'a [u8], b: &'a [u8], version: &'a str) -> Contents<'a> {
        Contents { name: "basalt", version, usr, hash_offset: 4096, root_hash: "ab", uki_a: a, uki_b: b }
    }

    #[test]
    fn full_payload_round_trips_and_the_second_uki_is_nearly_free() {
        let usr = slot(3 << 20, 1);
        let a = noise(1 << 20, 2);
        let mut b = a.clone();
        b[100] ^= 1;
        let mut out = Vec::new();
        write(&mut out, &contents(&usr, &a, &b, "2.0"), None, 3).unwrap();
        assert!(out.len() < usr.len() + a.len() + (64 << 10), "payload {} bytes", out.len());
        let mut r = &out[..];
        let h = read_header(&mut r).unwrap();
        assert_eq!(h.salt().unwrap(), b"salt", "the header names the superblock's salt");
        let mut c = Collect::default();
        unpack(r, &h, None, &mut c).unwrap();
        assert_eq!((&c.usr, &c.a, &c.b), (&usr, &a, &b));
        let e = write(&mut Vec::new(), &contents(&noise(1 << 16, 9), &a, &b, "2.0"), None, 3).unwrap_err();
        assert!(e.to_string().contains("verity superblock"), "a usr image without verity: {e}");
    }

    #[test]
    fn delta_against_the_old_version_is_small_and_checks_its_reference() {
        let old_usr = noise(4 << 20, 3);
        let kernel = noise(1 << 20, 4);
        let initrd = noise(1 << 19, 5);
        let mut new_usr = old_usr.clone();
        new_usr.splice(1000..1000, noise(5000, 6)); // a changed file shifts what follows
        new_usr.truncate(old_usr.len());
        basalt_verity::format(&mut io::Cursor::new(&mut new_usr[..]), 4096, b"salt", [0; 16]).unwrap();
        let uki = [&b"stub"[..], &kernel, &initrd].concat();
        let reference = Reference { version: "1.0", usr: &old_usr, kernel: &kernel, initrd: &initrd };
        let mut delta = Vec::new();
        write(&mut delta, &contents(&new_usr, &uki, &uki, "2.0"), Some(&reference), 3).unwrap();
        assert!(delta.len() < 64 << 10, "delta is {} bytes", delta.len());

        let mut r = &delta[..];
        let h = read_header(&mut r).unwrap();
        assert_eq!(h.delta.as_ref().unwrap().version, "1.0");
        let mut c = Collect::default();
        unpack(r, &h, Some(&reference), &mut c).unwrap();
        assert_eq!(c.usr, new_usr);
        assert!(matches!(unpack(r, &h, None, &mut Collect::default()), Err(PayloadError::Reference(_))));
        let wrong = Reference { version: "1.0", usr: &new_usr, kernel: &kernel, initrd: &initrd };
        let e = unpack(r, &h, Some(&wrong), &mut Collect::default()).unwrap_err();
        assert!(e.to_string().contains("this machine's usr"), "{e}");
    }

    #[test]
    fn damaged_payloads_are_refused_with_the_reason() {
        let usr = slot(1 << 20, 7);
        let a = noise(1 << 16, 8);
        let mut out = Vec::new();
        write(&mut out, &contents(&usr, &a, &a, "2.0"), None, 3).unwrap();
        let parse = |bytes: &[u8]| -> Result<(), PayloadError> {
            let mut r = bytes;
            let h = read_header(&mut r)?;
            unpack(r, &h, None, &mut Collect::default())
        };
        assert!(parse(&out).is_ok());
        let e = parse(&out[..out.len() / 2]).unwrap_err();
        assert!(e.to_string().contains("ends early"), "{e}");
        let mut flipped = out.clone();
        let at = flipped.len() - 1000;
        flipped[at] ^= 0x40;
        assert!(parse(&flipped).is_err());
        assert!(matches!(parse(b"NOTBASALT...."), Err(PayloadError::Magic)));
        let mut big = out.clone();
        big[8..12].copy_from_slice(&(1u32 << 30).to_le_bytes());
        assert!(parse(&big).unwrap_err().to_string().contains("more than"));
        let mut trailing = out.clone();
        trailing.extend_from_slice(&out[out.len() - 100..]);
        assert!(parse(&trailing).is_err(), "bytes after the frame are refused");
    }
}
