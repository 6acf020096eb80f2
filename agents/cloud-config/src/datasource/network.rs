//! A temporary network for the network sources (a URL on the kernel command
//! line, EC2's metadata service). cloud-config runs before network.service,
//! because the network settings are part of what it applies; so when a
//! network source is to be asked and the machine has no default route yet,
//! the first Ethernet interface gets a DHCP lease for the time of the
//! discovery (busybox `udhcpc`, the lease handler network.service uses), and
//! loses it again afterwards, as cloud-init's EC2 "local" stage does. Then
//! network.service configures the machine from the settings just written.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::Environment;

/// network.service's udhcpc lease handler: sets the address, the default
/// route and /etc/resolv.conf.
pub const DHCP_EVENT: &str = "/usr/lib/basalt/network-dhcp-event";

/// Whether `/proc/net/route` text has a default route (destination 0).
pub fn has_default_route(route_table: &str) -> bool {
    route_table.lines().skip(1).any(|line| line.split_whitespace().nth(1) == Some("00000000"))
}

/// The Ethernet interfaces in `sys/class/net`, by name (ARPHRD_ETHER, not lo).
pub fn ethernet_interfaces(sys: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(sys.join("class/net"))
        .map(|entries| {
            entries
                .flatten()
                .filter(|entry| std::fs::read_to_string(entry.path().join("type")).is_ok_and(|t| t.trim() == "1"))
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .filter(|name| name != "lo")
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The lease taken for the discovery, if one was.
#[derive(Debug, Default)]
pub struct EphemeralNetwork {
    interface: Option<String>,
    tried: bool,
}

impl EphemeralNetwork {
    /// Makes sure the machine can reach the network: nothing to do when it
    /// already has a default route; otherwise DHCP on the first Ethernet
    /// interface. Tried once per discovery. Returns what it did, for the log.
    pub fn up(&mut self, environment: &Environment) -> Result<Option<String>, String> {
        if self.tried {
            return Ok(None);
        }
        self.tried = true;
        if has_default_route(&std::fs::read_to_string("/proc/net/route").unwrap_or_default()) {
            return Ok(None);
        }
        // Drivers may still be probing this early in the boot.
        let deadline = Instant::now() + Duration::from_secs(10);
        let interface = loop {
            if let Some(first) = ethernet_interfaces(&environment.sys).into_iter().next() {
                break first;
            }
            if Instant::now() > deadline {
                return Err("no Ethernet interface for DHCP".into());
            }
            std::thread::sleep(Duration::from_millis(250));
        };
        run(Command::new("ip").args(["link", "set", &interface, "up"]))?;
        // -q: quit once leased; -n: give up (exit 1) without a lease;
        // 6 discovers 2 s apart.
        run(Command::new("udhcpc").args(["-f", "-q", "-n", "-t", "6", "-T", "2", "-i", &interface, "-s", DHCP_EVENT])).map_err(|error| format!("DHCP on {interface}: {error}"))?;
        self.interface = Some(interface.clone());
        Ok(Some(format!("temporary DHCP lease on {interface} to reach the network sources")))
    }

    /// Gives the temporary address back (network.service sets up the
    /// interface as the user data says).
    pub fn down(&mut self) -> Option<String> {
        let interface = self.interface.take()?;
        let _ = run(Command::new("ip").args(["-4", "addr", "flush", "dev", &interface]));
        Some(format!("dropped the temporary DHCP address of {interface}"))
    }
}

fn run(command: &mut Command) -> Result<(), String> {
    let status = command.stdin(std::process::Stdio::null()).status().map_err(|error| format!("{:?}: {error}", command.get_program()))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{:?} {status}", command.get_program()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_routes_are_found_in_the_kernel_table() {
        let without = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\neth0\t0002000A\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        assert!(!has_default_route(without));
        let with = format!("{without}eth0\t00000000\t0202000A\t0003\t0\t0\t0\t00000000\t0\t0\t0\n");
        assert!(has_default_route(&with));
        assert!(!has_default_route(""));
    }

    #[test]
    fn ethernet_interfaces_are_listed_by_name() {
        let sys = tempfile::tempdir().unwrap();
        for (name, kind) in [("lo", "772"), ("eth1", "1"), ("eth0", "1"), ("wg0", "65534")] {
            let dir = sys.path().join("class/net").join(name);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("type"), format!("{kind}\n")).unwrap();
        }
        assert_eq!(ethernet_interfaces(sys.path()), ["eth0", "eth1"]);
    }
}
