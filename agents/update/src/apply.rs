//! Writing a payload onto the passive slot: streamed from the network while
//! its sha256 is computed, decompressed straight onto the partition, then
//! read back and checked against the signed verity root hash. Only then is
//! the slot's UKI handed back, for the caller to put on the ESP.

use basalt_disk::layout::Slot;
use basalt_repo::meta::FileRef;
use basalt_repo::payload::{self, Header, Reference, Sink};
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Instant;

/// What the signed metadata says the payload must be.
pub struct Expect<'a> {
    pub name: &'a str,
    pub version: &'a str,
    pub usr_root_hash: &'a str,
    pub file: &'a FileRef,
}

pub struct Written {
    pub header: Header,
    /// The UKI for the slot written.
    pub uki: Vec<u8>,
}

/// Progress: stage, bytes done, bytes in all, seconds since the stage began.
pub type Progress<'a> = dyn FnMut(&str, u64, u64, f64) + 'a;

/// Counts and hashes what is read, refusing more than `limit` bytes.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
    limit: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        if self.count > self.limit {
            return Err(io::Error::other(format!("the payload is larger than the {} bytes the metadata signs", self.limit)));
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

struct SlotSink<'a, 'p> {
    usr: File,
    written: u64,
    keep: char,
    uki: Vec<u8>,
    count: &'a dyn Fn() -> u64,
    total: u64,
    progress: &'a mut Progress<'p>,
    started: Instant,
    last_report: Instant,
}

impl Sink for SlotSink<'_, '_> {
    fn usr(&mut self, data: &[u8]) -> io::Result<()> {
        self.usr.write_all(data)?;
        self.written += data.len() as u64;
        if self.last_report.elapsed().as_millis() >= 500 {
            self.last_report = Instant::now();
            (self.progress)("downloading", (self.count)(), self.total, self.started.elapsed().as_secs_f64());
        }
        Ok(())
    }
    fn uki(&mut self, slot: char, data: &[u8]) -> io::Result<()> {
        if slot == self.keep {
            self.uki.extend_from_slice(data);
        }
        Ok(())
    }
}

/// Size of a file or block device.
pub fn device_bytes(f: &mut File) -> io::Result<u64> {
    let end = f.seek(SeekFrom::End(0))?;
    f.seek(SeekFrom::Start(0))?;
    Ok(end)
}

/// Drops the page cache of `f`, so what is read next comes from the disk.
fn drop_cache(f: &File) {
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
}

pub fn write_slot<R: Read>(stream: R, expect: &Expect, slot: Slot, target: &Path, reference: Option<&Reference>, progress: &mut Progress) -> Result<Written, String> {
    let counter = std::cell::Cell::new(0u64);
    let mut src = Hashing { inner: stream, hasher: Sha256::new(), count: 0, limit: expect.file.size };
    let header = payload::read_header(&mut src).map_err(|e| e.to_string())?;
    let want = |what: &str, found: &str, expected: &str| if found == expected { Ok(()) } else { Err(format!("payload {what} is {found:?}, the signed metadata says {expected:?}")) };
    want("image", &header.name, expect.name)?;
    want("version", &header.version, expect.version)?;
    want("usr root hash", &header.usr.root_hash, expect.usr_root_hash)?;
    let mut usr = OpenOptions::new().write(true).open(target).map_err(|e| format!("opening {}: {e}", target.display()))?;
    let room = device_bytes(&mut usr).map_err(|e| format!("size of {}: {e}", target.display()))?;
    if header.usr.bytes > room {
        return Err(format!("the usr image is {} bytes; slot {} has {room}", header.usr.bytes, slot.letter()));
    }
    let started = Instant::now();
    let total = expect.file.size;
    let count_fn = || counter.get();
    let mut sink = SlotSink {
        usr,
        written: 0,
        keep: slot.letter().to_ascii_lowercase().chars().next().unwrap(),
        uki: Vec::new(),
        count: &count_fn,
        total,
        progress,
        started,
        last_report: started,
    };
    {
        let mut tracked = Tracked { inner: &mut src, counter: &counter };
        payload::unpack(&mut tracked, &header, reference, &mut sink).map_err(|e| e.to_string())?;
        // Whatever follows the frame is counted and hashed too.
        io::copy(&mut tracked, &mut io::sink()).map_err(|e| format!("reading the payload: {e}"))?;
    }
    if src.count != expect.file.size {
        return Err(format!("the payload is {} bytes, the signed metadata says {}", src.count, expect.file.size));
    }
    let sha = basalt_repo::hex(&src.hasher.finalize());
    if sha != expect.file.sha256 {
        return Err(format!("the payload's sha256 is {sha}, the signed metadata says {}", expect.file.sha256));
    }
    (sink.progress)("downloading", total, total, started.elapsed().as_secs_f64());
    sink.usr.sync_all().map_err(|e| format!("syncing slot {}: {e}", slot.letter()))?;
    drop_cache(&sink.usr);
    let uki = std::mem::take(&mut sink.uki);
    let progress = sink.progress;
    drop(sink.usr);

    // Read back what is on the slot: the verity tree must hash to the signed root.
    let verify_started = Instant::now();
    progress("verifying", 0, header.usr.bytes, 0.0);
    let mut dev = File::open(target).map_err(|e| format!("opening {}: {e}", target.display()))?;
    drop_cache(&dev);
    let root: [u8; 32] = basalt_repo::parse_hex(expect.usr_root_hash).and_then(|v| v.try_into().ok()).ok_or("bad root hash in the metadata")?;
    basalt_verity::verify(&mut dev, header.usr.hash_offset, &root).map_err(|e| format!("slot {} after writing: {e}", slot.letter()))?;
    progress("verifying", header.usr.bytes, header.usr.bytes, verify_started.elapsed().as_secs_f64());

    check_uki(&uki, slot, expect.usr_root_hash)?;
    Ok(Written { header, uki })
}

struct Tracked<'a, R> {
    inner: &'a mut R,
    counter: &'a std::cell::Cell<u64>,
}

impl<R: Read> Read for Tracked<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.counter.set(self.counter.get() + n as u64);
        Ok(n)
    }
}

/// The UKI must boot the slot written, with the root hash just checked.
pub fn check_uki(uki: &[u8], slot: Slot, root_hash: &str) -> Result<(), String> {
    let sections = basalt_uki::sections(uki).map_err(|e| format!("the payload's UKI for slot {}: {e}", slot.letter()))?;
    let cmdline = sections.iter().find(|(n, _)| n == ".cmdline").map(|(_, d)| String::from_utf8_lossy(d).into_owned()).ok_or("the payload's UKI has no .cmdline")?;
    let words: Vec<&str> = cmdline.split_whitespace().collect();
    let slot_word = format!("basalt.slot={}", slot.letter());
    let hash_word = format!("basalt.usr_hash={root_hash}");
    if !words.contains(&slot_word.as_str()) || !words.contains(&hash_word.as_str()) {
        return Err(format!("the payload's UKI for slot {} has command line {cmdline:?}, without {slot_word} and {hash_word}", slot.letter()));
    }
    Ok(())
}

/// A UKI's kernel and initramfs: the parts of a delta's reference that
/// come from the ESP.
pub fn uki_kernel_initrd(uki: &[u8]) -> Result<(Vec<u8>, Vec<u8>), String> {
    let sections = basalt_uki::sections(uki).map_err(|e| format!("the running UKI: {e}"))?;
    let get = |name: &str| sections.iter().find(|(n, _)| n == name).map(|(_, d)| d.to_vec()).ok_or_else(|| format!("the running UKI has no {name} section"));
    Ok((get(".linux")?, get(".initrd")?))
}

/// The first `bytes` of the running slot's partition.
pub fn read_slot(dev: &Path, bytes: u64) -> Result<Vec<u8>, String> {
    let mut f = File::open(dev).map_err(|e| format!("opening {}: {e}", dev.display()))?;
    let mut v = vec![0u8; bytes as usize];
    f.read_exact(&mut v).map_err(|e| format!("reading {}: {e}", dev.display()))?;
    Ok(v)
}
