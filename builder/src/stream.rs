//! Readers that stack (coreos-installer's lesson): hashing, limiting and
//! progress each live in one small adapter, so flashing and uploading compose
//! them instead of mixing the concerns in one loop.

use sha2::{Digest, Sha256};
use std::io::{self, IsTerminal, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Hashes every byte read through it. The digest is read through the
/// [`HashHandle`], because the reader itself ends up deep inside other
/// adapters (a decompressor) that do not give it back.
pub struct HashingReader<R> {
    inner: R,
    state: Arc<Mutex<(Sha256, u64)>>,
}

#[derive(Clone)]
pub struct HashHandle(Arc<Mutex<(Sha256, u64)>>);

impl HashHandle {
    /// The sha256 (lowercase hex) and byte count of everything read so far.
    pub fn digest(&self) -> (String, u64) {
        let state = self.0.lock().unwrap();
        (basalt_verity::hex(&state.0.clone().finalize()), state.1)
    }
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> (HashingReader<R>, HashHandle) {
        let state = Arc::new(Mutex::new((Sha256::new(), 0)));
        (HashingReader { inner, state: state.clone() }, HashHandle(state))
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut state = self.state.lock().unwrap();
        state.0.update(&buf[..n]);
        state.1 += n as u64;
        Ok(n)
    }
}

/// Fails, instead of ending quietly, once more than `limit` bytes come
/// through: an image larger than its target must never be cut short.
pub struct LimitReader<R> {
    inner: R,
    left: u64,
    limit: u64,
}

impl<R: Read> LimitReader<R> {
    pub fn new(inner: R, limit: u64) -> LimitReader<R> {
        LimitReader { inner, left: limit, limit }
    }
}

impl<R: Read> Read for LimitReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            // One probe byte tells "exactly the limit" from "more than the limit".
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(io::Error::other(format!("the image is larger than the target ({} bytes)", self.limit))),
            };
        }
        let want = buf.len().min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.left -= n as u64;
        Ok(n)
    }
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
pub fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match r.read(&mut buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

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
        let _ = if self.tty {
            write!(err, "\r\x1b[K{line}{}", if last { "\n" } else { "" })
        } else {
            writeln!(err, "{line}")
        };
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
    fn hashing_reader_hashes_what_passes_through() {
        let (mut r, h) = HashingReader::new(&b"abc"[..]);
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        assert_eq!(h.digest(), ("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad".to_string(), 3));
    }

    #[test]
    fn limit_reader_passes_exactly_the_limit_and_fails_beyond_it() {
        let mut out = Vec::new();
        LimitReader::new(&[1u8; 10][..], 10).read_to_end(&mut out).unwrap();
        assert_eq!(out.len(), 10);
        let err = LimitReader::new(&[1u8; 11][..], 10).read_to_end(&mut Vec::new()).unwrap_err();
        assert!(err.to_string().contains("larger than the target (10 bytes)"), "{err}");
    }

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
