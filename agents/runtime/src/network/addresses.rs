//! The bridge's subnet and the containers' addresses in it. An address is
//! given to a container the first time it starts on the bridge and kept
//! (across restarts of the container, of the agent and of the machine) until
//! the container is removed; the table is a JSON file on ROOT, written
//! atomically on every change, so no address is handed out twice.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// An IPv4 network such as `10.88.0.0/16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    pub network: Ipv4Addr,
    pub prefix: u8,
}

impl FromStr for Subnet {
    type Err = String;

    fn from_str(text: &str) -> Result<Subnet, String> {
        let (address, prefix) = text.split_once('/').ok_or_else(|| format!("{text:?} is not a subnet such as \"10.88.0.0/16\""))?;
        let network: Ipv4Addr = address.parse().map_err(|_| format!("{text:?}: {address:?} is not an IPv4 address"))?;
        let prefix: u8 = prefix.parse().map_err(|_| format!("{text:?}: {prefix:?} is not a prefix length"))?;
        if !(8..=30).contains(&prefix) {
            return Err(format!("{text:?}: the prefix length must be between 8 and 30 (room for the gateway and containers)"));
        }
        let subnet = Subnet { network, prefix };
        if u32::from(network) & !u32::from(subnet.mask()) != 0 {
            return Err(format!("{text:?} has host bits set; the network is {}/{prefix}", Ipv4Addr::from(u32::from(network) & u32::from(subnet.mask()))));
        }
        Ok(subnet)
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl Subnet {
    pub fn mask(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::MAX << (32 - self.prefix))
    }

    /// The bridge's own address: the first in the subnet.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    pub fn contains(&self, address: Ipv4Addr) -> bool {
        u32::from(address) & u32::from(self.mask()) == u32::from(self.network)
    }

    /// Addresses containers may have: all but the network, the gateway and broadcast.
    fn usable(&self, address: Ipv4Addr) -> bool {
        let broadcast = u32::from(self.network) | !u32::from(self.mask());
        self.contains(address) && address != self.network && address != self.gateway() && u32::from(address) != broadcast
    }

    fn hosts(&self) -> impl Iterator<Item = Ipv4Addr> {
        let first = u32::from(self.network) + 2;
        let broadcast = u32::from(self.network) | !u32::from(self.mask());
        (first..broadcast).map(Ipv4Addr::from)
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Table {
    /// Container name -> address.
    addresses: BTreeMap<String, Ipv4Addr>,
}

/// The address table in `path`.
#[derive(Debug)]
pub struct Allocations {
    path: PathBuf,
    table: Table,
}

impl Allocations {
    pub fn load(path: &Path) -> Result<Allocations, String> {
        let table = match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Table::default(),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        Ok(Allocations { path: path.to_owned(), table })
    }

    fn save(&self) -> Result<(), String> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        crate::store::write_atomically(&self.path, &serde_json::to_vec_pretty(&self.table).expect("the table serialises")).map_err(|e| e.to_string())
    }

    pub fn get(&self, name: &str) -> Option<Ipv4Addr> {
        self.table.addresses.get(name).copied()
    }

    pub fn all(&self) -> impl Iterator<Item = (&String, &Ipv4Addr)> {
        self.table.addresses.iter()
    }

    /// The container's address: the one it has if that is in `subnet`,
    /// else the lowest free one (saved before it is returned).
    pub fn allocate(&mut self, name: &str, subnet: &Subnet) -> Result<Ipv4Addr, String> {
        if let Some(address) = self.get(name).filter(|a| subnet.usable(*a)) {
            return Ok(address);
        }
        let taken: std::collections::BTreeSet<Ipv4Addr> = self.table.addresses.iter().filter(|(n, _)| n.as_str() != name).map(|(_, a)| *a).collect();
        let address = subnet.hosts().find(|a| !taken.contains(a)).ok_or_else(|| format!("no free address left in {subnet} ({} containers have one)", taken.len()))?;
        self.table.addresses.insert(name.to_string(), address);
        self.save()?;
        Ok(address)
    }

    pub fn release(&mut self, name: &str) -> Result<(), String> {
        if self.table.addresses.remove(name).is_some() {
            self.save()?;
        }
        Ok(())
    }

    /// Keeps only the addresses of `names` (containers that still exist).
    pub fn retain(&mut self, names: &[String]) -> Result<(), String> {
        let before = self.table.addresses.len();
        self.table.addresses.retain(|name, _| names.contains(name));
        if self.table.addresses.len() != before {
            self.save()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_parse_and_bad_ones_are_named() {
        let subnet: Subnet = "10.88.0.0/16".parse().unwrap();
        assert_eq!(subnet.gateway(), Ipv4Addr::new(10, 88, 0, 1));
        assert_eq!(subnet.mask(), Ipv4Addr::new(255, 255, 0, 0));
        assert!(subnet.contains(Ipv4Addr::new(10, 88, 255, 1)) && !subnet.contains(Ipv4Addr::new(10, 89, 0, 1)));
        assert_eq!(subnet.to_string(), "10.88.0.0/16");
        assert!("10.88.0.1/16".parse::<Subnet>().unwrap_err().contains("host bits set; the network is 10.88.0.0/16"));
        assert!("10.88.0.0".parse::<Subnet>().unwrap_err().contains("not a subnet"));
        assert!("10.88.0.0/31".parse::<Subnet>().unwrap_err().contains("between 8 and 30"));
        assert!("fd00::/64".parse::<Subnet>().unwrap_err().contains("not an IPv4 address"));
    }

    #[test]
    fn addresses_are_unique_kept_across_loads_and_released() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("network/addresses.json");
        let subnet: Subnet = "10.88.0.0/29".parse().unwrap();
        let mut table = Allocations::load(&path).unwrap();
        let a = table.allocate("a", &subnet).unwrap();
        let b = table.allocate("b", &subnet).unwrap();
        assert_eq!((a, b), (Ipv4Addr::new(10, 88, 0, 2), Ipv4Addr::new(10, 88, 0, 3)));
        assert_eq!(table.allocate("a", &subnet).unwrap(), a, "a container keeps its address");
        // What the next agent reads.
        let mut table = Allocations::load(&path).unwrap();
        assert_eq!(table.get("b"), Some(b));
        for name in ["c", "d", "e"] {
            table.allocate(name, &subnet).unwrap();
        }
        // .0 network, .1 gateway, .7 broadcast: five containers fit.
        assert!(table.allocate("f", &subnet).unwrap_err().contains("no free address left in 10.88.0.0/29"));
        table.release("a").unwrap();
        assert_eq!(Allocations::load(&path).unwrap().allocate("f", &subnet).unwrap(), a, "a released address is free again");
        let mut table = Allocations::load(&path).unwrap();
        table.retain(&["b".to_string()]).unwrap();
        assert_eq!(Allocations::load(&path).unwrap().all().count(), 1);
        // Another subnet: the container gets an address in it.
        let other: Subnet = "192.168.100.0/24".parse().unwrap();
        assert_eq!(table.allocate("b", &other).unwrap(), Ipv4Addr::new(192, 168, 100, 2));
        std::fs::write(&path, "{").unwrap();
        assert!(Allocations::load(&path).unwrap_err().contains("addresses.json"));
    }
}
