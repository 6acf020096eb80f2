//! `basaltctl update` ↔ the agent: one JSON request line, one JSON answer
//! line, over /run/basalt/update.sock (root and the wheel group).

use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

pub const SOCKET: &str = "/run/basalt/update.sock";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    Status,
    /// Fetch the metadata now and say what it offers; changes nothing.
    Check,
    /// Fetch and install what the channel offers now, ignoring the rollout
    /// wave; then reboot as the strategy says.
    Apply {
        #[serde(default)]
        allow_downgrade: bool,
    },
    /// Boot the other slot (the previous version) on purpose.
    Rollback {
        #[serde(default)]
        no_reboot: bool,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub stage: String,
    pub done: u64,
    pub total: u64,
    /// Bytes per second over the stage so far.
    pub rate: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub image: String,
    pub version: String,
    pub slot: String,
    pub channel: String,
    pub server: Option<String>,
    pub strategy: String,
    pub window: Option<String>,
    /// idle, checking, downloading, verifying, installing, staged,
    /// waiting-for-window, waiting-for-lock, rebooting, failed
    pub stage: String,
    pub progress: Option<Progress>,
    /// What the channel offered at the last check.
    pub available: Option<String>,
    /// Written to the other slot, waiting for a reboot.
    pub staged: Option<String>,
    pub last_check: Option<String>,
    /// What the last check or update ended with, in words.
    pub last_result: String,
    /// Set after the boot loader went back to this slot.
    pub rolled_back: Option<String>,
    /// Versions not retried.
    pub failed: Vec<String>,
    /// Problems in the configuration.
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    pub message: String,
    pub status: Option<Status>,
}

pub fn call(req: &Request, timeout: Duration) -> Result<Response, String> {
    let stream = UnixStream::connect(SOCKET).map_err(|e| format!("cannot reach the update agent at {SOCKET}: {e} (is basalt-update.service running?)"))?;
    stream.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    let mut line = serde_json::to_string(req).expect("request serializes");
    line.push('\n');
    (&stream).write_all(line.as_bytes()).map_err(|e| format!("sending to the update agent: {e}"))?;
    let mut answer = String::new();
    BufReader::new(&stream).read_line(&mut answer).map_err(|e| format!("waiting for the update agent: {e}"))?;
    serde_json::from_str(&answer).map_err(|e| format!("bad answer from the update agent ({e}): {answer:?}"))
}

pub fn format_bytes(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / 1048576.0)
}

impl Status {
    /// What `basaltctl update status` prints.
    pub fn render(&self) -> String {
        let mut s = format!(
            "image:     {} {} (slot {})\nchannel:   {} at {}\nstrategy:  {}{}\nstage:     {}\n",
            self.image,
            self.version,
            self.slot,
            self.channel,
            self.server.as_deref().unwrap_or("(no server configured)"),
            self.strategy,
            self.window.as_ref().map(|w| format!(", window {w}")).unwrap_or_default(),
            self.stage
        );
        if let Some(p) = &self.progress {
            s += &format!("progress:  {} {} of {} at {:.1} MiB/s\n", p.stage, format_bytes(p.done), format_bytes(p.total), p.rate / 1048576.0);
        }
        if let Some(v) = &self.available {
            s += &format!("available: {v}\n");
        }
        if let Some(v) = &self.staged {
            s += &format!("staged:    {v} (reboot to use it)\n");
        }
        if let Some(t) = &self.last_check {
            s += &format!("checked:   {t}\n");
        }
        if !self.last_result.is_empty() {
            s += &format!("result:    {}\n", self.last_result);
        }
        if let Some(r) = &self.rolled_back {
            s += &format!("rollback:  {r}\n");
        }
        if !self.failed.is_empty() {
            s += &format!("not retried: {}\n", self.failed.join(" "));
        }
        for w in &self.warnings {
            s += &format!("warning:   {w}\n");
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_tagged_json() {
        assert_eq!(serde_json::to_string(&Request::Apply { allow_downgrade: true }).unwrap(), r#"{"cmd":"apply","allow_downgrade":true}"#);
        assert_eq!(serde_json::from_str::<Request>(r#"{"cmd":"rollback"}"#).unwrap(), Request::Rollback { no_reboot: false });
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"explode"}"#).is_err());
    }
}
