//! What the firmware and the kernel read: the initramfs (newc cpio), the
//! unified kernel image (systemd stub + sections) and the EFI system
//! partition (FAT32 with systemd-boot, loader.conf and the slot's UKI).

use crate::modules::ModuleSet;
use anyhow::{Context, Result};
use basalt_cpio::CpioWriter;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;

/// Load-order list of initramfs modules, read by init.
pub const INITRD_MODULE_LIST: &str = "etc/basalt/initrd-modules";

pub fn initramfs(init: &[u8], kver: &str, modules: &ModuleSet, wanted: &[String], module_bytes: &dyn Fn(&str) -> Result<Vec<u8>>, mtime: u32) -> Result<Vec<u8>> {
    let order = modules.load_order(wanted)?;
    let mut w = CpioWriter::new(Vec::new(), mtime);
    for d in ["dev", "proc", "sys", "run", "sysroot", "etc", "etc/basalt", "lib", "lib/modules"] {
        w.dir(d, 0o755)?;
    }
    // The kernel opens /dev/console for init's stdio before init can mount devtmpfs.
    w.char_device("dev/console", 0o600, 5, 1)?;
    w.file("init", 0o755, init)?;
    let mut list = String::new();
    let mut dirs = std::collections::BTreeSet::new();
    for m in &order {
        let path = format!("lib/modules/{kver}/{}", m.rel_path);
        let mut parent = String::new();
        for comp in path.split('/').collect::<Vec<_>>().split_last().unwrap().1 {
            parent = if parent.is_empty() { comp.to_string() } else { format!("{parent}/{comp}") };
            if dirs.insert(parent.clone()) && !matches!(parent.as_str(), "lib" | "lib/modules") {
                w.dir(&parent, 0o755)?;
            }
        }
        w.file(&path, 0o644, &module_bytes(&m.rel_path)?)?;
        list.push('/');
        list.push_str(&path);
        list.push('\n');
    }
    w.file(INITRD_MODULE_LIST, 0o644, list.as_bytes())?;
    Ok(w.finish()?)
}

pub fn os_release(name: &str, version: &str) -> String {
    format!("NAME=basalt\nID=basalt\nPRETTY_NAME=\"basalt {version}\"\nVERSION_ID={version}\nIMAGE_ID={name}\nIMAGE_VERSION={version}\nHOME_URL=\"https://github.com/basalt-os/basalt\"\n")
}

pub fn uki(stub: &[u8], os_release: &str, cmdline: &str, initrd: &[u8], kernel: &[u8]) -> Result<Vec<u8>> {
    // .linux last: older stubs find the kernel most reliably there.
    Ok(basalt_uki::append_sections(stub, &[(".osrel", os_release.as_bytes()), (".cmdline", cmdline.as_bytes()), (".initrd", initrd), (".linux", kernel)])?)
}

/// Fixed timestamps for FAT entries, so ESP and OEM are reproducible.
#[derive(Debug)]
struct FixedTime(fatfs::DateTime);

impl fatfs::TimeProvider for FixedTime {
    fn get_current_date(&self) -> fatfs::Date {
        self.0.date
    }
    fn get_current_date_time(&self) -> fatfs::DateTime {
        self.0
    }
}

fn fat_time(epoch: u64) -> fatfs::DateTime {
    let c = crate::civil::civil(epoch);
    let year = c.year.clamp(1980, 2107) as u16;
    fatfs::DateTime { date: fatfs::Date { year, month: c.month as u16, day: c.day as u16 }, time: fatfs::Time { hour: c.hour as u16, min: c.minute as u16, sec: c.second as u16, millis: 0 } }
}

/// Formats `path` (already `bytes` long) as FAT32 and writes `files` into it.
pub fn fat32(path: &Path, bytes: u64, label: &str, volume_id: u32, epoch: u64, files: &[(&str, &[u8])]) -> Result<()> {
    let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(path)?;
    file.set_len(bytes)?;
    let mut label11 = [b' '; 11];
    label11[..label.len().min(11)].copy_from_slice(&label.as_bytes()[..label.len().min(11)]);
    // 2 KiB clusters keep even a 64 MiB partition above FAT32's 65,525-cluster minimum.
    let cluster = if bytes >= 256 << 20 { 2048 } else { 512 };
    let mut stream = fscommon::BufStream::new(file);
    fatfs::format_volume(&mut stream, fatfs::FormatVolumeOptions::new().fat_type(fatfs::FatType::Fat32).bytes_per_cluster(cluster).volume_label(label11).volume_id(volume_id))
        .with_context(|| format!("formatting {label} as FAT32"))?;
    stream.seek(SeekFrom::Start(0))?;
    let time: &'static FixedTime = Box::leak(Box::new(FixedTime(fat_time(epoch))));
    let fs = fatfs::FileSystem::new(stream, fatfs::FsOptions::new().time_provider(time).update_accessed_date(false))?;
    for (name, data) in files {
        let root = fs.root_dir();
        let mut dir = root.clone();
        let comps: Vec<&str> = name.split('/').collect();
        for c in &comps[..comps.len() - 1] {
            dir = match dir.open_dir(c) {
                Ok(d) => d,
                Err(_) => dir.create_dir(c)?,
            };
        }
        let mut f = dir.create_file(comps[comps.len() - 1])?;
        f.truncate()?;
        f.write_all(data).with_context(|| format!("writing {name} to {label} (partition too small?)"))?;
        f.flush()?;
    }
    fs.unmount()?;
    crate::fat_fixup::fix(path).with_context(|| format!("repairing {label}'s directories"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fat_time_converts_epochs() {
        let t = fat_time(1_700_000_000); // 2023-11-14 22:13:20 UTC
        assert_eq!((t.date.year, t.date.month, t.date.day), (2023, 11, 14));
        assert_eq!((t.time.hour, t.time.min, t.time.sec), (22, 13, 20));
        assert_eq!(fat_time(0).date.year, 1980, "FAT cannot go before 1980");
    }
}
