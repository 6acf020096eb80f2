//! Looking inside a built image from the outside: partitions as files, the
//! ESP's contents, the UKI's command line.

use anyhow::{Context, Result};
use basalt_disk::Gpt;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

pub fn gpt(image: &Path) -> Result<Gpt> {
    Ok(Gpt::read(&mut File::open(image)?)?)
}

/// Copies partition `number` of `image` to `dest` (sparse where zero).
pub fn extract_partition(image: &Path, number: u32, dest: &Path) -> Result<u64> {
    let table = gpt(image)?;
    let p = table.partition(number).with_context(|| format!("no partition {number}"))?;
    let mut src = File::open(image)?;
    let mut out = File::create(dest)?;
    out.set_len(p.size_bytes())?;
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0;
    while done < p.size_bytes() {
        let n = (p.size_bytes() - done).min(buf.len() as u64) as usize;
        src.seek(SeekFrom::Start(p.offset_bytes() + done))?;
        src.read_exact(&mut buf[..n])?;
        if buf[..n].iter().any(|&b| b != 0) {
            out.seek(SeekFrom::Start(done))?;
            out.write_all(&buf[..n])?;
        }
        done += n as u64;
    }
    Ok(p.size_bytes())
}

/// Reads a file from a FAT partition image.
pub fn fat_read(fat_image: &Path, path: &str) -> Result<Vec<u8>> {
    let f = File::open(fat_image)?;
    let fs = fatfs::FileSystem::new(fscommon::BufStream::new(f), fatfs::FsOptions::new())?;
    let mut data = Vec::new();
    fs.root_dir().open_file(path).with_context(|| format!("{path} not in {}", fat_image.display()))?.read_to_end(&mut data)?;
    Ok(data)
}

pub fn fat_list(fat_image: &Path, dir: &str) -> Result<Vec<String>> {
    let f = File::open(fat_image)?;
    let fs = fatfs::FileSystem::new(fscommon::BufStream::new(f), fatfs::FsOptions::new())?;
    let d = fs.root_dir().open_dir(dir)?;
    Ok(d.iter().filter_map(|e| e.ok()).map(|e| e.file_name()).filter(|n| n != "." && n != "..").collect())
}

/// A section of a UKI, as text.
pub fn uki_section(uki: &[u8], name: &str) -> Result<String> {
    let sections = basalt_uki::sections(uki)?;
    let (_, data) = sections.iter().find(|(n, _)| n == name).with_context(|| format!("UKI has no {name}"))?;
    Ok(String::from_utf8_lossy(data).trim_end_matches('\0').to_string())
}

pub fn cmdline_param<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline.split_whitespace().find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}
