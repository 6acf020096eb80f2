//! Output formats: one raw GPT disk, shipped as whatever the target platform
//! imports. One enum, one table (`OutputFormat::recipe`); the raw image is
//! always built first and every other format is made from it.
//!
//! qcow2, vmdk and vhd are written by `qemu-img convert` (Debian's
//! qemu-utils), the reference implementation of those containers; the
//! reasons are in docs/formats.md. Compressed raw is zstd, written in process.

use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// The raw GPT disk (for `basalt flash`, `dd`, `basalt publish aws`).
    Raw,
    /// Raw, zstd-compressed: the download format (`basalt flash` reads it).
    RawZst,
    /// QEMU, OpenStack, libvirt.
    Qcow2,
    /// Stream-optimized VMDK: VMware (OVF/OVA) and AWS VM Import.
    Vmdk,
    /// Fixed VHD: Azure, Hyper-V, AWS VM Import.
    Vhd,
}

/// How a format is made from the raw image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writer {
    Copy,
    Zstd,
    /// `qemu-img convert -O <driver> -o <options>`.
    QemuImg {
        driver: &'static str,
        options: &'static str,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Recipe {
    /// The name on the command line (`--format`).
    pub name: &'static str,
    /// What `--help` says about it.
    pub help: &'static str,
    /// File name extension, without the dot.
    pub extension: &'static str,
    pub writer: Writer,
    /// The name QEMU gives the format (`-drive format=`, `qemu-img -f`);
    /// none for compressed raw, which QEMU cannot open.
    pub qemu_driver: Option<&'static str>,
}

impl OutputFormat {
    pub const ALL: [OutputFormat; 5] = [OutputFormat::Raw, OutputFormat::RawZst, OutputFormat::Qcow2, OutputFormat::Vmdk, OutputFormat::Vhd];

    pub fn recipe(self) -> Recipe {
        use OutputFormat::*;
        match self {
            Raw => Recipe { name: "raw", help: "raw GPT disk (flash, dd, publish aws)", extension: "img", writer: Writer::Copy, qemu_driver: Some("raw") },
            RawZst => Recipe { name: "raw.zst", help: "raw, zstd-compressed, for download (flash reads it)", extension: "img.zst", writer: Writer::Zstd, qemu_driver: None },
            // compat=1.1 (qcow2 v3) is what every QEMU since 1.1 and OpenStack read.
            Qcow2 => Recipe { name: "qcow2", help: "QEMU, OpenStack, libvirt", extension: "qcow2", writer: Writer::QemuImg { driver: "qcow2", options: "compat=1.1" }, qemu_driver: Some("qcow2") },
            // streamOptimized: compressed grains, the only VMDK subformat that
            // VMware's OVF import and AWS VM Import accept.
            Vmdk => Recipe {
                name: "vmdk",
                help: "stream-optimized VMDK: VMware OVF, AWS VM Import",
                extension: "vmdk",
                writer: Writer::QemuImg { driver: "vmdk", options: "subformat=streamOptimized" },
                qemu_driver: Some("vmdk"),
            },
            // fixed: raw data plus a 512-byte footer, what Azure requires.
            // force_size: keep the exact virtual size instead of rounding it to
            // a CHS geometry; Azure refuses sizes that are not whole MiB.
            Vhd => Recipe {
                name: "vhd",
                help: "fixed VHD: Azure, Hyper-V, AWS VM Import",
                extension: "vhd",
                writer: Writer::QemuImg { driver: "vpc", options: "subformat=fixed,force_size=on" },
                qemu_driver: Some("vpc"),
            },
        }
    }

    pub fn name(self) -> &'static str {
        self.recipe().name
    }

    /// `out/basalt.img` → `out/basalt.<extension>`.
    pub fn output_path(self, raw: &Path) -> PathBuf {
        let name = raw.file_name().and_then(|n| n.to_str()).unwrap_or("basalt.img");
        let stem = name.strip_suffix(".img").unwrap_or(name);
        raw.with_file_name(format!("{stem}.{}", self.recipe().extension))
    }
}

/// `--format` values, names and help come from the recipe table.
impl clap::ValueEnum for OutputFormat {
    fn value_variants<'a>() -> &'a [Self] {
        &Self::ALL
    }
    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        let r = self.recipe();
        Some(clap::builder::PossibleValue::new(r.name).help(r.help))
    }
}

/// Writes `raw` (a raw disk image) as `format` to `output`. The output
/// appears only when complete; a failure leaves nothing behind.
pub fn convert(raw: &Path, format: OutputFormat, output: &Path) -> Result<()> {
    check_raw_disk(raw)?;
    let dir = output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = tempfile::Builder::new().prefix(".basalt-convert-").tempfile_in(dir)?;
    match format.recipe().writer {
        Writer::Copy => {
            // cp keeps the holes of a sparse image.
            run(Command::new("cp").arg("--sparse=always").arg(raw).arg(tmp.path()), "cp (coreutils)")?;
        }
        Writer::Zstd => zstd_compress(raw, tmp.as_file())?,
        Writer::QemuImg { driver, options } => {
            run(Command::new("qemu-img").args(["convert", "-q", "-f", "raw", "-O", driver, "-o", options]).arg(raw).arg(tmp.path()), "qemu-img (install qemu-utils)")?;
        }
    }
    tmp.as_file().sync_all()?;
    // tempfile creates 0600; an image is as readable as any build output.
    std::fs::set_permissions(tmp.path(), std::os::unix::fs::PermissionsExt::from_mode(0o644))?;
    tmp.persist(output).with_context(|| format!("moving the image to {}", output.display()))?;
    Ok(())
}

/// The input of a conversion must be a raw disk with a valid GPT, not
/// already a container format.
fn check_raw_disk(raw: &Path) -> Result<()> {
    let mut f = File::open(raw).with_context(|| format!("opening {}", raw.display()))?;
    basalt_disk::Gpt::read(&mut f).with_context(|| format!("{} is not a raw basalt disk image (convert takes the raw .img that `basalt build` writes)", raw.display()))?;
    Ok(())
}

fn run(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!("{what} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// zstd with the frame's content size set, so `basalt flash` learns the
/// image size from the header and can refuse a too-small target up front.
pub fn zstd_compress(raw: &Path, out: &File) -> Result<()> {
    let mut src = File::open(raw)?;
    let len = src.metadata()?.len();
    let mut enc = zstd::stream::write::Encoder::new(std::io::BufWriter::with_capacity(1 << 20, out), 10)?;
    enc.include_contentsize(true)?;
    enc.set_pledged_src_size(Some(len))?;
    let threads = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1);
    enc.multithread(threads)?;
    let copied = std::io::copy(&mut src, &mut enc)?;
    if copied != len {
        bail!("{} changed size while compressing", raw.display());
    }
    enc.finish()?.flush()?;
    Ok(())
}

pub fn write_sha256_file(image: &Path) -> Result<PathBuf> {
    let sum = crate::inputs::sha256_file(image)?;
    let name = image.file_name().and_then(|n| n.to_str()).context("image path has no file name")?;
    let path = sha256_path(image);
    std::fs::write(&path, format!("{sum}  {name}\n")).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

pub fn sha256_path(image: &Path) -> PathBuf {
    let mut s = image.as_os_str().to_owned();
    s.push(".sha256");
    PathBuf::from(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_format_has_a_distinct_extension_and_name() {
        let mut exts: Vec<_> = OutputFormat::ALL.iter().map(|f| f.recipe().extension).collect();
        exts.sort();
        exts.dedup();
        assert_eq!(exts.len(), OutputFormat::ALL.len());
        let names: Vec<_> = OutputFormat::ALL.iter().map(|f| f.name()).collect();
        assert_eq!(names, ["raw", "raw.zst", "qcow2", "vmdk", "vhd"]);
    }

    #[test]
    fn output_paths_replace_the_img_extension() {
        let raw = Path::new("out/basalt.img");
        assert_eq!(OutputFormat::Raw.output_path(raw), Path::new("out/basalt.img"));
        assert_eq!(OutputFormat::RawZst.output_path(raw), Path::new("out/basalt.img.zst"));
        assert_eq!(OutputFormat::Vhd.output_path(raw), Path::new("out/basalt.vhd"));
        assert_eq!(OutputFormat::Qcow2.output_path(Path::new("disk")), Path::new("disk.qcow2"));
    }

    #[test]
    fn zstd_output_records_the_content_size_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("a.img");
        let mut data = vec![0u8; 3 << 20];
        data[12345] = 7;
        std::fs::write(&raw, &data).unwrap();
        let out = File::create(dir.path().join("a.img.zst")).unwrap();
        zstd_compress(&raw, &out).unwrap();
        let packed = std::fs::read(dir.path().join("a.img.zst")).unwrap();
        assert_eq!(zstd::zstd_safe::get_frame_content_size(&packed).unwrap(), Some(data.len() as u64));
        assert_eq!(zstd::decode_all(&packed[..]).unwrap(), data);
    }

    #[test]
    fn convert_refuses_a_file_without_a_gpt() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("junk.img");
        std::fs::write(&raw, vec![1u8; 1 << 20]).unwrap();
        let err = convert(&raw, OutputFormat::Qcow2, &dir.path().join("x.qcow2")).unwrap_err();
        assert!(format!("{err:#}").contains("not a raw basalt disk image"), "{err:#}");
        assert!(!dir.path().join("x.qcow2").exists());
    }

    #[test]
    fn sha256_file_is_sha256sum_compatible() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.img");
        std::fs::write(&p, b"abc").unwrap();
        let sums = write_sha256_file(&p).unwrap();
        assert_eq!(std::fs::read_to_string(sums).unwrap(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad  x.img\n");
    }
}
