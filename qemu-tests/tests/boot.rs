//! The image boots under OVMF to `basalt: ready`, /usr is read-only and
//! verity-backed, a flipped byte in USR-A is caught, and poweroff ends QEMU;
//! its console shell is there only when the hypervisor sets the fw_cfg entry
//! (as the harness and `basalt run` do), not when booted as EC2 would.

use basalt_qemu_tests::{default_image, image, Vm};
use std::io::{Read, Seek, SeekFrom, Write};
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(120);
const CMD: Duration = Duration::from_secs(30);

fn spec_version() -> String {
    let spec = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../image/basalt.yaml")).unwrap();
    spec.lines().find_map(|l| l.strip_prefix("version:")).unwrap().trim().to_string()
}

#[test]
fn boots_to_ready_with_verity_usr_and_powers_off() {
    let mut vm = Vm::boot("boots_to_ready", &default_image()).unwrap();
    let (version, slot) = vm.wait_ready(BOOT).unwrap();
    assert_eq!((version.as_str(), slot.as_str()), (spec_version().as_str(), "A"));
    // The harness sets fw_cfg opt/org.basalt/console-shell=1: the default
    // image (console_shell: hypervisor) offers its shell, and the probe that
    // finds none below finds this one.
    assert!(vm.console_text().contains("basalt: console shell: on (basalt.console_shell=hypervisor: the hypervisor set fw_cfg opt/org.basalt/console-shell)"), "{}", vm.console_text());
    assert!(vm.shell_answers(CMD).unwrap(), "no shell answered on the console although the fw_cfg entry is set");

    // /usr is the dm device, squashfs, read-only.
    let mounts = vm.run_ok("cat /proc/mounts", CMD).unwrap();
    let usr = mounts.lines().find(|l| l.split_whitespace().nth(1) == Some("/usr")).unwrap_or_else(|| panic!("no /usr in {mounts}"));
    let fields: Vec<&str> = usr.split_whitespace().collect();
    assert_eq!(fields[0], "/dev/dm-0", "{usr}");
    assert_eq!(fields[2], "squashfs", "{usr}");
    assert!(fields[3].split(',').any(|o| o == "ro"), "{usr}");
    // ...and that device is our verity device over USR-A (vda3).
    assert_eq!(vm.run_ok("cat /sys/block/dm-0/dm/name", CMD).unwrap().trim(), "usr");
    assert_eq!(vm.run_ok("cat /sys/block/dm-0/dm/uuid", CMD).unwrap().trim(), "BASALT-USR-A");
    assert_eq!(vm.run_ok("ls /sys/block/dm-0/slaves", CMD).unwrap().trim(), "vda3");
    assert_eq!(vm.run_ok("cat /sys/block/dm-0/ro", CMD).unwrap().trim(), "1");

    let (status, out) = vm.run("touch /usr/written 2>&1", CMD).unwrap();
    assert_ne!(status, 0);
    assert!(out.contains("Read-only file system"), "{out}");

    // ROOT is ext4, writable, laid out.
    assert!(mounts.lines().any(|l| l.starts_with("/dev/vda9 / ext4 rw")), "{mounts}");
    vm.run_ok("echo hello > /var/probe && cat /var/probe", CMD).unwrap();
    assert_eq!(vm.run_ok("readlink /bin", CMD).unwrap().trim(), "usr/bin");

    // poweroff ends QEMU cleanly: the guest powers off, QEMU exits 0.
    vm.send("poweroff").unwrap();
    vm.wait_for("powering off", CMD).unwrap();
    let status = vm.wait_exit(Duration::from_secs(60)).unwrap();
    assert!(status.success(), "QEMU exited with {status}");
}

/// Booted without the fw_cfg entry, as on EC2 or hardware, the default image
/// comes up but nothing on its serial console answers: no shell, no prompt.
#[test]
fn without_the_fw_cfg_entry_the_console_has_no_shell() {
    let mut vm = Vm::boot_with("no_console_shell", &default_image(), |c| c.console_shell = false).unwrap();
    vm.wait_ready(BOOT).unwrap();
    // A shell, had one started, answers within a second or two even under TCG.
    assert!(!vm.shell_answers(Duration::from_secs(20)).unwrap(), "a shell answered on the console:\n{}", vm.console_text());
    assert!(vm.console_text().contains("basalt: console shell: off (basalt.console_shell=hypervisor: only when the hypervisor sets fw_cfg opt/org.basalt/console-shell=1)"), "{}", vm.console_text());
    let after_ready = vm.console_text().split_once("basalt: ready").unwrap().1.to_string();
    assert!(!after_ready.lines().any(|l| l.starts_with("# ") || l == "#"), "a shell prompt on the console:\n{after_ready}");
    // The machine is up all the same: its services run and log to the console.
    let deadline = std::time::Instant::now() + BOOT;
    while !vm.console_text().contains("[sshd.service]") {
        assert!(std::time::Instant::now() < deadline, "sshd.service never said anything:\n{}", vm.console_text());
        std::thread::sleep(Duration::from_millis(500));
    }
    vm.power_cut().unwrap();
}

/// Flips one byte inside USR-A's squashfs on a copy of the image and reads
/// every file: dm-verity must refuse the block (and restart the machine, as
/// `restart_on_corruption` says), never hand out the wrong data.
#[test]
fn flipped_byte_in_usr_a_is_caught_by_verity() {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("flipped.img");
    let st = std::process::Command::new("cp").arg("--sparse=always").arg(default_image()).arg(&copy).status().unwrap();
    assert!(st.success());
    let usr_a = image::gpt(&copy).unwrap().partition(3).unwrap().clone();
    // Block 100 of the filesystem: compressed file data, read by the scan below.
    let at = usr_a.offset_bytes() + 100 * 4096 + 123;
    let mut f = std::fs::OpenOptions::new().read(true).write(true).open(&copy).unwrap();
    let mut byte = [0u8];
    f.seek(SeekFrom::Start(at)).unwrap();
    f.read_exact(&mut byte).unwrap();
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&[byte[0] ^ 0x01]).unwrap();
    drop(f);

    let mut vm = Vm::boot("flipped_byte", &copy).unwrap();
    // The flipped block may be read during boot or only by the scan.
    let (which, _) = vm.wait_for_any(&["basalt: ready", "is corrupted"], BOOT, true).unwrap();
    if which == 0 {
        vm.send("find /usr -type f | xargs cat > /dev/null; echo SCAN\"\"DONE").unwrap();
        let (hit, text) = vm.wait_for_any(&["is corrupted", "SCANDONE"], BOOT, true).unwrap();
        assert_eq!(hit, 0, "every file of /usr was read without a verity error:\n{text}");
    }
    let console = vm.console_text();
    assert!(console.contains("device-mapper: verity") && console.contains("data block"), "{console}");
    // restart_on_corruption: the kernel restarts instead of serving bad data.
    vm.wait_for_any(&["reboot: Restarting system"], CMD, true).unwrap();
}

/// A slot whose verity superblock is gone must not hang: init says what is
/// wrong and reboots (so boot counting can fall back), the second boot says it
/// again.
#[test]
fn a_broken_slot_is_reported_and_rebooted_never_a_silent_hang() {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("broken.img");
    let st = std::process::Command::new("cp").arg("--sparse=always").arg(default_image()).arg(&copy).status().unwrap();
    assert!(st.success());
    // Find the superblock from the UKI's command line, then wipe it.
    let esp = dir.path().join("esp.img");
    image::extract_partition(&copy, 1, &esp).unwrap();
    let uki_name = image::fat_list(&esp, "EFI/Linux").unwrap().remove(0);
    let cmdline = image::uki_section(&image::fat_read(&esp, &format!("EFI/Linux/{uki_name}")).unwrap(), ".cmdline").unwrap();
    let blocks: u64 = image::cmdline_param(&cmdline, "basalt.usr_blocks").unwrap().parse().unwrap();
    let usr_a = image::gpt(&copy).unwrap().partition(3).unwrap().clone();
    let mut f = std::fs::OpenOptions::new().write(true).open(&copy).unwrap();
    f.seek(SeekFrom::Start(usr_a.offset_bytes() + blocks * 4096)).unwrap();
    f.write_all(&[0u8; 4096]).unwrap();
    drop(f);

    let mut vm = Vm::boot("broken_slot", &copy).unwrap();
    let (_, text) = vm.wait_for_any(&["basalt: error"], BOOT, true).unwrap();
    let _ = text;
    let line = vm.wait_for("\n", CMD).unwrap();
    assert!(line.contains("not a verity superblock"), "error line: {line}");
    vm.wait_for("rebooting in 10 s", CMD).unwrap();
    // The machine really restarts: the kernel starts a second time.
    vm.wait_for_any(&["Linux version"], Duration::from_secs(60), true).unwrap();
    vm.wait_for_any(&["basalt: error"], BOOT, true).unwrap();
    assert!(!vm.console_text().contains("basalt: ready"));
}
