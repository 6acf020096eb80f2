//! A panic in PID 1 ends in the clean reboot path, with its message logged.
//!
//! Builds `init` with the test-only `panic-trigger` feature (into its own
//! target directory, so the release `init` the image takes is never that
//! build) and runs it as PID 1 of a new PID and mount namespace, chrooted
//! into a private tmpfs: its shutdown's kill(-1), remount of / read-only and
//! reboot(2) then reach only that namespace and that tmpfs. reboot(2) from a
//! PID namespace's init ends the namespace, and its init's wait status is
//! SIGHUP for RB_AUTOBOOT (SIGINT would be a halt or power-off); a panic that
//! escaped the hook would be SIGABRT, one that hung would time out.
//! What a namespace cannot show is the real machine rebooting; the
//! end-to-end boot does that.

use std::ffi::CString;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn target_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| manifest.join("../target"))
}

/// `init` built with `--features panic-trigger`, apart from the release build.
fn init_with_panic_trigger() -> PathBuf {
    let dir = target_dir().join("panic-trigger");
    let status = Command::new(env!("CARGO"))
        .args(["build", "--release", "-p", "basalt-init", "--bin", "init", "--features", "panic-trigger", "--target-dir"])
        .arg(&dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("running cargo build");
    assert!(status.success(), "building init with panic-trigger failed");
    let bin = dir.join("x86_64-unknown-linux-gnu/release/init");
    assert!(bin.exists(), "{} was not built", bin.display());
    bin
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn check(rc: libc::c_int) -> std::io::Result<()> {
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[test]
fn a_panic_in_pid1_is_logged_and_ends_in_reboot_not_abort() {
    // SAFETY: geteuid takes no arguments and cannot fail.
    assert_eq!(unsafe { libc::geteuid() }, 0, "this test needs root: a PID namespace and mounts (make test runs as root)");
    let bin = init_with_panic_trigger();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let (c_root, c_proc, c_init, c_bin) = (cpath(&root), cpath(&root.join("proc")), cpath(&root.join("init")), cpath(&bin));

    // New PID namespace for this thread's children: the init spawned below is its PID 1.
    // SAFETY: unshare takes flags only; CLONE_NEWPID changes only which
    // namespace this thread's future children are born in (this thread forks
    // nothing else after the spawn).
    check(unsafe { libc::unshare(libc::CLONE_NEWPID) }).expect("unshare(CLONE_NEWPID)");
    let mut cmd = Command::new("/init");
    cmd.env_clear().env("BASALT_PANIC_TEST", "1").stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    // SAFETY: runs in the forked child before exec and makes only system
    // calls on CStrings made before the fork (no allocation, no locks). The
    // mount namespace is made private before anything is mounted, so no
    // mount propagates to the host; init's remount of / read-only then meets
    // the tmpfs it is chrooted into.
    unsafe {
        cmd.pre_exec(move || {
            check(libc::unshare(libc::CLONE_NEWNS))?;
            check(libc::mount(std::ptr::null(), c"/".as_ptr(), std::ptr::null(), libc::MS_REC | libc::MS_PRIVATE, std::ptr::null()))?;
            check(libc::mount(c"tmpfs".as_ptr(), c_root.as_ptr(), c"tmpfs".as_ptr(), 0, c"mode=0755".as_ptr().cast()))?;
            check(libc::mkdir(c_proc.as_ptr(), 0o555))?;
            check(libc::mount(c"proc".as_ptr(), c_proc.as_ptr(), c"proc".as_ptr(), libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC, std::ptr::null()))?;
            let fd = libc::open(c_init.as_ptr(), libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC, 0o755);
            check(fd)?;
            libc::close(fd);
            check(libc::mount(c_bin.as_ptr(), c_init.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null()))?;
            check(libc::chroot(c_root.as_ptr()))?;
            check(libc::chdir(c"/".as_ptr()))?;
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("starting init as PID 1 of a new PID namespace");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("init did not end within 30 s of its panic (a hook that hangs?)");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut out = String::new();
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();

    assert!(out.contains("basalt: error: init panicked: panic test trigger in stage 1 (BASALT_PANIC_TEST=1) at initramfs/src/panic.rs:"), "stdout: {out}\nstderr: {err}");
    assert!(out.contains("basalt: rebooting after the panic"), "stdout: {out}\nstderr: {err}");
    assert_eq!(status.signal(), Some(libc::SIGHUP), "init should end through reboot(RB_AUTOBOOT) (SIGHUP), not {status:?} (SIGABRT is a panic the hook let through)\nstdout: {out}\nstderr: {err}");
}
