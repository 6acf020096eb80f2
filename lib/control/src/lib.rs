//! init's control socket: one request line in, a text answer out, then the
//! connection closes. Plain lines keep `socat` usable for debugging and need no
//! serialisation library in PID 1.
//!
//! Answers start with `ok` or `error <message>`; `status` answers with
//! `key=value` header lines, then one `unit` line per unit.
//!
//! The same request lines can also be filed, one per file, in
//! [`REQUEST_DIR`] ([`file_request`]): that is how cloud-config, which runs
//! as init's child in early boot (and also against an image root that is not
//! the running system), asks for unit commands; init takes them in name
//! order and deletes each.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const SOCKET: &str = "/run/basalt/init.sock";
/// Filed requests, absolute on the running system (see [`file_request`]).
pub const REQUEST_DIR: &str = "/run/basalt/supervisor/requests";
/// Where each service's output is kept (size-capped, one rotation).
pub const LOG_DIR: &str = "/var/log/basalt";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Status,
    Start(String),
    Stop(String),
    Restart(String),
    /// `reload NAME`: run the unit's ExecReload= (systemctl reload).
    ReloadUnit(String),
    /// Restart the unit only if it is running.
    TryRestart(String),
    /// Reload if the unit can, restart otherwise.
    ReloadOrRestart(String),
    /// Reload if the unit can, else restart, only if it is running.
    ReloadOrTryRestart(String),
    /// Re-read unit files from disk and start newly enabled units.
    Reload,
    Reboot,
    PowerOff,
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("bad request {0:?}: expected status, start|stop|restart|reload|try-restart|reload-or-restart|reload-or-try-restart NAME, reload, reboot or poweroff")]
    BadRequest(String),
    #[error("cannot reach init at {SOCKET}: {0} (is this a booted basalt machine?)")]
    Connect(std::io::Error),
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

fn valid_unit_name(n: &str) -> bool {
    !n.is_empty() && n.len() <= 255 && !n.contains('/') && n.chars().all(|c| c.is_ascii_alphanumeric() || "@._-:".contains(c))
}

impl Request {
    pub fn encode(&self) -> String {
        match self {
            Request::Status => "status".into(),
            Request::Start(n) => format!("start {n}"),
            Request::Stop(n) => format!("stop {n}"),
            Request::Restart(n) => format!("restart {n}"),
            Request::ReloadUnit(n) => format!("reload {n}"),
            Request::TryRestart(n) => format!("try-restart {n}"),
            Request::ReloadOrRestart(n) => format!("reload-or-restart {n}"),
            Request::ReloadOrTryRestart(n) => format!("reload-or-try-restart {n}"),
            Request::Reload => "reload".into(),
            Request::Reboot => "reboot".into(),
            Request::PowerOff => "poweroff".into(),
        }
    }

    pub fn parse(line: &str) -> Result<Request, ControlError> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let unit = |n: &str| if valid_unit_name(n) { Ok(n.to_string()) } else { Err(ControlError::BadRequest(line.into())) };
        Ok(match words.as_slice() {
            ["status"] => Request::Status,
            ["start", n] => Request::Start(unit(n)?),
            ["stop", n] => Request::Stop(unit(n)?),
            ["restart", n] => Request::Restart(unit(n)?),
            ["reload", n] => Request::ReloadUnit(unit(n)?),
            ["try-restart", n] => Request::TryRestart(unit(n)?),
            ["reload-or-restart", n] => Request::ReloadOrRestart(unit(n)?),
            ["reload-or-try-restart", n] => Request::ReloadOrTryRestart(unit(n)?),
            ["reload"] => Request::Reload,
            ["reboot"] => Request::Reboot,
            ["poweroff"] => Request::PowerOff,
            _ => return Err(ControlError::BadRequest(line.chars().take(80).collect())),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UnitStatus {
    pub name: String,
    /// active, activating, exited, failed, auto-restart, inactive, stopping
    pub state: String,
    pub pid: Option<i32>,
    pub restarts: u32,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Status {
    pub version: String,
    pub slot: String,
    /// Boot-counter tries left in the booted UKI's name; None when it has no counter.
    pub tries_left: Option<u32>,
    pub blessed: bool,
    pub health: String,
    pub units: Vec<UnitStatus>,
}

fn clean(s: &str) -> String {
    s.replace(['\n', '\t'], " ")
}

impl Status {
    pub fn encode(&self) -> String {
        let mut out = format!(
            "ok\nversion={}\nslot={}\ntries_left={}\nblessed={}\nhealth={}\n",
            clean(&self.version),
            clean(&self.slot),
            self.tries_left.map(|t| t.to_string()).unwrap_or_else(|| "-".into()),
            if self.blessed { "yes" } else { "no" },
            clean(&self.health)
        );
        for u in &self.units {
            out.push_str(&format!("unit\t{}\t{}\t{}\t{}\t{}\n", u.name, u.state, u.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()), u.restarts, clean(&u.detail)));
        }
        out
    }

    pub fn decode(text: &str) -> Result<Status, ControlError> {
        let mut lines = text.lines();
        match lines.next() {
            Some("ok") => {}
            Some(l) => return Err(ControlError::Refused(l.strip_prefix("error ").unwrap_or(l).to_string())),
            None => return Err(ControlError::Refused("empty answer".into())),
        }
        let mut s = Status::default();
        for l in lines {
            if let Some(rest) = l.strip_prefix("unit\t") {
                let f: Vec<&str> = rest.splitn(5, '\t').collect();
                if f.len() == 5 {
                    s.units.push(UnitStatus { name: f[0].into(), state: f[1].into(), pid: f[2].parse().ok(), restarts: f[3].parse().unwrap_or(0), detail: f[4].into() });
                }
            } else if let Some((k, v)) = l.split_once('=') {
                match k {
                    "version" => s.version = v.into(),
                    "slot" => s.slot = v.into(),
                    "tries_left" => s.tries_left = v.parse().ok(),
                    "blessed" => s.blessed = v == "yes",
                    "health" => s.health = v.into(),
                    _ => {}
                }
            }
        }
        Ok(s)
    }
}

/// Sends one request to init and returns its answer's text after `ok`.
pub fn call(req: &Request) -> Result<String, ControlError> {
    call_at(SOCKET, req)
}

pub fn call_at(socket: &str, req: &Request) -> Result<String, ControlError> {
    let mut s = UnixStream::connect(socket).map_err(ControlError::Connect)?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    s.write_all(format!("{}\n", req.encode()).as_bytes())?;
    s.shutdown(std::net::Shutdown::Write)?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)?;
    if let Some(rest) = answer.strip_prefix("error ") {
        return Err(ControlError::Refused(rest.trim_end().to_string()));
    }
    if !answer.starts_with("ok") {
        return Err(ControlError::Refused(format!("unexpected answer {:?}", answer.lines().next().unwrap_or(""))));
    }
    Ok(answer)
}

static SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// Files `req` under `root` (`/` on the running system) in [`REQUEST_DIR`]:
/// one line in a file named `<20-digit nanoseconds since the epoch>-<4-digit
/// sequence>.request`, written as a hidden temporary, fsynced, renamed, and
/// the directory fsynced, so init sees it whole or not at all. /run is a
/// tmpfs: a request never outlives its boot. Only unit commands and
/// `reload` can be filed.
pub fn file_request(root: &Path, req: &Request) -> std::io::Result<PathBuf> {
    if matches!(req, Request::Status | Request::Reboot | Request::PowerOff) {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{:?} cannot be filed, only sent to {SOCKET}", req.encode())));
    }
    let dir = root.join(REQUEST_DIR.trim_start_matches('/'));
    std::fs::create_dir_all(&dir)?;
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let sequence = SEQUENCE.fetch_add(1, Ordering::Relaxed) % 10_000;
    let name = format!("{nanos:020}-{sequence:04}.request");
    let temporary = dir.join(format!(".{name}.tmp"));
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(format!("{}\n", req.encode()).as_bytes())?;
    file.sync_all()?;
    let path = dir.join(name);
    std::fs::rename(&temporary, &path)?;
    std::fs::File::open(&dir)?.sync_all()?;
    Ok(path)
}

/// The requests filed under `root`, in the order init takes them: (file,
/// its line). A file is complete once named `*.request`.
pub fn filed_requests(root: &Path) -> Vec<(PathBuf, String)> {
    let dir = root.join(REQUEST_DIR.trim_start_matches('/'));
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir).map(|rd| rd.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "request")).collect()).unwrap_or_default();
    files.sort();
    files.into_iter().filter_map(|f| Some((f.clone(), std::fs::read_to_string(&f).ok()?.trim_end().to_string()))).collect()
}

/// The longest request line init reads.
pub const MAX_REQUEST: usize = 4096;

/// The request in what a connection has sent so far (`ended`: the client
/// closed its side): None while the line is not complete yet. A line
/// longer than [`MAX_REQUEST`] is refused rather than waited for.
pub fn request_in(received: &[u8], ended: bool) -> Option<Result<Request, ControlError>> {
    let line = match received.iter().position(|b| *b == b'\n') {
        Some(end) => &received[..end],
        None if ended => received,
        None if received.len() >= MAX_REQUEST => return Some(Err(ControlError::BadRequest(format!("a request line longer than {MAX_REQUEST} bytes")))),
        None => return None,
    };
    Some(match std::str::from_utf8(line) {
        Ok(text) => Request::parse(text.trim()),
        Err(_) => Err(ControlError::BadRequest("a request that is not UTF-8".into())),
    })
}

/// Where init takes sd_notify(3) messages (`READY=1`, `STATUS=…`) from
/// services: their $NOTIFY_SOCKET.
pub const NOTIFY_SOCKET: &str = "/run/basalt/notify";

/// Sends `message` (newline-separated `KEY=VALUE` assignments) to the
/// supervisor as sd_notify(3) does: one datagram to $NOTIFY_SOCKET
/// (a path, or `@name` for an abstract socket).
pub fn notify(message: &str) -> Result<(), String> {
    let target = std::env::var("NOTIFY_SOCKET").map_err(|_| "NOTIFY_SOCKET is not set: this is not run by a service with Type=notify or NotifyAccess=".to_string())?;
    let socket = std::os::unix::net::UnixDatagram::unbound().map_err(|e| e.to_string())?;
    let sent = if let Some(name) = target.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).map_err(|e| e.to_string())?;
        socket.send_to_addr(message.as_bytes(), &addr)
    } else {
        socket.send_to(message.as_bytes(), &target)
    };
    sent.map(|_| ()).map_err(|e| format!("sending to NOTIFY_SOCKET={target}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_taken_once_its_line_is_whole() {
        assert!(request_in(b"sta", false).is_none());
        assert_eq!(request_in(b"status\n", false).unwrap().unwrap(), Request::Status);
        assert_eq!(request_in(b"stop web.service", true).unwrap().unwrap(), Request::Stop("web.service".into()));
        assert!(request_in(&[b'x'; MAX_REQUEST], false).unwrap().unwrap_err().to_string().contains("longer than 4096"));
        assert!(request_in(b"\xff\n", false).unwrap().unwrap_err().to_string().contains("not UTF-8"));
        assert!(request_in(b"dance\n", false).unwrap().is_err());
    }

    #[test]
    fn requests_round_trip_and_bad_ones_are_refused() {
        for r in [
            Request::Status,
            Request::Restart("web.service".into()),
            Request::ReloadUnit("web.service".into()),
            Request::TryRestart("web.service".into()),
            Request::ReloadOrRestart("web.service".into()),
            Request::ReloadOrTryRestart("echo@1.service".into()),
            Request::Reload,
            Request::PowerOff,
        ] {
            assert_eq!(Request::parse(&r.encode()).unwrap(), r);
        }
        for bad in ["", "restart", "restart ../etc/passwd", "dance", "start a b"] {
            assert!(Request::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn filed_requests_are_read_back_whole_and_in_order() {
        let root = tempfile::tempdir().unwrap();
        file_request(root.path(), &Request::Reload).unwrap();
        file_request(root.path(), &Request::Start("etcd.service".into())).unwrap();
        file_request(root.path(), &Request::TryRestart("web.service".into())).unwrap();
        let lines: Vec<String> = filed_requests(root.path()).into_iter().map(|(_, l)| l).collect();
        assert_eq!(lines, ["reload", "start etcd.service", "try-restart web.service"]);
        let dir = root.path().join(REQUEST_DIR.trim_start_matches('/'));
        assert!(std::fs::read_dir(&dir).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().ends_with(".tmp")));
        assert!(file_request(root.path(), &Request::Reboot).unwrap_err().to_string().contains("cannot be filed"));
    }

    #[test]
    fn status_round_trips() {
        let s = Status {
            version: "1.2.0".into(),
            slot: "B".into(),
            tries_left: Some(2),
            blessed: false,
            health: "waiting for sshd.service".into(),
            units: vec![UnitStatus { name: "sshd.service".into(), state: "active".into(), pid: Some(42), restarts: 1, detail: "since 3 s".into() }],
        };
        assert_eq!(Status::decode(&s.encode()).unwrap(), s);
        assert!(matches!(Status::decode("error no such unit"), Err(ControlError::Refused(m)) if m == "no such unit"));
    }
}
