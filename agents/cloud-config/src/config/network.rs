//! basalt's `network:` extension: static addresses, routes and DNS, written
//! later as systemd-networkd `.network` files.

use std::net::IpAddr;

use serde::Serialize;

use super::fields::{clean, describe, items, Fields};
use crate::report::Report;
use crate::yaml::Node;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Route {
    pub destination: String,
    pub gateway: Option<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Interface {
    /// Interface name or glob (`eth0`, `en*`).
    pub name: Option<String>,
    /// MAC address, lower case.
    pub mac: Option<String>,
    /// networkd's DHCP= value: yes, no, ipv4 or ipv6.
    pub dhcp: Option<String>,
    /// Addresses with prefix length, e.g. `10.0.0.5/24`.
    pub addresses: Vec<String>,
    pub gateway: Option<IpAddr>,
    pub dns: Vec<IpAddr>,
    pub domains: Vec<String>,
    pub routes: Vec<Route>,
}

impl Interface {
    /// What the interface is called in file names and logs.
    pub fn label(&self) -> String {
        let raw = self.name.clone().or_else(|| self.mac.clone()).unwrap_or_default();
        raw.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
    }
}

/// `network: {interfaces: [...]}`.
pub fn parse_network(node: &Node, path: &str, report: &mut Report) -> Vec<Interface> {
    let Some(fields) = Fields::of(node, path, report) else { return Vec::new() };
    fields.warn_unknown(&["interfaces"], report);
    let Some(list) = fields.get("interfaces") else { return Vec::new() };
    items(list, &fields.key_path("interfaces"), report).into_iter().filter_map(|(item_path, item)| parse_interface(item, &item_path, report)).collect()
}

const KNOWN: &[&str] = &["name", "mac", "dhcp", "addresses", "gateway", "dns", "domains", "routes"];

fn parse_interface(node: &Node, path: &str, report: &mut Report) -> Option<Interface> {
    clean(report, |report| {
        let fields = Fields::of(node, path, report)?;
        fields.warn_unknown(KNOWN, report);
        let name = fields.string("name", report);
        if let Some(name) = &name {
            if name.is_empty() || name.len() > 15 || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '*' | '?')) {
                report.error(fields.key_path("name"), fields.get("name").map(|n| n.position), format!("{name:?} is not an interface name or glob"));
            }
        }
        let mac = fields.string("mac", report).map(|mac| mac.to_ascii_lowercase());
        if let Some(mac) = &mac {
            let ok = mac.split(':').count() == 6 && mac.split(':').all(|byte| byte.len() == 2 && byte.chars().all(|c| c.is_ascii_hexdigit()));
            if !ok {
                report.error(fields.key_path("mac"), fields.get("mac").map(|n| n.position), format!("{mac:?} is not a MAC address such as \"52:54:00:12:34:56\""));
            }
        }
        if name.is_none() && mac.is_none() {
            report.error(path, Some(node.position), "an interface needs a name or a mac to match");
        }
        let dhcp = match fields.get("dhcp") {
            None => None,
            Some(value) => match (value.as_bool(), value.as_scalar()) {
                (Some(true), _) => Some("yes".to_string()),
                (Some(false), _) => Some("no".to_string()),
                (None, Some(text @ ("ipv4" | "ipv6"))) => Some(text.to_string()),
                _ => {
                    report.error(fields.key_path("dhcp"), Some(value.position), format!("{} is not a DHCP setting; expected true, false, ipv4 or ipv6", describe(value)));
                    None
                }
            },
        };
        let addresses = fields.strings("addresses", report).unwrap_or_default();
        if let Some(node) = fields.get("addresses") {
            for address in &addresses {
                if !valid_prefix(address) {
                    report.error(fields.key_path("addresses"), Some(node.position), format!("{address:?} is not an address with prefix length such as \"10.0.0.5/24\""));
                }
            }
        }
        let gateway = ip(&fields, "gateway", report);
        let dns = fields
            .strings("dns", report)
            .unwrap_or_default()
            .iter()
            .filter_map(|text| match text.parse::<IpAddr>() {
                Ok(address) => Some(address),
                Err(_) => {
                    report.error(fields.key_path("dns"), fields.get("dns").map(|n| n.position), format!("{text:?} is not an IP address"));
                    None
                }
            })
            .collect();
        let domains = fields.strings("domains", report).unwrap_or_default();
        let mut routes = Vec::new();
        if let Some(list) = fields.get("routes") {
            for (route_path, route_node) in items(list, &fields.key_path("routes"), report) {
                let Some(route) = Fields::of(route_node, &route_path, report) else { continue };
                route.warn_unknown(&["destination", "gateway"], report);
                let destination = route.string("destination", report).unwrap_or_default();
                if !valid_prefix(&destination) {
                    report.error(
                        route.key_path("destination"),
                        Some(route.get("destination").map_or(route_node.position, |n| n.position)),
                        format!("{destination:?} is not a destination such as \"10.1.0.0/16\""),
                    );
                }
                routes.push(Route { destination, gateway: ip(&route, "gateway", report) });
            }
        }
        Some(Interface { name, mac, dhcp, addresses, gateway, dns, domains, routes })
    })
}

fn ip(fields: &Fields, key: &str, report: &mut Report) -> Option<IpAddr> {
    let text = fields.string(key, report)?;
    match text.parse() {
        Ok(address) => Some(address),
        Err(_) => {
            report.error(fields.key_path(key), fields.get(key).map(|n| n.position), format!("{text:?} is not an IP address"));
            None
        }
    }
}

/// `address/prefix` with a prefix that fits the address family.
pub fn valid_prefix(text: &str) -> bool {
    let Some((address, prefix)) = text.split_once('/') else { return false };
    match (address.parse::<IpAddr>(), prefix.parse::<u8>()) {
        (Ok(IpAddr::V4(_)), Ok(prefix)) => prefix <= 32,
        (Ok(IpAddr::V6(_)), Ok(prefix)) => prefix <= 128,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml;

    #[test]
    fn a_static_interface_parses() {
        let node = yaml::parse(
            "interfaces:\n  - name: eth0\n    addresses: [10.0.0.5/24]\n    gateway: 10.0.0.1\n    dns: [1.1.1.1]\n    routes:\n      - destination: 10.1.0.0/16\n        gateway: 10.0.0.254\n",
        )
        .unwrap();
        let mut report = Report::default();
        let interfaces = parse_network(&node, "network", &mut report);
        assert!(report.problems.is_empty(), "{report}");
        assert_eq!(interfaces[0].addresses, ["10.0.0.5/24"]);
        assert_eq!(interfaces[0].routes[0].gateway, Some("10.0.0.254".parse().unwrap()));
    }

    #[test]
    fn a_bad_address_fails_the_interface() {
        let node = yaml::parse("interfaces:\n  - name: eth0\n    addresses: 10.0.0.5\n").unwrap();
        let mut report = Report::default();
        assert!(parse_network(&node, "network", &mut report).is_empty());
        assert_eq!(report.to_string(), "3:16: error: network.interfaces[0].addresses: \"10.0.0.5\" is not an address with prefix length such as \"10.0.0.5/24\"\n");
    }

    #[test]
    fn prefixes() {
        assert!(valid_prefix("fd00::1/64"));
        assert!(!valid_prefix("10.0.0.1/33"));
        assert!(!valid_prefix("10.0.0.1"));
    }
}
