//! systemd-networkd `.network` files, the subset basalt applies.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub destination: String,
    pub gateway: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkFile {
    pub match_names: Vec<String>,
    pub match_macs: Vec<String>,
    pub dhcp: bool,
    pub addresses: Vec<String>,
    pub gateways: Vec<String>,
    pub dns: Vec<String>,
    pub domains: Vec<String>,
    pub routes: Vec<Route>,
    pub warnings: Vec<String>,
}

fn valid_ip(s: &str) -> bool {
    s.parse::<std::net::IpAddr>().is_ok()
}

fn valid_prefix(s: &str) -> bool {
    match s.split_once('/') {
        Some((a, p)) => valid_ip(a) && p.parse::<u8>().is_ok_and(|n| n <= if a.contains(':') { 128 } else { 32 }),
        None => false,
    }
}

impl NetworkFile {
    pub fn parse(text: &str) -> Result<NetworkFile, String> {
        let mut f = NetworkFile::default();
        let mut section = String::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            let at = i + 1;
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if line.starts_with('[') && line.ends_with(']') {
                section = line[1..line.len() - 1].to_string();
                if section == "Route" {
                    f.routes.push(Route { destination: String::new(), gateway: None });
                }
                continue;
            }
            let (k, v) = line.split_once('=').ok_or_else(|| format!("line {at}: expected Key=Value"))?;
            let (k, v) = (k.trim(), v.trim());
            let bad = |what: &str| format!("line {at}: {k}={v} is not {what}");
            match (section.as_str(), k) {
                ("Match", "Name") => f.match_names.extend(v.split_whitespace().map(str::to_string)),
                ("Match", "MACAddress") => f.match_macs.extend(v.split_whitespace().map(|m| m.to_lowercase())),
                ("Network", "DHCP") => {
                    f.dhcp = match v {
                        "yes" | "true" | "ipv4" | "1" => true,
                        "no" | "false" | "0" => false,
                        "ipv6" => {
                            f.warnings.push(format!("line {at}: DHCP=ipv6 is not supported; DHCPv4 is off"));
                            false
                        }
                        _ => return Err(bad("yes, no, ipv4 or ipv6")),
                    }
                }
                ("Network" | "Address", "Address") => {
                    if !valid_prefix(v) {
                        return Err(bad("an address with prefix length (10.0.0.5/24)"));
                    }
                    f.addresses.push(v.to_string());
                }
                ("Network", "Gateway") => {
                    if !valid_ip(v) {
                        return Err(bad("an IP address"));
                    }
                    f.gateways.push(v.to_string());
                }
                ("Network", "DNS") => {
                    for d in v.split_whitespace() {
                        if !valid_ip(d) {
                            return Err(bad("a list of IP addresses"));
                        }
                        f.dns.push(d.to_string());
                    }
                }
                ("Network", "Domains") => f.domains.extend(v.split_whitespace().map(str::to_string)),
                ("Route", "Destination") => {
                    if !valid_prefix(v) {
                        return Err(bad("a destination with prefix length"));
                    }
                    f.routes.last_mut().unwrap().destination = v.to_string();
                }
                ("Route", "Gateway") => {
                    if !valid_ip(v) {
                        return Err(bad("an IP address"));
                    }
                    f.routes.last_mut().unwrap().gateway = Some(v.to_string());
                }
                _ => f.warnings.push(format!("line {at}: [{section}] {k}= is not supported; ignored")),
            }
        }
        if let Some(r) = f.routes.iter().find(|r| r.destination.is_empty()) {
            return Err(format!("a [Route] section without Destination= (gateway {:?})", r.gateway));
        }
        Ok(f)
    }

    pub fn matches(&self, name: &str, mac: &str) -> bool {
        let name_ok = self.match_names.is_empty() || self.match_names.iter().any(|p| glob(p.as_bytes(), name.as_bytes()));
        let mac_ok = self.match_macs.is_empty() || self.match_macs.iter().any(|m| m.eq_ignore_ascii_case(mac));
        name_ok && mac_ok
    }
}

fn glob(p: &[u8], s: &[u8]) -> bool {
    match (p.first(), s.first()) {
        (None, None) => true,
        (Some(b'*'), _) => glob(&p[1..], s) || (!s.is_empty() && glob(p, &s[1..])),
        (Some(b'?'), Some(_)) => glob(&p[1..], &s[1..]),
        (Some(a), Some(b)) => a == b && glob(&p[1..], &s[1..]),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATIC: &str = "[Match]\nName=eth*\n\n[Network]\nDHCP=no\nAddress=10.0.2.50/24\nGateway=10.0.2.2\nDNS=10.0.2.3 1.1.1.1\nDomains=example.internal\nLLMNR=no\n\n[Route]\nDestination=192.168.50.0/24\nGateway=10.0.2.1\n";

    #[test]
    fn parses_the_subset_cloud_config_writes() {
        let f = NetworkFile::parse(STATIC).unwrap();
        assert_eq!(f.addresses, ["10.0.2.50/24"]);
        assert_eq!(f.gateways, ["10.0.2.2"]);
        assert_eq!(f.dns, ["10.0.2.3", "1.1.1.1"]);
        assert_eq!(f.routes, [Route { destination: "192.168.50.0/24".into(), gateway: Some("10.0.2.1".into()) }]);
        assert!(!f.dhcp);
        assert_eq!(f.warnings.len(), 1);
        assert!(f.warnings[0].contains("LLMNR"));
        assert!(f.matches("eth0", "52:54:00:12:34:56") && !f.matches("ens3", ""));
    }

    #[test]
    fn bad_values_name_line_and_key() {
        let e = NetworkFile::parse("[Network]\nAddress=10.0.2.300/24\n").unwrap_err();
        assert!(e.contains("line 2") && e.contains("Address="), "{e}");
        assert!(NetworkFile::parse("[Network]\nDNS=nameserver\n").unwrap_err().contains("DNS="));
        assert!(NetworkFile::parse("[Route]\nGateway=10.0.0.1\n").unwrap_err().contains("without Destination"));
        assert!(NetworkFile::parse("[Network]\nDHCP=maybe\n").unwrap_err().contains("DHCP="));
    }

    #[test]
    fn mac_match_is_case_insensitive() {
        let f = NetworkFile::parse("[Match]\nMACAddress=52:54:00:AB:CD:EF\n[Network]\nDHCP=yes\n").unwrap();
        assert!(f.matches("anything", "52:54:00:ab:cd:ef") && f.dhcp);
    }
}
