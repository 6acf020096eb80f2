//! HTTP(S) from the repository: small metadata documents and the payload stream.

use std::io::Read;
use std::time::Duration;

pub struct Client {
    agent: ureq::Agent,
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

    /// A stream of at most `limit` bytes.
    pub fn stream(&self, url: &str, limit: u64) -> Result<impl Read, String> {
        let resp = self.get(url)?.ok_or_else(|| format!("{url}: not found (HTTP 404)"))?;
        Ok(resp.into_body().into_with_config().limit(limit + 1).reader())
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
