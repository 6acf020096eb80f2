//! Published ports: the declared form checked and turned into DNAT
//! forwards, and the host ports held while a container runs. A socket bound
//! (not listening) to each published port keeps programs on the machine
//! from taking it and, the other way round, makes a port a program already
//! has a clear error at start; packets never reach it, since the DNAT rule
//! sends them on before local delivery. The agent's exit closes them.

use std::net::Ipv4Addr;
use std::os::fd::{FromRawFd, OwnedFd};

use super::nftables::{protocol_name, Forward};
use crate::spec::Port;

/// `[HOST_IP:]HOST_PORT/PROTOCOL`, as messages name a published port.
pub fn describe(port: &Port) -> String {
    match &port.host_ip {
        Some(ip) => format!("{ip}:{}/{}", port.host_port, port.protocol),
        None => format!("{}/{}", port.host_port, port.protocol),
    }
}

/// Checks a container's `ports` (what `spec.rs` calls for every declaration).
pub fn check(ports: &[Port]) -> Result<(), String> {
    for (i, port) in ports.iter().enumerate() {
        if port.protocol != "tcp" && port.protocol != "udp" {
            return Err(format!("ports: {:?} is not a protocol (tcp or udp)", port.protocol));
        }
        if port.host_port == 0 || port.container_port == 0 {
            return Err(format!("ports: {}: ports are 1 to 65535", describe(port)));
        }
        if let Some(ip) = &port.host_ip {
            match ip.parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V4(_)) => {}
                Ok(std::net::IpAddr::V6(_)) => return Err(format!("ports: {}: publishing on an IPv6 address is not supported (the bridge network is IPv4)", describe(port))),
                Err(_) => return Err(format!("ports: {ip:?} is not an IP address")),
            }
        }
        if let Some(other) = ports[..i].iter().find(|other| overlap(other, port)) {
            return Err(format!("ports: {} and {} publish the same host port", describe(other), describe(port)));
        }
    }
    Ok(())
}

/// Whether two published ports need the same host port: same protocol and
/// number, and one on all addresses or both on the same one.
pub fn overlap(a: &Port, b: &Port) -> bool {
    a.protocol == b.protocol && a.host_port == b.host_port && (a.host_ip.is_none() || b.host_ip.is_none() || a.host_ip == b.host_ip)
}

fn protocol_number(port: &Port) -> u8 {
    if port.protocol == "udp" {
        libc::IPPROTO_UDP as u8
    } else {
        libc::IPPROTO_TCP as u8
    }
}

/// The forward for `port` to a container at `address` (ports are checked).
pub fn forward(port: &Port, address: Ipv4Addr) -> Forward {
    Forward { host_ip: port.host_ip.as_ref().and_then(|ip| ip.parse().ok()), host_port: port.host_port, protocol: protocol_number(port), address, port: port.container_port }
}

/// Holds the host port of `port` in the calling thread's network namespace.
pub fn reserve(port: &Port) -> Result<OwnedFd, String> {
    let kind = if port.protocol == "udp" { libc::SOCK_DGRAM } else { libc::SOCK_STREAM };
    let fd = unsafe { libc::socket(libc::AF_INET, kind | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(format!("ports: {}: socket: {}", describe(port), std::io::Error::last_os_error()));
    }
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let ip: Ipv4Addr = port.host_ip.as_ref().and_then(|ip| ip.parse().ok()).unwrap_or(Ipv4Addr::UNSPECIFIED);
    let address = libc::sockaddr_in { sin_family: libc::AF_INET as libc::sa_family_t, sin_port: port.host_port.to_be(), sin_addr: libc::in_addr { s_addr: u32::from(ip).to_be() }, sin_zero: [0; 8] };
    use std::os::fd::AsRawFd;
    // IP_FREEBIND: a host_ip the machine does not have (yet) is still reserved.
    let on: libc::c_int = 1;
    unsafe { libc::setsockopt(fd.as_raw_fd(), libc::IPPROTO_IP, libc::IP_FREEBIND, (&on as *const libc::c_int).cast(), 4) };
    if unsafe { libc::bind(fd.as_raw_fd(), (&address as *const libc::sockaddr_in).cast(), std::mem::size_of::<libc::sockaddr_in>() as u32) } < 0 {
        let error = std::io::Error::last_os_error();
        return Err(match error.raw_os_error() {
            Some(libc::EADDRINUSE) => format!("ports: host port {} is in use by a program on this machine", describe(port)),
            _ => format!("ports: host port {}: {error}", describe(port)),
        });
    }
    Ok(fd)
}

pub fn forward_text(forward: &Forward) -> String {
    format!("{}/{} -> {}:{}", forward.host_port, protocol_name(forward.protocol), forward.address, forward.port)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(text: &str) -> Port {
        // IP:HOST:CONTAINER/PROTO, the test's shorthand.
        let (mapping, protocol) = text.split_once('/').unwrap();
        let parts: Vec<&str> = mapping.split(':').collect();
        let (host_ip, host, container) = match parts.as_slice() {
            [h, c] => (None, h, c),
            [ip, h, c] => (Some(ip.to_string()), h, c),
            _ => unreachable!(),
        };
        Port { host_ip, host_port: host.parse().unwrap(), container_port: container.parse().unwrap(), protocol: protocol.into() }
    }

    #[test]
    fn ports_are_checked_and_overlaps_found() {
        check(&[port("8080:80/tcp"), port("8080:80/udp"), port("127.0.0.1:8443:443/tcp"), port("10.0.0.1:8443:443/tcp")]).unwrap();
        assert!(check(&[port("8080:80/tcp"), port("127.0.0.1:8080:81/tcp")]).unwrap_err().contains("8080/tcp and 127.0.0.1:8080/tcp publish the same host port"));
        assert!(check(&[port("8080:80/sctp")]).unwrap_err().contains("\"sctp\" is not a protocol"));
        assert!(check(&[port("0:80/tcp")]).unwrap_err().contains("1 to 65535"));
        assert!(check(&[Port { host_ip: Some("::1".into()), ..port("80:80/tcp") }]).unwrap_err().contains("IPv6"));
        assert!(check(&[Port { host_ip: Some("localhost".into()), ..port("80:80/tcp") }]).unwrap_err().contains("\"localhost\" is not an IP address"));
        assert!(!overlap(&port("1.2.3.4:80:80/tcp"), &port("1.2.3.5:80:80/tcp")));
        let f = forward(&port("127.0.0.1:8080:80/udp"), Ipv4Addr::new(10, 88, 0, 2));
        assert_eq!((f.host_ip, f.protocol, f.port), (Some(Ipv4Addr::LOCALHOST), 17, 80));
        assert_eq!(forward_text(&f), "8080/udp -> 10.88.0.2:80");
    }

    #[test]
    fn a_port_in_use_is_named() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let taken = listener.local_addr().unwrap().port();
        let error = reserve(&Port { host_ip: None, host_port: taken, container_port: 80, protocol: "tcp".into() }).unwrap_err();
        assert_eq!(error, format!("ports: host port {taken}/tcp is in use by a program on this machine"));
        drop(listener);
        let held = reserve(&Port { host_ip: None, host_port: taken, container_port: 80, protocol: "tcp".into() }).unwrap();
        assert!(std::net::TcpListener::bind(("127.0.0.1", taken)).is_err(), "a held port is kept from programs");
        drop(held);
        std::net::TcpListener::bind(("127.0.0.1", taken)).unwrap();
    }
}
