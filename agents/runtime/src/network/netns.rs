//! Named network namespaces, as `ip netns` keeps them: a namespace made on
//! a thread of its own (unsharing the network namespace is per thread) and
//! held by a bind mount of its `/proc/thread-self/ns/net` on a file, so it
//! outlives the thread and the container's runner can join it by path.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use crate::linux::sys::{self, check};

fn open(path: &Path) -> Result<OwnedFd, String> {
    let c = sys::cpath(path);
    let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    check(fd, || format!("opening {}", path.display()))?;
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Creates a network namespace held at `path` (a stale one there is
/// removed first) and returns it open.
pub fn create(path: &Path) -> Result<OwnedFd, String> {
    remove(path);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let made = std::thread::scope(|scope| {
        scope
            .spawn(|| {
                check(unsafe { libc::unshare(libc::CLONE_NEWNET) }, || "unsharing the network namespace".into())?;
                sys::mount("/proc/thread-self/ns/net", path, None, libc::MS_BIND, None)?;
                open(path)
            })
            .join()
            .unwrap_or_else(|_| Err("the namespace thread panicked".into()))
    });
    if made.is_err() {
        remove(path);
    }
    made
}

/// Runs `f` on a thread that has joined the namespace `namespace`.
pub fn enter<T: Send>(namespace: &OwnedFd, f: impl FnOnce() -> Result<T, String> + Send) -> Result<T, String> {
    let fd = namespace.as_raw_fd();
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                check(unsafe { libc::setns(fd, libc::CLONE_NEWNET) }, || "joining the container's network namespace".into())?;
                f()
            })
            .join()
            .unwrap_or_else(|_| Err("the namespace thread panicked".into()))
    })
}

/// Unmounts and removes a namespace's file; the namespace goes when no
/// process is left in it.
pub fn remove(path: &Path) {
    while sys::umount_detach(path).is_ok() {}
    let _ = std::fs::remove_file(path);
}
