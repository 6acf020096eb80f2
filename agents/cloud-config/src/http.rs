//! Just enough HTTP/1.1 for metadata services and a config URL: one request
//! per connection, Content-Length, chunked or read-to-close bodies, a size
//! cap and timeouts. No TLS: the agent stays small and static, and metadata
//! services are plain HTTP anyway.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("{url}: only http:// URLs are supported (the agent has no TLS)")]
    Scheme { url: String },
    #[error("{url}: not a valid URL")]
    Url { url: String },
    /// Could not reach the server at all: worth retrying while the network comes up.
    #[error("{url}: {source}")]
    Connect { url: String, source: std::io::Error },
    #[error("{url}: {message}")]
    Protocol { url: String, message: String },
    #[error("{url}: the response is larger than {limit} bytes")]
    TooLarge { url: String, limit: usize },
}

impl HttpError {
    /// Whether trying again later could help.
    pub fn is_transient(&self) -> bool {
        matches!(self, HttpError::Connect { .. })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

struct Target {
    host: String,
    port: u16,
    path: String,
}

fn split_url(url: &str) -> Result<Target, HttpError> {
    let rest = url.strip_prefix("http://").ok_or_else(|| if url.starts_with("https://") { HttpError::Scheme { url: url.into() } } else { HttpError::Url { url: url.into() } })?;
    let (authority, path) = match rest.find('/') {
        Some(index) => (&rest[..index], &rest[index..]),
        None => (rest, "/"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || authority.starts_with('[') => (host, port.parse().map_err(|_| HttpError::Url { url: url.into() })?),
        _ => (authority, 80),
    };
    if host.is_empty() {
        return Err(HttpError::Url { url: url.into() });
    }
    Ok(Target { host: host.trim_matches(['[', ']']).to_string(), port, path: path.to_string() })
}

/// Sends one request and reads the whole response (at most `limit` body bytes).
pub fn request(method: &str, url: &str, headers: &[(&str, &str)], timeout: Duration, limit: usize) -> Result<Response, HttpError> {
    let target = split_url(url)?;
    let connect = |source| HttpError::Connect { url: url.to_string(), source };
    let protocol = |message: String| HttpError::Protocol { url: url.to_string(), message };
    let address = (target.host.as_str(), target.port).to_socket_addrs().map_err(connect)?.next().ok_or_else(|| connect(std::io::Error::new(std::io::ErrorKind::NotFound, "no address")))?;
    let mut stream = TcpStream::connect_timeout(&address, timeout).map_err(connect)?;
    stream.set_read_timeout(Some(timeout)).map_err(connect)?;
    stream.set_write_timeout(Some(timeout)).map_err(connect)?;
    let host_header = if target.port == 80 { target.host.clone() } else { format!("{}:{}", target.host, target.port) };
    let mut head = format!("{method} {} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: basalt-cloud-config\r\nConnection: close\r\n", target.path);
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if method == "PUT" || method == "POST" {
        head.push_str("Content-Length: 0\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).map_err(connect)?;

    let mut reader = BufReader::new(stream);
    let mut status_line = String::new();
    reader.read_line(&mut status_line).map_err(connect)?;
    let status: u16 = status_line.split_whitespace().nth(1).and_then(|code| code.parse().ok()).ok_or_else(|| protocol(format!("not an HTTP response: {:?}", status_line.trim_end())))?;
    let mut content_length = None;
    let mut chunked = false;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).map_err(connect)? == 0 {
            break;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                content_length = Some(value.parse::<usize>().map_err(|_| protocol(format!("bad Content-Length {value:?}")))?);
            } else if name.eq_ignore_ascii_case("transfer-encoding") && value.eq_ignore_ascii_case("chunked") {
                chunked = true;
            }
        }
    }
    let too_large = || HttpError::TooLarge { url: url.to_string(), limit };
    let mut body = Vec::new();
    if method == "HEAD" || status == 204 || status == 304 {
    } else if chunked {
        loop {
            let mut size_line = String::new();
            reader.read_line(&mut size_line).map_err(connect)?;
            let size_text = size_line.trim().split(';').next().unwrap_or("");
            let size = usize::from_str_radix(size_text, 16).map_err(|_| protocol(format!("bad chunk size {size_text:?}")))?;
            if size == 0 {
                break;
            }
            if body.len() + size > limit {
                return Err(too_large());
            }
            let start = body.len();
            body.resize(start + size, 0);
            reader.read_exact(&mut body[start..]).map_err(connect)?;
            let mut crlf = [0u8; 2];
            reader.read_exact(&mut crlf).map_err(connect)?;
        }
    } else if let Some(length) = content_length {
        if length > limit {
            return Err(too_large());
        }
        body.resize(length, 0);
        reader.read_exact(&mut body).map_err(connect)?;
    } else {
        reader.take(limit as u64 + 1).read_to_end(&mut body).map_err(connect)?;
        if body.len() > limit {
            return Err(too_large());
        }
    }
    Ok(Response { status, body })
}

#[cfg(test)]
pub(crate) mod testserver {
    //! A real HTTP server on 127.0.0.1 for tests, answering from a closure.

    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};

    pub struct Request {
        pub method: String,
        pub path: String,
        pub headers: Vec<(String, String)>,
    }

    impl Request {
        pub fn header(&self, name: &str) -> Option<&str> {
            self.headers.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
        }
    }

    pub struct Server {
        pub url: String,
        pub log: Arc<Mutex<Vec<String>>>,
    }

    /// Serves until the test process ends; each request is logged as `METHOD path`.
    pub fn serve(handler: impl Fn(&Request) -> (u16, Vec<u8>) + Send + 'static) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let log = Arc::new(Mutex::new(Vec::new()));
        let server_log = log.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                if reader.read_line(&mut line).is_err() {
                    continue;
                }
                let mut words = line.split_whitespace();
                let method = words.next().unwrap_or("").to_string();
                let path = words.next().unwrap_or("").to_string();
                let mut headers = Vec::new();
                loop {
                    let mut header = String::new();
                    if reader.read_line(&mut header).unwrap_or(0) == 0 || header.trim().is_empty() {
                        break;
                    }
                    if let Some((name, value)) = header.trim_end().split_once(':') {
                        headers.push((name.trim().to_string(), value.trim().to_string()));
                    }
                }
                let request = Request { method, path, headers };
                server_log.lock().unwrap().push(format!("{} {}", request.method, request.path));
                let (status, body) = handler(&request);
                let head = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&body);
            }
        });
        Server { url, log }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_get_reads_status_and_body() {
        let server = testserver::serve(|request| match request.path.as_str() {
            "/hello" => (200, b"hi there".to_vec()),
            _ => (404, b"no".to_vec()),
        });
        let response = request("GET", &format!("{}/hello", server.url), &[], Duration::from_secs(5), 1024).unwrap();
        assert_eq!((response.status, response.body.as_slice()), (200, &b"hi there"[..]));
        let response = request("GET", &format!("{}/other", server.url), &[], Duration::from_secs(5), 1024).unwrap();
        assert_eq!(response.status, 404);
        let error = request("GET", &format!("{}/hello", server.url), &[], Duration::from_secs(5), 4).unwrap_err();
        assert!(matches!(error, HttpError::TooLarge { .. }), "{error}");
    }

    #[test]
    fn https_and_refused_connections_are_told_apart() {
        assert!(matches!(request("GET", "https://example.com/", &[], Duration::from_secs(1), 10), Err(HttpError::Scheme { .. })));
        // A port just released by the OS is closed.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let error = request("GET", &format!("http://127.0.0.1:{port}/"), &[], Duration::from_secs(1), 10).unwrap_err();
        assert!(error.is_transient(), "{error}");
    }
}
