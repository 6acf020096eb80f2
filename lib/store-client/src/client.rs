//! A small blocking client for the keys API, over TCP or the Unix socket,
//! with one keep-alive connection. What `basaltctl store get|set|rm|ls|watch`
//! calls, and what the tests and the benchmark drive both etcd and this store
//! with. It speaks plain HTTP/1.1 (Content-Length and chunked bodies).

use crate::error::{ErrorBody, ErrorCode, EtcdError};
use crate::event::Event;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

/// Where the store is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `host:port`
    Tcp(String),
    Unix(PathBuf),
}

impl Endpoint {
    /// `http://127.0.0.1:2379`, `127.0.0.1:2379`, `unix:/run/basalt/store.sock` or a socket path.
    pub fn parse(text: &str) -> Endpoint {
        if let Some(rest) = text.strip_prefix("unix://").or_else(|| text.strip_prefix("unix:")) {
            return Endpoint::Unix(rest.into());
        }
        if text.starts_with('/') {
            return Endpoint::Unix(text.into());
        }
        let rest = text.strip_prefix("http://").unwrap_or(text);
        Endpoint::Tcp(rest.trim_end_matches('/').to_string())
    }
}

impl Default for Endpoint {
    fn default() -> Self {
        Endpoint::Unix("/run/basalt/store.sock".into())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the store: {0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Etcd(EtcdError),
    #[error("unexpected answer from the store: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The etcd error code, if the store answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Etcd(e) => Some(e.code),
            _ => None,
        }
    }
}

/// A raw HTTP answer.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn etcd_index(&self) -> Option<u64> {
        self.header("X-Etcd-Index").and_then(|v| v.parse().ok())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A keys API answer: the event and the index the store was at.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub etcd_index: u64,
    pub event: Event,
}

/// Options of a write (PUT).
#[derive(Debug, Clone, Default)]
pub struct SetOptions {
    pub ttl: Option<u64>,
    pub dir: bool,
    pub prev_exist: Option<bool>,
    pub prev_value: Option<String>,
    pub prev_index: Option<u64>,
    pub refresh: bool,
}

trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

pub struct Client {
    endpoint: Endpoint,
    conn: Option<BufReader<Box<dyn Stream>>>,
    timeout: Option<Duration>,
}

/// Percent-encode all but unreserved characters (and `/` when `keep_slash`).
pub fn encode(text: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `a=1&b=2` from pairs.
pub fn form(pairs: &[(&str, &str)]) -> String {
    pairs.iter().map(|(k, v)| format!("{}={}", encode(k, false), encode(v, false))).collect::<Vec<_>>().join("&")
}

fn key_path(key: &str) -> String {
    let key = key.trim_start_matches('/');
    format!("/v2/keys/{}", encode(key, true))
}

impl Client {
    pub fn new(endpoint: Endpoint) -> Client {
        Client { endpoint, conn: None, timeout: Some(Duration::from_secs(30)) }
    }

    /// Read timeout for answers (None: wait forever, for watches).
    pub fn set_timeout(&mut self, timeout: Option<Duration>) {
        self.timeout = timeout;
        self.conn = None;
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    fn connect(&self) -> io::Result<Box<dyn Stream>> {
        Ok(match &self.endpoint {
            Endpoint::Tcp(addr) => {
                let s = TcpStream::connect(addr)?;
                s.set_nodelay(true)?;
                s.set_read_timeout(self.timeout)?;
                Box::new(s)
            }
            Endpoint::Unix(path) => {
                let s = UnixStream::connect(path)?;
                s.set_read_timeout(self.timeout)?;
                Box::new(s)
            }
        })
    }

    /// One request with a body of the given content type (JSON for etcd's v3 gateway).
    pub fn request_with_type(&mut self, method: &str, path: &str, content_type: &str, body: &str) -> io::Result<RawResponse> {
        let reused = self.conn.is_some();
        match self.request_typed(method, path, Some((content_type, body))) {
            Err(e) if reused && is_stale(&e) => {
                self.conn = None;
                self.request_typed(method, path, Some((content_type, body)))
            }
            other => other,
        }
    }

    /// One HTTP request; `body` is sent as a form. A kept-alive connection
    /// that the server closed meanwhile is reopened once.
    pub fn request(&mut self, method: &str, path_and_query: &str, body: Option<&str>) -> io::Result<RawResponse> {
        let reused = self.conn.is_some();
        match self.request_once(method, path_and_query, body) {
            Err(e) if reused && is_stale(&e) => {
                self.conn = None;
                self.request_once(method, path_and_query, body)
            }
            other => other,
        }
    }

    fn request_once(&mut self, method: &str, path_and_query: &str, body: Option<&str>) -> io::Result<RawResponse> {
        self.request_typed(method, path_and_query, body.map(|b| ("application/x-www-form-urlencoded", b)))
    }

    fn request_typed(&mut self, method: &str, path_and_query: &str, body: Option<(&str, &str)>) -> io::Result<RawResponse> {
        if self.conn.is_none() {
            self.conn = Some(BufReader::new(self.connect()?));
        }
        let host = match &self.endpoint {
            Endpoint::Tcp(a) => a.as_str(),
            Endpoint::Unix(_) => "localhost",
        };
        let mut head = format!("{method} {path_and_query} HTTP/1.1\r\nHost: {host}\r\n");
        if let Some((content_type, b)) = body {
            head.push_str(&format!("Content-Type: {content_type}\r\nContent-Length: {}\r\n", b.len()));
        }
        head.push_str("\r\n");
        let conn = self.conn.as_mut().expect("connected above");
        let mut bytes = head.into_bytes();
        if let Some((_, b)) = body {
            bytes.extend_from_slice(b.as_bytes());
        }
        let result = conn.get_mut().write_all(&bytes).and_then(|_| read_response(conn, method == "HEAD"));
        match result {
            Ok((resp, keep)) => {
                if !keep {
                    self.conn = None;
                }
                Ok(resp)
            }
            Err(e) => {
                self.conn = None;
                Err(e)
            }
        }
    }

    fn keys(&mut self, method: &str, key: &str, query: &[(&str, &str)], body: Option<&str>) -> Result<Response, ClientError> {
        let mut path = key_path(key);
        if !query.is_empty() {
            path.push('?');
            path.push_str(&form(query));
        }
        let raw = self.request(method, &path, body)?;
        parse_keys_response(&raw)
    }

    pub fn get(&mut self, key: &str, recursive: bool) -> Result<Response, ClientError> {
        let q: &[(&str, &str)] = if recursive { &[("recursive", "true"), ("sorted", "true")] } else { &[] };
        self.keys("GET", key, q, None)
    }

    pub fn set(&mut self, key: &str, value: &str, opts: &SetOptions) -> Result<Response, ClientError> {
        let ttl = opts.ttl.map(|t| t.to_string());
        let prev_index = opts.prev_index.map(|i| i.to_string());
        let mut pairs: Vec<(&str, &str)> = Vec::new();
        if opts.dir {
            pairs.push(("dir", "true"));
        } else if !opts.refresh {
            pairs.push(("value", value));
        }
        if let Some(t) = &ttl {
            pairs.push(("ttl", t));
        }
        if let Some(e) = opts.prev_exist {
            pairs.push(("prevExist", if e { "true" } else { "false" }));
        }
        if let Some(v) = &opts.prev_value {
            pairs.push(("prevValue", v));
        }
        if let Some(i) = &prev_index {
            pairs.push(("prevIndex", i));
        }
        if opts.refresh {
            pairs.push(("refresh", "true"));
        }
        self.keys("PUT", key, &[], Some(&form(&pairs)))
    }

    /// POST: a new in-order key below `dir`.
    pub fn append(&mut self, dir: &str, value: &str) -> Result<Response, ClientError> {
        self.keys("POST", dir, &[], Some(&form(&[("value", value)])))
    }

    pub fn delete(&mut self, key: &str, recursive: bool) -> Result<Response, ClientError> {
        let q: &[(&str, &str)] = if recursive { &[("recursive", "true")] } else { &[] };
        self.keys("DELETE", key, q, None)
    }

    /// Delete only if the value (and/or index) still match.
    pub fn compare_and_delete(&mut self, key: &str, prev_value: Option<&str>, prev_index: Option<u64>) -> Result<Response, ClientError> {
        let idx = prev_index.map(|i| i.to_string());
        let mut q: Vec<(&str, &str)> = Vec::new();
        if let Some(v) = prev_value {
            q.push(("prevValue", v));
        }
        if let Some(i) = &idx {
            q.push(("prevIndex", i));
        }
        self.keys("DELETE", key, &q, None)
    }

    /// Wait for the next change at or below `key` (from `wait_index`, 0: the next one).
    pub fn watch(&mut self, key: &str, recursive: bool, wait_index: u64) -> Result<Response, ClientError> {
        let idx = wait_index.to_string();
        let mut q: Vec<(&str, &str)> = vec![("wait", "true")];
        if recursive {
            q.push(("recursive", "true"));
        }
        if wait_index > 0 {
            q.push(("waitIndex", &idx));
        }
        self.keys("GET", key, &q, None)
    }

    /// The immediate children of a directory (their full keys).
    pub fn ls(&mut self, dir: &str) -> Result<Vec<String>, ClientError> {
        let r = self.keys("GET", dir, &[("sorted", "true")], None)?;
        Ok(r.event.node.nodes.into_iter().map(|n| n.key).collect())
    }
}

fn is_stale(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset | io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionAborted)
}

/// Turn an answer into an event, or the etcd error it carries.
pub fn parse_keys_response(raw: &RawResponse) -> Result<Response, ClientError> {
    let index = raw.etcd_index().unwrap_or(0);
    if raw.status >= 400 {
        let body: ErrorBody = serde_json::from_slice(&raw.body).map_err(|_| ClientError::Protocol(format!("HTTP {}: {}", raw.status, raw.text().trim())))?;
        let code = ErrorCode::from_number(body.error_code).ok_or_else(|| ClientError::Protocol(format!("unknown error code {}: {}", body.error_code, body.message)))?;
        return Err(ClientError::Etcd(EtcdError::new(code, body.cause, body.index)));
    }
    let event: Event = serde_json::from_slice(&raw.body).map_err(|e| ClientError::Protocol(format!("HTTP {}: {e}: {}", raw.status, raw.text().trim())))?;
    Ok(Response { status: raw.status, etcd_index: index, event })
}

/// Read one response; also says whether the connection may be reused.
fn read_response<R: BufRead>(r: &mut R, head_only: bool) -> io::Result<(RawResponse, bool)> {
    let bad = |m: String| io::Error::new(io::ErrorKind::InvalidData, m);
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed before an answer"));
    }
    let mut parts = line.split_whitespace();
    let version = parts.next().unwrap_or("").to_string();
    let status: u16 = parts.next().and_then(|s| s.parse().ok()).ok_or_else(|| bad(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed in the headers"));
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let get = |n: &str| headers.iter().find(|(k, _): &&(String, String)| k.eq_ignore_ascii_case(n)).map(|(_, v)| v.clone());
    let mut keep = version == "HTTP/1.1" && !get("Connection").is_some_and(|c| c.eq_ignore_ascii_case("close"));
    let mut body = Vec::new();
    if head_only || status == 204 || status == 304 || (100..200).contains(&status) {
    } else if get("Transfer-Encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
        loop {
            line.clear();
            r.read_line(&mut line)?;
            let size_text = line.trim().split(';').next().unwrap_or("");
            let size = usize::from_str_radix(size_text, 16).map_err(|_| bad(format!("bad chunk size {line:?}")))?;
            if size == 0 {
                // Trailers, then the blank line.
                loop {
                    line.clear();
                    if r.read_line(&mut line)? == 0 || line.trim().is_empty() {
                        break;
                    }
                }
                break;
            }
            let start = body.len();
            body.resize(start + size, 0);
            r.read_exact(&mut body[start..])?;
            line.clear();
            r.read_line(&mut line)?;
        }
    } else if let Some(len) = get("Content-Length") {
        let len: usize = len.parse().map_err(|_| bad(format!("bad Content-Length {len:?}")))?;
        body.resize(len, 0);
        r.read_exact(&mut body)?;
    } else {
        r.read_to_end(&mut body)?;
        keep = false;
    }
    Ok((RawResponse { status, headers, body }, keep))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_and_encoding() {
        assert_eq!(Endpoint::parse("http://127.0.0.1:2379/"), Endpoint::Tcp("127.0.0.1:2379".into()));
        assert_eq!(Endpoint::parse("unix:/run/s.sock"), Endpoint::Unix("/run/s.sock".into()));
        assert_eq!(Endpoint::parse("/run/s.sock"), Endpoint::Unix("/run/s.sock".into()));
        assert_eq!(key_path("/a b/c"), "/v2/keys/a%20b/c");
        assert_eq!(form(&[("value", "x=1&y"), ("ttl", "5")]), "value=x%3D1%26y&ttl=5");
    }

    #[test]
    fn reads_chunked_and_sized_answers() {
        let text = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Etcd-Index: 9\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
        let (r, keep) = read_response(&mut BufReader::new(text.as_bytes()), false).unwrap();
        assert_eq!((r.status, r.text().as_str(), r.etcd_index(), keep), (200, "hello world", Some(9), true));
        let body = r#"{"errorCode":100,"message":"Key not found","cause":"/nope","index":2}"#;
        let text = format!("HTTP/1.1 404 Not Found\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
        let (r, keep) = read_response(&mut BufReader::new(text.as_bytes()), false).unwrap();
        assert!(!keep);
        let e = parse_keys_response(&r).unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::KeyNotFound));
    }
}
