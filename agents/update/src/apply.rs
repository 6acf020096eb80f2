//! Writing a payload onto the passive slot: streamed from the network while
//! its sha256 is computed, decompressed straight onto the partition, and
//! read back from it while the rest is written (readback.rs); once the
//! stream's sha256 is the signed one and the slot is synced, what was read
//! back must hash to the signed verity root. Only then is the slot's UKI
//! handed back, for the caller to put on the ESP.
//!
//! ```text
//!   network ─▶ sha256 ─▶ zstd ─▶ 4 MiB blocks ─▶ O_DIRECT write ─▶ read back ─▶ verity tree
//!   (one thread each: reader, decoder, writer, checker)
//! ```

use crate::readback::{self, ReadBack};
use basalt_blockio::{Block, Pool};
use basalt_disk::layout::Slot;
use basalt_repo::meta::FileRef;
use basalt_repo::payload::{self, Header, Reference, Sink};
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
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
fn read_and_hash<R: Read>(mut stream: R, limit: u64, count: &AtomicU64, out: SyncSender<io::Result<Vec<u8>>>, spare: Receiver<Vec<u8>>) -> String {
    let mut hasher = Sha256::new();
    let mut total = 0u64;
    loop {
        let mut piece = spare.try_recv().unwrap_or_default();
        piece.resize(PIECE, 0);
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

/// The reading end of [`read_and_hash`]; used pieces go back to it.
struct Pieces {
    rx: Receiver<io::Result<Vec<u8>>>,
    spare: Sender<Vec<u8>>,
    piece: Vec<u8>,
    pos: usize,
}

impl BufRead for Pieces {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while self.pos == self.piece.len() {
            match self.rx.recv() {
                Ok(Ok(p)) => {
                    let _ = self.spare.send(std::mem::replace(&mut self.piece, p));
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(&[]),
            }
        }
        Ok(&self.piece[self.pos..])
    }
    fn consume(&mut self, n: usize) {
        self.pos += n;
    }
}

impl Read for Pieces {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let avail = self.fill_buf()?;
        let n = buf.len().min(avail.len());
        buf[..n].copy_from_slice(&avail[..n]);
        self.consume(n);
        Ok(n)
    }
}

struct SlotSink<'a, 'p> {
    /// To the writer thread, in whole page-aligned blocks (the last one may
    /// be shorter), which it can hand to the device with O_DIRECT.
    usr: SyncSender<Block>,
    pool: Pool,
    filling: Block,
    keep: char,
    uki: Vec<u8>,
    count: &'a AtomicU64,
    total: u64,
    progress: &'a mut Progress<'p>,
    started: Instant,
    last_report: Instant,
}

impl SlotSink<'_, '_> {
    fn send_block(&mut self) -> io::Result<()> {
        let full = std::mem::replace(&mut self.filling, self.pool.take());
        self.usr.send(full).map_err(|_| io::Error::other("the slot writer stopped"))
    }
}

impl Sink for SlotSink<'_, '_> {
    fn usr(&mut self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            data = &data[self.filling.push(data)..];
            if self.filling.is_full() {
                self.send_block()?;
            }
        }
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
    /// The payload's sha256 (checked on the reader thread against the
    /// signed one) covers every byte, and the slot is read back and checked
    /// against its signed verity root: the parts need no hash of their own.
    fn check_parts(&self) -> bool {
        false
    }
}

/// Size of a file or block device.
pub fn device_bytes(f: &mut File) -> io::Result<u64> {
    let end = f.seek(SeekFrom::End(0))?;
    f.seek(SeekFrom::Start(0))?;
    Ok(end)
}

pub fn write_slot<R: Read + Send>(stream: R, expect: &Expect, slot: Slot, target: &Path, reference: Option<&Reference>, progress: &mut Progress) -> Result<Written, String> {
    let count = AtomicU64::new(0);
    let limit = expect.file.size;
    let started = Instant::now();
    let root: [u8; 32] = basalt_repo::parse_hex(expect.usr_root_hash).and_then(|v| v.try_into().ok()).ok_or("bad root hash in the metadata")?;
    let (header, uki, sha, usr, read_back) = std::thread::scope(|scope| -> Result<_, String> {
        let (tx, rx) = mpsc::sync_channel(16);
        let (spare_tx, spare_rx) = mpsc::channel();
        let count_ref = &count;
        let reader = scope.spawn(move || read_and_hash(stream, limit, count_ref, tx, spare_rx));
        let mut src = Pieces { rx, spare: spare_tx, piece: Vec::new(), pos: 0 };
        let written = (|| {
            let header = payload::read_header(&mut src).map_err(|e| e.to_string())?;
            let want = |what: &str, found: &str, expected: &str| if found == expected { Ok(()) } else { Err(format!("payload {what} is {found:?}, the signed metadata says {expected:?}")) };
            want("image", &header.name, expect.name)?;
            want("version", &header.version, expect.version)?;
            want("usr root hash", &header.usr.root_hash, expect.usr_root_hash)?;
            let salt = header.salt().ok_or("the payload header's verity salt is not hex")?;
            let mut usr = OpenOptions::new().read(true).write(true).open(target).map_err(|e| format!("opening {}: {e}", target.display()))?;
            let room = device_bytes(&mut usr).map_err(|e| format!("size of {}: {e}", target.display()))?;
            if header.usr.bytes > room {
                return Err(format!("the usr image is {} bytes; slot {} has {room}", header.usr.bytes, slot.letter()));
            }
            // Written blocks are read back on a thread of their own while
            // the next ones are decompressed and written.
            let read_back = ReadBack::open(&usr, header.usr.hash_offset, header.usr.bytes, &salt);
            let (rtx, rrx) = mpsc::sync_channel::<(u64, usize)>(4);
            let checker = read_back.map(|mut rb| {
                scope.spawn(move || -> io::Result<ReadBack> {
                    for (at, len) in rrx {
                        rb.next(at, len)?;
                    }
                    Ok(rb)
                })
            });
            let (wtx, wrx) = mpsc::sync_channel::<Block>(4);
            let writer = scope.spawn(move || -> io::Result<File> {
                // Straight to the device where it takes O_DIRECT: no copy
                // into the page cache, and the write overlaps decompression.
                let direct = basalt_blockio::open_direct(&usr, true);
                let mut at = 0u64;
                for block in wrx {
                    basalt_blockio::write_at(direct.as_ref(), &usr, &block, at)?;
                    // A checker that stopped says why when it is joined.
                    let _ = rtx.send((at, block.len()));
                    at += block.len() as u64;
                }
                Ok(usr)
            });
            let pool = Pool::default();
            let mut sink = SlotSink {
                usr: wtx,
                filling: pool.take(),
                pool,
                keep: slot.letter().to_ascii_lowercase().chars().next().unwrap(),
                uki: Vec::with_capacity(if slot == Slot::A { header.uki.a.bytes } else { header.uki.b.bytes }.min(64 << 20) as usize),
                count: count_ref,
                total: limit,
                progress: &mut *progress,
                started,
                last_report: started,
            };
            let mut unpacked = payload::unpack(&mut src, &header, reference, &mut sink).map_err(|e| e.to_string());
            if unpacked.is_ok() && !sink.filling.is_empty() {
                unpacked = sink.send_block().map_err(|e| e.to_string());
            }
            let uki = std::mem::take(&mut sink.uki);
            drop(sink);
            let usr = writer.join().map_err(|_| "the slot writer panicked".to_string())?.map_err(|e| format!("writing slot {}: {e}", slot.letter()));
            let read_back = checker.map(|c| c.join().map_err(|_| "the slot checker panicked".to_string())?.map_err(|e| format!("reading slot {} back: {e}", slot.letter()))).transpose();
            // A failed write is the cause of whatever failed after it.
            let usr = usr?;
            if let Err(e) = unpacked {
                // The rest is read and hashed all the same: when the bytes
                // are not the ones signed, that is the reason to give.
                let _ = io::copy(&mut src, &mut io::sink());
                return Err(e);
            }
            let read_back = read_back?;
            // Whatever follows the frame is counted and hashed too.
            io::copy(&mut src, &mut io::sink()).map_err(|e| format!("reading the payload: {e}"))?;
            Ok((header, uki, usr, read_back))
        })();
        drop(src);
        let sha = reader.join().map_err(|_| "the payload reader panicked".to_string())?;
        let complete = count.load(Ordering::Relaxed) == expect.file.size;
        let (header, uki, usr, read_back) =
            written.map_err(|e| if complete && sha != expect.file.sha256 { format!("the payload's sha256 is {sha}, the signed metadata says {} ({e})", expect.file.sha256) } else { e })?;
        Ok((header, uki, sha, usr, read_back))
    })?;
    let got = count.load(Ordering::Relaxed);
    if got != expect.file.size {
        return Err(format!("the payload is {got} bytes, the signed metadata says {}", expect.file.size));
    }
    if sha != expect.file.sha256 {
        return Err(format!("the payload's sha256 is {sha}, the signed metadata says {}", expect.file.sha256));
    }
    progress("downloading", limit, limit, started.elapsed().as_secs_f64());
    let verify_started = Instant::now();
    progress("verifying", 0, header.usr.bytes, 0.0);
    usr.sync_all().map_err(|e| format!("syncing slot {}: {e}", slot.letter()))?;
    // What is on the slot must hash to the signed root.
    let checked = match read_back {
        Some(rb) => rb.finish(&root),
        None => readback::after_sync(&usr, header.usr.hash_offset, &root),
    };
    checked.map_err(|e| format!("slot {} after writing: {e}", slot.letter()))?;
    drop(usr);
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
pub(crate) mod tests {
    use super::*;
    use basalt_repo::payload::Contents;

    /// A slot image: `blocks` of noise with a real verity tree after them
    /// (salted with "salt"); its bytes, hash offset and root hash.
    pub(crate) fn slot_image(dir: &Path, blocks: u64) -> (Vec<u8>, u64, String) {
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
        let e = apply(&c, &flipped, &c.file, 4 << 20, d.path()).err().unwrap();
        assert!(e.contains("the payload's sha256 is"), "a flipped byte is named as a payload that is not the signed one: {e}");
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
