//! A signed HTTP client for one AWS service in one region, with retries for
//! what AWS asks clients to retry (throttling, 5xx, dropped connections).

use super::sigv4::{self, Credentials};
use anyhow::{bail, Context, Result};
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Test hook: every request is appended to this file as one JSON line, so
/// tests can check what was sent (moto accepts much that AWS would not).
pub const REQUEST_LOG_ENV: &str = "BASALT_AWS_REQUEST_LOG";

#[derive(Clone)]
pub struct Client {
    agent: ureq::Agent,
    creds: Credentials,
    pub region: String,
    service: &'static str,
    endpoint: String,
    log: Option<Arc<Mutex<std::fs::File>>>,
}

pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Client {
    pub fn new(creds: Credentials, region: &str, service: &'static str, endpoint: &str) -> Result<Client> {
        let agent = ureq::Agent::new_with_config(ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(120))).max_idle_connections_per_host(64).build());
        let log = match std::env::var_os(REQUEST_LOG_ENV) {
            Some(p) => Some(Arc::new(Mutex::new(std::fs::OpenOptions::new().create(true).append(true).open(&p).context("opening the request log")?))),
            None => None,
        };
        Ok(Client { agent, creds, region: region.to_string(), service, endpoint: endpoint.to_string(), log })
    }

    /// One signed request; `path` is already percent-encoded.
    pub fn call(&self, method: &str, path: &str, query: &[(String, String)], headers: &[(String, String)], body: &[u8]) -> Result<Response> {
        let host_and_port = self.endpoint.split("://").nth(1).unwrap_or(&self.endpoint).split('/').next().unwrap_or("");
        // The Host header ureq sends leaves out the default port.
        let host = host_and_port
            .strip_suffix(":443")
            .filter(|_| self.endpoint.starts_with("https://"))
            .or_else(|| host_and_port.strip_suffix(":80").filter(|_| self.endpoint.starts_with("http://")))
            .unwrap_or(host_and_port);
        let amz_date = sigv4::amz_date(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs());
        let signed = sigv4::sign(&sigv4::Request { method, host, path, query, headers, payload: body, region: &self.region, service: self.service, amz_date: &amz_date }, &self.creds);
        let mut url = format!("{}{path}", self.endpoint);
        if !query.is_empty() {
            url.push('?');
            url.push_str(&sigv4::canonical_query(query));
        }
        if let Some(log) = &self.log {
            let entry = serde_json::json!({
                "service": self.service,
                "region": self.region,
                "method": method,
                "path": path,
                "query": query.iter().map(|(k, v)| serde_json::json!([k, v])).collect::<Vec<_>>(),
                "headers": headers.iter().map(|(k, v)| serde_json::json!([k, v])).collect::<Vec<_>>(),
                "body_len": body.len(),
                "body_sha256": sigv4::sha256_hex(body),
                "body_text": if body.len() <= 65536 { std::str::from_utf8(body).ok() } else { None },
            });
            let mut f = log.lock().unwrap();
            writeln!(f, "{entry}")?;
        }
        let mut builder = ureq::http::Request::builder().method(method).uri(&url);
        for (k, v) in headers.iter().chain(signed.iter()) {
            builder = builder.header(k.as_str(), v.as_str());
        }
        let request = builder.body(body.to_vec())?;
        let mut resp = self.agent.run(request).with_context(|| format!("{} {method} {path}", self.service))?;
        let status = resp.status().as_u16();
        let body = resp.body_mut().with_config().limit(64 << 20).read_to_vec()?;
        Ok(Response { status, body })
    }

    /// `call`, retried with backoff on throttling, 5xx and transport errors;
    /// other 4xx fail at once with AWS's message.
    pub fn call_ok(&self, what: &str, method: &str, path: &str, query: &[(String, String)], headers: &[(String, String)], body: &[u8]) -> Result<Response> {
        let mut delay = Duration::from_millis(200);
        let attempts = 6;
        for attempt in 1..=attempts {
            let result = self.call(method, path, query, headers, body);
            let retry_reason = match &result {
                Ok(r) if (200..300).contains(&r.status) => return result,
                Ok(r) if r.status == 429 || r.status >= 500 || r.text().contains("Throttl") => format!("HTTP {}: {}", r.status, short(&r.text())),
                Ok(r) => bail!("{what} failed: HTTP {}: {}", r.status, short(&r.text())),
                Err(e) => format!("{e:#}"),
            };
            if attempt == attempts {
                bail!("{what} failed after {attempts} attempts: {retry_reason}");
            }
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_secs(10));
        }
        unreachable!()
    }
}

fn short(s: &str) -> String {
    let s = s.trim();
    if s.len() > 400 {
        format!("{}...", &s[..s.char_indices().nth(400).map(|(i, _)| i).unwrap_or(s.len())])
    } else {
        s.to_string()
    }
}
