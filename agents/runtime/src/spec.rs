//! A container as declared: the JSON cloud-config writes to
//! `/etc/basalt/containers/NAME.json` (docs/cloud-config.md) and the same
//! shape `basaltctl run` sends. This is the runtime's reading of that
//! contract; unknown fields are refused so a typo never passes silently.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub const DECLARED_DIR: &str = "/etc/basalt/containers";
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Volume {
    pub source: String,
    pub target: String,
    #[serde(default)]
    pub read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Port {
    pub host_ip: Option<String>,
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerSpec {
    pub version: u32,
    /// cloud-config or basaltctl.
    pub source: String,
    pub name: String,
    pub image: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub cpu_millis: Option<u64>,
    #[serde(default)]
    pub memory_bytes: Option<u64>,
    /// Not in cloud-config's format (yet); defaults to DEFAULT_PIDS_LIMIT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids_limit: Option<u64>,
    #[serde(default = "bridge")]
    pub network: String,
    #[serde(default = "always")]
    pub restart: String,
    #[serde(default)]
    pub volumes: Vec<Volume>,
    #[serde(default)]
    pub ports: Vec<Port>,
    /// docker's --privileged: every capability and device, no seccomp
    /// filter, no masked or read-only /proc and /sys paths.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub privileged: bool,
    /// Capabilities on top of docker's default set (`NET_ADMIN`, `CAP_NET_ADMIN`, `ALL`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<String>,
    /// Capabilities taken from it (`ALL` for none at all).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cap_drop: Vec<String>,
    /// Host devices the container may use: `/dev/X[:/dev/Y][:rwm]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<String>,
    /// `default` (when absent), `unconfined`, or the path of a profile in docker's JSON format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seccomp: Option<String>,
    /// `auto`: a user namespace, the container's root an unprivileged user
    /// of the machine (linux/userns.rs); absent or `host`: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub userns: Option<String>,
}

impl ContainerSpec {
    pub fn remapped(&self) -> bool {
        self.userns.as_deref() == Some("auto")
    }
}

/// A container with no network setting gets its own private network, as
/// with docker and rkt; the machine's network (`host`) is asked for by name.
fn bridge() -> String {
    "bridge".into()
}

/// A granted device: the host's node, where it appears in the container, and the access.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceGrant {
    pub host: String,
    pub container: String,
    pub access: String,
}

/// docker's `--device` form: `/dev/X`, `/dev/X:/dev/Y`, `/dev/X:rw`, `/dev/X:/dev/Y:rwm`.
pub fn parse_device(text: &str) -> Result<DeviceGrant, String> {
    let parts: Vec<&str> = text.split(':').collect();
    let is_access = |s: &str| !s.is_empty() && s.len() <= 3 && s.chars().all(|c| matches!(c, 'r' | 'w' | 'm'));
    let (host, container, access) = match parts.as_slice() {
        [host] => (*host, *host, "rwm"),
        [host, access] if is_access(access) => (*host, *host, *access),
        [host, container] => (*host, *container, "rwm"),
        [host, container, access] if is_access(access) => (*host, *container, *access),
        _ => return Err(format!("devices: {text:?} is not /dev/X, /dev/X:/dev/Y or either with :rwm access")),
    };
    for path in [host, container] {
        if !path.starts_with("/dev/") || path.split('/').any(|c| c == "..") {
            return Err(format!("devices: {text:?}: {path:?} is not a path below /dev"));
        }
    }
    Ok(DeviceGrant { host: host.into(), container: container.into(), access: access.into() })
}

/// A capability as a user writes it (`net_admin`, `NET_ADMIN`, `CAP_NET_ADMIN`) in the kernel's spelling, or `ALL`.
pub fn capability_name(text: &str) -> Result<String, String> {
    let upper = text.to_ascii_uppercase();
    if upper == "ALL" {
        return Ok(upper);
    }
    let name = if upper.starts_with("CAP_") { upper } else { format!("CAP_{upper}") };
    crate::linux::caps::number(&name).map(|_| name).ok_or_else(|| format!("{text:?} is not a capability"))
}

fn always() -> String {
    "always".into()
}

pub const DEFAULT_PIDS_LIMIT: u64 = 4096;
pub const NETWORKS: &[&str] = &["host", "none", "bridge"];
pub const RESTART_POLICIES: &[&str] = &["always", "on-failure", "never"];

pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 63 && !name.starts_with('.') && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl ContainerSpec {
    /// What the container was granted beyond the defaults, for `ps`:
    /// "default", or e.g. "privileged, net host" or "cap +NET_ADMIN -MKNOD, device /dev/fuse, seccomp unconfined".
    pub fn grants(&self) -> String {
        let mut grants = Vec::new();
        if self.privileged {
            grants.push("privileged".to_string());
        }
        if self.network == "host" {
            grants.push("net host".to_string());
        }
        let caps: Vec<String> = self.cap_add.iter().map(|c| format!("+{c}")).chain(self.cap_drop.iter().map(|c| format!("-{c}"))).collect();
        if !caps.is_empty() {
            grants.push(format!("cap {}", caps.join(" ")));
        }
        for device in &self.devices {
            grants.push(format!("device {device}"));
        }
        if let Some(seccomp) = self.seccomp.as_deref().filter(|s| *s != crate::seccomp::DEFAULT) {
            grants.push(format!("seccomp {seccomp}"));
        }
        if self.remapped() {
            grants.push("userns auto".to_string());
        }
        if grants.is_empty() {
            "default".into()
        } else {
            grants.join(", ")
        }
    }

    pub fn parse(bytes: &[u8]) -> Result<ContainerSpec, String> {
        let spec: ContainerSpec = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        spec.check()?;
        Ok(spec)
    }

    pub fn check(&self) -> Result<(), String> {
        if self.version != FORMAT_VERSION {
            return Err(format!("version {} is not {FORMAT_VERSION}, the format this runtime reads", self.version));
        }
        if !valid_name(&self.name) {
            return Err(format!("{:?} is not a container name (1-63 letters, digits, '-', '_', '.')", self.name));
        }
        crate::reference::Reference::parse(&self.image).map_err(|e| format!("image: {e}"))?;
        if !NETWORKS.contains(&self.network.as_str()) {
            return Err(format!("network: {:?} is not one of {}", self.network, NETWORKS.join(", ")));
        }
        if !RESTART_POLICIES.contains(&self.restart.as_str()) {
            return Err(format!("restart: {:?} is not one of {}", self.restart, RESTART_POLICIES.join(", ")));
        }
        if self.cpu_millis == Some(0) || self.memory_bytes == Some(0) || self.pids_limit == Some(0) {
            return Err("cpu, memory and pids limits must be above zero".into());
        }
        crate::network::ports::check(&self.ports)?;
        for volume in &self.volumes {
            if !volume.source.starts_with('/') || !volume.target.starts_with('/') {
                return Err(format!("volumes: {} -> {}: both sides must be absolute paths", volume.source, volume.target));
            }
        }
        for (field, names) in [("cap_add", &self.cap_add), ("cap_drop", &self.cap_drop)] {
            for name in names {
                capability_name(name).map_err(|e| format!("{field}: {e}"))?;
            }
        }
        for device in &self.devices {
            parse_device(device)?;
        }
        if let Some(userns) = &self.userns {
            if userns != "auto" && userns != "host" {
                return Err(format!("userns: {userns:?} is not auto or host"));
            }
            if self.privileged && userns == "auto" {
                return Err("userns: auto and privileged contradict each other (privileged is the machine's root)".into());
            }
        }
        if let Some(setting) = &self.seccomp {
            if setting != crate::seccomp::DEFAULT && setting != crate::seccomp::UNCONFINED && !setting.starts_with('/') {
                return Err(format!("seccomp: {setting:?} is not default, unconfined or the absolute path of a profile in docker's JSON format"));
            }
        }
        for key in self.env.keys() {
            if key.is_empty() || key.contains(['=', '\0']) {
                return Err(format!("env: {key:?} is not a variable name"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What cloud-config writes (agents/cloud-config/src/apply/handoff.rs).
    const FROM_CLOUD_CONFIG: &str = r#"{
  "version": 1,
  "source": "cloud-config",
  "name": "web",
  "image": "docker.io/library/nginx:1.25",
  "args": [],
  "env": {"NGINX_HOST": "203.0.113.7"},
  "cpu_millis": 750,
  "memory_bytes": 134217728,
  "network": "host",
  "restart": "on-failure",
  "volumes": [{"source": "/srv/www", "target": "/usr/share/nginx/html", "read_only": true}],
  "ports": [{"host_ip": "127.0.0.1", "host_port": 8443, "container_port": 443, "protocol": "tcp"}]
}"#;

    #[test]
    fn cloud_configs_file_is_read() {
        let spec = ContainerSpec::parse(FROM_CLOUD_CONFIG.as_bytes()).unwrap();
        assert_eq!(spec.memory_bytes, Some(128 << 20));
        assert_eq!(spec.volumes[0].target, "/usr/share/nginx/html");
    }

    #[test]
    fn grants_beyond_the_defaults_are_summed_up() {
        let mut spec = ContainerSpec::parse(FROM_CLOUD_CONFIG.replace("\"network\": \"host\",", "").as_bytes()).unwrap();
        assert_eq!((spec.network.as_str(), spec.grants().as_str()), ("bridge", "default"), "no network named: a private one");
        spec.network = "host".into();
        spec.privileged = true;
        spec.cap_add = vec!["NET_ADMIN".into()];
        spec.cap_drop = vec!["MKNOD".into()];
        spec.devices = vec!["/dev/fuse".into()];
        spec.seccomp = Some("unconfined".into());
        assert_eq!(spec.grants(), "privileged, net host, cap +NET_ADMIN -MKNOD, device /dev/fuse, seccomp unconfined");
        assert!(spec.check().is_ok());
        spec.cap_add = vec!["WIZARDRY".into()];
        assert_eq!(spec.check().unwrap_err(), "cap_add: \"WIZARDRY\" is not a capability");
        spec.cap_add = vec![];
        spec.devices = vec!["/dev/../etc/shadow".into()];
        assert!(spec.check().unwrap_err().contains("is not a path below /dev"));
    }

    #[test]
    fn bad_declarations_are_refused_by_field() {
        let bridge = FROM_CLOUD_CONFIG.replace("\"host\"", "\"bridge\"");
        assert_eq!(ContainerSpec::parse(bridge.as_bytes()).unwrap().network, "bridge");
        let network = FROM_CLOUD_CONFIG.replace("\"host\"", "\"overlay\"");
        assert!(ContainerSpec::parse(network.as_bytes()).unwrap_err().contains("network: \"overlay\" is not one of host, none, bridge"));
        let udp = FROM_CLOUD_CONFIG.replace("\"tcp\"", "\"icmp\"");
        assert!(ContainerSpec::parse(udp.as_bytes()).unwrap_err().contains("ports: \"icmp\" is not a protocol"));
        let version = FROM_CLOUD_CONFIG.replace("\"version\": 1", "\"version\": 2");
        assert!(ContainerSpec::parse(version.as_bytes()).unwrap_err().contains("version 2"));
        let typo = FROM_CLOUD_CONFIG.replace("\"restart\"", "\"restrat\"");
        assert!(ContainerSpec::parse(typo.as_bytes()).unwrap_err().contains("unknown field `restrat`"));
        let image = FROM_CLOUD_CONFIG.replace("docker.io/library/nginx:1.25", "NGINX");
        assert!(ContainerSpec::parse(image.as_bytes()).unwrap_err().starts_with("image:"));
    }
}
