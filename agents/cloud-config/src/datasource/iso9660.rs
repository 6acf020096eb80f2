//! A small read-only ISO 9660 reader: the volume label, and files by path
//! with Rock Ridge, Joliet or plain names. Enough for NoCloud seeds and
//! config drives, which are made with `genisoimage -r -J` or xorriso.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use super::{DatasourceError, READ_LIMIT};

const SECTOR: u64 = 2048;
const FIRST_DESCRIPTOR: u64 = 16;

/// The label from a primary volume descriptor (sector 16), if it is one.
pub fn volume_label(descriptor: &[u8; 2048]) -> Option<String> {
    (descriptor[0] == 1 && &descriptor[1..6] == b"CD001").then(|| String::from_utf8_lossy(&descriptor[40..72]).trim_end().to_string())
}

#[derive(Debug, Clone)]
struct Entry {
    name: String,
    extent: u32,
    size: u32,
    directory: bool,
}

struct Volume {
    file: File,
    block_size: u64,
    /// The primary tree's root, and the Joliet tree's if there is one.
    primary_root: Entry,
    joliet_root: Option<Entry>,
}

fn record(bytes: &[u8], joliet: bool) -> Option<Entry> {
    let length = *bytes.first()? as usize;
    if length < 34 || bytes.len() < length {
        return None;
    }
    let extent = u32::from_le_bytes(bytes[2..6].try_into().ok()?);
    let size = u32::from_le_bytes(bytes[10..14].try_into().ok()?);
    let directory = bytes[25] & 0x02 != 0;
    let name_length = bytes[32] as usize;
    let raw_name = bytes.get(33..33 + name_length)?;
    let mut name = if name_length == 1 && raw_name[0] <= 1 {
        // "." and "..": never looked up by name.
        String::from(if raw_name[0] == 0 { "." } else { ".." })
    } else if joliet {
        let units: Vec<u16> = raw_name.chunks_exact(2).map(|pair| u16::from_be_bytes([pair[0], pair[1]])).collect();
        String::from_utf16_lossy(&units)
    } else {
        String::from_utf8_lossy(raw_name).into_owned()
    };
    if !joliet {
        // Rock Ridge: an NM entry in the system use area holds the real name.
        let mut offset = 33 + name_length + (1 - name_length % 2);
        let mut rock_ridge_name = String::new();
        while offset + 4 <= length {
            let signature = &bytes[offset..offset + 2];
            let entry_length = bytes[offset + 2] as usize;
            if entry_length < 4 || offset + entry_length > length {
                break;
            }
            if signature == b"NM" && entry_length >= 5 {
                rock_ridge_name.push_str(&String::from_utf8_lossy(&bytes[offset + 5..offset + entry_length]));
            }
            offset += entry_length;
        }
        if !rock_ridge_name.is_empty() {
            return Some(Entry { name: rock_ridge_name, extent, size, directory });
        }
    }
    if !directory {
        // Plain and Joliet names carry a version (`;1`) and maybe a bare dot.
        if let Some(stripped) = name.rsplit_once(';').map(|(base, _)| base.to_string()) {
            name = stripped;
        }
        if let Some(stripped) = name.strip_suffix('.') {
            name = stripped.to_string();
        }
    }
    Some(Entry { name, extent, size, directory })
}

impl Volume {
    fn open(device: &Path) -> Result<Volume, DatasourceError> {
        let io = |source| DatasourceError::Io { path: device.into(), source };
        let bad = |message: &str| DatasourceError::Filesystem { device: device.into(), message: message.to_string() };
        let mut file = File::open(device).map_err(io)?;
        let mut primary = None;
        let mut joliet = None;
        let mut block_size = SECTOR;
        for index in FIRST_DESCRIPTOR..FIRST_DESCRIPTOR + 32 {
            let mut descriptor = [0u8; 2048];
            file.seek(SeekFrom::Start(index * SECTOR)).map_err(io)?;
            file.read_exact(&mut descriptor).map_err(io)?;
            if &descriptor[1..6] != b"CD001" {
                return Err(bad("not an iso9660 filesystem"));
            }
            match descriptor[0] {
                1 => {
                    block_size = u16::from_le_bytes([descriptor[128], descriptor[129]]).max(512) as u64;
                    primary = record(&descriptor[156..190], false);
                }
                2 if matches!(&descriptor[88..91], b"%/@" | b"%/C" | b"%/E") => joliet = record(&descriptor[156..190], true),
                255 => break,
                _ => {}
            }
        }
        let primary_root = primary.ok_or_else(|| bad("iso9660 without a primary volume descriptor"))?;
        Ok(Volume { file, block_size, primary_root, joliet_root: joliet })
    }

    fn list(&mut self, directory: &Entry, joliet: bool) -> std::io::Result<Vec<Entry>> {
        let size = (directory.size as usize).min(READ_LIMIT);
        let mut bytes = vec![0u8; size];
        self.file.seek(SeekFrom::Start(directory.extent as u64 * self.block_size))?;
        self.file.read_exact(&mut bytes)?;
        let mut entries = Vec::new();
        let mut offset = 0;
        while offset < bytes.len() {
            let length = bytes[offset] as usize;
            if length == 0 {
                // Records never cross a sector; the rest of this one is padding.
                offset = (offset / SECTOR as usize + 1) * SECTOR as usize;
                continue;
            }
            if let Some(entry) = record(&bytes[offset..(offset + length).min(bytes.len())], joliet) {
                entries.push(entry);
            }
            offset += length;
        }
        Ok(entries)
    }

    fn lookup(&mut self, path: &str, joliet: bool) -> std::io::Result<Option<Entry>> {
        let Some(mut current) = (if joliet { self.joliet_root.clone() } else { Some(self.primary_root.clone()) }) else {
            return Ok(None);
        };
        for component in path.split('/').filter(|c| !c.is_empty()) {
            if !current.directory {
                return Ok(None);
            }
            let entries = self.list(&current, joliet)?;
            let found = entries.iter().find(|entry| entry.name == component).or_else(|| {
                // Plain ISO names are upper case.
                entries.iter().find(|entry| entry.name.eq_ignore_ascii_case(component))
            });
            match found {
                Some(entry) => current = entry.clone(),
                None => return Ok(None),
            }
        }
        Ok(Some(current))
    }
}

/// The bytes of `path`, or `None` if the filesystem has no such file.
pub fn read_file(device: &Path, path: &str) -> Result<Option<Vec<u8>>, DatasourceError> {
    let io = |source| DatasourceError::Io { path: device.into(), source };
    let mut volume = Volume::open(device)?;
    let mut entry = volume.lookup(path, false).map_err(io)?;
    if entry.as_ref().is_none_or(|e| e.directory) {
        entry = volume.lookup(path, true).map_err(io)?;
    }
    let Some(entry) = entry.filter(|entry| !entry.directory) else { return Ok(None) };
    if entry.size as usize > READ_LIMIT {
        return Err(DatasourceError::TooLarge { what: format!("{}:{path}", device.display()) });
    }
    let mut bytes = vec![0u8; entry.size as usize];
    volume.file.seek(SeekFrom::Start(entry.extent as u64 * volume.block_size)).map_err(io)?;
    volume.file.read_exact(&mut bytes).map_err(io)?;
    Ok(Some(bytes))
}

#[cfg(test)]
mod tests {
    use super::super::testenv::Scratch;
    use super::*;

    const FILES: &[(&str, &[u8])] = &[("user-data", b"#cloud-config\nhostname: from-iso\n"), ("meta-data", b"instance-id: iid-iso\n"), ("openstack/latest/user_data", b"#!/bin/sh\n")];

    #[test]
    fn rock_ridge_and_joliet_names_are_found() {
        let scratch = Scratch::new();
        for extensions in [&["-r", "-J"][..], &["-r"], &["-J"]] {
            let image = scratch.iso("cidata", FILES, extensions);
            assert_eq!(read_file(&image, "user-data").unwrap().unwrap(), FILES[0].1, "{extensions:?}");
            assert_eq!(read_file(&image, "/meta-data").unwrap().unwrap(), FILES[1].1, "{extensions:?}");
            assert_eq!(read_file(&image, "openstack/latest/user_data").unwrap().unwrap(), FILES[2].1, "{extensions:?}");
            assert_eq!(read_file(&image, "missing").unwrap(), None);
            assert_eq!(read_file(&image, "openstack").unwrap(), None, "directories are not files");
        }
    }

    #[test]
    fn a_larger_file_spanning_sectors_reads_whole() {
        let scratch = Scratch::new();
        let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let image = scratch.iso("cidata", &[("user-data", &big)], &["-r", "-J"]);
        assert_eq!(read_file(&image, "user-data").unwrap().unwrap(), big);
    }
}
