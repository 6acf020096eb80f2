//! `basalt flash IMAGE DEVICE`: write an image to a disk for bare metal, the
//! way coreos-installer taught:
//!
//! - refuse a mounted or busy target, one smaller than the image, and one
//!   whose logical sectors are not the image's 512 bytes (its GPT would be
//!   at the wrong place) — all before the first byte is written;
//! - stream the source through stacked readers: hash (sha256 of the file as
//!   stored) ⟶ decompress (zstd, detected by magic) ⟶ limit (never more than
//!   the target holds);
//! - wipe the old partition table first, hold the image's first MiB (its
//!   GPT) back, write the rest, verify the sha256, and only then write the
//!   first MiB and fsync. A flash that is interrupted at any point therefore
//!   leaves a disk without a partition table, which no firmware boots; a
//!   flash that fails leaves the same, on purpose (the table is wiped again).
//! - optionally keep a partition (e.g. OEM) of the old disk where the new
//!   table has the same partition, and write a cloud-config into OEM.

pub mod source;
pub mod target;

use crate::stream::{is_zero, read_full, HashingReader, LimitReader, Progress};
use anyhow::{bail, Context, Result};
use basalt_disk::{layout, Gpt};
use std::io::{BufRead, BufReader, Cursor, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::Instant;
use target::{Target, TargetKind};

const MIB: usize = 1 << 20;
/// Write unit: large enough for full device throughput, small enough to pipeline.
const CHUNK: usize = 4 * MIB;
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
/// Test hook: the process SIGKILLs itself once this many bytes are written,
/// standing in for a power cut or a killed flash.
pub const KILL_AFTER_ENV: &str = "BASALT_FLASH_TEST_KILL_AFTER";

pub struct FlashOptions {
    pub source: String,
    pub target: PathBuf,
    pub sha256: Option<String>,
    pub keep_partitions: Vec<String>,
    pub cloud_config: Option<PathBuf>,
}

#[derive(Debug)]
pub struct FlashReport {
    pub image_bytes: u64,
    pub sha256: String,
    pub seconds: f64,
}

pub fn flash(opts: &FlashOptions) -> Result<FlashReport> {
    let started = Instant::now();
    // Everything that can be refused is refused before the target is touched.
    let expected = source::expected_sha256(&opts.source, opts.sha256.as_deref())?;
    let cloud_config = match &opts.cloud_config {
        Some(p) => Some(read_cloud_config(p)?),
        None => None,
    };
    let src = source::open(&opts.source)?;
    let (hashing, hash) = HashingReader::new(src.reader);
    let mut buffered = BufReader::with_capacity(MIB, hashing);
    let peek = buffered.fill_buf().with_context(|| format!("reading {}", src.name))?;
    let compressed = peek.starts_with(&ZSTD_MAGIC);
    let image_size = if compressed { zstd::zstd_safe::get_frame_content_size(peek).ok().flatten() } else { src.len };

    let target = Target::open(&opts.target)?;
    if target.logical_sector != 512 {
        bail!(
            "{} has {}-byte logical sectors; basalt images are laid out for 512-byte sectors, so the partition table would be in the wrong place",
            target.path.display(),
            target.logical_sector
        );
    }
    if let Some(size) = image_size {
        if size > target.size {
            bail!("{} is too small: {} bytes, the image needs {size}", target.path.display(), target.size);
        }
    }
    if target.kind == TargetKind::File && same_file(&opts.source, &target.file) {
        bail!("{} is the image itself", target.path.display());
    }

    let decoded: Box<dyn Read + Send> = if compressed { Box::new(zstd::Decoder::with_buffer(buffered)?) } else { Box::new(buffered) };
    let mut limited = LimitReader::new(decoded, target.size);
    let mut head = vec![0u8; MIB];
    let n = read_full(&mut limited, &mut head).with_context(|| format!("reading {}", src.name))?;
    if n < MIB {
        bail!("{} is {n} bytes: too short to be a disk image", src.name);
    }
    let image_gpt = Gpt::read(&mut Cursor::new(&head)).with_context(|| format!("{} is not a raw disk image (no GPT in its first MiB)", src.name))?;
    let keep = kept_ranges(&image_gpt, &target, &opts.keep_partitions)?;
    if cloud_config.is_some() && image_gpt.partition(layout::OEM).is_none() {
        bail!("{} has no OEM partition to write the cloud-config into", src.name);
    }

    let mut target = target;
    let written = std::cell::Cell::new(0u64);
    let result = (|| -> Result<String> {
        // No table while the disk holds a mix of old and new data.
        wipe_table(&target)?;
        let kill_after: Option<u64> = std::env::var(KILL_AFTER_ENV).ok().and_then(|v| v.parse().ok());
        let mut progress = Progress::new("flash", image_size);
        progress.advance(MIB as u64);
        let total = stream_rest(limited, &target, &keep, MIB as u64, &mut progress, |bytes| {
            written.set(written.get() + bytes);
            if kill_after.is_some_and(|k| written.get() >= k) {
                // SAFETY: sending ourselves SIGKILL; nothing runs after it.
                unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
            }
        })?;
        progress.finish();
        if let Some(size) = image_size {
            if total != size {
                bail!("the image ended after {total} bytes, {size} were announced");
            }
        }
        let (actual, _) = hash.digest();
        if actual != expected {
            bail!("sha256 mismatch: {} has {actual}, expected {expected}; the download is corrupt or the checksum belongs to another image", src.name);
        }
        target.file.sync_all()?;
        if let Some(text) = &cloud_config {
            let oem = image_gpt.partition(layout::OEM).unwrap();
            write_cloud_config(&target.file, oem.offset_bytes(), oem.size_bytes(), text).context("writing cloud-config.yml into OEM")?;
            target.file.sync_all()?;
        }
        // The image is complete and verified: now it may become bootable.
        target.file.write_all_at(&head, 0)?;
        target.file.sync_all()?;
        written.set(written.get() + MIB as u64);
        Ok(actual)
    })();
    match result {
        Ok(sha256) => {
            target.reread_partitions();
            let _ = target.file.flush();
            Ok(FlashReport { image_bytes: image_size.unwrap_or(0).max(written.get()), sha256, seconds: started.elapsed().as_secs_f64() })
        }
        Err(e) => {
            let wiped = wipe_table(&target);
            let what = match wiped {
                Ok(()) => "its partition table was wiped, so it will not boot a half-written image".to_string(),
                Err(w) => format!("wiping its partition table failed too: {w:#}"),
            };
            Err(e.context(format!("flashing {} failed; {what}", target.path.display())))
        }
    }
}

/// Zeroes the first and the last MiB (primary and backup GPT) and syncs.
fn wipe_table(target: &Target) -> Result<()> {
    let zeros = vec![0u8; MIB];
    let first = (MIB as u64).min(target.size);
    target.file.write_all_at(&zeros[..first as usize], 0)?;
    let last_start = target.size.saturating_sub(MIB as u64).max(first);
    target.file.write_all_at(&zeros[..(target.size - last_start) as usize], last_start)?;
    target.file.sync_all()?;
    Ok(())
}

/// Reads the rest of the image in chunks on one thread (hashing and
/// decompressing) and writes them on this one, so neither waits for the other.
fn stream_rest(
    mut reader: impl Read + Send,
    target: &Target,
    keep: &[(u64, u64)],
    mut pos: u64,
    progress: &mut Progress,
    mut on_written: impl FnMut(u64),
) -> Result<u64> {
    let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
    let (empty_tx, empty_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    for _ in 0..6 {
        empty_tx.send(vec![0u8; CHUNK]).unwrap();
    }
    std::thread::scope(|s| {
        let producer = s.spawn(move || -> Result<()> {
            while let Ok(mut buf) = empty_rx.recv() {
                buf.resize(CHUNK, 0);
                let n = read_full(&mut reader, &mut buf)?;
                if n == 0 {
                    return Ok(());
                }
                buf.truncate(n);
                if full_tx.send(buf).is_err() {
                    return Ok(());
                }
            }
            Ok(())
        });
        let mut write_result = Ok(());
        for buf in full_rx.iter() {
            if let Err(e) = write_chunk(target, keep, pos, &buf) {
                write_result = Err(e);
                break;
            }
            pos += buf.len() as u64;
            progress.advance(buf.len() as u64);
            on_written(buf.len() as u64);
            let _ = empty_tx.send(buf);
        }
        drop(empty_tx);
        drop(full_rx);
        let read_result = producer.join().expect("reader thread panicked");
        read_result.context("reading the image")?;
        write_result.with_context(|| format!("writing {}", target.path.display()))?;
        Ok(pos)
    })
}

/// Writes one chunk at `pos`, leaving kept partitions alone. A file target
/// gets holes where the image has zeros (same content, no wasted writes); a
/// block device gets every byte, since its old contents must be overwritten.
fn write_chunk(target: &Target, keep: &[(u64, u64)], pos: u64, buf: &[u8]) -> std::io::Result<()> {
    let end = pos + buf.len() as u64;
    let mut at = pos;
    while at < end {
        // The next kept range that overlaps [at, end).
        let next_keep = keep.iter().filter(|(s, e)| *e > at && *s < end).min_by_key(|(s, _)| *s);
        let (write_end, skip_to) = match next_keep {
            Some(&(s, e)) if s <= at => (at, e.min(end)),
            Some(&(s, e)) => (s, e.min(end)),
            None => (end, end),
        };
        if write_end > at {
            let piece = &buf[(at - pos) as usize..(write_end - pos) as usize];
            if target.kind == TargetKind::File && is_zero(piece) {
                punch_hole(&target.file, at, piece.len() as u64)?;
            } else {
                target.file.write_all_at(piece, at)?;
            }
        }
        at = skip_to.max(write_end);
    }
    Ok(())
}

fn punch_hole(file: &std::fs::File, offset: u64, len: u64) -> std::io::Result<()> {
    // SAFETY: fallocate on an open descriptor; no memory is passed.
    let r = unsafe {
        libc::fallocate(std::os::fd::AsRawFd::as_raw_fd(file), libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, offset as i64, len as i64)
    };
    if r == 0 {
        return Ok(());
    }
    // A filesystem without hole punching gets the zeros written.
    file.write_all_at(&vec![0u8; len as usize], offset)
}

/// Byte ranges of the old disk to leave as they are: each named partition
/// must exist in both tables at the same place with the same size.
fn kept_ranges(image_gpt: &Gpt, target: &Target, labels: &[String]) -> Result<Vec<(u64, u64)>> {
    if labels.is_empty() {
        return Ok(Vec::new());
    }
    let mut file = &target.file;
    let old = Gpt::read(&mut file).with_context(|| format!("--keep-partition: {} has no readable partition table to keep partitions from", target.path.display()))?;
    let mut ranges = Vec::new();
    for label in labels {
        let new = image_gpt.by_name(label).with_context(|| format!("--keep-partition {label}: the image has no partition labelled {label}"))?;
        let was = old.by_name(label).with_context(|| format!("--keep-partition {label}: {} has no partition labelled {label}", target.path.display()))?;
        if (new.first_lba, new.last_lba) != (was.first_lba, was.last_lba) {
            bail!(
                "--keep-partition {label}: the old partition spans sectors {}–{}, the image's {}–{}; it can only be kept where both tables agree",
                was.first_lba,
                was.last_lba,
                new.first_lba,
                new.last_lba
            );
        }
        ranges.push((new.offset_bytes(), new.offset_bytes() + new.size_bytes()));
    }
    (&target.file).seek(SeekFrom::Start(0))?;
    Ok(ranges)
}

fn read_cloud_config(path: &std::path::Path) -> Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading --cloud-config {}", path.display()))?;
    let first = text.lines().next().unwrap_or("");
    if first.trim_end() != "#cloud-config" && !first.starts_with("#!") {
        bail!("--cloud-config {}: the first line must be `#cloud-config` (or `#!` for a script), found {first:?}", path.display());
    }
    Ok(text)
}

/// A partition of the target as a file of its own, for fatfs.
struct PartitionIo<'a> {
    file: &'a std::fs::File,
    start: u64,
    len: u64,
    pos: u64,
}

impl Read for PartitionIo<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.len.saturating_sub(self.pos) as usize);
        let n = self.file.read_at(&mut buf[..n], self.start + self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for PartitionIo<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.pos + buf.len() as u64 > self.len {
            return Err(std::io::Error::other("write past the end of the partition"));
        }
        self.file.write_all_at(buf, self.start + self.pos)?;
        self.pos += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Seek for PartitionIo<'_> {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(p) => p as i64,
            SeekFrom::End(d) => self.len as i64 + d,
            SeekFrom::Current(d) => self.pos as i64 + d,
        };
        if pos < 0 {
            return Err(std::io::Error::other("seek before the start of the partition"));
        }
        self.pos = pos as u64;
        Ok(self.pos)
    }
}

/// Writes `cloud-config.yml` into the OEM partition's FAT filesystem.
fn write_cloud_config(file: &std::fs::File, start: u64, len: u64, text: &str) -> Result<()> {
    let io = PartitionIo { file, start, len, pos: 0 };
    let fs = fatfs::FileSystem::new(fscommon::BufStream::new(io), fatfs::FsOptions::new()).context("OEM is not a FAT filesystem")?;
    {
        let mut f = fs.root_dir().create_file("cloud-config.yml")?;
        f.truncate()?;
        f.write_all(text.as_bytes())?;
        f.flush()?;
    }
    fs.unmount()?;
    Ok(())
}

fn same_file(source: &str, target: &std::fs::File) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(source), target.metadata()) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_target(len: u64) -> (tempfile::TempDir, Target) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("disk");
        std::fs::File::create(&p).unwrap().set_len(len).unwrap();
        let t = Target::open(&p).unwrap();
        (dir, t)
    }

    #[test]
    fn kept_ranges_are_not_written() {
        let (_d, t) = file_target(64);
        t.file.write_all_at(&[7u8; 64], 0).unwrap();
        write_chunk(&t, &[(8, 16), (40, 48)], 0, &[1u8; 64]).unwrap();
        let mut back = vec![0u8; 64];
        t.file.read_exact_at(&mut back, 0).unwrap();
        let expect: Vec<u8> = (0..64).map(|i| if (8..16).contains(&i) || (40..48).contains(&i) { 7 } else { 1 }).collect();
        assert_eq!(back, expect);
    }

    #[test]
    fn zero_chunks_of_a_file_target_read_back_as_zeros() {
        let (_d, t) = file_target(2 * CHUNK as u64);
        t.file.write_all_at(&vec![9u8; 2 * CHUNK], 0).unwrap();
        write_chunk(&t, &[], 0, &vec![0u8; CHUNK]).unwrap();
        let mut back = vec![1u8; CHUNK];
        t.file.read_exact_at(&mut back, 0).unwrap();
        assert!(is_zero(&back));
    }

    #[test]
    fn wiping_clears_first_and_last_mib_only() {
        let (_d, t) = file_target(3 * MIB as u64);
        t.file.write_all_at(&vec![5u8; 3 * MIB], 0).unwrap();
        wipe_table(&t).unwrap();
        let mut back = vec![0u8; 3 * MIB];
        t.file.read_exact_at(&mut back, 0).unwrap();
        assert!(is_zero(&back[..MIB]) && is_zero(&back[2 * MIB..]));
        assert!(back[MIB..2 * MIB].iter().all(|&b| b == 5));
    }

    #[test]
    fn cloud_config_must_start_like_one() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("user-data");
        std::fs::write(&p, "hostname: x\n").unwrap();
        let err = read_cloud_config(&p).unwrap_err();
        assert!(err.to_string().contains("must be `#cloud-config`"), "{err}");
        std::fs::write(&p, "#cloud-config\nhostname: x\n").unwrap();
        assert!(read_cloud_config(&p).is_ok());
    }
}
