//! The booted slot's UKI on the ESP, its boot counter, and blessing: the
//! Boot Loader Specification's way of saying "this boot was good" is to drop
//! the `+LEFT-DONE` counter from the file name.

use crate::{blockdev, modprobe, sys};
use std::path::{Path, PathBuf};

const ESP_MOUNT: &str = "/run/basalt/esp";

/// `name+3.efi` → (name, Some(3)); `name+2-1.efi` → (name, Some(2)); `name.efi` → (name, None).
pub fn split_counter(file: &str) -> Option<(&str, Option<u32>)> {
    let stem = file.strip_suffix(".efi")?;
    match stem.rsplit_once('+') {
        Some((base, counter)) => {
            let left = counter.split('-').next()?.parse().ok()?;
            if counter.split('-').nth(1).is_some_and(|d| d.parse::<u32>().is_err()) {
                return None;
            }
            Some((base, Some(left)))
        }
        None => Some((stem, None)),
    }
}

/// The ESP of the disk the running /usr comes from.
fn esp_device() -> Result<String, String> {
    let slaves = std::fs::read_dir("/sys/block/dm-0/slaves").map_err(|e| format!("no dm-0 slaves: {e}"))?;
    let part = slaves.flatten().next().ok_or("dm-0 has no underlying device")?.file_name().to_string_lossy().into_owned();
    let parent = std::fs::canonicalize(format!("/sys/class/block/{part}")).map_err(|e| e.to_string())?;
    let disk = parent.parent().and_then(|p| p.file_name()).ok_or("no parent disk")?.to_string_lossy().into_owned();
    blockdev::partition_dev(&disk, basalt_disk::layout::ESP).ok_or_else(|| format!("{disk} has no ESP partition"))
}

struct MountedEsp;

impl MountedEsp {
    fn mount() -> Result<MountedEsp, String> {
        for m in ["vfat", "nls_cp437", "nls_ascii", "nls_utf8", "nls_iso8859_1"] {
            let _ = modprobe::load(m);
        }
        let dev = esp_device()?;
        std::fs::create_dir_all(ESP_MOUNT).map_err(|e| e.to_string())?;
        sys::mount(&format!("/dev/{dev}"), ESP_MOUNT, "vfat", libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC, "").map_err(|e| e.to_string())?;
        Ok(MountedEsp)
    }
}

impl Drop for MountedEsp {
    fn drop(&mut self) {
        sys::sync();
        let target = std::ffi::CString::new(ESP_MOUNT).unwrap();
        unsafe { libc::umount(target.as_ptr()) };
    }
}

/// What the ESP says about the booted UKI: its current file name.
pub fn find_uki(base: &str) -> Result<Option<String>, String> {
    let _esp = MountedEsp::mount()?;
    Ok(find_in(Path::new(ESP_MOUNT), base))
}

fn find_in(esp: &Path, base: &str) -> Option<String> {
    let dir = esp.join("EFI/Linux");
    let mut names: Vec<String> = std::fs::read_dir(&dir).ok()?.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names.into_iter().find(|n| split_counter(n).is_some_and(|(b, _)| b == base))
}

/// Renames the booted UKI to its name without counter. Returns the new name.
pub fn bless(base: &str) -> Result<String, String> {
    let _esp = MountedEsp::mount()?;
    let dir = PathBuf::from(ESP_MOUNT).join("EFI/Linux");
    let current = find_in(Path::new(ESP_MOUNT), base).ok_or_else(|| format!("no UKI {base}*.efi on the ESP"))?;
    let blessed = format!("{base}.efi");
    if current != blessed {
        std::fs::rename(dir.join(&current), dir.join(&blessed)).map_err(|e| format!("renaming {current}: {e}"))?;
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
    }
    Ok(blessed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_follow_the_boot_loader_specification() {
        assert_eq!(split_counter("basalt_1.0.0_a+3.efi"), Some(("basalt_1.0.0_a", Some(3))));
        assert_eq!(split_counter("basalt_1.0.0_a+2-1.efi"), Some(("basalt_1.0.0_a", Some(2))));
        assert_eq!(split_counter("basalt_1.0.0_a+0-3.efi"), Some(("basalt_1.0.0_a", Some(0))));
        assert_eq!(split_counter("basalt_1.0.0_a.efi"), Some(("basalt_1.0.0_a", None)));
        assert_eq!(split_counter("basalt_1.0.0_a+x.efi"), None);
        assert_eq!(split_counter("readme.txt"), None);
    }

    #[test]
    fn finds_the_booted_uki_among_others() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("EFI/Linux")).unwrap();
        for n in ["basalt_1.0.0_a.efi", "basalt_2.0.0_b+2-1.efi"] {
            std::fs::write(d.path().join("EFI/Linux").join(n), b"").unwrap();
        }
        assert_eq!(find_in(d.path(), "basalt_2.0.0_b").as_deref(), Some("basalt_2.0.0_b+2-1.efi"));
        assert_eq!(find_in(d.path(), "basalt_3.0.0_a"), None);
    }
}
