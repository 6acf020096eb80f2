//! Files cloud-config leaves for the other agents: networkd `.network` files
//! for the network service, container specs for the runtime agent, seed keys
//! for the store agent, update settings for the update agent, etcd's
//! settings for etcd-member.service. Their formats
//! are documented in docs/cloud-config.md; this is the one place they are
//! written.

use std::fmt::Write as _;

use serde::Serialize;

use super::root::Root;
use super::Log;
use crate::config::{Container, EtcdSettings, Interface, StoreKey, UpdateSettings};

pub const NETWORK_DIR: &str = "/etc/systemd/network";
pub const CONTAINER_DIR: &str = "/etc/basalt/containers";
pub const STORE_SEED_FILE: &str = "/etc/basalt/store-seed.json";
pub const UPDATE_FILE: &str = "/etc/basalt/update.conf";
pub const ETCD_FILE: &str = "/etc/basalt/etcd-member.env";
pub const ETCD_UNIT: &str = "etcd-member.service";
const ETCD_UNIT_FILE: &str = "/usr/lib/systemd/system/etcd-member.service";
const ETCD_WANTS_LINK: &str = "/etc/systemd/system/multi-user.target.wants/etcd-member.service";
pub const STORE_CONFIG_FILE: &str = "/etc/basalt/store.toml";
pub const STORE_UNIT: &str = "basalt-store.service";
/// etcd-member.service's own default (/usr/share/basalt/etcd-member.env).
const ETCD_DEFAULT_CLIENT_URL: &str = "http://127.0.0.1:4001";

/// Version of the JSON formats below; bumped on incompatible changes.
pub const FORMAT_VERSION: u32 = 1;

const HEADER: &str = "# Written by basalt-cloud-config from user data; replaced when the user data changes.";

/// The `.network` file for one interface: `50-cloud-config-<NN>-<label>.network`.
pub fn network_file_name(index: usize, interface: &Interface) -> String {
    format!("50-cloud-config-{index:02}-{}.network", interface.label())
}

pub fn network_file(interface: &Interface) -> String {
    let mut text = format!("{HEADER}\n[Match]\n");
    if let Some(name) = &interface.name {
        let _ = writeln!(text, "Name={name}");
    }
    if let Some(mac) = &interface.mac {
        let _ = writeln!(text, "MACAddress={mac}");
    }
    text.push_str("\n[Network]\n");
    // Static addresses without a DHCP setting mean no DHCP.
    let dhcp = interface.dhcp.clone().unwrap_or_else(|| if interface.addresses.is_empty() { "yes".into() } else { "no".into() });
    let _ = writeln!(text, "DHCP={dhcp}");
    for address in &interface.addresses {
        let _ = writeln!(text, "Address={address}");
    }
    if let Some(gateway) = interface.gateway {
        let _ = writeln!(text, "Gateway={gateway}");
    }
    for dns in &interface.dns {
        let _ = writeln!(text, "DNS={dns}");
    }
    if !interface.domains.is_empty() {
        let _ = writeln!(text, "Domains={}", interface.domains.join(" "));
    }
    for route in &interface.routes {
        let _ = write!(text, "\n[Route]\nDestination={}\n", route.destination);
        if let Some(gateway) = route.gateway {
            let _ = writeln!(text, "Gateway={gateway}");
        }
    }
    text
}

pub fn write_network(root: &Root, interfaces: &[Interface], log: &mut Log) {
    for (index, interface) in interfaces.iter().enumerate() {
        let path = format!("{NETWORK_DIR}/{}", network_file_name(index, interface));
        log.outcome(format!("wrote {path}"), root.write(&path, network_file(interface).as_bytes(), 0o644, 0, 0));
    }
}

#[derive(Serialize)]
struct ContainerFile<'a> {
    version: u32,
    source: &'static str,
    #[serde(flatten)]
    container: &'a Container,
}

pub fn container_json(container: &Container) -> String {
    let file = ContainerFile { version: FORMAT_VERSION, source: "cloud-config", container };
    serde_json::to_string_pretty(&file).expect("container specs always serialise") + "\n"
}

pub fn write_containers(root: &Root, containers: &[Container], log: &mut Log) {
    for container in containers {
        let path = format!("{CONTAINER_DIR}/{}.json", container.name);
        // Environment values may be secrets.
        log.outcome(format!("wrote {path}"), root.write(&path, container_json(container).as_bytes(), 0o600, 0, 0));
    }
}

#[derive(Serialize)]
struct StoreSeedFile<'a> {
    version: u32,
    source: &'static str,
    keys: &'a [StoreKey],
}

pub fn store_seed_json(keys: &[StoreKey]) -> String {
    let file = StoreSeedFile { version: FORMAT_VERSION, source: "cloud-config", keys };
    serde_json::to_string_pretty(&file).expect("store seeds always serialise") + "\n"
}

pub fn write_store_seed(root: &Root, keys: &[StoreKey], log: &mut Log) {
    if keys.is_empty() {
        return;
    }
    log.outcome(format!("wrote {STORE_SEED_FILE}"), root.write(STORE_SEED_FILE, store_seed_json(keys).as_bytes(), 0o600, 0, 0));
}

/// `KEY=value` lines, only for the settings given (the update agent keeps
/// its defaults for the others), in the spirit of CoreOS's
/// /etc/coreos/update.conf.
pub fn update_conf(settings: &UpdateSettings) -> String {
    let mut text = format!("{HEADER}\n");
    let fields = [
        ("SERVER", &settings.server),
        ("CHANNEL", &settings.channel),
        ("REBOOT_STRATEGY", &settings.reboot_strategy),
        ("REBOOT_WINDOW_START", &settings.window_start),
        ("REBOOT_WINDOW_LENGTH", &settings.window_length),
        ("FLEETLOCK_URL", &settings.fleetlock_url),
    ];
    for (key, value) in fields {
        if let Some(value) = value {
            let _ = writeln!(text, "{key}={value}");
        }
    }
    text
}

pub fn write_update(root: &Root, settings: &UpdateSettings, log: &mut Log) {
    if settings.is_empty() {
        return;
    }
    log.outcome(format!("wrote {UPDATE_FILE}"), root.write(UPDATE_FILE, update_conf(settings).as_bytes(), 0o644, 0, 0));
}

/// `ETCD_*=value` lines for etcd-member.service's EnvironmentFile=. Without
/// a `name`, the member is named after the machine id, as CoreOS's
/// etcd2.service did (`%m`), so members found through discovery differ.
pub fn etcd_env(settings: &EtcdSettings, machine_id: Option<&str>) -> String {
    let mut text = format!("{HEADER}\n");
    if settings.get("ETCD_NAME").is_none() {
        if let Some(id) = machine_id {
            let _ = writeln!(text, "ETCD_NAME={id}");
        }
    }
    for (variable, value) in &settings.environment {
        let _ = writeln!(text, "{variable}={value}");
    }
    text
}

/// What writing etcd's settings did, for the supervisor.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct EtcdOutcome {
    /// etcd-member.service was enabled just now (a reload starts it).
    pub enabled: bool,
    /// It was enabled already and its settings changed (it needs a restart).
    pub changed_settings: bool,
}

/// Writes /etc/basalt/etcd-member.env (0600: discovery URLs are
/// credentials of a kind) and enables etcd-member.service.
pub fn write_etcd(root: &Root, settings: Option<&EtcdSettings>, log: &mut Log) -> EtcdOutcome {
    let Some(settings) = settings else { return EtcdOutcome::default() };
    let machine_id = root.read_to_string("/etc/machine-id").map(|id| id.trim().to_string()).filter(|id| !id.is_empty());
    let was_enabled = root.exists(ETCD_WANTS_LINK);
    let changed = log.outcome(format!("wrote {ETCD_FILE}"), root.write(ETCD_FILE, etcd_env(settings, machine_id.as_deref()).as_bytes(), 0o600, 0, 0));
    let enabled = log.outcome(format!("enabled {ETCD_UNIT} in multi-user.target"), root.ensure_symlink(ETCD_WANTS_LINK, ETCD_UNIT_FILE));
    EtcdOutcome { enabled: enabled && !was_enabled, changed_settings: changed && was_enabled }
}

/// The URL the node store reaches this machine's etcd member by, from
/// etcd's `listen-client-urls`: a plain-HTTP loopback one first, then a
/// wildcard one (reached on 127.0.0.1), then any plain-HTTP one. Without
/// one (etcd serves clients only over https) the store cannot follow it.
pub fn store_member_url(settings: &EtcdSettings) -> Result<String, String> {
    let listen = settings.get("ETCD_LISTEN_CLIENT_URLS").unwrap_or(ETCD_DEFAULT_CLIENT_URL);
    let urls: Vec<&str> = listen.split(',').map(str::trim).filter(|u| !u.is_empty()).collect();
    let plain = |u: &&str| u.strip_prefix("http://").map(|rest| rest.trim_end_matches('/').to_string());
    let loopback = |host: &str| host.starts_with("127.") || host.starts_with("localhost:") || host.starts_with("[::1]:");
    if let Some(rest) = urls.iter().filter_map(plain).find(|rest| loopback(rest)) {
        return Ok(format!("http://{rest}"));
    }
    for rest in urls.iter().filter_map(plain) {
        for wildcard in ["0.0.0.0:", "[::]:"] {
            if let Some(port) = rest.strip_prefix(wildcard) {
                return Ok(format!("http://127.0.0.1:{port}"));
            }
        }
    }
    if let Some(rest) = urls.iter().filter_map(plain).next() {
        return Ok(format!("http://{rest}"));
    }
    Err(format!(
        "coreos.etcd2 listen-client-urls {listen:?} has no plain-HTTP URL the node store can reach this machine's member by (add http://127.0.0.1:4001); {STORE_UNIT} keeps this machine's own keyspace"
    ))
}

/// /etc/basalt/store.toml for a store that follows this machine's member.
pub fn store_cluster_toml(member_url: &str) -> String {
    format!(
        "{HEADER}\n# coreos.etcd2 makes this machine a member of an etcd cluster: the node store\n# serves the cluster's keyspace through its cluster backend (docs/cluster.md).\ncluster = [\"{member_url}\"]\n"
    )
}

/// With `coreos.etcd2`, points the node store at this machine's member by
/// writing /etc/basalt/store.toml, unless that file is the user's own (one
/// not written by cloud-config is left alone, and said so). Returns whether
/// an earlier version of the file changed (a running store needs a restart;
/// on boot the store starts after cloud-config and reads the new one).
pub fn write_store_cluster(root: &Root, settings: Option<&EtcdSettings>, log: &mut Log) -> bool {
    let Some(settings) = settings else { return false };
    let url = match store_member_url(settings) {
        Ok(url) => url,
        Err(why) => {
            log.fail(why);
            return false;
        }
    };
    let existing = root.read_to_string(STORE_CONFIG_FILE);
    if let Some(existing) = &existing {
        if !existing.starts_with(HEADER) {
            log.fail(format!("{STORE_CONFIG_FILE} was not written by cloud-config: left alone, so the node store follows the cluster only if it names cluster = [\"{url}\"]"));
            return false;
        }
    }
    let changed = log.outcome(format!("wrote {STORE_CONFIG_FILE}"), root.write(STORE_CONFIG_FILE, store_cluster_toml(&url).as_bytes(), 0o644, 0, 0));
    changed && existing.is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Route;

    #[test]
    fn etcd_settings_become_an_environment_file_named_after_the_machine() {
        let settings = EtcdSettings { environment: vec![("ETCD_DISCOVERY".into(), "https://discovery.example/abc".into())] };
        assert_eq!(etcd_env(&settings, Some("0123abcd")), format!("{HEADER}\nETCD_NAME=0123abcd\nETCD_DISCOVERY=https://discovery.example/abc\n"));
        let named = EtcdSettings { environment: vec![("ETCD_NAME".into(), "node1".into())] };
        assert_eq!(etcd_env(&named, Some("0123abcd")), format!("{HEADER}\nETCD_NAME=node1\n"));
    }

    #[test]
    fn the_store_follows_the_members_loopback_client_url() {
        let with = |urls: Option<&str>| EtcdSettings { environment: urls.map(|u| vec![("ETCD_LISTEN_CLIENT_URLS".to_string(), u.to_string())]).unwrap_or_default() };
        assert_eq!(store_member_url(&with(None)).unwrap(), "http://127.0.0.1:4001");
        assert_eq!(store_member_url(&with(Some("http://10.10.1.1:2379,http://127.0.0.1:4001"))).unwrap(), "http://127.0.0.1:4001");
        assert_eq!(store_member_url(&with(Some("http://0.0.0.0:4001/"))).unwrap(), "http://127.0.0.1:4001");
        assert_eq!(store_member_url(&with(Some("http://10.10.1.1:2379"))).unwrap(), "http://10.10.1.1:2379");
        let e = store_member_url(&with(Some("https://10.10.1.1:2379"))).unwrap_err();
        assert!(e.contains("no plain-HTTP URL") && e.contains("own keyspace"), "{e}");
        let toml = store_cluster_toml("http://127.0.0.1:4001");
        assert!(toml.starts_with(HEADER) && toml.ends_with("cluster = [\"http://127.0.0.1:4001\"]\n"), "{toml}");
    }

    #[test]
    fn the_store_config_is_written_once_and_a_users_own_is_left_alone() {
        let scratch = tempfile::tempdir().unwrap();
        let root = Root::new(scratch.path());
        let settings = EtcdSettings { environment: vec![("ETCD_LISTEN_CLIENT_URLS".into(), "http://10.10.1.1:2379,http://127.0.0.1:4001".into())] };
        let mut log = Log::default();
        assert!(!write_store_cluster(&root, None, &mut log) && !root.exists(STORE_CONFIG_FILE));
        assert!(!write_store_cluster(&root, Some(&settings), &mut log), "a new file needs no restart");
        assert_eq!(root.read_to_string(STORE_CONFIG_FILE).unwrap(), store_cluster_toml("http://127.0.0.1:4001"));
        assert!(!write_store_cluster(&root, Some(&settings), &mut log), "unchanged");
        let moved = EtcdSettings { environment: vec![("ETCD_LISTEN_CLIENT_URLS".into(), "http://127.0.0.1:4002".into())] };
        assert!(write_store_cluster(&root, Some(&moved), &mut log), "a changed file restarts the store");
        std::fs::write(root.path(STORE_CONFIG_FILE), "history = 5\n").unwrap();
        let mut log = Log::default();
        assert!(!write_store_cluster(&root, Some(&settings), &mut log));
        assert_eq!(root.read_to_string(STORE_CONFIG_FILE).unwrap(), "history = 5\n");
        assert!(format!("{log:?}").contains("not written by cloud-config"), "{log:?}");
    }

    #[test]
    fn a_static_interface_becomes_a_network_file() {
        let interface = Interface {
            name: Some("eth0".into()),
            mac: None,
            dhcp: None,
            addresses: vec!["10.0.0.5/24".into()],
            gateway: Some("10.0.0.1".parse().unwrap()),
            dns: vec!["1.1.1.1".parse().unwrap()],
            domains: vec!["example.com".into()],
            routes: vec![Route { destination: "10.1.0.0/16".into(), gateway: Some("10.0.0.254".parse().unwrap()) }],
        };
        assert_eq!(network_file_name(0, &interface), "50-cloud-config-00-eth0.network");
        assert_eq!(
            network_file(&interface),
            format!(
                "{HEADER}\n[Match]\nName=eth0\n\n[Network]\nDHCP=no\nAddress=10.0.0.5/24\nGateway=10.0.0.1\nDNS=1.1.1.1\nDomains=example.com\n\n[Route]\nDestination=10.1.0.0/16\nGateway=10.0.0.254\n"
            )
        );
    }

    #[test]
    fn update_conf_lists_only_given_settings() {
        let settings = UpdateSettings { reboot_strategy: Some("off".into()), channel: Some("beta".into()), ..UpdateSettings::default() };
        assert_eq!(update_conf(&settings), format!("{HEADER}\nCHANNEL=beta\nREBOOT_STRATEGY=off\n"));
    }
}
