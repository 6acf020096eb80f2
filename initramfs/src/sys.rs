//! Thin, checked wrappers over the system calls init needs.

use std::ffi::CString;
use std::io;
use std::path::Path;

fn cstr(s: &str) -> CString {
    CString::new(s).expect("no NUL in paths")
}

fn check(rc: libc::c_int, what: impl FnOnce() -> String) -> io::Result<()> {
    if rc < 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("{}: {e}", what())));
    }
    Ok(())
}

pub fn mount(src: &str, target: &str, fstype: &str, flags: libc::c_ulong, data: &str) -> io::Result<()> {
    let (s, t, f, d) = (cstr(src), cstr(target), cstr(fstype), cstr(data));
    // SAFETY: source, target, type and data are NUL-terminated strings that
    // outlive the call; data is null when empty, which mount allows.
    let rc = unsafe { libc::mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), flags, if data.is_empty() { std::ptr::null() } else { d.as_ptr().cast() }) };
    check(rc, || format!("mount {src} on {target} ({fstype})"))
}

pub fn move_mount(src: &str, target: &str) -> io::Result<()> {
    mount(src, target, "", libc::MS_MOVE, "")
}

pub fn chroot(path: &str) -> io::Result<()> {
    let p = cstr(path);
    // SAFETY: `p` is a NUL-terminated path that outlives the call.
    check(unsafe { libc::chroot(p.as_ptr()) }, || format!("chroot {path}"))
}

/// Loads a kernel module from a file; an already loaded module is fine.
pub fn load_module(path: &Path) -> io::Result<()> {
    let f = std::fs::File::open(path)?;
    use std::os::fd::AsRawFd;
    // SAFETY: finit_module(fd, params, flags): `f` is open for the call and the
    // parameters are an empty NUL-terminated literal.
    let rc = unsafe { libc::syscall(libc::SYS_finit_module, f.as_raw_fd(), c"".as_ptr(), 0) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            return Err(io::Error::new(e.kind(), format!("loading {}: {e}", path.display())));
        }
    }
    Ok(())
}

pub fn sync() {
    // SAFETY: sync takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

#[derive(Clone, Copy, Debug)]
pub enum Halt {
    Reboot,
    PowerOff,
}

/// The end of every shutdown, the normal one and a panic's: stray processes
/// get SIGTERM, then SIGKILL after a short wait; data is flushed, ROOT made
/// read-only (so a power-off never needs a journal replay), and the machine
/// ends. Allocates nothing, so the panic hook may call it whatever locks the
/// panicking code held.
pub fn shutdown(how: Halt) -> ! {
    // SAFETY: kill takes no pointers; -1 is every process but PID 1, which is
    // what shutdown means.
    unsafe { libc::kill(-1, libc::SIGTERM) };
    std::thread::sleep(std::time::Duration::from_millis(500));
    // SAFETY: as above.
    unsafe { libc::kill(-1, libc::SIGKILL) };
    sync();
    // SAFETY: NUL-terminated literals; an empty source and type are what a
    // remount takes, and the data pointer may be null.
    unsafe { libc::mount(c"".as_ptr(), c"/".as_ptr(), c"".as_ptr(), libc::MS_REMOUNT | libc::MS_RDONLY, std::ptr::null()) };
    sync();
    halt(how)
}

/// Ends the machine. Callers sync and unmount first (see [`shutdown`]).
pub fn halt(how: Halt) -> ! {
    let cmd = match how {
        Halt::Reboot => libc::RB_AUTOBOOT,
        Halt::PowerOff => libc::RB_POWER_OFF,
    };
    // SAFETY: reboot takes a command constant only; after it PID 1 is gone,
    // which is the point.
    unsafe { libc::reboot(cmd) };
    // reboot(2) only returns on error; PID 1 must not exit.
    loop {
        std::thread::sleep(std::time::Duration::from_secs(60));
    }
}

pub fn is_pid1() -> bool {
    std::process::id() == 1
}

/// In a child before exec: PID 1 blocks signals it waits for; a program
/// must start with none blocked.
pub fn unblock_all_signals() {
    // SAFETY: async-signal-safe calls on a sigset_t on this stack (zeroed is
    // valid for it, sigemptyset initialises it); fine in a pre_exec child.
    unsafe {
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
    }
}

/// Replaces `path` with `data` durably: written to a temporary file,
/// fsynced, renamed over `path`, and the directory fsynced.
pub fn write_durably(path: &Path, data: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("new");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}
