//! Content digests (`sha256:<64 lowercase hex>`), the names of everything in
//! the store, and a writer that computes one while bytes stream through.

use std::fmt;
use std::io::{self, Read, Write};

use sha2::{Digest as _, Sha256};

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest {
    hex: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{text:?} is not a digest: {why}")]
pub struct BadDigest {
    pub text: String,
    pub why: &'static str,
}

impl Digest {
    pub fn parse(text: &str) -> Result<Digest, BadDigest> {
        let bad = |why| BadDigest { text: text.chars().take(100).collect(), why };
        let (algorithm, hex) = text.split_once(':').ok_or_else(|| bad("expected ALGORITHM:HEX"))?;
        if algorithm != "sha256" {
            return Err(bad("only sha256 digests are supported"));
        }
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(bad("a sha256 digest has 64 lowercase hex digits"));
        }
        Ok(Digest { hex: hex.to_string() })
    }

    pub fn of(bytes: &[u8]) -> Digest {
        Digest::from_hasher(Sha256::new_with_prefix(bytes))
    }

    fn from_hasher(hasher: Sha256) -> Digest {
        Digest { hex: hex(&hasher.finalize()) }
    }

    /// The 64 hex digits, used as file names in the store.
    pub fn hex(&self) -> &str {
        &self.hex
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex)
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Digest, D::Error> {
        let text = String::deserialize(d)?;
        Digest::parse(&text).map_err(serde::de::Error::custom)
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Passes writes through to `inner` while hashing and counting them.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    pub written: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter { inner, hasher: Sha256::new(), written: 0 }
    }

    /// Feeds bytes already written earlier (a partial download being resumed).
    pub fn absorb(&mut self, mut earlier: impl Read) -> io::Result<u64> {
        let mut buf = vec![0u8; 1 << 16];
        let mut total = 0;
        loop {
            let n = earlier.read(&mut buf)?;
            if n == 0 {
                return Ok(total);
            }
            self.hasher.update(&buf[..n]);
            total += n as u64;
            self.written += n as u64;
        }
    }

    pub fn finish(self) -> (W, Digest, u64) {
        (self.inner, Digest::from_hasher(self.hasher), self.written)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Hashes what is read through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    pub read: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader { inner, hasher: Sha256::new(), read: 0 }
    }

    pub fn finish(self) -> (Digest, u64) {
        (Digest::from_hasher(self.hasher), self.read)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.read += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_parse_and_bad_ones_say_why() {
        let d = Digest::of(b"");
        assert_eq!(d.to_string(), "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert_eq!(Digest::parse(&d.to_string()).unwrap(), d);
        assert_eq!(Digest::parse("md5:abc").unwrap_err().why, "only sha256 digests are supported");
        assert_eq!(Digest::parse("sha256:ABC").unwrap_err().why, "a sha256 digest has 64 lowercase hex digits");
        assert!(Digest::parse("e3b0c442").is_err());
    }

    #[test]
    fn hashing_writer_resumes_from_earlier_bytes() {
        let mut w = HashingWriter::new(Vec::new());
        w.absorb(&b"hello "[..]).unwrap();
        w.write_all(b"world").unwrap();
        let (out, digest, n) = w.finish();
        assert_eq!(out, b"world");
        assert_eq!(n, 11);
        assert_eq!(digest, Digest::of(b"hello world"));
    }
}
