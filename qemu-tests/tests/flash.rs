//! `basalt flash` as a user runs it, from files and from a URL, onto files
//! standing in for disks, loop block devices and (where the machine has the
//! nbd module) a qemu-nbd device: the flashed disk boots; an interrupted flash
//! leaves a disk the firmware refuses; a corrupted source or a too-small,
//! mounted, busy or 4K-sector target is refused, and the refusals happen
//! before the image's first MiB (its partition table) reaches the target.

use basalt_qemu_tests::{basalt_bin, default_image, harness, image, require_image, Vm};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(120);
const MIB: u64 = 1 << 20;

fn flash(args: &[&str], extra_env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(basalt_bin());
    cmd.arg("flash").args(args);
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    cmd.output().expect("running basalt (BASALT_BIN)")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A copy of the built image with its .sha256, in `dir`.
fn image_copy(dir: &Path) -> PathBuf {
    let src = default_image();
    require_image(&src).unwrap();
    let copy = dir.join("basalt.img");
    assert!(Command::new("cp").arg("--sparse=always").arg(&src).arg(&copy).status().unwrap().success());
    // `basalt build` wrote the checksum next to the image; hashing it again costs seconds.
    let sums = std::fs::read_to_string(format!("{}.sha256", src.display())).unwrap_or_else(|_| String::from_utf8(Command::new("sha256sum").arg(&src).output().unwrap().stdout).unwrap());
    let hex = sums.split_whitespace().next().unwrap();
    std::fs::write(dir.join("basalt.img.sha256"), format!("{hex}  basalt.img\n")).unwrap();
    copy
}

fn blank_disk(path: &Path, bytes: u64) {
    File::create(path).unwrap().set_len(bytes).unwrap();
}

fn first_mib(path: &Path) -> Vec<u8> {
    let mut buf = vec![0u8; MIB as usize];
    File::open(path).unwrap().read_exact_at(&mut buf, 0).unwrap();
    buf
}

fn assert_no_partition_table(path: &Path) {
    let head = first_mib(path);
    assert!(head.iter().all(|&b| b == 0), "the first MiB of {} is not blank", path.display());
    assert!(image::gpt(path).is_err(), "{} still has a GPT", path.display());
}

/// Boots `disk` and returns (0, console) once basalt came up, or (1 or 2,
/// console) once OVMF gave up on the disk: with no boot option left it starts
/// its built-in shell (or, in other builds, says there is nothing to boot).
fn boot_outcome(name: &str, disk: &Path) -> (usize, String) {
    let mut vm = Vm::boot(name, disk).unwrap();
    let r = vm.wait_for_any(&["basalt: ready", "UEFI Interactive Shell", "No bootable option or device was found"], BOOT, false).unwrap();
    vm.power_cut().unwrap();
    r
}

fn a_flashed_disk_boots_with_its_cloud_config_and_keeps_oem_on_reflash() {
    let dir = tempfile::tempdir().unwrap();
    let img = image_copy(dir.path());
    let zst = dir.path().join("basalt.img.zst");
    let o = Command::new(basalt_bin()).arg("convert").arg(&img).args(["--format", "raw.zst", "-o"]).arg(&zst).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let user_data = dir.path().join("user-data");
    std::fs::write(&user_data, "#cloud-config\nhostname: flashed\n").unwrap();

    // A disk larger than the image, from the compressed image, with a cloud-config.
    let disk = dir.path().join("disk.raw");
    let image_bytes = std::fs::metadata(&img).unwrap().len();
    blank_disk(&disk, image_bytes + 512 * MIB);
    let o = flash(&[s(&zst), s(&disk), "--cloud-config", s(&user_data)], &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("flashed"), "{}", text(&o));

    // Byte for byte the image, except OEM, which now holds the cloud-config.
    let oem = image::gpt(&img).unwrap().partition(6).unwrap().clone();
    let oem_file = dir.path().join("oem.fat");
    image::extract_partition(&disk, 6, &oem_file).unwrap();
    assert_eq!(image::fat_read(&oem_file, "cloud-config.yml").unwrap(), b"#cloud-config\nhostname: flashed\n");
    let cmp = |from: u64, to: u64| {
        let o = Command::new("cmp").arg(format!("--ignore-initial={from}")).arg(format!("--bytes={}", to - from)).arg(&img).arg(&disk).output().unwrap();
        assert!(o.status.success(), "disk differs from the image in {from}..{to}: {}", text(&o));
    };
    cmp(0, oem.offset_bytes());
    cmp(oem.offset_bytes() + oem.size_bytes(), image_bytes);

    // It boots; first boot moves the backup GPT from where the image ended to
    // the end of this larger disk, after which sgdisk finds nothing wrong.
    let mut vm = Vm::boot("flashed_disk", &disk).unwrap();
    vm.wait_ready(BOOT).unwrap_or_else(|e| panic!("the flashed disk did not boot: {e:#}"));
    vm.power_cut().unwrap();
    let after = dir.path().join("after-first-boot.raw");
    let o = Command::new("qemu-img").args(["convert", "-O", "raw"]).arg(vm.overlay_path()).arg(&after).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    drop(vm);
    let o = Command::new("sgdisk").arg("-v").arg(&after).output().unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).contains("No problems found"), "sgdisk -v after first boot: {}", text(&o));
    assert_eq!(image::gpt(&after).unwrap().backup_lba + 1, (image_bytes + 512 * MIB) / 512, "the backup GPT is at the end of the disk");
    std::fs::remove_file(&after).unwrap();

    // Reflash the plain image keeping OEM: the cloud-config survives.
    let o = flash(&[s(&img), s(&disk), "--keep-partition", "OEM"], &[]);
    assert!(o.status.success(), "{}", text(&o));
    image::extract_partition(&disk, 6, &oem_file).unwrap();
    assert_eq!(image::fat_read(&oem_file, "cloud-config.yml").unwrap(), b"#cloud-config\nhostname: flashed\n");
    // Without --keep-partition, OEM is the image's (empty) one again.
    let o = flash(&[s(&img), s(&disk)], &[]);
    assert!(o.status.success(), "{}", text(&o));
    image::extract_partition(&disk, 6, &oem_file).unwrap();
    assert!(image::fat_read(&oem_file, "cloud-config.yml").is_err());
    // Keeping a partition the image does not have is refused up front.
    let o = flash(&[s(&img), s(&disk), "--keep-partition", "DATA"], &[]);
    assert!(!o.status.success() && text(&o).contains("the image has no partition labelled DATA"), "{}", text(&o));
}

fn an_interrupted_flash_over_a_bootable_disk_leaves_it_unbootable() {
    let dir = tempfile::tempdir().unwrap();
    let img = image_copy(dir.path());
    // The target starts out as a working basalt disk.
    let disk = dir.path().join("disk.raw");
    assert!(Command::new("cp").arg("--sparse=always").arg(&img).arg(&disk).status().unwrap().success());
    let o = flash(&[s(&img), s(&disk)], &[("BASALT_FLASH_TEST_KILL_AFTER", &(1024 * MIB).to_string())]);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(o.status.signal(), Some(9), "the flash was to be killed midway: {}", text(&o));
    assert_no_partition_table(&disk);
    let (which, console) = boot_outcome("interrupted_flash", &disk);
    assert_ne!(which, 0, "firmware should find nothing to boot:\n{console}");
    // OVMF says why: the disk's boot option has nothing to load.
    assert!(console.contains("BdsDxe: failed to load"), "{console}");
    assert!(!console.contains("basalt: ready") && !console.contains("Linux version"), "{console}");
}

fn a_corrupted_source_is_refused_before_the_first_mib_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let img = image_copy(dir.path());
    // Flip a byte in USR-A after the checksum was taken.
    let usr_a = image::gpt(&img).unwrap().partition(3).unwrap().clone();
    let f = std::fs::OpenOptions::new().read(true).write(true).open(&img).unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, usr_a.offset_bytes() + 4096).unwrap();
    f.write_all_at(&[b[0] ^ 0x80], usr_a.offset_bytes() + 4096).unwrap();
    drop(f);
    let disk = dir.path().join("disk.raw");
    blank_disk(&disk, std::fs::metadata(&img).unwrap().len());
    let o = flash(&[s(&img), s(&disk)], &[]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(t.contains("sha256 mismatch") && t.contains("partition table was wiped"), "{t}");
    assert_no_partition_table(&disk);

    // A wrong --sha256 is the same refusal.
    let o = flash(&[s(&img), s(&disk), "--sha256", &"0".repeat(64)], &[]);
    assert!(!o.status.success() && text(&o).contains("sha256 mismatch"), "{}", text(&o));
    assert_no_partition_table(&disk);
}

fn a_too_small_target_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let img = image_copy(dir.path());
    let disk = dir.path().join("small.raw");
    std::fs::write(&disk, vec![0xa5u8; 64 << 20]).unwrap();
    let o = flash(&[s(&img), s(&disk)], &[]);
    assert!(!o.status.success());
    assert!(text(&o).contains("small.raw is too small: 67108864 bytes, the image needs"), "{}", text(&o));
    assert!(std::fs::read(&disk).unwrap().iter().all(|&b| b == 0xa5), "a refused target must be untouched");
    // Without the .sha256 next to it and without --sha256, nothing is flashed.
    std::fs::remove_file(dir.path().join("basalt.img.sha256")).unwrap();
    let o = flash(&[s(&img), s(&disk)], &[]);
    assert!(!o.status.success() && text(&o).contains("--sha256"), "{}", text(&o));
}

/// Serves the files of `dir` over HTTP on a loopback port (GET, one request
/// per connection); returns the base URL.
fn serve(dir: &Path) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let dir = dir.to_owned();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let dir = dir.clone();
            std::thread::spawn(move || answer(conn, &dir));
        }
    });
    base
}

fn answer(mut conn: std::net::TcpStream, dir: &Path) -> std::io::Result<()> {
    use std::io::{BufRead, Write};
    let mut reader = std::io::BufReader::new(conn.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? <= 2 {
            break;
        }
    }
    let name = request.split_whitespace().nth(1).unwrap_or("/").trim_start_matches('/').to_string();
    match File::open(dir.join(&name)) {
        Ok(mut f) if !name.is_empty() && !name.contains("..") => {
            write!(conn, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", f.metadata()?.len())?;
            std::io::copy(&mut f, &mut conn)?;
        }
        _ => write!(conn, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?,
    }
    Ok(())
}

fn a_download_is_flashed_from_a_url_and_a_cut_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let img = image_copy(dir.path());
    let image_bytes = std::fs::metadata(&img).unwrap().len();
    let web = dir.path().join("web");
    std::fs::create_dir(&web).unwrap();
    let zst = web.join("basalt.img.zst");
    let o = Command::new(basalt_bin()).arg("convert").arg(&img).args(["--format", "raw.zst", "-o"]).arg(&zst).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let base = serve(&web);

    // The checksum comes from URL.sha256; the disk is the image byte for byte.
    let disk = dir.path().join("disk.raw");
    blank_disk(&disk, image_bytes);
    let o = flash(&[&format!("{base}/basalt.img.zst"), s(&disk)], &[]);
    assert!(o.status.success(), "{}", text(&o));
    let o = Command::new("cmp").arg(&img).arg(&disk).output().unwrap();
    assert!(o.status.success(), "disk differs from the image: {}", text(&o));

    // A download cut short, served with the checksum of the whole file:
    // refused, and the disk is left without a partition table.
    let packed = std::fs::read(&zst).unwrap();
    std::fs::write(web.join("cut.img.zst"), &packed[..packed.len() / 2]).unwrap();
    let sum = std::fs::read_to_string(web.join("basalt.img.zst.sha256")).unwrap().replace("basalt.img.zst", "cut.img.zst");
    std::fs::write(web.join("cut.img.zst.sha256"), sum).unwrap();
    let o = flash(&[&format!("{base}/cut.img.zst"), s(&disk)], &[]);
    assert!(!o.status.success() && text(&o).contains("partition table was wiped"), "{}", text(&o));
    assert_no_partition_table(&disk);

    // No checksum published: nothing is written.
    File::options().write(true).open(&disk).unwrap().write_all_at(&[0xa5; 4096], 0).unwrap();
    std::fs::remove_file(web.join("basalt.img.zst.sha256")).unwrap();
    let o = flash(&[&format!("{base}/basalt.img.zst"), s(&disk)], &[]);
    assert!(!o.status.success() && text(&o).contains("basalt.img.zst.sha256") && text(&o).contains("--sha256"), "{}", text(&o));
    assert!(first_mib(&disk)[..4096].iter().all(|&b| b == 0xa5), "a refused flash must not touch the disk");
}

/// A free NBD device, or why there is none here: the nbd module is missing
/// and cannot be loaded, or every device is in use.
fn free_nbd_device() -> Result<String, String> {
    if !Path::new("/sys/module/nbd").exists() {
        match Command::new("modprobe").arg("nbd").output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => return Err(format!("no nbd module (modprobe nbd: {})", text(&o).trim())),
            Err(e) => return Err(format!("no nbd module, and modprobe cannot run: {e}")),
        }
    }
    for i in 0..16 {
        let sys = format!("/sys/block/nbd{i}");
        let unused = std::fs::read_to_string(format!("{sys}/size")).is_ok_and(|s| s.trim() == "0") && !Path::new(&format!("{sys}/pid")).exists();
        if unused && Path::new(&format!("/dev/nbd{i}")).exists() {
            return Ok(format!("/dev/nbd{i}"));
        }
    }
    Err("the nbd module is loaded but no /dev/nbdN is free".to_string())
}

/// A qemu-nbd connection, disconnected (and flushed) when dropped.
struct Nbd(String);

impl Drop for Nbd {
    fn drop(&mut self) {
        let _ = Command::new("qemu-nbd").arg("--disconnect").arg(&self.0).output();
    }
}

fn an_nbd_device_made_by_qemu_nbd_is_flashed_and_boots(dev: String) {
    let dir = tempfile::tempdir().unwrap();
    let img = image_copy(dir.path());
    let image_bytes = std::fs::metadata(&img).unwrap().len();
    let disk = dir.path().join("disk.qcow2");
    let o = Command::new("qemu-img").args(["create", "-q", "-f", "qcow2"]).arg(&disk).arg((image_bytes + 256 * MIB).to_string()).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let o = Command::new("qemu-nbd").args(["--format", "qcow2", "--connect", &dev]).arg(&disk).output().unwrap();
    assert!(o.status.success(), "qemu-nbd --connect: {}", text(&o));
    let nbd = Nbd(dev.clone());
    let size = format!("/sys/block/{}/size", dev.trim_start_matches("/dev/"));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::fs::read_to_string(&size).map_or(true, |s| s.trim() == "0") {
        assert!(std::time::Instant::now() < deadline, "{dev} never got a size");
        std::thread::sleep(Duration::from_millis(100));
    }

    let o = flash(&[s(&img), &dev], &[]);
    assert!(o.status.success(), "{}", text(&o));
    let o = Command::new("cmp").arg(format!("--bytes={image_bytes}")).arg(&img).arg(&dev).output().unwrap();
    assert!(o.status.success(), "{dev} differs from the image: {}", text(&o));
    drop(nbd);

    let mut vm = Vm::boot_with("nbd_flashed", &disk, |c| c.disk_format = "qcow2".to_string()).unwrap();
    vm.wait_ready(BOOT).unwrap_or_else(|e| panic!("the disk flashed through NBD did not boot: {e:#}"));
    vm.power_cut().unwrap();
}

/// A loop device over a file, detached when dropped.
struct Loop(String);

impl Loop {
    fn attach(file: &Path, sector: u32) -> Loop {
        let o = Command::new("losetup").args(["--find", "--show", "--sector-size", &sector.to_string()]).arg(file).output().expect("losetup (util-linux) is needed to test flashing block devices");
        assert!(o.status.success(), "losetup failed (the loop driver and root are needed): {}", text(&o));
        Loop(String::from_utf8_lossy(&o.stdout).trim().to_string())
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

fn block_devices_are_flashed_and_refused_when_busy_mounted_or_4k() {
    let dir = tempfile::tempdir().unwrap();
    let img = image_copy(dir.path());
    let image_bytes = std::fs::metadata(&img).unwrap().len();
    let backing = dir.path().join("backing.raw");
    blank_disk(&backing, image_bytes + 64 * MIB);

    // 4096-byte logical sectors: the image's GPT would be misplaced.
    {
        let dev = Loop::attach(&backing, 4096);
        let o = flash(&[s(&img), &dev.0], &[]);
        assert!(!o.status.success() && text(&o).contains("4096-byte logical sectors"), "{}", text(&o));
    }

    let dev = Loop::attach(&backing, 512);
    // Another program holds it exclusively.
    {
        use std::os::unix::fs::OpenOptionsExt;
        let _held = std::fs::OpenOptions::new().read(true).custom_flags(libc_o_excl()).open(&dev.0).unwrap();
        let o = flash(&[s(&img), &dev.0], &[]);
        assert!(!o.status.success() && text(&o).contains("is busy"), "{}", text(&o));
    }
    // Mounted.
    {
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        assert!(Command::new("mkfs.ext4").args(["-q", &dev.0]).status().unwrap().success());
        let o = Command::new("mount").arg(&dev.0).arg(&mnt).output().unwrap();
        assert!(o.status.success(), "mount: {}", text(&o));
        let o = flash(&[s(&img), &dev.0], &[]);
        let _ = Command::new("umount").arg(&mnt).status();
        assert!(!o.status.success() && text(&o).contains(&format!("{} is mounted at {}", dev.0, mnt.display())), "{}", text(&o));
    }
    // Free: flashed, every byte of the image on the device.
    let o = flash(&[s(&img), &dev.0], &[]);
    assert!(o.status.success(), "{}", text(&o));
    let o = Command::new("cmp").arg(format!("--bytes={image_bytes}")).arg(&img).arg(&dev.0).output().unwrap();
    assert!(o.status.success(), "device differs from the image: {}", text(&o));
}

fn libc_o_excl() -> i32 {
    0o200 // O_EXCL on Linux
}

fn main() {
    let mut tests: Vec<_> = [
        ("a_flashed_disk_boots_with_its_cloud_config_and_keeps_oem_on_reflash", a_flashed_disk_boots_with_its_cloud_config_and_keeps_oem_on_reflash as fn()),
        ("an_interrupted_flash_over_a_bootable_disk_leaves_it_unbootable", an_interrupted_flash_over_a_bootable_disk_leaves_it_unbootable as fn()),
        ("a_corrupted_source_is_refused_before_the_first_mib_is_written", a_corrupted_source_is_refused_before_the_first_mib_is_written as fn()),
        ("a_too_small_target_is_refused_untouched", a_too_small_target_is_refused_untouched as fn()),
        ("a_download_is_flashed_from_a_url_and_a_cut_one_is_refused", a_download_is_flashed_from_a_url_and_a_cut_one_is_refused as fn()),
        ("block_devices_are_flashed_and_refused_when_busy_mounted_or_4k", block_devices_are_flashed_and_refused_when_busy_mounted_or_4k as fn()),
    ]
    .into_iter()
    .map(|(name, run)| harness::test(name, run))
    .collect();
    let nbd = "an_nbd_device_made_by_qemu_nbd_is_flashed_and_boots";
    tests.push(match free_nbd_device() {
        Ok(dev) => libtest_mimic::Trial::test(nbd, move || {
            an_nbd_device_made_by_qemu_nbd_is_flashed_and_boots(dev);
            Ok(())
        }),
        Err(why) => harness::skipped(nbd, &why),
    });
    harness::main(tests)
}
