//! Thin, checked wrappers over the system calls the runtime uses.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

pub fn check(rc: libc::c_int, what: impl FnOnce() -> String) -> Result<(), String> {
    if rc < 0 {
        return Err(format!("{}: {}", what(), io::Error::last_os_error()));
    }
    Ok(())
}

pub fn cstr(text: &str) -> CString {
    CString::new(text).unwrap_or_else(|_| CString::new(text.replace('\0', "")).expect("NULs removed"))
}

pub fn cpath(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).unwrap_or_else(|_| cstr(&path.to_string_lossy()))
}

pub fn mount(source: &str, target: &Path, fstype: Option<&str>, flags: libc::c_ulong, data: Option<&str>) -> Result<(), String> {
    let source_c = cstr(source);
    let target_c = cpath(target);
    let fstype_c = fstype.map(cstr);
    let data_c = data.filter(|d| !d.is_empty()).map(cstr);
    let rc = unsafe {
        libc::mount(source_c.as_ptr(), target_c.as_ptr(), fstype_c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()), flags, data_c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr().cast()))
    };
    check(rc, || format!("mounting {} ({}) on {}{}", source, fstype.unwrap_or("bind"), target.display(), data.map(|d| format!(" with {d}")).unwrap_or_default()))
}

pub fn umount_detach(target: &Path) -> Result<(), String> {
    let c = cpath(target);
    check(unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) }, || format!("unmounting {}", target.display()))
}

pub fn write_file(path: &Path, text: &str) -> Result<(), String> {
    std::fs::write(path, text).map_err(|e| format!("writing {text:?} to {}: {e}", path.display()))
}

/// Blocks or unblocks signals for the calling thread.
pub fn sigmask(how: libc::c_int, signals: &[libc::c_int]) {
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in signals {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(how, &set, std::ptr::null_mut());
    }
}

/// Resets every signal to its default action and unblocks all (before exec).
pub fn reset_signals() {
    unsafe {
        for signal in 1..libc::SIGRTMAX() {
            if signal != libc::SIGKILL && signal != libc::SIGSTOP {
                libc::signal(signal, libc::SIG_DFL);
            }
        }
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    }
}
