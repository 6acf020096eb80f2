//! The agent's control socket, `/run/basalt/runtime.sock` (0660, group
//! wheel): one JSON request line in, JSON reply lines out, then the
//! connection closes. `basaltctl` is the client; `socat` works for debugging.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;

use serde::{Deserialize, Serialize};

use crate::spec::ContainerSpec;

pub const SOCKET: &str = "/run/basalt/runtime.sock";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Request {
    Ps,
    Images,
    Pull { reference: String },
    RemoveImage { reference: String },
    Prune,
    Run { spec: ContainerSpec },
    Start { name: String },
    Stop { name: String },
    Remove { name: String, force: bool },
    Exec { name: String, args: Vec<String> },
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
    /// Output of `exec`: stream 1 or 2, bytes in base64.
    Output { stream: u8, data: String },
    /// `exec` finished with this code.
    Exit(i32),
}

pub fn send(stream: &mut impl Write, reply: &Reply) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(reply).expect("replies serialise");
    line.push(b'\n');
    stream.write_all(&line)
}

/// Sends `request` to the agent at `socket`, handing each reply to `each`.
pub fn call_at(socket: &str, request: &Request, mut each: impl FnMut(Reply)) -> Result<(), String> {
    let mut stream = UnixStream::connect(socket).map_err(|e| format!("cannot reach the runtime agent at {socket}: {e} (is basalt-runtime.service running?)"))?;
    let mut line = serde_json::to_vec(request).expect("requests serialise");
    line.push(b'\n');
    stream.write_all(&line).map_err(|e| e.to_string())?;
    stream.shutdown(std::net::Shutdown::Write).map_err(|e| e.to_string())?;
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
    }
}
