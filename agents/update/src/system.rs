//! Facts about the running machine and the changes the agent makes to its
//! disk: which slot runs, where the passive slot is, the UKIs on the ESP.

use basalt_disk::layout::Slot;
use basalt_slots::{MountedEsp, UkiName};
use std::path::{Path, PathBuf};

const ESP_MOUNT: &str = "/run/basalt/update/esp";

#[derive(Debug, Clone)]
pub struct Machine {
    pub image: String,
    pub version: String,
    pub slot: Slot,
    /// Data blocks of the running /usr (its verity hash area follows).
    pub usr_blocks: u64,
    pub boot_id: String,
    pub machine_id: String,
}

fn os_release_field(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| l.strip_prefix(&format!("{key}="))).map(|v| v.trim_matches('"').to_string())
}

pub fn cmdline_param(cmdline: &str, key: &str) -> Option<String> {
    cmdline.split_whitespace().find_map(|w| w.strip_prefix(&format!("{key}="))).map(str::to_string)
}

impl Machine {
    pub fn read() -> Result<Machine, String> {
        let osr = std::fs::read_to_string("/usr/lib/os-release").map_err(|e| format!("/usr/lib/os-release: {e}"))?;
        let cmdline = std::fs::read_to_string("/proc/cmdline").map_err(|e| format!("/proc/cmdline: {e}"))?;
        let slot = cmdline_param(&cmdline, "basalt.slot").and_then(|s| Slot::parse(&s)).ok_or("the kernel command line has no basalt.slot=A|B: not booted from a basalt slot")?;
        Ok(Machine {
            image: os_release_field(&osr, "IMAGE_ID").ok_or("os-release has no IMAGE_ID")?,
            version: os_release_field(&osr, "IMAGE_VERSION").ok_or("os-release has no IMAGE_VERSION")?,
            slot,
            usr_blocks: cmdline_param(&cmdline, "basalt.usr_blocks").and_then(|b| b.parse().ok()).ok_or("the kernel command line has no basalt.usr_blocks")?,
            boot_id: std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_string()).unwrap_or_default(),
            machine_id: std::fs::read_to_string("/etc/machine-id").map(|s| s.trim().to_string()).unwrap_or_default(),
        })
    }

    /// The running UKI's base name.
    pub fn uki_base(&self) -> String {
        basalt_slots::uki_base(&self.image, &self.version, self.slot)
    }

    /// Bytes of the running slot image: data and verity hash area.
    pub fn usr_bytes(&self) -> u64 {
        basalt_verity::BLOCK_SIZE * (self.usr_blocks + 1 + basalt_verity::tree_blocks(self.usr_blocks))
    }
}

/// The device node of a slot on the running disk.
pub fn slot_device(slot: Slot) -> Result<PathBuf, String> {
    let disk = basalt_slots::running_disk()?;
    let part = basalt_slots::partition_dev(&disk, slot.partition()).ok_or_else(|| format!("{disk} has no partition {} ({})", slot.partition(), slot.label()))?;
    Ok(Path::new("/dev").join(part))
}

/// Mounts the ESP for the agent (loading vfat first).
pub fn esp() -> Result<MountedEsp, String> {
    let _ = std::process::Command::new("modprobe").args(["-a", "vfat", "nls_cp437", "nls_ascii", "nls_iso8859_1"]).status();
    MountedEsp::mount(Path::new(ESP_MOUNT))
}

/// UKIs on the ESP that boot `slot`.
pub fn ukis_of(linux_dir: &Path, slot: Slot) -> Vec<(String, UkiName)> {
    basalt_slots::list(linux_dir).into_iter().filter(|(_, n)| n.slot() == Some(slot)).collect()
}
