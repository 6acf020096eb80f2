//! What stage 2 does before starting services, on every boot (cheap and
//! idempotent) or once (first boot): seed /etc from the defaults in /usr,
//! machine-id, hostname, the `core` user's home and development keys, and
//! drivers for the devices present (by modalias, as udev would).

use crate::{log, modprobe};
use std::fs;
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::Path;

const ETC_DEFAULTS: &str = "/usr/share/basalt/etc";
const DEV_AUTHORIZED_KEYS: &str = "/usr/share/basalt/dev-authorized-keys";
const CORE_UID: u32 = 500;

/// Copies every default missing from /etc; what the user changed stays.
pub fn seed_etc(from: &Path, to: &Path) -> std::io::Result<u32> {
    let mut copied = 0;
    let Ok(rd) = fs::read_dir(from) else { return Ok(0) };
    for e in rd.flatten() {
        let src = e.path();
        let dst = to.join(e.file_name());
        let meta = fs::symlink_metadata(&src)?;
        if meta.is_dir() {
            if !dst.exists() {
                fs::create_dir_all(&dst)?;
                fs::set_permissions(&dst, meta.permissions())?;
            }
            copied += seed_etc(&src, &dst)?;
        } else if fs::symlink_metadata(&dst).is_err() {
            if meta.file_type().is_symlink() {
                std::os::unix::fs::symlink(fs::read_link(&src)?, &dst)?;
            } else {
                let tmp = dst.with_extension("basalt-seed");
                fs::copy(&src, &tmp)?;
                fs::set_permissions(&tmp, meta.permissions())?;
                fs::rename(&tmp, &dst)?;
            }
            copied += 1;
        }
    }
    Ok(copied)
}

fn machine_id() -> std::io::Result<()> {
    let p = Path::new("/etc/machine-id");
    if fs::read_to_string(p).is_ok_and(|s| s.trim().len() == 32) {
        return Ok(());
    }
    let mut bytes = [0u8; 16];
    // SAFETY: writes at most 16 bytes into `bytes`, which has 16.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), 16, 0) };
    if n != 16 {
        return Err(std::io::Error::last_os_error());
    }
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    fs::write("/etc/machine-id.tmp", format!("{hex}\n"))?;
    fs::rename("/etc/machine-id.tmp", p)?;
    log::info(&format!("first boot: machine-id {hex}"));
    Ok(())
}

fn hostname() {
    if let Ok(name) = fs::read_to_string("/etc/hostname") {
        let name = name.trim();
        if !name.is_empty() {
            // SAFETY: reads name.len() bytes from `name`, which has them (no NUL needed).
            unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) };
        }
    }
}

fn core_home() -> std::io::Result<()> {
    let home = Path::new("/home/core");
    let ssh = home.join(".ssh");
    if !ssh.exists() {
        fs::create_dir_all(&ssh)?;
        fs::set_permissions(home, fs::Permissions::from_mode(0o755))?;
        fs::set_permissions(&ssh, fs::Permissions::from_mode(0o700))?;
        chown(home, Some(CORE_UID), Some(CORE_UID))?;
        chown(&ssh, Some(CORE_UID), Some(CORE_UID))?;
    }
    let keys = ssh.join("authorized_keys");
    if !keys.exists() {
        if let Ok(dev) = fs::read_to_string(DEV_AUTHORIZED_KEYS) {
            fs::write(&keys, dev)?;
            fs::set_permissions(&keys, fs::Permissions::from_mode(0o600))?;
            chown(&keys, Some(CORE_UID), Some(CORE_UID))?;
            log::info("development image: installed ssh keys for core");
        }
    }
    Ok(())
}

/// Loads the driver of every device that has a modalias (what udev's
/// coldplug does), matching the kernel's glob patterns in modules.alias.
pub fn coldplug() {
    let Ok(uname) = fs::read_to_string("/proc/sys/kernel/osrelease") else { return };
    let Ok(aliases) = fs::read_to_string(format!("/usr/lib/modules/{}/modules.alias", uname.trim())) else { return };
    let patterns: Vec<(&str, &str)> = aliases.lines().filter_map(|l| l.strip_prefix("alias ")).filter_map(|l| l.split_once(' ')).collect();
    let mut wanted = std::collections::BTreeSet::new();
    let mut stack = vec![std::path::PathBuf::from("/sys/devices")];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() && !ft.is_symlink() {
                stack.push(p);
            } else if e.file_name() == "modalias" {
                if let Ok(alias) = fs::read_to_string(&p) {
                    for (pat, module) in &patterns {
                        if glob_match(pat.as_bytes(), alias.trim().as_bytes()) {
                            wanted.insert(module.to_string());
                        }
                    }
                }
            }
        }
    }
    for m in wanted {
        // A driver that finds no hardware of its own (ENODEV) is normal here.
        if let Err(e) = modprobe::load(&m) {
            if !e.contains("No such device") {
                log::info(&format!("coldplug: {m}: {e}"));
            }
        }
    }
}

/// fnmatch for modalias patterns: `*`, `?` and `[...]` classes.
pub fn glob_match(pat: &[u8], s: &[u8]) -> bool {
    match (pat.first(), s.first()) {
        (None, None) => true,
        (Some(b'*'), _) => glob_match(&pat[1..], s) || (!s.is_empty() && glob_match(pat, &s[1..])),
        (Some(b'?'), Some(_)) => glob_match(&pat[1..], &s[1..]),
        (Some(b'['), Some(&c)) => match pat.iter().position(|&b| b == b']') {
            Some(end) => {
                let class = &pat[1..end];
                let (negate, class) = if class.first() == Some(&b'!') { (true, &class[1..]) } else { (false, class) };
                let mut hit = false;
                let mut i = 0;
                while i < class.len() {
                    if i + 2 < class.len() && class[i + 1] == b'-' {
                        hit |= (class[i]..=class[i + 2]).contains(&c);
                        i += 3;
                    } else {
                        hit |= class[i] == c;
                        i += 1;
                    }
                }
                hit != negate && glob_match(&pat[end + 1..], &s[1..])
            }
            None => false,
        },
        (Some(&p), Some(&c)) => p == c && glob_match(&pat[1..], &s[1..]),
        _ => false,
    }
}

/// Directories users and agents write into.
const DIRS: [&str; 5] = ["/etc/systemd/system", "/etc/systemd/network", "/etc/basalt", "/var/lib/basalt", "/var/log/basalt"];

pub fn run() {
    for d in DIRS {
        if let Err(e) = fs::create_dir_all(d) {
            log::error(&format!("creating {d}: {e}"));
        }
    }
    match seed_etc(Path::new(ETC_DEFAULTS), Path::new("/etc")) {
        Ok(0) => {}
        Ok(n) => log::info(&format!("seeded {n} files of /etc from /usr")),
        Err(e) => log::error(&format!("seeding /etc: {e}")),
    }
    if let Err(e) = machine_id() {
        log::error(&format!("machine-id: {e}"));
    }
    hostname();
    if let Err(e) = core_home() {
        log::error(&format!("home of core: {e}"));
    }
    coldplug();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modalias_globs() {
        assert!(glob_match(b"virtio:d00000001v*", b"virtio:d00000001v00001AF4"));
        assert!(!glob_match(b"virtio:d00000002v*", b"virtio:d00000001v00001AF4"));
        assert!(glob_match(b"pci:v00001AF4d00001000sv*sd*bc*sc*i*", b"pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00"));
        assert!(glob_match(b"a[0-9]c", b"a5c") && !glob_match(b"a[!0-9]c", b"a5c"));
    }

    #[test]
    fn seeding_keeps_what_is_there() {
        let d = tempfile::tempdir().unwrap();
        let (from, to) = (d.path().join("from"), d.path().join("to"));
        fs::create_dir_all(from.join("basalt")).unwrap();
        fs::write(from.join("hostname"), "basalt\n").unwrap();
        fs::write(from.join("basalt/health.conf"), "X=1\n").unwrap();
        fs::create_dir_all(&to).unwrap();
        fs::write(to.join("hostname"), "mine\n").unwrap();
        assert_eq!(seed_etc(&from, &to).unwrap(), 1);
        assert_eq!(fs::read_to_string(to.join("hostname")).unwrap(), "mine\n");
        assert_eq!(fs::read_to_string(to.join("basalt/health.conf")).unwrap(), "X=1\n");
        assert_eq!(seed_etc(&from, &to).unwrap(), 0);
    }
}
