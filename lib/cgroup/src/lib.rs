//! cgroup v2 groups, as init (one per service) and the runtime (one per
//! container) use them: made below the cgroup root with the controllers
//! enabled on the way down, limited through their interface files,
//! signalled, killed and removed.
//!
//! A booted basalt has cgroup v2 alone at /sys/fs/cgroup. On a hybrid
//! machine (v1 controllers, cgroup v2 at /sys/fs/cgroup/unified without
//! controllers: build hosts) groups can be made under the unified root, but
//! have no controllers to limit anything with.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

pub const ROOT: &str = "/sys/fs/cgroup";
/// cgroup v2 under a hybrid setup.
const HYBRID_ROOT: &str = "/sys/fs/cgroup/unified";
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

fn is_cgroup2(path: &str) -> bool {
    let Ok(c) = CString::new(path) else { return false };
    // SAFETY: all zeroes is a valid statfs (integers only).
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a live statfs for the kernel to fill.
    unsafe { libc::statfs(c.as_ptr(), &mut buf) == 0 && buf.f_type as i64 == CGROUP2_SUPER_MAGIC }
}

/// Whether /sys/fs/cgroup is cgroup v2 alone (no hybrid setup).
pub fn unified() -> bool {
    is_cgroup2(ROOT)
}

/// Where cgroup v2 is: /sys/fs/cgroup, or /sys/fs/cgroup/unified on a hybrid machine.
pub fn v2_root() -> Option<&'static str> {
    [ROOT, HYBRID_ROOT].into_iter().find(|root| is_cgroup2(root))
}

/// Where group `relative` (`/basalt/web`, `system.slice/web.service`)
/// lives, refusing `..` and the root itself.
pub fn resolve(relative: &str) -> Result<PathBuf, String> {
    resolve_in(v2_root().unwrap_or(ROOT), relative)
}

pub fn resolve_in(root: &str, relative: &str) -> Result<PathBuf, String> {
    let rel = Path::new(relative.trim_start_matches('/'));
    if rel.as_os_str().is_empty() || rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(format!("{relative:?} is not a path below the cgroup root"));
    }
    Ok(Path::new(root).join(rel))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The pid where the kernel gives one, as a list of numbers.
fn pids(text: &str) -> Vec<i32> {
    text.split_whitespace().filter_map(|p| p.parse().ok()).collect()
}

/// The group a process is in (the `0::` line of /proc/PID/cgroup), as a
/// path below the root: `/system.slice/web.service`.
pub fn of_process(pid: i32) -> Option<String> {
    read(Path::new(&format!("/proc/{pid}/cgroup"))).lines().find_map(|l| l.strip_prefix("0::")).map(str::to_string)
}

pub struct Cgroup {
    pub path: PathBuf,
}

impl Cgroup {
    /// Makes group `relative` below the cgroup v2 root (or finds it made),
    /// with each of `controllers` that the kernel has enabled in every
    /// ancestor's cgroup.subtree_control, so the group's own limit files
    /// exist.
    pub fn create(relative: &str, controllers: &[&str]) -> Result<Cgroup, String> {
        let Some(root) = v2_root() else {
            return Err(format!("cgroup v2 is not mounted at {ROOT} or {HYBRID_ROOT}"));
        };
        let path = resolve_in(root, relative)?;
        let mut ancestor = PathBuf::from(root);
        for component in path.strip_prefix(root).expect("resolved below the root").components() {
            let available = read(&ancestor.join("cgroup.controllers"));
            let wanted: Vec<String> = controllers.iter().filter(|c| available.split_whitespace().any(|a| a == **c)).map(|c| format!("+{c}")).collect();
            let enabled = read(&ancestor.join("cgroup.subtree_control"));
            if !wanted.iter().all(|w| enabled.split_whitespace().any(|e| e == &w[1..])) {
                let file = ancestor.join("cgroup.subtree_control");
                std::fs::write(&file, wanted.join(" ")).map_err(|e| format!("enabling {} in {}: {e}", wanted.join(" "), file.display()))?;
            }
            ancestor.push(component);
            match std::fs::create_dir(&ancestor) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(format!("creating {}: {e}", ancestor.display())),
            }
        }
        Ok(Cgroup { path })
    }

    /// Writes one interface file: `memory.max`, `cpu.max`, `pids.max`…
    pub fn set(&self, file: &str, value: &str) -> Result<(), String> {
        std::fs::write(self.path.join(file), value).map_err(|e| format!("the kernel refused {file} = {value:?}: {e}"))
    }

    /// Reads one interface file (empty if it cannot be read).
    pub fn get(&self, file: &str) -> String {
        read(&self.path.join(file))
    }

    /// Moves process `pid` into the group.
    pub fn add(&self, pid: i32) -> Result<(), String> {
        let file = self.path.join("cgroup.procs");
        std::fs::write(&file, pid.to_string()).map_err(|e| format!("moving {pid} into {}: {e}", self.path.display()))
    }

    /// The processes in the group itself (not its children's).
    pub fn procs(&self) -> Vec<i32> {
        pids(&self.get("cgroup.procs"))
    }

    /// Whether any process is in the group or below it.
    pub fn populated(&self) -> bool {
        self.get("cgroup.events").lines().any(|l| l == "populated 1")
    }

    /// Sends `signal` to every process in the group.
    pub fn signal(&self, signal: i32) {
        for pid in self.procs() {
            // SAFETY: kill takes no pointers.
            unsafe { libc::kill(pid, signal) };
        }
    }

    /// SIGKILL to every process in the group and below, at once where the
    /// kernel has cgroup.kill.
    pub fn kill(&self) {
        if std::fs::write(self.path.join("cgroup.kill"), "1").is_err() {
            self.signal(libc::SIGKILL);
        }
    }

    /// How many times the kernel's OOM killer struck in this group.
    pub fn oom_kills(&self) -> u64 {
        self.get("memory.events").lines().find_map(|l| l.strip_prefix("oom_kill ")).and_then(|n| n.trim().parse().ok()).unwrap_or(0)
    }

    /// Kills what is left, waits (up to 5 s) for it to go and removes the group.
    pub fn remove(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.populated() && Instant::now() < deadline {
            self.kill();
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_dir(&self.path);
    }

    /// The group's cgroup.procs opened for writing, for a child to join
    /// the group with [`join_fd`] between fork and exec.
    pub fn procs_fd(&self) -> Result<std::os::fd::OwnedFd, String> {
        let file = self.path.join("cgroup.procs");
        let c = CString::new(file.as_os_str().as_bytes()).map_err(|_| format!("{}: NUL in path", file.display()))?;
        // SAFETY: a NUL-terminated path; the descriptor returned is owned by nothing else.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(format!("opening {}: {}", file.display(), std::io::Error::last_os_error()));
        }
        // SAFETY: fd is a new, open descriptor that nothing else owns.
        Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) })
    }
}

/// Moves the calling process into the group whose cgroup.procs `fd` is
/// open for ([`Cgroup::procs_fd`]): the kernel reads "0" as "the writer".
/// Async-signal-safe: one write(2), for a child between fork and exec.
pub fn join_fd(fd: i32) -> std::io::Result<()> {
    // SAFETY: writes one byte from a static buffer to a descriptor the caller holds open.
    if unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) } == 1 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_paths_stay_below_the_root() {
        assert_eq!(resolve_in(ROOT, "/basalt/web").unwrap(), Path::new("/sys/fs/cgroup/basalt/web"));
        assert_eq!(resolve_in(ROOT, "system.slice/web.service").unwrap(), Path::new("/sys/fs/cgroup/system.slice/web.service"));
        assert!(resolve_in(ROOT, "/basalt/../../etc").unwrap_err().contains("not a path below"));
        assert!(resolve_in(ROOT, "/").is_err());
        assert!(resolve_in(ROOT, "").is_err());
    }

    #[test]
    fn pid_lists_skip_what_is_not_a_pid() {
        assert_eq!(pids("12\n345\n\n"), vec![12, 345]);
        assert!(pids("").is_empty());
    }
}
