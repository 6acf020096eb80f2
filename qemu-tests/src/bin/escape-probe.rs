//! escape-probe: run inside a container by qemu-tests/tests/runtime.rs, it
//! tries what a container's root must not be able to do and prints what
//! happened, one line per probe:
//!
//! - `module`: load a kernel module (`finit_module`; EPERM when refused,
//!   EBADF past the checks, since no module file is given);
//! - `handle`: open a file of the machine by handle (`open_by_handle_at`,
//!   the "shocker" escape; EPERM when refused);
//! - `packet SRC GATEWAY DST PORT`: with CAP_NET_RAW, put a TCP SYN for
//!   DST:PORT on eth0 addressed to the gateway's MAC, as an attacker would
//!   to reach 127.0.0.1 of the machine, and wait 3 s for a SYN-ACK.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn module() {
    // SAFETY: an invalid descriptor and an empty, NUL-terminated parameter string.
    let rc = unsafe { libc::syscall(libc::SYS_finit_module, -1, c"".as_ptr(), 0) };
    match (rc, errno()) {
        (_, libc::EPERM) => println!("module: refused (EPERM)"),
        (rc, e) => println!("MODULE-ALLOWED rc {rc} errno {e}"),
    }
}

fn handle() {
    #[repr(C)]
    struct FileHandle {
        handle_bytes: u32,
        handle_type: i32,
        f_handle: [u32; 2],
    }
    // FILEID_INO32_GEN for inode 2 (an ext4 root), generation 0.
    let mut handle = FileHandle { handle_bytes: 8, handle_type: 1, f_handle: [2, 0] };
    // SAFETY: a NUL-terminated path; the descriptor is closed below.
    let mount_fd = unsafe { libc::open(c"/".as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY) };
    // SAFETY: a file_handle with handle_bytes naming the bytes that follow it.
    let fd = unsafe { libc::syscall(libc::SYS_open_by_handle_at, mount_fd, &mut handle as *mut FileHandle, libc::O_RDONLY) };
    let e = errno();
    // SAFETY: closing descriptors opened here.
    unsafe { libc::close(mount_fd) };
    match (fd, e) {
        (-1, libc::EPERM) => println!("handle: refused (EPERM)"),
        (fd, e) => println!("HANDLE-ALLOWED fd {fd} errno {e}"),
    }
}

fn checksum(bytes: &[u8], start: u32) -> u16 {
    let mut sum = start;
    for chunk in bytes.chunks(2) {
        sum += u32::from(u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn mac(text: &str) -> [u8; 6] {
    let mut mac = [0u8; 6];
    for (i, part) in text.trim().split(':').enumerate().take(6) {
        mac[i] = u8::from_str_radix(part, 16).expect("a MAC address");
    }
    mac
}

fn packet(src: Ipv4Addr, gateway: Ipv4Addr, dst: Ipv4Addr, port: u16) {
    let own_mac = mac(&std::fs::read_to_string("/sys/class/net/eth0/address").expect("eth0's address"));
    let arp = std::fs::read_to_string("/proc/net/arp").unwrap();
    let Some(gateway_mac) = arp.lines().find(|l| l.split_whitespace().next() == Some(&gateway.to_string())).and_then(|l| l.split_whitespace().nth(3)).map(mac) else {
        println!("packet: no ARP entry for {gateway}");
        return;
    };
    let source_port: u16 = 40_000 + (std::process::id() % 20_000) as u16;
    let mut tcp = [0u8; 20];
    tcp[0..2].copy_from_slice(&source_port.to_be_bytes());
    tcp[2..4].copy_from_slice(&port.to_be_bytes());
    tcp[4..8].copy_from_slice(&0x0102_0304u32.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x02; // SYN
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    let mut pseudo = Vec::new();
    pseudo.extend(src.octets());
    pseudo.extend(dst.octets());
    pseudo.extend([0, libc::IPPROTO_TCP as u8, 0, 20]);
    pseudo.extend(tcp);
    let sum = checksum(&pseudo, 0);
    tcp[16..18].copy_from_slice(&sum.to_be_bytes());
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&40u16.to_be_bytes());
    ip[8] = 64;
    ip[9] = libc::IPPROTO_TCP as u8;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let sum = checksum(&ip, 0);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    let mut frame = Vec::new();
    frame.extend(gateway_mac);
    frame.extend(own_mac);
    frame.extend(0x0800u16.to_be_bytes());
    frame.extend(ip);
    frame.extend(tcp);

    let protocol = (libc::ETH_P_IP as u16).to_be() as i32;
    // SAFETY: plain socket calls on descriptors this function owns; the
    // address structures are zeroed and filled before use, their sizes passed.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, protocol);
        if fd < 0 {
            println!("packet: socket(AF_PACKET) refused (errno {})", errno());
            return;
        }
        let index = libc::if_nametoindex(c"eth0".as_ptr()) as i32;
        let mut address: libc::sockaddr_ll = std::mem::zeroed();
        address.sll_family = libc::AF_PACKET as u16;
        address.sll_protocol = protocol as u16;
        address.sll_ifindex = index;
        libc::bind(fd, &address as *const libc::sockaddr_ll as *const libc::sockaddr, std::mem::size_of::<libc::sockaddr_ll>() as u32);
        let timeout = libc::timeval { tv_sec: 0, tv_usec: 200_000 };
        libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVTIMEO, &timeout as *const libc::timeval as *const libc::c_void, std::mem::size_of::<libc::timeval>() as u32);
        let sent = libc::send(fd, frame.as_ptr().cast(), frame.len(), 0);
        if sent < 0 {
            println!("packet: send refused (errno {})", errno());
            libc::close(fd);
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut buffer = [0u8; 2048];
        while Instant::now() < deadline {
            let n = libc::recv(fd, buffer.as_mut_ptr().cast(), buffer.len(), 0);
            if n < 54 {
                continue;
            }
            let frame = &buffer[..n as usize];
            let ip = &frame[14..];
            let header = ((ip[0] & 0x0f) as usize) * 4;
            if ip[9] != libc::IPPROTO_TCP as u8 || ip.len() < header + 20 {
                continue;
            }
            let tcp = &ip[header..];
            let (from_port, to_port, flags) = (u16::from_be_bytes([tcp[0], tcp[1]]), u16::from_be_bytes([tcp[2], tcp[3]]), tcp[13]);
            if from_port == port && to_port == source_port && flags & 0x12 == 0x12 {
                println!("SYNACK from {}:{from_port}", Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]));
                libc::close(fd);
                return;
            }
        }
        libc::close(fd);
    }
    println!("packet: no answer from {dst}:{port}");
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    let ip = |s: &str| s.parse::<Ipv4Addr>().expect("an IPv4 address");
    match words.as_slice() {
        ["module"] => module(),
        ["handle"] => handle(),
        ["packet", src, gateway, dst, port] => packet(ip(src), ip(gateway), ip(dst), port.parse().expect("a port")),
        _ => {
            eprintln!("usage: escape-probe module | handle | packet SRC GATEWAY DST PORT");
            std::process::exit(2);
        }
    }
}
