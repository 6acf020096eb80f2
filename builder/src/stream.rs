//! Small pieces shared by flashing and uploading: spotting all-zero blocks,
//! and a progress line with rate and ETA.

use std::io::{self, IsTerminal, Write};
use std::time::{Duration, Instant};

/// True when every byte is zero (compares 16 bytes at a time).
pub fn is_zero(buf: &[u8]) -> bool {
    // SAFETY: u128 has no invalid bit patterns; align_to only reinterprets.
    let (head, body, tail) = unsafe { buf.align_to::<u128>() };
    head.iter().all(|&b| b == 0) && body.iter().all(|&w| w == 0) && tail.iter().all(|&b| b == 0)
}

/// Progress on stderr: a bar with rate and ETA redrawn in place on a
/// terminal; otherwise (logs, CI) a plain line every few seconds.
pub struct Progress {
    label: String,
    total: Option<u64>,
    done: u64,
    started: Instant,
    last: Instant,
    tty: bool,
}

const MIB: f64 = 1048576.0;

impl Progress {
    pub fn new(label: &str, total: Option<u64>) -> Progress {
        let now = Instant::now();
        Progress { label: label.to_string(), total, done: 0, started: now, last: now, tty: io::stderr().is_terminal() }
    }

    pub fn advance(&mut self, bytes: u64) {
        self.done += bytes;
        let every = if self.tty { Duration::from_millis(200) } else { Duration::from_secs(5) };
        if self.last.elapsed() >= every {
            self.last = Instant::now();
            self.draw(false);
        }
    }

    pub fn finish(&mut self) {
        self.draw(true);
    }

    fn draw(&self, last: bool) {
        let line = self.line();
        let mut err = io::stderr().lock();
        let _ = if self.tty { write!(err, "\r\x1b[K{line}{}", if last { "\n" } else { "" }) } else { writeln!(err, "{line}") };
    }

    /// `flash  1024.0/3460.0 MiB  29% [#####.............]  512.3 MiB/s  ETA 5 s`
    pub fn line(&self) -> String {
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = self.done as f64 / secs;
        match self.total {
            Some(total) if total > 0 => {
                let frac = (self.done as f64 / total as f64).min(1.0);
                let width = 24;
                let filled = (frac * width as f64) as usize;
                let eta = if rate > 0.0 { (total.saturating_sub(self.done)) as f64 / rate } else { 0.0 };
                format!(
                    "{}  {:.1}/{:.1} MiB {:>3.0}% [{}{}] {:.1} MiB/s  ETA {:.0} s",
                    self.label,
                    self.done as f64 / MIB,
                    total as f64 / MIB,
                    frac * 100.0,
                    "#".repeat(filled),
                    ".".repeat(width - filled),
                    rate / MIB,
                    eta
                )
            }
            _ => format!("{}  {:.1} MiB  {:.1} MiB/s", self.label, self.done as f64 / MIB, rate / MIB),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_detection_covers_unaligned_edges() {
        let mut buf = vec![0u8; 4099];
        assert!(is_zero(&buf[1..]));
        buf[4098] = 1;
        assert!(!is_zero(&buf[1..]));
        buf[4098] = 0;
        buf[1] = 1;
        assert!(!is_zero(&buf[1..]));
    }

    #[test]
    fn progress_line_shows_rate_and_eta() {
        let mut p = Progress::new("flash", Some(100 << 20));
        p.done = 25 << 20;
        let line = p.line();
        assert!(line.starts_with("flash  25.0/100.0 MiB  25% [######..................]"), "{line}");
        assert!(line.contains("MiB/s") && line.contains("ETA"), "{line}");
    }
}
