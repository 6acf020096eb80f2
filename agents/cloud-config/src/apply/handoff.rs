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
