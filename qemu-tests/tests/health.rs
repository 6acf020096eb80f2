//! The health gate: a slot whose UKI has tries left is blessed (the counter
//! dropped from its name) once the required units stayed up; one whose
//! required unit fails is not, so the loader will fall back once its tries
//! run out.

use basalt_qemu_tests::image::{set_counter, uki_names};
use basalt_qemu_tests::{default_image, Vm};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(120);
const CMD: Duration = Duration::from_secs(30);

fn basalt_bin() -> PathBuf {
    std::env::var_os("BASALT_BIN").map(PathBuf::from).unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/x86_64-unknown-linux-gnu/release/basalt"))
}

fn copy_image(src: &Path, dst: &Path) {
    assert!(Command::new("cp").arg("--sparse=always").arg(src).arg(dst).status().unwrap().success());
}

#[test]
fn a_slot_with_tries_left_is_blessed_after_the_gate() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("counted.img");
    copy_image(&default_image(), &img);
    set_counter(&img);
    let mut vm = Vm::boot("blessed", &img).unwrap();
    vm.wait_ready(BOOT).unwrap();
    let status = vm.run_ok("basaltctl status", CMD).unwrap();
    // systemd-boot counted this boot: 3 tries became 2 left, 1 done.
    assert!(status.contains("tries left: 2") && status.contains("blessed:    no"), "{status}");
    vm.wait_for("boot blessed: slot A", Duration::from_secs(90)).unwrap();
    let status = vm.run_ok("basaltctl status", CMD).unwrap();
    assert!(status.contains("blessed:    yes") && status.contains("no boot counter"), "{status}");
    vm.send("poweroff").unwrap();
    vm.wait_exit(Duration::from_secs(60)).unwrap();
    // On the disk: the overlay holds the renamed file; commit it to look.
    let names = uki_names_after(&vm, &img);
    assert_eq!(names, ["basalt_0.1.0_a.efi"], "counter not dropped: {names:?}");
}

fn uki_names_after(_vm: &Vm, _img: &Path) -> Vec<String> {
    // The VM wrote to its qcow2 overlay; the harness keeps it in its state dir.
    let overlay = _vm.overlay_path();
    let raw = _img.with_extension("after.img");
    let out = Command::new("qemu-img").args(["convert", "-O", "raw"]).arg(&overlay).arg(&raw).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let names = uki_names(&raw);
    let _ = std::fs::remove_file(&raw);
    names
}

#[test]
fn a_slot_whose_required_unit_fails_is_not_blessed() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().unwrap();
    // The default spec, plus a unit that fails and a gate that requires it.
    std::fs::write(dir.path().join("broken.service"), "[Service]\nExecStart=/usr/bin/false\n\n[Install]\nWantedBy=multi-user.target\n").unwrap();
    std::fs::write(dir.path().join("health.conf"), "REQUIRED_UNITS=\"broken.service sshd.service\"\nHEALTHY_SECONDS=5\n").unwrap();
    let spec = std::fs::read_to_string(repo.join("image/basalt.yaml")).unwrap();
    let spec = spec
        .replace("source: rootfs/", &format!("source: {}/image/rootfs/", repo.display()))
        .replace(&format!("{}/image/rootfs/etc/health.conf", repo.display()), &dir.path().join("health.conf").display().to_string())
        .replace("files:\n", &format!("files:\n  - {{path: /usr/lib/systemd/system/broken.service, source: {}}}\n", dir.path().join("broken.service").display()));
    let spec_path = dir.path().join("spec.yaml");
    std::fs::write(&spec_path, spec).unwrap();
    let img = dir.path().join("unhealthy.img");
    let out = Command::new(basalt_bin()).args(["build", "--lock"]).arg(repo.join("image/inputs.lock")).arg("--spec").arg(&spec_path).arg("-o").arg(&img).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    set_counter(&img);

    let mut vm = Vm::boot("unhealthy", &img).unwrap();
    vm.wait_ready(BOOT).unwrap();
    vm.wait_for("broken.service: failed", CMD).unwrap();
    // Well past the 5 s the gate asks for.
    std::thread::sleep(Duration::from_secs(20));
    let status = vm.run_ok("basaltctl status", CMD).unwrap();
    assert!(status.contains("blessed:    no") && status.contains("waiting for broken.service"), "{status}");
    assert!(!vm.console_text().contains("boot blessed"));
    vm.power_cut().unwrap();
    let names = uki_names_after(&vm, &img);
    assert_eq!(names, ["basalt_0.1.0_a+2-1.efi"], "{names:?}");
}
