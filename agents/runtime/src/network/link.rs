//! rtnetlink requests: the bridge, veth pairs, addresses, routes. Each
//! works in the network namespace of the socket it is sent on.

use std::net::Ipv4Addr;

use super::netlink::{Message, Refused, Socket, NLM_F_CREATE, NLM_F_EXCL};

const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MASTER: u16 = 10;
const IFLA_LINKINFO: u16 = 18;
const IFLA_NET_NS_FD: u16 = 28;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_INFO_DATA: u16 = 2;
const VETH_INFO_PEER: u16 = 1;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_BROADCAST: u16 = 4;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RTN_UNICAST: u8 = 1;

pub fn open() -> Result<Socket, String> {
    Socket::open(libc::NETLINK_ROUTE).map_err(|e| format!("opening a route netlink socket: {e}"))
}

/// `struct ifinfomsg`: family, type, index, flags, change.
fn ifinfomsg(index: u32, flags: u32, change: u32) -> [u8; 16] {
    let mut header = [0u8; 16];
    header[0] = libc::AF_UNSPEC as u8;
    header[4..8].copy_from_slice(&index.to_ne_bytes());
    header[8..12].copy_from_slice(&flags.to_ne_bytes());
    header[12..16].copy_from_slice(&change.to_ne_bytes());
    header
}

/// The index of interface `name` in the calling thread's network namespace.
pub fn index(name: &str) -> Result<u32, String> {
    let c = crate::linux::sys::cstr(name);
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(format!("interface {name}: {}", std::io::Error::last_os_error())),
        index => Ok(index),
    }
}

/// A locally administered unicast MAC address: a bridge keeps a fixed one
/// instead of taking its lowest port's, which would change the gateway's
/// address under the containers' ARP caches as ports come and go.
pub fn random_mac() -> [u8; 6] {
    let mut mac = [0u8; 6];
    unsafe { libc::getrandom(mac.as_mut_ptr().cast(), mac.len(), 0) };
    mac[0] = (mac[0] & 0xfe) | 0x02;
    mac
}

/// Creates bridge `name`; `Ok(false)` if an interface of that name exists.
pub fn create_bridge(socket: &mut Socket, name: &str) -> Result<bool, Refused> {
    let mut message = Message::new(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, &ifinfomsg(0, 0, 0));
    message.attr_str(IFLA_IFNAME, name).attr(IFLA_ADDRESS, &random_mac()).begin(IFLA_LINKINFO).attr_str(IFLA_INFO_KIND, "bridge").end();
    match socket.request(message) {
        Ok(()) => Ok(true),
        Err(refused) if refused.errno == libc::EEXIST => Ok(false),
        Err(refused) => Err(refused),
    }
}

/// Creates a veth pair: `host_name` here, `peer_name` in the network
/// namespace open as `peer_namespace`.
pub fn create_veth(socket: &mut Socket, host_name: &str, peer_name: &str, peer_namespace: i32) -> Result<(), Refused> {
    let mut message = Message::new(RTM_NEWLINK, NLM_F_CREATE | NLM_F_EXCL, &ifinfomsg(0, 0, 0));
    message.attr_str(IFLA_IFNAME, host_name).begin(IFLA_LINKINFO).attr_str(IFLA_INFO_KIND, "veth").begin(IFLA_INFO_DATA).begin(VETH_INFO_PEER);
    message.raw(&ifinfomsg(0, 0, 0)).attr_str(IFLA_IFNAME, peer_name).attr_u32(IFLA_NET_NS_FD, peer_namespace as u32);
    message.end().end().end();
    socket.request(message)
}

pub fn set_up(socket: &mut Socket, index: u32) -> Result<(), Refused> {
    let up = libc::IFF_UP as u32;
    socket.request(Message::new(RTM_NEWLINK, 0, &ifinfomsg(index, up, up)))
}

pub fn set_master(socket: &mut Socket, index: u32, master: u32) -> Result<(), Refused> {
    let mut message = Message::new(RTM_NEWLINK, 0, &ifinfomsg(index, 0, 0));
    message.attr_u32(IFLA_MASTER, master);
    socket.request(message)
}

/// Deletes interface `name` (a veth's peer goes with it); `Ok(false)` if
/// there is none.
pub fn delete(socket: &mut Socket, name: &str) -> Result<bool, Refused> {
    let mut message = Message::new(RTM_DELLINK, 0, &ifinfomsg(0, 0, 0));
    message.attr_str(IFLA_IFNAME, name);
    match socket.request(message) {
        Ok(()) => Ok(true),
        Err(refused) if refused.errno == libc::ENODEV => Ok(false),
        Err(refused) => Err(refused),
    }
}

/// Adds `address/prefix` to interface `index`; one already there is fine.
pub fn add_address(socket: &mut Socket, index: u32, address: Ipv4Addr, prefix: u8) -> Result<(), Refused> {
    let mut header = [0u8; 8];
    header[0] = libc::AF_INET as u8;
    header[1] = prefix;
    header[4..8].copy_from_slice(&index.to_ne_bytes());
    let broadcast = Ipv4Addr::from(u32::from(address) | (u32::MAX >> prefix));
    let mut message = Message::new(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, &header);
    message.attr(IFA_LOCAL, &address.octets()).attr(IFA_ADDRESS, &address.octets()).attr(IFA_BROADCAST, &broadcast.octets());
    match socket.request(message) {
        Err(refused) if refused.errno == libc::EEXIST => Ok(()),
        other => other,
    }
}

/// The default route through `gateway` on interface `index`.
pub fn add_default_route(socket: &mut Socket, gateway: Ipv4Addr, index: u32) -> Result<(), Refused> {
    let header = [libc::AF_INET as u8, 0, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST, 0, 0, 0, 0];
    let mut message = Message::new(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, &header);
    message.attr(RTA_GATEWAY, &gateway.octets()).attr_u32(RTA_OIF, index);
    socket.request(message)
}
