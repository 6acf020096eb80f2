//! First boot on a larger disk (and any boot after the disk was enlarged):
//! move the backup GPT to the disk's end, grow ROOT (the last partition)
//! to fill the disk, tell the kernel (BLKPG), and grow its ext4 online
//! (EXT4_IOC_RESIZE_FS). On the very first boot also give the disk a random
//! GUID, so two machines made from one image do not share it.

use crate::blockdev::Found;
use crate::log;
use basalt_disk::gpt::SECTOR;
use basalt_disk::{layout, Guid};
use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::Path;

/// On ROOT: present once first boot's one-time work is done.
pub const FIRST_BOOT_DONE: &str = "var/lib/basalt/first-boot-done";
const ALIGN_SECTORS: u64 = (1 << 20) / SECTOR;
const BLKPG: libc::c_ulong = 0x1269;
const BLKPG_RESIZE_PARTITION: libc::c_int = 3;
const EXT4_IOC_RESIZE_FS: libc::c_ulong = 0x4008_6610;

#[repr(C)]
struct BlkpgPartition {
    start: libc::c_longlong,
    length: libc::c_longlong,
    pno: libc::c_int,
    devname: [libc::c_char; 64],
    volname: [libc::c_char; 64],
}

#[repr(C)]
struct BlkpgIoctlArg {
    op: libc::c_int,
    flags: libc::c_int,
    datalen: libc::c_int,
    data: *mut libc::c_void,
}

fn random_guid() -> std::io::Result<Guid> {
    let mut b = [0u8; 16];
    // SAFETY: writes at most 16 bytes into `b`, which has 16.
    if unsafe { libc::getrandom(b.as_mut_ptr().cast(), 16, 0) } != 16 {
        return Err(std::io::Error::last_os_error());
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    Ok(Guid::from_uuid_bytes(b))
}

fn disk_sectors(disk: &str) -> std::io::Result<u64> {
    let s = fs::read_to_string(format!("/sys/class/block/{disk}/size"))?;
    s.trim().parse().map_err(|_| std::io::Error::other("bad size in sysfs"))
}

/// `root` is where ROOT is mounted. Returns whether anything changed.
pub fn run(found: &Found, root: &Path) -> Result<bool, String> {
    let first_boot = !root.join(FIRST_BOOT_DONE).exists();
    let sectors = disk_sectors(&found.disk).map_err(|e| format!("size of {}: {e}", found.disk))?;
    let mut gpt = found.gpt.clone();
    let grow = gpt.backup_lba + 1 < sectors;
    if !grow && !first_boot {
        return Ok(false);
    }
    let root_part = gpt.partition(layout::ROOT).cloned().ok_or("no ROOT partition")?;
    if grow {
        gpt.backup_lba = sectors - 1;
        let last_usable = gpt.last_usable_lba();
        let new_last = (last_usable + 1) / ALIGN_SECTORS * ALIGN_SECTORS - 1;
        let last_on_disk = gpt.partitions.iter().map(|p| p.last_lba).max().unwrap_or(0);
        if root_part.last_lba == last_on_disk && new_last > root_part.last_lba {
            gpt.partition_mut(layout::ROOT).unwrap().last_lba = new_last;
        }
    }
    if first_boot {
        gpt.disk_guid = random_guid().map_err(|e| format!("random disk GUID: {e}"))?;
    }
    let dev_path = format!("/dev/{}", found.disk);
    let mut dev = OpenOptions::new().read(true).write(true).open(&dev_path).map_err(|e| format!("{dev_path}: {e}"))?;
    gpt.write(&mut dev).map_err(|e| format!("writing the partition table: {e}"))?;
    dev.sync_all().map_err(|e| e.to_string())?;
    if first_boot {
        log::info(&format!("first boot: disk GUID {}", gpt.disk_guid));
    }
    let new_root = gpt.partition(layout::ROOT).unwrap().clone();
    if new_root.last_lba != root_part.last_lba {
        resize_partition(&dev, &new_root).map_err(|e| format!("telling the kernel ROOT grew: {e}"))?;
        resize_ext4(root, new_root.size_bytes()).map_err(|e| format!("growing ROOT's ext4: {e}"))?;
        log::info(&format!("grew ROOT to {} MiB to fill {} ({} MiB)", new_root.size_bytes() >> 20, found.disk, (sectors * SECTOR) >> 20));
    } else if grow {
        log::info("moved the backup partition table to the end of the disk");
    }
    if first_boot {
        let marker = root.join(FIRST_BOOT_DONE);
        let _ = fs::create_dir_all(marker.parent().unwrap());
        fs::write(&marker, format!("disk_guid={}\n", gpt.disk_guid)).map_err(|e| e.to_string())?;
    }
    Ok(true)
}

fn resize_partition(disk: &File, p: &basalt_disk::Partition) -> std::io::Result<()> {
    let mut part = BlkpgPartition { start: p.offset_bytes() as i64, length: p.size_bytes() as i64, pno: p.number as i32, devname: [0; 64], volname: [0; 64] };
    let mut arg = BlkpgIoctlArg { op: BLKPG_RESIZE_PARTITION, flags: 0, datalen: std::mem::size_of::<BlkpgPartition>() as i32, data: (&mut part as *mut BlkpgPartition).cast() };
    // SAFETY: `arg` is the kernel's struct blkpg_ioctl_arg (repr(C)); its data
    // points at `part`, a struct blkpg_partition of datalen bytes, both alive
    // for the call.
    if unsafe { libc::ioctl(disk.as_raw_fd(), BLKPG, &mut arg) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn resize_ext4(mount_point: &Path, bytes: u64) -> std::io::Result<()> {
    let dir = File::open(mount_point)?;
    let blocks: u64 = bytes / 4096;
    // SAFETY: EXT4_IOC_RESIZE_FS reads one u64 (the new block count) from
    // `&blocks`, which lives for the call.
    if unsafe { libc::ioctl(dir.as_raw_fd(), EXT4_IOC_RESIZE_FS, &blocks) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
