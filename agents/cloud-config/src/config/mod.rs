//! The meaning of one `#cloud-config` document: coreos-cloudinit's keys plus
//! basalt's extensions, each value checked, each problem placed.
//!
//! Rules: an unknown key is a warning naming it; a key whose value does not
//! fit is an error and is left out; inside lists (`users`, `write_files`,
//! `coreos.units`, `containers`, `network.interfaces`) an entry with a bad
//! field is left out whole, so a file is never written with the wrong owner
//! and a user never created half. Everything else still applies.

mod container;
mod etcd;
mod fields;
mod file;
mod network;
mod unit;
mod update;
mod user;

use serde::Serialize;

pub use container::{parse_cpu_millis, parse_memory_bytes, parse_port, Container, Port, Volume};
pub use etcd::EtcdSettings;
pub use file::WriteFile;
pub use network::{Interface, Route};
pub use unit::{DropIn, Unit, UnitCommand};
pub use update::UpdateSettings;
pub use user::User;

use crate::report::Report;
use crate::yaml::{self, Node, Value};
use fields::{items, Fields};

/// A command from `runcmd` or `bootcmd`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Command {
    /// Run by `/bin/sh -c`.
    Shell(String),
    /// Run directly, no shell.
    Argv(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoreKey {
    pub key: String,
    pub value: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CloudConfig {
    /// Keys for the `core` user.
    pub ssh_authorized_keys: Vec<String>,
    pub hostname: Option<String>,
    pub manage_etc_hosts: bool,
    pub users: Vec<User>,
    pub write_files: Vec<WriteFile>,
    pub units: Vec<Unit>,
    #[serde(skip_serializing_if = "UpdateSettings::is_empty")]
    pub update: UpdateSettings,
    /// Once per instance.
    pub runcmd: Vec<Command>,
    /// Every boot.
    pub bootcmd: Vec<Command>,
    pub network: Vec<Interface>,
    pub containers: Vec<Container>,
    pub store_seed: Vec<StoreKey>,
    /// `coreos.etcd2` (and `coreos.etcd`): this machine's etcd member;
    /// `None` when not configured or refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd: Option<EtcdSettings>,
}

const TOP_LEVEL: &[&str] = &["ssh_authorized_keys", "hostname", "manage_etc_hosts", "users", "write_files", "coreos", "runcmd", "bootcmd", "network", "containers", "store", "update"];

/// `coreos.*` keys that configured services basalt does not have, with what to use instead.
const COREOS_UNSUPPORTED: &[(&str, &str)] = &[
    ("fleet", "fleet is not part of basalt; declare units under coreos.units or containers under `containers`"),
    ("flannel", "flannel is not part of basalt"),
    ("oem", "coreos.oem describes a vendor image and is ignored"),
];

/// Parses one cloud-config document (its text including the `#cloud-config` line).
pub fn parse(text: &str) -> (CloudConfig, Report) {
    let mut report = Report::default();
    let root = match yaml::parse(text) {
        Ok(root) => root,
        Err(error) => {
            report.error("user-data", Some(error.position), format!("YAML syntax error: {}; none of this document was applied", error.message));
            return (CloudConfig::default(), report);
        }
    };
    if root.is_null() {
        return (CloudConfig::default(), report);
    }
    let config = parse_root(&root, &mut report);
    // Reported in the order a reader meets them in the file.
    report.problems.sort_by_key(|problem| problem.position.map(|position| (position.line, position.column)));
    (config, report)
}

fn parse_root(root: &Node, report: &mut Report) -> CloudConfig {
    let mut config = CloudConfig::default();
    let Some(fields) = Fields::of(root, "", report) else { return config };
    fields.warn_unknown(TOP_LEVEL, report);

    config.ssh_authorized_keys = user::ssh_keys(&fields, "ssh_authorized_keys", report);
    if let Some(node) = fields.get("hostname") {
        if let Some(hostname) = fields.string("hostname", report) {
            // `$private_ipv4` and friends are filled in later; check the rest.
            let checked = ["$public_ipv4", "$private_ipv4", "$public_ipv6", "$private_ipv6", "$hostname"].iter().fold(hostname.clone(), |text, name| text.replace(name, "x"));
            if valid_hostname(&checked) {
                config.hostname = Some(hostname);
            } else {
                report.error("hostname", Some(node.position), format!("{hostname:?} is not a host name (letters, digits and '-' in dot-separated labels of at most 63, 253 in all)"));
            }
        }
    }
    if let Some(node) = fields.get("manage_etc_hosts") {
        match (node.as_bool(), node.as_scalar()) {
            (Some(value), _) => config.manage_etc_hosts = value,
            (None, Some("localhost")) => config.manage_etc_hosts = true,
            _ => report.error("manage_etc_hosts", Some(node.position), format!("{} is not supported; the only value is \"localhost\"", fields::describe(node))),
        }
    }
    if let Some(node) = fields.get("users") {
        config.users = items(node, "users", report).into_iter().filter_map(|(path, item)| user::parse_user(item, &path, report)).collect();
    }
    if let Some(node) = fields.get("write_files") {
        config.write_files = items(node, "write_files", report).into_iter().filter_map(|(path, item)| file::parse_write_file(item, &path, report)).collect();
    }
    if let Some(node) = fields.get("coreos") {
        parse_coreos(node, &mut config, report);
    }
    if let Some(node) = fields.get("update") {
        let settings = update::parse_update(node, "update", report);
        config.update.merge(settings);
    }
    if let Some(node) = fields.get("runcmd") {
        config.runcmd = commands(node, "runcmd", report);
    }
    if let Some(node) = fields.get("bootcmd") {
        config.bootcmd = commands(node, "bootcmd", report);
    }
    if let Some(node) = fields.get("network") {
        config.network = network::parse_network(node, "network", report);
    }
    if let Some(node) = fields.get("containers") {
        config.containers = items(node, "containers", report).into_iter().filter_map(|(path, item)| container::parse_container(item, &path, report)).collect();
        for (index, container) in config.containers.iter().enumerate() {
            if config.containers[..index].iter().any(|earlier| earlier.name == container.name) {
                report.warning("containers", fields.get("containers").map(|n| n.position), format!("container {:?} is declared twice; the last one wins", container.name));
            }
        }
    }
    if let Some(node) = fields.get("store") {
        config.store_seed = store_seed(node, report);
    }
    config
}

fn parse_coreos(node: &Node, config: &mut CloudConfig, report: &mut Report) {
    let Some(fields) = Fields::of(node, "coreos", report) else { return };
    let mut known = vec!["units", "update", "locksmith", "etcd", "etcd2"];
    for (key, why) in COREOS_UNSUPPORTED {
        if let Some(value) = fields.get(key) {
            report.warning(fields.key_path(key), fields.key_position(key).or(Some(value.position)), format!("{why}; ignored"));
        }
        known.push(key);
    }
    fields.warn_unknown(&known, report);
    if let Some(list) = fields.get("units") {
        config.units = items(list, "coreos.units", report).into_iter().filter_map(|(path, item)| unit::parse_unit(item, &path, report)).collect();
    }
    if let Some(node) = fields.get("update") {
        let settings = update::parse_coreos_update(node, "coreos.update", report);
        config.update.merge(settings);
    }
    if let Some(node) = fields.get("locksmith") {
        let settings = update::parse_locksmith(node, "coreos.locksmith", report);
        config.update.merge(settings);
    }
    // etcd 0.4's keys first, then coreos.etcd2's over them; either refused
    // leaves etcd unconfigured rather than half configured.
    let old = fields.get("etcd").map(|node| etcd::parse_etcd_v04(node, "coreos.etcd", report));
    let new = fields.get("etcd2").map(|node| etcd::parse_etcd2(node, "coreos.etcd2", report));
    config.etcd = match (old, new) {
        (None, None) | (Some(None), _) | (_, Some(None)) => None,
        (old, new) => {
            let mut settings = old.flatten().unwrap_or_default();
            settings.merge(new.flatten().unwrap_or_default());
            Some(settings)
        }
    };
}

/// `runcmd`/`bootcmd`: each item a shell line or an argument list. A bad item
/// is left out; the others still run.
fn commands(node: &Node, path: &str, report: &mut Report) -> Vec<Command> {
    let mut commands = Vec::new();
    for (item_path, item) in items(node, path, report) {
        match &item.value {
            Value::Scalar { text, .. } if !text.trim().is_empty() => commands.push(Command::Shell(text.clone())),
            Value::Sequence(words) if !words.is_empty() && words.iter().all(|w| w.as_scalar().is_some()) => {
                commands.push(Command::Argv(words.iter().map(|w| w.as_scalar().unwrap_or_default().to_string()).collect()))
            }
            _ => report.error(item_path, Some(item.position), format!("expected a shell command line or a list of arguments, found {}", item.kind())),
        }
    }
    commands
}

/// `store: {seed: {"/key": value, ...}}`.
fn store_seed(node: &Node, report: &mut Report) -> Vec<StoreKey> {
    let Some(fields) = Fields::of(node, "store", report) else { return Vec::new() };
    fields.warn_unknown(&["seed"], report);
    let Some(seed) = fields.get("seed") else { return Vec::new() };
    if Fields::of(seed, "store.seed", report).is_none() {
        return Vec::new();
    }
    let mut keys = Vec::new();
    for (key_node, value_node) in seed.as_mapping().unwrap_or_default() {
        let key = key_node.as_scalar().unwrap_or_default().to_string();
        let path = format!("store.seed.{key}");
        if !key.starts_with('/') || key.contains("//") || key.split('/').any(|part| part == "." || part == "..") {
            report.error(path, Some(key_node.position), format!("{key:?} is not a store key such as \"/app/config\""));
            continue;
        }
        match value_node.as_scalar() {
            Some(value) => keys.push(StoreKey { key, value: value.to_string() }),
            None => report.error(path, Some(value_node.position), format!("expected a string value, found {}", value_node.kind())),
        }
    }
    keys
}

/// RFC 1123 host names.
pub fn valid_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| !label.is_empty() && label.len() <= 63 && !label.starts_with('-') && !label.ends_with('-') && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
}

impl CloudConfig {
    /// Adds a later document's settings: lists are appended, single values replaced.
    pub fn merge(&mut self, later: CloudConfig) {
        self.ssh_authorized_keys.extend(later.ssh_authorized_keys);
        self.hostname = later.hostname.or(self.hostname.take());
        self.manage_etc_hosts |= later.manage_etc_hosts;
        self.users.extend(later.users);
        self.write_files.extend(later.write_files);
        self.units.extend(later.units);
        self.update.merge(later.update);
        self.runcmd.extend(later.runcmd);
        self.bootcmd.extend(later.bootcmd);
        self.network.extend(later.network);
        self.containers.extend(later.containers);
        self.store_seed.extend(later.store_seed);
        self.etcd = match (self.etcd.take(), later.etcd) {
            (Some(mut earlier), Some(later)) => {
                earlier.merge(later);
                Some(earlier)
            }
            (earlier, later) => later.or(earlier),
        };
    }

    /// Replaces `$private_ipv4` and friends in the values where coreos-cloudinit
    /// users put them: unit contents, plain file contents, commands, container
    /// arguments and environment, store values, the host name.
    pub fn substitute(&mut self, apply: &dyn Fn(&str) -> String) {
        if let Some(hostname) = &mut self.hostname {
            *hostname = apply(hostname);
        }
        for file in self.write_files.iter_mut().filter(|file| !file.encoded) {
            if let Ok(text) = std::str::from_utf8(&file.content) {
                file.content = apply(text).into_bytes();
            }
        }
        for unit in &mut self.units {
            if let Some(content) = &mut unit.content {
                *content = apply(content);
            }
            for drop_in in &mut unit.drop_ins {
                drop_in.content = apply(&drop_in.content);
            }
        }
        for command in self.runcmd.iter_mut().chain(self.bootcmd.iter_mut()) {
            match command {
                Command::Shell(line) => *line = apply(line),
                Command::Argv(words) => words.iter_mut().for_each(|word| *word = apply(word)),
            }
        }
        for container in &mut self.containers {
            container.args.iter_mut().for_each(|arg| *arg = apply(arg));
            container.env.values_mut().for_each(|value| *value = apply(value));
        }
        for key in &mut self.store_seed {
            key.value = apply(&key.value);
        }
        if let Some(etcd) = &mut self.etcd {
            etcd.environment.iter_mut().for_each(|(_, value)| *value = apply(value));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seed_example_configures_etcd() {
        let text = "#cloud-config\ncoreos:\n  etcd:\n    addr: $private_ipv4:4001\n  units:\n    - name: etcd.service\n      command: start\n    - name: fleet.service\n      command: start\n";
        let (config, report) = parse(text);
        assert_eq!(config.units.len(), 2);
        assert!(report.problems.is_empty(), "{report}");
        assert_eq!(config.etcd.unwrap().get("ETCD_ADVERTISE_CLIENT_URLS"), Some("http://$private_ipv4:4001"));
    }

    #[test]
    fn unknown_keys_warn_by_name_and_the_rest_applies() {
        let (config, report) = parse("#cloud-config\nhostname: web1\nfavourite_colour: blue\n");
        assert_eq!(config.hostname.as_deref(), Some("web1"));
        assert_eq!(report.to_string(), "3:1: warning: favourite_colour: unknown key \"favourite_colour\", ignored\n");
    }

    #[test]
    fn a_wrong_type_fails_only_that_key() {
        let (config, report) = parse("#cloud-config\nhostname: web1\nusers: alice\nwrite_files:\n  - path: /etc/a\n");
        assert_eq!(report.to_string(), "3:8: error: users: expected a list, found a scalar\n");
        assert_eq!(config.hostname.as_deref(), Some("web1"));
        assert_eq!(config.write_files.len(), 1);
    }

    #[test]
    fn malformed_yaml_is_one_positioned_error() {
        let (config, report) = parse("#cloud-config\nhostname: [web1\n");
        assert_eq!(config, CloudConfig::default());
        assert_eq!(report.error_count(), 1);
        let problem = &report.problems[0];
        assert_eq!(problem.key, "user-data");
        assert!(problem.message.starts_with("YAML syntax error: "), "{report}");
        assert!(problem.position.is_some());
    }

    #[test]
    fn update_settings_merge_coreos_and_basalt_keys() {
        let (config, report) = parse(
            "#cloud-config\ncoreos:\n  update:\n    reboot_strategy: etcd-lock\n    group: beta\n  locksmith:\n    window_start: Thu 04:00\n    window_length: 1h\nupdate:\n  server: http://updates.example.com/basalt\n",
        );
        assert!(report.problems.is_empty(), "{report}");
        assert_eq!(config.update.reboot_strategy.as_deref(), Some("etcd-lock"));
        assert_eq!(config.update.channel.as_deref(), Some("beta"));
        assert_eq!(config.update.window_start.as_deref(), Some("Thu 04:00"));
        assert_eq!(config.update.server.as_deref(), Some("http://updates.example.com/basalt"));
    }

    #[test]
    fn commands_are_lines_or_argument_lists() {
        let (config, report) = parse("#cloud-config\nruncmd:\n  - echo hi\n  - [touch, /tmp/x]\n  - {a: b}\n");
        assert_eq!(config.runcmd, [Command::Shell("echo hi".into()), Command::Argv(vec!["touch".into(), "/tmp/x".into()])]);
        assert_eq!(report.to_string(), "5:5: error: runcmd[2]: expected a shell command line or a list of arguments, found a mapping\n");
    }

    #[test]
    fn store_seeds_need_absolute_keys() {
        let (config, report) = parse("#cloud-config\nstore:\n  seed:\n    /app/port: 8080\n    app/bad: x\n");
        assert_eq!(config.store_seed, [StoreKey { key: "/app/port".into(), value: "8080".into() }]);
        assert_eq!(report.to_string(), "5:5: error: store.seed.app/bad: \"app/bad\" is not a store key such as \"/app/config\"\n");
    }

    #[test]
    fn a_document_that_is_not_a_mapping_is_one_error() {
        let (_, report) = parse("#cloud-config\n- hostname: a\n");
        assert_eq!(report.to_string(), "2:1: error: user-data: expected a mapping, found a list\n");
    }

    #[test]
    fn host_names() {
        assert!(valid_hostname("web-1.example.com"));
        assert!(!valid_hostname("-web"));
        assert!(!valid_hostname("under_score"));
    }
}
