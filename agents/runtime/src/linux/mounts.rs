//! Building the container's filesystem view: the config's mounts below the
//! root (each destination resolved inside the root, symlinks included, so an
//! image cannot point a mount at the host), the default devices, pivot_root,
//! then masked and read-only paths.

use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use super::sys::{self, check, cpath};
use crate::oci::Mount;

/// `unsafe_path` resolved below `root` as if `root` were `/`: `..` stops at
/// the root, symlinks are followed inside it.
pub fn secure_join(root: &Path, unsafe_path: &str) -> PathBuf {
    let mut resolved: Vec<std::ffi::OsString> = Vec::new();
    let mut pending: Vec<std::ffi::OsString> = Path::new(unsafe_path)
        .components()
        .rev()
        .filter_map(|c| match c {
            Component::Normal(p) => Some(p.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    let mut hops = 0;
    while let Some(part) = pending.pop() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        let candidate: PathBuf = std::iter::once(root.as_os_str().to_os_string()).chain(resolved.iter().cloned()).chain(std::iter::once(part.clone())).collect();
        match std::fs::read_link(&candidate) {
            Ok(target) if hops < 255 => {
                hops += 1;
                if target.is_absolute() {
                    resolved.clear();
                }
                for c in target.components().rev() {
                    match c {
                        Component::Normal(p) => pending.push(p.to_os_string()),
                        Component::ParentDir => pending.push("..".into()),
                        _ => {}
                    }
                }
            }
            _ => resolved.push(part),
        }
    }
    std::iter::once(root.as_os_str().to_os_string()).chain(resolved).collect()
}

struct Parsed {
    flags: libc::c_ulong,
    propagation: libc::c_ulong,
    data: Vec<String>,
    bind: bool,
}

fn parse_options(options: &[String]) -> Parsed {
    let mut parsed = Parsed { flags: 0, propagation: 0, data: Vec::new(), bind: false };
    for option in options {
        let (set, clear): (libc::c_ulong, libc::c_ulong) = match option.as_str() {
            "ro" => (libc::MS_RDONLY, 0),
            "rw" => (0, libc::MS_RDONLY),
            "nosuid" => (libc::MS_NOSUID, 0),
            "suid" => (0, libc::MS_NOSUID),
            "nodev" => (libc::MS_NODEV, 0),
            "dev" => (0, libc::MS_NODEV),
            "noexec" => (libc::MS_NOEXEC, 0),
            "exec" => (0, libc::MS_NOEXEC),
            "sync" => (libc::MS_SYNCHRONOUS, 0),
            "async" => (0, libc::MS_SYNCHRONOUS),
            "dirsync" => (libc::MS_DIRSYNC, 0),
            "noatime" => (libc::MS_NOATIME, 0),
            "atime" => (0, libc::MS_NOATIME),
            "nodiratime" => (libc::MS_NODIRATIME, 0),
            "diratime" => (0, libc::MS_NODIRATIME),
            "relatime" => (libc::MS_RELATIME, 0),
            "norelatime" => (0, libc::MS_RELATIME),
            "strictatime" => (libc::MS_STRICTATIME, 0),
            "nostrictatime" => (0, libc::MS_STRICTATIME),
            "bind" => {
                parsed.bind = true;
                (libc::MS_BIND, 0)
            }
            "rbind" => {
                parsed.bind = true;
                (libc::MS_BIND | libc::MS_REC, 0)
            }
            "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave" | "unbindable" | "runbindable" => {
                let base = match option.trim_start_matches('r') {
                    "private" => libc::MS_PRIVATE,
                    "shared" => libc::MS_SHARED,
                    "slave" => libc::MS_SLAVE,
                    _ => libc::MS_UNBINDABLE,
                };
                parsed.propagation = base | if option.starts_with('r') { libc::MS_REC } else { 0 };
                (0, 0)
            }
            other => {
                parsed.data.push(other.to_string());
                (0, 0)
            }
        };
        parsed.flags = (parsed.flags | set) & !clear;
    }
    parsed
}

/// Mounts one entry of the config below `root`.
pub fn mount_one(root: &Path, mount: &Mount) -> Result<(), String> {
    let destination = secure_join(root, &mount.destination);
    let options = parse_options(&mount.options);
    let kind = mount.kind.as_deref().unwrap_or(if options.bind { "bind" } else { "none" });
    let source = mount.source.clone().unwrap_or_else(|| kind.to_string());
    if options.bind || kind == "bind" {
        let source_path = Path::new(&source);
        let meta = std::fs::metadata(source_path).map_err(|e| format!("mounts: bind source {source}: {e}"))?;
        if meta.is_dir() {
            std::fs::create_dir_all(&destination).map_err(|e| format!("mounts: creating {}: {e}", mount.destination))?;
        } else {
            if let Some(parent) = destination.parent() {
                std::fs::create_dir_all(parent).map_err(|e| format!("mounts: creating the parent of {}: {e}", mount.destination))?;
            }
            if !destination.exists() {
                std::fs::write(&destination, b"").map_err(|e| format!("mounts: creating {}: {e}", mount.destination))?;
            }
        }
        let recursive = options.flags & libc::MS_REC;
        sys::mount(&source, &destination, None, libc::MS_BIND | recursive, None)?;
        let extra = options.flags & !(libc::MS_BIND | libc::MS_REC);
        if extra != 0 {
            sys::mount("none", &destination, None, libc::MS_BIND | libc::MS_REMOUNT | recursive | extra | locked_flags(&destination), None)?;
        }
    } else {
        std::fs::create_dir_all(&destination).map_err(|e| format!("mounts: creating {}: {e}", mount.destination))?;
        let fstype = match kind {
            "cgroup" | "cgroup2" if super::cgroup::unified() => "cgroup2",
            "cgroup" | "cgroup2" => return Err(format!("mounts: {}: only cgroup v2 can be mounted in a container", mount.destination)),
            other => other,
        };
        sys::mount(&source, &destination, Some(fstype), options.flags, Some(&options.data.join(",")))?;
    }
    if options.propagation != 0 {
        sys::mount("none", &destination, None, options.propagation, None)?;
    }
    Ok(())
}

/// Binds the machine's device node `host` onto a new empty file `target`.
fn bind_node(host: &Path, target: &Path) -> Result<(), String> {
    std::fs::write(target, b"").map_err(|e| format!("creating {}: {e}", target.display()))?;
    sys::mount(&host.to_string_lossy(), target, None, libc::MS_BIND, None)
}

/// The flags a remount must keep: inside a user namespace the kernel
/// refuses one that would drop nosuid, nodev, noexec or an atime flag the
/// mount was made with outside (they are locked).
pub fn locked_flags(path: &Path) -> libc::c_ulong {
    let c = cpath(path);
    // SAFETY: a NUL-terminated path and a zeroed statvfs for the kernel to fill.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return 0;
    }
    let mut flags = 0;
    for (st_flag, ms_flag) in [
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (libc::ST_RELATIME, libc::MS_RELATIME),
    ] {
        if st.f_flag & st_flag != 0 {
            flags |= ms_flag;
        }
    }
    flags
}

const DEVICES: &[(&str, u32, u32)] = &[("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0)];

/// The devices every container has (the runtime spec's default set), and
/// the usual links.
pub fn default_devices(root: &Path, userns: bool) -> Result<(), String> {
    let dev = secure_join(root, "/dev");
    std::fs::create_dir_all(&dev).map_err(|e| format!("creating /dev: {e}"))?;
    for (name, major, minor) in DEVICES {
        let path = dev.join(name);
        let _ = std::fs::remove_file(&path);
        if userns {
            // mknod is refused in a user namespace: the machine's node, bound.
            bind_node(&Path::new("/dev").join(name), &path)?;
            continue;
        }
        let c = cpath(&path);
        check(unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(*major, *minor)) }, || format!("creating /dev/{name}"))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).map_err(|e| format!("/dev/{name}: {e}"))?;
    }
    for (link, target) in [("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"), ("ptmx", "pts/ptmx")] {
        let path = dev.join(link);
        if std::fs::symlink_metadata(&path).is_err() {
            symlink(target, &path).map_err(|e| format!("linking /dev/{link}: {e}"))?;
        }
    }
    Ok(())
}

/// The config's `linux.devices`: nodes the user granted, made in /dev (the
/// device program, set up with the cgroup, lets them be used).
pub fn extra_devices(root: &Path, devices: &[crate::oci::Device], userns: bool) -> Result<(), String> {
    for device in devices {
        let path = secure_join(root, &device.path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("linux.devices: creating {}: {e}", parent.display()))?;
        }
        let _ = std::fs::remove_file(&path);
        if userns {
            bind_node(Path::new(&device.path), &path).map_err(|e| format!("linux.devices: {e}"))?;
            continue;
        }
        let kind = if device.kind == "b" { libc::S_IFBLK } else { libc::S_IFCHR };
        let mode = device.file_mode.unwrap_or(0o660) & 0o7777;
        let c = cpath(&path);
        check(unsafe { libc::mknod(c.as_ptr(), kind | mode, libc::makedev(device.major as u32, device.minor as u32)) }, || format!("linux.devices: creating {}", device.path))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).map_err(|e| format!("linux.devices: {}: {e}", device.path))?;
        check(unsafe { libc::chown(c.as_ptr(), device.uid.unwrap_or(0), device.gid.unwrap_or(0)) }, || format!("linux.devices: owning {}", device.path))?;
    }
    Ok(())
}

/// Makes `root` (a mount point) the process's `/`; the old root is detached.
pub fn pivot_root(root: &Path) -> Result<(), String> {
    std::env::set_current_dir(root).map_err(|e| format!("entering {}: {e}", root.display()))?;
    let dot = sys::cstr(".");
    check(unsafe { libc::syscall(libc::SYS_pivot_root, dot.as_ptr(), dot.as_ptr()) } as libc::c_int, || format!("pivot_root into {}", root.display()))?;
    // The old root is stacked under "."; make its mounts private, then detach it.
    sys::mount("none", Path::new("."), None, libc::MS_SLAVE | libc::MS_REC, None)?;
    sys::umount_detach(Path::new("."))?;
    std::env::set_current_dir("/").map_err(|e| format!("entering /: {e}"))
}

/// After pivot_root: hide masked paths, make read-only paths read-only.
pub fn mask_and_protect(masked: &[String], readonly: &[String]) -> Result<(), String> {
    for path in masked {
        let path = Path::new(path);
        match std::fs::metadata(path) {
            Ok(meta) if meta.is_dir() => sys::mount("tmpfs", path, Some("tmpfs"), libc::MS_RDONLY, None)?,
            Ok(_) => sys::mount("/dev/null", path, None, libc::MS_BIND, None)?,
            Err(_) => {}
        }
    }
    for path in readonly {
        let path = Path::new(path);
        if path.exists() {
            sys::mount(&path.to_string_lossy(), path, None, libc::MS_BIND | libc::MS_REC, None)?;
            sys::mount("none", path, None, libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_REC | locked_flags(path), None)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("real/dir")).unwrap();
        symlink("/real", root.join("abs")).unwrap();
        symlink("../../../../etc", root.join("real/up")).unwrap();
        assert_eq!(secure_join(root, "/abs/dir"), root.join("real/dir"));
        assert_eq!(secure_join(root, "/real/up/passwd"), root.join("etc/passwd"));
        assert_eq!(secure_join(root, "/../../x"), root.join("x"));
        let loop_dir = root.join("loop");
        symlink("/loop", &loop_dir).unwrap();
        assert!(secure_join(root, "/loop/x").starts_with(root));
    }

    #[test]
    fn options_split_into_flags_and_data() {
        let parsed = parse_options(&["nosuid".into(), "mode=755".into(), "size=65536k".into(), "rbind".into(), "ro".into(), "rprivate".into()]);
        assert_eq!(parsed.flags, libc::MS_NOSUID | libc::MS_BIND | libc::MS_REC | libc::MS_RDONLY);
        assert_eq!(parsed.data, ["mode=755", "size=65536k"]);
        assert_eq!(parsed.propagation, libc::MS_PRIVATE | libc::MS_REC);
        assert!(parsed.bind);
    }
}
