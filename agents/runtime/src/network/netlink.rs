//! Netlink requests, written by hand on libc: a message is a fixed header
//! (`ifinfomsg`, `nfgenmsg`, ...) followed by attributes, some nested. Every
//! request asks for an acknowledgement, and the kernel's extended error
//! message ("Chain not found", "Device or resource busy") is kept with the
//! error number. Both route (links, addresses, routes) and netfilter
//! (nf_tables batches) requests go through here.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;
pub const NLM_F_APPEND: u16 = 0x800;
const NLM_F_CAPPED: u16 = 0x100;
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSG_ERROR: u16 = 2;
const NLA_F_NESTED: u16 = 0x8000;
const SOL_NETLINK: libc::c_int = 270;
const NETLINK_EXT_ACK: libc::c_int = 11;
const NLMSGERR_ATTR_MSG: u16 = 1;

fn align(n: usize) -> usize {
    (n + 3) & !3
}

/// One request: a type, flags and its body (fixed header and attributes).
#[derive(Debug, Clone)]
pub struct Message {
    pub kind: u16,
    pub flags: u16,
    body: Vec<u8>,
    /// Open nests: where each one's attribute header is.
    nests: Vec<usize>,
    /// Whether the kernel answers it (nf_tables batch markers are not acknowledged).
    pub acked: bool,
}

impl Message {
    /// `header` is the fixed part after the netlink header, padded to 4 bytes.
    pub fn new(kind: u16, flags: u16, header: &[u8]) -> Message {
        let mut body = header.to_vec();
        body.resize(align(body.len()), 0);
        Message { kind, flags: flags | NLM_F_REQUEST | NLM_F_ACK, body, nests: Vec::new(), acked: true }
    }

    pub fn unacked(kind: u16, header: &[u8]) -> Message {
        let mut message = Message::new(kind, 0, header);
        message.flags = NLM_F_REQUEST;
        message.acked = false;
        message
    }

    pub fn attr(&mut self, kind: u16, data: &[u8]) -> &mut Message {
        let length = 4 + data.len();
        self.body.extend_from_slice(&(length as u16).to_ne_bytes());
        self.body.extend_from_slice(&kind.to_ne_bytes());
        self.body.extend_from_slice(data);
        self.body.resize(align(self.body.len()), 0);
        self
    }

    /// A NUL-terminated string attribute.
    pub fn attr_str(&mut self, kind: u16, text: &str) -> &mut Message {
        let mut data = text.as_bytes().to_vec();
        data.push(0);
        self.attr(kind, &data)
    }

    pub fn attr_u32(&mut self, kind: u16, value: u32) -> &mut Message {
        self.attr(kind, &value.to_ne_bytes())
    }

    /// A 32-bit attribute in network byte order (what nf_tables reads).
    pub fn attr_be32(&mut self, kind: u16, value: u32) -> &mut Message {
        self.attr(kind, &value.to_be_bytes())
    }

    /// Starts a nested attribute; `end` closes the innermost one.
    pub fn begin(&mut self, kind: u16) -> &mut Message {
        self.nests.push(self.body.len());
        self.body.extend_from_slice(&0u16.to_ne_bytes());
        self.body.extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        self
    }

    /// Bytes inside the innermost nest without an attribute header (veth's
    /// peer starts with an `ifinfomsg`).
    pub fn raw(&mut self, data: &[u8]) -> &mut Message {
        self.body.extend_from_slice(data);
        self.body.resize(align(self.body.len()), 0);
        self
    }

    pub fn end(&mut self) -> &mut Message {
        let start = self.nests.pop().expect("end() matches a begin()");
        let length = (self.body.len() - start) as u16;
        self.body[start..start + 2].copy_from_slice(&length.to_ne_bytes());
        self
    }

    fn encode(&self, seq: u32, out: &mut Vec<u8>) {
        assert!(self.nests.is_empty(), "unclosed nested attribute");
        let length = 16 + self.body.len();
        out.extend_from_slice(&(length as u32).to_ne_bytes());
        out.extend_from_slice(&self.kind.to_ne_bytes());
        out.extend_from_slice(&self.flags.to_ne_bytes());
        out.extend_from_slice(&seq.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes());
        out.extend_from_slice(&self.body);
    }
}

/// What the kernel refused: the request's index, the error and its message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub index: usize,
    pub errno: i32,
    pub message: Option<String>,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", io::Error::from_raw_os_error(self.errno))?;
        if let Some(message) = &self.message {
            write!(f, " ({message})")?;
        }
        Ok(())
    }
}

pub struct Socket {
    fd: OwnedFd,
    seq: u32,
}

impl Socket {
    /// A netlink socket of `protocol` (NETLINK_ROUTE, NETLINK_NETFILTER) in
    /// the calling thread's network namespace.
    pub fn open(protocol: libc::c_int) -> io::Result<Socket> {
        let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, protocol) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut address: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        address.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        if unsafe { libc::bind(fd.as_raw_fd(), (&address as *const libc::sockaddr_nl).cast(), std::mem::size_of::<libc::sockaddr_nl>() as u32) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let on: libc::c_int = 1;
        unsafe { libc::setsockopt(fd.as_raw_fd(), SOL_NETLINK, NETLINK_EXT_ACK, (&on as *const libc::c_int).cast(), 4) };
        let timeout = libc::timeval { tv_sec: 10, tv_usec: 0 };
        unsafe { libc::setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVTIMEO, (&timeout as *const libc::timeval).cast(), std::mem::size_of::<libc::timeval>() as u32) };
        let seq = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as u32).unwrap_or(1);
        Ok(Socket { fd, seq })
    }

    /// One request; its acknowledgement or the kernel's refusal.
    pub fn request(&mut self, message: Message) -> Result<(), Refused> {
        self.send_all(&[message]).map_err(|mut refused| refused.remove(0))
    }

    /// Sends `messages` in one datagram (an nf_tables batch is applied as a
    /// whole) and waits for every acknowledgement. Refusals come back in
    /// request order.
    pub fn send_all(&mut self, messages: &[Message]) -> Result<(), Vec<Refused>> {
        let first = self.seq;
        let mut datagram = Vec::new();
        let mut waiting = std::collections::BTreeMap::new();
        for (index, message) in messages.iter().enumerate() {
            let seq = self.seq;
            self.seq = self.seq.wrapping_add(1);
            message.encode(seq, &mut datagram);
            if message.acked {
                waiting.insert(seq, index);
            }
        }
        let sent = unsafe { libc::send(self.fd.as_raw_fd(), datagram.as_ptr().cast(), datagram.len(), 0) };
        if sent < 0 {
            let errno = io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO);
            return Err(vec![Refused { index: 0, errno, message: Some("sending the request".into()) }]);
        }
        let mut refused = Vec::new();
        let mut buffer = vec![0u8; 65536];
        while !waiting.is_empty() {
            let received = unsafe { libc::recv(self.fd.as_raw_fd(), buffer.as_mut_ptr().cast(), buffer.len(), 0) };
            if received < 0 {
                let error = io::Error::last_os_error();
                if error.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                let index = *waiting.values().next().expect("waiting is not empty");
                refused.push(Refused { index, errno: error.raw_os_error().unwrap_or(libc::EIO), message: Some("no answer from the kernel".into()) });
                break;
            }
            for (seq, errno, message) in acknowledgements(&buffer[..received as usize]) {
                if let Some(index) = waiting.remove(&seq) {
                    if errno != 0 {
                        refused.push(Refused { index, errno, message });
                    }
                } else if seq.wrapping_sub(first) as usize >= messages.len() {
                    // An answer to an earlier request that timed out.
                    continue;
                }
            }
        }
        if refused.is_empty() {
            Ok(())
        } else {
            refused.sort_by_key(|r| r.index);
            Err(refused)
        }
    }
}

/// The `NLMSG_ERROR` answers in a datagram: sequence number, error (0 for
/// an acknowledgement) and the extended error message if any.
fn acknowledgements(mut data: &[u8]) -> Vec<(u32, i32, Option<String>)> {
    let u32_at = |d: &[u8], at: usize| d.get(at..at + 4).map(|b| u32::from_ne_bytes(b.try_into().unwrap()));
    let u16_at = |d: &[u8], at: usize| d.get(at..at + 2).map(|b| u16::from_ne_bytes(b.try_into().unwrap()));
    let mut answers = Vec::new();
    while data.len() >= 16 {
        let length = u32_at(data, 0).unwrap_or(0) as usize;
        if length < 16 || length > data.len() {
            break;
        }
        let (kind, flags, seq) = (u16_at(data, 4).unwrap_or(0), u16_at(data, 6).unwrap_or(0), u32_at(data, 8).unwrap_or(0));
        if kind == NLMSG_ERROR && length >= 20 {
            let errno = -(u32_at(data, 16).unwrap_or(0) as i32);
            let mut message = None;
            if flags & NLM_F_ACK_TLVS != 0 {
                // The request's own header (or all of it), then attributes.
                let inner = if flags & NLM_F_CAPPED != 0 { 16 } else { u32_at(data, 20).unwrap_or(16) as usize };
                let mut at = 20 + align(inner);
                while at + 4 <= length {
                    let attr_len = u16_at(data, at).unwrap_or(0) as usize;
                    let attr_kind = u16_at(data, at + 2).unwrap_or(0);
                    if attr_len < 4 || at + attr_len > length {
                        break;
                    }
                    if attr_kind == NLMSGERR_ATTR_MSG {
                        let text = &data[at + 4..at + attr_len];
                        message = Some(String::from_utf8_lossy(text.split(|&b| b == 0).next().unwrap_or_default()).into_owned());
                    }
                    at += align(attr_len);
                }
            }
            answers.push((seq, errno, message));
        }
        data = &data[align(length).min(data.len())..];
    }
    answers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_padded_and_nests_sized() {
        let mut message = Message::new(16, NLM_F_CREATE, &[0u8; 16]);
        message.attr_str(3, "br0").begin(18).attr_str(1, "bridge").end();
        let mut out = Vec::new();
        message.encode(7, &mut out);
        assert_eq!(out.len(), 16 + 16 + 8 + 4 + 12);
        assert_eq!(u32::from_ne_bytes(out[0..4].try_into().unwrap()) as usize, out.len());
        // "br0\0" fits 4 bytes: the attribute is 8; the nest holds "bridge\0" (11, padded to 12) and its header.
        assert_eq!(&out[32..34], &8u16.to_ne_bytes());
        assert_eq!(&out[40..42], &16u16.to_ne_bytes());
        assert_eq!(u16::from_ne_bytes(out[42..44].try_into().unwrap()), 18 | NLA_F_NESTED);
    }

    #[test]
    fn errors_with_their_extended_message_are_read() {
        // An NLMSG_ERROR for seq 9: EEXIST, the request's header capped, then NLMSGERR_ATTR_MSG.
        let mut data = Vec::new();
        let text = b"File exists here\0";
        let length = 16 + 4 + 16 + 4 + text.len();
        data.extend_from_slice(&(length as u32).to_ne_bytes());
        data.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        data.extend_from_slice(&(NLM_F_CAPPED | NLM_F_ACK_TLVS).to_ne_bytes());
        data.extend_from_slice(&9u32.to_ne_bytes());
        data.extend_from_slice(&0u32.to_ne_bytes());
        data.extend_from_slice(&(-libc::EEXIST).to_ne_bytes());
        data.extend_from_slice(&[0u8; 16]);
        data.extend_from_slice(&((4 + text.len()) as u16).to_ne_bytes());
        data.extend_from_slice(&NLMSGERR_ATTR_MSG.to_ne_bytes());
        data.extend_from_slice(text);
        data.resize(align(data.len()), 0);
        assert_eq!(acknowledgements(&data), vec![(9, libc::EEXIST, Some("File exists here".to_string()))]);
        assert!(acknowledgements(&data[..10]).is_empty(), "a truncated answer is not read");
    }
}
