//! Stage 1, from the initramfs: modules, the disk, dm-verity /usr, ROOT,
//! switch_root into the booted system, where stage 2 takes over as PID 1.

use crate::cmdline::BootParams;
use crate::{blockdev, dm, log, sys};
use basalt_disk::layout;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

const MODULE_LIST: &str = "/etc/basalt/initrd-modules";
const DISK_TIMEOUT: Duration = Duration::from_secs(30);
const SYSROOT: &str = "/sysroot";

pub fn run() -> Result<(), String> {
    let _ = fs::create_dir_all("/dev");
    sys::mount("devtmpfs", "/dev", "devtmpfs", libc::MS_NOSUID, "mode=0755").map_err(|e| e.to_string())?;
    sys::mount("proc", "/proc", "proc", libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC, "").map_err(|e| e.to_string())?;
    sys::mount("sysfs", "/sys", "sysfs", libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC, "").map_err(|e| e.to_string())?;
    sys::mount("tmpfs", "/run", "tmpfs", libc::MS_NOSUID | libc::MS_NODEV, "mode=0755").map_err(|e| e.to_string())?;
    log::ensure_console();

    let cmdline = fs::read_to_string("/proc/cmdline").map_err(|e| format!("reading /proc/cmdline: {e}"))?;
    let params = BootParams::parse(&cmdline)?;
    log::info(&format!("stage 1: slot {} usr {}", params.slot.letter(), params.usr_partuuid));

    let list = fs::read_to_string(MODULE_LIST).map_err(|e| format!("reading {MODULE_LIST}: {e}"))?;
    for m in list.lines().filter(|l| !l.is_empty()) {
        sys::load_module(Path::new(m)).map_err(|e| e.to_string())?;
    }

    let started = Instant::now();
    let found = loop {
        if let Some(f) = blockdev::find_partuuid(&params.usr_partuuid) {
            break f;
        }
        if started.elapsed() > DISK_TIMEOUT {
            return Err(format!("no disk has a partition with PARTUUID {} after {} s (disks seen: {:?})", params.usr_partuuid, DISK_TIMEOUT.as_secs(), blockdev::whole_disks()));
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let usr_dev = blockdev::partition_dev(&found.disk, found.partition.number).ok_or_else(|| format!("{} has no device for partition {}", found.disk, found.partition.number))?;
    let root_part = found.gpt.partition(layout::ROOT).filter(|p| p.name == layout::LABEL_ROOT).ok_or_else(|| format!("{} has no ROOT partition ({})", found.disk, layout::ROOT))?;
    let root_dev = blockdev::partition_dev(&found.disk, root_part.number).ok_or("no device node for ROOT")?;

    // dm-verity over the slot: data then superblock then tree, on one device.
    let verity = basalt_verity::VerityParams {
        data_blocks: params.usr_blocks,
        hash_offset: params.usr_blocks * basalt_verity::BLOCK_SIZE,
        salt: params.usr_salt.clone(),
        root_hash: params.usr_hash,
        uuid: [0; 16],
    };
    if verity.hash_offset + verity.hash_area_size() > found.partition.size_bytes() {
        return Err(format!("basalt.usr_blocks={} does not fit the {} partition", params.usr_blocks, params.slot.label()));
    }
    let dev_path = format!("/dev/{usr_dev}");
    check_verity_superblock(&dev_path, &verity)?;
    let table = verity.dm_table(&dev_path, &["restart_on_corruption"]);
    let table_params = table.splitn(4, ' ').nth(3).unwrap_or_default();
    let minor = dm::create_readonly("usr", &format!("BASALT-USR-{}", params.slot.letter()), 0, verity.data_blocks * 8, "verity", table_params)
        .map_err(|e| format!("setting up dm-verity for {dev_path}: {e}"))?;
    let dm_dev = format!("/dev/dm-{minor}");
    wait_for(&dm_dev)?;
    log::info(&format!("usr: {dm_dev} verity over {dev_path}, root hash {}", verity.root_hash_hex()));

    fs::create_dir_all(SYSROOT).ok();
    sys::mount(&format!("/dev/{root_dev}"), SYSROOT, "ext4", libc::MS_NOATIME, "").map_err(|e| e.to_string())?;
    lay_out_root(Path::new(SYSROOT)).map_err(|e| format!("laying out ROOT: {e}"))?;
    // Growing is worth a message but not a failed boot: the system runs in the old size.
    if let Err(e) = crate::grow::run(&found, Path::new(SYSROOT)) {
        log::error(&format!("first boot: {e}"));
    }
    sys::mount(&dm_dev, &format!("{SYSROOT}/usr"), "squashfs", libc::MS_RDONLY | libc::MS_NODEV, "").map_err(|e| e.to_string())?;

    switch_root()
}

/// The verity superblock on disk must describe the same tree as the command
/// line; a mismatch means the wrong or a damaged slot. (The kernel checks the
/// data itself against the root hash on every read.)
fn check_verity_superblock(dev: &str, want: &basalt_verity::VerityParams) -> Result<(), String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = fs::File::open(dev).map_err(|e| format!("opening {dev}: {e}"))?;
    let mut block = vec![0u8; basalt_verity::BLOCK_SIZE as usize];
    f.seek(SeekFrom::Start(want.hash_offset)).and_then(|_| f.read_exact(&mut block)).map_err(|e| format!("reading verity superblock of {dev}: {e}"))?;
    let (blocks, salt, _) = basalt_verity::read_superblock(&block).map_err(|e| format!("{dev}: {e}"))?;
    if blocks != want.data_blocks || salt != want.salt {
        return Err(format!("{dev}: verity superblock says {blocks} blocks, the command line {}: this slot does not match its UKI", want.data_blocks));
    }
    Ok(())
}

fn wait_for(path: &str) -> Result<(), String> {
    let started = Instant::now();
    while !Path::new(path).exists() {
        if started.elapsed() > Duration::from_secs(5) {
            return Err(format!("{path} did not appear"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

/// The directories and merged-/usr links every boot needs; made if missing.
pub fn lay_out_root(root: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{symlink, PermissionsExt};
    for (dir, mode) in [
        ("usr", 0o755),
        ("etc", 0o755),
        ("var", 0o755),
        ("home", 0o755),
        ("root", 0o700),
        ("tmp", 0o1777),
        ("run", 0o755),
        ("proc", 0o555),
        ("sys", 0o555),
        ("dev", 0o755),
        ("mnt", 0o755),
        ("opt", 0o755),
    ] {
        let p = root.join(dir);
        if !p.exists() {
            fs::create_dir(&p)?;
            fs::set_permissions(&p, fs::Permissions::from_mode(mode))?;
        }
    }
    for (link, target) in [("bin", "usr/bin"), ("sbin", "usr/sbin"), ("lib", "usr/lib"), ("lib64", "usr/lib64"), ("etc/os-release", "../usr/lib/os-release")] {
        let p = root.join(link);
        if fs::symlink_metadata(&p).is_err() {
            symlink(target, &p)?;
        }
    }
    Ok(())
}

fn switch_root() -> Result<(), String> {
    for m in ["/dev", "/proc", "/sys", "/run"] {
        sys::move_mount(m, &format!("{SYSROOT}{m}")).map_err(|e| e.to_string())?;
    }
    // Free the initramfs' memory: nothing of it is needed after the switch.
    for p in ["/init", "/lib", "/etc"] {
        let _ = fs::remove_dir_all(p).or_else(|_| fs::remove_file(p));
    }
    std::env::set_current_dir(SYSROOT).map_err(|e| format!("chdir {SYSROOT}: {e}"))?;
    sys::move_mount(".", "/").map_err(|e| e.to_string())?;
    sys::chroot(".").map_err(|e| e.to_string())?;
    std::env::set_current_dir("/").map_err(|e| e.to_string())?;
    use std::os::unix::process::CommandExt;
    let err = std::process::Command::new("/usr/lib/basalt/init").arg0("init").arg("--stage2").exec();
    Err(format!("exec /usr/lib/basalt/init: {err}"))
}
