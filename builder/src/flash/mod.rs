//! `basalt flash IMAGE DEVICE`: write an image to a disk for bare metal, the
//! way coreos-installer taught:
//!
//! - refuse a mounted or busy target, one smaller than the image, and one
//!   whose logical sectors are not the image's 512 bytes (its GPT would be
//!   at the wrong place) — all before the first byte is written;
//! - stream the source through a pipeline of threads (`pipeline`): read ⟶
//!   hash (sha256 of the file as stored) and, side by side, decompress (zstd,
//!   detected by magic) ⟶ write; never more than the target holds;
//! - wipe the old partition table first, hold the image's first MiB (its
//!   GPT) back, write the rest, verify the sha256, and only then write the
//!   first MiB and fsync. A flash that is interrupted at any point therefore
//!   leaves a disk without a partition table, which no firmware boots; a
//!   flash that fails leaves the same, on purpose (the table is wiped again).
//! - optionally keep a partition (e.g. OEM) of the old disk where the new
//!   table has the same partition, and write a cloud-config into OEM.
//! - say whether the image has a console shell (read from its UKI's command
//!   line, `console_shell`) and refuse one built with `always` without
//!   `--allow-console-shell`: for a local file before the target is touched;
//!   for a download or a pipe, which cannot be read twice, from the written
//!   target before its first MiB is, so a refused image never becomes
//!   bootable.

pub mod pipeline;
pub mod source;
pub mod target;

use crate::console_shell;
use crate::stream::{is_zero, Progress};
use anyhow::{bail, Context, Result};
use basalt_disk::{layout, Gpt};
use pipeline::{Piece, Pipeline, Pool, ZEROS};
use std::io::{Cursor, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::Instant;
use target::{Target, TargetKind};

const MIB: usize = 1 << 20;
/// Runs of zeros are zeroed in requests of up to this much.
const ZERO_BATCH: u64 = 256 << 20;
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];
/// Where a flashed console shell would be reached, for the refusal.
const ON_HARDWARE: &str = " (a server's serial port, its BMC's serial-over-LAN, a KVM switch)";
/// Test hook: the process SIGKILLs itself once this many bytes are written,
/// standing in for a power cut or a killed flash.
pub const KILL_AFTER_ENV: &str = "BASALT_FLASH_TEST_KILL_AFTER";

pub struct FlashOptions {
    pub source: String,
    pub target: PathBuf,
    pub sha256: Option<String>,
    pub keep_partitions: Vec<String>,
    pub cloud_config: Option<PathBuf>,
    pub allow_console_shell: bool,
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
    let name = src.name;
    let pool = Pool::default();
    let mut input = src.input;
    let first = input.first_block(&pool).with_context(|| format!("reading {name}"))?;
    let compressed = first.starts_with(&ZSTD_MAGIC);
    let image_size = if compressed { zstd::zstd_safe::get_frame_content_size(&first).ok().flatten() } else { src.len };

    let target = Target::open(&opts.target)?;
    if target.logical_sector != 512 {
        bail!("{} has {}-byte logical sectors; basalt images are laid out for 512-byte sectors, so the partition table would be in the wrong place", target.path.display(), target.logical_sector);
    }
    if let Some(size) = image_size {
        if size > target.size {
            bail!("{} is too small: {} bytes, the image needs {size}", target.path.display(), target.size);
        }
    }
    if target.kind == TargetKind::File && same_file(&opts.source, &target.file) {
        bail!("{} is the image itself", target.path.display());
    }

    let pipeline = Pipeline::start(input, first, compressed, pool);
    // The image's first MiB (protective MBR, primary GPT): checked now,
    // written last.
    let mut head = vec![0u8; MIB];
    let mut early = Vec::new();
    let mut got = 0u64;
    while got < MIB as u64 {
        let Ok(piece) = pipeline.pieces.recv() else { break };
        if let Piece::Data(b) = &piece {
            let n = b.len().min(MIB - got as usize);
            head[got as usize..got as usize + n].copy_from_slice(&b[..n]);
        }
        got += piece.len();
        early.push(piece);
    }
    if got < MIB as u64 {
        pipeline.finish().with_context(|| format!("reading {name}"))?;
        bail!("{name} is {got} bytes: too short to be a disk image");
    }
    let image_gpt = Gpt::read(&mut Cursor::new(&head)).with_context(|| format!("{name} is not a raw disk image (no GPT in its first MiB)"))?;
    let keep = kept_ranges(&image_gpt, &target, &opts.keep_partitions)?;
    if cloud_config.is_some() && image_gpt.partition(layout::OEM).is_none() {
        bail!("{name} has no OEM partition to write the cloud-config into");
    }

    // A local file is read a second time for its console-shell setting, so
    // that an image refused for it is refused before the target is touched.
    let local = (!source::is_url(&opts.source)).then(|| std::fs::File::open(&opts.source).ok()).flatten().filter(|f| f.metadata().is_ok_and(|m| m.is_file()));
    let early_shell = match local {
        Some(f) if compressed => Some(console_shell::or_unknown(zstd::Decoder::new(f).map_err(Into::into).and_then(|d| console_shell::of_stream(d, &image_gpt, &name)))),
        Some(f) => Some(console_shell::or_unknown(console_shell::of_disk(&f, &image_gpt, &name))),
        None => None,
    };
    if let Some(shell) = early_shell {
        println!("{name}: {}", console_shell::describe(shell));
        console_shell::check(shell, opts.allow_console_shell, &name, ON_HARDWARE)?;
    }

    let kill_after: Option<u64> = std::env::var(KILL_AFTER_ENV).ok().and_then(|v| v.parse().ok());
    let result = (|| -> Result<(String, u64)> {
        // No table while the disk holds a mix of old and new data.
        wipe_table(&target)?;
        let mut skip = vec![(0, MIB as u64)];
        skip.extend(keep);
        let mut writer = Writer { target: &target, direct: target.open_direct(), skip, zeros: None, written: 0, kill_after };
        let mut progress = Progress::new("flash", image_size);
        let mut pos = 0;
        let rest = std::iter::from_fn(|| pipeline.pieces.recv().ok());
        for piece in early.into_iter().chain(rest) {
            writer.write(pos, &piece).with_context(|| format!("writing {}", target.path.display()))?;
            pos += piece.len();
            progress.advance(piece.len());
        }
        writer.flush_zeros().with_context(|| format!("writing {}", target.path.display()))?;
        let (actual, _) = pipeline.finish().with_context(|| format!("reading {name}"))?;
        progress.finish();
        if let Some(size) = image_size {
            if pos != size {
                bail!("the image ended after {pos} bytes, {size} were announced");
            }
        }
        if actual != expected {
            bail!("sha256 mismatch: {name} has {actual}, expected {expected}; the download is corrupt or the checksum belongs to another image");
        }
        target.file.sync_all()?;
        // A download or a pipe: the setting is read from what was written.
        if early_shell.is_none() {
            let shell = console_shell::or_unknown(console_shell::of_disk(&target.file, &image_gpt, &name));
            println!("{name}: {}", console_shell::describe(shell));
            console_shell::check(shell, opts.allow_console_shell, &name, ON_HARDWARE)?;
        }
        if let Some(text) = &cloud_config {
            let oem = image_gpt.partition(layout::OEM).unwrap();
            write_cloud_config(&target.file, oem.offset_bytes(), oem.size_bytes(), text).context("writing cloud-config.yml into OEM")?;
            target.file.sync_all()?;
        }
        // The image is complete and verified: now it may become bootable.
        target.file.write_all_at(&head, 0)?;
        target.file.sync_all()?;
        Ok((actual, pos))
    })();
    match result {
        Ok((sha256, image_bytes)) => {
            target.reread_partitions();
            Ok(FlashReport { image_bytes, sha256, seconds: started.elapsed().as_secs_f64() })
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
    let zeros = &ZEROS.0[..MIB];
    let first = (MIB as u64).min(target.size);
    target.file.write_all_at(&zeros[..first as usize], 0)?;
    let last_start = target.size.saturating_sub(MIB as u64).max(first);
    target.file.write_all_at(&zeros[..(target.size - last_start) as usize], last_start)?;
    target.file.sync_all()?;
    Ok(())
}

/// Puts image pieces at their place on the target. Data goes through
/// O_DIRECT where the target takes it (no copy into the page cache, so the
/// final fsync has little left to do); runs of zeros, from the source's
/// holes or found in its data, become zeroing requests (`Target::zero_range`)
/// of up to ZERO_BATCH, so every byte of the target ends up as the image has
/// it without the zeros being copied through memory.
struct Writer<'a> {
    target: &'a Target,
    direct: Option<std::fs::File>,
    /// Ranges left alone: the held-back first MiB and kept partitions.
    skip: Vec<(u64, u64)>,
    /// Zeros not yet written: (offset, length), grown while runs follow each other.
    zeros: Option<(u64, u64)>,
    written: u64,
    kill_after: Option<u64>,
}

impl Writer<'_> {
    fn write(&mut self, pos: u64, piece: &Piece) -> Result<()> {
        let end = pos + piece.len();
        if end > self.target.size {
            bail!("the image is larger than the target ({} bytes)", self.target.size);
        }
        for (a, b) in unskipped(&self.skip, pos, end) {
            match piece {
                Piece::Zeros(_) => self.zeros(a, b - a)?,
                Piece::Data(block) => {
                    let bytes = &block[(a - pos) as usize..(b - pos) as usize];
                    if is_zero(bytes) {
                        self.zeros(a, b - a)?;
                    } else {
                        self.flush_zeros()?;
                        self.data(a, bytes)?;
                    }
                }
            }
        }
        Ok(())
    }

    fn zeros(&mut self, at: u64, len: u64) -> Result<()> {
        if let Some((s, l)) = &mut self.zeros {
            if *s + *l == at && *l + len <= ZERO_BATCH {
                *l += len;
                return Ok(());
            }
        }
        self.flush_zeros()?;
        self.zeros = Some((at, len));
        Ok(())
    }

    fn flush_zeros(&mut self) -> Result<()> {
        let Some((at, len)) = self.zeros.take() else { return Ok(()) };
        if self.target.zero_range(at, len) {
            self.count(len);
        } else {
            let mut done = 0;
            while done < len {
                let n = (len - done).min(ZEROS.0.len() as u64);
                self.data(at + done, &ZEROS.0[..n as usize])?;
                done += n;
            }
        }
        Ok(())
    }

    fn data(&mut self, at: u64, bytes: &[u8]) -> Result<()> {
        let sector = self.target.logical_sector as u64;
        let aligned = at.is_multiple_of(sector) && (bytes.len() as u64).is_multiple_of(sector) && (bytes.as_ptr() as u64).is_multiple_of(sector);
        match &self.direct {
            Some(d) if aligned => match d.write_all_at(bytes, at) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    // The device (or its driver) does not do O_DIRECT after all.
                    self.direct = None;
                    self.target.file.write_all_at(bytes, at)?;
                }
                Err(e) => return Err(e.into()),
            },
            _ => self.target.file.write_all_at(bytes, at)?,
        }
        self.count(bytes.len() as u64);
        Ok(())
    }

    fn count(&mut self, bytes: u64) {
        self.written += bytes;
        if self.kill_after.is_some_and(|k| self.written >= k) {
            // SAFETY: sending ourselves SIGKILL; nothing runs after it.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        }
    }
}

/// The parts of [start, end) outside every `skip` range, in order.
fn unskipped(skip: &[(u64, u64)], start: u64, end: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut at = start;
    while at < end {
        // The next skipped range that overlaps [at, end).
        match skip.iter().filter(|(s, e)| *e > at && *s < end).min_by_key(|(s, _)| *s) {
            Some(&(s, e)) if s <= at => at = e.min(end),
            Some(&(s, e)) => {
                out.push((at, s));
                at = e.min(end);
            }
            None => {
                out.push((at, end));
                at = end;
            }
        }
    }
    out
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

/// A partition of the target as a file of its own, for fatfs (also used by
/// `basalt payload` to read an image's ESP, with the file opened read-only).
pub(crate) struct PartitionIo<'a> {
    pub(crate) file: &'a std::fs::File,
    pub(crate) start: u64,
    pub(crate) len: u64,
    pub(crate) pos: u64,
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
    fn skipped_ranges_are_cut_out() {
        assert_eq!(unskipped(&[(8, 16), (40, 48)], 0, 64), [(0, 8), (16, 40), (48, 64)]);
        assert_eq!(unskipped(&[(0, 16)], 0, 64), [(16, 64)]);
        assert_eq!(unskipped(&[(0, 16)], 4, 12), []);
        assert_eq!(unskipped(&[(60, 100)], 0, 64), [(0, 60)]);
        assert_eq!(unskipped(&[], 5, 9), [(5, 9)]);
    }

    fn data_piece(bytes: &[u8]) -> Piece {
        let pool = Pool::default();
        let mut input = pipeline::Input::Stream(Box::new(std::io::Cursor::new(bytes.to_vec())));
        Piece::Data(std::sync::Arc::new(input.first_block(&pool).unwrap()))
    }

    fn writer(t: &Target, skip: Vec<(u64, u64)>) -> Writer<'_> {
        Writer { target: t, direct: t.open_direct(), skip, zeros: None, written: 0, kill_after: None }
    }

    #[test]
    fn skipped_ranges_are_not_written_and_zeros_become_holes() {
        let (_d, t) = file_target(64 << 10);
        t.file.write_all_at(&[7u8; 64 << 10], 0).unwrap();
        let mut w = writer(&t, vec![(8 << 10, 16 << 10)]);
        w.write(0, &data_piece(&[1u8; 32 << 10])).unwrap();
        w.write(32 << 10, &Piece::Zeros(16 << 10)).unwrap();
        w.write(48 << 10, &data_piece(&[0u8; 16 << 10])).unwrap();
        w.flush_zeros().unwrap();
        let mut back = vec![0u8; 64 << 10];
        t.file.read_exact_at(&mut back, 0).unwrap();
        let expect: Vec<u8> = (0..64 << 10)
            .map(|i| {
                if (8 << 10..16 << 10).contains(&i) {
                    7
                } else if i < 32 << 10 {
                    1
                } else {
                    0
                }
            })
            .collect();
        assert!(back == expect, "target content differs");
        // The last 32 KiB of zeros were punched out, not written.
        use std::os::unix::fs::MetadataExt;
        let blocks = t.file.metadata().unwrap().blocks();
        assert!(blocks * 512 <= 32 << 10, "{blocks} blocks allocated");
    }

    #[test]
    fn an_image_longer_than_the_target_is_refused_before_writing_past_it() {
        let (_d, t) = file_target(8 << 10);
        let mut w = writer(&t, vec![]);
        let err = w.write(0, &data_piece(&[1u8; 12 << 10])).unwrap_err();
        assert!(err.to_string().contains("larger than the target (8192 bytes)"), "{err}");
        assert_eq!(t.file.metadata().unwrap().len(), 8 << 10);
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
