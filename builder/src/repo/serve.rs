//! `basalt repo serve`: a small static HTTP/1.1 file server for a
//! repository, for tests and small sites (anything that serves files works
//! as well). GET and HEAD; single byte ranges, so a download can resume;
//! keep-alive; no directory listings; nothing outside DIR, nothing hidden
//! and nothing under staged/ is served. A thread per connection; one log
//! line per request on stderr.

use anyhow::{Context, Result};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

const MAX_CONNECTIONS: usize = 128;
const MAX_HEAD_BYTES: u64 = 16 << 10;
const MAX_HEADERS: usize = 100;
const IDLE: Duration = Duration::from_secs(60);

pub fn serve(dir: &Path, listen: &str) -> Result<()> {
    let server = Server::bind(dir, listen)?;
    println!("serving {} on http://{}", dir.display(), server.addr());
    io::stdout().flush()?;
    server.run();
    Ok(())
}

pub struct Server {
    root: PathBuf,
    listener: TcpListener,
}

impl Server {
    pub fn bind(dir: &Path, listen: &str) -> Result<Server> {
        let root = dir.canonicalize().with_context(|| format!("{} is not a directory", dir.display()))?;
        anyhow::ensure!(root.is_dir(), "{} is not a directory", dir.display());
        let listener = TcpListener::bind(listen).with_context(|| format!("listening on {listen}"))?;
        Ok(Server { root, listener })
    }

    pub fn addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound socket has an address")
    }

    pub fn run(self) {
        let active = Arc::new(AtomicUsize::new(0));
        let root = Arc::new(self.root);
        for conn in self.listener.incoming() {
            let mut stream = match conn {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("accept: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                active.fetch_sub(1, Ordering::SeqCst);
                let _ = stream.write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                continue;
            }
            let (root, active) = (root.clone(), active.clone());
            std::thread::spawn(move || {
                let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_else(|_| "?".into());
                if let Err(e) = connection(stream, &root, &peer) {
                    if !matches!(e.kind(), io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset | io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) {
                        eprintln!("{peer} {e}");
                    }
                }
                active.fetch_sub(1, Ordering::SeqCst);
            });
        }
    }
}

#[derive(Debug)]
struct Request {
    method: String,
    target: String,
    version: String,
    headers: Vec<(String, String)>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn keep_alive(&self) -> bool {
        let has_body = self.header("content-length").is_some_and(|v| v.trim() != "0") || self.header("transfer-encoding").is_some();
        let close = self.header("connection").is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")));
        self.version == "HTTP/1.1" && !close && !has_body && matches!(self.method.as_str(), "GET" | "HEAD")
    }
}

/// Reads one request head; `Ok(None)` at a clean end of the connection.
fn read_request<R: BufRead>(r: &mut R) -> io::Result<Option<Result<Request, &'static str>>> {
    let mut used = 0u64;
    let mut line = Vec::new();
    let mut next_line = |r: &mut R, line: &mut Vec<u8>| -> io::Result<Option<bool>> {
        line.clear();
        let n = r.by_ref().take(MAX_HEAD_BYTES - used).read_until(b'\n', line)?;
        used += n as u64;
        if n == 0 {
            return Ok(None);
        }
        Ok(Some(line.ends_with(b"\n")))
    };
    // Tolerate empty lines before a request (RFC 9112 2.2).
    let first = loop {
        match next_line(r, &mut line)? {
            None => return Ok(None),
            Some(false) => return Ok(Some(Err("request head too long or cut off"))),
            Some(true) if line == b"\r\n" || line == b"\n" => continue,
            Some(true) => break String::from_utf8_lossy(&line).trim_end().to_string(),
        }
    };
    let parts: Vec<&str> = first.split(' ').collect();
    let [method, target, version] = parts[..] else { return Ok(Some(Err("malformed request line"))) };
    if !version.starts_with("HTTP/1.") {
        return Ok(Some(Err("not HTTP/1.x")));
    }
    let mut headers = Vec::new();
    loop {
        match next_line(r, &mut line)? {
            None | Some(false) => return Ok(Some(Err("request head too long or cut off"))),
            Some(true) if line == b"\r\n" || line == b"\n" => break,
            Some(true) => {
                let text = String::from_utf8_lossy(&line);
                let Some((name, value)) = text.split_once(':') else { return Ok(Some(Err("malformed header"))) };
                if headers.len() >= MAX_HEADERS || name.is_empty() || name.contains(' ') {
                    return Ok(Some(Err("malformed header")));
                }
                headers.push((name.to_string(), value.trim().to_string()));
            }
        }
    }
    Ok(Some(Ok(Request { method: method.into(), target: target.into(), version: version.into(), headers })))
}

fn connection(stream: TcpStream, root: &Path, peer: &str) -> io::Result<()> {
    stream.set_read_timeout(Some(IDLE))?;
    stream.set_write_timeout(Some(IDLE))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    loop {
        let req = match read_request(&mut reader)? {
            None => return Ok(()),
            Some(Err(why)) => {
                let n = simple(&mut out, 400, why, false, &[])?;
                eprintln!("{peer} \"(bad request: {why})\" 400 {n}");
                linger(out, reader);
                return Ok(());
            }
            Some(Ok(req)) => req,
        };
        let keep = req.keep_alive();
        let (status, bytes) = respond(&mut out, root, &req, keep)?;
        eprintln!("{peer} \"{} {} {}\" {status} {bytes}", req.method, req.target.escape_default(), req.version);
        if !keep {
            linger(out, reader);
            return Ok(());
        }
    }
}

/// Closes after an error without a reset: a socket closed with unread
/// input sends RST, which can destroy the response before the client reads
/// it. So: stop writing, read what the client still sends (a little, for a
/// moment), then close.
fn linger(out: TcpStream, mut reader: BufReader<TcpStream>) {
    let _ = out.shutdown(std::net::Shutdown::Write);
    let _ = out.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = io::copy(&mut reader.by_ref().take(1 << 20), &mut io::sink());
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        416 => "Range Not Satisfiable",
        _ => "Error",
    }
}

/// IMF-fixdate (RFC 9110 5.6.7), e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
pub fn http_date(unix: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    let c = crate::civil::civil(unix);
    format!("{}, {:02} {} {} {:02}:{:02}:{:02} GMT", DAYS[(unix / 86400 % 7) as usize], c.day, MONTHS[c.month as usize - 1], c.year, c.hour, c.minute, c.second)
}

fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn head(out: &mut TcpStream, status: u16, keep: bool, extra: &[(&str, String)]) -> io::Result<()> {
    let mut h = format!("HTTP/1.1 {status} {}\r\nDate: {}\r\nServer: basalt\r\n", reason(status), http_date(now_unix()));
    for (n, v) in extra {
        h.push_str(&format!("{n}: {v}\r\n"));
    }
    if !keep {
        h.push_str("Connection: close\r\n");
    }
    h.push_str("\r\n");
    out.write_all(h.as_bytes())
}

/// A short text response; returns the body length.
fn simple(out: &mut TcpStream, status: u16, text: &str, keep: bool, extra: &[(&str, String)]) -> io::Result<u64> {
    let body = format!("{status} {}: {text}\n", reason(status));
    let mut headers = vec![("Content-Type", "text/plain; charset=utf-8".to_string()), ("Content-Length", body.len().to_string())];
    headers.extend(extra.iter().cloned());
    head(out, status, keep, &headers)?;
    out.write_all(body.as_bytes())?;
    Ok(body.len() as u64)
}

/// Where a request target points inside `root`, or the status refusing it.
pub fn resolve(root: &Path, target: &str) -> Result<PathBuf, (u16, &'static str)> {
    let path = target.split(['?', '#']).next().unwrap_or("");
    if !path.starts_with('/') {
        return Err((400, "the target must be an absolute path"));
    }
    let decoded = percent_decode(path).ok_or((400, "bad percent-encoding"))?;
    let mut rel = PathBuf::new();
    for (i, comp) in decoded.split('/').filter(|c| !c.is_empty()).enumerate() {
        if comp == ".." || comp == "." || comp.contains(['\0', '\\']) {
            return Err((400, "paths with `..` or `.` are refused"));
        }
        if comp.starts_with('.') || (i == 0 && comp == "staged") {
            return Err((404, "not served"));
        }
        rel.push(comp);
    }
    if rel.as_os_str().is_empty() {
        return Err((404, "no directory listings"));
    }
    let full = root.join(rel).canonicalize().map_err(|_| (404, "no such file"))?;
    if !full.starts_with(root) || !full.is_file() {
        return Err((404, "no such file"));
    }
    Ok(full)
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[derive(Debug, PartialEq, Eq)]
pub enum Range {
    /// No usable Range header: the whole file.
    Whole,
    /// First and last byte, inclusive.
    Part(u64, u64),
    Unsatisfiable,
}

/// A `Range` header for a file of `len` bytes. Several ranges, other units
/// and bad syntax are ignored (the whole file is sent, RFC 9110 14.2).
pub fn parse_range(header: &str, len: u64) -> Range {
    let Some(spec) = header.trim().strip_prefix("bytes=") else { return Range::Whole };
    if spec.contains(',') {
        return Range::Whole;
    }
    let Some((a, b)) = spec.trim().split_once('-') else { return Range::Whole };
    let num = |s: &str| if !s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()) { s.parse::<u64>().ok() } else { None };
    match (a.is_empty(), num(a), b.is_empty(), num(b)) {
        (true, _, false, Some(n)) => {
            if n == 0 || len == 0 {
                Range::Unsatisfiable
            } else {
                Range::Part(len.saturating_sub(n), len - 1)
            }
        }
        (false, Some(start), true, _) if start < len => Range::Part(start, len - 1),
        (false, Some(start), false, Some(end)) if start <= end => {
            if start < len {
                Range::Part(start, end.min(len - 1))
            } else {
                Range::Unsatisfiable
            }
        }
        (false, Some(_), true, _) => Range::Unsatisfiable,
        _ => Range::Whole,
    }
}

fn content_type(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some("json") => "application/json",
        Some("html") => "text/html; charset=utf-8",
        Some("txt") | Some("sha256") => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}

/// Answers one request; returns the status and the body bytes sent.
fn respond(out: &mut TcpStream, root: &Path, req: &Request, keep: bool) -> io::Result<(u16, u64)> {
    let is_head = req.method == "HEAD";
    if req.method != "GET" && !is_head {
        let n = simple(out, 405, "only GET and HEAD", false, &[("Allow", "GET, HEAD".into())])?;
        return Ok((405, n));
    }
    let path = match resolve(root, &req.target) {
        Ok(p) => p,
        Err((status, why)) => return Ok((status, simple(out, status, why, keep, &[])?)),
    };
    let mut file = match File::open(&path) {
        Ok(f) => f,
        Err(_) => return Ok((404, simple(out, 404, "no such file", keep, &[])?)),
    };
    let meta = file.metadata()?;
    let len = meta.len();
    let mtime = meta.modified().ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| d.as_secs());
    let etag = format!("\"{len:x}-{mtime:x}\"");
    let last_modified = http_date(mtime);
    let mut range = req.header("range").map_or(Range::Whole, |h| parse_range(h, len));
    if let Some(v) = req.header("if-range") {
        if v != etag && v != last_modified {
            range = Range::Whole;
        }
    }
    let mut headers = vec![("Content-Type", content_type(&path).to_string()), ("Accept-Ranges", "bytes".to_string()), ("ETag", etag), ("Last-Modified", last_modified)];
    if path.extension().is_some_and(|e| e == "json") {
        // Metadata changes under the same name: caches must ask again.
        headers.push(("Cache-Control", "no-cache".to_string()));
    }
    let (status, start, count) = match range {
        Range::Whole => (200, 0, len),
        Range::Part(a, b) => {
            headers.push(("Content-Range", format!("bytes {a}-{b}/{len}")));
            (206, a, b - a + 1)
        }
        Range::Unsatisfiable => {
            let n = simple(out, 416, "range not satisfiable", keep, &[("Content-Range", format!("bytes */{len}"))])?;
            return Ok((416, n));
        }
    };
    headers.push(("Content-Length", count.to_string()));
    head(out, status, keep, &headers)?;
    if is_head {
        return Ok((status, 0));
    }
    file.seek(SeekFrom::Start(start))?;
    let sent = io::copy(&mut file.take(count), out)?;
    if sent != count {
        // The file shrank under us: the client must not take this as complete.
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("{} shrank while being sent", path.display())));
    }
    Ok((status, sent))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_rfc_9110() {
        assert_eq!(parse_range("bytes=0-99", 1000), Range::Part(0, 99));
        assert_eq!(parse_range("bytes=900-", 1000), Range::Part(900, 999));
        assert_eq!(parse_range("bytes=-100", 1000), Range::Part(900, 999));
        assert_eq!(parse_range("bytes=-5000", 1000), Range::Part(0, 999));
        assert_eq!(parse_range("bytes=990-5000", 1000), Range::Part(990, 999));
        assert_eq!(parse_range("bytes=1000-", 1000), Range::Unsatisfiable);
        assert_eq!(parse_range("bytes=1000-1001", 1000), Range::Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 1000), Range::Unsatisfiable);
        for ignored in ["items=0-1", "bytes=5-1", "bytes=0-1,5-6", "bytes=a-b", "bytes=-", "bytes=+1-2"] {
            assert_eq!(parse_range(ignored, 1000), Range::Whole, "{ignored}");
        }
    }

    #[test]
    fn paths_stay_inside_the_repository() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::create_dir_all(root.join("channels")).unwrap();
        std::fs::create_dir_all(root.join("staged")).unwrap();
        std::fs::write(root.join("channels/stable.json"), "{}").unwrap();
        std::fs::write(root.join("staged/root.json"), "{}").unwrap();
        std::fs::write(root.join(".lock"), "").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("passwd")).unwrap();
        assert_eq!(resolve(&root, "/channels/stable.json?x=1"), Ok(root.join("channels/stable.json")));
        assert_eq!(resolve(&root, "//channels//stable.json"), Ok(root.join("channels/stable.json")));
        assert_eq!(resolve(&root, "/channels/%73table.json"), Ok(root.join("channels/stable.json")));
        assert_eq!(resolve(&root, "/channels/../../etc/passwd").unwrap_err().0, 400);
        assert_eq!(resolve(&root, "/channels/%2e%2e/%2e%2e/etc/passwd").unwrap_err().0, 400);
        assert_eq!(resolve(&root, "/channels/bad%zz").unwrap_err().0, 400);
        assert_eq!(resolve(&root, "channels/stable.json").unwrap_err().0, 400);
        assert_eq!(resolve(&root, "/staged/root.json").unwrap_err().0, 404);
        assert_eq!(resolve(&root, "/.lock").unwrap_err().0, 404);
        assert_eq!(resolve(&root, "/passwd").unwrap_err().0, 404, "a symlink out of the repository");
        assert_eq!(resolve(&root, "/channels").unwrap_err().0, 404, "no listings");
        assert_eq!(resolve(&root, "/").unwrap_err().0, 404);
        assert_eq!(resolve(&root, "/missing.json").unwrap_err().0, 404);
    }

    #[test]
    fn http_dates_are_imf_fixdate() {
        assert_eq!(http_date(784111777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
    }

    /// Sends `raw` on a new connection and returns everything the server
    /// wrote until it closed the connection.
    fn exchange(addr: SocketAddr, raw: &str) -> Vec<u8> {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(raw.as_bytes()).unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        out
    }

    fn split(resp: &[u8]) -> (String, Vec<u8>) {
        let at = resp.windows(4).position(|w| w == b"\r\n\r\n").expect("a response head");
        (String::from_utf8_lossy(&resp[..at]).into_owned(), resp[at + 4..].to_vec())
    }

    #[test]
    fn serves_files_ranges_and_errors_over_keep_alive_connections() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::create_dir_all(dir.path().join("payloads")).unwrap();
        std::fs::write(dir.path().join("payloads/x.payload"), &data).unwrap();
        let server = Server::bind(dir.path(), "127.0.0.1:0").unwrap();
        let addr = server.addr();
        std::thread::spawn(move || server.run());

        // Two requests on one connection, the second closing it.
        let resp = exchange(addr, "GET /payloads/x.payload HTTP/1.1\r\nHost: x\r\nRange: bytes=10-19\r\n\r\nHEAD /payloads/x.payload HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let (h1, rest) = split(&resp);
        assert!(h1.starts_with("HTTP/1.1 206 Partial Content"), "{h1}");
        assert!(h1.contains("Content-Range: bytes 10-19/100000") && h1.contains("Content-Length: 10"), "{h1}");
        assert_eq!(&rest[..10], &data[10..20]);
        let (h2, body2) = split(&rest[10..]);
        assert!(h2.starts_with("HTTP/1.1 200 OK") && h2.contains("Content-Length: 100000") && h2.contains("Connection: close"), "{h2}");
        assert!(body2.is_empty(), "HEAD has no body");

        let (h, body) = split(&exchange(addr, "GET /payloads/x.payload HTTP/1.0\r\n\r\n"));
        assert!(h.starts_with("HTTP/1.1 200 OK") && h.contains("Accept-Ranges: bytes"), "{h}");
        assert_eq!(body, data);

        // Resuming: the last 1000 bytes, only while the file is the same.
        let etag = h.lines().find_map(|l| l.strip_prefix("ETag: ")).unwrap().to_string();
        let (h, body) = split(&exchange(addr, &format!("GET /payloads/x.payload HTTP/1.1\r\nRange: bytes=99000-\r\nIf-Range: {etag}\r\nConnection: close\r\n\r\n")));
        assert!(h.starts_with("HTTP/1.1 206"), "{h}");
        assert_eq!(body, &data[99000..]);
        let (h, body) = split(&exchange(addr, "GET /payloads/x.payload HTTP/1.1\r\nRange: bytes=99000-\r\nIf-Range: \"other\"\r\nConnection: close\r\n\r\n"));
        assert!(h.starts_with("HTTP/1.1 200"), "another file version: the whole file: {h}");
        assert_eq!(body.len(), data.len());

        let status = |raw: &str| String::from_utf8_lossy(&exchange(addr, raw)).lines().next().unwrap_or("").to_string();
        assert!(status("GET /payloads/x.payload HTTP/1.1\r\nRange: bytes=100000-\r\nConnection: close\r\n\r\n").contains("416"));
        assert!(status("GET /missing HTTP/1.1\r\nConnection: close\r\n\r\n").contains("404"));
        assert!(status("GET /payloads/../../../etc/passwd HTTP/1.1\r\nConnection: close\r\n\r\n").contains("400"));
        assert!(status("DELETE /payloads/x.payload HTTP/1.1\r\n\r\n").contains("405"));
        assert!(status("NONSENSE\r\n\r\n").contains("400"));
        assert!(status(&format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(20000))).contains("400"), "an oversized head is refused");
    }
}
