//! The running machine's slots, as init (blessing) and the update agent
//! (installing, demoting) see them:
//!
//! - which disk the running /usr comes from and its partitions' devices;
//! - the ESP, mounted for the time of a change;
//! - the UKIs in `EFI/Linux/`, named `<image>_<version>_<slot>[+LEFT[-DONE]].efi`:
//!   the Boot Loader Specification's boot counting lives in the file name.
//!   systemd-boot renames `+3` to `+2-1` when it boots the entry, sorts
//!   entries with no tries left (`+0`) last, and init drops the counter
//!   once the boot passed its health gate ("blessing").

use basalt_disk::layout::Slot;
use std::ffi::CString;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// A UKI file name taken apart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UkiName {
    /// `<image>_<version>_<slot>`
    pub base: String,
    /// Tries left; `None`: blessed (no counter).
    pub left: Option<u32>,
    /// Tries used.
    pub done: u32,
}

impl UkiName {
    pub fn parse(file: &str) -> Option<UkiName> {
        let stem = file.strip_suffix(".efi")?;
        match stem.rsplit_once('+') {
            Some((base, counter)) => {
                let mut it = counter.splitn(2, '-');
                let left = it.next()?.parse().ok()?;
                let done = match it.next() {
                    Some(d) => d.parse().ok()?,
                    None => 0,
                };
                Some(UkiName { base: base.to_string(), left: Some(left), done })
            }
            None => Some(UkiName { base: stem.to_string(), left: None, done: 0 }),
        }
    }

    pub fn file_name(&self) -> String {
        match self.left {
            None => format!("{}.efi", self.base),
            Some(l) if self.done == 0 => format!("{}+{l}.efi", self.base),
            Some(l) => format!("{}+{l}-{}.efi", self.base, self.done),
        }
    }

    /// The slot the UKI boots, from the base's last `_` field.
    pub fn slot(&self) -> Option<Slot> {
        Slot::parse(self.base.rsplit_once('_')?.1)
    }

    /// The version, from the middle field.
    pub fn version(&self) -> Option<&str> {
        let (rest, _) = self.base.rsplit_once('_')?;
        Some(rest.rsplit_once('_')?.1)
    }
}

/// The base name of a UKI: what `basalt build` names slot A's.
pub fn uki_base(image: &str, version: &str, slot: Slot) -> String {
    format!("{image}_{version}_{}", slot.letter().to_lowercase())
}

/// `name+3.efi` → (name, Some(3)); `name+2-1.efi` → (name, Some(2)); `name.efi` → (name, None).
pub fn split_counter(file: &str) -> Option<(String, Option<u32>)> {
    UkiName::parse(file).map(|n| (n.base, n.left))
}

/// The whole disk the running /usr (device-mapper device `dm-0`) sits on.
pub fn running_disk() -> Result<String, String> {
    let slaves = fs::read_dir("/sys/block/dm-0/slaves").map_err(|e| format!("no dm-0 slaves: {e}"))?;
    let part = slaves.flatten().next().ok_or("dm-0 has no underlying device")?.file_name().to_string_lossy().into_owned();
    let parent = fs::canonicalize(format!("/sys/class/block/{part}")).map_err(|e| e.to_string())?;
    Ok(parent.parent().and_then(|p| p.file_name()).ok_or("no parent disk")?.to_string_lossy().into_owned())
}

/// The kernel's device name of partition `number` on `disk` (vda3, nvme0n1p3).
pub fn partition_dev(disk: &str, number: u32) -> Option<String> {
    let dir = Path::new("/sys/class/block").join(disk);
    for entry in fs::read_dir(&dir).ok()?.flatten() {
        let p = entry.path().join("partition");
        if fs::read_to_string(&p).ok().and_then(|s| s.trim().parse::<u32>().ok()) == Some(number) {
            return Some(entry.file_name().to_string_lossy().into_owned());
        }
    }
    None
}

/// The ESP of the running disk, mounted at a directory until dropped.
pub struct MountedEsp {
    dir: PathBuf,
}

impl MountedEsp {
    /// Mounts the running disk's ESP at `at` (vfat must be loadable).
    pub fn mount(at: &Path) -> Result<MountedEsp, String> {
        let disk = running_disk()?;
        let dev = partition_dev(&disk, basalt_disk::layout::ESP).ok_or_else(|| format!("{disk} has no ESP partition"))?;
        fs::create_dir_all(at).map_err(|e| format!("{}: {e}", at.display()))?;
        let (s, t, f) = (CString::new(format!("/dev/{dev}")).unwrap(), CString::new(at.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?, c"vfat");
        // SAFETY: source, target and type are NUL-terminated strings that
        // outlive the call; vfat takes no data, so null is allowed.
        let rc = unsafe { libc::mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC, std::ptr::null()) };
        if rc < 0 {
            return Err(format!("mounting the ESP /dev/{dev} on {}: {}", at.display(), io::Error::last_os_error()));
        }
        Ok(MountedEsp { dir: at.to_path_buf() })
    }

    pub fn linux_dir(&self) -> PathBuf {
        self.dir.join("EFI/Linux")
    }
}

impl Drop for MountedEsp {
    fn drop(&mut self) {
        // SAFETY: sync takes no arguments and cannot fail.
        unsafe { libc::sync() };
        if let Ok(t) = CString::new(self.dir.as_os_str().as_encoded_bytes()) {
            // SAFETY: `t` is a NUL-terminated path that outlives the call.
            unsafe { libc::umount(t.as_ptr()) };
        }
    }
}

/// The UKIs in an `EFI/Linux` directory, sorted by file name.
pub fn list(linux_dir: &Path) -> Vec<(String, UkiName)> {
    let mut v: Vec<(String, UkiName)> =
        fs::read_dir(linux_dir).map(|rd| rd.flatten().filter_map(|e| e.file_name().to_str().map(str::to_string)).filter_map(|n| UkiName::parse(&n).map(|u| (n, u))).collect()).unwrap_or_default();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// The current file name of the UKI with base `base`.
pub fn find(linux_dir: &Path, base: &str) -> Option<(String, UkiName)> {
    list(linux_dir).into_iter().find(|(_, u)| u.base == base)
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Renames a UKI, syncing the directory.
pub fn rename(linux_dir: &Path, from: &str, to: &str) -> Result<(), String> {
    if from != to {
        fs::rename(linux_dir.join(from), linux_dir.join(to)).map_err(|e| format!("renaming {from} to {to}: {e}"))?;
        sync_dir(linux_dir);
    }
    Ok(())
}

/// Drops the boot counter of UKI `base`: this boot was good. Returns the new name.
pub fn bless(linux_dir: &Path, base: &str) -> Result<String, String> {
    let (current, mut name) = find(linux_dir, base).ok_or_else(|| format!("no UKI {base}*.efi on the ESP"))?;
    name.left = None;
    name.done = 0;
    let blessed = name.file_name();
    rename(linux_dir, &current, &blessed)?;
    Ok(blessed)
}

/// Removes every UKI that boots `slot`: the first step of rewriting it, so
/// the loader never starts a slot being written.
pub fn remove_slot(linux_dir: &Path, slot: Slot) -> Result<Vec<String>, String> {
    let mut removed = Vec::new();
    for (file, name) in list(linux_dir) {
        if name.slot() == Some(slot) {
            fs::remove_file(linux_dir.join(&file)).map_err(|e| format!("removing {file}: {e}"))?;
            removed.push(file);
        }
    }
    sync_dir(linux_dir);
    Ok(removed)
}

/// Writes a UKI under a temporary name, syncs it, then renames it into
/// place: the loader sees either no entry or the whole file.
pub fn install(linux_dir: &Path, file_name: &str, data: &[u8]) -> Result<(), String> {
    fs::create_dir_all(linux_dir).map_err(|e| e.to_string())?;
    let tmp = linux_dir.join(format!(".{file_name}.part"));
    let write = || -> io::Result<()> {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        format!("writing {file_name} to the ESP: {e}")
    })?;
    fs::rename(&tmp, linux_dir.join(file_name)).map_err(|e| format!("renaming {file_name} into place: {e}"))?;
    sync_dir(linux_dir);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_follow_the_boot_loader_specification() {
        assert_eq!(split_counter("basalt_1.0.0_a+3.efi"), Some(("basalt_1.0.0_a".into(), Some(3))));
        assert_eq!(split_counter("basalt_1.0.0_a+2-1.efi"), Some(("basalt_1.0.0_a".into(), Some(2))));
        assert_eq!(split_counter("basalt_1.0.0_a+0-3.efi"), Some(("basalt_1.0.0_a".into(), Some(0))));
        assert_eq!(split_counter("basalt_1.0.0_a.efi"), Some(("basalt_1.0.0_a".into(), None)));
        assert_eq!(split_counter("basalt_1.0.0_a+x.efi"), None);
        assert_eq!(split_counter("readme.txt"), None);
        let n = UkiName::parse("basalt_0.2.0_b+1-2.efi").unwrap();
        assert_eq!((n.slot(), n.version(), n.done), (Some(Slot::B), Some("0.2.0"), 2));
        assert_eq!(n.file_name(), "basalt_0.2.0_b+1-2.efi");
        assert_eq!(uki_base("basalt", "0.2.0", Slot::B), "basalt_0.2.0_b");
    }

    #[test]
    fn install_bless_and_remove_on_a_directory() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("EFI/Linux");
        install(&dir, "basalt_1.0.0_a.efi", b"one").unwrap();
        install(&dir, "basalt_2.0.0_b+3.efi", b"two").unwrap();
        assert_eq!(find(&dir, "basalt_2.0.0_b").unwrap().0, "basalt_2.0.0_b+3.efi");
        assert_eq!(find(&dir, "basalt_3.0.0_a"), None);
        rename(&dir, "basalt_2.0.0_b+3.efi", "basalt_2.0.0_b+2-1.efi").unwrap();
        assert_eq!(bless(&dir, "basalt_2.0.0_b").unwrap(), "basalt_2.0.0_b.efi");
        assert_eq!(fs::read(dir.join("basalt_2.0.0_b.efi")).unwrap(), b"two");
        assert_eq!(remove_slot(&dir, Slot::B).unwrap(), vec!["basalt_2.0.0_b.efi".to_string()]);
        let left: Vec<String> = list(&dir).into_iter().map(|(f, _)| f).collect();
        assert_eq!(left, vec!["basalt_1.0.0_a.efi"]);
        assert!(fs::read_dir(&dir).unwrap().flatten().all(|e| !e.file_name().to_string_lossy().ends_with(".part")));
    }
}
