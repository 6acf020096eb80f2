//! The agent's control socket, `/run/basalt/runtime.sock` (0660, group
//! wheel): one JSON request line in, JSON reply lines out, then the
//! connection closes. `basaltctl` is the client; `socat` works for debugging.
//! An interactive `exec` goes on sending `ExecInput` lines after its request.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;

use serde::{Deserialize, Serialize};

use crate::spec::ContainerSpec;

pub const SOCKET: &str = "/run/basalt/runtime.sock";

// One request per connection, built and parsed once: boxing `Run`'s spec would
// buy nothing but an indirection.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    Ps,
    Images,
    Pull {
        reference: String,
    },
    RemoveImage {
        reference: String,
    },
    Prune,
    Inspect {
        name: String,
    },
    Run {
        spec: ContainerSpec,
    },
    Start {
        name: String,
    },
    Stop {
        name: String,
    },
    Remove {
        name: String,
        force: bool,
    },
    Exec {
        name: String,
        args: Vec<String>,
        /// Stdin follows as `ExecInput` lines.
        #[serde(default)]
        interactive: bool,
        /// A terminal of this size (rows, columns) instead of pipes.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tty: Option<[u16; 2]>,
    },
}

/// What an interactive `exec` sends after its request, one JSON line each.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExecInput {
    /// Bytes for the command's stdin, in base64.
    Stdin(String),
    /// The end of stdin.
    Eof,
    /// The terminal's new size: rows, columns.
    Resize([u16; 2]),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStatus {
    pub name: String,
    pub image: String,
    pub source: String,
    /// pulling, starting, running, backoff, exited, stopped, failed, stopping
    pub state: String,
    /// The container's first process as the host sees it.
    pub pid: Option<i32>,
    pub restarts: u32,
    pub exit_code: Option<i32>,
    pub oom_kills: u64,
    pub detail: String,
    /// The container's address on the bridge network while it runs there.
    #[serde(default)]
    pub address: Option<String>,
    /// What it was granted beyond the defaults (`ContainerSpec::grants`).
    #[serde(default)]
    pub granted: String,
}

/// `inspect`: the declaration and what the runtime makes of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inspection {
    pub spec: ContainerSpec,
    pub status: ContainerStatus,
    /// The bounding set the container's processes get.
    pub capabilities: Vec<String>,
    /// default, unconfined or a profile's path.
    pub seccomp: String,
    /// Device rules beyond the OCI default devices.
    pub device_rules: Vec<crate::linux::devices::DeviceRule>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageInfo {
    pub reference: String,
    pub digest: String,
    pub size: u64,
    pub pulled: u64,
    pub used_by: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reply {
    /// The request is done; the text is for people.
    Ok(String),
    Error(String),
    Containers(Vec<ContainerStatus>),
    Images(Vec<ImageInfo>),
    Inspect(Box<Inspection>),
    /// Output of `exec`: stream 1 or 2, bytes in base64.
    Output {
        stream: u8,
        data: String,
    },
    /// `exec` finished with this code.
    Exit(i32),
}

pub fn send(stream: &mut impl Write, reply: &Reply) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(reply).expect("replies serialise");
    line.push(b'\n');
    stream.write_all(&line)
}

/// Sends `request` to the agent at `socket`, handing each reply to `each`.
pub fn call_at(socket: &str, request: &Request, each: impl FnMut(Reply)) -> Result<(), String> {
    let stream = connect_at(socket, request)?;
    stream.shutdown(std::net::Shutdown::Write).map_err(|e| e.to_string())?;
    replies(stream, each)
}

/// Sends `request` and leaves the connection open for more lines (`ExecInput`).
pub fn connect_at(socket: &str, request: &Request) -> Result<UnixStream, String> {
    let mut stream = UnixStream::connect(socket).map_err(|e| format!("cannot reach the runtime agent at {socket}: {e} (is basalt-runtime.service running?)"))?;
    send_line(&mut stream, request).map_err(|e| e.to_string())?;
    Ok(stream)
}

/// One JSON line.
pub fn send_line(stream: &mut impl Write, value: &impl Serialize) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(value).expect("messages serialise");
    line.push(b'\n');
    stream.write_all(&line)
}

/// Reads the agent's replies until it closes the connection.
pub fn replies(stream: UnixStream, mut each: impl FnMut(Reply)) -> Result<(), String> {
    for line in BufReader::new(stream).lines() {
        let line = line.map_err(|e| e.to_string())?;
        let reply: Reply = serde_json::from_str(&line).map_err(|e| format!("unexpected answer from the agent: {e}"))?;
        each(reply);
    }
    Ok(())
}

pub fn call(request: &Request, each: impl FnMut(Reply)) -> Result<(), String> {
    call_at(SOCKET, request, each)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_replies_are_json_lines() {
        let text = serde_json::to_string(&Request::Remove { name: "web".into(), force: true }).unwrap();
        assert_eq!(text, r#"{"op":"remove","name":"web","force":true}"#);
        assert_eq!(serde_json::to_string(&Reply::Exit(3)).unwrap(), r#"{"exit":3}"#);
        assert!(serde_json::from_str::<Request>(r#"{"op":"dance"}"#).is_err());
        // An older client's exec: no stdin, no terminal.
        let exec: Request = serde_json::from_str(r#"{"op":"exec","name":"web","args":["ls"]}"#).unwrap();
        assert_eq!(exec, Request::Exec { name: "web".into(), args: vec!["ls".into()], interactive: false, tty: None });
        assert_eq!(serde_json::to_string(&ExecInput::Resize([24, 80])).unwrap(), r#"{"resize":[24,80]}"#);
        assert_eq!(serde_json::to_string(&ExecInput::Eof).unwrap(), r#""eof""#);
    }
}
