//! Finding partitions without udev: whole disks from /sys/class/block, their
//! GPT read directly, partitions matched by PARTUUID.

use basalt_disk::{Gpt, Guid, Partition};
use std::fs;

#[derive(Debug, Clone)]
pub struct Found {
    /// Whole disk, e.g. `vda`.
    pub disk: String,
    pub gpt: Gpt,
    pub partition: Partition,
}

pub use basalt_slots::partition_dev;

pub fn whole_disks() -> Vec<String> {
    let mut disks: Vec<String> = fs::read_dir("/sys/class/block")
        .map(|rd| {
            rd.flatten()
                .filter(|e| !e.path().join("partition").exists())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with("loop") && !n.starts_with("ram") && !n.starts_with("dm-") && !n.starts_with("sr"))
                .collect()
        })
        .unwrap_or_default();
    disks.sort();
    disks
}

/// Looks through every disk's GPT for a partition with this unique GUID.
pub fn find_partuuid(guid: &Guid) -> Option<Found> {
    for disk in whole_disks() {
        let Ok(mut f) = fs::File::open(format!("/dev/{disk}")) else { continue };
        let Ok(gpt) = Gpt::read(&mut f) else { continue };
        if let Some(p) = gpt.partitions.iter().find(|p| p.guid == *guid) {
            let partition = p.clone();
            return Some(Found { disk, gpt, partition });
        }
    }
    None
}
