//! `coreos.etcd2` (and the old `coreos.etcd`, etcd 0.4): the settings of
//! this machine's etcd member, which runs as `etcd-member.service`. As with
//! coreos-cloudinit, each key becomes the etcd variable `ETCD_<KEY>` (keys
//! with hyphens or underscores alike); etcd 3.4 reads every such variable as
//! its flag.
//!
//! One bad value leaves the whole section out: an etcd started with half its
//! settings could bootstrap a cluster of its own and keep that in its data
//! directory. The rest of the user data still applies.

use serde::Serialize;

use super::fields::{describe, Fields};
use crate::report::Report;
use crate::yaml::{Node, Value};

/// What cloud-config hands to etcd-member.service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct EtcdSettings {
    /// (`ETCD_NAME`, value) pairs in the order of [`KEYS`]; values may still
    /// hold `$private_ipv4` and friends until they are substituted.
    pub environment: Vec<(String, String)>,
}

impl EtcdSettings {
    pub fn get(&self, variable: &str) -> Option<&str> {
        self.environment.iter().find(|(name, _)| name == variable).map(|(_, value)| value.as_str())
    }

    fn set(&mut self, key: &str, value: String) {
        let variable = variable_of(key);
        match self.environment.iter_mut().find(|(name, _)| *name == variable) {
            Some(entry) => entry.1 = value,
            None => self.environment.push((variable, value)),
        }
        // Keep one order whatever order the user wrote.
        self.environment.sort_by_key(|(name, _)| KEYS.iter().position(|(key, _)| variable_of(key) == *name));
    }

    /// Later settings (coreos.etcd2 over coreos.etcd, a later document over
    /// an earlier one) win key by key.
    pub fn merge(&mut self, later: EtcdSettings) {
        for (variable, value) in later.environment {
            let key = variable.trim_start_matches("ETCD_").to_ascii_lowercase();
            self.set(&key, value);
        }
    }
}

/// `ETCD_INITIAL_CLUSTER` for `initial_cluster`.
pub fn variable_of(key: &str) -> String {
    format!("ETCD_{}", key.to_ascii_uppercase())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Comma-separated `scheme://host:port` URLs.
    Urls,
    /// Like `Urls`, for addresses etcd binds: an IP address (or localhost).
    ListenUrls,
    /// One http(s) URL with any path (a discovery URL).
    Url,
    /// `name=url,name=url`.
    Cluster,
    /// A word without spaces, `=` or `,`.
    Word,
    /// A DNS domain.
    Domain,
    /// An absolute path.
    Path,
    Bool,
    /// A whole number of at least 1 (milliseconds or a count).
    Positive,
    /// A whole number, 0 included.
    Count,
    /// Free text without newlines.
    Text,
    OneOf(&'static [&'static str]),
}

/// coreos-cloudinit's `coreos.etcd2` keys (all of them flags of etcd 3.4),
/// and `enable_v2`, which etcd 3.4 needs for the v2 API CoreOS users call.
const KEYS: &[(&str, Kind)] = &[
    ("name", Kind::Word),
    ("data_dir", Kind::Path),
    ("wal_dir", Kind::Path),
    ("discovery", Kind::Url),
    ("discovery_srv", Kind::Domain),
    ("discovery_fallback", Kind::OneOf(&["exit", "proxy"])),
    ("discovery_proxy", Kind::Url),
    ("initial_cluster", Kind::Cluster),
    ("initial_cluster_state", Kind::OneOf(&["new", "existing"])),
    ("initial_cluster_token", Kind::Word),
    ("initial_advertise_peer_urls", Kind::Urls),
    ("advertise_client_urls", Kind::Urls),
    ("listen_client_urls", Kind::ListenUrls),
    ("listen_peer_urls", Kind::ListenUrls),
    ("heartbeat_interval", Kind::Positive),
    ("election_timeout", Kind::Positive),
    ("snapshot_count", Kind::Positive),
    ("max_snapshots", Kind::Count),
    ("max_wals", Kind::Count),
    ("strict_reconfig_check", Kind::Bool),
    ("force_new_cluster", Kind::Bool),
    ("enable_v2", Kind::Bool),
    ("cert_file", Kind::Path),
    ("key_file", Kind::Path),
    ("trusted_ca_file", Kind::Path),
    ("client_cert_auth", Kind::Bool),
    ("peer_cert_file", Kind::Path),
    ("peer_key_file", Kind::Path),
    ("peer_trusted_ca_file", Kind::Path),
    ("peer_client_cert_auth", Kind::Bool),
    ("cors", Kind::Text),
    ("debug", Kind::Bool),
    ("proxy", Kind::OneOf(&["on", "off", "readonly"])),
    ("proxy_failure_wait", Kind::Count),
    ("proxy_refresh_interval", Kind::Count),
    ("proxy_dial_timeout", Kind::Count),
    ("proxy_write_timeout", Kind::Count),
    ("proxy_read_timeout", Kind::Count),
];

/// The names coreos-cloudinit substitutes, with a stand-in for checking
/// values before the machine's addresses are known.
const PLACEHOLDERS: &[(&str, &str)] = &[("$public_ipv4", "192.0.2.1"), ("$private_ipv4", "192.0.2.2"), ("$public_ipv6", "[2001:db8::1]"), ("$private_ipv6", "[2001:db8::2]"), ("$hostname", "host")];

fn with_placeholders(text: &str) -> String {
    PLACEHOLDERS.iter().fold(text.to_string(), |text, (name, stand_in)| text.replace(name, stand_in))
}

/// The node store's address: etcd cannot have it (see etcd-member.env).
const STORE_PORT: u16 = 2379;

/// `coreos.etcd2`.
pub fn parse_etcd2(node: &Node, path: &str, report: &mut Report) -> Option<EtcdSettings> {
    let fields = Fields::of(node, path, report)?;
    let errors_before = report.error_count();
    let mut settings = EtcdSettings::default();
    let mut seen: Vec<(String, String)> = Vec::new();
    for (key_node, value_node) in fields.entries() {
        let written = key_node.as_scalar().unwrap_or("?");
        let key = written.replace('-', "_");
        let key_path = fields.key_path(written);
        let Some((_, kind)) = KEYS.iter().find(|(name, _)| *name == key) else {
            report.warning(key_path, Some(key_node.position), format!("unknown key {written:?}, ignored"));
            continue;
        };
        if let Some((_, earlier)) = seen.iter().find(|(normal, _)| *normal == key) {
            report.error(key_path, Some(key_node.position), format!("given twice, as {earlier:?} and {written:?}"));
            continue;
        }
        seen.push((key.clone(), written.to_string()));
        if value_node.is_null() {
            continue;
        }
        if let Some(value) = check(value_node, *kind, &key_path, report) {
            settings.set(&key, value);
        }
    }
    check_together(&settings, &fields, report);
    (report.error_count() == errors_before).then_some(settings)
}

/// `coreos.etcd`: etcd 0.4's keys, mapped where etcd 3.4 has the same thing.
pub fn parse_etcd_v04(node: &Node, path: &str, report: &mut Report) -> Option<EtcdSettings> {
    let fields = Fields::of(node, path, report)?;
    let errors_before = report.error_count();
    let mut settings = EtcdSettings::default();
    let get = |name: &str| fields.entries().iter().find(|(key, _)| key.as_scalar().map(|k| k.replace('-', "_")).as_deref() == Some(name)).filter(|(_, value)| !value.is_null());
    let tls = get("cert_file").is_some();
    let peer_tls = get("peer_cert_file").is_some();
    for (key_node, value_node) in fields.entries() {
        let written = key_node.as_scalar().unwrap_or("?");
        let key = written.replace('-', "_");
        let key_path = fields.key_path(written);
        if value_node.is_null() {
            continue;
        }
        // etcd 0.4's addresses are host:port; etcd 3.4 wants URLs, and 0.4
        // listened where it advertised unless told a bind address.
        let address = |scheme_tls: bool, report: &mut Report| {
            let text = super::fields::string(value_node, &key_path, report)?;
            let url = format!("{}://{text}", if scheme_tls { "https" } else { "http" });
            check_url_list(&url, Kind::Urls, &key_path, value_node, report).then_some(url)
        };
        match key.as_str() {
            "name" | "discovery" | "data_dir" | "snapshot_count" | "cors" | "cert_file" | "key_file" | "peer_cert_file" | "peer_key_file" => {
                let kind = KEYS.iter().find(|(name, _)| *name == key).map(|(_, kind)| *kind).unwrap_or(Kind::Text);
                if let Some(value) = check(value_node, kind, &key_path, report) {
                    settings.set(&key, value);
                }
            }
            "addr" => {
                if let Some(url) = address(tls, report) {
                    settings.set("advertise_client_urls", url.clone());
                    if get("bind_addr").is_none() {
                        settings.set("listen_client_urls", url);
                    }
                }
            }
            "bind_addr" => {
                if let Some(url) = address(tls, report) {
                    settings.set("listen_client_urls", url);
                }
            }
            "peer_addr" => {
                if let Some(url) = address(peer_tls, report) {
                    settings.set("initial_advertise_peer_urls", url.clone());
                    if get("peer_bind_addr").is_none() {
                        settings.set("listen_peer_urls", url);
                    }
                }
            }
            "peer_bind_addr" => {
                if let Some(url) = address(peer_tls, report) {
                    settings.set("listen_peer_urls", url);
                }
            }
            // 0.4's CA files turned client certificate checks on.
            "ca_file" | "peer_ca_file" => {
                if let Some(value) = check(value_node, Kind::Path, &key_path, report) {
                    let prefix = if key == "ca_file" { "" } else { "peer_" };
                    settings.set(&format!("{prefix}trusted_ca_file"), value);
                    settings.set(&format!("{prefix}client_cert_auth"), "true".into());
                }
            }
            "peer_election_timeout" | "peer_heartbeat_interval" => {
                if let Some(value) = check(value_node, Kind::Positive, &key_path, report) {
                    settings.set(if key == "peer_election_timeout" { "election_timeout" } else { "heartbeat_interval" }, value);
                }
            }
            _ => report.warning(
                key_path,
                Some(key_node.position),
                format!("etcd 0.4's {written:?} has no equivalent in etcd 3.4 (etcd-member.service); ignored; coreos.etcd2 takes etcd 3.4's settings"),
            ),
        }
    }
    check_together(&settings, &fields, report);
    (report.error_count() == errors_before).then_some(settings)
}

/// Checks one value; returns it as etcd's variable wants it.
fn check(node: &Node, kind: Kind, path: &str, report: &mut Report) -> Option<String> {
    if kind == Kind::Bool {
        return match node.as_bool() {
            Some(value) => Some(value.to_string()),
            None => {
                report.error(path, Some(node.position), format!("expected true or false, found {}", describe(node)));
                None
            }
        };
    }
    let text = match &node.value {
        // `proxy: off` and `on` are YAML 1.1 booleans: their text is the setting.
        Value::Scalar { text, .. } => text.trim().to_string(),
        _ => {
            report.error(path, Some(node.position), format!("expected a string, found {}", node.kind()));
            return None;
        }
    };
    let fail = |report: &mut Report, why: String| {
        report.error(path, Some(node.position), format!("{text:?} {why}"));
        None
    };
    let checked = with_placeholders(&text);
    match kind {
        Kind::Urls | Kind::ListenUrls => check_url_list(&text, kind, path, node, report).then_some(text),
        Kind::Url => match split_url(&checked) {
            Some(("http" | "https", host_port, _)) if !host_port.is_empty() && !checked.contains(char::is_whitespace) => Some(text),
            _ => fail(report, "is not an http:// or https:// URL".into()),
        },
        Kind::Cluster => {
            for member in text.split(',') {
                let Some((name, url)) = member.split_once('=') else {
                    return fail(report, format!("is not a list of name=URL members: {member:?} has no '='"));
                };
                let name = name.trim();
                if !valid_word(name) {
                    return fail(report, format!("is not a list of name=URL members: {name:?} is not a member name"));
                }
                if let Err(why) = check_url(&with_placeholders(url.trim()), false) {
                    return fail(report, format!("is not a list of name=URL members: {}: {why}", url.trim()));
                }
            }
            Some(text)
        }
        Kind::Word if valid_word(&checked) => Some(text),
        Kind::Word => fail(report, "is not a name (no spaces, '=' or ',')".into()),
        Kind::Domain if super::valid_hostname(&checked) => Some(text),
        Kind::Domain => fail(report, "is not a DNS domain".into()),
        Kind::Path if text.starts_with('/') && !text.split('/').any(|part| part == "..") && !text.contains(char::is_whitespace) => Some(text),
        Kind::Path => fail(report, "is not an absolute path".into()),
        Kind::Positive | Kind::Count => match text.parse::<u64>() {
            Ok(number) if number >= 1 || kind == Kind::Count => Some(number.to_string()),
            _ if kind == Kind::Positive => fail(report, "is not a whole number of at least 1".into()),
            _ => fail(report, "is not a whole number".into()),
        },
        Kind::Text if !text.contains('\n') => Some(text),
        Kind::Text => fail(report, "must be one line".into()),
        Kind::OneOf(allowed) if allowed.contains(&text.as_str()) => Some(text),
        Kind::OneOf(allowed) => fail(report, format!("is not one of {}", allowed.join(", "))),
        Kind::Bool => unreachable!("handled above"),
    }
}

fn valid_word(text: &str) -> bool {
    !text.is_empty() && !text.contains(|c: char| c.is_whitespace() || c == '=' || c == ',')
}

/// Checks comma-separated URLs, reporting the first bad one.
fn check_url_list(text: &str, kind: Kind, path: &str, node: &Node, report: &mut Report) -> bool {
    for url in text.split(',').map(str::trim) {
        if let Err(why) = check_url(&with_placeholders(url), kind == Kind::ListenUrls) {
            report.error(path, Some(node.position), format!("{url:?} {why}"));
            return false;
        }
    }
    true
}

/// (scheme, host:port, rest) of `scheme://host:port/rest`.
fn split_url(url: &str) -> Option<(&str, &str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let (authority, path) = rest.find('/').map(|at| rest.split_at(at)).unwrap_or((rest, ""));
    Some((scheme, authority, path))
}

fn check_url(url: &str, listen: bool) -> Result<(), String> {
    let Some((scheme, authority, path)) = split_url(url) else { return Err("is not a URL such as http://10.0.0.1:2380".into()) };
    if !matches!(scheme, "http" | "https" | "unix" | "unixs") {
        return Err(format!("has the scheme {scheme:?}; etcd takes http, https, unix and unixs"));
    }
    if scheme.starts_with("unix") {
        return Ok(());
    }
    if !path.is_empty() && path != "/" {
        return Err("has a path; etcd's member URLs are scheme://host:port".into());
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && (!host.contains(':') || host.ends_with(']')) => (host, port),
        _ => return Err("needs a host and a port, as in http://10.0.0.1:2380".into()),
    };
    let Some(port) = port.parse::<u16>().ok().filter(|port| *port > 0) else { return Err(format!("has no valid port ({port:?})")) };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let ip: Option<std::net::IpAddr> = bare.parse().ok();
    if ip.is_none() && !super::valid_hostname(bare) {
        return Err(format!("has {host:?}, which is neither an IP address nor a host name"));
    }
    if listen {
        if ip.is_none() && bare != "localhost" {
            return Err("must name an IP address to listen on (etcd binds it), such as http://$private_ipv4:2379 or http://0.0.0.0:2380".into());
        }
        let store_conflict = port == STORE_PORT && (bare == "localhost" || ip.is_some_and(|ip| ip.is_unspecified() || ip == std::net::IpAddr::from([127, 0, 0, 1])));
        if store_conflict {
            return Err(format!(
                "is the node store's address (basalt-store listens on 127.0.0.1:{STORE_PORT}); listen on the machine's own address (http://$private_ipv4:{STORE_PORT}) or on http://127.0.0.1:4001"
            ));
        }
    }
    Ok(())
}

/// Settings that only make sense together.
fn check_together(settings: &EtcdSettings, fields: &Fields, report: &mut Report) {
    let position = |key: &str| fields.entries().iter().find(|(name, _)| name.as_scalar().map(|n| n.replace('-', "_")).as_deref() == Some(key)).map(|(name, _)| name.position);
    let written = |key: &str| fields.entries().iter().find_map(|(name, _)| name.as_scalar().filter(|n| n.replace('-', "_") == key)).map(|n| fields.key_path(n)).unwrap_or_else(|| fields.key_path(key));
    if let (Some(heartbeat), Some(election)) = (settings.get("ETCD_HEARTBEAT_INTERVAL"), settings.get("ETCD_ELECTION_TIMEOUT")) {
        let (heartbeat, election): (u64, u64) = (heartbeat.parse().unwrap_or(0), election.parse().unwrap_or(0));
        if election < 5 * heartbeat {
            report.error(written("election_timeout"), position("election_timeout"), format!("{election} ms is less than 5 × heartbeat_interval ({heartbeat} ms), which etcd refuses"));
        }
    }
    if let Some(cluster) = settings.get("ETCD_INITIAL_CLUSTER") {
        let names: Vec<&str> = cluster.split(',').filter_map(|member| member.split_once('=')).map(|(name, _)| name.trim()).collect();
        match settings.get("ETCD_NAME") {
            Some(name) if names.contains(&name) => {}
            Some(name) => report.error(written("name"), position("name"), format!("{name:?} is not one of initial_cluster's members ({})", names.join(", "))),
            None => report.error(written("initial_cluster"), position("initial_cluster"), format!("with initial_cluster, name must say which member this machine is ({})", names.join(", "))),
        }
    }
    if settings.get("ETCD_DISCOVERY").is_some() && settings.get("ETCD_DISCOVERY_SRV").is_some() {
        report.error(written("discovery_srv"), position("discovery_srv"), "discovery and discovery_srv exclude each other; give one");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    fn etcd2(body: &str) -> (Option<EtcdSettings>, String) {
        let (config, report) = parse(&format!("#cloud-config\ncoreos:\n  etcd2:\n{body}"));
        (config.etcd, report.to_string())
    }

    #[test]
    fn a_static_cluster_member_becomes_etcd_variables() {
        let (settings, report) = etcd2(
            "    name: node1\n    initial-cluster: node1=http://10.0.0.1:2380,node2=http://10.0.0.2:2380,node3=http://10.0.0.3:2380\n    initial_cluster_state: new\n    initial-cluster-token: basalt-test\n    initial-advertise-peer-urls: http://$private_ipv4:2380\n    listen-peer-urls: http://$private_ipv4:2380\n    listen-client-urls: http://$private_ipv4:2379,http://127.0.0.1:4001\n    advertise-client-urls: http://$private_ipv4:2379\n    heartbeat-interval: 500\n    election-timeout: 5000\n    client-cert-auth: yes\n    proxy: off\n",
        );
        assert_eq!(report, "");
        let settings = settings.unwrap();
        assert_eq!(
            settings.environment,
            [
                ("ETCD_NAME", "node1"),
                ("ETCD_INITIAL_CLUSTER", "node1=http://10.0.0.1:2380,node2=http://10.0.0.2:2380,node3=http://10.0.0.3:2380"),
                ("ETCD_INITIAL_CLUSTER_STATE", "new"),
                ("ETCD_INITIAL_CLUSTER_TOKEN", "basalt-test"),
                ("ETCD_INITIAL_ADVERTISE_PEER_URLS", "http://$private_ipv4:2380"),
                ("ETCD_ADVERTISE_CLIENT_URLS", "http://$private_ipv4:2379"),
                ("ETCD_LISTEN_CLIENT_URLS", "http://$private_ipv4:2379,http://127.0.0.1:4001"),
                ("ETCD_LISTEN_PEER_URLS", "http://$private_ipv4:2380"),
                ("ETCD_HEARTBEAT_INTERVAL", "500"),
                ("ETCD_ELECTION_TIMEOUT", "5000"),
                ("ETCD_CLIENT_CERT_AUTH", "true"),
                ("ETCD_PROXY", "off"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        );
    }

    #[test]
    fn unknown_keys_warn_by_name_and_the_section_still_applies() {
        let (settings, report) = etcd2("    discovery: https://discovery.etcd.io/0123abcd\n    colour: blue\n");
        assert_eq!(report, "5:5: warning: coreos.etcd2.colour: unknown key \"colour\", ignored\n");
        assert_eq!(settings.unwrap().get("ETCD_DISCOVERY"), Some("https://discovery.etcd.io/0123abcd"));
    }

    #[test]
    fn a_bad_value_is_refused_by_key_and_line_and_leaves_the_section_out() {
        let cases = [
            ("    heartbeat-interval: fast\n", "4:25: error: coreos.etcd2.heartbeat-interval: \"fast\" is not a whole number of at least 1\n"),
            ("    listen-peer-urls: 10.0.0.1:2380\n", "4:23: error: coreos.etcd2.listen-peer-urls: \"10.0.0.1:2380\" is not a URL such as http://10.0.0.1:2380\n"),
            (
                "    listen-client-urls: http://node1:2379\n",
                "4:25: error: coreos.etcd2.listen-client-urls: \"http://node1:2379\" must name an IP address to listen on (etcd binds it), such as http://$private_ipv4:2379 or http://0.0.0.0:2380\n",
            ),
            ("    initial-cluster-state: maybe\n", "4:28: error: coreos.etcd2.initial-cluster-state: \"maybe\" is not one of new, existing\n"),
            ("    proxy: sometimes\n", "4:12: error: coreos.etcd2.proxy: \"sometimes\" is not one of on, off, readonly\n"),
            ("    data-dir: var/lib/etcd\n", "4:15: error: coreos.etcd2.data-dir: \"var/lib/etcd\" is not an absolute path\n"),
            ("    client-cert-auth: sure\n", "4:23: error: coreos.etcd2.client-cert-auth: expected true or false, found \"sure\"\n"),
            (
                "    initial-cluster: a=http://10.0.0.1:2380,b\n    name: a\n",
                "4:22: error: coreos.etcd2.initial-cluster: \"a=http://10.0.0.1:2380,b\" is not a list of name=URL members: \"b\" has no '='\n",
            ),
            ("    name: c\n    initial-cluster: a=http://10.0.0.1:2380\n", "4:5: error: coreos.etcd2.name: \"c\" is not one of initial_cluster's members (a)\n"),
            ("    heartbeat-interval: 500\n    election-timeout: 1000\n", "5:5: error: coreos.etcd2.election-timeout: 1000 ms is less than 5 × heartbeat_interval (500 ms), which etcd refuses\n"),
            (
                "    name: a\n    name_: b\n    data-dir: /x\n    data_dir: /y\n",
                "7:5: error: coreos.etcd2.data_dir: given twice, as \"data-dir\" and \"data_dir\"\n5:5: warning: coreos.etcd2.name_: unknown key \"name_\", ignored\n",
            ),
        ];
        for (body, expected) in cases {
            let (settings, report) = etcd2(body);
            let mut lines: Vec<&str> = report.lines().collect();
            let mut want: Vec<&str> = expected.lines().collect();
            lines.sort();
            want.sort();
            assert_eq!(lines, want, "{body}");
            assert_eq!(settings, None, "{body}");
        }
    }

    #[test]
    fn the_node_stores_port_is_refused_to_etcd() {
        for url in ["http://127.0.0.1:2379", "http://0.0.0.0:2379", "http://localhost:2379", "http://[::]:2379"] {
            let (settings, report) = etcd2(&format!("    listen-client-urls: {url}\n"));
            assert!(report.contains("is the node store's address (basalt-store listens on 127.0.0.1:2379)"), "{url}: {report}");
            assert_eq!(settings, None);
        }
        let (settings, report) = etcd2("    listen-client-urls: http://$private_ipv4:2379,http://0.0.0.0:4001\n");
        assert_eq!(report, "");
        assert!(settings.is_some());
    }

    #[test]
    fn the_rest_of_the_config_applies_when_etcd2_is_refused() {
        let (config, report) = parse("#cloud-config\nhostname: web1\ncoreos:\n  etcd2:\n    proxy: maybe\n  units:\n    - name: etcd2.service\n      command: start\n");
        assert_eq!(report.error_count(), 1);
        assert_eq!(config.etcd, None);
        assert_eq!(config.hostname.as_deref(), Some("web1"));
        assert_eq!(config.units.len(), 1);
    }

    #[test]
    fn etcd_0_4_keys_are_mapped_or_warned_about() {
        let (config, report) = parse(
            "#cloud-config\ncoreos:\n  etcd:\n    discovery: https://discovery.etcd.io/<token>\n    addr: $private_ipv4:4001\n    peer-addr: $private_ipv4:7001\n    peers: 10.0.0.1:7001\n    peer-heartbeat-interval: 400\n",
        );
        assert_eq!(report.to_string(), "7:5: warning: coreos.etcd.peers: etcd 0.4's \"peers\" has no equivalent in etcd 3.4 (etcd-member.service); ignored; coreos.etcd2 takes etcd 3.4's settings\n");
        let settings = config.etcd.unwrap();
        assert_eq!(settings.get("ETCD_DISCOVERY"), Some("https://discovery.etcd.io/<token>"));
        assert_eq!(settings.get("ETCD_ADVERTISE_CLIENT_URLS"), Some("http://$private_ipv4:4001"));
        assert_eq!(settings.get("ETCD_LISTEN_CLIENT_URLS"), Some("http://$private_ipv4:4001"));
        assert_eq!(settings.get("ETCD_INITIAL_ADVERTISE_PEER_URLS"), Some("http://$private_ipv4:7001"));
        assert_eq!(settings.get("ETCD_LISTEN_PEER_URLS"), Some("http://$private_ipv4:7001"));
        assert_eq!(settings.get("ETCD_HEARTBEAT_INTERVAL"), Some("400"));
    }

    #[test]
    fn etcd2_wins_over_etcd_0_4_key_by_key() {
        let (config, report) = parse("#cloud-config\ncoreos:\n  etcd:\n    name: old\n    addr: 10.0.0.1:4001\n  etcd2:\n    name: new\n");
        assert_eq!(report.to_string(), "");
        let settings = config.etcd.unwrap();
        assert_eq!(settings.get("ETCD_NAME"), Some("new"));
        assert_eq!(settings.get("ETCD_ADVERTISE_CLIENT_URLS"), Some("http://10.0.0.1:4001"));
    }
}
