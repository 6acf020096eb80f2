//! Console messages, prefixed `basalt:` so tests and people can grep them.

use std::io::Write;

/// If the kernel could not give init a console (no /dev/console in the
/// initramfs), open the devtmpfs one for stdio.
pub fn ensure_console() {
    if unsafe { libc::fcntl(1, libc::F_GETFD) } >= 0 {
        return;
    }
    let fd = unsafe { libc::open(c"/dev/console".as_ptr(), libc::O_RDWR | libc::O_NOCTTY) };
    if fd >= 0 {
        for target in 0..3 {
            unsafe { libc::dup2(fd, target) };
        }
        if fd > 2 {
            unsafe { libc::close(fd) };
        }
    }
}

pub fn info(msg: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "basalt: {msg}");
    let _ = out.flush();
}

pub fn error(msg: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "basalt: error: {msg}");
    let _ = out.flush();
}
