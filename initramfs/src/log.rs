//! Console messages, prefixed `basalt:` so tests and people can grep them.

use std::io::Write;

/// If the kernel could not give init a console (no /dev/console in the
/// initramfs), open the devtmpfs one for stdio.
pub fn ensure_console() {
    // SAFETY: F_GETFD takes no argument and only asks whether fd 1 is open.
    if unsafe { libc::fcntl(1, libc::F_GETFD) } >= 0 {
        return;
    }
    // SAFETY: a NUL-terminated literal path; no O_CREAT, so no mode argument.
    let fd = unsafe { libc::open(c"/dev/console".as_ptr(), libc::O_RDWR | libc::O_NOCTTY) };
    if fd >= 0 {
        for target in 0..3 {
            // SAFETY: `fd` is open; 0..3 are stdio, not owned by any Rust object yet.
            unsafe { libc::dup2(fd, target) };
        }
        if fd > 2 {
            // SAFETY: `fd` was opened above and is closed once; 0..2 stay open.
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

/// Writes one whole line straight to the console with a single write(2),
/// falling back to the kernel log (/dev/kmsg) when stdout is gone. It takes
/// no lock and allocates nothing: the panic hook uses it, and the panicking
/// code may have held stdout's lock.
pub fn emergency(line: &[u8]) {
    // SAFETY: `line` is valid for `line.len()` bytes for the call; fd 1 may
    // be closed, which write reports as an error.
    let written = unsafe { libc::write(1, line.as_ptr().cast(), line.len()) };
    if written == line.len() as isize {
        return;
    }
    // SAFETY: a NUL-terminated literal path; no O_CREAT, so no mode argument.
    let kmsg = unsafe { libc::open(c"/dev/kmsg".as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
    if kmsg >= 0 {
        // SAFETY: `kmsg` was opened above; `line` is valid as above; the fd is
        // closed once, here.
        unsafe {
            libc::write(kmsg, line.as_ptr().cast(), line.len());
            libc::close(kmsg);
        }
    }
}
