//! What the image needs to boot on EC2 Nitro instances, checked in the built
//! image: the ENA network driver in the initramfs and loaded by init, the
//! serial console on ttyS0 (EC2's serial console and get-console-output),
//! and NVMe, the Nitro disk, built into the kernel (its modules.builtin, read
//! from USR-A with unsquashfs). Booting on EC2 itself cannot be tested here.

use basalt_qemu_tests::{default_image, image, require_image};
use std::process::Command;

#[test]
fn the_initramfs_loads_ena_and_the_console_is_ttys0() {
    let img = default_image();
    require_image(&img).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let esp = dir.path().join("esp.fat");
    image::extract_partition(&img, 1, &esp).unwrap();
    let uki_name = image::fat_list(&esp, "EFI/Linux").unwrap().into_iter().find(|n| n.ends_with(".efi")).expect("a UKI in EFI/Linux");
    let uki = image::fat_read(&esp, &format!("EFI/Linux/{uki_name}")).unwrap();
    let sections = basalt_uki::sections(&uki).unwrap();
    let (_, initrd) = sections.iter().find(|(n, _)| n == ".initrd").expect(".initrd section");
    // The load list init reads (etc/basalt/initrd-modules) names ena.ko, and
    // the module itself is in the archive (newc cpio: names are plain text).
    let text = String::from_utf8_lossy(initrd);
    let listed = text.lines().filter(|l| l.starts_with('/') && l.ends_with(".ko")).any(|l| l.ends_with("/ena.ko"));
    assert!(listed, "ena.ko is not in the initramfs module list");
    assert!(initrd.windows(b"drivers/net/ethernet/amazon/ena/ena.ko".len()).any(|w| w == b"drivers/net/ethernet/amazon/ena/ena.ko"), "ena.ko file missing from the initramfs");
    let cmdline = image::uki_section(&uki, ".cmdline").unwrap();
    assert_eq!(image::cmdline_param(&cmdline, "console"), Some("ttyS0,115200"), "{cmdline}");
}

#[test]
fn nvme_is_built_into_the_kernel() {
    let img = default_image();
    require_image(&img).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let usr = dir.path().join("usr-a.img");
    image::extract_partition(&img, 3, &usr).unwrap();
    // USR-A is squashfs followed by its verity tree; unsquashfs reads the former.
    let list = Command::new("unsquashfs").args(["-l", "-d", ""]).arg(&usr).output().expect("unsquashfs (squashfs-tools)");
    assert!(list.status.success(), "{}", String::from_utf8_lossy(&list.stderr));
    let list = String::from_utf8_lossy(&list.stdout);
    let builtin = list.lines().find(|l| l.starts_with("/lib/modules/") && l.ends_with("/modules.builtin")).expect("modules.builtin in /usr");
    let out = Command::new("unsquashfs").arg("-cat").arg(&usr).arg(builtin).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    for module in ["kernel/drivers/nvme/host/nvme-core.ko", "kernel/drivers/nvme/host/nvme.ko"] {
        assert!(text.lines().any(|l| l == module), "{module} is not built into the kernel; the initramfs would need it to find the root disk on EC2 Nitro");
    }
}
