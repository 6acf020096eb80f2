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

/// Applies `f` to the ESP of `img` (a FAT32 filesystem in partition 1).
pub fn with_esp(img: &Path, f: impl FnOnce(&fatfs::FileSystem<fscommon::BufStream<PartitionFile>>)) {
    let p = gpt(img).unwrap().partition(1).unwrap().clone();
    let file = std::fs::OpenOptions::new().read(true).write(true).open(img).unwrap();
    let part = PartitionFile { file, start: p.offset_bytes(), len: p.size_bytes(), pos: 0 };
    let fs = fatfs::FileSystem::new(fscommon::BufStream::new(part), fatfs::FsOptions::new()).unwrap();
    f(&fs);
    fs.unmount().unwrap();
}

pub fn uki_names(img: &Path) -> Vec<String> {
    let mut names = Vec::new();
    with_esp(img, |fs| names = fs.root_dir().open_dir("EFI/Linux").unwrap().iter().map(|e| e.unwrap().file_name()).filter(|n| n.ends_with(".efi")).collect());
    names
}

/// Gives the slot-A UKI a boot counter of 3 tries.
pub fn set_counter(img: &Path) {
    with_esp(img, |fs| {
        let dir = fs.root_dir().open_dir("EFI/Linux").unwrap();
        let name = dir.iter().map(|e| e.unwrap().file_name()).find(|n| n.ends_with("_a.efi")).unwrap();
        dir.rename(&name, &dir, &name.replace(".efi", "+3.efi")).unwrap();
    });
}

/// A partition of a disk image as a file of its own, for fatfs.
pub struct PartitionFile {
    file: std::fs::File,
    start: u64,
    len: u64,
    pos: u64,
}

impl Read for PartitionFile {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min((self.len - self.pos) as usize);
        self.file.seek(SeekFrom::Start(self.start + self.pos))?;
        let n = self.file.read(&mut buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for PartitionFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = buf.len().min((self.len - self.pos) as usize);
        self.file.seek(SeekFrom::Start(self.start + self.pos))?;
        let n = self.file.write(&buf[..n])?;
        self.pos += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl Seek for PartitionFile {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        self.pos = match to {
            SeekFrom::Start(p) => p,
            SeekFrom::End(d) => (self.len as i64 + d) as u64,
            SeekFrom::Current(d) => (self.pos as i64 + d) as u64,
        };
        Ok(self.pos)
    }
}
