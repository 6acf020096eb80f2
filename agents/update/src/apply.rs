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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
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

/// Reads the stream on a thread of its own: counts it (refusing more than
/// `limit` bytes), hashes it, and passes it on in pieces, so the network,
/// the decompression and the disk each keep a core busy.
fn read_and_hash<R: Read>(mut stream: R, limit: u64, count: &AtomicU64, out: SyncSender<io::Result<Vec<u8>>>) -> String {
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    loop {
        let mut piece = vec![0u8; PIECE];
        let mut n = 0;
        let result = loop {
            match stream.read(&mut piece[n..]) {
                Ok(0) => break Ok(()),
                Ok(k) => {
                    n += k;
                    if n == piece.len() {
                        break Ok(());
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        total += n as u64;
        count.store(total, Ordering::Relaxed);
        if total > limit {
            let _ = out.send(Err(io::Error::other(format!("the payload is larger than the {limit} bytes the metadata signs"))));
            break;
        }
        hasher.update(&piece[..n]);
        piece.truncate(n);
        let last = n == 0 || result.is_err();
        let sent = match result {
            Ok(()) if n > 0 => out.send(Ok(piece)),
            Ok(()) => Ok(()),
            Err(e) => out.send(Err(e)),
        };
        if last || sent.is_err() {
            break;
        }
    }
    basalt_repo::hex(&hasher.finalize())
}

const PIECE: usize = 1 << 20;

/// The reading end of [`read_and_hash`].
struct Pieces {
    rx: Receiver<io::Result<Vec<u8>>>,
    piece: Vec<u8>,
    pos: usize,
}

impl Read for Pieces {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.piece.len() {
            match self.rx.recv() {
                Ok(Ok(p)) => {
                    self.piece = p;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.piece.len() - self.pos);
        buf[..n].copy_from_slice(&self.piece[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

struct SlotSink<'a, 'p> {
    /// To the writer thread.
    usr: SyncSender<Vec<u8>>,
    keep: char,
    uki: Vec<u8>,
    count: &'a AtomicU64,
    total: u64,
    progress: &'a mut Progress<'p>,
    started: Instant,
    last_report: Instant,
}

impl Sink for SlotSink<'_, '_> {
    fn usr(&mut self, data: &[u8]) -> io::Result<()> {
        self.usr.send(data.to_vec()).map_err(|_| io::Error::other("the slot writer stopped"))?;
        if self.last_report.elapsed().as_millis() >= 500 {
            self.last_report = Instant::now();
            (self.progress)("downloading", self.count.load(Ordering::Relaxed), self.total, self.started.elapsed().as_secs_f64());
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

pub fn write_slot<R: Read + Send>(stream: R, expect: &Expect, slot: Slot, target: &Path, reference: Option<&Reference>, progress: &mut Progress) -> Result<Written, String> {
    let count = AtomicU64::new(0);
    let limit = expect.file.size;
    let started = Instant::now();
    let (header, uki, sha, usr) = std::thread::scope(|scope| -> Result<_, String> {
        let (tx, rx) = mpsc::sync_channel(8);
        let count_ref = &count;
        let reader = scope.spawn(move || read_and_hash(stream, limit, count_ref, tx));
        let mut src = Pieces { rx, piece: Vec::new(), pos: 0 };
        let written = (|| -> Result<(Header, Vec<u8>, File), String> {
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
            let (wtx, wrx) = mpsc::sync_channel::<Vec<u8>>(8);
            let writer = scope.spawn(move || -> io::Result<File> {
                for piece in wrx {
                    usr.write_all(&piece)?;
                }
                Ok(usr)
            });
            let mut sink = SlotSink {
                usr: wtx,
                keep: slot.letter().to_ascii_lowercase().chars().next().unwrap(),
                uki: Vec::new(),
                count: count_ref,
                total: limit,
                progress: &mut *progress,
                started,
                last_report: started,
            };
            let unpacked = payload::unpack(&mut src, &header, reference, &mut sink).map_err(|e| e.to_string());
            let uki = std::mem::take(&mut sink.uki);
            drop(sink);
            let usr = writer.join().map_err(|_| "the slot writer panicked".to_string())?.map_err(|e| format!("writing slot {}: {e}", slot.letter()));
            unpacked?;
            let usr = usr?;
            // Whatever follows the frame is counted and hashed too.
            io::copy(&mut src, &mut io::sink()).map_err(|e| format!("reading the payload: {e}"))?;
            Ok((header, uki, usr))
        })();
        drop(src);
        let sha = reader.join().map_err(|_| "the payload reader panicked".to_string())?;
        let (header, uki, usr) = written?;
        Ok((header, uki, sha, usr))
    })?;
    let got = count.load(Ordering::Relaxed);
    if got != expect.file.size {
        return Err(format!("the payload is {got} bytes, the signed metadata says {}", expect.file.size));
    }
    if sha != expect.file.sha256 {
        return Err(format!("the payload's sha256 is {sha}, the signed metadata says {}", expect.file.sha256));
    }
    progress("downloading", limit, limit, started.elapsed().as_secs_f64());
    usr.sync_all().map_err(|e| format!("syncing slot {}: {e}", slot.letter()))?;
    drop_cache(&usr);
    drop(usr);

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

#[cfg(test)]
mod tests {
    use super::*;
    use basalt_repo::payload::Contents;

    /// A slot image: `blocks` of noise with a real verity tree after them.
    fn slot_image(dir: &Path, blocks: u64) -> (Vec<u8>, u64, String) {
        let p = dir.join("usr.img");
        let mut x = 0x9e3779b97f4a7c15u64;
        let data: Vec<u8> = (0..blocks * 4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        std::fs::write(&p, &data).unwrap();
        let mut f = OpenOptions::new().read(true).write(true).open(&p).unwrap();
        let v = basalt_verity::format(&mut f, data.len() as u64, b"salt", [7; 16]).unwrap();
        (std::fs::read(&p).unwrap(), v.hash_offset, v.root_hash_hex())
    }

    struct Case {
        usr: Vec<u8>,
        payload: Vec<u8>,
        root: String,
        file: FileRef,
    }

    fn case(dir: &Path) -> Case {
        let (usr, hash_offset, root) = slot_image(dir, 300);
        let uki = b"not a PE file".repeat(100);
        let mut payload = Vec::new();
        write(&mut payload, &Contents { name: "basalt", version: "0.2.0", usr: &usr, hash_offset, root_hash: &root, uki_a: &uki, uki_b: &uki }, None, 3).unwrap();
        let file = FileRef { path: "p".into(), size: payload.len() as u64, sha256: basalt_repo::sha256_hex(&payload) };
        Case { usr, payload, root, file }
    }

    use basalt_repo::payload::write;

    fn apply(c: &Case, stream: &[u8], file: &FileRef, target_bytes: u64, dir: &Path) -> Result<Written, String> {
        let target = dir.join("slot");
        let f = File::create(&target).unwrap();
        f.set_len(target_bytes).unwrap();
        let expect = Expect { name: "basalt", version: "0.2.0", usr_root_hash: &c.root, file };
        write_slot(stream, &expect, Slot::B, &target, None, &mut |_, _, _, _| {})
    }

    #[test]
    fn a_good_payload_is_written_and_verified_then_its_uki_checked() {
        let d = tempfile::tempdir().unwrap();
        let c = case(d.path());
        let e = apply(&c, &c.payload, &c.file, 4 << 20, d.path()).err().unwrap();
        // Verity passed on what was written; the UKI check is what fails on this fake UKI.
        assert!(e.contains("the payload's UKI for slot B"), "{e}");
        assert_eq!(&std::fs::read(d.path().join("slot")).unwrap()[..c.usr.len()], &c.usr[..]);
    }

    #[test]
    fn bad_payloads_are_refused_with_the_reason() {
        let d = tempfile::tempdir().unwrap();
        let c = case(d.path());
        let e = apply(&c, &c.payload[..c.payload.len() / 2], &c.file, 4 << 20, d.path()).err().unwrap();
        assert!(e.contains("ends early"), "truncated: {e}");
        let mut longer = c.payload.clone();
        longer.extend_from_slice(&[0; 100]);
        let e = apply(&c, &longer, &c.file, 4 << 20, d.path()).err().unwrap();
        assert!(e.contains("larger than the") || e.contains("bytes, the signed metadata says"), "too long: {e}");
        let mut flipped = c.payload.clone();
        let at = flipped.len() - 5000;
        flipped[at] ^= 1;
        assert!(apply(&c, &flipped, &c.file, 4 << 20, d.path()).is_err(), "a flipped byte");
        let mut wrong = c.file.clone();
        wrong.sha256 = "0".repeat(64);
        let e = apply(&c, &c.payload, &wrong, 4 << 20, d.path()).err().unwrap();
        assert!(e.contains("the payload's sha256 is"), "{e}");
        let e = apply(&c, &c.payload, &c.file, 1 << 20, d.path()).err().unwrap();
        assert!(e.contains("slot B has 1048576"), "too small a slot: {e}");
        let other = Case { root: "1".repeat(64), ..case(d.path()) };
        let e = apply(&other, &other.payload, &other.file, 4 << 20, d.path()).err().unwrap();
        assert!(e.contains("payload usr root hash"), "{e}");
    }
}
