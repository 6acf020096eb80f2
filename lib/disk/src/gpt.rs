//! GUID Partition Tables (UEFI specification, chapter 5): a protective MBR,
//! the primary header at LBA 1 with 128 entries of 128 bytes from LBA 2, and
//! the backup entries and header at the end of the disk. 512-byte sectors.

use crate::guid::Guid;
use std::io::{self, Read, Seek, SeekFrom, Write};

pub const SECTOR: u64 = 512;
pub const ENTRY_COUNT: u32 = 128;
pub const ENTRY_SIZE: u32 = 128;
/// Sectors taken by the entry array (128 * 128 bytes).
pub const ENTRY_SECTORS: u64 = (ENTRY_COUNT * ENTRY_SIZE) as u64 / SECTOR;
const SIGNATURE: &[u8; 8] = b"EFI PART";
const HEADER_SIZE: u32 = 92;

#[derive(Debug, thiserror::Error)]
pub enum GptError {
    #[error("no GPT: {0}")]
    Missing(String),
    #[error("GPT is corrupt: {0}")]
    Corrupt(String),
    #[error("partition {number} ({name}) does not fit: {why}")]
    DoesNotFit { number: u32, name: String, why: String },
    #[error(transparent)]
    Io(#[from] io::Error),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// 1-based entry number (what Linux calls vda<number>).
    pub number: u32,
    pub type_guid: Guid,
    pub guid: Guid,
    pub first_lba: u64,
    pub last_lba: u64,
    pub attributes: u64,
    pub name: String,
}

impl Partition {
    pub fn size_bytes(&self) -> u64 {
        (self.last_lba + 1 - self.first_lba) * SECTOR
    }
    pub fn offset_bytes(&self) -> u64 {
        self.first_lba * SECTOR
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpt {
    pub disk_guid: Guid,
    /// The LBA of the backup header: the last sector of the disk the table was made for.
    pub backup_lba: u64,
    pub partitions: Vec<Partition>,
}

impl Gpt {
    pub fn new(disk_guid: Guid, disk_bytes: u64) -> Gpt {
        Gpt { disk_guid, backup_lba: disk_bytes / SECTOR - 1, partitions: Vec::new() }
    }

    pub fn first_usable_lba(&self) -> u64 {
        2 + ENTRY_SECTORS
    }

    pub fn last_usable_lba(&self) -> u64 {
        self.backup_lba - ENTRY_SECTORS - 1
    }

    pub fn partition(&self, number: u32) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.number == number)
    }

    pub fn partition_mut(&mut self, number: u32) -> Option<&mut Partition> {
        self.partitions.iter_mut().find(|p| p.number == number)
    }

    pub fn by_name(&self, name: &str) -> Option<&Partition> {
        self.partitions.iter().find(|p| p.name == name)
    }

    /// Checks that every partition lies in the usable area and none overlap.
    pub fn validate(&self) -> Result<(), GptError> {
        let mut sorted: Vec<&Partition> = self.partitions.iter().collect();
        sorted.sort_by_key(|p| p.first_lba);
        let fail = |p: &Partition, why: String| GptError::DoesNotFit { number: p.number, name: p.name.clone(), why };
        for (i, p) in sorted.iter().enumerate() {
            if p.number == 0 || p.number > ENTRY_COUNT {
                return Err(fail(p, format!("entry number must be 1..={ENTRY_COUNT}")));
            }
            if p.first_lba < self.first_usable_lba() || p.last_lba > self.last_usable_lba() || p.last_lba < p.first_lba {
                return Err(fail(p, format!("LBA {}..={} outside usable {}..={}", p.first_lba, p.last_lba, self.first_usable_lba(), self.last_usable_lba())));
            }
            if let Some(next) = sorted.get(i + 1) {
                if next.first_lba <= p.last_lba {
                    return Err(fail(p, format!("overlaps partition {}", next.number)));
                }
            }
            if p.name.encode_utf16().count() > 36 {
                return Err(fail(p, "name longer than 36 UTF-16 units".into()));
            }
            if sorted.iter().filter(|q| q.number == p.number).count() > 1 {
                return Err(fail(p, "entry number used twice".into()));
            }
        }
        Ok(())
    }

    fn entries_bytes(&self) -> Vec<u8> {
        let mut entries = vec![0u8; (ENTRY_COUNT * ENTRY_SIZE) as usize];
        for p in &self.partitions {
            let e = &mut entries[((p.number - 1) * ENTRY_SIZE) as usize..(p.number * ENTRY_SIZE) as usize];
            e[0..16].copy_from_slice(&p.type_guid.0);
            e[16..32].copy_from_slice(&p.guid.0);
            e[32..40].copy_from_slice(&p.first_lba.to_le_bytes());
            e[40..48].copy_from_slice(&p.last_lba.to_le_bytes());
            e[48..56].copy_from_slice(&p.attributes.to_le_bytes());
            for (i, unit) in p.name.encode_utf16().take(36).enumerate() {
                e[56 + 2 * i..58 + 2 * i].copy_from_slice(&unit.to_le_bytes());
            }
        }
        entries
    }

    fn header_bytes(&self, my_lba: u64, alternate_lba: u64, entries_lba: u64, entries_crc: u32) -> Vec<u8> {
        let mut h = vec![0u8; SECTOR as usize];
        h[0..8].copy_from_slice(SIGNATURE);
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&HEADER_SIZE.to_le_bytes());
        h[24..32].copy_from_slice(&my_lba.to_le_bytes());
        h[32..40].copy_from_slice(&alternate_lba.to_le_bytes());
        h[40..48].copy_from_slice(&self.first_usable_lba().to_le_bytes());
        h[48..56].copy_from_slice(&self.last_usable_lba().to_le_bytes());
        h[56..72].copy_from_slice(&self.disk_guid.0);
        h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
        h[80..84].copy_from_slice(&ENTRY_COUNT.to_le_bytes());
        h[84..88].copy_from_slice(&ENTRY_SIZE.to_le_bytes());
        h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
        let crc = crc32fast::hash(&h[..HEADER_SIZE as usize]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h
    }

    fn protective_mbr(&self) -> Vec<u8> {
        let mut mbr = vec![0u8; SECTOR as usize];
        let rec = &mut mbr[446..462];
        rec[1..4].copy_from_slice(&[0x00, 0x02, 0x00]); // CHS of LBA 1
        rec[4] = 0xee;
        rec[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
        rec[8..12].copy_from_slice(&1u32.to_le_bytes());
        rec[12..16].copy_from_slice(&(self.backup_lba.min(u32::MAX as u64) as u32).to_le_bytes());
        mbr[510] = 0x55;
        mbr[511] = 0xaa;
        mbr
    }

    /// Writes protective MBR, primary and backup tables. Touches only the
    /// first 34 and the last 33 sectors; the device must already be
    /// `(backup_lba + 1) * 512` bytes or larger.
    pub fn write<W: Write + Seek>(&self, dev: &mut W) -> Result<(), GptError> {
        self.validate()?;
        let entries = self.entries_bytes();
        let crc = crc32fast::hash(&entries);
        let backup_entries_lba = self.backup_lba - ENTRY_SECTORS;
        dev.seek(SeekFrom::Start(0))?;
        dev.write_all(&self.protective_mbr())?;
        dev.write_all(&self.header_bytes(1, self.backup_lba, 2, crc))?;
        dev.write_all(&entries)?;
        dev.seek(SeekFrom::Start(backup_entries_lba * SECTOR))?;
        dev.write_all(&entries)?;
        dev.write_all(&self.header_bytes(self.backup_lba, 1, backup_entries_lba, crc))?;
        dev.flush()?;
        Ok(())
    }

    /// Reads the primary table, checking signature and both CRCs.
    pub fn read<R: Read + Seek>(dev: &mut R) -> Result<Gpt, GptError> {
        let mut header = vec![0u8; SECTOR as usize];
        dev.seek(SeekFrom::Start(SECTOR))?;
        dev.read_exact(&mut header)?;
        if &header[0..8] != SIGNATURE {
            return Err(GptError::Missing("no 'EFI PART' signature at LBA 1".into()));
        }
        let u32_at = |o: usize| u32::from_le_bytes(header[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(header[o..o + 8].try_into().unwrap());
        let size = u32_at(12);
        if !(HEADER_SIZE..=SECTOR as u32).contains(&size) {
            return Err(GptError::Corrupt(format!("header size {size}")));
        }
        let mut check = header[..size as usize].to_vec();
        check[16..20].fill(0);
        if crc32fast::hash(&check) != u32_at(16) {
            return Err(GptError::Corrupt("primary header CRC mismatch".into()));
        }
        let (count, entry_size) = (u32_at(80), u32_at(84));
        if entry_size != ENTRY_SIZE || count == 0 || count > 1024 {
            return Err(GptError::Corrupt(format!("{count} entries of {entry_size} bytes")));
        }
        let mut entries = vec![0u8; (count * entry_size) as usize];
        dev.seek(SeekFrom::Start(u64_at(72) * SECTOR))?;
        dev.read_exact(&mut entries)?;
        if crc32fast::hash(&entries) != u32_at(88) {
            return Err(GptError::Corrupt("partition entry array CRC mismatch".into()));
        }
        let mut disk_guid = [0u8; 16];
        disk_guid.copy_from_slice(&header[56..72]);
        let mut partitions = Vec::new();
        for (i, e) in entries.chunks(ENTRY_SIZE as usize).enumerate() {
            let type_guid = Guid(e[0..16].try_into().unwrap());
            if type_guid.is_zero() {
                continue;
            }
            let units: Vec<u16> = e[56..128].chunks(2).map(|c| u16::from_le_bytes([c[0], c[1]])).take_while(|&u| u != 0).collect();
            partitions.push(Partition {
                number: i as u32 + 1,
                type_guid,
                guid: Guid(e[16..32].try_into().unwrap()),
                first_lba: u64::from_le_bytes(e[32..40].try_into().unwrap()),
                last_lba: u64::from_le_bytes(e[40..48].try_into().unwrap()),
                attributes: u64::from_le_bytes(e[48..56].try_into().unwrap()),
                name: String::from_utf16_lossy(&units),
            });
        }
        Ok(Gpt { disk_guid: Guid(disk_guid), backup_lba: u64_at(32), partitions })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn sample(disk_bytes: u64) -> Gpt {
        let mut g = Gpt::new(Guid::derived(&["disk"]), disk_bytes);
        g.partitions.push(Partition {
            number: 1,
            type_guid: "c12a7328-f81f-11d2-ba4b-00a0c93ec93b".parse().unwrap(),
            guid: Guid::derived(&["p1"]),
            first_lba: 2048,
            last_lba: 4095,
            attributes: 1 << 60 | 1,
            name: "EFI-SYSTEM".into(),
        });
        g.partitions.push(Partition {
            number: 9,
            type_guid: "0fc63daf-8483-4772-8e79-3d69d8477de4".parse().unwrap(),
            guid: Guid::derived(&["p9"]),
            first_lba: 4096,
            last_lba: 8191,
            attributes: 0,
            name: "ROOT".into(),
        });
        g
    }

    #[test]
    fn round_trips() {
        let size = 8 << 20;
        let g = sample(size);
        let mut disk = Cursor::new(vec![0u8; size as usize]);
        g.write(&mut disk).unwrap();
        assert_eq!(Gpt::read(&mut disk).unwrap(), g);
        assert_eq!(&disk.get_ref()[510..512], &[0x55, 0xaa]);
        let tail = &disk.get_ref()[size as usize - 512..];
        assert_eq!(&tail[0..8], SIGNATURE);
    }

    #[test]
    fn detects_corruption() {
        let size = 8 << 20;
        let mut disk = Cursor::new(vec![0u8; size as usize]);
        sample(size).write(&mut disk).unwrap();
        disk.get_mut()[1024 + 5] ^= 0xff; // inside the entry array
        assert!(matches!(Gpt::read(&mut disk), Err(GptError::Corrupt(_))));
        let mut blank = Cursor::new(vec![0u8; 4096]);
        assert!(matches!(Gpt::read(&mut blank), Err(GptError::Missing(_))));
    }

    #[test]
    fn refuses_overlap_and_overflow() {
        let mut g = sample(8 << 20);
        g.partitions[1].first_lba = 4000;
        assert!(matches!(g.validate(), Err(GptError::DoesNotFit { number: 1, .. })));
        let mut g = sample(8 << 20);
        g.partitions[1].last_lba = 16383;
        assert!(matches!(g.validate(), Err(GptError::DoesNotFit { number: 9, .. })));
    }

    /// sgdisk, the reference implementation, accepts what we write.
    #[test]
    fn sgdisk_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        let size = 8u64 << 20;
        let f = std::fs::File::create(&path).unwrap();
        f.set_len(size).unwrap();
        let mut f = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
        sample(size).write(&mut f).unwrap();
        let out = std::process::Command::new("sgdisk").arg("-v").arg(&path).output().expect("sgdisk (gdisk) not installed; `make deps` installs it");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && text.contains("No problems found"), "{text}");
    }
}
