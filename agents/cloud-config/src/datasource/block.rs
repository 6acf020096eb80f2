//! Finding a filesystem by its label without mounting anything: list the
//! block devices in sysfs, read each one's first sectors, recognise vfat or
//! iso9660 and compare labels.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::{fat, iso9660, DatasourceError, Environment};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filesystem {
    Vfat,
    Iso9660,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockDevice {
    /// Kernel name, e.g. `vdb`, `sr0`, `nvme0n1p6`.
    pub name: String,
    /// The device node (`/dev/vdb`).
    pub path: PathBuf,
    /// GPT partition name from sysfs (`PARTNAME=`), if any.
    pub partition_name: Option<String>,
}

impl BlockDevice {
    /// Opens the device and reads the filesystem label, if it holds vfat or iso9660.
    pub fn probe(&self) -> Option<(Filesystem, String)> {
        let mut file = File::open(&self.path).ok()?;
        let mut boot = [0u8; 512];
        file.read_exact(&mut boot).ok()?;
        if fat::looks_like_fat(&boot) {
            return fat::label(&self.path).ok().map(|label| (Filesystem::Vfat, label));
        }
        let mut descriptor = [0u8; 2048];
        file.seek(SeekFrom::Start(16 * 2048)).ok()?;
        file.read_exact(&mut descriptor).ok()?;
        iso9660::volume_label(&descriptor).map(|label| (Filesystem::Iso9660, label))
    }

    /// A file's bytes from the filesystem on this device; `None` if it is not there.
    pub fn read(&self, filesystem: Filesystem, path: &str) -> Result<Option<Vec<u8>>, DatasourceError> {
        match filesystem {
            Filesystem::Vfat => fat::read_file(&self.path, path),
            Filesystem::Iso9660 => iso9660::read_file(&self.path, path),
        }
    }
}

/// The block devices sysfs lists, skipping RAM disks and empty devices.
pub fn devices(environment: &Environment) -> Vec<BlockDevice> {
    let class = environment.sys.join("class/block");
    let mut names: Vec<String> = std::fs::read_dir(&class).map(|entries| entries.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect()).unwrap_or_default();
    names.sort();
    names
        .into_iter()
        // RAM disks hold nothing of ours; probing floppy drives can stall for seconds.
        .filter(|name| !name.starts_with("ram") && !name.starts_with("zram") && !name.starts_with("fd"))
        .filter(|name| read_trimmed(&class.join(name).join("size")).is_none_or(|size| size != "0"))
        .map(|name| {
            let uevent = read_trimmed(&class.join(&name).join("uevent")).unwrap_or_default();
            let field = |key: &str| uevent.lines().find_map(|line| line.strip_prefix(key)).map(str::to_string);
            // Names with '!' stand for a '/' in the device path (cciss!c0d0).
            let node = field("DEVNAME=").unwrap_or_else(|| name.replace('!', "/"));
            BlockDevice { path: environment.dev.join(node), partition_name: field("PARTNAME="), name }
        })
        .collect()
}

fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path).ok().map(|text| text.trim().to_string())
}

/// The first device whose vfat or iso9660 label is `label` (case-insensitive,
/// as blkid compares them), or that `also` accepts.
pub fn find_filesystem(environment: &Environment, label: &str, also: impl Fn(&BlockDevice) -> bool) -> Option<(BlockDevice, Filesystem)> {
    devices(environment).into_iter().find_map(|device| {
        let (filesystem, found) = device.probe()?;
        (found.eq_ignore_ascii_case(label) || also(&device)).then_some((device, filesystem))
    })
}

#[cfg(test)]
mod tests {
    use super::super::testenv::Scratch;
    use super::*;

    #[test]
    fn labels_are_read_from_vfat_and_iso9660_images() {
        let scratch = Scratch::new();
        let vfat = scratch.vfat("cidata", &[("user-data", b"#cloud-config\n")]);
        let iso = scratch.iso("config-2", &[("openstack/latest/user_data", b"#cloud-config\n")], &["-r", "-J"]);
        scratch.add_device("vdb", &vfat, "");
        scratch.add_device("sr0", &iso, "");
        std::fs::write(scratch.dir.path().join("junk"), vec![0x5a; 64 * 1024]).unwrap();
        scratch.add_device("vdc", &scratch.dir.path().join("junk"), "");
        let environment = scratch.environment();
        let probes: Vec<_> = devices(&environment).iter().map(|device| (device.name.clone(), device.probe())).collect();
        assert_eq!(probes, [("sr0".to_string(), Some((Filesystem::Iso9660, "config-2".to_string()))), ("vdb".to_string(), Some((Filesystem::Vfat, "cidata".to_string()))), ("vdc".to_string(), None),]);
        let (device, filesystem) = find_filesystem(&environment, "CIDATA", |_| false).unwrap();
        assert_eq!((device.name.as_str(), filesystem), ("vdb", Filesystem::Vfat));
        assert!(find_filesystem(&environment, "OEM", |_| false).is_none());
    }
}
