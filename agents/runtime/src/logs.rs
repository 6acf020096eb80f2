//! A container's output, kept as the supervisor keeps a service's:
//! `/var/log/basalt/containers/NAME.log`, moved to `NAME.log.1` at 1 MiB, so
//! at most 2 MiB per container. Lines from stdout and stderr are written
//! whole, in the order they arrive.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub const LOG_DIR: &str = "/var/log/basalt/containers";
const ROTATE_BYTES: u64 = 1 << 20;

pub struct Log {
    path: PathBuf,
    file: Option<File>,
    size: u64,
}

impl Log {
    pub fn open(dir: &Path, name: &str) -> Arc<Mutex<Log>> {
        let _ = std::fs::create_dir_all(dir);
        let path = dir.join(format!("{name}.log"));
        let file = OpenOptions::new().create(true).append(true).open(&path).ok();
        let size = file.as_ref().and_then(|f| f.metadata().ok()).map(|m| m.len()).unwrap_or(0);
        Arc::new(Mutex::new(Log { path, file, size }))
    }

    pub fn write_line(&mut self, line: &[u8]) {
        if self.size + line.len() as u64 > ROTATE_BYTES {
            let _ = std::fs::rename(&self.path, self.path.with_extension("log.1"));
            self.file = OpenOptions::new().create(true).append(true).open(&self.path).ok();
            self.size = 0;
        }
        if let Some(file) = &mut self.file {
            let mut data = line.to_vec();
            if !data.ends_with(b"\n") {
                data.push(b'\n');
            }
            if file.write_all(&data).is_ok() {
                self.size += data.len() as u64;
            }
        }
    }

    /// Copies `from` into the log line by line until it closes.
    pub fn pump(log: Arc<Mutex<Log>>, from: impl Read + Send + 'static) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            let mut reader = BufReader::new(from);
            let mut line = Vec::new();
            loop {
                line.clear();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => log.lock().unwrap().write_line(&line),
                }
            }
        })
    }

    pub fn remove(dir: &Path, name: &str) {
        let _ = std::fs::remove_file(dir.join(format!("{name}.log")));
        let _ = std::fs::remove_file(dir.join(format!("{name}.log.1")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_rotate_once() {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), "web");
        let line = vec![b'x'; 1000];
        for _ in 0..1100 {
            log.lock().unwrap().write_line(&line);
        }
        let current = std::fs::metadata(dir.path().join("web.log")).unwrap().len();
        let rotated = std::fs::metadata(dir.path().join("web.log.1")).unwrap().len();
        assert!(rotated <= ROTATE_BYTES && rotated > ROTATE_BYTES - 2000);
        assert_eq!(current + rotated, 1100 * 1001);
    }
}
