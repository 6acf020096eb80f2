//! basalt's `containers:` extension, handed to the runtime agent.

use std::collections::BTreeMap;

use serde::Serialize;

use super::fields::{clean, describe, Fields};
use crate::report::Report;
use crate::yaml::{Node, Value};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Volume {
    pub source: String,
    pub target: String,
    pub read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Port {
    pub host_ip: Option<String>,
    pub host_port: u16,
    pub container_port: u16,
    pub protocol: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Container {
    pub name: String,
    pub image: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// Thousandths of a CPU (`750m` = 750, `2` = 2000).
    pub cpu_millis: Option<u64>,
    pub memory_bytes: Option<u64>,
    /// host, none or bridge.
    pub network: String,
    /// always, on-failure or never.
    pub restart: String,
    pub volumes: Vec<Volume>,
    pub ports: Vec<Port>,
    /// Grants beyond the default, each named (docs/runtime.md): every
    /// capability and device with no seccomp filter, capabilities added or
    /// dropped, host devices, a seccomp profile.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub privileged: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cap_add: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cap_drop: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seccomp: Option<String>,
    /// `auto`: the container's root is an unprivileged user of the machine.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub userns: Option<String>,
}

const KNOWN: &[&str] = &["name", "image", "args", "env", "cpu", "memory", "network", "restart", "volumes", "ports", "privileged", "cap_add", "cap_drop", "devices", "seccomp", "userns"];
pub const NETWORKS: &[&str] = &["host", "none", "bridge"];
pub const RESTART_POLICIES: &[&str] = &["always", "on-failure", "never"];

pub fn parse_container(node: &Node, path: &str, report: &mut Report) -> Option<Container> {
    clean(report, |report| {
        let fields = Fields::of(node, path, report)?;
        fields.warn_unknown(KNOWN, report);
        let (Some(name), Some(image)) = (fields.string("name", report), fields.string("image", report)) else {
            report.error(path, Some(node.position), "a container needs a name and an image");
            return None;
        };
        if name.is_empty() || name.len() > 63 || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) || name.starts_with('.') {
            report.error(fields.key_path("name"), fields.get("name").map(|n| n.position), format!("{name:?} is not a container name (letters, digits, '-', '_', '.')"));
        }
        if image.is_empty() || image.contains(char::is_whitespace) {
            report.error(fields.key_path("image"), fields.get("image").map(|n| n.position), format!("{image:?} is not an image reference"));
        }
        let args = fields.strings("args", report).unwrap_or_default();
        let env = fields.get("env").map(|node| env(node, &fields.key_path("env"), report)).unwrap_or_default();
        let cpu_millis = fields.get("cpu").and_then(|node| {
            let parsed = node.as_scalar().and_then(parse_cpu_millis);
            if parsed.is_none() {
                report.error(fields.key_path("cpu"), Some(node.position), format!("{} is not a CPU amount such as \"750m\" or \"2\"", describe(node)));
            }
            parsed
        });
        let memory_bytes = fields.get("memory").and_then(|node| {
            let parsed = node.as_scalar().and_then(parse_memory_bytes);
            if parsed.is_none() {
                report.error(fields.key_path("memory"), Some(node.position), format!("{} is not a memory size such as \"128M\" or \"2G\"", describe(node)));
            }
            parsed
        });
        // No network named: a private one (the runtime's bridge), as docker does.
        let network = one_of(&fields, "network", NETWORKS, "bridge", report);
        let restart = one_of(&fields, "restart", RESTART_POLICIES, "always", report);
        let volumes = fields
            .strings("volumes", report)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|text| {
                let volume = parse_volume(&text);
                if volume.is_none() {
                    report.error(fields.key_path("volumes"), fields.get("volumes").map(|n| n.position), format!("{text:?} is not a volume such as \"/srv/data:/data\" or \"/srv/data:/data:ro\""));
                }
                volume
            })
            .collect();
        let ports = fields
            .strings("ports", report)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|text| {
                let port = parse_port(&text);
                if port.is_none() {
                    report.error(fields.key_path("ports"), fields.get("ports").map(|n| n.position), format!("{text:?} is not a port mapping such as \"8080:80\" or \"53:53/udp\""));
                }
                port
            })
            .collect();
        let privileged = fields.bool("privileged", report).unwrap_or(false);
        let capabilities = |key: &str, report: &mut Report| -> Vec<String> {
            let names = fields.strings(key, report).unwrap_or_default();
            for name in &names {
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    report.error(fields.key_path(key), fields.get(key).map(|n| n.position), format!("{name:?} is not a capability name such as NET_ADMIN"));
                }
            }
            names
        };
        let cap_add = capabilities("cap_add", report);
        let cap_drop = capabilities("cap_drop", report);
        let devices = fields.strings("devices", report).unwrap_or_default();
        for device in &devices {
            if !device.starts_with("/dev/") {
                report.error(fields.key_path("devices"), fields.get("devices").map(|n| n.position), format!("{device:?} is not a device such as \"/dev/fuse\" or \"/dev/sdb:/dev/xvdb:rw\""));
            }
        }
        let seccomp = fields.string("seccomp", report);
        if let Some(value) = &seccomp {
            if value != "default" && value != "unconfined" && !value.starts_with('/') {
                report.error(
                    fields.key_path("seccomp"),
                    fields.get("seccomp").map(|n| n.position),
                    format!("{value:?} is not default, unconfined or the absolute path of a profile in docker's JSON format"),
                );
            }
        }
        let userns = fields.string("userns", report);
        if let Some(value) = userns.as_deref().filter(|v| *v != "auto" && *v != "host") {
            report.error(fields.key_path("userns"), fields.get("userns").map(|n| n.position), format!("{value:?} is not auto or host"));
        }
        Some(Container { name, image, args, env, cpu_millis, memory_bytes, network, restart, volumes, ports, privileged, cap_add, cap_drop, devices, seccomp, userns })
    })
}

fn one_of(fields: &Fields, key: &str, allowed: &[&str], default: &str, report: &mut Report) -> String {
    match fields.string(key, report) {
        None => default.to_string(),
        Some(value) if allowed.contains(&value.as_str()) => value,
        Some(value) => {
            report.error(fields.key_path(key), fields.get(key).map(|n| n.position), format!("{value:?} is not one of {}", allowed.join(", ")));
            default.to_string()
        }
    }
}

/// `env` as a mapping (`KEY: value`) or a list of `KEY=value`.
fn env(node: &Node, path: &str, report: &mut Report) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    let valid_name = |name: &str| !name.is_empty() && !name.contains(['=', '\0']) && !name.starts_with(|c: char| c.is_ascii_digit());
    match &node.value {
        Value::Mapping(entries) => {
            for (key, value) in entries {
                let name = key.as_scalar().unwrap_or_default().to_string();
                match value.as_scalar() {
                    Some(text) if valid_name(&name) => {
                        env.insert(name, text.to_string());
                    }
                    _ => report.error(format!("{path}.{name}"), Some(value.position), "expected NAME: value with a scalar value"),
                }
            }
        }
        Value::Sequence(items) => {
            for (index, item) in items.iter().enumerate() {
                match item.as_scalar().and_then(|text| text.split_once('=')) {
                    Some((name, value)) if valid_name(name) => {
                        env.insert(name.to_string(), value.to_string());
                    }
                    _ => report.error(format!("{path}[{index}]"), Some(item.position), format!("{} is not NAME=value", describe(item))),
                }
            }
        }
        Value::Scalar { .. } => report.error(path, Some(node.position), "expected a mapping of NAME: value or a list of NAME=value"),
    }
    env
}

pub fn parse_cpu_millis(text: &str) -> Option<u64> {
    let millis = if let Some(millis) = text.strip_suffix('m') {
        millis.parse::<u64>().ok()?
    } else {
        let cpus: f64 = text.parse().ok()?;
        if !(cpus.is_finite() && cpus > 0.0 && cpus < 1e6) {
            return None;
        }
        (cpus * 1000.0).round() as u64
    };
    (millis > 0).then_some(millis)
}

/// `128M`, `1G`, `512Mi`, `1048576`; K/M/G/T are powers of 1024, as rkt and docker read them.
pub fn parse_memory_bytes(text: &str) -> Option<u64> {
    let trimmed = text.trim_end_matches(['i', 'B', 'b']);
    let (digits, multiplier) = match trimmed.chars().last()? {
        'k' | 'K' => (&trimmed[..trimmed.len() - 1], 1u64 << 10),
        'm' | 'M' => (&trimmed[..trimmed.len() - 1], 1 << 20),
        'g' | 'G' => (&trimmed[..trimmed.len() - 1], 1 << 30),
        't' | 'T' => (&trimmed[..trimmed.len() - 1], 1 << 40),
        _ if trimmed.len() == text.len() => (trimmed, 1),
        _ => return None,
    };
    let bytes = digits.parse::<u64>().ok()?.checked_mul(multiplier)?;
    (bytes > 0).then_some(bytes)
}

fn parse_volume(text: &str) -> Option<Volume> {
    let mut pieces = text.split(':');
    let source = pieces.next()?.to_string();
    let target = pieces.next()?.to_string();
    let read_only = match pieces.next() {
        None | Some("rw") => false,
        Some("ro") => true,
        Some(_) => return None,
    };
    (pieces.next().is_none() && source.starts_with('/') && target.starts_with('/')).then_some(Volume { source, target, read_only })
}

/// `[IP:]HOST:CONTAINER[/tcp|/udp]` or `PORT[/PROTO]` (docker's `-p` form),
/// shared with `basaltctl run -p`.
pub fn parse_port(text: &str) -> Option<Port> {
    let (mapping, protocol) = match text.split_once('/') {
        Some((mapping, protocol @ ("tcp" | "udp"))) => (mapping, protocol),
        Some(_) => return None,
        None => (text, "tcp"),
    };
    let pieces: Vec<&str> = mapping.rsplitn(3, ':').collect();
    let (host_ip, host_port, container_port) = match pieces.as_slice() {
        [container] => (None, *container, *container),
        [container, host] => (None, *host, *container),
        [container, host, ip] => (Some(ip.trim_matches(['[', ']']).to_string()), *host, *container),
        _ => return None,
    };
    if let Some(ip) = &host_ip {
        ip.parse::<std::net::IpAddr>().ok()?;
    }
    let host_port: u16 = host_port.parse().ok().filter(|&p| p > 0)?;
    let container_port: u16 = container_port.parse().ok().filter(|&p| p > 0)?;
    Some(Port { host_ip, host_port, container_port, protocol: protocol.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml;

    #[test]
    fn a_container_parses_with_units() {
        let node = yaml::parse(
            "name: etcd\nimage: quay.io/coreos/etcd:v2.0.0\ncpu: 750m\nmemory: 128M\nnetwork: host\nenv: {A: '1'}\nports: ['127.0.0.1:4001:4001', '7001:7001/udp']\nvolumes: ['/var/lib/etcd:/data']\n",
        )
        .unwrap();
        let mut report = Report::default();
        let container = parse_container(&node, "containers[0]", &mut report).unwrap();
        assert!(report.problems.is_empty(), "{report}");
        assert_eq!(container.cpu_millis, Some(750));
        assert_eq!(container.memory_bytes, Some(128 << 20));
        assert_eq!(container.ports[0].host_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(container.ports[1].protocol, "udp");
        assert!(!container.volumes[0].read_only);
    }

    #[test]
    fn grants_are_named_and_the_default_network_is_private() {
        let node = yaml::parse("name: a\nimage: b\n").unwrap();
        let mut report = Report::default();
        let container = parse_container(&node, "containers[0]", &mut report).unwrap();
        assert_eq!(container.network, "bridge");
        assert!(!container.privileged && container.cap_add.is_empty() && container.devices.is_empty() && container.seccomp.is_none());
        let node = yaml::parse("name: a\nimage: b\nprivileged: true\ncap_add: [NET_ADMIN]\ncap_drop: [MKNOD]\ndevices: ['/dev/fuse']\nseccomp: /etc/basalt/seccomp.json\nuserns: auto\n").unwrap();
        let container = parse_container(&node, "containers[0]", &mut report).unwrap();
        assert!(report.problems.is_empty(), "{report}");
        assert!(container.privileged);
        assert_eq!(container.userns.as_deref(), Some("auto"));
        assert_eq!((container.cap_add, container.cap_drop, container.devices), (vec!["NET_ADMIN".to_string()], vec!["MKNOD".to_string()], vec!["/dev/fuse".to_string()]));
        let node = yaml::parse("name: a\nimage: b\ncap_add: ['NET ADMIN']\ndevices: [fuse]\nseccomp: strict\n").unwrap();
        assert!(parse_container(&node, "containers[0]", &mut report).is_none());
        let text = report.to_string();
        assert!(
            text.contains("containers[0].cap_add: \"NET ADMIN\" is not a capability name")
                && text.contains("containers[0].devices: \"fuse\" is not a device")
                && text.contains("containers[0].seccomp: \"strict\""),
            "{text}"
        );
    }

    #[test]
    fn amounts() {
        assert_eq!(parse_cpu_millis("2"), Some(2000));
        assert_eq!(parse_cpu_millis("0.5"), Some(500));
        assert_eq!(parse_cpu_millis("lots"), None);
        assert_eq!(parse_memory_bytes("1G"), Some(1 << 30));
        assert_eq!(parse_memory_bytes("512Mi"), Some(512 << 20));
        assert_eq!(parse_memory_bytes("4096"), Some(4096));
        assert_eq!(parse_memory_bytes("big"), None);
    }

    #[test]
    fn a_bad_memory_size_fails_the_container() {
        let node = yaml::parse("name: a\nimage: b\nmemory: lots\n").unwrap();
        let mut report = Report::default();
        assert!(parse_container(&node, "containers[0]", &mut report).is_none());
        assert_eq!(report.to_string(), "3:9: error: containers[0].memory: \"lots\" is not a memory size such as \"128M\" or \"2G\"\n");
    }
}
