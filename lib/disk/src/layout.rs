//! The basalt disk: CoreOS numbering (1, 2, 3, 4, 6, 9), 1 MiB alignment,
//! ROOT last so first boot can grow it into a larger disk. docs/disk-layout.md
//! describes the same table; a test there checks that both agree.

use crate::gpt::{Gpt, Partition, SECTOR};
use crate::guid::Guid;

pub const MIB: u64 = 1 << 20;

pub mod types {
    pub const ESP: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";
    pub const BIOS_BOOT: &str = "21686148-6449-6e6f-744e-656564454649";
    /// CoreOS /usr: what Flatcar users' tools recognise as a USR slot.
    pub const COREOS_USR: &str = "5dfbf5f4-2848-4bac-aa5e-0d9a20b745a6";
    /// CoreOS "resize": a root partition to be grown on first boot.
    pub const COREOS_RESIZE: &str = "3884dd41-8582-4404-b9a8-e9b84f2df50e";
    pub const LINUX_DATA: &str = "0fc63daf-8483-4772-8e79-3d69d8477de4";
}

pub const ESP: u32 = 1;
pub const BIOS_BOOT: u32 = 2;
pub const USR_A: u32 = 3;
pub const USR_B: u32 = 4;
pub const OEM: u32 = 6;
pub const ROOT: u32 = 9;

pub const LABEL_ESP: &str = "EFI-SYSTEM";
pub const LABEL_BIOS_BOOT: &str = "BIOS-BOOT";
pub const LABEL_OEM: &str = "OEM";
pub const LABEL_ROOT: &str = "ROOT";

/// UAPI "read-only" attribute bit, set on both USR slots.
pub const ATTR_READ_ONLY: u64 = 1 << 60;
/// UAPI "grow file system" attribute bit, set on ROOT.
pub const ATTR_GROW_FS: u64 = 1 << 59;

/// A USR slot: the partition and, by the same letter, the UKI that boots it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Slot {
    A,
    B,
}

impl Slot {
    pub fn partition(self) -> u32 {
        match self {
            Slot::A => USR_A,
            Slot::B => USR_B,
        }
    }
    pub fn label(self) -> &'static str {
        match self {
            Slot::A => "USR-A",
            Slot::B => "USR-B",
        }
    }
    pub fn letter(self) -> &'static str {
        match self {
            Slot::A => "A",
            Slot::B => "B",
        }
    }
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }
    pub fn parse(s: &str) -> Option<Slot> {
        match s {
            "A" | "a" => Some(Slot::A),
            "B" | "b" => Some(Slot::B),
            _ => None,
        }
    }
}

/// ChromeOS/CoreOS "gptprio" attribute bits of a USR partition: priority
/// (48–51), tries left (52–55) and successful (56). The loader does not read
/// them (systemd-boot counts tries in UKI names); they are the state a new
/// image starts in, set when it is built, and updates do not change them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GptPrio(pub u64);

impl GptPrio {
    const PRIORITY_SHIFT: u64 = 48;
    const TRIES_SHIFT: u64 = 52;
    const SUCCESSFUL: u64 = 1 << 56;

    pub fn priority(self) -> u8 {
        ((self.0 >> Self::PRIORITY_SHIFT) & 0xf) as u8
    }
    pub fn set_priority(&mut self, p: u8) {
        self.0 = (self.0 & !(0xf << Self::PRIORITY_SHIFT)) | (u64::from(p.min(15)) << Self::PRIORITY_SHIFT);
    }
    pub fn tries_left(self) -> u8 {
        ((self.0 >> Self::TRIES_SHIFT) & 0xf) as u8
    }
    pub fn set_tries_left(&mut self, t: u8) {
        self.0 = (self.0 & !(0xf << Self::TRIES_SHIFT)) | (u64::from(t.min(15)) << Self::TRIES_SHIFT);
    }
    pub fn successful(self) -> bool {
        self.0 & Self::SUCCESSFUL != 0
    }
    pub fn set_successful(&mut self, s: bool) {
        if s {
            self.0 |= Self::SUCCESSFUL
        } else {
            self.0 &= !Self::SUCCESSFUL
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sizes {
    pub esp_mib: u64,
    pub bios_boot_mib: u64,
    pub usr_mib: u64,
    pub oem_mib: u64,
    pub root_mib: u64,
}

impl Default for Sizes {
    fn default() -> Self {
        Sizes { esp_mib: 256, bios_boot_mib: 2, usr_mib: 1024, oem_mib: 128, root_mib: 1024 }
    }
}

/// One row of the table: what the builder creates and docs/disk-layout.md lists.
#[derive(Debug, Clone)]
pub struct Row {
    pub number: u32,
    pub label: &'static str,
    pub type_guid: &'static str,
    pub mib: u64,
    pub attributes: u64,
}

pub fn rows(sizes: &Sizes) -> Vec<Row> {
    let mut usr_a = GptPrio(ATTR_READ_ONLY);
    usr_a.set_priority(1);
    usr_a.set_successful(true);
    let usr_b = GptPrio(ATTR_READ_ONLY);
    vec![
        Row { number: ESP, label: LABEL_ESP, type_guid: types::ESP, mib: sizes.esp_mib, attributes: 0 },
        Row { number: BIOS_BOOT, label: LABEL_BIOS_BOOT, type_guid: types::BIOS_BOOT, mib: sizes.bios_boot_mib, attributes: 0 },
        Row { number: USR_A, label: Slot::A.label(), type_guid: types::COREOS_USR, mib: sizes.usr_mib, attributes: usr_a.0 },
        Row { number: USR_B, label: Slot::B.label(), type_guid: types::COREOS_USR, mib: sizes.usr_mib, attributes: usr_b.0 },
        Row { number: OEM, label: LABEL_OEM, type_guid: types::LINUX_DATA, mib: sizes.oem_mib, attributes: 0 },
        Row { number: ROOT, label: LABEL_ROOT, type_guid: types::COREOS_RESIZE, mib: sizes.root_mib, attributes: ATTR_GROW_FS },
    ]
}

/// Total disk size: 1 MiB before the first partition (MBR, GPT, alignment)
/// and 1 MiB after the last (backup GPT).
pub fn disk_bytes(sizes: &Sizes) -> u64 {
    MIB + rows(sizes).iter().map(|r| r.mib * MIB).sum::<u64>() + MIB
}

/// The partition table for an image called `image_name`; all GUIDs are
/// derived from the name so a rebuild gives the same table.
pub fn plan(image_name: &str, sizes: &Sizes) -> Gpt {
    let mut gpt = Gpt::new(Guid::derived(&[image_name, "disk"]), disk_bytes(sizes));
    let mut lba = MIB / SECTOR;
    for r in rows(sizes) {
        let sectors = r.mib * MIB / SECTOR;
        gpt.partitions.push(Partition {
            number: r.number,
            type_guid: r.type_guid.parse().expect("layout type GUIDs are valid"),
            guid: Guid::derived(&[image_name, "partition", r.label]),
            first_lba: lba,
            last_lba: lba + sectors - 1,
            attributes: r.attributes,
            name: r.label.to_string(),
        });
        lba += sectors;
    }
    gpt
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gptprio_bits_are_where_chromeos_puts_them() {
        let mut p = GptPrio(0);
        p.set_priority(2);
        p.set_tries_left(3);
        p.set_successful(true);
        assert_eq!(p.0, 2 << 48 | 3 << 52 | 1 << 56);
        assert_eq!((p.priority(), p.tries_left(), p.successful()), (2, 3, true));
        p.set_tries_left(0);
        p.set_successful(false);
        assert_eq!(p.0, 2 << 48);
        p.set_priority(99);
        assert_eq!(p.priority(), 15);
    }

    #[test]
    fn plan_is_aligned_valid_and_in_coreos_order() {
        let g = plan("basalt", &Sizes::default());
        g.validate().unwrap();
        let numbers: Vec<u32> = g.partitions.iter().map(|p| p.number).collect();
        assert_eq!(numbers, [1, 2, 3, 4, 6, 9]);
        for p in &g.partitions {
            assert_eq!(p.offset_bytes() % MIB, 0, "{} aligned", p.name);
        }
        assert_eq!(g.by_name("USR-A").unwrap().size_bytes(), 1 << 30);
        assert_eq!(g.partitions.last().unwrap().name, "ROOT");
        assert_eq!(g.backup_lba + 1, disk_bytes(&Sizes::default()) / SECTOR);
    }
}
