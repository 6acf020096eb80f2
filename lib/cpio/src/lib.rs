//! Writes "newc" (SVR4, no CRC) cpio archives: the format the Linux kernel
//! unpacks into the initramfs. Entries are written in the order given, with
//! a caller-chosen mtime, so the same input gives the same bytes.

use std::io::{self, Write};

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

pub struct CpioWriter<W: Write> {
    out: W,
    written: u64,
    next_ino: u32,
    mtime: u32,
}

impl<W: Write> CpioWriter<W> {
    pub fn new(out: W, mtime: u32) -> Self {
        CpioWriter { out, written: 0, next_ino: 1, mtime }
    }

    pub fn dir(&mut self, path: &str, perm: u32) -> io::Result<()> {
        self.entry(path, S_IFDIR | (perm & 0o7777), 2, 0, 0, &[])
    }

    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        self.entry(path, S_IFREG | (perm & 0o7777), 1, 0, 0, data)
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        self.entry(path, S_IFLNK | 0o777, 1, 0, 0, target.as_bytes())
    }

    pub fn char_device(&mut self, path: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
        self.entry(path, S_IFCHR | (perm & 0o7777), 1, major, minor, &[])
    }

    fn entry(&mut self, path: &str, mode: u32, nlink: u32, rmajor: u32, rminor: u32, data: &[u8]) -> io::Result<()> {
        let name = path.trim_start_matches('/');
        if name.is_empty() || name.contains('\0') {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bad cpio path {path:?}")));
        }
        let size = u32::try_from(data.len()).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("{path}: larger than 4 GiB")))?;
        let ino = self.next_ino;
        self.next_ino += 1;
        let header = format!("070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}", ino, mode, 0, 0, nlink, self.mtime, size, 0, 0, rmajor, rminor, name.len() + 1, 0);
        self.put(header.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()?;
        self.put(data)?;
        self.pad()
    }

    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.out.write_all(b)?;
        self.written += b.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let rem = (4 - (self.written % 4) as usize) % 4;
        self.put(&[0u8; 4][..rem])
    }

    /// Writes the trailer and returns the underlying writer.
    pub fn finish(mut self) -> io::Result<W> {
        let header = format!("070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}", 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 11, 0);
        self.put(header.as_bytes())?;
        self.put(b"TRAILER!!!\0")?;
        self.pad()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn sample() -> Vec<u8> {
        let mut w = CpioWriter::new(Vec::new(), 1_700_000_000);
        w.dir("dev", 0o755).unwrap();
        w.char_device("dev/console", 0o600, 5, 1).unwrap();
        w.dir("lib", 0o755).unwrap();
        w.file("init", 0o755, b"#!/bin/sh\necho hi\n").unwrap();
        w.file("lib/odd", 0o644, b"abc").unwrap();
        w.symlink("sbin", "lib").unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn layout_is_aligned_and_deterministic() {
        let a = sample();
        assert_eq!(a.len() % 4, 0);
        assert_eq!(a, sample());
        assert!(a.starts_with(b"070701"));
        assert!(a.windows(10).any(|w| w == b"TRAILER!!!"));
    }

    #[test]
    fn rejects_empty_path() {
        let mut w = CpioWriter::new(Vec::new(), 0);
        assert!(w.file("/", 0o644, b"").is_err());
    }

    /// GNU cpio, the reference reader, lists what we wrote.
    #[test]
    fn gnu_cpio_reads_it() {
        let Ok(_) = Command::new("cpio").arg("--version").output() else {
            panic!("GNU cpio not installed; `make deps` installs it");
        };
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("a.cpio");
        std::fs::write(&f, sample()).unwrap();
        let out = Command::new("sh").arg("-c").arg(format!("cpio -itv --quiet < {}", f.display())).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let listing = String::from_utf8_lossy(&out.stdout);
        for name in ["dev/console", "init", "lib/odd", "sbin -> lib"] {
            assert!(listing.contains(name), "{name} missing from\n{listing}");
        }
    }
}
