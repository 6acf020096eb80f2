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

use super::devices::DeviceRule;
use crate::oci::Resources;

pub use basalt_cgroup::{resolve, unified, Cgroup, ROOT};

const CONTROLLERS: &[&str] = &["cpu", "memory", "pids"];

/// Creates the container's cgroup with its limits (`resources` with any)
/// and its device program; on any error nothing is left behind.
pub fn create(cgroups_path: &str, resources: Option<&Resources>, devices: &[DeviceRule]) -> Result<Cgroup, String> {
    let Some(root) = basalt_cgroup::v2_root() else {
        return Err(format!("cgroup v2 is not mounted at {ROOT}: the container's device program needs it"));
    };
    if resources.is_some() && root != ROOT {
        return Err(format!("cgroup v2 is not mounted at {ROOT} (this machine has cgroup v1 or a hybrid setup), so limits cannot be set"));
    }
    basalt_cgroup::resolve_in(root, cgroups_path).map_err(|e| format!("linux.cgroupsPath {e}"))?;
    let cgroup = Cgroup::create(cgroups_path, CONTROLLERS)?;
    if cgroup.populated() {
        return Err(format!("cgroup {} is in use by another container", cgroup.path.display()));
    }
    let ready = resources.map_or(Ok(()), |r| set_limits(&cgroup, r)).and_then(|()| super::devices::attach(&cgroup.path, devices));
    if let Err(e) = ready {
        cgroup.remove();
        return Err(e);
    }
    Ok(cgroup)
}

fn set(cgroup: &Cgroup, field: &str, file: &str, value: &str) -> Result<(), String> {
    cgroup.set(file, value).map_err(|e| format!("{field}: {e}"))
}

fn set_limits(cgroup: &Cgroup, resources: &Resources) -> Result<(), String> {
    if let Some(memory) = &resources.memory {
        if let Some(limit) = memory.limit {
            let value = if limit < 0 { "max".to_string() } else { limit.to_string() };
            set(cgroup, "linux.resources.memory.limit", "memory.max", &value)?;
            if let Some(swap) = memory.swap {
                // OCI's swap is memory plus swap; cgroup v2 counts swap alone.
                let value = if swap < 0 { "max".to_string() } else { swap.saturating_sub(limit.max(0)).to_string() };
                if cgroup.path.join("memory.swap.max").exists() {
                    set(cgroup, "linux.resources.memory.swap", "memory.swap.max", &value)?;
                }
            }
        }
    }
    if let Some(cpu) = &resources.cpu {
        if cpu.quota.is_some() || cpu.period.is_some() {
            let quota = cpu.quota.filter(|q| *q > 0).map(|q| q.to_string()).unwrap_or_else(|| "max".into());
            let period = cpu.period.unwrap_or(100_000);
            set(cgroup, "linux.resources.cpu.quota", "cpu.max", &format!("{quota} {period}"))?;
        }
        if let Some(shares) = cpu.shares {
            // runc's mapping of cgroup v1 shares (2..262144) onto cpu.weight (1..10000).
            let weight = 1 + (shares.clamp(2, 262_144) - 2) * 9999 / 262_142;
            set(cgroup, "linux.resources.cpu.shares", "cpu.weight", &weight.to_string())?;
        }
    }
    if let Some(pids) = &resources.pids {
        let value = if pids.limit <= 0 { "max".to_string() } else { pids.limit.to_string() };
        set(cgroup, "linux.resources.pids.limit", "pids.max", &value)?;
    }
    Ok(())
}
