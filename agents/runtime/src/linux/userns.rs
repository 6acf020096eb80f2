//! User namespaces (`userns: auto`): the container's IDs 0-65535 are the
//! machine's 100000-165535, so its root is an unprivileged user outside,
//! whatever capabilities it holds inside.
//!
//! One range for every such container, as docker's `--userns-remap` has:
//! the image's layers are copied once with their owners shifted into it
//! (`layers-userns/` in the store, beside the layers they come from) and
//! shared by all remapped containers, instead of idmapped mounts, which on
//! overlayfs lower layers need each layer cloned and re-attached with a
//! namespace per container before the overlay is mounted (see
//! docs/runtime.md for the argument).

use std::ffi::CString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// The first host ID of the range, and its size.
pub const BASE: u32 = 100_000;
pub const SIZE: u32 = 65_536;

/// A container ID as the machine sees it.
pub fn host_id(id: u32) -> u32 {
    if id < SIZE {
        BASE + id
    } else {
        // Outside the mapped range: the overflow ID, as the kernel shows it.
        65_534
    }
}

fn cpath(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).expect("paths have no NUL")
}

fn check(rc: libc::c_int, what: &str, path: &Path) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        let e = io::Error::last_os_error();
        Err(io::Error::new(e.kind(), format!("{what} {}: {e}", path.display())))
    }
}

fn copy_xattrs(from: &Path, to: &Path) -> io::Result<()> {
    let (from_c, to_c) = (cpath(from), cpath(to));
    let mut names = vec![0u8; 64 * 1024];
    // SAFETY: NUL-terminated path and a buffer of the length passed.
    let n = unsafe { libc::llistxattr(from_c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if n <= 0 {
        return Ok(());
    }
    for name in names[..n as usize].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let name_c = CString::new(name).expect("split on NUL");
        let mut value = vec![0u8; 64 * 1024];
        // SAFETY: as above; the value buffer's length is passed.
        let len = unsafe { libc::lgetxattr(from_c.as_ptr(), name_c.as_ptr(), value.as_mut_ptr().cast(), value.len()) };
        if len < 0 {
            continue;
        }
        // SAFETY: as above, `len` bytes of `value` were written by the kernel.
        let rc = unsafe { libc::lsetxattr(to_c.as_ptr(), name_c.as_ptr(), value.as_ptr().cast(), len as usize, 0) };
        check(rc, "setting an extended attribute on", to)?;
    }
    Ok(())
}

/// Copies the tree `from` to `to` (which must not exist) with every owner
/// shifted into the range; modes, times, extended attributes (overlayfs's
/// opaque markers among them), whiteouts and links are kept.
pub fn copy_shifted(from: &Path, to: &Path) -> io::Result<()> {
    let meta = fs::symlink_metadata(from)?;
    let kind = meta.file_type();
    let to_c = cpath(to);
    if kind.is_dir() {
        fs::create_dir(to)?;
        for entry in fs::read_dir(from)? {
            let entry = entry?;
            copy_shifted(&entry.path(), &to.join(entry.file_name()))?;
        }
    } else if kind.is_symlink() {
        std::os::unix::fs::symlink(fs::read_link(from)?, to)?;
    } else if kind.is_file() {
        fs::copy(from, to)?;
    } else {
        // Devices (overlayfs whiteouts are 0:0 character devices), FIFOs, sockets.
        // SAFETY: NUL-terminated path; mode and device number from the source's lstat.
        check(unsafe { libc::mknod(to_c.as_ptr(), meta.mode(), meta.rdev()) }, "creating", to)?;
    }
    // SAFETY: NUL-terminated path; lchown does not follow a symlink.
    check(unsafe { libc::lchown(to_c.as_ptr(), host_id(meta.uid()), host_id(meta.gid())) }, "owning", to)?;
    if !kind.is_symlink() {
        // After the chown, which clears set-id bits.
        fs::set_permissions(to, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    }
    copy_xattrs(from, to)?;
    let times = [libc::timespec { tv_sec: meta.atime(), tv_nsec: meta.atime_nsec() }, libc::timespec { tv_sec: meta.mtime(), tv_nsec: meta.mtime_nsec() }];
    // SAFETY: NUL-terminated path and two timespecs, as utimensat takes.
    check(unsafe { libc::utimensat(libc::AT_FDCWD, to_c.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) }, "setting the times of", to)
}

/// The uid_map/gid_map line.
pub fn map_line() -> String {
    format!("0 {BASE} {SIZE}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_in_the_range_are_shifted_others_are_nobody() {
        assert_eq!(host_id(0), 100_000);
        assert_eq!(host_id(65_535), 165_535);
        assert_eq!(host_id(70_000), 65_534);
        assert_eq!(map_line(), "0 100000 65536\n");
    }

    #[test]
    fn a_tree_is_copied_with_owners_shifted_and_everything_else_kept() {
        if unsafe { libc::geteuid() } != 0 {
            panic!("this test chowns files: run it as root (make test does)");
        }
        let dir = tempfile::tempdir().unwrap();
        let from = dir.path().join("layer");
        fs::create_dir_all(from.join("etc")).unwrap();
        fs::write(from.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\n").unwrap();
        let c = cpath(&from.join("etc/passwd"));
        assert_eq!(unsafe { libc::chown(c.as_ptr(), 33, 34) }, 0);
        // After the chown, which clears set-id bits.
        fs::set_permissions(from.join("etc/passwd"), fs::Permissions::from_mode(0o4755)).unwrap();
        std::os::unix::fs::symlink("etc/passwd", from.join("link")).unwrap();
        let wh = cpath(&from.join("gone"));
        assert_eq!(unsafe { libc::mknod(wh.as_ptr(), libc::S_IFCHR, 0) }, 0, "a whiteout");
        let to = dir.path().join("shifted");
        copy_shifted(&from, &to).unwrap();
        let meta = fs::metadata(to.join("etc/passwd")).unwrap();
        assert_eq!((meta.uid(), meta.gid(), meta.mode() & 0o7777), (100_033, 100_034, 0o4755));
        assert_eq!(fs::read_to_string(to.join("etc/passwd")).unwrap(), "root:x:0:0::/root:/bin/sh\n");
        assert_eq!(fs::metadata(to.join("etc/passwd")).unwrap().mtime(), fs::metadata(from.join("etc/passwd")).unwrap().mtime());
        assert_eq!(fs::symlink_metadata(to.join("link")).unwrap().uid(), 100_000);
        assert_eq!(fs::read_link(to.join("link")).unwrap(), Path::new("etc/passwd"));
        let whiteout = fs::symlink_metadata(to.join("gone")).unwrap();
        assert!(std::os::unix::fs::FileTypeExt::is_char_device(&whiteout.file_type()) && whiteout.rdev() == 0);
        assert_eq!(fs::metadata(&to).unwrap().uid(), 100_000);
        // The original is untouched.
        assert_eq!(fs::metadata(from.join("etc/passwd")).unwrap().uid(), 33);
    }
}
