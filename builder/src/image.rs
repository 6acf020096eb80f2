//! `basalt build`: spec → /usr tree → USR slot (squashfs + dm-verity) →
//! initramfs → UKI → ESP → GPT disk. Each partition is built as a file and
//! placed into the disk image; no root, no mounts, no loop devices.

use crate::inputs::{cache_dir, Lock};
use crate::modules::ModuleSet;
use crate::spec::{ConsoleShell, Spec};
use crate::tree::Tree;
use crate::{boot, usr};
use anyhow::{bail, Context, Result};
use basalt_deb::EntryKind;
use basalt_disk::layout::{self, Slot};
use basalt_disk::Guid;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// Where a development image carries `--authorized-key` keys for `core`.
pub const DEV_AUTHORIZED_KEYS: &str = "/usr/share/basalt/dev-authorized-keys";

pub struct BuildOptions {
    pub spec_path: PathBuf,
    pub lock_path: PathBuf,
    pub output: PathBuf,
    /// Where `init` (and later the agents) were built.
    pub bin_dir: PathBuf,
    pub epoch: u64,
    /// Development images: ssh public keys for `core`, installed on first boot.
    pub authorized_keys: Option<String>,
}

#[derive(Debug)]
pub struct BuildReport {
    pub output: PathBuf,
    pub uki_name: String,
    pub uki_bytes: u64,
    pub initramfs_bytes: u64,
    pub usr_tree_bytes: u64,
    pub usr_fs_bytes: u64,
    pub usr_slot_used_bytes: u64,
    pub verity_root_hash: String,
    pub console_shell: ConsoleShell,
    pub disk_bytes: u64,
    pub seconds: f64,
}

/// The kernel command line of a slot's UKI: everything init needs to find
/// and verify its /usr, and whether it may offer a console shell (which
/// `basalt flash` and `publish` read back from the image).
pub fn slot_cmdline(slot: Slot, usr_partuuid: &Guid, verity: &basalt_verity::VerityParams, console_shell: ConsoleShell, extra: &[String]) -> String {
    let mut words = vec![
        format!("basalt.slot={}", slot.letter()),
        format!("basalt.usr=PARTUUID={usr_partuuid}"),
        format!("basalt.usr_hash={}", verity.root_hash_hex()),
        format!("basalt.usr_salt={}", verity.salt_hex()),
        format!("basalt.usr_blocks={}", verity.data_blocks),
        console_shell.cmdline_word(),
    ];
    words.extend(extra.iter().cloned());
    words.join(" ")
}

/// UKI file name under EFI/Linux/: systemd-boot sorts UKIs by IMAGE_VERSION
/// from .osrel; the slot letter keeps two slots of one version apart.
pub fn uki_file_name(name: &str, version: &str, slot: Slot) -> String {
    format!("{name}_{version}_{}.efi", slot.letter().to_lowercase())
}

fn derived_bytes(parts: &[&str]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_le_bytes());
        h.update(p.as_bytes());
    }
    h.finalize().into()
}

pub fn build(opts: &BuildOptions) -> Result<BuildReport> {
    let started = Instant::now();
    let spec = Spec::load(&opts.spec_path)?;
    for w in &spec.warnings {
        eprintln!("basalt: warning: {}: {w}", opts.spec_path.display());
    }
    let spec_dir = opts.spec_path.parent().unwrap_or(Path::new(".")).to_path_buf();
    let lock = Lock::load(&opts.lock_path)?;
    let cache = cache_dir();
    let mtime = u32::try_from(opts.epoch).context("SOURCE_DATE_EPOCH beyond 2106")?;
    let sizes = spec.partitions.sizes();

    // Inputs, each checked against the lock before it is read.
    let kernel_deb = lock.pin(&spec.kernel)?.verified(&cache)?;
    let boot_deb = lock.pin("systemd-boot-efi")?.verified(&cache)?;
    let mut package_debs = Vec::new();
    for p in &spec.packages {
        package_debs.push(lock.pin(p)?.verified(&cache)?);
    }

    // Kernel: image, version, modules.
    let kernel_entries = basalt_deb::read_data(&kernel_deb)?;
    let mut vmlinuz = None;
    let mut modules = ModuleSet::default();
    let mut kver = None;
    let mut tree = Tree::default();
    for e in &kernel_entries {
        if let (Some(v), EntryKind::File(data)) = (e.path.strip_prefix("/boot/vmlinuz-"), &e.kind) {
            vmlinuz = Some(data.clone());
            kver = Some(v.to_string());
        }
    }
    let (Some(vmlinuz), Some(kver)) = (vmlinuz, kver) else {
        bail!("{}: no /boot/vmlinuz-* in the kernel package", kernel_deb.display());
    };
    let mod_root = format!("/lib/modules/{kver}/");
    for e in &kernel_entries {
        if let (Some(rel), EntryKind::File(data)) = (e.path.strip_prefix(&mod_root), &e.kind) {
            if rel.ends_with(".ko") {
                modules.add(rel, data)?;
            }
        }
    }
    tree.add_package(&kernel_entries)?;
    drop(kernel_entries);
    let usr_mod = format!("/usr/lib/modules/{kver}");
    tree.file(&format!("{usr_mod}/modules.dep"), 0o644, modules.modules_dep()?.into_bytes())?;
    tree.file(&format!("{usr_mod}/modules.alias"), 0o644, modules.modules_alias().into_bytes())?;

    for deb in &package_debs {
        tree.add_package(&basalt_deb::read_data(deb)?)?;
    }
    add_busybox_links(&mut tree)?;

    // Our own programs and files.
    let init = read_bin(&opts.bin_dir, "init")?;
    tree.file("/usr/lib/basalt/init", 0o755, init.clone())?;
    tree.file("/usr/bin/basaltctl", 0o755, read_bin(&opts.bin_dir, "basaltctl")?)?;
    // sd_notify(3) for shell scripts, as on systemd machines.
    tree.symlink("/usr/bin/systemd-notify", "basaltctl")?;
    // The verbs systemd users type (see basaltctl's systemctl.rs).
    tree.symlink("/usr/bin/systemctl", "basaltctl")?;
    tree.file("/usr/lib/basalt/basalt-network", 0o755, read_bin(&opts.bin_dir, "basalt-network")?)?;
    tree.file("/usr/lib/basalt/basalt-store", 0o755, read_bin(&opts.bin_dir, "basalt-store")?)?;
    tree.file("/usr/lib/basalt/basalt-cloud-config", 0o755, read_bin(&opts.bin_dir, "basalt-cloud-config")?)?;
    tree.file("/usr/lib/basalt/basalt-runtime", 0o755, read_bin(&opts.bin_dir, "basalt-runtime")?)?;
    tree.file("/usr/lib/basalt/basalt-update", 0o755, read_bin(&opts.bin_dir, "basalt-update")?)?;
    if let Some(keys) = &opts.authorized_keys {
        tree.file(DEV_AUTHORIZED_KEYS, 0o644, keys.clone().into_bytes())?;
    }
    let os_release = boot::os_release(&spec.name, &spec.version);
    tree.file("/usr/lib/os-release", 0o644, os_release.clone().into_bytes())?;
    for f in &spec.files {
        let data = match (&f.content, &f.source) {
            (Some(c), _) => c.clone().into_bytes(),
            (_, Some(src)) => std::fs::read(spec_dir.join(src)).with_context(|| format!("spec file {}: reading {}", f.path, src.display()))?,
            _ => unreachable!("checked by Spec::check"),
        };
        tree.file(&f.path, f.mode_bits()?, data)?;
    }

    // Work in a directory next to the output; the output appears only when complete.
    let out_dir = opts.output.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(out_dir)?;
    let work = tempfile::Builder::new().prefix(".basalt-build-").tempdir_in(out_dir)?;

    // USR-A.
    let gpt = layout::plan(&spec.name, &sizes);
    let usr_a = gpt.partition(Slot::A.partition()).expect("layout has USR-A");
    let salt = derived_bytes(&[&spec.name, &spec.version, "verity-salt"]);
    let mut vuuid = [0u8; 16];
    vuuid.copy_from_slice(&derived_bytes(&[&spec.name, &spec.version, "verity-uuid"])[..16]);
    let usr_path = work.path().join("usr-a.img");
    let usr_image = usr::write(&tree, mtime, &salt, vuuid, &usr_path, usr_a.size_bytes())?;

    // Initramfs and UKI for slot A.
    let module_bytes = |rel: &str| -> Result<Vec<u8>> {
        match tree.nodes.get(&format!("{usr_mod}/{rel}")) {
            Some(crate::tree::Node::File { data, .. }) => Ok(data.to_vec()),
            _ => bail!("module file {rel} missing from the tree"),
        }
    };
    let initrd = boot::initramfs(&init, &kver, &modules, &spec.initramfs_modules, &module_bytes, mtime)?;
    let stub = deb_file(&boot_deb, "/usr/lib/systemd/boot/efi/linuxx64.efi.stub")?;
    let loader = deb_file(&boot_deb, "/usr/lib/systemd/boot/efi/systemd-bootx64.efi")?;
    let cmdline = slot_cmdline(Slot::A, &usr_a.guid, &usr_image.verity, spec.console_shell, &spec.cmdline);
    let uki = boot::uki(&stub, &os_release, &cmdline, &initrd, &vmlinuz)?;
    let uki_name = uki_file_name(&spec.name, &spec.version, Slot::A);

    // ESP and OEM.
    let esp_part = gpt.partition(layout::ESP).unwrap();
    let esp_path = work.path().join("esp.img");
    let loader_conf = "timeout 0\neditor no\nauto-entries no\nauto-firmware no\n";
    let volume_id = |what: &str| u32::from_le_bytes(derived_bytes(&[&spec.name, what])[..4].try_into().unwrap());
    boot::fat32(
        &esp_path,
        esp_part.size_bytes(),
        layout::LABEL_ESP,
        volume_id("esp"),
        opts.epoch,
        &[("EFI/BOOT/BOOTX64.EFI", &loader), ("EFI/systemd/systemd-bootx64.efi", &loader), ("loader/loader.conf", loader_conf.as_bytes()), (&format!("EFI/Linux/{uki_name}"), &uki)],
    )?;
    let oem_part = gpt.partition(layout::OEM).unwrap();
    let oem_path = work.path().join("oem.img");
    boot::fat32(&oem_path, oem_part.size_bytes(), layout::LABEL_OEM, volume_id("oem"), opts.epoch, &[])?;

    // ROOT: an empty ext4; init lays out its directories on every boot.
    let root_part = gpt.partition(layout::ROOT).unwrap();
    let root_path = work.path().join("root.img");
    mkfs_ext4(&root_path, root_part.size_bytes(), &Guid::derived(&[&spec.name, "root-fs"]), opts.epoch)?;

    // The disk.
    let disk_path = work.path().join("disk.img");
    let mut disk = File::create(&disk_path)?;
    disk.set_len(layout::disk_bytes(&sizes))?;
    gpt.write(&mut disk)?;
    for (number, part_file) in [(layout::ESP, &esp_path), (Slot::A.partition(), &usr_path), (layout::OEM, &oem_path), (layout::ROOT, &root_path)] {
        let p = gpt.partition(number).unwrap();
        copy_sparse(part_file, &mut disk, p.offset_bytes(), p.size_bytes())?;
    }
    disk.sync_all()?;
    drop(disk);
    std::fs::rename(&disk_path, &opts.output).with_context(|| format!("moving the image to {}", opts.output.display()))?;

    Ok(BuildReport {
        output: opts.output.clone(),
        uki_name,
        uki_bytes: uki.len() as u64,
        initramfs_bytes: initrd.len() as u64,
        usr_tree_bytes: tree.total_file_bytes(),
        usr_fs_bytes: usr_image.fs_bytes,
        usr_slot_used_bytes: usr_image.total_bytes(),
        verity_root_hash: usr_image.verity.root_hash_hex(),
        console_shell: spec.console_shell,
        disk_bytes: layout::disk_bytes(&sizes),
        seconds: started.elapsed().as_secs_f64(),
    })
}

fn read_bin(dir: &Path, name: &str) -> Result<Vec<u8>> {
    let p = dir.join(name);
    std::fs::read(&p).with_context(|| format!("reading {} (build it with `cargo build --release`, or pass --bin-dir)", p.display()))
}

fn deb_file(deb: &Path, path: &str) -> Result<Vec<u8>> {
    basalt_deb::read_data(deb)?
        .into_iter()
        .find_map(|e| match e.kind {
            EntryKind::File(d) if e.path == path => Some(d),
            _ => None,
        })
        .with_context(|| format!("{}: no {path}", deb.display()))
}

/// The busybox applets basalt offers as commands in /usr/bin.
const BUSYBOX_APPLETS: &[&str] = &[
    "[",
    "ash",
    "awk",
    "basename",
    "cat",
    "chgrp",
    "chmod",
    "chown",
    "cmp",
    "cp",
    "cut",
    "date",
    "dd",
    "df",
    "diff",
    "dirname",
    "dmesg",
    "du",
    "echo",
    "env",
    "expr",
    "false",
    "find",
    "free",
    "grep",
    "gunzip",
    "gzip",
    "halt",
    "head",
    "hexdump",
    "hostname",
    "id",
    "ip",
    "kill",
    "less",
    "ln",
    "ls",
    "lsmod",
    "md5sum",
    "mkdir",
    "mktemp",
    "modprobe",
    "mount",
    "mv",
    "nc",
    "nslookup",
    "od",
    "ping",
    "poweroff",
    "printf",
    "ps",
    "pwd",
    "readlink",
    "realpath",
    "reboot",
    "rm",
    "rmdir",
    "sed",
    "seq",
    "sh",
    "sha256sum",
    "sleep",
    "sort",
    "stat",
    "sync",
    "tail",
    "tar",
    "tee",
    "test",
    "top",
    "touch",
    "tr",
    "true",
    "udhcpc",
    "umount",
    "uname",
    "uniq",
    "uptime",
    "vi",
    "wc",
    "wget",
    "which",
    "whoami",
    "xargs",
    "zcat",
];

fn add_busybox_links(tree: &mut Tree) -> Result<()> {
    if !tree.nodes.contains_key("/usr/bin/busybox") {
        return Ok(());
    }
    for a in BUSYBOX_APPLETS {
        let path = format!("/usr/bin/{a}");
        if !tree.nodes.contains_key(&path) {
            tree.symlink(&path, "busybox")?;
        }
    }
    Ok(())
}

fn mkfs_ext4(path: &Path, bytes: u64, uuid: &Guid, epoch: u64) -> Result<()> {
    File::create(path)?.set_len(bytes)?;
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", "ROOT", "-b", "4096", "-U"])
        .arg(uuid.to_string())
        .arg("-E")
        .arg(format!("hash_seed={uuid},root_owner=0:0,lazy_itable_init=1,lazy_journal_init=1"))
        .arg(path)
        // e2fsprogs' hook for a fixed clock: reproducible superblock times.
        .env("E2FSPROGS_FAKE_TIME", epoch.to_string())
        .env("SOURCE_DATE_EPOCH", epoch.to_string())
        .output()
        .context("running mkfs.ext4 (install e2fsprogs)")?;
    if !out.status.success() {
        bail!("mkfs.ext4 failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Copies `src` into `dst` at `offset`, skipping holes and all-zero blocks so
/// the disk image stays sparse.
fn copy_sparse(src: &Path, dst: &mut File, offset: u64, limit: u64) -> Result<()> {
    let mut f = File::open(src)?;
    let len = f.metadata()?.len();
    if len > limit {
        bail!("{} is {len} bytes, more than its partition's {limit}", src.display());
    }
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    while pos < len {
        let n = (len - pos).min(buf.len() as u64) as usize;
        f.seek(SeekFrom::Start(pos))?;
        f.read_exact(&mut buf[..n])?;
        if buf[..n].iter().any(|&b| b != 0) {
            dst.seek(SeekFrom::Start(offset + pos))?;
            dst.write_all(&buf[..n])?;
        }
        pos += n as u64;
    }
    Ok(())
}
