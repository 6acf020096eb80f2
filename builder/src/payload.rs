//! `basalt payload`: a built image → an update payload (the format lives in
//! basalt_repo::payload). What a slot needs is read back from the image
//! itself, never rebuilt:
//!
//! - the usr slot image: the first `hash_offset + hash area` bytes of USR-A
//!   (squashfs, then the verity superblock and tree), checked against the
//!   root hash the UKI's command line names;
//! - the UKI for slot A, as the ESP holds it;
//! - the UKI for slot B: the same UKI with `basalt.slot=B` and USR-B's
//!   partition GUID on its command line, a same-length edit in place.
//!
//! With `--from OLD` the payload is a delta against what a machine running
//! OLD has at hand: its usr slot image and its UKI's kernel and initramfs.

use crate::flash::PartitionIo;
use anyhow::{bail, ensure, Context, Result};
use basalt_disk::layout::{self, Slot};
use basalt_disk::{Gpt, Partition};
use basalt_repo::payload::{self, Contents, Reference};
use std::fs::File;
use std::io::{BufWriter, Cursor, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// zstd level of payloads, chosen by measurement on the default image
/// (docs/updates.md): its parts are compressed already, so levels above 9
/// gain almost nothing for many times the time, and at 19 deltas lose their
/// long matches into the reference and grow 50-fold.
pub const DEFAULT_LEVEL: i32 = 9;

/// What an update needs from one built image.
pub struct SlotParts {
    pub name: String,
    pub version: String,
    /// USR-A up to the end of its verity tree.
    pub usr: Vec<u8>,
    pub hash_offset: u64,
    pub root_hash: String,
    pub uki_a_name: String,
    pub uki_a: Vec<u8>,
    pub uki_b: Vec<u8>,
}

impl SlotParts {
    pub fn section(&self, name: &str) -> Result<&[u8]> {
        let secs = basalt_uki::sections(&self.uki_a)?;
        secs.into_iter().find(|(n, _)| n == name).map(|(_, d)| d).with_context(|| format!("{}: the UKI has no {name} section", self.uki_a_name))
    }
}

pub fn cmdline_param<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline.split_whitespace().find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

/// `KEY=value` of an os-release file, unquoted.
fn osrel_value(osrel: &str, key: &str) -> Option<String> {
    osrel.lines().find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('='))).map(|v| v.trim().trim_matches('"').to_string())
}

/// A UKI file name in EFI/Linux is slot A's when, without `.efi` and the
/// boot counter (`+3`, `+2-1`), it ends in `_a`.
fn is_slot_a_uki(file: &str) -> bool {
    file.strip_suffix(".efi").map(|s| s.split('+').next().unwrap_or(s)).is_some_and(|s| s.ends_with("_a"))
}

fn partition<'a>(gpt: &'a Gpt, number: u32, what: &str, image: &Path) -> Result<&'a Partition> {
    gpt.partition(number).with_context(|| format!("{}: no partition {number} ({what}); is this a basalt image?", image.display()))
}

/// The command line of slot B's UKI: slot A's with the slot and its /usr
/// partition changed, every other word as it was.
pub fn slot_b_cmdline(cmdline_a: &str, usr_b: &basalt_disk::Guid) -> Result<String> {
    let (mut slot, mut usr) = (0, 0);
    let words: Vec<String> = cmdline_a
        .split(' ')
        .map(|w| {
            if w == "basalt.slot=A" {
                slot += 1;
                "basalt.slot=B".to_string()
            } else if w.starts_with("basalt.usr=") {
                usr += 1;
                format!("basalt.usr=PARTUUID={usr_b}")
            } else {
                w.to_string()
            }
        })
        .collect();
    ensure!(slot == 1 && usr == 1, "the UKI's command line must have basalt.slot=A and basalt.usr= once each: {cmdline_a:?}");
    Ok(words.join(" "))
}

/// The ESP's one UKI for slot A, (file name, bytes); `esp` is the ESP's
/// filesystem as a file of its own, `image` names the image in errors.
pub fn read_uki_a<T: Read + Write + std::io::Seek>(esp: T, image: &str) -> Result<(String, Vec<u8>)> {
    let fs = fatfs::FileSystem::new(fscommon::BufStream::new(esp), fatfs::FsOptions::new()).with_context(|| format!("{image}: the ESP is not a FAT filesystem"))?;
    let dir = fs.root_dir().open_dir("EFI/Linux").with_context(|| format!("{image}: the ESP has no EFI/Linux"))?;
    let names: Vec<String> = dir.iter().filter_map(|e| e.ok()).map(|e| e.file_name()).filter(|n| is_slot_a_uki(n)).collect();
    let uki_a_name = match names.as_slice() {
        [one] => one.clone(),
        [] => bail!("{image}: no UKI for slot A (EFI/Linux/*_a.efi) on the ESP"),
        many => bail!("{image}: more than one UKI for slot A on the ESP ({}); use a freshly built image", many.join(", ")),
    };
    let mut uki_a = Vec::new();
    dir.open_file(&uki_a_name)?.read_to_end(&mut uki_a).with_context(|| format!("reading EFI/Linux/{uki_a_name}"))?;
    Ok((uki_a_name, uki_a))
}

/// A UKI section as text, NUL padding dropped.
pub fn section_text(uki: &[u8], name: &str, file: &str) -> Result<String> {
    let secs = basalt_uki::sections(uki).with_context(|| format!("{file} is not a UKI"))?;
    let (_, data) = secs.iter().find(|(n, _)| n == name).with_context(|| format!("{file}: the UKI has no {name} section"))?;
    Ok(std::str::from_utf8(data).with_context(|| format!("{file}: {name} is not UTF-8"))?.trim_end_matches('\0').to_string())
}

/// Reads what an update needs from a raw image built by `basalt build`.
pub fn read_image(image: &Path) -> Result<SlotParts> {
    let file = File::open(image).with_context(|| format!("opening {}", image.display()))?;
    let gpt = Gpt::read(&mut &file).with_context(|| format!("{}: reading the partition table (a raw image is needed, not qcow2/vmdk)", image.display()))?;
    let esp = partition(&gpt, layout::ESP, "EFI system partition", image)?;
    let usr_a = partition(&gpt, Slot::A.partition(), "USR-A", image)?;
    let usr_b = partition(&gpt, Slot::B.partition(), "USR-B", image)?;

    // The ESP's one UKI for slot A.
    let io = PartitionIo { file: &file, start: esp.offset_bytes(), len: esp.size_bytes(), pos: 0 };
    let (uki_a_name, uki_a) = read_uki_a(io, &image.display().to_string())?;

    // Name and version from .osrel, slot and verity from .cmdline.
    let osrel = section_text(&uki_a, ".osrel", &uki_a_name)?;
    let name = osrel_value(&osrel, "IMAGE_ID").with_context(|| format!("{uki_a_name}: .osrel has no IMAGE_ID"))?;
    let version = osrel_value(&osrel, "IMAGE_VERSION").with_context(|| format!("{uki_a_name}: .osrel has no IMAGE_VERSION"))?;
    basalt_repo::version::Version::parse(&version).map_err(|e| anyhow::anyhow!("{uki_a_name}: IMAGE_VERSION: {e}"))?;
    ensure!(uki_a_name.starts_with(&format!("{name}_{version}_a")), "{uki_a_name}: its .osrel says {name} {version}, its file name says otherwise");
    let cmdline = section_text(&uki_a, ".cmdline", &uki_a_name)?;
    let param = |key: &str| cmdline_param(&cmdline, key).with_context(|| format!("{uki_a_name}: the command line has no {key}= ({cmdline:?})"));
    ensure!(param("basalt.slot")? == "A", "{uki_a_name}: the command line says basalt.slot={}, expected A", param("basalt.slot")?);
    let want_usr = format!("PARTUUID={}", usr_a.guid);
    ensure!(param("basalt.usr")?.eq_ignore_ascii_case(&want_usr), "{uki_a_name}: basalt.usr={} is not USR-A of this image ({want_usr})", param("basalt.usr")?);
    let blocks: u64 = param("basalt.usr_blocks")?.parse().with_context(|| format!("{uki_a_name}: basalt.usr_blocks is not a number"))?;
    let root_hash = param("basalt.usr_hash")?.to_string();
    let root: [u8; 32] = basalt_verity::parse_hex(&root_hash).and_then(|v| v.try_into().ok()).with_context(|| format!("{uki_a_name}: basalt.usr_hash is not 64 hex digits"))?;
    let salt = param("basalt.usr_salt")?;

    // The usr slot image, checked against the root hash.
    let hash_offset = blocks.checked_mul(basalt_verity::BLOCK_SIZE).context("basalt.usr_blocks is too large")?;
    let usr_bytes = hash_offset + basalt_verity::BLOCK_SIZE * (1 + basalt_verity::tree_blocks(blocks));
    ensure!(blocks > 0 && usr_bytes <= usr_a.size_bytes(), "{}: basalt.usr_blocks={blocks} needs {usr_bytes} bytes, USR-A holds {}", image.display(), usr_a.size_bytes());
    let mut usr = vec![0u8; usr_bytes as usize];
    file.read_exact_at(&mut usr, usr_a.offset_bytes()).with_context(|| format!("{}: reading USR-A", image.display()))?;
    let params = basalt_verity::verify(&mut Cursor::new(&usr), hash_offset, &root).with_context(|| format!("{}: USR-A does not match its UKI's verity root hash", image.display()))?;
    ensure!(
        params.data_blocks == blocks && params.salt_hex() == salt,
        "{}: the verity superblock ({} blocks, salt {}) disagrees with the command line ({blocks} blocks, salt {salt})",
        image.display(),
        params.data_blocks,
        params.salt_hex()
    );

    // Slot B's UKI.
    let mut uki_b = uki_a.clone();
    basalt_uki::replace_section(&mut uki_b, ".cmdline", slot_b_cmdline(&cmdline, &usr_b.guid)?.as_bytes()).with_context(|| format!("{uki_a_name}: making slot B's UKI"))?;

    Ok(SlotParts { name, version, usr, hash_offset, root_hash, uki_a_name, uki_a, uki_b })
}

pub struct PayloadOptions {
    pub image: PathBuf,
    pub output: Option<PathBuf>,
    pub from: Option<PathBuf>,
    pub level: i32,
}

pub struct PayloadReport {
    pub output: PathBuf,
    pub name: String,
    pub version: String,
    pub from_version: Option<String>,
    pub usr_bytes: u64,
    pub uki_bytes: u64,
    pub payload_bytes: u64,
    pub sha256: String,
    pub seconds: f64,
}

pub fn default_file_name(name: &str, version: &str, from: Option<&str>) -> String {
    match from {
        Some(old) => format!("{name}-{old}-to-{version}.delta"),
        None => format!("{name}-{version}.payload"),
    }
}

pub fn make(opts: &PayloadOptions) -> Result<PayloadReport> {
    let started = Instant::now();
    ensure!((1..=22).contains(&opts.level), "--level {} is not a zstd level (1-22)", opts.level);
    let new = read_image(&opts.image)?;
    let old = opts.from.as_deref().map(read_image).transpose()?;
    if let Some(old) = &old {
        ensure!(old.name == new.name, "--from image is {:?}, this image is {:?}: a delta is between versions of one image", old.name, new.name);
        let (o, n) = (basalt_repo::version::Version::parse(&old.version).unwrap(), basalt_repo::version::Version::parse(&new.version).unwrap());
        ensure!(o < n, "--from image is version {}, not older than {}: a delta goes from an older version to a newer one", old.version, new.version);
    }
    let output = match &opts.output {
        Some(o) => o.clone(),
        None => opts.image.parent().unwrap_or(Path::new(".")).join(default_file_name(&new.name, &new.version, old.as_ref().map(|o| o.version.as_str()))),
    };
    let reference = match &old {
        Some(o) => Some(Reference { version: &o.version, usr: &o.usr, kernel: o.section(".linux")?, initrd: o.section(".initrd")? }),
        None => None,
    };
    let contents = Contents { name: &new.name, version: &new.version, usr: &new.usr, hash_offset: new.hash_offset, root_hash: &new.root_hash, uki_a: &new.uki_a, uki_b: &new.uki_b };

    // Written next to OUT and renamed: OUT is complete or absent.
    let dir = output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new().prefix(".basalt-payload-").tempfile_in(dir).with_context(|| format!("creating a file in {}", dir.display()))?;
    {
        let mut w = BufWriter::with_capacity(1 << 20, tmp.as_file_mut());
        payload::write(&mut w, &contents, reference.as_ref(), opts.level).context("compressing the payload")?;
        w.flush()?;
    }
    tmp.as_file().sync_all()?;
    let payload_bytes = tmp.as_file().metadata()?.len();
    tmp.persist(&output).with_context(|| format!("writing {}", output.display()))?;
    crate::formats::write_sha256_file(&output)?;
    let sha256 = crate::inputs::sha256_file(&output)?;
    Ok(PayloadReport {
        output,
        name: new.name.clone(),
        version: new.version.clone(),
        from_version: old.map(|o| o.version),
        usr_bytes: new.usr.len() as u64,
        uki_bytes: new.uki_a.len() as u64,
        payload_bytes,
        sha256,
        seconds: started.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_b_command_line_changes_two_words_and_keeps_the_length() {
        let a: basalt_disk::Guid = "11111111-2222-3333-4444-555555555555".parse().unwrap();
        let b: basalt_disk::Guid = "66666666-7777-8888-9999-aaaaaaaaaaaa".parse().unwrap();
        let line = format!("basalt.slot=A basalt.usr=PARTUUID={a} basalt.usr_hash=ab console=ttyS0,115200");
        let out = slot_b_cmdline(&line, &b).unwrap();
        assert_eq!(out, format!("basalt.slot=B basalt.usr=PARTUUID={b} basalt.usr_hash=ab console=ttyS0,115200"));
        assert_eq!(out.len(), line.len());
        assert!(slot_b_cmdline("basalt.slot=B basalt.usr=x", &b).unwrap_err().to_string().contains("basalt.slot=A"));
        assert!(slot_b_cmdline("basalt.slot=A", &b).is_err());
    }

    #[test]
    fn slot_a_ukis_are_found_with_or_without_a_boot_counter() {
        for n in ["basalt_0.1.0_a.efi", "basalt_0.1.0_a+3.efi", "basalt_0.1.0_a+2-1.efi"] {
            assert!(is_slot_a_uki(n), "{n}");
        }
        for n in ["basalt_0.1.0_b.efi", "basalt_0.1.0_b+3.efi", "basalt_0.1.0_a.conf", "a.efi"] {
            assert!(!is_slot_a_uki(n), "{n}");
        }
    }

    #[test]
    fn os_release_values_are_unquoted() {
        let o = "NAME=basalt\nIMAGE_ID=basalt\nIMAGE_VERSION=\"0.2.0\"\n";
        assert_eq!(osrel_value(o, "IMAGE_ID").as_deref(), Some("basalt"));
        assert_eq!(osrel_value(o, "IMAGE_VERSION").as_deref(), Some("0.2.0"));
        assert_eq!(osrel_value(o, "VERSION_ID"), None);
    }
}
