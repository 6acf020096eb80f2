//! Every output format of `basalt convert`, checked by the reference tools
//! (qemu-img info, check and compare; zstd) and booted to `basalt: ready`.

use basalt_qemu_tests::{basalt_bin, default_image, require_image, Vm};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(120);

fn tool(cmd: &mut Command, package: &str) -> (bool, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{:?}: {e}; install {package} (make deps)", cmd.get_program()));
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn convert(raw: &Path, format: &str, out: &Path) {
    let (ok, text) = tool(Command::new(basalt_bin()).arg("convert").arg(raw).args(["--format", format, "-o"]).arg(out), "the basalt binary (BASALT_BIN)");
    assert!(ok, "basalt convert --format {format} failed: {text}");
    let sums = std::fs::read_to_string(format!("{}.sha256", out.display())).unwrap();
    let (ok, text) = tool(Command::new("sha256sum").arg("-c").arg(format!("{}.sha256", out.display())).current_dir(out.parent().unwrap()), "coreutils");
    assert!(ok, "sha256sum -c rejects {sums}: {text}");
}

fn qemu_img_info(driver: &str, file: &Path) -> serde_json::Value {
    let (ok, text) = tool(Command::new("qemu-img").args(["info", "--output=json", "-f", driver]).arg(file), "qemu-utils");
    assert!(ok, "qemu-img info -f {driver}: {text}");
    serde_json::from_str(&text).unwrap()
}

/// A fixed VHD's footer (Virtual Hard Disk Image Format Specification):
/// cookie, disk type 2 = fixed, current size, one's-complement checksum.
fn check_vhd_footer(vhd: &Path, virtual_size: u64) {
    let data = std::fs::read(vhd).unwrap();
    assert_eq!(data.len() as u64, virtual_size + 512, "a fixed VHD is the data plus a 512-byte footer");
    let footer = &data[data.len() - 512..];
    assert_eq!(&footer[0..8], b"conectix");
    assert_eq!(u32::from_be_bytes(footer[60..64].try_into().unwrap()), 2, "disk type fixed");
    assert_eq!(u64::from_be_bytes(footer[48..56].try_into().unwrap()), virtual_size, "current size");
    assert_eq!(virtual_size % (1 << 20), 0, "Azure requires whole MiB");
    let stored = u32::from_be_bytes(footer[64..68].try_into().unwrap());
    let sum: u32 = footer.iter().enumerate().filter(|(i, _)| !(64..68).contains(i)).map(|(_, &b)| b as u32).sum();
    assert_eq!(stored, !sum, "footer checksum");
}

#[test]
fn every_format_is_accepted_by_qemu_img_and_boots() {
    let raw = default_image();
    require_image(&raw).unwrap();
    let size = std::fs::metadata(&raw).unwrap().len();
    let dir = tempfile::tempdir().unwrap();

    // Compressed raw: the zstd tool decompresses it to the raw image, byte for byte.
    let zst = dir.path().join("basalt.img.zst");
    convert(&raw, "raw.zst", &zst);
    let back = dir.path().join("back.img");
    let (ok, text) = tool(Command::new("zstd").args(["-q", "-d", "--sparse"]).arg(&zst).arg("-o").arg(&back), "zstd");
    assert!(ok, "{text}");
    let (ok, text) = tool(Command::new("cmp").arg(&raw).arg(&back), "diffutils");
    assert!(ok, "decompressed image differs: {text}");
    std::fs::remove_file(&back).unwrap();

    for (format, driver, file) in [("qcow2", "qcow2", "basalt.qcow2"), ("vmdk", "vmdk", "basalt.vmdk"), ("vhd", "vpc", "basalt.vhd")] {
        let out = dir.path().join(file);
        convert(&raw, format, &out);
        let info = qemu_img_info(driver, &out);
        assert_eq!(info["format"], driver, "{info}");
        assert_eq!(info["virtual-size"], size, "{format}: virtual size differs from the raw image's: {info}");
        match format {
            "vmdk" => assert_eq!(info["format-specific"]["data"]["create-type"], "streamOptimized", "{info}"),
            "vhd" => check_vhd_footer(&out, size),
            _ => {}
        }
        // qemu-img check has no checker for VHD ("does not support checks");
        // the footer check above stands in for it.
        if format != "vhd" {
            let (ok, text) = tool(Command::new("qemu-img").args(["check", "-f", driver]).arg(&out), "qemu-utils");
            assert!(ok && text.contains("No errors were found"), "qemu-img check {format}: {text}");
        }
        let (ok, text) = tool(Command::new("qemu-img").args(["compare", "-f", driver, "-F", "raw"]).arg(&out).arg(&raw), "qemu-utils");
        assert!(ok && text.contains("Images are identical"), "{format} does not hold the raw image: {text}");

        let mut vm = Vm::boot_with(&format!("format_{format}"), &out, |cfg| cfg.disk_format = driver.to_string()).unwrap();
        let (_, slot) = vm.wait_ready(BOOT).unwrap_or_else(|e| panic!("{format} image does not boot: {e:#}"));
        assert_eq!(slot, "A");
        vm.power_cut().unwrap();
        std::fs::remove_file(&out).unwrap();
    }
}

#[test]
fn convert_refuses_what_is_not_a_raw_disk_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.img");
    std::fs::write(&junk, vec![0x55u8; 1 << 20]).unwrap();
    let out = dir.path().join("junk.qcow2");
    let (ok, text) = tool(Command::new(basalt_bin()).arg("convert").arg(&junk).args(["--format", "qcow2", "-o"]).arg(&out), "the basalt binary");
    assert!(!ok);
    assert!(text.contains("junk.img is not a raw basalt disk image"), "{text}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "only the input is left");
}
