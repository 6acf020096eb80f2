//! HTTP(S) from the repository: small metadata documents and the payload stream.

use std::io::{self, Read};
use std::time::Duration;

/// Times a broken payload download is picked up again.
pub const RETRIES: u32 = 5;
/// The wait before the first resumption; it doubles each time.
const RESUME_WAIT: Duration = Duration::from_secs(1);

pub struct Client {
    agent: ureq::Agent,
}

impl Default for Client {
    fn default() -> Client {
        Client::new()
    }
}

impl Client {
    pub fn new() -> Client {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(15)))
            .timeout_recv_response(Some(Duration::from_secs(30)))
            .timeout_per_read(Some(Duration::from_secs(60)))
            .user_agent(format!("basalt-update/{}", env!("CARGO_PKG_VERSION")))
            .build();
        Client { agent: ureq::Agent::new_with_config(config) }
    }

    fn get(&self, url: &str) -> Result<Option<ureq::http::Response<ureq::Body>>, String> {
        let resp = self.agent.get(url).call().map_err(|e| format!("{url}: {e}"))?;
        match resp.status().as_u16() {
            200 => Ok(Some(resp)),
            404 => Ok(None),
            s => Err(format!("{url}: HTTP {s}")),
        }
    }

    /// A document of at most `limit` bytes; `None` when the server has none.
    pub fn small(&self, url: &str, limit: usize) -> Result<Option<Vec<u8>>, String> {
        let Some(resp) = self.get(url)? else { return Ok(None) };
        let mut v = Vec::new();
        resp.into_body().into_with_config().limit(limit as u64 + 1).reader().read_to_end(&mut v).map_err(|e| format!("{url}: {e}"))?;
        if v.len() > limit {
            return Err(format!("{url}: larger than {limit} bytes"));
        }
        Ok(Some(v))
    }

    /// A stream of at most `limit` bytes. When the connection breaks it is
    /// picked up where it broke (a `Range` request, [`RETRIES`] times at
    /// most), provided the server answers with exactly that range.
    pub fn stream(&self, url: &str, limit: u64) -> Result<Resuming, String> {
        let resp = self.get(url)?.ok_or_else(|| format!("{url}: not found (HTTP 404)"))?;
        let validator = ["etag", "last-modified"].iter().find_map(|h| resp.headers().get(*h).and_then(|v| v.to_str().ok()).map(str::to_string));
        let body = Box::new(resp.into_body().into_with_config().limit(limit + 1).reader());
        Ok(Resuming { agent: self.agent.clone(), url: url.to_string(), limit, validator, body, offset: 0, resumed: 0, wait: RESUME_WAIT })
    }

    /// POST a JSON body (FleetLock); returns status and body.
    pub fn post_json(&self, url: &str, headers: &[(&str, &str)], body: &str) -> Result<(u16, String), String> {
        let mut req = self.agent.post(url).header("content-type", "application/json");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send(body).map_err(|e| format!("{url}: {e}"))?;
        let status = resp.status().as_u16();
        let mut text = String::new();
        let _ = resp.into_body().into_with_config().limit(64 << 10).reader().read_to_string(&mut text);
        Ok((status, text))
    }
}

/// A payload download that survives broken connections: on a read error it
/// asks for the rest with `Range: bytes=N-` (and `If-Range` with the first
/// answer's ETag or Last-Modified, so a file replaced meanwhile comes back
/// whole and is refused rather than spliced). The payload's signed sha256,
/// checked over every byte the stream yields, stays the final word.
pub struct Resuming {
    agent: ureq::Agent,
    url: String,
    limit: u64,
    validator: Option<String>,
    body: Box<dyn Read + Send>,
    offset: u64,
    resumed: u32,
    wait: Duration,
}

impl Resuming {
    fn open_range(agent: &ureq::Agent, url: &str, offset: u64, validator: Option<&str>, limit: u64) -> Result<Box<dyn Read + Send>, String> {
        let mut req = agent.get(url).header("range", format!("bytes={offset}-"));
        if let Some(v) = validator {
            req = req.header("if-range", v);
        }
        let resp = req.call().map_err(|e| format!("{url}: {e}"))?;
        let status = resp.status().as_u16();
        if status != 206 {
            return Err(format!("{url}: asked for the rest from byte {offset}, the server answered HTTP {status} (no range, or the file changed)"));
        }
        let range = resp.headers().get("content-range").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        let start = range.strip_prefix("bytes ").and_then(|r| r.split('-').next()).and_then(|n| n.parse::<u64>().ok());
        if start != Some(offset) {
            return Err(format!("{url}: asked for the rest from byte {offset}, the server sent Content-Range {range:?}"));
        }
        Ok(Box::new(resp.into_body().into_with_config().limit(limit.saturating_sub(offset) + 1).reader()))
    }

    /// How many times the download was picked up again.
    #[cfg(test)]
    fn resumed(&self) -> u32 {
        self.resumed
    }

    #[cfg(test)]
    fn quick(mut self) -> Self {
        self.wait = Duration::from_millis(10);
        self
    }
}

impl Read for Resuming {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let e = match self.body.read(buf) {
                Ok(n) => {
                    self.offset += n as u64;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if self.offset > self.limit => return Err(e),
                Err(e) => e,
            };
            let mut why = e.to_string();
            loop {
                if self.resumed == RETRIES {
                    return Err(io::Error::new(e.kind(), format!("{why} (gave up after resuming {RETRIES} times)")));
                }
                self.resumed += 1;
                eprintln!("{}: broke at byte {} ({why}); resuming, {} of {RETRIES}", self.url, self.offset, self.resumed);
                std::thread::sleep(self.wait);
                self.wait *= 2;
                match Self::open_range(&self.agent, &self.url, self.offset, self.validator.as_deref(), self.limit) {
                    Ok(body) => {
                        self.body = body;
                        break;
                    }
                    Err(w) => why = w,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::{Arc, Mutex};

    /// How the test server answers the n-th request (from 0), given its
    /// Range header: status line, extra headers, the body's bytes, and
    /// whether to hang up after part of them.
    type Plan = dyn Fn(usize, Option<&str>) -> (u16, String, std::ops::Range<usize>, bool) + Send + Sync;

    /// The Range and If-Range headers of each request, in order.
    type Seen = Arc<Mutex<Vec<(Option<String>, Option<String>)>>>;

    /// A server on loopback for `data`; the Range and If-Range headers of
    /// every request are kept.
    fn serve(data: Vec<u8>, plan: Box<Plan>) -> (String, Seen) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/p", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for (n, conn) in listener.incoming().enumerate() {
                let mut conn: TcpStream = conn.unwrap();
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let (mut range, mut if_range) = (None, None);
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                        break;
                    }
                    let lower = line.to_ascii_lowercase();
                    if let Some(v) = lower.strip_prefix("range:") {
                        range = Some(v.trim().to_string());
                    }
                    if lower.starts_with("if-range:") {
                        if_range = Some(line["if-range:".len()..].trim().to_string());
                    }
                }
                log.lock().unwrap().push((range.clone(), if_range));
                let (status, headers, body, hang_up) = plan(n, range.as_deref());
                let send = if hang_up { body.start..body.start + (body.end - body.start) / 2 } else { body.clone() };
                let head = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\nETag: \"v1\"\r\nConnection: close\r\n{headers}\r\n", body.len());
                let _ = conn.write_all(head.as_bytes());
                let _ = conn.write_all(&data[send]);
            }
        });
        (url, seen)
    }

    fn data() -> Vec<u8> {
        (0..300_000u32).map(|i| (i * 31 % 251) as u8).collect()
    }

    /// Answers a Range request with exactly that range.
    fn partial(range: Option<&str>, len: usize) -> (u16, String, std::ops::Range<usize>) {
        let from: usize = range.unwrap().strip_prefix("bytes=").unwrap().trim_end_matches('-').parse().unwrap();
        (206, format!("Content-Range: bytes {from}-{}/{len}\r\n", len - 1), from..len)
    }

    #[test]
    fn a_broken_download_resumes_where_it_broke() {
        let d = data();
        let len = d.len();
        let (url, seen) = serve(
            d.clone(),
            Box::new(move |n, range| match n {
                0 => (200, String::new(), 0..len, true),
                1 => {
                    let (s, h, r) = partial(range, len);
                    (s, h, r, true)
                }
                _ => {
                    let (s, h, r) = partial(range, len);
                    (s, h, r, false)
                }
            }),
        );
        let mut stream = Client::new().stream(&url, len as u64).unwrap().quick();
        let mut got = Vec::new();
        stream.read_to_end(&mut got).unwrap();
        assert!(got == d, "the stream is the file, {} bytes of {len}", got.len());
        assert_eq!(stream.resumed(), 2);
        let seen = seen.lock().unwrap();
        assert_eq!(seen[0], (None, None));
        assert_eq!(seen[1], (Some(format!("bytes={}-", len / 2)), Some("\"v1\"".to_string())), "asks for the rest, if unchanged");
        let second = len / 2 + (len - len / 2) / 2;
        assert_eq!(seen[2].0, Some(format!("bytes={second}-")));
    }

    #[test]
    fn a_server_that_cannot_resume_fails_the_download_with_the_reason() {
        let d = data();
        let len = d.len();
        let (url, _) = serve(d, Box::new(move |_, _| (200, String::new(), 0..len, true)));
        let mut stream = Client::new().stream(&url, len as u64).unwrap().quick();
        let e = stream.read_to_end(&mut Vec::new()).unwrap_err().to_string();
        assert!(e.contains(&format!("asked for the rest from byte {}, the server answered HTTP 200", len / 2)), "{e}");
        assert!(e.contains("gave up after resuming 5 times"), "{e}");
    }

    #[test]
    fn a_wrong_range_is_not_spliced_in() {
        let d = data();
        let len = d.len();
        let (url, _) = serve(
            d,
            Box::new(move |n, _| match n {
                0 => (200, String::new(), 0..len, true),
                _ => (206, format!("Content-Range: bytes 0-{}/{len}\r\n", len - 1), 0..len, false),
            }),
        );
        let mut stream = Client::new().stream(&url, len as u64).unwrap().quick();
        let e = stream.read_to_end(&mut Vec::new()).unwrap_err().to_string();
        assert!(e.contains("the server sent Content-Range \"bytes 0-"), "{e}");
    }
}
