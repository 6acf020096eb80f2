//! The OCI runtime specification's `config.json`, the subset basalt runs.
//! Every field the specification defines is either honoured or, when it is
//! present and basalt cannot honour it, refused by name (`deny_unknown_fields`
//! on each object). What is accepted but only partly enforced is listed in
//! docs/runtime.md (device cgroup rules).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::linux::devices::DeviceRule;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Config {
    pub oci_version: String,
    pub process: Process,
    pub root: Root,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default)]
    pub mounts: Vec<Mount>,
    #[serde(default)]
    pub linux: Linux,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Process {
    #[serde(default)]
    pub terminal: bool,
    #[serde(default)]
    pub user: User,
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    pub cwd: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Capabilities>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rlimits: Vec<Rlimit>,
    #[serde(default)]
    pub no_new_privileges: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oom_score_adj: Option<i32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub umask: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub additional_gids: Vec<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    #[serde(default)]
    pub bounding: Vec<String>,
    #[serde(default)]
    pub effective: Vec<String>,
    #[serde(default)]
    pub inheritable: Vec<String>,
    #[serde(default)]
    pub permitted: Vec<String>,
    #[serde(default)]
    pub ambient: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rlimit {
    #[serde(rename = "type")]
    pub kind: String,
    pub hard: u64,
    pub soft: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Root {
    pub path: PathBuf,
    #[serde(default)]
    pub readonly: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mount {
    pub destination: String,
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Linux {
    #[serde(default)]
    pub namespaces: Vec<Namespace>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroups_path: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub masked_paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub readonly_paths: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sysctl: BTreeMap<String, String>,
    /// With a user namespace: container IDs to the machine's (one range each).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub uid_mappings: Vec<IdMapping>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gid_mappings: Vec<IdMapping>,
    /// Device nodes made in the container's /dev besides the default ones.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<Device>,
    /// The seccomp filter, installed last before the exec (linux/seccomp.rs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seccomp: Option<Seccomp>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdMapping {
    #[serde(rename = "containerID")]
    pub container_id: u32,
    #[serde(rename = "hostID")]
    pub host_id: u32,
    pub size: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Device {
    pub path: String,
    /// `c` or `b`.
    #[serde(rename = "type")]
    pub kind: String,
    pub major: i64,
    pub minor: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_mode: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gid: Option<u32>,
}

/// `linux.seccomp` of the runtime spec: the form docker's profiles take once
/// resolved for one container (seccomp/mod.rs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Seccomp {
    pub default_action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_errno_ret: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub architectures: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub syscalls: Vec<SeccompSyscall>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SeccompSyscall {
    pub names: Vec<String>,
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errno_ret: Option<u32>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<SeccompArg>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SeccompArg {
    pub index: u32,
    pub value: u64,
    #[serde(default)]
    pub value_two: u64,
    pub op: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Namespace {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Memory>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Cpu>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<Pids>,
    /// Device rules for the device cgroup program; the OCI default devices
    /// are allowed after them (linux/devices.rs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<DeviceRule>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Memory {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swap: Option<i64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cpu {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shares: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pids {
    pub limit: i64,
}

pub const NAMESPACES: &[&str] = &["pid", "network", "ipc", "uts", "mount", "cgroup", "user"];

impl Config {
    pub fn load(bundle: &Path) -> Result<Config, String> {
        let path = bundle.join("config.json");
        let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let config: Config = serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
        config.check().map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(config)
    }

    pub fn check(&self) -> Result<(), String> {
        if !self.oci_version.starts_with("1.") {
            return Err(format!("ociVersion {:?} is not 1.x", self.oci_version));
        }
        if self.process.terminal {
            return Err("process.terminal: containers run without a terminal here (their output goes to the log)".into());
        }
        if self.process.args.is_empty() {
            return Err("process.args is empty: nothing to run".into());
        }
        if !self.process.cwd.starts_with('/') {
            return Err(format!("process.cwd {:?} is not absolute", self.process.cwd));
        }
        if let Some(resources) = &self.linux.resources {
            crate::linux::devices::check(&resources.devices)?;
        }
        if let Some(seccomp) = &self.linux.seccomp {
            crate::linux::seccomp::compile(seccomp)?;
        }
        let user = self.has_namespace("user");
        if user != (!self.linux.uid_mappings.is_empty() && !self.linux.gid_mappings.is_empty()) {
            return Err("linux.uidMappings and linux.gidMappings are needed with a user namespace, and only with one".into());
        }
        if self.linux.uid_mappings.len() > 1 || self.linux.gid_mappings.len() > 1 {
            return Err("linux.uidMappings/gidMappings: one range each is supported".into());
        }
        if user && !self.has_namespace("pid") {
            return Err("linux.namespaces: a user namespace needs a PID namespace of its own here".into());
        }
        for (index, device) in self.linux.devices.iter().enumerate() {
            if !matches!(device.kind.as_str(), "c" | "b") || !device.path.starts_with("/dev/") || device.path.contains("/../") || device.major < 0 || device.minor < 0 {
                return Err(format!("linux.devices[{index}]: {:?} {} {}:{} is not a character or block device below /dev", device.path, device.kind, device.major, device.minor));
            }
        }
        for namespace in &self.linux.namespaces {
            if !NAMESPACES.contains(&namespace.kind.as_str()) {
                return Err(format!("linux.namespaces: {:?} is not supported (supported: {})", namespace.kind, NAMESPACES.join(", ")));
            }
            if namespace.path.is_some() && namespace.kind != "network" {
                return Err(format!("linux.namespaces: joining an existing {} namespace (path) is not supported (only a network namespace)", namespace.kind));
            }
        }
        for mount in &self.mounts {
            if !mount.destination.starts_with('/') {
                return Err(format!("mounts: destination {:?} is not absolute", mount.destination));
            }
        }
        if let Some(caps) = &self.process.capabilities {
            for name in caps.bounding.iter().chain(&caps.effective).chain(&caps.inheritable).chain(&caps.permitted).chain(&caps.ambient) {
                if crate::linux::caps::number(name).is_none() {
                    return Err(format!("process.capabilities: unknown capability {name:?}"));
                }
            }
        }
        for limit in &self.process.rlimits {
            if crate::linux::process::rlimit_resource(&limit.kind).is_none() {
                return Err(format!("process.rlimits: unknown limit {:?}", limit.kind));
            }
        }
        Ok(())
    }

    pub fn has_namespace(&self, kind: &str) -> bool {
        self.linux.namespaces.iter().any(|n| n.kind == kind)
    }

    /// The namespace of `kind` to join, when the config names one by path.
    pub fn namespace_path(&self, kind: &str) -> Option<&Path> {
        self.linux.namespaces.iter().find(|n| n.kind == kind).and_then(|n| n.path.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `runc spec` writes (runc 1.1, Debian 12), terminal switched off.
    const RUNC_SPEC: &str = r#"{"ociVersion":"1.0.2-dev","process":{"terminal":false,"user":{"uid":0,"gid":0},"args":["sh"],"env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin","TERM=xterm"],"cwd":"/","capabilities":{"bounding":["CAP_AUDIT_WRITE","CAP_KILL","CAP_NET_BIND_SERVICE"],"effective":["CAP_AUDIT_WRITE","CAP_KILL","CAP_NET_BIND_SERVICE"],"permitted":["CAP_AUDIT_WRITE","CAP_KILL","CAP_NET_BIND_SERVICE"],"ambient":["CAP_AUDIT_WRITE","CAP_KILL","CAP_NET_BIND_SERVICE"]},"rlimits":[{"type":"RLIMIT_NOFILE","hard":1024,"soft":1024}],"noNewPrivileges":true},"root":{"path":"rootfs","readonly":true},"hostname":"runc","mounts":[{"destination":"/proc","type":"proc","source":"proc"},{"destination":"/dev","type":"tmpfs","source":"tmpfs","options":["nosuid","strictatime","mode=755","size=65536k"]},{"destination":"/sys","type":"sysfs","source":"sysfs","options":["nosuid","noexec","nodev","ro"]}],"linux":{"resources":{"devices":[{"allow":false,"access":"rwm"}]},"namespaces":[{"type":"pid"},{"type":"network"},{"type":"ipc"},{"type":"uts"},{"type":"mount"}],"maskedPaths":["/proc/kcore"],"readonlyPaths":["/proc/sys"]}}"#;

    #[test]
    fn runc_spec_output_is_accepted() {
        let config: Config = serde_json::from_str(RUNC_SPEC).unwrap();
        config.check().unwrap();
        assert!(config.has_namespace("network"));
    }

    #[test]
    fn what_cannot_be_honoured_is_refused_by_name() {
        let with_hooks = RUNC_SPEC.replacen("\"hostname\"", "\"hooks\":{},\"hostname\"", 1);
        assert!(serde_json::from_str::<Config>(&with_hooks).unwrap_err().to_string().contains("unknown field `hooks`"));
        let mut config: Config = serde_json::from_str(RUNC_SPEC).unwrap();
        config.process.terminal = true;
        assert!(config.check().unwrap_err().contains("terminal"));
        let mut config: Config = serde_json::from_str(RUNC_SPEC).unwrap();
        config.linux.namespaces.push(Namespace { kind: "user".into(), path: None });
        assert!(config.check().unwrap_err().contains("linux.uidMappings and linux.gidMappings are needed"));
        config.linux.uid_mappings = vec![IdMapping { container_id: 0, host_id: 100_000, size: 65_536 }];
        config.linux.gid_mappings = config.linux.uid_mappings.clone();
        assert!(config.check().is_ok());
        config.linux.namespaces.push(Namespace { kind: "time".into(), path: None });
        assert!(config.check().unwrap_err().contains("\"time\" is not supported"));
        let mut config: Config = serde_json::from_str(RUNC_SPEC).unwrap();
        config.process.capabilities.as_mut().unwrap().bounding.push("CAP_FLY".into());
        assert!(config.check().unwrap_err().contains("CAP_FLY"));
    }
}
