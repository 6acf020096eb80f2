//! Service output: each line goes to /var/log/basalt/NAME.log (capped, one
//! rotation to NAME.log.1) and to the console prefixed with the service name.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;

pub const LOG_CAP_BYTES: u64 = 1 << 20;

#[derive(Default)]
pub struct Logs {
    files: HashMap<String, (File, u64)>,
    /// Partial lines per pipe, until their newline arrives.
    partial: HashMap<i32, Vec<u8>>,
}

impl Logs {
    pub fn write_chunk(&mut self, fd: i32, unit: &str, data: &[u8], console: bool) {
        let buf = self.partial.entry(fd).or_default();
        buf.extend_from_slice(data);
        let mut lines = Vec::new();
        while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
            lines.push(buf.drain(..=pos).collect::<Vec<u8>>());
        }
        if buf.len() > 8192 {
            let mut long = std::mem::take(buf);
            long.push(b'\n');
            lines.push(long);
        }
        for line in lines {
            self.line(unit, &line, console);
        }
    }

    /// The pipe closed: flush what is left of its last line.
    pub fn close(&mut self, fd: i32, unit: &str, console: bool) {
        if let Some(mut rest) = self.partial.remove(&fd) {
            if !rest.is_empty() {
                rest.push(b'\n');
                self.line(unit, &rest, console);
            }
        }
    }

    pub fn line(&mut self, unit: &str, line: &[u8], console: bool) {
        if console {
            let mut out = std::io::stdout().lock();
            let _ = write!(out, "[{unit}] ");
            let _ = out.write_all(line);
        }
        let dir = PathBuf::from(basalt_control::LOG_DIR);
        let path = dir.join(format!("{unit}.log"));
        if !self.files.contains_key(unit) {
            let _ = std::fs::create_dir_all(&dir);
            match OpenOptions::new().create(true).append(true).open(&path) {
                Ok(f) => {
                    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
                    self.files.insert(unit.to_string(), (f, len));
                }
                Err(_) => return,
            }
        }
        let (f, len) = self.files.get_mut(unit).unwrap();
        let _ = f.write_all(line);
        *len += line.len() as u64;
        if *len >= LOG_CAP_BYTES {
            let _ = std::fs::rename(&path, dir.join(format!("{unit}.log.1")));
            self.files.remove(unit);
        }
    }
}
