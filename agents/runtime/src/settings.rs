//! The runtime agent's settings, `/etc/basalt/runtime.toml`:
//!
//! ```toml
//! stop_timeout_seconds = 10
//! [network]                       # containers with `network: bridge`
//! bridge = "basalt0"
//! subnet = "10.88.0.0/16"
//! [registries."10.0.2.2:5000"]
//! insecure = true                 # plain HTTP
//! [registries."registry.example.com"]
//! ca = "/etc/basalt/registry-ca.pem"
//! username = "robot"
//! password = "secret"
//! ```
//!
//! A missing file means defaults: HTTPS with the web's roots, anonymous.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub const SETTINGS_FILE: &str = "/etc/basalt/runtime.toml";

#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistrySettings {
    /// Plain HTTP instead of HTTPS.
    #[serde(default)]
    pub insecure: bool,
    /// PEM file of the CA(s) the registry's certificate must chain to.
    pub ca: Option<PathBuf>,
    pub username: Option<String>,
    pub password: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    #[serde(default)]
    pub registries: BTreeMap<String, RegistrySettings>,
    /// How long a container has to exit after SIGTERM before it is killed.
    #[serde(default = "default_stop_timeout")]
    pub stop_timeout_seconds: u64,
    #[serde(default)]
    pub network: NetworkSettings,
}

/// The bridge network (`network: bridge` containers): the host bridge and
/// the private subnet containers get their addresses from; the bridge has
/// the subnet's first address and is the containers' gateway.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSettings {
    #[serde(default = "default_bridge")]
    pub bridge: String,
    #[serde(default = "default_subnet", deserialize_with = "subnet")]
    pub subnet: crate::network::Subnet,
}

pub const DEFAULT_BRIDGE: &str = "basalt0";
pub const DEFAULT_SUBNET: &str = "10.88.0.0/16";

fn default_bridge() -> String {
    DEFAULT_BRIDGE.into()
}

fn default_subnet() -> crate::network::Subnet {
    DEFAULT_SUBNET.parse().expect("the default subnet parses")
}

fn subnet<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<crate::network::Subnet, D::Error> {
    let text = String::deserialize(deserializer)?;
    text.parse().map_err(serde::de::Error::custom)
}

impl Default for NetworkSettings {
    fn default() -> NetworkSettings {
        NetworkSettings { bridge: default_bridge(), subnet: default_subnet() }
    }
}

fn default_stop_timeout() -> u64 {
    10
}

impl Default for Settings {
    fn default() -> Settings {
        Settings { registries: BTreeMap::new(), stop_timeout_seconds: default_stop_timeout(), network: NetworkSettings::default() }
    }
}

impl Settings {
    pub fn parse(text: &str) -> Result<Settings, String> {
        let settings: Settings = toml::from_str(text).map_err(|e| e.to_string())?;
        let bridge = &settings.network.bridge;
        if bridge.is_empty() || bridge.len() > 15 || bridge == "lo" || !bridge.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
            return Err(format!("network.bridge: {bridge:?} is not an interface name for the bridge (1-15 letters, digits, '-', '_', '.')"));
        }
        for (name, registry) in &settings.registries {
            if registry.username.is_some() != registry.password.is_some() {
                return Err(format!("registries.\"{name}\": username and password go together"));
            }
            if registry.insecure && registry.ca.is_some() {
                return Err(format!("registries.\"{name}\": insecure (plain HTTP) and ca (HTTPS) exclude each other"));
            }
        }
        Ok(settings)
    }

    pub fn load(path: &Path) -> Result<Settings, String> {
        match std::fs::read_to_string(path) {
            Ok(text) => Settings::parse(&text).map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Settings::default()),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    pub fn registry(&self, registry: &str) -> RegistrySettings {
        self.registries.get(registry).cloned().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse_and_bad_ones_are_named() {
        let s = Settings::parse("[registries.\"10.0.2.2:5000\"]\ninsecure = true\n").unwrap();
        assert!(s.registry("10.0.2.2:5000").insecure);
        assert!(!s.registry("quay.io").insecure);
        assert_eq!(s.stop_timeout_seconds, 10);
        assert!(Settings::parse("[registries.a]\nusername = \"x\"\n").unwrap_err().contains("username and password go together"));
        assert!(Settings::parse("[registries.a]\ninsecure = true\nca = \"/x\"\n").unwrap_err().contains("exclude each other"));
        assert!(Settings::parse("registry = 1\n").unwrap_err().contains("unknown field"));
        assert_eq!(s.network.bridge, "basalt0");
        assert_eq!(s.network.subnet.to_string(), "10.88.0.0/16");
        let s = Settings::parse("[network]\nsubnet = \"172.31.0.0/24\"\n").unwrap();
        assert_eq!((s.network.bridge.as_str(), s.network.subnet.to_string().as_str()), ("basalt0", "172.31.0.0/24"));
        assert!(Settings::parse("[network]\nsubnet = \"172.31.0.1/24\"\n").unwrap_err().contains("host bits set"));
        assert!(Settings::parse("[network]\nbridge = \"a/b\"\n").unwrap_err().contains("network.bridge"));
    }
}
