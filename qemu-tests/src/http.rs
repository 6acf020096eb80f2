//! A static file server for end-to-end tests: serves a directory on
//! 127.0.0.1 (the guest reaches it as 10.0.2.2 through QEMU's user network),
//! optionally at a limited rate so a test can act while a download runs, and
//! hanging up once in the middle of a file when asked. `Range: bytes=N-` is
//! answered with a 206, so a client can pick a broken download up.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct FileServer {
    pub port: u16,
    /// Bytes per second for response bodies; 0: no limit.
    rate: Arc<AtomicU64>,
    /// Hang up once after sending this many bytes of a body; 0: never.
    hang_up: Arc<AtomicU64>,
}

impl FileServer {
    pub fn start(root: &Path) -> FileServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
        let port = listener.local_addr().unwrap().port();
        let rate = Arc::new(AtomicU64::new(0));
        let hang_up = Arc::new(AtomicU64::new(0));
        let (root, r, h) = (root.to_path_buf(), rate.clone(), hang_up.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (root, r, h) = (root.clone(), r.clone(), h.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, &root, &r, &h);
                });
            }
        });
        FileServer { port, rate, hang_up }
    }

    /// The URL the guest uses.
    pub fn guest_url(&self) -> String {
        format!("http://10.0.2.2:{}", self.port)
    }

    pub fn set_rate(&self, bytes_per_second: u64) {
        self.rate.store(bytes_per_second, Ordering::SeqCst);
    }

    /// The next response body of more than `bytes` breaks off after them:
    /// the connection is closed as a failing network would.
    pub fn hang_up_once_after(&self, bytes: u64) {
        self.hang_up.store(bytes, Ordering::SeqCst);
    }
}

fn serve(conn: TcpStream, root: &Path, rate: &AtomicU64, hang_up: &AtomicU64) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut w = conn;
    loop {
        let mut request = String::new();
        if reader.read_line(&mut request)? == 0 {
            return Ok(());
        }
        let mut from = None;
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
                break;
            }
            if let Some(v) = h.to_ascii_lowercase().strip_prefix("range:") {
                from = v.trim().strip_prefix("bytes=").and_then(|r| r.strip_suffix('-')).and_then(|n| n.parse::<usize>().ok());
            }
        }
        let path = request.split_whitespace().nth(1).unwrap_or("/").trim_start_matches('/').to_string();
        let file: Option<PathBuf> = (!path.split('/').any(|c| c == "..")).then(|| root.join(&path)).filter(|p| p.is_file());
        let Some(file) = file else {
            w.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")?;
            continue;
        };
        let whole = std::fs::read(&file)?;
        let data = match from {
            Some(n) if n < whole.len() => {
                write!(w, "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {n}-{}/{}\r\n\r\n", whole.len() - n, whole.len() - 1, whole.len())?;
                &whole[n..]
            }
            Some(_) => {
                write!(w, "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Length: 0\r\nContent-Range: bytes */{}\r\n\r\n", whole.len())?;
                continue;
            }
            None => {
                write!(w, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: application/octet-stream\r\n\r\n", whole.len())?;
                &whole[..]
            }
        };
        let cut = hang_up.load(Ordering::SeqCst) as usize;
        if cut > 0 && cut < data.len() && hang_up.swap(0, Ordering::SeqCst) != 0 {
            w.write_all(&data[..cut])?;
            return w.shutdown(std::net::Shutdown::Both);
        }
        let started = Instant::now();
        let mut sent = 0usize;
        for chunk in data.chunks(64 << 10) {
            let r = rate.load(Ordering::SeqCst);
            if r > 0 {
                let due = Duration::from_secs_f64(sent as f64 / r as f64);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
            w.write_all(chunk)?;
            sent += chunk.len();
        }
        let _ = reader.get_mut().read(&mut []);
    }
}
