//! `basaltctl exec [-i] [-t]`: a command run in a running container
//! (`basalt-runtime exec --bundle DIR --pid PID [--tty] -- CMD`), its
//! output relayed as `Output` replies. With `-i` the client's stdin follows
//! the request as `ExecInput` lines; with `-t` the command gets a terminal
//! (a pseudo-terminal the agent opens, its size set and changed by the
//! client) instead of pipes, and stdout and stderr are one stream. A client
//! that goes away in the middle of an interactive exec hangs the command up
//! (SIGHUP, as a closed terminal would).

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};

use base64::Engine as _;

use super::Agent;
use crate::api::{send, ExecInput, Reply};

/// A pseudo-terminal of `size` (rows, columns): its master and its other end.
fn open_terminal(size: [u16; 2]) -> std::io::Result<(File, OwnedFd)> {
    const TIOCGPTPEER: libc::c_ulong = 0x5441;
    let ptmx = unsafe { libc::open(c"/dev/ptmx".as_ptr(), libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    if ptmx < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let master = unsafe { File::from_raw_fd(ptmx) };
    let unlock: libc::c_int = 0;
    if unsafe { libc::ioctl(ptmx, libc::TIOCSPTLCK, &unlock) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let peer = unsafe { libc::ioctl(ptmx, TIOCGPTPEER, libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    if peer < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let peer = unsafe { OwnedFd::from_raw_fd(peer) };
    resize(ptmx, size);
    Ok((master, peer))
}

fn resize(terminal: i32, [rows, columns]: [u16; 2]) {
    let size = libc::winsize { ws_row: rows, ws_col: columns, ws_xpixel: 0, ws_ypixel: 0 };
    unsafe { libc::ioctl(terminal, libc::TIOCSWINSZ, &size) };
}

/// A process to signal without racing its reaping (a pidfd).
struct ProcessHandle(Option<OwnedFd>);

impl ProcessHandle {
    fn new(pid: u32) -> ProcessHandle {
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) } as i32;
        ProcessHandle((fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn signal(&self, signal: i32) {
        if let Some(fd) = &self.0 {
            unsafe { libc::syscall(libc::SYS_pidfd_send_signal, fd.as_raw_fd(), signal, std::ptr::null::<libc::siginfo_t>(), 0) };
        }
    }
}

/// Feeds the client's `ExecInput` lines to the command (its stdin pipe, or
/// its terminal's master) until the client ends its input or goes away.
fn pump_input(input: BufReader<UnixStream>, mut stdin: Option<Box<dyn Write + Send>>, mut terminal: Option<File>, process: ProcessHandle) {
    let mut ended = false;
    for line in input.lines() {
        let Ok(line) = line else { break };
        match serde_json::from_str::<ExecInput>(&line) {
            Ok(ExecInput::Stdin(data)) => {
                let bytes = base64::engine::general_purpose::STANDARD.decode(data).unwrap_or_default();
                if stdin.as_mut().is_some_and(|s| s.write_all(&bytes).and_then(|_| s.flush()).is_err()) {
                    stdin = None;
                }
                if terminal.as_mut().is_some_and(|t| t.write_all(&bytes).is_err()) {
                    terminal = None;
                }
            }
            // A pipe closes; a terminal stays (its user types ^D).
            Ok(ExecInput::Eof) => {
                ended = true;
                stdin = None;
            }
            Ok(ExecInput::Resize(size)) => {
                if let Some(terminal) = &terminal {
                    resize(terminal.as_raw_fd(), size);
                }
            }
            Err(_) => break,
        }
    }
    if !ended {
        process.signal(libc::SIGHUP);
    }
}

pub fn exec(agent: &Agent, stream: &mut UnixStream, input: BufReader<UnixStream>, name: &str, args: &[String], interactive: bool, tty: Option<[u16; 2]>) -> Reply {
    let Some(supervised) = agent.containers.lock().unwrap().get(name).cloned() else {
        return Reply::Error(format!("no container {name:?}"));
    };
    let Some(pid) = supervised.status().pid.filter(|_| supervised.status().state == "running") else {
        return Reply::Error(format!("container {name} is not running"));
    };
    if args.is_empty() {
        return Reply::Error("exec needs a command".into());
    }
    let mut command = Command::new(&agent.runner);
    command.arg("exec").arg("--bundle").arg(agent.container_dir(name)).arg("--pid").arg(pid.to_string());
    let mut terminal = None;
    match tty {
        Some(size) => {
            let (master, peer) = match open_terminal(size) {
                Ok(pair) => pair,
                Err(e) => return Reply::Error(format!("opening a terminal: {e}")),
            };
            let copies = peer.try_clone().and_then(|a| peer.try_clone().map(|b| (a, b)));
            let Ok((out, err)) = copies else { return Reply::Error("opening a terminal: out of descriptors".into()) };
            command.arg("--tty").stdin(Stdio::from(peer)).stdout(Stdio::from(out)).stderr(Stdio::from(err));
            terminal = Some(master);
        }
        None => {
            command.stdin(if interactive { Stdio::piped() } else { Stdio::null() }).stdout(Stdio::piped()).stderr(Stdio::piped());
        }
    }
    command.arg("--").args(args);
    let spawned = command.spawn();
    // Our copies of the terminal's other end: the master reads EIO once the command's are closed.
    drop(command);
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => return Reply::Error(format!("exec: {e}")),
    };
    let mut sources: Vec<(u8, Box<dyn Read + Send>)> = Vec::new();
    match &terminal {
        Some(master) => match master.try_clone() {
            Ok(reader) => sources.push((1, Box::new(reader))),
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Reply::Error(format!("exec: {e}"));
            }
        },
        None => {
            sources.push((1, Box::new(child.stdout.take().expect("piped"))));
            sources.push((2, Box::new(child.stderr.take().expect("piped"))));
        }
    }
    if interactive {
        let _ = input.get_ref().set_read_timeout(None);
        let stdin = child.stdin.take().map(|s| Box::new(s) as Box<dyn Write + Send>);
        let master = terminal.as_ref().and_then(|m| m.try_clone().ok());
        let process = ProcessHandle::new(child.id());
        std::thread::spawn(move || pump_input(input, stdin, master, process));
    }
    let (sender, receiver) = std::sync::mpsc::channel::<(u8, Vec<u8>)>();
    let mut readers = Vec::new();
    for (number, pipe) in sources {
        let sender = sender.clone();
        readers.push(std::thread::spawn(move || {
            let mut pipe = pipe;
            let mut buf = vec![0u8; 16384];
            // A terminal's master reads EIO when the command's side is closed.
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 || sender.send((number, buf[..n].to_vec())).is_err() {
                    break;
                }
            }
        }));
    }
    drop(sender);
    let mut connected = true;
    for (number, data) in receiver {
        if connected {
            let reply = Reply::Output { stream: number, data: base64::engine::general_purpose::STANDARD.encode(&data) };
            connected = send(stream, &reply).and_then(|_| stream.flush()).is_ok();
        }
    }
    let status = child.wait();
    use std::os::unix::process::ExitStatusExt;
    let code = status.map(|s| s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0))).unwrap_or(126);
    drop(terminal);
    Reply::Exit(code)
}
