//! The supervisor's end of sd_notify(3): a datagram socket at
//! `basalt_control::NOTIFY_SOCKET` that every process may send to, with
//! SO_PASSCRED on, so that each message arrives with the sender's PID as the
//! kernel vouches for it (the supervisor decides whose messages count, by
//! NotifyAccess=). Descriptors sent along (FDSTORE=1) are closed: basalt
//! keeps no file descriptor store.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;

/// Binds the socket (replacing a stale one), nonblocking, writable by all.
pub fn bind(path: &str) -> std::io::Result<UnixDatagram> {
    if let Some(dir) = std::path::Path::new(path).parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(path);
    let socket = UnixDatagram::bind(path)?;
    socket.set_nonblocking(true)?;
    let on: libc::c_int = 1;
    // SAFETY: SO_PASSCRED takes an int, passed by pointer with its size.
    if unsafe { libc::setsockopt(socket.as_raw_fd(), libc::SOL_SOCKET, libc::SO_PASSCRED, (&on as *const libc::c_int).cast(), std::mem::size_of::<libc::c_int>() as _) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o666))?;
    Ok(socket)
}

/// The next message waiting, with its sender's PID; None once none is.
/// Messages without credentials are skipped.
pub fn receive(socket: &UnixDatagram) -> Option<(i32, String)> {
    loop {
        let mut buf = [0u8; 4096];
        // Room for one ucred and a few descriptors, aligned for cmsghdr.
        let mut control = [0u64; 32];
        let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
        // SAFETY: all zeroes is a valid msghdr (pointers null, lengths 0).
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control) as _;
        // SAFETY: msg points at live buffers of the lengths it gives.
        let n = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC) };
        if n < 0 {
            return None;
        }
        let mut pid = None;
        // SAFETY: the CMSG_* walk stays within msg_control/msg_controllen,
        // which recvmsg filled; ucred and int payloads are read unaligned.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                let data = libc::CMSG_DATA(c);
                let len = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                match ((*c).cmsg_level, (*c).cmsg_type) {
                    (libc::SOL_SOCKET, libc::SCM_CREDENTIALS) if len >= std::mem::size_of::<libc::ucred>() => {
                        pid = Some(std::ptr::read_unaligned(data.cast::<libc::ucred>()).pid);
                    }
                    (libc::SOL_SOCKET, libc::SCM_RIGHTS) => {
                        for i in 0..len / std::mem::size_of::<libc::c_int>() {
                            drop(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.cast::<libc::c_int>().add(i))));
                        }
                    }
                    _ => {}
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        if let Some(pid) = pid {
            return Some((pid, String::from_utf8_lossy(&buf[..n as usize]).into_owned()));
        }
    }
}

/// The assignments of a message: `READY=1\nSTATUS=warming up` →
/// (READY, 1), (STATUS, warming up). Lines without `=` are skipped.
pub fn assignments(message: &str) -> Vec<(&str, &str)> {
    message.lines().filter_map(|l| l.split_once('=')).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_arrive_with_the_senders_pid() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = bind(path.to_str().unwrap()).unwrap();
        assert!(receive(&socket).is_none());
        let sender = UnixDatagram::unbound().unwrap();
        sender.send_to(b"READY=1\nSTATUS=up and running", &path).unwrap();
        let (pid, text) = receive(&socket).unwrap();
        assert_eq!(pid, std::process::id() as i32);
        assert_eq!(assignments(&text), vec![("READY", "1"), ("STATUS", "up and running")]);
        assert!(receive(&socket).is_none());
    }
}
