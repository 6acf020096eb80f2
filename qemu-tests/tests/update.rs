//! Updates end to end: four versions of the image, a signed repository
//! served from the host, and one machine that updates by delta and by full
//! payload, survives power cuts mid-write, resumes a broken download, rolls
//! back on request, and is brought back by the boot loader when a new
//! version cannot boot. Bad metadata and bad payloads are refused with their
//! reason.

use basalt_qemu_tests::http::FileServer;
use basalt_qemu_tests::{basalt_bin, Vm};
use basalt_repo::meta::{Channel, FileRef, Release, Role, Roles, Root, CHANNEL_TYPE, ROOT_TYPE};
use basalt_repo::{Envelope, PrivateKey};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const BOOT: Duration = Duration::from_secs(240);
const CMD: Duration = Duration::from_secs(120);
const LATER: &str = "2099-01-01T00:00:00Z";

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().unwrap()
}

fn root_doc(version: u64, root: &PrivateKey, channel: &PrivateKey) -> Vec<u8> {
    let mut keys = std::collections::BTreeMap::new();
    for k in [root, channel] {
        keys.insert(k.public().id().to_string(), k.public().to_text());
    }
    let role = |k: &PrivateKey| Role { keyids: vec![k.public().id().to_string()], threshold: 1 };
    let doc = Root { kind: "root".into(), version, expires: LATER.into(), keys, roles: Roles { root: role(root), channel: role(channel) } };
    let mut e = Envelope::new(ROOT_TYPE, &doc.to_json());
    e.sign(root).unwrap();
    e.to_json().into_bytes()
}

struct Repo {
    dir: PathBuf,
    channel_version: u64,
}

impl Repo {
    fn file(&self, path: &str) -> FileRef {
        let data = std::fs::read(self.dir.join(path)).unwrap();
        FileRef { path: path.into(), size: data.len() as u64, sha256: basalt_repo::sha256_hex(&data) }
    }

    fn release(&self, version: &str, payload: &str, delta: Option<(&str, &str)>) -> Release {
        let mut f = std::fs::File::open(self.dir.join(payload)).unwrap();
        let header = basalt_repo::payload::read_header(&mut f).unwrap();
        Release {
            name: "basalt".into(),
            version: version.into(),
            usr_root_hash: header.usr.root_hash,
            payload: self.file(payload),
            deltas: delta.map(|(from, p)| vec![basalt_repo::meta::Delta { from: from.into(), file: self.file(p) }]).unwrap_or_default(),
            rollout: vec![],
        }
    }

    /// Publishes channel `stable` offering `release`, signed by `signers`.
    fn publish(&mut self, release: Release, expires: &str, signers: &[&PrivateKey]) {
        self.channel_version += 1;
        self.publish_as(self.channel_version, release, expires, signers);
    }

    fn publish_as(&self, version: u64, release: Release, expires: &str, signers: &[&PrivateKey]) {
        let doc = Channel { kind: "channel".into(), channel: "stable".into(), version, expires: expires.into(), release };
        let mut e = Envelope::new(CHANNEL_TYPE, &doc.to_json());
        for k in signers {
            e.sign(k).unwrap();
        }
        std::fs::create_dir_all(self.dir.join("channels")).unwrap();
        std::fs::write(self.dir.join("channels/stable.json"), e.to_json()).unwrap();
    }
}

/// The default spec at `version`, with the repository's root and server.
fn build(dir: &Path, version: &str, extra_cmdline: &[&str]) -> PathBuf {
    let ws = workspace();
    let spec = std::fs::read_to_string(ws.join("image/basalt.yaml")).unwrap();
    let mut cmdline = String::from("cmdline:\n");
    for w in extra_cmdline {
        cmdline += &format!("  - {w}\n");
    }
    let spec = spec.replace("version: 0.1.0", &format!("version: {version}")).replace("source: rootfs/", &format!("source: {}/image/rootfs/", ws.display())).replace("cmdline:\n", &cmdline).replace(
        "files:\n",
        &format!(
            "files:\n  - {{path: /usr/share/basalt/update/root.json, source: {}}}\n  - {{path: /usr/share/basalt/update.conf, source: {}}}\n",
            dir.join("root.json").display(),
            dir.join("update.conf").display()
        ),
    );
    assert!(spec.contains(&format!("version: {version}")), "the default spec's version line changed");
    let spec_path = dir.join(format!("spec-{version}.yaml"));
    std::fs::write(&spec_path, spec).unwrap();
    let img = dir.join(format!("basalt-{version}.img"));
    let out = Command::new(basalt_bin()).args(["build", "--lock"]).arg(ws.join("image/inputs.lock")).arg("--spec").arg(&spec_path).arg("-o").arg(&img).output().unwrap();
    assert!(out.status.success(), "building {version}: {}", String::from_utf8_lossy(&out.stderr));
    img
}

fn payload(img: &Path, from: Option<&Path>, out: &Path) {
    let mut cmd = Command::new(basalt_bin());
    cmd.arg("payload").arg(img).arg("-o").arg(out);
    if let Some(f) = from {
        cmd.arg("--from").arg(f);
    }
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "basalt payload: {}", String::from_utf8_lossy(&o.stderr));
}

fn esp_files(vm: &mut Vm) -> String {
    vm.run_ok("modprobe -a vfat nls_cp437 nls_ascii; mkdir -p /mnt/esp && mount -t vfat /dev/vda1 /mnt/esp && ls /mnt/esp/EFI/Linux; umount /mnt/esp", CMD).unwrap()
}

/// `basaltctl update apply` that must fail with `reason`.
fn refused(vm: &mut Vm, what: &str, reason: &str) {
    let (status, out) = vm.run("basaltctl update apply", CMD).unwrap();
    assert!(status != 0 && out.contains(reason), "{what}: expected a refusal saying {reason:?}, got exit {status}: {out}");
}

fn wait_blessed(vm: &mut Vm) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = vm.run_ok("basaltctl status", CMD).unwrap();
        if s.contains("blessed:    yes") {
            return;
        }
        assert!(Instant::now() < deadline, "the boot was not blessed: {s}");
        std::thread::sleep(Duration::from_secs(3));
    }
}

/// Waits for the boot of `version` from `slot` and for its update agent.
fn ready(vm: &mut Vm, version: &str, slot: &str) {
    assert_eq!(vm.wait_ready(BOOT).unwrap(), (version.to_string(), slot.to_string()));
    vm.wait_for(&format!("running basalt {version} from slot {slot}"), CMD).unwrap();
}

fn boot_disk(name: &str, disk: &Path) -> Vm {
    Vm::boot_with(name, disk, |c| {
        c.direct = true;
        c.disk_format = "qcow2".into();
    })
    .unwrap()
}

#[test]
fn updates_roll_forward_survive_power_cuts_and_roll_back() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    let repo_dir = dir.join("repo");
    std::fs::create_dir_all(repo_dir.join("roots")).unwrap();
    std::fs::create_dir_all(repo_dir.join("payloads")).unwrap();
    let server = FileServer::start(&repo_dir);
    let (root_key, channel_key, next_channel_key, stranger) = (PrivateKey::generate().unwrap(), PrivateKey::generate().unwrap(), PrivateKey::generate().unwrap(), PrivateKey::generate().unwrap());
    let root_v1 = root_doc(1, &root_key, &channel_key);
    std::fs::write(dir.join("root.json"), &root_v1).unwrap();
    std::fs::write(repo_dir.join("roots/1.root.json"), &root_v1).unwrap();
    std::fs::write(dir.join("update.conf"), format!("SERVER={}\nREBOOT_STRATEGY=reboot\nCHECK_INTERVAL=24h\n", server.guest_url())).unwrap();

    let v1 = build(dir, "0.1.0", &[]);
    let v2 = build(dir, "0.2.0", &[]);
    let v3 = build(dir, "0.3.0", &[]);
    // 0.4.0 cannot boot: its initramfs has no such init, the kernel panics.
    let v4 = build(dir, "0.4.0", &["rdinit=/does-not-exist"]);
    payload(&v2, None, &repo_dir.join("payloads/basalt-0.2.0.payload"));
    payload(&v2, Some(&v1), &repo_dir.join("payloads/basalt-0.1.0-to-0.2.0.delta"));
    payload(&v3, None, &repo_dir.join("payloads/basalt-0.3.0.payload"));
    payload(&v4, None, &repo_dir.join("payloads/basalt-0.4.0.payload"));
    let mut repo = Repo { dir: repo_dir.clone(), channel_version: 0 };

    let mut vm = Vm::boot("update", &v1).unwrap();
    assert_eq!(vm.wait_ready(BOOT).unwrap(), ("0.1.0".to_string(), "A".to_string()));
    vm.wait_for("running basalt 0.1.0 from slot A; channel stable", CMD).unwrap();
    let status = vm.run_ok("basaltctl update status", CMD).unwrap();
    assert!(status.contains("basalt 0.1.0 (slot A)") && status.contains(&server.guest_url()), "{status}");

    // Refused before a byte is written: bad signatures, expiry, metadata and version rollback.
    let v2_release = repo.release("0.2.0", "payloads/basalt-0.2.0.payload", Some(("0.1.0", "payloads/basalt-0.1.0-to-0.2.0.delta")));
    repo.publish(v2_release.clone(), LATER, &[]);
    refused(&mut vm, "unsigned metadata", "0 valid signature(s) from the channel keys, 1 needed");
    repo.publish(v2_release.clone(), LATER, &[&stranger]);
    refused(&mut vm, "metadata signed by an unknown key", "is not a channel key");
    repo.publish(v2_release.clone(), "2001-01-01T00:00:00Z", &[&channel_key]);
    refused(&mut vm, "expired metadata", "expired at 2001-01-01T00:00:00Z");
    let mut older = v2_release.clone();
    older.version = "0.0.9".into();
    repo.publish(older, LATER, &[&channel_key]);
    refused(&mut vm, "an older version", "older than the running 0.1.0");
    repo.publish(v2_release.clone(), LATER, &[&channel_key]);
    let check = vm.run_ok("basaltctl update check", CMD).unwrap();
    assert!(check.contains("update available: 0.2.0 (delta)"), "{check}");
    repo.publish_as(repo.channel_version - 1, v2_release.clone(), LATER, &[&channel_key]);
    refused(&mut vm, "an older channel document", "refusing a rollback of the metadata");
    assert_eq!(esp_files(&mut vm).split_whitespace().collect::<Vec<_>>(), vec!["basalt_0.1.0_a.efi"]);

    // Refused after writing: the payload does not match what was signed.
    let good = std::fs::read(repo_dir.join("payloads/basalt-0.2.0.payload")).unwrap();
    let mut v2_full = v2_release.clone();
    v2_full.deltas.clear();
    let mut flipped = good.clone();
    let at = flipped.len() / 2;
    flipped[at] ^= 0x01;
    std::fs::write(repo_dir.join("payloads/flipped.payload"), &flipped).unwrap();
    let mut r = v2_full.clone();
    r.payload.path = "payloads/flipped.payload".into();
    repo.publish(r, LATER, &[&channel_key]);
    refused(&mut vm, "a flipped byte", "the payload's sha256 is");
    std::fs::write(repo_dir.join("payloads/truncated.payload"), &good[..good.len() / 3]).unwrap();
    let mut r = v2_full.clone();
    r.payload.path = "payloads/truncated.payload".into();
    repo.publish(r, LATER, &[&channel_key]);
    refused(&mut vm, "a truncated download", "ends early");
    assert_eq!(esp_files(&mut vm).split_whitespace().collect::<Vec<_>>(), vec!["basalt_0.1.0_a.efi"], "no UKI for a slot that did not verify");
    let status = vm.run_ok("basaltctl update status", CMD).unwrap();
    assert!(status.contains("stage:     failed") && status.contains("ends early"), "{status}");
    vm.run_ok("basaltctl status", CMD).unwrap();

    // 0.1.0 → 0.2.0 by delta, into USR-B; blessed after its health checks.
    repo.publish(v2_release, LATER, &[&channel_key]);
    let out = vm.run_ok("basaltctl update apply --no-wait", CMD).unwrap();
    assert!(out.contains("installing 0.2.0 to slot B"), "{out}");
    vm.wait_for("MiB, delta)", CMD).unwrap();
    vm.wait_for("slot B verified", BOOT).unwrap();
    ready(&mut vm, "0.2.0", "B");
    wait_blessed(&mut vm);
    let status = vm.run_ok("basaltctl update status", CMD).unwrap();
    assert!(status.contains("updated from 0.1.0 to 0.2.0, running from slot B"), "{status}");
    assert_eq!(esp_files(&mut vm).split_whitespace().collect::<Vec<_>>(), vec!["basalt_0.1.0_a.efi", "basalt_0.2.0_b.efi"]);

    // The repository rotates its channel key; 0.3.0 is signed by the new one.
    std::fs::write(repo_dir.join("roots/2.root.json"), root_doc(2, &root_key, &next_channel_key)).unwrap();
    let v3_release = repo.release("0.3.0", "payloads/basalt-0.3.0.payload", None);
    // First in rollout waves that have not begun: a check waits for them.
    let waves = Release { rollout: vec![basalt_repo::meta::Wave { from: "2098-01-01T00:00:00Z".into(), share: 1.0 }], ..v3_release.clone() };
    repo.publish(waves, LATER, &[&next_channel_key]);
    let check = vm.run_ok("basaltctl update check", CMD).unwrap();
    assert!(check.contains("0.3.0 is rolling out; this machine's wave starts 2098-01-01"), "{check}");
    repo.publish(v3_release, LATER, &[&next_channel_key]);

    // Power cuts while 0.3.0 is being written to USR-A: 0.2.0 boots every time.
    server.set_rate(3 << 20);
    let disk = dir.join("disk.qcow2");
    for (i, cut_at) in [0.15, 0.75].into_iter().enumerate() {
        vm.send("basaltctl update apply --no-wait").unwrap();
        loop {
            vm.wait_for("downloading: ", CMD).unwrap();
            let line = vm.wait_for("\n", CMD).unwrap();
            let nums: Vec<f64> = line.split_whitespace().filter_map(|w| w.parse().ok()).collect();
            if nums.len() >= 2 && nums[0] >= cut_at * nums[1] {
                break;
            }
        }
        vm.power_cut().unwrap();
        if i == 0 {
            std::fs::copy(vm.overlay_path(), &disk).unwrap();
        }
        drop(vm);
        vm = boot_disk(&format!("update-after-cut-{i}"), &disk);
        ready(&mut vm, "0.2.0", "B");
        let status = vm.run_ok("basaltctl update status", CMD).unwrap();
        assert!(status.contains("the update to 0.3.0 was interrupted while writing slot A"), "{status}");
    }
    server.set_rate(0);

    // The next try finishes it, through a connection that breaks on the way
    // and is picked up where it broke: 0.3.0 goes back to USR-A.
    server.hang_up_once_after(20 << 20);
    let out = vm.run_ok("basaltctl update apply --no-wait", CMD).unwrap();
    assert!(out.contains("installing 0.3.0 to slot A"), "{out}");
    vm.wait_for(&format!("broke at byte {}", 20 << 20), BOOT).unwrap();
    vm.wait_for("resuming, 1 of 5", CMD).unwrap();
    vm.wait_for("installed basalt_0.3.0_a+3.efi on the ESP", BOOT).unwrap();
    ready(&mut vm, "0.3.0", "A");
    wait_blessed(&mut vm);

    // An explicit rollback returns to 0.2.0, which then does not take 0.3.0 again.
    // (Sent, not run: the machine reboots right after the answer.)
    vm.send("basaltctl update rollback").unwrap();
    vm.wait_for("rolled back on request from 0.3.0 (slot A) to 0.2.0 (slot B)", CMD).unwrap();
    ready(&mut vm, "0.2.0", "B");
    let check = vm.run_ok("basaltctl update check", CMD).unwrap();
    assert!(check.contains("0.3.0 failed its health checks on this machine before; not retrying it"), "{check}");

    // 0.4.0 cannot boot: after its tries the loader goes back to 0.2.0, which says so.
    let v4_release = repo.release("0.4.0", "payloads/basalt-0.4.0.payload", None);
    repo.publish(v4_release, LATER, &[&next_channel_key]);
    let out = vm.run_ok("basaltctl update apply --no-wait", CMD).unwrap();
    assert!(out.contains("installing 0.4.0 to slot A"), "{out}");
    vm.wait_for("installed basalt_0.4.0_a+3.efi on the ESP", BOOT).unwrap();
    let mut panics = 0;
    loop {
        let (i, _) = vm.wait_for_any(&["Kernel panic", "basalt: ready"], Duration::from_secs(300), true).unwrap();
        if i == 1 {
            break;
        }
        panics += 1;
    }
    let rest = vm.wait_for("\n", CMD).unwrap();
    assert!(rest.contains("version=0.2.0 slot=B"), "back on {rest}");
    vm.wait_for("rollback: 0.4.0 did not pass its health checks", CMD).unwrap();
    assert_eq!(panics, 3, "0.4.0 gets three tries");
    let status = vm.run_ok("basaltctl update status", CMD).unwrap();
    assert!(status.contains("0.4.0 did not pass its health checks") && status.contains("0 tries left after 3 boot(s)"), "{status}");
    let (code, out) = vm.run("basaltctl update rollback --no-reboot", CMD).unwrap();
    assert!(code != 0 && out.contains("has no tries left"), "{out}");
    vm.power_cut().unwrap();
}
