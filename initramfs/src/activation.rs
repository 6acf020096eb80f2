//! Socket activation, the I/O half: binding a `.socket` unit's listening
//! sockets, accepting a connection for an `Accept=yes` socket, and handing
//! sockets to a service's process as sd_listen_fds(3) expects them (fds
//! 3, 4… with `LISTEN_FDS`, `LISTEN_PID` and `LISTEN_FDNAMES`).

use basalt_unit::socket::{Address, Ipv6Only, Listen, SocketSpec, Transport};
use socket2::{Domain, SockAddr, Socket, Type};
use std::ffi::CString;
use std::io;
use std::net::{Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Binds one `Listen*=` of `spec`; the socket is close-on-exec and
/// nonblocking in init, and listening for streams.
pub fn bind(listen: &Listen, spec: &SocketSpec) -> io::Result<OwnedFd> {
    let ty = match listen.transport {
        Transport::Stream => Type::STREAM,
        Transport::Datagram => Type::DGRAM,
        Transport::SequentialPacket => Type::SEQPACKET,
    };
    let context = |e: io::Error| io::Error::new(e.kind(), format!("{listen}: {e}"));
    let (socket, addr) = match &listen.address {
        Address::Port(port) => {
            let any = SocketAddr::from((Ipv6Addr::UNSPECIFIED, *port));
            match Socket::new(Domain::IPV6, ty, None) {
                Ok(s) => {
                    s.set_only_v6(spec.ipv6_only == Ipv6Only::Ipv6Only).map_err(context)?;
                    (s, SockAddr::from(any))
                }
                // A kernel without IPv6: every IPv4 address.
                Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => (Socket::new(Domain::IPV4, ty, None).map_err(context)?, SockAddr::from(SocketAddr::from(([0, 0, 0, 0], *port)))),
                Err(e) => return Err(context(e)),
            }
        }
        Address::Inet(addr) => {
            let s = Socket::new(Domain::for_address(*addr), ty, None).map_err(context)?;
            if addr.is_ipv6() {
                s.set_only_v6(spec.ipv6_only != Ipv6Only::Both).map_err(context)?;
            }
            (s, SockAddr::from(*addr))
        }
        Address::Path(path) => {
            let p = Path::new(path);
            if let Some(dir) = p.parent() {
                if !dir.exists() {
                    std::fs::create_dir_all(dir).map_err(context)?;
                    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(spec.directory_mode)).map_err(context)?;
                }
            }
            // A socket file left from an earlier bind would make this one fail.
            if std::fs::symlink_metadata(p).is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type())) {
                std::fs::remove_file(p).map_err(context)?;
            }
            (Socket::new(Domain::UNIX, ty, None).map_err(context)?, SockAddr::unix(p).map_err(context)?)
        }
        Address::Abstract(name) => {
            let mut bytes = vec![0u8];
            bytes.extend_from_slice(name.as_bytes());
            (Socket::new(Domain::UNIX, ty, None).map_err(context)?, SockAddr::unix(std::ffi::OsStr::from_bytes(&bytes)).map_err(context)?)
        }
    };
    if matches!(listen.address, Address::Port(_) | Address::Inet(_)) {
        socket.set_reuse_address(true).map_err(context)?;
        if spec.reuse_port {
            socket.set_reuse_port(true).map_err(context)?;
        }
        if spec.free_bind {
            if addr.is_ipv6() {
                socket.set_freebind_v6(true).map_err(context)?;
            } else {
                socket.set_freebind_v4(true).map_err(context)?;
            }
        }
    }
    socket.bind(&addr).map_err(context)?;
    if let Address::Path(path) = &listen.address {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(spec.socket_mode)).map_err(context)?;
    }
    if listen.transport != Transport::Datagram {
        socket.listen(spec.backlog.min(i32::MAX as u32) as i32).map_err(context)?;
    }
    socket.set_nonblocking(true).map_err(context)?;
    // socket2 makes its sockets close-on-exec: no other service inherits them.
    Ok(socket.into())
}

/// Accepts one connection on a listening socket: the connection (blocking,
/// close-on-exec) and a name for its instance, `N-LOCAL-REMOTE` as systemd
/// names them (`N` alone for Unix sockets). None when none was pending.
pub fn accept(listener: &OwnedFd, counter: u64) -> io::Result<Option<(OwnedFd, String)>> {
    // SAFETY: accept4 with null address pointers only returns a new descriptor.
    let fd = unsafe { libc::accept4(listener.as_raw_fd(), std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC) };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EAGAIN | libc::ECONNABORTED | libc::EINTR) => Ok(None),
            _ => Err(e),
        };
    }
    // SAFETY: `fd` is the new connection, owned by nothing else.
    let conn = unsafe { Socket::from_raw_fd(fd) };
    let clean =
        |a: Option<SockAddr>| a.and_then(|a| a.as_socket()).map(|a| a.to_string().replace(['[', ']'], "").chars().filter(|c| c.is_ascii_alphanumeric() || ":._".contains(*c)).collect::<String>());
    let name = match (clean(conn.local_addr().ok()), clean(conn.peer_addr().ok())) {
        (Some(local), Some(remote)) => format!("{counter}-{local}-{remote}"),
        _ => counter.to_string(),
    };
    Ok(Some((conn.into(), name)))
}

/// Fills every free descriptor number below `end` with a close-on-exec
/// placeholder, so that what a spawn opens (its stdio, the pipe the
/// standard library reports exec errors on) lands at `end` or above and
/// the child's dup2 onto 3..end overwrites nothing it still needs. Dropped
/// after the spawn.
pub fn occupy_below(end: i32) -> Vec<OwnedFd> {
    let mut held = Vec::new();
    loop {
        // SAFETY: F_DUPFD_CLOEXEC on fd 0 (the console, always open in
        // init) returns the lowest free descriptor, or -1.
        let fd = unsafe { libc::fcntl(0, libc::F_DUPFD_CLOEXEC, 0) };
        if fd < 0 {
            return held;
        }
        // SAFETY: the new descriptor just made, owned by nothing else.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        if fd >= end {
            return held;
        }
        held.push(owned);
    }
}

/// An execve prepared before the fork, for a process that gets sockets:
/// everything is allocated in the parent, so the child only calls
/// fcntl, dup2, getpid and execve, which are async-signal-safe.
pub struct ExecWithFds {
    path: CString,
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    _env: Vec<CString>,
    env_ptrs: Vec<*const libc::c_char>,
    /// `LISTEN_PID=` and room for the child's PID, written in the child.
    listen_pid: Box<[u8; 32]>,
    fds: Vec<i32>,
    moved: Vec<i32>,
}

// SAFETY: the raw pointers point into the CStrings and the box this value
// owns; it is moved into the pre_exec closure and only used in the forked
// child, which has a single thread.
unsafe impl Send for ExecWithFds {}
// SAFETY: as for Send; nothing is shared between threads.
unsafe impl Sync for ExecWithFds {}

const LISTEN_PID: &[u8] = b"LISTEN_PID=";

impl ExecWithFds {
    /// `fds` become 3, 4… in the child, named `names` in LISTEN_FDNAMES.
    pub fn new(argv: &[String], env: &[(String, String)], fds: Vec<i32>, names: &[String]) -> io::Result<ExecWithFds> {
        let c = |s: &str| CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("{s:?} contains a NUL byte")));
        let argv_c = argv.iter().map(|a| c(a)).collect::<io::Result<Vec<_>>>()?;
        let mut env_c: Vec<CString> = env.iter().filter(|(k, _)| !k.starts_with("LISTEN_")).map(|(k, v)| c(&format!("{k}={v}"))).collect::<io::Result<_>>()?;
        env_c.push(c(&format!("LISTEN_FDS={}", fds.len()))?);
        env_c.push(c(&format!("LISTEN_FDNAMES={}", names.join(":")))?);
        let mut listen_pid = Box::new([0u8; 32]);
        listen_pid[..LISTEN_PID.len()].copy_from_slice(LISTEN_PID);
        let mut argv_ptrs: Vec<*const libc::c_char> = argv_c.iter().map(|a| a.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());
        let mut env_ptrs: Vec<*const libc::c_char> = env_c.iter().map(|e| e.as_ptr()).collect();
        env_ptrs.push(listen_pid.as_ptr().cast());
        env_ptrs.push(std::ptr::null());
        let moved = vec![0; fds.len()];
        Ok(ExecWithFds { path: c(&argv[0])?, _argv: argv_c, argv_ptrs, _env: env_c, env_ptrs, listen_pid, fds, moved })
    }

    /// In the forked child: puts the sockets at 3, 4…, writes LISTEN_PID
    /// and execs. Returns only on failure.
    pub fn exec(&mut self) -> io::Error {
        let n = self.fds.len() as i32;
        // First above the target range, so that no dup2 onto 3+i closes a
        // socket still to be moved; these copies close on exec.
        for (i, fd) in self.fds.iter().enumerate() {
            // SAFETY: fcntl on a descriptor inherited from the parent.
            let moved = unsafe { libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 3 + n) };
            if moved < 0 {
                return io::Error::last_os_error();
            }
            self.moved[i] = moved;
        }
        for (i, moved) in self.moved.iter().enumerate() {
            // SAFETY: dup2 between descriptors; the copy at 3+i does not close on exec.
            if unsafe { libc::dup2(*moved, 3 + i as i32) } < 0 {
                return io::Error::last_os_error();
            }
        }
        // SAFETY: getpid cannot fail.
        let mut pid = unsafe { libc::getpid() } as u32;
        let mut digits = [0u8; 10];
        let mut len = 0;
        loop {
            digits[len] = b'0' + (pid % 10) as u8;
            len += 1;
            pid /= 10;
            if pid == 0 {
                break;
            }
        }
        for i in 0..len {
            self.listen_pid[LISTEN_PID.len() + i] = digits[len - 1 - i];
        }
        self.listen_pid[LISTEN_PID.len() + len] = 0;
        // SAFETY: path, argv and envp are NUL-terminated strings in
        // null-terminated arrays that this value owns for the call.
        unsafe { libc::execve(self.path.as_ptr(), self.argv_ptrs.as_ptr(), self.env_ptrs.as_ptr()) };
        io::Error::last_os_error()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    #[test]
    fn sockets_reach_the_child_at_3_with_listen_pid_its_own() {
        let spec = SocketSpec::default();
        let listen = Listen { transport: Transport::Stream, address: Address::Inet("127.0.0.1:0".parse().unwrap()) };
        let a = bind(&listen, &spec).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let b = bind(&Listen { transport: Transport::Datagram, address: Address::Path(path.to_string_lossy().into_owned()) }, &spec).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o666);
        let script =
            "echo $LISTEN_FDS $LISTEN_FDNAMES $([ \"$LISTEN_PID\" = $$ ] && echo own-pid); readlink /proc/$$/fd/3 /proc/$$/fd/4 | sed 's/[0-9]//g'; [ -e /proc/$$/fd/5 ] && echo leaked; exit 0";
        let argv: Vec<String> = ["/bin/sh", "-c", script].map(String::from).to_vec();
        let mut exec =
            ExecWithFds::new(&argv, &[("PATH".into(), "/usr/bin:/bin".into()), ("LISTEN_FDS".into(), "9".into())], vec![a.as_raw_fd(), b.as_raw_fd()], &["web".into(), "dgram".into()]).unwrap();
        let held = occupy_below(5);
        let mut cmd = std::process::Command::new("/bin/false");
        // SAFETY: exec() only makes async-signal-safe calls.
        unsafe { cmd.pre_exec(move || Err(exec.exec())) };
        let out = cmd.output().unwrap();
        drop(held);
        assert!(out.status.success(), "{out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "2 web:dgram own-pid\nsocket:[]\nsocket:[]\n");
    }

    #[test]
    fn a_bind_error_names_the_address() {
        let spec = SocketSpec::default();
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let listen = Listen { transport: Transport::Stream, address: Address::Inet(taken.local_addr().unwrap()) };
        let e = bind(&listen, &spec).unwrap_err().to_string();
        assert!(e.starts_with(&format!("{} (stream): ", taken.local_addr().unwrap())) && e.contains("in use"), "{e}");
    }
}
