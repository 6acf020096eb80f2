//! Repairs two things fatfs 0.3 (the current release) gets wrong when it
//! creates directories, so that dosfstools' fsck.fat accepts our FAT32:
//! it precedes the `.` and `..` entries with long-name entries (they must be
//! the first two plain entries of a directory), and gives `..` the root's
//! cluster number where the specification says 0. It also fills in FSInfo's
//! free-cluster count, which fatfs leaves "unknown".

use anyhow::{bail, Result};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

const ENTRY: usize = 32;
const ATTR_LFN: u8 = 0x0f;
const ATTR_DIR: u8 = 0x10;

struct Geometry {
    cluster_bytes: usize,
    data_start: u64,
    fat_start: u64,
    fat_bytes: u64,
    root_cluster: u32,
    fsinfo_sector: u64,
    bytes_per_sector: u64,
    clusters: u32,
}

fn geometry(boot: &[u8]) -> Result<Geometry> {
    let u16_at = |o: usize| u16::from_le_bytes([boot[o], boot[o + 1]]) as u64;
    let u32_at = |o: usize| u32::from_le_bytes(boot[o..o + 4].try_into().unwrap()) as u64;
    let bps = u16_at(11);
    let spc = boot[13] as u64;
    let reserved = u16_at(14);
    let fats = boot[16] as u64;
    let fat_sectors = u32_at(36);
    let total = u32_at(32);
    if bps == 0 || spc == 0 || fat_sectors == 0 || boot[510..512] != [0x55, 0xaa] {
        bail!("not a FAT32 boot sector");
    }
    let data_start = (reserved + fats * fat_sectors) * bps;
    Ok(Geometry {
        cluster_bytes: (bps * spc) as usize,
        data_start,
        fat_start: reserved * bps,
        fat_bytes: fat_sectors * bps,
        root_cluster: u32_at(44) as u32,
        fsinfo_sector: u16_at(48),
        bytes_per_sector: bps,
        clusters: ((total * bps - data_start) / (bps * spc)) as u32,
    })
}

fn cluster_offset(g: &Geometry, cluster: u32) -> u64 {
    g.data_start + (cluster as u64 - 2) * g.cluster_bytes as u64
}

fn entry_cluster(e: &[u8]) -> u32 {
    (u16::from_le_bytes([e[20], e[21]]) as u32) << 16 | u16::from_le_bytes([e[26], e[27]]) as u32
}

fn set_entry_cluster(e: &mut [u8], c: u32) {
    e[20..22].copy_from_slice(&((c >> 16) as u16).to_le_bytes());
    e[26..28].copy_from_slice(&(c as u16).to_le_bytes());
}

pub fn fix(path: &Path) -> Result<()> {
    let mut f = File::options().read(true).write(true).open(path)?;
    let mut boot = vec![0u8; 512];
    f.read_exact(&mut boot)?;
    let g = geometry(&boot)?;
    // Walk directories from the root; fix each one's first cluster in place.
    let mut stack = vec![g.root_cluster];
    while let Some(cluster) = stack.pop() {
        let mut buf = vec![0u8; g.cluster_bytes];
        f.seek(SeekFrom::Start(cluster_offset(&g, cluster)))?;
        f.read_exact(&mut buf)?;
        let mut kept: Vec<Vec<u8>> = Vec::new();
        let mut pending_lfn: Vec<Vec<u8>> = Vec::new();
        for e in buf.chunks(ENTRY) {
            if e[0] == 0 {
                break;
            }
            if e[11] == ATTR_LFN {
                pending_lfn.push(e.to_vec());
                continue;
            }
            let name = &e[0..11];
            let dot = name == b".          ";
            let dotdot = name == b"..         ";
            let mut e = e.to_vec();
            if dot || dotdot {
                pending_lfn.clear(); // no long names for the dot entries
                                     // `..` of a directory in the root says 0, not the root's cluster.
                if dotdot && entry_cluster(&e) == g.root_cluster {
                    set_entry_cluster(&mut e, 0);
                }
            } else {
                kept.append(&mut pending_lfn);
                if e[0] != 0xe5 && e[11] & ATTR_DIR != 0 {
                    stack.push(entry_cluster(&e));
                }
            }
            kept.push(e);
        }
        let mut out = kept.concat();
        out.resize(g.cluster_bytes, 0);
        if out != buf {
            f.seek(SeekFrom::Start(cluster_offset(&g, cluster)))?;
            f.write_all(&out)?;
        }
    }
    write_free_count(&mut f, &g)?;
    Ok(())
}

fn write_free_count(f: &mut File, g: &Geometry) -> Result<()> {
    let mut fat = vec![0u8; g.fat_bytes as usize];
    f.seek(SeekFrom::Start(g.fat_start))?;
    f.read_exact(&mut fat)?;
    let used = |c: u32| u32::from_le_bytes(fat[c as usize * 4..c as usize * 4 + 4].try_into().unwrap()) & 0x0fff_ffff != 0;
    let free = (2..g.clusters + 2).filter(|&c| !used(c)).count() as u32;
    let next = (2..g.clusters + 2).find(|&c| !used(c)).unwrap_or(0xffff_ffff);
    let at = g.fsinfo_sector * g.bytes_per_sector;
    f.seek(SeekFrom::Start(at + 488))?;
    f.write_all(&free.to_le_bytes())?;
    f.write_all(&next.to_le_bytes())?;
    Ok(())
}
