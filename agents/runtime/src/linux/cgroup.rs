//! A container's cgroup (v2 only): created under /sys/fs/cgroup with the
//! cpu, memory and pids controllers enabled on the way down, limits written
//! before any process joins, killed and removed when the container is done.

use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use crate::oci::Resources;

pub const ROOT: &str = "/sys/fs/cgroup";
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
const CONTROLLERS: &[&str] = &["cpu", "memory", "pids"];

pub struct Cgroup {
    pub path: PathBuf,
}

pub fn unified() -> bool {
    let c = super::sys::cstr(ROOT);
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    unsafe { libc::statfs(c.as_ptr(), &mut buf) == 0 && buf.f_type as i64 == CGROUP2_SUPER_MAGIC }
}

/// Where a config's `cgroupsPath` (`/basalt/web`) lives, refusing `..`.
pub fn resolve(cgroups_path: &str) -> Result<PathBuf, String> {
    let relative = Path::new(cgroups_path.trim_start_matches('/'));
    if relative.as_os_str().is_empty() || relative.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(format!("linux.cgroupsPath {cgroups_path:?} is not a path below the cgroup root"));
    }
    Ok(Path::new(ROOT).join(relative))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

impl Cgroup {
    /// Creates the cgroup with its limits; on any error nothing is left behind.
    pub fn create(cgroups_path: &str, resources: Option<&Resources>) -> Result<Cgroup, String> {
        if !unified() {
            return Err(format!("cgroup v2 is not mounted at {ROOT} (this machine has cgroup v1 or a hybrid setup), so limits cannot be set"));
        }
        let path = resolve(cgroups_path)?;
        // Enable the controllers in every ancestor's subtree_control.
        let mut ancestor = PathBuf::from(ROOT);
        for component in path.strip_prefix(ROOT).expect("resolved below the root").components() {
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
        if let Some(resources) = resources {
            if let Err(e) = cgroup.set_limits(resources) {
                cgroup.remove();
                return Err(e);
            }
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
        assert_eq!(resolve("/basalt/web").unwrap(), Path::new("/sys/fs/cgroup/basalt/web"));
        assert!(resolve("/basalt/../../etc").is_err());
        assert!(resolve("/").is_err());
    }
}
