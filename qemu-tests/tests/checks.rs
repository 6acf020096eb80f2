//! Independent checks of a built image with the reference tools: sgdisk,
//! fsck.vfat, veritysetup, unsquashfs, fsck.ext4. Also what the ESP holds
//! and that the table matches docs/disk-layout.md.

use basalt_qemu_tests::{default_image, image, require_image};
use std::path::Path;
use std::process::Command;

fn tool(cmd: &mut Command, package: &str) -> (bool, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{:?}: {e}; install {package} (make deps)", cmd.get_program()));
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn sgdisk_accepts_the_table_and_sees_our_layout() {
    let img = default_image();
    require_image(&img).unwrap();
    let (ok, out) = tool(Command::new("sgdisk").arg("-v").arg(&img), "gdisk");
    assert!(ok && out.contains("No problems found"), "{out}");
    let (ok, out) = tool(Command::new("sgdisk").arg("-p").arg(&img), "gdisk");
    assert!(ok, "{out}");
    for name in ["EFI-SYSTEM", "BIOS-BOOT", "USR-A", "USR-B", "OEM", "ROOT"] {
        assert!(out.contains(name), "{name} missing:\n{out}");
    }
    // Partition 3's type is CoreOS usr, its attributes gptprio + read-only.
    let (_, info) = tool(Command::new("sgdisk").arg("-i").arg("3").arg(&img), "gdisk");
    assert!(info.to_uppercase().contains("5DFBF5F4-2848-4BAC-AA5E-0D9A20B745A6"), "{info}");
    assert!(info.contains("1100000000000000") || info.contains("1101000000000000"), "attribute flags: {info}");
}

#[test]
fn docs_disk_layout_matches_the_image() {
    let img = default_image();
    require_image(&img).unwrap();
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/disk-layout.md")).unwrap();
    for p in image::gpt(&img).unwrap().partitions {
        let row = format!("| {} | {} | `{}` |", p.number, p.name, p.type_guid);
        assert!(doc.contains(&row), "docs/disk-layout.md lacks the row starting {row}");
        let size = format!("{} MiB", p.size_bytes() >> 20);
        let line = doc.lines().find(|l| l.starts_with(&row)).unwrap();
        assert!(line.contains(&size), "{line} should say {size}");
        assert!(line.contains(&format!("`0x{:016x}`", p.attributes)), "{line} should give attributes 0x{:016x}", p.attributes);
        assert!(line.contains(&p.guid.to_string()), "{line} should give partition UUID {}", p.guid);
    }
}

#[test]
fn esp_passes_fsck_and_holds_loader_and_slot_a_uki() {
    let img = default_image();
    require_image(&img).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let esp = dir.path().join("esp.img");
    image::extract_partition(&img, 1, &esp).unwrap();
    let (ok, out) = tool(Command::new("fsck.vfat").arg("-n").arg(&esp), "dosfstools");
    assert!(ok, "{out}");
    assert!(out.contains("FAT32") || !out.contains("FAT16"), "{out}");
    let loader = image::fat_read(&esp, "EFI/BOOT/BOOTX64.EFI").unwrap();
    assert!(loader.starts_with(b"MZ"));
    assert!(String::from_utf8_lossy(&image::fat_read(&esp, "loader/loader.conf").unwrap()).contains("timeout 0"));
    let ukis = image::fat_list(&esp, "EFI/Linux").unwrap();
    assert_eq!(ukis.len(), 1, "{ukis:?}");
    assert!(ukis[0].ends_with("_a.efi"), "{ukis:?}");
}

#[test]
fn usr_a_passes_veritysetup_and_unsquashfs() {
    let img = default_image();
    require_image(&img).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let esp = dir.path().join("esp.img");
    image::extract_partition(&img, 1, &esp).unwrap();
    let uki_name = image::fat_list(&esp, "EFI/Linux").unwrap().remove(0);
    let uki = image::fat_read(&esp, &format!("EFI/Linux/{uki_name}")).unwrap();
    let cmdline = image::uki_section(&uki, ".cmdline").unwrap();
    let root_hash = image::cmdline_param(&cmdline, "basalt.usr_hash").unwrap();
    let blocks: u64 = image::cmdline_param(&cmdline, "basalt.usr_blocks").unwrap().parse().unwrap();
    let usr_guid = image::cmdline_param(&cmdline, "basalt.usr").unwrap().trim_start_matches("PARTUUID=");
    assert_eq!(image::gpt(&img).unwrap().partition(3).unwrap().guid.to_string(), usr_guid, "the UKI names USR-A");
    let osrel = image::uki_section(&uki, ".osrel").unwrap();
    assert!(osrel.contains("ID=basalt") && osrel.contains("IMAGE_VERSION="), "{osrel}");

    let usr = dir.path().join("usr-a.img");
    image::extract_partition(&img, 3, &usr).unwrap();
    let hash_offset = (blocks * 4096).to_string();
    let (ok, out) = tool(Command::new("veritysetup").args(["verify", "--hash-offset", &hash_offset]).arg(&usr).arg(&usr).arg(root_hash), "cryptsetup-bin");
    assert!(ok, "veritysetup verify: {out}");

    // The filesystem's own reader must extract every file.
    let fs_only = dir.path().join("usr.squashfs");
    let data = std::fs::read(&usr).unwrap();
    std::fs::write(&fs_only, &data[..(blocks * 4096) as usize]).unwrap();
    let dest = dir.path().join("x");
    let (ok, out) = tool(Command::new("unsquashfs").args(["-no-progress", "-d"]).arg(&dest).arg(&fs_only), "squashfs-tools");
    assert!(ok, "unsquashfs: {out}");
    assert!(dest.join("lib/basalt/init").exists());
    assert!(dest.join("lib/os-release").exists());
    let kver_dirs: Vec<_> = std::fs::read_dir(dest.join("lib/modules")).unwrap().collect();
    assert_eq!(kver_dirs.len(), 1);
    let moddir = kver_dirs[0].as_ref().unwrap().path();
    let dep = std::fs::read_to_string(moddir.join("modules.dep")).unwrap();
    assert!(dep.lines().any(|l| l.starts_with("kernel/drivers/md/dm-verity.ko:") && l.contains("dm-mod.ko")), "modules.dep lacks dm-verity's dependencies");

    // A byte flipped in the data is caught by the same independent check.
    let mut bad = data.clone();
    bad[4096 * 7 + 5] ^= 0x80;
    std::fs::write(&usr, &bad).unwrap();
    let (ok, out) = tool(Command::new("veritysetup").args(["verify", "--hash-offset", &hash_offset]).arg(&usr).arg(&usr).arg(root_hash), "cryptsetup-bin");
    assert!(!ok && out.contains("Verification failed"), "{out}");
}

#[test]
fn root_passes_fsck_ext4_and_oem_passes_fsck_vfat() {
    let img = default_image();
    require_image(&img).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root.img");
    image::extract_partition(&img, 9, &root).unwrap();
    let (ok, out) = tool(Command::new("fsck.ext4").arg("-n").arg("-f").arg(&root), "e2fsprogs");
    assert!(ok, "{out}");
    let (ok, out) = tool(Command::new("dumpe2fs").arg("-h").arg(&root), "e2fsprogs");
    assert!(ok && out.contains("Filesystem volume name:   ROOT"), "{out}");
    let oem = dir.path().join("oem.img");
    image::extract_partition(&img, 6, &oem).unwrap();
    let (ok, out) = tool(Command::new("fsck.vfat").arg("-n").arg(&oem), "dosfstools");
    assert!(ok, "{out}");
    assert!(Path::new(&oem).exists());
}
