//! basalt-network: configures the machine's Ethernet interfaces. Static
//! settings come from systemd-networkd `.network` files (the format users
//! know and cloud-config writes) in /etc/systemd/network and
//! /run/systemd/network; an interface no file matches gets DHCP if it is the
//! first Ethernet interface. The subset: [Match] Name=, MACAddress=;
//! [Network] DHCP=, Address=, Gateway=, DNS=, Domains=; [Route] Destination=,
//! Gateway=. Addresses and routes are applied with `ip`; DHCP runs busybox
//! udhcpc in the foreground, so this program is network.service's main process.

mod network_file;

use network_file::NetworkFile;
use std::path::{Path, PathBuf};
use std::process::Command;

const DIRS: [&str; 2] = ["/etc/systemd/network", "/run/systemd/network"];
const DHCP_EVENT: &str = "/usr/lib/basalt/network-dhcp-event";

fn ethernet_interfaces(sys: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for _ in 0..20 {
        out = std::fs::read_dir(sys)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| std::fs::read_to_string(e.path().join("type")).is_ok_and(|t| t.trim() == "1"))
                    // A device behind it: not a bridge or veth (the container runtime's
                    // basalt0 sorts before eth0 and must never get DHCP).
                    .filter(|e| e.path().join("device").exists())
                    .map(|e| {
                        let mac = std::fs::read_to_string(e.path().join("address")).unwrap_or_default().trim().to_string();
                        (e.file_name().to_string_lossy().into_owned(), mac)
                    })
                    .filter(|(n, _)| n != "lo")
                    .collect()
            })
            .unwrap_or_default();
        if !out.is_empty() {
            break;
        }
        // Drivers may still be probing right after boot.
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    out.sort();
    out
}

fn load_files() -> Vec<(PathBuf, NetworkFile)> {
    let mut paths: Vec<PathBuf> =
        DIRS.iter().filter_map(|d| std::fs::read_dir(d).ok()).flat_map(|rd| rd.flatten().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "network")).collect();
    // networkd's rule: files sort by name across directories; the first match wins.
    paths.sort_by_key(|p| p.file_name().map(|n| n.to_owned()));
    let mut files = Vec::new();
    for p in paths {
        match std::fs::read_to_string(&p).map_err(|e| e.to_string()).and_then(|t| NetworkFile::parse(&t)) {
            Ok(f) => {
                for w in &f.warnings {
                    println!("{}: warning: {w}", p.display());
                }
                files.push((p, f));
            }
            Err(e) => println!("{}: ignored: {e}", p.display()),
        }
    }
    files
}

fn ip(args: &[&str]) -> bool {
    let ok = Command::new("ip").args(args).status().is_ok_and(|s| s.success());
    if !ok {
        println!("ip {} failed", args.join(" "));
    }
    ok
}

fn write_resolv_conf(dns: &[String], domains: &[String]) {
    let mut text = String::new();
    if !domains.is_empty() {
        text.push_str(&format!("search {}\n", domains.join(" ")));
    }
    for d in dns {
        text.push_str(&format!("nameserver {d}\n"));
    }
    let tmp = "/etc/resolv.conf.basalt-network";
    if std::fs::write(tmp, text).and_then(|_| std::fs::rename(tmp, "/etc/resolv.conf")).is_err() {
        println!("cannot write /etc/resolv.conf");
    }
}

fn main() {
    ip(&["link", "set", "lo", "up"]);
    let files = load_files();
    let interfaces = ethernet_interfaces(Path::new("/sys/class/net"));
    if interfaces.is_empty() {
        println!("no Ethernet interface found");
        std::process::exit(1);
    }
    let mut dhcp: Option<String> = None;
    let (mut dns, mut domains) = (Vec::new(), Vec::new());
    for (i, (name, mac)) in interfaces.iter().enumerate() {
        let matched = files.iter().find(|(_, f)| f.matches(name, mac));
        ip(&["link", "set", name, "up"]);
        match matched {
            Some((path, f)) => {
                println!("{name}: configured by {}", path.display());
                for a in &f.addresses {
                    ip(&["addr", "replace", a, "dev", name]);
                }
                for g in &f.gateways {
                    ip(&["route", "replace", "default", "via", g, "dev", name]);
                }
                for r in &f.routes {
                    let mut args = vec!["route", "replace", r.destination.as_str()];
                    if let Some(g) = &r.gateway {
                        args.extend(["via", g.as_str()]);
                    }
                    args.extend(["dev", name.as_str()]);
                    ip(&args);
                }
                dns.extend(f.dns.iter().cloned());
                domains.extend(f.domains.iter().cloned());
                if f.dhcp && dhcp.is_none() {
                    dhcp = Some(name.clone());
                }
            }
            None if i == 0 => dhcp = Some(name.clone()),
            None => println!("{name}: no .network file matches; left down"),
        }
    }
    if !dns.is_empty() {
        write_resolv_conf(&dns, &domains);
    }
    match dhcp {
        Some(iface) => {
            println!("DHCP on {iface}");
            let hostname = std::fs::read_to_string("/etc/hostname").unwrap_or_else(|_| "basalt".into());
            use std::os::unix::process::CommandExt;
            let err = Command::new("udhcpc").args(["-f", "-i", &iface, "-s", DHCP_EVENT, "-x"]).arg(format!("hostname:{}", hostname.trim())).exec();
            println!("udhcpc: {err}");
            std::process::exit(1);
        }
        None => {
            println!("static configuration applied");
            // Stay up: network.service is a simple service that is up while the network is.
            loop {
                std::thread::park();
            }
        }
    }
}
