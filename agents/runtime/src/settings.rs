//! The runtime agent's settings, `/etc/basalt/runtime.toml`:
//!
//! ```toml
//! stop_timeout_seconds = 10
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
}

fn default_stop_timeout() -> u64 {
    10
}

impl Default for Settings {
    fn default() -> Settings {
        Settings { registries: BTreeMap::new(), stop_timeout_seconds: default_stop_timeout() }
    }
}

impl Settings {
    pub fn parse(text: &str) -> Result<Settings, String> {
        let settings: Settings = toml::from_str(text).map_err(|e| e.to_string())?;
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
    }
}
