//! `/etc/basalt/store.toml`: where the store keeps its data, where it
//! listens, its limits and its templates. Every field has a default, so a
//! missing file at the default path means "defaults".
//!
//! ```toml
//! data_dir = "/var/lib/basalt/store"     # on ROOT
//! listen = ["127.0.0.1:2379"]            # plain HTTP: loopback only
//! # Beyond loopback only over TLS, with client certificates required:
//! # listen = ["127.0.0.1:2379", "https://10.0.0.5:2379"]
//! # tls_cert = "/etc/basalt/store/server.pem"      # chain, PEM
//! # tls_key = "/etc/basalt/store/server-key.pem"
//! # tls_client_ca = "/etc/basalt/store/client-ca.pem"
//! socket = "/run/basalt/store.sock"      # "" for none
//! socket_group = "wheel"                 # may use the socket, with root
//! history = 1000                         # events kept for watches
//! max_key_bytes = 4096
//! max_value_bytes = 1048576
//! templates_dir = "/etc/basalt/templates.d"
//! seed_file = "/etc/basalt/store-seed.json"  # "" for none
//! # The cluster backend: serve the keyspace from a real etcd v3 cluster
//! # instead of data_dir (all stores naming the same cluster and prefix share it).
//! cluster = ["http://10.0.0.1:2379", "http://10.0.0.2:2379", "http://10.0.0.3:2379"]
//! cluster_prefix = "/basalt/store"
//! cluster_snapshot_every = 10000     # log entries between snapshots
//! ```

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

pub const DEFAULT_PATH: &str = "/etc/basalt/store.toml";

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub data_dir: PathBuf,
    pub listen: Vec<String>,
    pub socket: PathBuf,
    pub socket_group: String,
    pub history: usize,
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    pub templates_dir: PathBuf,
    pub seed_file: PathBuf,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    pub tls_client_ca: PathBuf,
    pub cluster: Vec<String>,
    pub cluster_prefix: String,
    pub cluster_snapshot_every: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: "/var/lib/basalt/store".into(),
            listen: vec!["127.0.0.1:2379".into()],
            socket: "/run/basalt/store.sock".into(),
            socket_group: "wheel".into(),
            history: crate::history::DEFAULT_CAPACITY,
            max_key_bytes: 4096,
            max_value_bytes: 1024 * 1024,
            templates_dir: "/etc/basalt/templates.d".into(),
            seed_file: crate::seed::DEFAULT_PATH.into(),
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
            tls_client_ca: PathBuf::new(),
            cluster: Vec::new(),
            cluster_prefix: "/basalt/store".into(),
            cluster_snapshot_every: crate::cluster::DEFAULT_SNAPSHOT_EVERY,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: listen address {addr:?} is not IP:PORT or https://IP:PORT")]
    BadAddress { path: PathBuf, addr: String },
    #[error(
        "{path}: listen address {addr} is not loopback; beyond this machine the store serves only TLS with client certificates: write it as https://{addr} and set tls_cert, tls_key and tls_client_ca"
    )]
    NotLoopback { path: PathBuf, addr: String },
    #[error("{path}: listen address {addr} is TLS, which needs {missing} (client certificates are always required)")]
    TlsMissing { path: PathBuf, addr: String, missing: String },
    #[error("{path}: cluster member {url:?} is not http://HOST:PORT (the cluster backend speaks plain HTTP to etcd)")]
    BadMember { path: PathBuf, url: String },
    #[error("{path}: cluster_prefix {prefix:?} must start with '/' and not end with one")]
    BadPrefix { path: PathBuf, prefix: String },
    #[error("{path}: {field} must be at least 1")]
    Zero { path: PathBuf, field: &'static str },
}

/// One `listen` entry: `IP:PORT` (or `http://IP:PORT`), plain HTTP, or
/// `https://IP:PORT`, TLS with client certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen {
    pub addr: SocketAddr,
    pub tls: bool,
}

impl Listen {
    pub fn parse(text: &str) -> Option<Listen> {
        let (rest, tls) = match text.strip_prefix("https://") {
            Some(rest) => (rest, true),
            None => (text.strip_prefix("http://").unwrap_or(text), false),
        };
        Some(Listen { addr: rest.parse().ok()?, tls })
    }
}

impl Config {
    /// The `listen` entries, parsed (checked by `validate`).
    pub fn listeners(&self) -> Vec<Listen> {
        self.listen.iter().filter_map(|l| Listen::parse(l)).collect()
    }

    /// Load `path`; a missing file is the defaults only when `optional`.
    pub fn load(path: &Path, optional: bool) -> Result<Config, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if optional && e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(source) => return Err(ConfigError::Read { path: path.into(), source }),
        };
        Config::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse { path: path.into(), message: e.to_string() })?;
        config.validate(path)?;
        Ok(config)
    }

    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        for addr in &self.listen {
            let parsed = Listen::parse(addr).ok_or_else(|| ConfigError::BadAddress { path: path.into(), addr: addr.clone() })?;
            if !parsed.tls && !parsed.addr.ip().is_loopback() {
                return Err(ConfigError::NotLoopback { path: path.into(), addr: parsed.addr.to_string() });
            }
            let missing: Vec<&str> = [("tls_cert", &self.tls_cert), ("tls_key", &self.tls_key), ("tls_client_ca", &self.tls_client_ca)]
                .into_iter()
                .filter(|(_, p)| p.as_os_str().is_empty())
                .map(|(name, _)| name)
                .collect();
            if parsed.tls && !missing.is_empty() {
                return Err(ConfigError::TlsMissing { path: path.into(), addr: addr.clone(), missing: missing.join(", ") });
            }
        }
        for url in &self.cluster {
            let rest = url.strip_prefix("http://").unwrap_or("");
            if rest.is_empty() || !rest.trim_end_matches('/').contains(':') || rest.trim_end_matches('/').contains('/') {
                return Err(ConfigError::BadMember { path: path.into(), url: url.clone() });
            }
        }
        if !self.cluster_prefix.starts_with('/') || self.cluster_prefix.ends_with('/') {
            return Err(ConfigError::BadPrefix { path: path.into(), prefix: self.cluster_prefix.clone() });
        }
        for (field, v) in
            [("cluster_snapshot_every", self.cluster_snapshot_every as usize), ("history", self.history), ("max_key_bytes", self.max_key_bytes), ("max_value_bytes", self.max_value_bytes)]
        {
            if v == 0 {
                return Err(ConfigError::Zero { path: path.into(), field });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_overrides() {
        let p = Path::new("store.toml");
        assert_eq!(Config::parse("", p).unwrap(), Config::default());
        let c = Config::parse("listen = [\"[::1]:4001\"]\nsocket = \"\"\nhistory = 50\n", p).unwrap();
        assert_eq!((c.listen[0].as_str(), c.socket.as_os_str().is_empty(), c.history), ("[::1]:4001", true, 50));
        assert_eq!(Config::load(Path::new("/nonexistent/store.toml"), true).unwrap(), Config::default());
        assert!(Config::load(Path::new("/nonexistent/store.toml"), false).is_err());
    }

    #[test]
    fn errors_name_the_file_and_the_fix() {
        let p = Path::new("/etc/basalt/store.toml");
        let e = Config::parse("listen = [\"0.0.0.0:2379\"]", p).unwrap_err().to_string();
        assert!(e.contains("/etc/basalt/store.toml") && e.contains("not loopback"), "{e}");
        let e = Config::parse("listen = [\"https://0.0.0.0:2379\"]\ntls_cert = \"/c.pem\"", p).unwrap_err().to_string();
        assert!(e.contains("https://0.0.0.0:2379 is TLS, which needs tls_key, tls_client_ca"), "{e}");
        let e = Config::parse("listen = [\"http://10.0.0.5:2379\"]", p).unwrap_err().to_string();
        assert!(e.contains("write it as https://10.0.0.5:2379"), "{e}");
        let e = Config::parse("listen = [\"ftp://[::1]:1\"]", p).unwrap_err().to_string();
        assert!(e.contains("\"ftp://[::1]:1\" is not IP:PORT or https://IP:PORT"), "{e}");
        let c = Config::parse("listen = [\"127.0.0.1:2379\", \"https://0.0.0.0:2379\"]\ntls_cert = \"/c\"\ntls_key = \"/k\"\ntls_client_ca = \"/ca\"", p).unwrap();
        assert_eq!(c.listeners(), [Listen { addr: "127.0.0.1:2379".parse().unwrap(), tls: false }, Listen { addr: "0.0.0.0:2379".parse().unwrap(), tls: true }]);
        let e = Config::parse("lisen = []", p).unwrap_err().to_string();
        assert!(e.contains("lisen"), "{e}");
        assert!(Config::parse("history = 0", p).is_err());
        assert!(Config::parse("cluster = [\"10.0.0.1:2379\"]", p).unwrap_err().to_string().contains("http://"));
        let c = Config::parse("cluster = [\"http://10.0.0.1:2379\"]", p).unwrap();
        assert_eq!(c.cluster_prefix, "/basalt/store");
    }
}
