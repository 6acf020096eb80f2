//! The disk being flashed: a block device, or a regular file standing in for
//! one. Opening it refuses what must not be overwritten: a mounted disk (or a
//! mounted partition of it), a disk held by device-mapper, md or loop (its
//! `holders` in sysfs), and a block device someone else has open
//! exclusively (O_EXCL fails with EBUSY).

use anyhow::{bail, Context, Result};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    BlockDevice,
    /// A file standing in for a disk: its length is the disk's size.
    File,
}

pub struct Target {
    pub path: PathBuf,
    pub file: File,
    pub kind: TargetKind,
    pub size: u64,
    pub logical_sector: u32,
}

const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
const BLKSSZGET: libc::c_ulong = 0x1268;
const BLKRRPART: libc::c_ulong = 0x125f;
const BLKZEROOUT: libc::c_ulong = 0x127f;

impl Target {
    pub fn open(path: &Path) -> Result<Target> {
        let meta = std::fs::metadata(path).with_context(|| format!("target {}", path.display()))?;
        let ft = meta.file_type();
        if ft.is_block_device() {
            let rdev = meta.rdev();
            let devices = disk_and_partitions(rdev);
            if let Some((dev, at)) = mounted(&devices)? {
                bail!("{} is in use: {dev} is mounted at {at}; unmount it first", path.display());
            }
            let holders = holders(&devices);
            if !holders.is_empty() {
                bail!("{} is in use by {} (device-mapper, md or loop on top of it); remove those first", path.display(), holders.join(", "));
            }
            let file = OpenOptions::new().read(true).write(true).custom_flags(libc::O_EXCL | libc::O_CLOEXEC).open(path).map_err(|e| {
                if e.raw_os_error() == Some(libc::EBUSY) {
                    anyhow::anyhow!("{} is busy (another program has it open exclusively)", path.display())
                } else {
                    anyhow::Error::new(e).context(format!("opening {}", path.display()))
                }
            })?;
            let mut size: u64 = 0;
            let mut sector: libc::c_int = 0;
            // SAFETY: both ioctls write one integer of the given type through the pointer.
            unsafe {
                if libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&file), BLKGETSIZE64, &mut size) != 0 {
                    bail!("{}: BLKGETSIZE64: {}", path.display(), std::io::Error::last_os_error());
                }
                if libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&file), BLKSSZGET, &mut sector) != 0 {
                    bail!("{}: BLKSSZGET: {}", path.display(), std::io::Error::last_os_error());
                }
            }
            Ok(Target { path: path.to_owned(), file, kind: TargetKind::BlockDevice, size, logical_sector: sector as u32 })
        } else if ft.is_file() {
            let file = OpenOptions::new().read(true).write(true).open(path).with_context(|| format!("opening {}", path.display()))?;
            Ok(Target { path: path.to_owned(), file, kind: TargetKind::File, size: meta.len(), logical_sector: 512 })
        } else {
            bail!("{} is neither a block device nor a regular file", path.display());
        }
    }

    /// A second descriptor of a block device, opened with O_DIRECT: large
    /// aligned writes through it go straight to the device instead of being
    /// copied into the page cache first. None for files, or where the device
    /// refuses O_DIRECT.
    pub fn open_direct(&self) -> Option<File> {
        if self.kind != TargetKind::BlockDevice {
            return None;
        }
        // The very device already opened (and held with O_EXCL), whatever
        // the path points at by now.
        basalt_blockio::open_direct(&self.file, true)
    }

    /// Zeroes `len` bytes at `offset` without sending zeros: BLKZEROOUT on a
    /// block device (the device zeroes, or the kernel writes its zero page),
    /// a punched hole in a file. False where neither is possible; the caller
    /// then writes zeros.
    pub fn zero_range(&self, offset: u64, len: u64) -> bool {
        let fd = std::os::fd::AsRawFd::as_raw_fd(&self.file);
        match self.kind {
            TargetKind::BlockDevice => {
                let sector = self.logical_sector as u64;
                if !offset.is_multiple_of(sector) || !len.is_multiple_of(sector) {
                    return false;
                }
                let range: [u64; 2] = [offset, len];
                // SAFETY: BLKZEROOUT reads two u64 (start, length) through the pointer.
                unsafe { libc::ioctl(fd, BLKZEROOUT, &range) == 0 }
            }
            TargetKind::File => {
                // SAFETY: fallocate on an open descriptor; no memory is passed.
                unsafe { libc::fallocate(fd, libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, offset as i64, len as i64) == 0 }
            }
        }
    }

    /// Asks the kernel to re-read the partition table (block devices only;
    /// best effort: the table is on disk either way).
    pub fn reread_partitions(&self) {
        if self.kind == TargetKind::BlockDevice {
            // SAFETY: BLKRRPART takes no argument.
            unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&self.file), BLKRRPART, 0) };
        }
    }
}

fn dev_string(dev: u64) -> String {
    format!("{}:{}", libc::major(dev), libc::minor(dev))
}

/// The device numbers of a disk and of each of its partitions (from sysfs).
fn disk_and_partitions(rdev: u64) -> Vec<u64> {
    let mut devs = vec![rdev];
    let sys = PathBuf::from(format!("/sys/dev/block/{}", dev_string(rdev)));
    if let Ok(entries) = std::fs::read_dir(&sys) {
        for e in entries.flatten() {
            let p = e.path();
            if p.join("partition").exists() {
                if let Some(dev) = std::fs::read_to_string(p.join("dev")).ok().and_then(|s| parse_dev(s.trim())) {
                    devs.push(dev);
                }
            }
        }
    }
    devs
}

fn parse_dev(s: &str) -> Option<u64> {
    let (maj, min) = s.split_once(':')?;
    Some(libc::makedev(maj.parse().ok()?, min.parse().ok()?))
}

/// The first mount whose source is one of `devices`: (source, mount point).
fn mounted(devices: &[u64]) -> Result<Option<(String, String)>> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    for line in mounts.lines() {
        let mut f = line.split(' ');
        let (Some(source), Some(at)) = (f.next(), f.next()) else { continue };
        let source = unescape_mount_field(source);
        if !source.starts_with('/') {
            continue;
        }
        if let Ok(m) = std::fs::metadata(&source) {
            if m.file_type().is_block_device() && devices.contains(&m.rdev()) {
                return Ok(Some((source, unescape_mount_field(at))));
            }
        }
    }
    Ok(None)
}

/// /proc/self/mounts writes space, tab, newline and backslash as \ooo.
fn unescape_mount_field(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Names of the devices stacked on the disk or its partitions.
fn holders(devices: &[u64]) -> Vec<String> {
    let mut names = Vec::new();
    for dev in devices {
        if let Ok(entries) = std::fs::read_dir(format!("/sys/dev/block/{}/holders", dev_string(*dev))) {
            names.extend(entries.flatten().map(|e| e.file_name().to_string_lossy().into_owned()));
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_fields_are_unescaped() {
        assert_eq!(unescape_mount_field(r"/mnt/my\040disk"), "/mnt/my disk");
        assert_eq!(unescape_mount_field(r"/a\134b"), r"/a\b");
        assert_eq!(unescape_mount_field("/dev/sda1"), "/dev/sda1");
    }

    #[test]
    fn a_regular_file_is_a_512_byte_sector_disk_of_its_length() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("disk");
        std::fs::File::create(&p).unwrap().set_len(8 << 20).unwrap();
        let t = Target::open(&p).unwrap();
        assert_eq!((t.kind, t.size, t.logical_sector), (TargetKind::File, 8 << 20, 512));
    }

    #[test]
    fn a_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = Target::open(dir.path()).err().unwrap();
        assert!(format!("{err:#}").contains("neither a block device nor a regular file"), "{err:#}");
    }
}
