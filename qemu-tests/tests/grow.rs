//! First boot on a disk larger than the image: the backup GPT moves to the
//! end, ROOT and its ext4 grow to fill the disk, the disk GUID becomes
//! random; a second boot does none of it again.

use basalt_qemu_tests::{default_image, image, Vm};
use std::process::Command;
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(120);
const CMD: Duration = Duration::from_secs(30);
const DISK: u64 = 4 << 30;

#[test]
fn root_fills_a_larger_disk_once() {
    let img = default_image();
    let original = image::gpt(&img).unwrap();
    let mut vm = Vm::boot_with("grow", &img, |c| c.disk_bytes = Some(DISK)).unwrap();
    vm.wait_ready(BOOT).unwrap();
    let text = vm.console_text();
    assert!(text.contains("grew ROOT to 1660 MiB to fill vda (4096 MiB)"), "no growth message");
    assert!(text.contains("first boot: disk GUID"), "no disk GUID message");
    let sectors: u64 = vm.run_ok("cat /sys/class/block/vda9/size", CMD).unwrap().trim().parse().unwrap();
    assert_eq!(sectors * 512, 1660 << 20, "the kernel's view of ROOT");
    let df = vm.run_ok("df -k /", CMD).unwrap();
    let total_kib: u64 = df.lines().nth(1).unwrap().split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(total_kib > 1500 << 10, "ext4 did not grow: {df}");
    vm.run_ok("echo still-here > /var/grown", CMD).unwrap();

    // Second boot: nothing again, the file is there.
    vm.send("reboot").unwrap();
    vm.wait_for("rebooting", CMD).unwrap();
    vm.wait_ready(BOOT).unwrap();
    let second_boot = vm.console_text().rsplit("Linux version").next().unwrap().to_string();
    assert!(!second_boot.contains("grew ROOT") && !second_boot.contains("first boot:"), "first-boot work ran again");
    assert_eq!(vm.run_ok("cat /var/grown", CMD).unwrap().trim(), "still-here");
    vm.send("poweroff").unwrap();
    vm.wait_exit(Duration::from_secs(60)).unwrap();

    // From outside: a valid table for the larger disk, a new disk GUID, fsck-clean ROOT.
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("after.img");
    let st = Command::new("qemu-img").args(["convert", "-O", "raw"]).arg(vm.overlay_path()).arg(&raw).status().unwrap();
    assert!(st.success());
    let out = Command::new("sgdisk").arg("-v").arg(&raw).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("No problems found"), "{text}");
    let grown = image::gpt(&raw).unwrap();
    assert_eq!(grown.backup_lba + 1, DISK / 512);
    assert_ne!(grown.disk_guid, original.disk_guid);
    assert_eq!(grown.partition(3).unwrap().guid, original.partition(3).unwrap().guid, "partition UUIDs stay: the UKI names USR-A by it");
    let root = dir.path().join("root.img");
    image::extract_partition(&raw, 9, &root).unwrap();
    let out = Command::new("fsck.ext4").args(["-n", "-f"]).arg(&root).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
}
