//! What a datasource knows about the machine besides its user data, and the
//! `$private_ipv4`-style substitutions made from it.

use serde::Serialize;

use crate::yaml::{self, Node, Value};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Metadata {
    pub instance_id: Option<String>,
    pub hostname: Option<String>,
    pub public_ipv4: Option<String>,
    pub private_ipv4: Option<String>,
    pub public_ipv6: Option<String>,
    pub private_ipv6: Option<String>,
    /// Keys for `core`, from the platform (EC2 key pairs, NoCloud public-keys).
    pub public_keys: Vec<String>,
}

/// The names coreos-cloudinit substituted, longest first so that no name is
/// matched as the prefix of another.
const NAMES: &[&str] = &["$public_ipv4", "$private_ipv4", "$public_ipv6", "$private_ipv6", "$hostname"];

impl Metadata {
    fn value_of(&self, name: &str) -> Option<&str> {
        match name {
            "$public_ipv4" => self.public_ipv4.as_deref(),
            "$private_ipv4" => self.private_ipv4.as_deref(),
            "$public_ipv6" => self.public_ipv6.as_deref(),
            "$private_ipv6" => self.private_ipv6.as_deref(),
            "$hostname" => self.hostname.as_deref(),
            _ => None,
        }
    }

    /// Replaces each `$name` with its value (empty when the datasource does
    /// not know it, as coreos-cloudinit did); `\$name` stays a literal `$name`.
    pub fn substitute(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(index) = rest.find('$') {
            let (before, from_dollar) = rest.split_at(index);
            let name = NAMES.iter().find(|name| from_dollar.starts_with(**name));
            match name {
                Some(name) if before.ends_with('\\') => {
                    out.push_str(&before[..before.len() - 1]);
                    out.push_str(name);
                    rest = &from_dollar[name.len()..];
                }
                Some(name) => {
                    out.push_str(before);
                    out.push_str(self.value_of(name).unwrap_or(""));
                    rest = &from_dollar[name.len()..];
                }
                None => {
                    out.push_str(before);
                    out.push('$');
                    rest = &from_dollar[1..];
                }
            }
        }
        out.push_str(rest);
        out
    }

    /// Fills what this one lacks from `other`.
    pub fn fill_from(&mut self, other: Metadata) {
        let Metadata { instance_id, hostname, public_ipv4, private_ipv4, public_ipv6, private_ipv6, public_keys } = other;
        self.instance_id = self.instance_id.take().or(instance_id);
        self.hostname = self.hostname.take().or(hostname);
        self.public_ipv4 = self.public_ipv4.take().or(public_ipv4);
        self.private_ipv4 = self.private_ipv4.take().or(private_ipv4);
        self.public_ipv6 = self.public_ipv6.take().or(public_ipv6);
        self.private_ipv6 = self.private_ipv6.take().or(private_ipv6);
        for key in public_keys {
            if !self.public_keys.contains(&key) {
                self.public_keys.push(key);
            }
        }
    }
}

/// The instance id to key once-per-instance work on: the datasource's, or
/// for datasources that have none (fw_cfg, OEM, a URL) one derived from the
/// user data itself, so new user data on the same machine counts as a new
/// instance, as a fresh deployment would.
pub fn instance_id(metadata: &Metadata, user_data: &[u8]) -> String {
    use sha2::Digest;
    match &metadata.instance_id {
        Some(id) => id.clone(),
        None => {
            let digest = sha2::Sha256::digest(user_data);
            let hex: String = digest.iter().take(8).map(|byte| format!("{byte:02x}")).collect();
            format!("iid-userdata-{hex}")
        }
    }
}

/// NoCloud-style `meta-data` (YAML or JSON): `instance-id`, `local-hostname`
/// (or `hostname`), `public-keys` (a key, a list, or a mapping of name to
/// key(s)), `public-ipv4`, `local-ipv4`, `public-ipv6`, `local-ipv6`.
/// Whatever does not parse is ignored: metadata is a hint, not a command.
pub fn parse_meta_data(text: &str) -> Metadata {
    let Ok(root) = yaml::parse(text) else { return Metadata::default() };
    let Some(entries) = root.as_mapping() else { return Metadata::default() };
    let get = |names: &[&str]| {
        entries.iter().find(|(key, _)| key.as_scalar().is_some_and(|k| names.contains(&k))).and_then(|(_, value)| value.as_scalar()).map(str::trim).filter(|value| !value.is_empty()).map(String::from)
    };
    let mut public_keys = Vec::new();
    if let Some((_, keys)) = entries.iter().find(|(key, _)| matches!(key.as_scalar(), Some("public-keys" | "public_keys"))) {
        collect_keys(keys, &mut public_keys);
    }
    Metadata {
        instance_id: get(&["instance-id", "instance_id", "uuid"]),
        hostname: get(&["local-hostname", "hostname", "local_hostname"]),
        public_ipv4: get(&["public-ipv4", "public_ipv4"]),
        private_ipv4: get(&["local-ipv4", "private-ipv4", "local_ipv4", "private_ipv4"]),
        public_ipv6: get(&["public-ipv6", "public_ipv6"]),
        private_ipv6: get(&["local-ipv6", "private-ipv6", "local_ipv6", "private_ipv6"]),
        public_keys,
    }
}

/// Keys from a scalar, a list, or a mapping of names to keys (OpenStack's
/// `public_keys`), in order.
pub fn collect_keys(node: &Node, keys: &mut Vec<String>) {
    match &node.value {
        Value::Scalar { text, .. } => {
            for line in text.lines().map(str::trim).filter(|line| !line.is_empty() && !line.starts_with('#')) {
                if !keys.iter().any(|known| known == line) {
                    keys.push(line.to_string());
                }
            }
        }
        Value::Sequence(items) => items.iter().for_each(|item| collect_keys(item, keys)),
        Value::Mapping(entries) => entries.iter().for_each(|(_, value)| collect_keys(value, keys)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata() -> Metadata {
        Metadata { public_ipv4: Some("203.0.113.7".into()), private_ipv4: Some("10.0.0.5".into()), hostname: Some("node1".into()), ..Metadata::default() }
    }

    #[test]
    fn names_are_replaced_and_unknown_ones_emptied() {
        let text = "addr: $private_ipv4:4001 public=$public_ipv4 v6=[$public_ipv6] on $hostname";
        assert_eq!(metadata().substitute(text), "addr: 10.0.0.5:4001 public=203.0.113.7 v6=[] on node1");
    }

    #[test]
    fn escaped_names_and_other_dollars_stay() {
        assert_eq!(metadata().substitute(r"echo \$private_ipv4 $HOME $$ $"), "echo $private_ipv4 $HOME $$ $");
    }

    #[test]
    fn nocloud_meta_data_is_read() {
        let metadata = parse_meta_data("instance-id: iid-local01\nlocal-hostname: cloudimg\npublic-keys:\n  - ssh-ed25519 AAAAC3Nz a\nlocal-ipv4: 10.0.0.9\n");
        assert_eq!(metadata.instance_id.as_deref(), Some("iid-local01"));
        assert_eq!(metadata.hostname.as_deref(), Some("cloudimg"));
        assert_eq!(metadata.private_ipv4.as_deref(), Some("10.0.0.9"));
        assert_eq!(metadata.public_keys, ["ssh-ed25519 AAAAC3Nz a"]);
        let json = parse_meta_data(r#"{"uuid": "83679162-1378-4288-a2d4-70e13ec132aa", "hostname": "x", "public_keys": {"mykey": "ssh-rsa AAAAB3 k"}}"#);
        assert_eq!(json.instance_id.as_deref(), Some("83679162-1378-4288-a2d4-70e13ec132aa"));
        assert_eq!(json.public_keys, ["ssh-rsa AAAAB3 k"]);
    }
}
