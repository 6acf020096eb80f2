//! The runtime's nf_tables table (`ip basalt`), written over netlink: NAT
//! for published ports and for the containers' own traffic, and a forward
//! filter that lets only published ports and replies into the bridge from
//! outside. The whole table is replaced in one batch (the kernel applies a
//! batch as a transaction) whenever the set of published ports changes:
//!
//! ```text
//! table ip basalt {
//!   chain prerouting { type nat hook prerouting priority dstnat;
//!     fib daddr type local tcp dport 8080 dnat to 10.88.0.2:80 }   # per port
//!   chain output { type nat hook output priority dstnat;
//!     fib daddr type local tcp dport 8080 dnat to 10.88.0.2:80 }   # from the machine itself
//!   chain postrouting { type nat hook postrouting priority srcnat;
//!     ip saddr 10.88.0.0/16 ip daddr != 10.88.0.0/16 masquerade   # out to the world
//!     ip saddr 10.88.0.0/16 ct status dnat masquerade             # container -> published port
//!     ip saddr 127.0.0.0/8 oifname "basalt0" masquerade }          # 127.0.0.1:8080 -> container
//!   chain forward { type filter hook forward priority filter;
//!     oifname "basalt0" ct status dnat accept
//!     oifname "basalt0" ct state established,related accept
//!     oifname "basalt0" iifname != "basalt0" drop }
//!   chain input { type filter hook input priority filter;
//!     iifname "basalt0" ip daddr 127.0.0.0/8 ct direction original drop }
//! }
//! ```
//!
//! The input rule keeps the machine's loopback services (the store on
//! 127.0.0.1:2379 and anything else bound there) out of the containers'
//! reach: `route_localnet` on the bridge, needed so that 127.0.0.1 can reach
//! a published port, would otherwise let a container (root with CAP_NET_RAW,
//! docker's default) send packets to 127.0.0.1 of the host. Replies to the
//! machine's own connections to published ports are in the reply direction
//! and pass.
//!
//! A `host_ip` replaces `fib daddr type local` with `ip daddr HOST_IP`.

use std::net::Ipv4Addr;

use super::addresses::Subnet;
use super::netlink::{Message, Refused, Socket, NLM_F_APPEND, NLM_F_CREATE};

pub const TABLE: &str = "basalt";

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NFPROTO_IPV4: u8 = 2;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;

const NF_INET_PRE_ROUTING: u32 = 0;
const NF_INET_LOCAL_IN: u32 = 1;
const NF_INET_FORWARD: u32 = 2;
const NF_INET_LOCAL_OUT: u32 = 3;
const NF_INET_POST_ROUTING: u32 = 4;
const NF_DROP: u32 = 0;
const NF_ACCEPT: u32 = 1;

const NFT_REG_VERDICT: u32 = 0;
const NFT_REG_1: u32 = 1;
const NFT_REG_2: u32 = 2;

const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const NFT_META_IIFNAME: u32 = 6;
const NFT_META_OIFNAME: u32 = 7;
const NFT_META_L4PROTO: u32 = 16;
const NFT_CMP_EQ: u32 = 0;
const NFT_CMP_NEQ: u32 = 1;
const NFT_CT_STATE: u32 = 0;
const NFT_CT_DIRECTION: u32 = 1;
const NFT_CT_STATUS: u32 = 2;
const NFT_NAT_DNAT: u32 = 1;
const NFT_FIB_RESULT_ADDRTYPE: u32 = 3;
const NFTA_FIB_F_DADDR: u32 = 1 << 1;
const RTN_LOCAL: u32 = 2;
/// `ct state established,related`.
const CT_STATE_ESTABLISHED_RELATED: u32 = 0x02 | 0x04;
/// `IPS_DST_NAT`: the connection's destination was translated.
const IPS_DST_NAT: u32 = 1 << 5;

/// A published port: `host_ip:host_port/protocol` to `address:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    /// IPPROTO_TCP or IPPROTO_UDP.
    pub protocol: u8,
    pub address: Ipv4Addr,
    pub port: u16,
}

#[derive(Debug, Clone)]
pub struct Ruleset {
    pub bridge: String,
    pub subnet: Subnet,
    pub forwards: Vec<Forward>,
}

/// One expression: its name and its attributes (already encoded).
struct Expr {
    name: &'static str,
    attrs: Vec<(u16, Attr)>,
}

enum Attr {
    Be32(u32),
    /// NFTA_DATA_VALUE inside the attribute.
    Value(Vec<u8>),
    /// NFTA_DATA_VERDICT inside the attribute.
    Verdict(u32),
}

fn expr(name: &'static str, attrs: Vec<(u16, Attr)>) -> Expr {
    Expr { name, attrs }
}

fn payload(base: u32, offset: u32, len: u32) -> Expr {
    expr("payload", vec![(1, Attr::Be32(NFT_REG_1)), (2, Attr::Be32(base)), (3, Attr::Be32(offset)), (4, Attr::Be32(len))])
}

fn meta(key: u32) -> Expr {
    expr("meta", vec![(1, Attr::Be32(NFT_REG_1)), (2, Attr::Be32(key))])
}

fn cmp(op: u32, data: &[u8]) -> Expr {
    expr("cmp", vec![(1, Attr::Be32(NFT_REG_1)), (2, Attr::Be32(op)), (3, Attr::Value(data.to_vec()))])
}

/// reg1 = reg1 & mask (xor 0).
fn and(mask: &[u8]) -> Expr {
    expr("bitwise", vec![(1, Attr::Be32(NFT_REG_1)), (2, Attr::Be32(NFT_REG_1)), (3, Attr::Be32(mask.len() as u32)), (4, Attr::Value(mask.to_vec())), (5, Attr::Value(vec![0; mask.len()]))])
}

fn ct(key: u32) -> Expr {
    expr("ct", vec![(1, Attr::Be32(NFT_REG_1)), (2, Attr::Be32(key))])
}

fn verdict(code: u32) -> Expr {
    expr("immediate", vec![(1, Attr::Be32(NFT_REG_VERDICT)), (2, Attr::Verdict(code))])
}

fn interface_name(name: &str) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    bytes[..name.len().min(15)].copy_from_slice(&name.as_bytes()[..name.len().min(15)]);
    bytes
}

/// `ip saddr|daddr (==|!=) subnet`.
fn address_in(offset: u32, subnet: &Subnet, op: u32) -> Vec<Expr> {
    vec![payload(NFT_PAYLOAD_NETWORK_HEADER, offset, 4), and(&subnet.mask().octets()), cmp(op, &subnet.network.octets())]
}

/// `ct state|status & bits != 0`.
fn ct_any(key: u32, bits: u32) -> Vec<Expr> {
    vec![ct(key), and(&bits.to_ne_bytes()), cmp(NFT_CMP_NEQ, &0u32.to_ne_bytes())]
}

fn interface(key: u32, name: &str, op: u32) -> Vec<Expr> {
    vec![meta(key), cmp(op, &interface_name(name))]
}

fn dnat(forward: &Forward) -> Vec<Expr> {
    let mut rule = match forward.host_ip {
        None => vec![expr("fib", vec![(1, Attr::Be32(NFT_REG_1)), (2, Attr::Be32(NFT_FIB_RESULT_ADDRTYPE)), (3, Attr::Be32(NFTA_FIB_F_DADDR))]), cmp(NFT_CMP_EQ, &RTN_LOCAL.to_ne_bytes())],
        Some(ip) => vec![payload(NFT_PAYLOAD_NETWORK_HEADER, 16, 4), cmp(NFT_CMP_EQ, &ip.octets())],
    };
    rule.extend([
        meta(NFT_META_L4PROTO),
        cmp(NFT_CMP_EQ, &[forward.protocol]),
        payload(NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2),
        cmp(NFT_CMP_EQ, &forward.host_port.to_be_bytes()),
        expr("immediate", vec![(1, Attr::Be32(NFT_REG_1)), (2, Attr::Value(forward.address.octets().to_vec()))]),
        expr("immediate", vec![(1, Attr::Be32(NFT_REG_2)), (2, Attr::Value(forward.port.to_be_bytes().to_vec()))]),
        expr("nat", vec![(1, Attr::Be32(NFT_NAT_DNAT)), (2, Attr::Be32(NFPROTO_IPV4 as u32)), (3, Attr::Be32(NFT_REG_1)), (5, Attr::Be32(NFT_REG_2))]),
    ]);
    rule
}

fn nfgenmsg(family: u8, resource: u16) -> [u8; 4] {
    let id = resource.to_be_bytes();
    [family, 0, id[0], id[1]]
}

fn message(kind: u16, flags: u16) -> Message {
    Message::new((NFNL_SUBSYS_NFTABLES << 8) | kind, flags, &nfgenmsg(NFPROTO_IPV4, 0))
}

fn table(kind: u16, flags: u16) -> Message {
    let mut m = message(kind, flags);
    m.attr_str(NFTA_TABLE_NAME, TABLE);
    m
}

fn base_chain(name: &str, kind: &str, hook: u32, priority: i32) -> Message {
    let mut m = message(NFT_MSG_NEWCHAIN, NLM_F_CREATE);
    m.attr_str(NFTA_CHAIN_TABLE, TABLE).attr_str(NFTA_CHAIN_NAME, name);
    m.begin(NFTA_CHAIN_HOOK).attr_be32(NFTA_HOOK_HOOKNUM, hook).attr_be32(NFTA_HOOK_PRIORITY, priority as u32).end();
    m.attr_be32(NFTA_CHAIN_POLICY, NF_ACCEPT).attr_str(NFTA_CHAIN_TYPE, kind);
    m
}

fn rule(chain: &str, expressions: Vec<Expr>) -> Message {
    let mut m = message(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND);
    m.attr_str(NFTA_RULE_TABLE, TABLE).attr_str(NFTA_RULE_CHAIN, chain);
    m.begin(NFTA_RULE_EXPRESSIONS);
    for e in expressions {
        m.begin(NFTA_LIST_ELEM).attr_str(NFTA_EXPR_NAME, e.name);
        if !e.attrs.is_empty() {
            m.begin(NFTA_EXPR_DATA);
            for (kind, value) in e.attrs {
                match value {
                    Attr::Be32(v) => {
                        m.attr_be32(kind, v);
                    }
                    Attr::Value(bytes) => {
                        m.begin(kind).attr(NFTA_DATA_VALUE, &bytes).end();
                    }
                    Attr::Verdict(code) => {
                        m.begin(kind).begin(NFTA_DATA_VERDICT).attr_be32(NFTA_VERDICT_CODE, code).end().end();
                    }
                }
            }
            m.end();
        }
        m.end();
    }
    m.end();
    m
}

/// The batch that replaces the table with `ruleset` (or only removes it),
/// with what each message is, for errors.
fn batch(ruleset: Option<&Ruleset>) -> Vec<(Message, String)> {
    let mut messages = vec![(Message::unacked(NFNL_MSG_BATCH_BEGIN, &nfgenmsg(libc::AF_UNSPEC as u8, NFNL_SUBSYS_NFTABLES)), "batch".to_string())];
    // Adding a table that exists changes nothing; so the delete always has a table to delete.
    messages.push((table(NFT_MSG_NEWTABLE, NLM_F_CREATE), format!("table ip {TABLE}")));
    messages.push((table(NFT_MSG_DELTABLE, 0), format!("deleting table ip {TABLE}")));
    if let Some(r) = ruleset {
        messages.push((table(NFT_MSG_NEWTABLE, NLM_F_CREATE), format!("table ip {TABLE}")));
        for (name, kind, hook, priority) in [
            ("prerouting", "nat", NF_INET_PRE_ROUTING, -100),
            ("output", "nat", NF_INET_LOCAL_OUT, -100),
            ("postrouting", "nat", NF_INET_POST_ROUTING, 100),
            ("forward", "filter", NF_INET_FORWARD, 0),
            ("input", "filter", NF_INET_LOCAL_IN, 0),
        ] {
            messages.push((base_chain(name, kind, hook, priority), format!("chain {name} (type {kind})")));
        }
        let masquerade = || expr("masq", vec![]);
        let mut out = address_in(12, &r.subnet, NFT_CMP_EQ);
        out.extend(address_in(16, &r.subnet, NFT_CMP_NEQ));
        out.push(masquerade());
        messages.push((rule("postrouting", out), format!("masquerade for {}", r.subnet)));
        let mut hairpin = address_in(12, &r.subnet, NFT_CMP_EQ);
        hairpin.extend(ct_any(NFT_CT_STATUS, IPS_DST_NAT));
        hairpin.push(masquerade());
        messages.push((rule("postrouting", hairpin), "masquerade for published ports reached from containers".into()));
        let loopback = Subnet { network: Ipv4Addr::new(127, 0, 0, 0), prefix: 8 };
        let mut local = address_in(12, &loopback, NFT_CMP_EQ);
        local.extend(interface(NFT_META_OIFNAME, &r.bridge, NFT_CMP_EQ));
        local.push(masquerade());
        messages.push((rule("postrouting", local), "masquerade for published ports reached on 127.0.0.1".into()));
        let mut published = interface(NFT_META_OIFNAME, &r.bridge, NFT_CMP_EQ);
        published.extend(ct_any(NFT_CT_STATUS, IPS_DST_NAT));
        published.push(verdict(NF_ACCEPT));
        messages.push((rule("forward", published), "forward filter (published ports)".into()));
        let mut replies = interface(NFT_META_OIFNAME, &r.bridge, NFT_CMP_EQ);
        replies.extend(ct_any(NFT_CT_STATE, CT_STATE_ESTABLISHED_RELATED));
        replies.push(verdict(NF_ACCEPT));
        messages.push((rule("forward", replies), "forward filter (replies)".into()));
        let mut rest = interface(NFT_META_OIFNAME, &r.bridge, NFT_CMP_EQ);
        rest.extend(interface(NFT_META_IIFNAME, &r.bridge, NFT_CMP_NEQ));
        rest.push(verdict(NF_DROP));
        messages.push((rule("forward", rest), "forward filter (drop)".into()));
        let mut to_loopback = interface(NFT_META_IIFNAME, &r.bridge, NFT_CMP_EQ);
        to_loopback.extend(address_in(16, &loopback, NFT_CMP_EQ));
        // IP_CT_DIR_ORIGINAL: the container opened it.
        to_loopback.extend([ct(NFT_CT_DIRECTION), cmp(NFT_CMP_EQ, &[0u8])]);
        to_loopback.push(verdict(NF_DROP));
        messages.push((rule("input", to_loopback), "input filter (containers to the machine's 127.0.0.0/8)".into()));
        for forward in &r.forwards {
            let what = format!("{}:{}/{} -> {}:{}", forward.host_ip.map(|ip| ip.to_string()).unwrap_or_default(), forward.host_port, protocol_name(forward.protocol), forward.address, forward.port);
            messages.push((rule("prerouting", dnat(forward)), format!("publishing {what}")));
            messages.push((rule("output", dnat(forward)), format!("publishing {what} (local)")));
        }
    }
    messages.push((Message::unacked(NFNL_MSG_BATCH_END, &nfgenmsg(libc::AF_UNSPEC as u8, NFNL_SUBSYS_NFTABLES)), "batch".to_string()));
    messages
}

pub fn protocol_name(protocol: u8) -> &'static str {
    if protocol == libc::IPPROTO_UDP as u8 {
        "udp"
    } else {
        "tcp"
    }
}

fn send(ruleset: Option<&Ruleset>) -> Result<(), String> {
    let mut socket = Socket::open(libc::NETLINK_NETFILTER).map_err(|e| format!("opening a netfilter netlink socket: {e} (is nf_tables available?)"))?;
    let (messages, names): (Vec<Message>, Vec<String>) = batch(ruleset).into_iter().unzip();
    socket
        .send_all(&messages)
        .map_err(|refused: Vec<Refused>| refused.iter().map(|r| format!("nf_tables refused {}: {r}", names.get(r.index).map(String::as_str).unwrap_or("the batch"))).collect::<Vec<_>>().join("; "))
}

/// Replaces the table with `ruleset`, atomically.
pub fn apply(ruleset: &Ruleset) -> Result<(), String> {
    send(Some(ruleset))
}

/// Removes the table if there is one.
pub fn remove() -> Result<(), String> {
    send(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_batch_is_framed_and_names_each_part() {
        let ruleset = Ruleset {
            bridge: "basalt0".into(),
            subnet: "10.88.0.0/16".parse().unwrap(),
            forwards: vec![Forward { host_ip: None, host_port: 8080, protocol: 6, address: Ipv4Addr::new(10, 88, 0, 2), port: 80 }],
        };
        let messages = batch(Some(&ruleset));
        assert!(!messages[0].0.acked && !messages.last().unwrap().0.acked, "batch markers are not acknowledged");
        assert_eq!(messages[0].0.kind, NFNL_MSG_BATCH_BEGIN);
        assert_eq!(messages[1].0.kind, (10 << 8) | NFT_MSG_NEWTABLE);
        assert_eq!(messages[2].0.kind, (10 << 8) | NFT_MSG_DELTABLE);
        let names: Vec<&str> = messages.iter().map(|(_, n)| n.as_str()).collect();
        assert!(names.iter().any(|n| n.contains(":8080/tcp -> 10.88.0.2:80")), "{names:?}");
        // 4 markers and table messages, 5 chains, 7 fixed rules, 2 per port.
        assert_eq!(messages.len(), 1 + 3 + 5 + 7 + 2 + 1);
        assert!(names.contains(&"input filter (containers to the machine's 127.0.0.0/8)"), "{names:?}");
        assert_eq!(batch(None).len(), 4);
    }
}
