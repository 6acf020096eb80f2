//! How basalt boots an image in QEMU: OVMF firmware (code read-only, a private
//! copy of the variable store), the image behind a qcow2 overlay so the
//! original stays untouched, virtio disk and network, user networking with a
//! forwarded ssh port, and by default the fw_cfg entry that lets an image
//! built with `console_shell: hypervisor` start its console shell.
//! `basalt run` and the end-to-end tests share it.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

pub const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
pub const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

/// KVM only when it actually works: /dev/kvm can exist yet refuse to create
/// a VM, or create one whose vCPUs QEMU cannot set up (restricted nested
/// hosts abort on MSR writes). So: try KVM_CREATE_VM, then start a paused
/// QEMU with KVM and see that it stays up. `BASALT_ACCEL=tcg|kvm` overrides.
pub fn detect_accel() -> Accel {
    static DETECTED: std::sync::OnceLock<Accel> = std::sync::OnceLock::new();
    *DETECTED.get_or_init(|| match std::env::var("BASALT_ACCEL").as_deref() {
        Ok("tcg") => Accel::Tcg,
        Ok("kvm") => Accel::Kvm,
        _ if kvm_device_works() && kvm_qemu_works() => Accel::Kvm,
        _ => Accel::Tcg,
    })
}

fn kvm_qemu_works() -> bool {
    let child = Command::new("qemu-system-x86_64")
        .args(["-accel", "kvm", "-cpu", "host", "-machine", "q35", "-nodefaults", "-display", "none", "-m", "64", "-S"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
    let Ok(mut child) = child else { return false };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while std::time::Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    true
}

fn kvm_device_works() -> bool {
    const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;
    const KVM_CREATE_VM: libc::c_ulong = 0xAE01;
    // SAFETY: a NUL-terminated literal path; no O_CREAT, so no mode argument.
    let fd = unsafe { libc::open(c"/dev/kvm".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if fd < 0 {
        return false;
    }
    // SAFETY: `fd` is an open /dev/kvm descriptor; KVM_GET_API_VERSION takes
    // no argument (0) and touches no memory of ours.
    let ok = unsafe { libc::ioctl(fd, KVM_GET_API_VERSION, 0) } == 12 && {
        // SAFETY: as above; KVM_CREATE_VM's argument is the machine type, 0
        // the default, and it returns a new descriptor or -1.
        let vm = unsafe { libc::ioctl(fd, KVM_CREATE_VM, 0) };
        if vm >= 0 {
            // SAFETY: `vm` is the descriptor just created, closed once.
            unsafe { libc::close(vm) };
        }
        vm >= 0
    };
    // SAFETY: `fd` was opened above and is closed once, here.
    unsafe { libc::close(fd) };
    ok
}

#[derive(Debug, Clone)]
pub struct VmConfig {
    /// The disk image; it is opened read-only behind an overlay.
    pub image: PathBuf,
    /// The image's QEMU format name: raw (the default), qcow2, vmdk, vpc (VHD).
    pub disk_format: String,
    /// Directory for the overlay, the firmware variables and sockets.
    pub state_dir: PathBuf,
    pub memory_mib: u32,
    pub cpus: u32,
    /// Host port forwarded to the guest's port 22 (0: none).
    pub ssh_port: u16,
    /// More TCP forwards, (host port on 127.0.0.1, guest port).
    pub port_forwards: Vec<(u16, u16)>,
    /// Grow the overlay to this many bytes (a larger disk than the image).
    pub disk_bytes: Option<u64>,
    /// Use the image itself as the disk, not an overlay (it will be written).
    pub direct: bool,
    /// QEMU fw_cfg entries, (name, file): `opt/org.basalt/user-data` is
    /// cloud-config's first datasource. QEMU reads the file when it starts.
    pub fw_cfg: Vec<(String, PathBuf)>,
    /// More raw disks after the boot disk (virtio, writable), e.g. a NoCloud seed.
    pub extra_disks: Vec<PathBuf>,
    /// Set fw_cfg `opt/org.basalt/console-shell` to `1`: an image built with
    /// `console_shell: hypervisor` then offers its root shell on the serial
    /// console (default true; false boots it as EC2 or hardware would).
    pub console_shell: bool,
}

impl VmConfig {
    pub fn new(image: &Path, state_dir: &Path) -> VmConfig {
        VmConfig {
            image: image.to_owned(),
            disk_format: "raw".into(),
            state_dir: state_dir.to_owned(),
            memory_mib: 1024,
            cpus: 2,
            ssh_port: 0,
            port_forwards: Vec::new(),
            disk_bytes: None,
            direct: false,
            fw_cfg: Vec::new(),
            extra_disks: Vec::new(),
            console_shell: true,
        }
    }

    pub fn overlay_path(&self) -> PathBuf {
        self.state_dir.join("disk.qcow2")
    }

    /// Creates the overlay and the firmware variable store.
    pub fn prepare(&self) -> Result<()> {
        std::fs::create_dir_all(&self.state_dir)?;
        for f in [OVMF_CODE, OVMF_VARS] {
            if !Path::new(f).exists() {
                bail!("{f} is missing; install Debian's ovmf package (make deps)");
            }
        }
        std::fs::copy(OVMF_VARS, self.state_dir.join("OVMF_VARS.fd")).context("copying OVMF variables")?;
        if self.direct {
            return Ok(());
        }
        let image = std::fs::canonicalize(&self.image).with_context(|| format!("image {}", self.image.display()))?;
        let mut cmd = Command::new("qemu-img");
        cmd.args(["create", "-q", "-f", "qcow2", "-F", &self.disk_format, "-b"]).arg(&image).arg(self.overlay_path());
        if let Some(bytes) = self.disk_bytes {
            cmd.arg(bytes.to_string());
        }
        let out = cmd.output().context("running qemu-img (install qemu-utils)")?;
        if !out.status.success() {
            bail!("qemu-img create failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// The QEMU command, without the serial and monitor wiring (callers add it).
    pub fn command(&self, accel: Accel) -> Command {
        let mut c = Command::new("qemu-system-x86_64");
        c.args(["-machine", "q35", "-nodefaults", "-no-user-config", "-display", "none"]);
        match accel {
            Accel::Kvm => c.args(["-accel", "kvm", "-cpu", "host"]),
            Accel::Tcg => c.args(["-accel", "tcg", "-cpu", "max"]),
        };
        c.args(["-m", &self.memory_mib.to_string(), "-smp", &self.cpus.to_string()]);
        c.arg("-drive").arg(format!("if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"));
        c.arg("-drive").arg(format!("if=pflash,format=raw,unit=1,file={}", self.state_dir.join("OVMF_VARS.fd").display()));
        let (disk, format) = if self.direct { (self.image.clone(), self.disk_format.as_str()) } else { (self.overlay_path(), "qcow2") };
        c.arg("-drive").arg(format!("if=none,id=disk0,format={format},file={}", disk.display()));
        c.args(["-device", "virtio-blk-pci,drive=disk0,bootindex=0"]);
        for (i, extra) in self.extra_disks.iter().enumerate() {
            c.arg("-drive").arg(format!("if=none,id=extra{i},format=raw,file={}", extra.display()));
            c.arg("-device").arg(format!("virtio-blk-pci,drive=extra{i}"));
        }
        for (name, file) in &self.fw_cfg {
            c.arg("-fw_cfg").arg(format!("name={name},file={}", file.display()));
        }
        if self.console_shell {
            c.arg("-fw_cfg").arg(format!("name={},string=1", basalt_fwcfg::CONSOLE_SHELL_ENTRY));
        }
        let mut net = "user,id=net0".to_string();
        if self.ssh_port != 0 {
            net.push_str(&format!(",hostfwd=tcp:127.0.0.1:{}-:22", self.ssh_port));
        }
        for (host, guest) in &self.port_forwards {
            net.push_str(&format!(",hostfwd=tcp:127.0.0.1:{host}-:{guest}"));
        }
        c.args(["-netdev", &net, "-device", "virtio-net-pci,netdev=net0"]);
        c.args(["-device", "virtio-rng-pci"]);
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(cfg: &VmConfig) -> Vec<String> {
        cfg.command(Accel::Tcg).get_args().map(|a| a.to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn the_console_shell_entry_is_set_unless_turned_off() {
        let mut cfg = VmConfig::new(Path::new("x.img"), Path::new("/tmp/state"));
        let a = args(&cfg);
        assert!(a.windows(2).any(|w| w[0] == "-fw_cfg" && w[1] == "name=opt/org.basalt/console-shell,string=1"), "{a:?}");
        cfg.console_shell = false;
        assert!(!args(&cfg).iter().any(|a| a.contains("console-shell")));
    }
}
