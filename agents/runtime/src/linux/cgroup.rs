//! A container's cgroup (v2 only): created under /sys/fs/cgroup with the
//! cpu, memory and pids controllers enabled on the way down, limits and the
//! device program in place before any process joins, killed and removed
//! when the container is done.
//!
//! Every container has one, since the device program (`devices.rs`) hangs
//! on it. On a hybrid machine (v1 controllers, cgroup v2 at
//! /sys/fs/cgroup/unified without controllers: build hosts, not the booted
//! image) the cgroup is made there, for the device program alone, and a
//! container that asks for limits is refused.

use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use super::devices::DeviceRule;
use crate::oci::Resources;

pub const ROOT: &str = "/sys/fs/cgroup";
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
const CONTROLLERS: &[&str] = &["cpu", "memory", "pids"];

pub struct Cgroup {
    pub path: PathBuf,
}

/// cgroup v2 under a hybrid setup.
const HYBRID_ROOT: &str = "/sys/fs/cgroup/unified";

fn is_cgroup2(path: &str) -> bool {
    let c = super::sys::cstr(path);
    // SAFETY: a NUL-terminated path and a zeroed statfs for the kernel to fill.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    unsafe { libc::statfs(c.as_ptr(), &mut buf) == 0 && buf.f_type as i64 == CGROUP2_SUPER_MAGIC }
}

pub fn unified() -> bool {
    is_cgroup2(ROOT)
}

/// Where cgroup v2 is: /sys/fs/cgroup, or /sys/fs/cgroup/unified on a hybrid machine.
pub fn v2_root() -> Option<&'static str> {
    [ROOT, HYBRID_ROOT].into_iter().find(|root| is_cgroup2(root))
}

/// Where a config's `cgroupsPath` (`/basalt/web`) lives, refusing `..`.
pub fn resolve(cgroups_path: &str) -> Result<PathBuf, String> {
    resolve_in(v2_root().unwrap_or(ROOT), cgroups_path)
}

fn resolve_in(root: &str, cgroups_path: &str) -> Result<PathBuf, String> {
    let relative = Path::new(cgroups_path.trim_start_matches('/'));
    if relative.as_os_str().is_empty() || relative.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(format!("linux.cgroupsPath {cgroups_path:?} is not a path below the cgroup root"));
    }
    Ok(Path::new(root).join(relative))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

impl Cgroup {
    /// Creates the cgroup with its limits (`resources` with any) and its
    /// device program; on any error nothing is left behind.
    pub fn create(cgroups_path: &str, resources: Option<&Resources>, devices: &[DeviceRule]) -> Result<Cgroup, String> {
        let Some(root) = v2_root() else {
            return Err(format!("cgroup v2 is not mounted at {ROOT} or {HYBRID_ROOT}: the container's device program needs it"));
        };
        if resources.is_some() && root != ROOT {
            return Err(format!("cgroup v2 is not mounted at {ROOT} (this machine has cgroup v1 or a hybrid setup), so limits cannot be set"));
        }
        let path = resolve_in(root, cgroups_path)?;
        // Enable the controllers in every ancestor's subtree_control.
        let mut ancestor = PathBuf::from(root);
        for component in path.strip_prefix(root).expect("resolved below the root").components() {
            let available = read(&ancestor.join("cgroup.controllers"));
            let wanted: Vec<String> = CONTROLLERS.iter().filter(|c| available.split_whitespace().any(|a| a == **c)).map(|c| format!("+{c}")).collect();
            if !wanted.is_empty() {
                let enabled = read(&ancestor.join("cgroup.subtree_control"));
                if !wanted.iter().all(|w| enabled.split_whitespace().any(|e| e == &w[1..])) {
                    super::sys::write_file(&ancestor.join("cgroup.subtree_control"), &wanted.join(" "))?;
                }
            }
            ancestor.push(component);
            if ancestor != path {
                std::fs::create_dir_all(&ancestor).map_err(|e| format!("creating {}: {e}", ancestor.display()))?;
            }
        }
        match std::fs::create_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                if !read(&path.join("cgroup.procs")).trim().is_empty() {
                    return Err(format!("cgroup {} is in use by another container", path.display()));
                }
            }
            Err(e) => return Err(format!("creating {}: {e}", path.display())),
        }
        let cgroup = Cgroup { path };
        let ready = resources.map_or(Ok(()), |r| cgroup.set_limits(r)).and_then(|()| super::devices::attach(&cgroup.path, devices));
        if let Err(e) = ready {
            cgroup.remove();
            return Err(e);
        }
        Ok(cgroup)
    }

    fn set(&self, field: &str, file: &str, value: &str) -> Result<(), String> {
        let path = self.path.join(file);
        std::fs::write(&path, value).map_err(|e| format!("{field}: the kernel refused {file} = {value:?}: {e}"))
    }

    fn set_limits(&self, resources: &Resources) -> Result<(), String> {
        if let Some(memory) = &resources.memory {
            if let Some(limit) = memory.limit {
                let value = if limit < 0 { "max".to_string() } else { limit.to_string() };
                self.set("linux.resources.memory.limit", "memory.max", &value)?;
                if let Some(swap) = memory.swap {
                    // OCI's swap is memory plus swap; cgroup v2 counts swap alone.
                    let value = if swap < 0 { "max".to_string() } else { swap.saturating_sub(limit.max(0)).to_string() };
                    if self.path.join("memory.swap.max").exists() {
                        self.set("linux.resources.memory.swap", "memory.swap.max", &value)?;
                    }
                }
            }
        }
        if let Some(cpu) = &resources.cpu {
            if cpu.quota.is_some() || cpu.period.is_some() {
                let quota = cpu.quota.filter(|q| *q > 0).map(|q| q.to_string()).unwrap_or_else(|| "max".into());
                let period = cpu.period.unwrap_or(100_000);
                self.set("linux.resources.cpu.quota", "cpu.max", &format!("{quota} {period}"))?;
            }
            if let Some(shares) = cpu.shares {
                // runc's mapping of cgroup v1 shares (2..262144) onto cpu.weight (1..10000).
                let weight = 1 + (shares.clamp(2, 262_144) - 2) * 9999 / 262_142;
                self.set("linux.resources.cpu.shares", "cpu.weight", &weight.to_string())?;
            }
        }
        if let Some(pids) = &resources.pids {
            let value = if pids.limit <= 0 { "max".to_string() } else { pids.limit.to_string() };
            self.set("linux.resources.pids.limit", "pids.max", &value)?;
        }
        Ok(())
    }

    pub fn add(&self, pid: i32) -> Result<(), String> {
        super::sys::write_file(&self.path.join("cgroup.procs"), &pid.to_string())
    }

    pub fn populated(&self) -> bool {
        read(&self.path.join("cgroup.events")).lines().any(|l| l == "populated 1")
    }

    /// SIGKILL to every process in the cgroup.
    pub fn kill(&self) {
        if std::fs::write(self.path.join("cgroup.kill"), "1").is_err() {
            for pid in read(&self.path.join("cgroup.procs")).split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }

    /// How many times the kernel's OOM killer struck in this cgroup.
    pub fn oom_kills(&self) -> u64 {
        read(&self.path.join("memory.events")).lines().find_map(|l| l.strip_prefix("oom_kill ")).and_then(|n| n.trim().parse().ok()).unwrap_or(0)
    }

    /// Kills what is left, waits for it to go and removes the cgroup.
    pub fn remove(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.populated() && Instant::now() < deadline {
            self.kill();
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_dir(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_paths_stay_below_the_root() {
        assert_eq!(resolve_in(ROOT, "/basalt/web").unwrap(), Path::new("/sys/fs/cgroup/basalt/web"));
        assert!(resolve_in(ROOT, "/basalt/../../etc").is_err());
        assert!(resolve_in(ROOT, "/").is_err());
    }
}
