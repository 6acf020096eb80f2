//! `.socket` units as systemd.socket(5) defines them: the `[Socket]`
//! section's listening addresses and how the service behind them is
//! started. The supervisor binds the sockets and passes them to the service
//! with `LISTEN_FDS` (sd_listen_fds(3)); this module only parses.

use std::net::{IpAddr, SocketAddr};

/// What a `Listen*=` line binds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// A bare port: every address, IPv6 and IPv4 (unless `BindIPv6Only=ipv6-only`).
    Port(u16),
    /// An address and port: `127.0.0.1:80`, `[::1]:80`.
    Inet(SocketAddr),
    /// A file-system socket: `/run/app.sock`.
    Path(String),
    /// An abstract socket: `@app` (the `@` is not part of the name).
    Abstract(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `ListenStream=`: TCP, or a SOCK_STREAM Unix socket.
    Stream,
    /// `ListenDatagram=`: UDP, or a SOCK_DGRAM Unix socket.
    Datagram,
    /// `ListenSequentialPacket=`: a SOCK_SEQPACKET Unix socket.
    SequentialPacket,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    pub transport: Transport,
    pub address: Address,
}

impl std::fmt::Display for Listen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.address {
            Address::Port(port) => write!(f, "[::]:{port}"),
            Address::Inet(addr) => write!(f, "{addr}"),
            Address::Path(path) => write!(f, "{path}"),
            Address::Abstract(name) => write!(f, "@{name}"),
        }?;
        match self.transport {
            Transport::Stream => write!(f, " (stream)"),
            Transport::Datagram => write!(f, " (datagram)"),
            Transport::SequentialPacket => write!(f, " (seqpacket)"),
        }
    }
}

/// `BindIPv6Only=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Ipv6Only {
    /// The kernel's default (net.ipv6.bindv6only, 0 on basalt: both).
    #[default]
    Default,
    Both,
    Ipv6Only,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocketSpec {
    pub listen: Vec<Listen>,
    /// `Accept=yes`: one instance of the `PREFIX@.service` template per
    /// connection, the connection its socket; `no`: one service gets the
    /// listening sockets themselves.
    pub accept: bool,
    /// `Service=`: the service started (Accept=no only); by default the one
    /// of the socket's own name.
    pub service: Option<String>,
    /// `SocketMode=` of file-system sockets.
    pub socket_mode: u32,
    /// `DirectoryMode=` of the directories made for them.
    pub directory_mode: u32,
    pub ipv6_only: Ipv6Only,
    pub backlog: u32,
    /// `MaxConnections=` (Accept=yes): more connections at once are closed.
    pub max_connections: u32,
    pub reuse_port: bool,
    pub free_bind: bool,
    pub remove_on_stop: bool,
    /// `FileDescriptorName=`: the name in `LISTEN_FDNAMES`, the socket unit's name by default.
    pub fd_name: Option<String>,
}

impl Default for SocketSpec {
    fn default() -> SocketSpec {
        SocketSpec {
            listen: Vec::new(),
            accept: false,
            service: None,
            socket_mode: 0o666,
            directory_mode: 0o755,
            ipv6_only: Ipv6Only::Default,
            backlog: 4096,
            max_connections: 64,
            reuse_port: false,
            free_bind: false,
            remove_on_stop: false,
            fd_name: None,
        }
    }
}

/// Parses a `Listen*=` value: a port, `ADDRESS:PORT`, `[IPV6]:PORT`, an
/// absolute path or `@abstract`.
pub fn parse_address(value: &str) -> Result<Address, String> {
    if value.starts_with('/') {
        if value.len() >= 108 {
            return Err(format!("{value}: a socket path has at most 107 bytes"));
        }
        return Ok(Address::Path(value.to_string()));
    }
    if let Some(name) = value.strip_prefix('@') {
        if name.is_empty() || name.len() >= 107 {
            return Err(format!("{value}: an abstract socket name has 1 to 106 bytes"));
        }
        return Ok(Address::Abstract(name.to_string()));
    }
    if value.bytes().all(|b| b.is_ascii_digit()) {
        return match value.parse::<u16>() {
            Ok(0) | Err(_) => Err(format!("{value}: a port is 1 to 65535")),
            Ok(port) => Ok(Address::Port(port)),
        };
    }
    match value.parse::<SocketAddr>() {
        Ok(addr) if addr.port() == 0 => Err(format!("{value}: a port is 1 to 65535")),
        Ok(addr) => Ok(Address::Inet(addr)),
        Err(_) if value.parse::<IpAddr>().is_ok() => Err(format!("{value}: an address needs a port (ADDRESS:PORT, [IPV6]:PORT)")),
        Err(_) => Err(format!("{value:?} is not a port, ADDRESS:PORT, [IPV6]:PORT, an absolute path or @abstract")),
    }
}

/// File modes are octal: `0660`.
pub fn parse_mode(value: &str) -> Option<u32> {
    u32::from_str_radix(value, 8).ok().filter(|m| *m <= 0o7777)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(parse_address("2375"), Ok(Address::Port(2375)));
        assert_eq!(parse_address("127.0.0.1:80"), Ok(Address::Inet("127.0.0.1:80".parse().unwrap())));
        assert_eq!(parse_address("[::1]:8080"), Ok(Address::Inet("[::1]:8080".parse().unwrap())));
        assert_eq!(parse_address("/run/app.sock"), Ok(Address::Path("/run/app.sock".into())));
        assert_eq!(parse_address("@app"), Ok(Address::Abstract("app".into())));
        assert_eq!(parse_address("0").unwrap_err(), "0: a port is 1 to 65535");
        assert_eq!(parse_address("70000").unwrap_err(), "70000: a port is 1 to 65535");
        assert_eq!(parse_address("10.0.0.1").unwrap_err(), "10.0.0.1: an address needs a port (ADDRESS:PORT, [IPV6]:PORT)");
        assert!(parse_address("example.com:80").unwrap_err().contains("is not a port"));
        assert!(parse_address(&format!("/{}", "a".repeat(120))).unwrap_err().contains("at most 107 bytes"));
    }
}
