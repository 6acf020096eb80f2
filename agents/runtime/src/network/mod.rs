//! The bridge network (`network: bridge`): a private network per container
//! with published ports, as docker's default bridge or rkt's default network
//! give. See docs/runtime.md, "Bridge network".
//!
//! - the host bridge (`basalt0`, the subnet's first address, 10.88.0.1/16 by
//!   default), made when the first bridge container starts;
//! - per container: a network namespace held at `/run/basalt/netns/NAME`
//!   (the runner joins it by path), a veth pair (`bsXXXXXXXX` on the bridge,
//!   named after the address in hex, and `eth0` inside), an address from the
//!   persistent table (`addresses.rs`), `lo` up and the default route via the
//!   bridge;
//! - the nf_tables table `ip basalt` (`nftables.rs`): masquerade for the
//!   containers' own traffic and DNAT for published ports, rewritten as a
//!   whole whenever the set of running containers' ports changes; and each
//!   published host port held by a bound socket while the container runs
//!   (`ports.rs`).
//!
//! Everything here works in the calling thread's network namespace, which
//! is how the host test runs it in a namespace of its own.

pub mod addresses;
pub mod link;
pub mod netlink;
pub mod netns;
pub mod nftables;
pub mod ports;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use addresses::Allocations;
pub use addresses::Subnet;

use crate::settings::NetworkSettings;
use crate::spec::Port;

pub const NETNS_DIR: &str = "/run/basalt/netns";

/// The kernel modules bridge networking needs (Debian's cloud kernel has
/// them as modules; a kernel with them built in needs none).
pub const MODULES: &[&str] = &["bridge", "veth", "nf_tables", "nft_chain_nat", "nft_nat", "nft_masq", "nft_fib_ipv4", "nft_ct"];

/// What a started container's network is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub address: Ipv4Addr,
    pub gateway: Ipv4Addr,
    pub prefix: u8,
    /// The namespace file the runner joins.
    pub namespace: PathBuf,
    /// The veth's end on the bridge.
    pub host_interface: String,
}

struct Attached {
    address: Ipv4Addr,
    ports: Vec<Port>,
    /// Sockets holding the published host ports.
    _held: Vec<OwnedFd>,
}

#[derive(Default)]
struct State {
    /// The settings the bridge was made with (none before the first bridge container).
    bridge: Option<NetworkSettings>,
    attached: BTreeMap<String, Attached>,
}

pub struct Network {
    netns_dir: PathBuf,
    addresses: PathBuf,
    state: Mutex<State>,
}

/// The host end of a container's veth pair: `bs` and its address in hex.
pub fn veth_name(address: Ipv4Addr) -> String {
    format!("bs{:08x}", u32::from(address))
}

fn refused(what: &str) -> impl Fn(netlink::Refused) -> String + '_ {
    move |r| format!("{what}: {r}")
}

/// Loads the modules the kernel does not have yet; what modprobe said about
/// the ones it could not load, for errors later.
fn load_modules() -> Vec<String> {
    let mut failures = Vec::new();
    for module in MODULES {
        if Path::new("/sys/module").join(module).exists() {
            continue;
        }
        match std::process::Command::new("modprobe").arg(module).output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => failures.push(format!("modprobe {module}: {}", String::from_utf8_lossy(&out.stderr).trim())),
            Err(e) => failures.push(format!("modprobe {module}: {e}")),
        }
    }
    failures
}

/// The driver behind an interface, as `ethtool -i` shows it ("bridge", "veth", "virtio_net").
fn driver(name: &str) -> Option<String> {
    #[repr(C)]
    struct DriverInfo {
        cmd: u32,
        driver: [u8; 32],
        rest: [u8; 160],
    }
    let mut info = DriverInfo { cmd: 0x3 /* ETHTOOL_GDRVINFO */, driver: [0; 32], rest: [0; 160] };
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in name.bytes().take(15).enumerate() {
        request.ifr_name[i] = b as libc::c_char;
    }
    request.ifr_ifru.ifru_data = (&mut info as *mut DriverInfo).cast();
    let socket = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if socket < 0 {
        return None;
    }
    let rc = unsafe { libc::ioctl(socket, libc::SIOCETHTOOL, &mut request) };
    unsafe { libc::close(socket) };
    (rc == 0).then(|| String::from_utf8_lossy(info.driver.split(|&b| b == 0).next().unwrap_or_default()).into_owned())
}

fn write_sysctl(key: &str, value: &str) -> Result<(), String> {
    let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
    std::fs::write(&path, value).map_err(|e| format!("setting {key} = {value}: {e}"))
}

/// The bridge, its address and forwarding; an existing bridge of that name
/// (an earlier agent's) is used as it is.
fn set_up_bridge(settings: &NetworkSettings) -> Result<(), String> {
    let failed_modules = load_modules();
    let hint = || if failed_modules.is_empty() { String::new() } else { format!(" ({})", failed_modules.join("; ")) };
    let bridge = &settings.bridge;
    let mut socket = link::open()?;
    let created = link::create_bridge(&mut socket, bridge).map_err(|r| format!("creating bridge {bridge}: {r}{}", hint()))?;
    if !created {
        match driver(bridge) {
            Some(kind) if kind == "bridge" => {}
            other => return Err(format!("{bridge} exists and is not a bridge (driver {}); choose another network.bridge", other.unwrap_or_else(|| "unknown".into()))),
        }
    }
    let index = link::index(bridge)?;
    let subnet = settings.subnet;
    link::add_address(&mut socket, index, subnet.gateway(), subnet.prefix).map_err(refused(&format!("adding {}/{} to {bridge}", subnet.gateway(), subnet.prefix)))?;
    link::set_up(&mut socket, index).map_err(refused(&format!("bringing {bridge} up")))?;
    write_sysctl("net.ipv4.ip_forward", "1")?;
    // Connections to 127.0.0.1:PORT are translated to a container's address
    // and leave through the bridge, which needs loopback sources allowed there.
    write_sysctl(&format!("net.ipv4.conf.{bridge}.route_localnet"), "1")?;
    nftables::apply(&nftables::Ruleset { bridge: bridge.clone(), subnet, forwards: vec![] }).map_err(|e| format!("{e}{}", hint()))
}

/// `/etc/hosts` for a container: localhost and its own name.
pub fn hosts_file(name: &str, address: Ipv4Addr) -> String {
    format!("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{address}\t{name}\n")
}

/// `/etc/resolv.conf` for a container: the machine's, without name servers
/// on the machine's loopback (the container's loopback is its own), as docker does.
pub fn resolv_conf(host: &str) -> String {
    let mut out = String::new();
    for line in host.lines() {
        let mut words = line.split_whitespace();
        if words.next() == Some("nameserver") {
            if let Some(Ok(address)) = words.next().map(str::parse::<std::net::IpAddr>) {
                if address.is_loopback() {
                    continue;
                }
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

impl Network {
    pub fn new(netns_dir: &Path, addresses: &Path) -> Network {
        Network { netns_dir: netns_dir.to_owned(), addresses: addresses.to_owned(), state: Mutex::new(State::default()) }
    }

    pub fn namespace_path(&self, name: &str) -> PathBuf {
        self.netns_dir.join(name)
    }

    /// The address a container has (kept while it exists).
    pub fn address(&self, name: &str) -> Option<Ipv4Addr> {
        let _state = self.state.lock().unwrap();
        Allocations::load(&self.addresses).ok().and_then(|a| a.get(name))
    }

    /// Gives container `name` its network, publishes `ports`, and returns
    /// what it got. On an error nothing of it is left.
    pub fn attach(&self, name: &str, ports: &[Port], settings: &NetworkSettings) -> Result<Attachment, String> {
        ports::check(ports)?;
        let mut state = self.state.lock().unwrap();
        if state.bridge.is_none() {
            set_up_bridge(settings)?;
            state.bridge = Some(settings.clone());
        }
        let settings = state.bridge.clone().expect("set up above");
        self.detach_locked(&mut state, name);
        for port in ports {
            if let Some((other, _)) = state.attached.iter().find(|(_, a)| a.ports.iter().any(|p| ports::overlap(p, port))) {
                return Err(format!("ports: host port {} is already published by container {other}", ports::describe(port)));
            }
        }
        let held = ports.iter().map(ports::reserve).collect::<Result<Vec<_>, _>>()?;
        let address = Allocations::load(&self.addresses)?.allocate(name, &settings.subnet)?;
        let attachment = Attachment { address, gateway: settings.subnet.gateway(), prefix: settings.subnet.prefix, namespace: self.namespace_path(name), host_interface: veth_name(address) };
        if let Err(e) = self.connect(&settings, &attachment) {
            self.disconnect(&attachment.host_interface, &attachment.namespace);
            return Err(e);
        }
        state.attached.insert(name.to_string(), Attached { address, ports: ports.to_vec(), _held: held });
        if let Err(e) = self.apply_rules(&state) {
            state.attached.remove(name);
            self.disconnect(&attachment.host_interface, &attachment.namespace);
            let _ = self.apply_rules(&state);
            return Err(e);
        }
        Ok(attachment)
    }

    /// The namespace, the veth pair and the container's side of it.
    fn connect(&self, settings: &NetworkSettings, a: &Attachment) -> Result<(), String> {
        let mut socket = link::open()?;
        link::delete(&mut socket, &a.host_interface).map_err(refused(&format!("removing a stale {}", a.host_interface)))?;
        let bridge = link::index(&settings.bridge)?;
        let namespace = netns::create(&a.namespace)?;
        use std::os::fd::AsRawFd;
        link::create_veth(&mut socket, &a.host_interface, "eth0", namespace.as_raw_fd()).map_err(refused(&format!("creating veth pair {} / eth0", a.host_interface)))?;
        let index = link::index(&a.host_interface)?;
        link::set_master(&mut socket, index, bridge).map_err(refused(&format!("attaching {} to {}", a.host_interface, settings.bridge)))?;
        link::set_up(&mut socket, index).map_err(refused(&format!("bringing {} up", a.host_interface)))?;
        let (address, gateway, prefix) = (a.address, a.gateway, a.prefix);
        netns::enter(&namespace, move || {
            let mut inside = link::open()?;
            link::set_up(&mut inside, link::index("lo")?).map_err(refused("bringing lo up"))?;
            let eth0 = link::index("eth0")?;
            link::add_address(&mut inside, eth0, address, prefix).map_err(refused(&format!("adding {address}/{prefix} to eth0")))?;
            link::set_up(&mut inside, eth0).map_err(refused("bringing eth0 up"))?;
            link::add_default_route(&mut inside, gateway, eth0).map_err(refused(&format!("adding the default route via {gateway}")))
        })
    }

    fn disconnect(&self, host_interface: &str, namespace: &Path) {
        if let Ok(mut socket) = link::open() {
            let _ = link::delete(&mut socket, host_interface);
        }
        netns::remove(namespace);
    }

    fn apply_rules(&self, state: &State) -> Result<(), String> {
        let Some(settings) = &state.bridge else { return Ok(()) };
        let forwards = state.attached.values().flat_map(|a| a.ports.iter().map(|p| ports::forward(p, a.address))).collect();
        nftables::apply(&nftables::Ruleset { bridge: settings.bridge.clone(), subnet: settings.subnet, forwards })
    }

    fn detach_locked(&self, state: &mut State, name: &str) {
        let namespace = self.namespace_path(name);
        match state.attached.remove(name) {
            Some(attached) => {
                self.disconnect(&veth_name(attached.address), &namespace);
                let _ = self.apply_rules(state);
            }
            None => netns::remove(&namespace),
        }
    }

    /// Takes a stopped container off the network: its ports are unpublished
    /// and released, its veth pair and namespace removed. Its address stays
    /// its own until `release`.
    pub fn detach(&self, name: &str) {
        let mut state = self.state.lock().unwrap();
        self.detach_locked(&mut state, name);
    }

    /// Frees a removed container's address.
    pub fn release(&self, name: &str) -> Result<(), String> {
        let mut state = self.state.lock().unwrap();
        self.detach_locked(&mut state, name);
        Allocations::load(&self.addresses)?.release(name)
    }

    /// The ports published now, by container.
    pub fn published(&self) -> Vec<(String, Port)> {
        let state = self.state.lock().unwrap();
        state.attached.iter().flat_map(|(name, a)| a.ports.iter().map(move |p| (name.clone(), p.clone()))).collect()
    }

    /// After an agent that did not stop cleanly (no container runs now):
    /// namespaces and veth pairs removed, the rules dropped, and addresses
    /// kept only for the containers in `containers`.
    pub fn clean_leftovers(&self, containers: &[String]) -> Vec<String> {
        let mut notes = Vec::new();
        let _state = self.state.lock().unwrap();
        for entry in std::fs::read_dir(&self.netns_dir).into_iter().flatten().flatten() {
            netns::remove(&entry.path());
            notes.push(format!("removed the network namespace {} left from an earlier run", entry.path().display()));
        }
        if !self.addresses.exists() {
            // The bridge network was never used here.
            return notes;
        }
        match Allocations::load(&self.addresses) {
            Ok(mut table) => {
                if let Ok(mut socket) = link::open() {
                    for (_, address) in table.all() {
                        if let Ok(true) = link::delete(&mut socket, &veth_name(*address)) {
                            notes.push(format!("removed {} left from an earlier run", veth_name(*address)));
                        }
                    }
                }
                if let Err(e) = table.retain(containers) {
                    notes.push(e);
                }
            }
            Err(e) => notes.push(e),
        }
        // Best effort: after a reboot there is no table (and maybe no
        // nf_tables yet); the first bridge container replaces it anyway.
        let _ = nftables::remove();
        notes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_etc_files() {
        assert_eq!(resolv_conf("search example.net\nnameserver 127.0.0.53\nnameserver 10.0.2.3\nnameserver ::1\noptions ndots:2\n"), "search example.net\nnameserver 10.0.2.3\noptions ndots:2\n");
        assert!(hosts_file("web", Ipv4Addr::new(10, 88, 0, 2)).ends_with("10.88.0.2\tweb\n"));
        assert_eq!(veth_name(Ipv4Addr::new(10, 88, 0, 2)), "bs0a580002");
    }
}
