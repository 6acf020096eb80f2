//! A client of the OCI distribution API (`/v2/`): manifests and blobs by
//! digest, anonymous, with HTTP basic credentials, or with bearer tokens from
//! the registry's token service (the Docker token protocol), over HTTPS with
//! the system's web roots or a per-registry CA, or plain HTTP for registries
//! marked insecure. Blob downloads can start at an offset (HTTP Range) so an
//! interrupted pull resumes.

use std::io::Read;
use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;

use crate::digest::Digest;
use crate::reference::Reference;
use crate::settings::RegistrySettings;

/// A manifest as the registry answered it: the body, its Content-Type and its
/// Docker-Content-Digest header (both as sent, when sent).
pub type ManifestReply = (Vec<u8>, Option<String>, Option<String>);

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{registry}: {message}")]
    Http { registry: String, message: String },
    #[error("{registry}: {what} not found (HTTP 404): {url}")]
    NotFound { registry: String, what: String, url: String },
    #[error("{registry}: access denied to {repository} (HTTP {status}){hint}")]
    Denied { registry: String, repository: String, status: u16, hint: &'static str },
    #[error("{0}")]
    Settings(String),
}

pub struct Client {
    agent: ureq::Agent,
    registry: String,
    base: String,
    repository: String,
    credentials: Option<(String, String)>,
    /// The Authorization header that last worked (or was handed out).
    authorization: Option<String>,
}

/// A blob's bytes, from `offset` on.
pub struct BlobStream {
    pub offset: u64,
    pub reader: Box<dyn Read + Send>,
}

impl Client {
    pub fn new(reference: &Reference, settings: &RegistrySettings) -> Result<Client, RegistryError> {
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(30)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .timeout_per_read(Some(Duration::from_secs(60)))
            .user_agent(concat!("basalt-runtime/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &settings.ca {
            let pem = std::fs::read(ca).map_err(|e| RegistryError::Settings(format!("registry {}: reading its CA {}: {e}", reference.registry, ca.display())))?;
            let certs: Vec<ureq::tls::Certificate<'static>> = ureq::tls::parse_pem(&pem)
                .filter_map(|item| match item {
                    Ok(ureq::tls::PemItem::Certificate(cert)) => Some(Ok(cert)),
                    Ok(_) => None,
                    Err(e) => Some(Err(e)),
                })
                .collect::<Result<_, _>>()
                .map_err(|e| RegistryError::Settings(format!("registry {}: CA {}: {e}", reference.registry, ca.display())))?;
            if certs.is_empty() {
                return Err(RegistryError::Settings(format!("registry {}: CA {} holds no PEM certificate", reference.registry, ca.display())));
            }
            config = config.tls_config(ureq::tls::TlsConfig::builder().root_certs(ureq::tls::RootCerts::new_with_certs(&certs)).build());
        }
        let scheme = if settings.insecure { "http" } else { "https" };
        let credentials = match (&settings.username, &settings.password) {
            (Some(user), Some(password)) => Some((user.clone(), password.clone())),
            (None, None) => None,
            _ => return Err(RegistryError::Settings(format!("registry {}: username and password go together", reference.registry))),
        };
        Ok(Client {
            agent: config.build().new_agent(),
            registry: reference.registry.clone(),
            base: format!("{scheme}://{}/v2/{}", reference.api_host(), reference.repository),
            repository: reference.repository.clone(),
            credentials,
            authorization: None,
        })
    }

    fn http_error(&self, message: String) -> RegistryError {
        RegistryError::Http { registry: self.registry.clone(), message }
    }

    /// GET with authentication: on a 401 challenge, authenticate as the
    /// registry asks (Basic or Bearer) and try once more.
    fn get(&mut self, url: &str, headers: &[(&str, String)]) -> Result<ureq::http::Response<ureq::Body>, RegistryError> {
        let mut challenged = false;
        loop {
            let mut request = self.agent.get(url);
            for (name, value) in headers {
                request = request.header(*name, value);
            }
            if let Some(authorization) = &self.authorization {
                request = request.header("Authorization", authorization);
            }
            let response = request.call().map_err(|e| self.http_error(format!("GET {url}: {e}")))?;
            if response.status() != 401 || challenged {
                return Ok(response);
            }
            challenged = true;
            let challenge = response.headers().get("www-authenticate").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
            self.authorization = Some(self.authenticate(&challenge)?);
        }
    }

    fn basic(&self) -> Option<String> {
        self.credentials.as_ref().map(|(user, password)| format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))))
    }

    fn authenticate(&mut self, challenge: &str) -> Result<String, RegistryError> {
        let (scheme, params) = challenge.split_once(' ').unwrap_or((challenge, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return self.basic().ok_or_else(|| RegistryError::Denied {
                registry: self.registry.clone(),
                repository: self.repository.clone(),
                status: 401,
                hint: ": the registry wants a username and password (set them for this registry in the runtime's settings)",
            });
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(self.http_error(format!("unsupported authentication challenge {challenge:?}")));
        }
        let params = challenge_params(params);
        let realm = params.iter().find(|(k, _)| k == "realm").map(|(_, v)| v.clone()).ok_or_else(|| self.http_error(format!("bearer challenge without a realm: {challenge:?}")))?;
        let mut query = Vec::new();
        if let Some((_, service)) = params.iter().find(|(k, _)| k == "service") {
            query.push(format!("service={}", url_encode(service)));
        }
        let scope = params.iter().find(|(k, _)| k == "scope").map(|(_, v)| v.clone()).unwrap_or_else(|| format!("repository:{}:pull", self.repository));
        query.push(format!("scope={}", url_encode(&scope)));
        let token_url = format!("{realm}{}{}", if realm.contains('?') { "&" } else { "?" }, query.join("&"));
        let mut request = self.agent.get(&token_url);
        if let Some(basic) = self.basic() {
            request = request.header("Authorization", basic);
        }
        let response = request.call().map_err(|e| self.http_error(format!("token service {realm}: {e}")))?;
        let status = response.status().as_u16();
        if status == 401 || status == 403 {
            return Err(RegistryError::Denied { registry: self.registry.clone(), repository: self.repository.clone(), status, hint: ": the token service refused the credentials" });
        }
        if status != 200 {
            return Err(self.http_error(format!("token service {realm} answered HTTP {status}")));
        }
        #[derive(Deserialize)]
        struct TokenAnswer {
            token: Option<String>,
            access_token: Option<String>,
        }
        let body = read_limited(response.into_body().into_reader(), 1 << 20).map_err(|e| self.http_error(format!("token service {realm}: {e}")))?;
        let answer: TokenAnswer = serde_json::from_slice(&body).map_err(|e| self.http_error(format!("token service {realm}: not a token answer: {e}")))?;
        let token = answer.token.or(answer.access_token).filter(|t| !t.is_empty()).ok_or_else(|| self.http_error(format!("token service {realm} gave no token")))?;
        Ok(format!("Bearer {token}"))
    }

    fn check_status(&self, response: &ureq::http::Response<ureq::Body>, url: &str, what: &str, expected: &[u16]) -> Result<(), RegistryError> {
        let status = response.status().as_u16();
        match status {
            s if expected.contains(&s) => Ok(()),
            404 => Err(RegistryError::NotFound { registry: self.registry.clone(), what: what.to_string(), url: url.to_string() }),
            401 | 403 => Err(RegistryError::Denied {
                registry: self.registry.clone(),
                repository: self.repository.clone(),
                status,
                hint: if self.credentials.is_none() { ": the repository may need credentials" } else { "" },
            }),
            s => Err(self.http_error(format!("GET {url}: HTTP {s}"))),
        }
    }

    /// A manifest or index by tag or digest: its bytes and Content-Type. The
    /// caller verifies the digest.
    pub fn manifest(&mut self, reference: &str) -> Result<ManifestReply, RegistryError> {
        let url = format!("{}/manifests/{reference}", self.base);
        let response = self.get(&url, &[("Accept", crate::manifest::ACCEPT.to_string())])?;
        self.check_status(&response, &url, &format!("manifest {reference}"), &[200])?;
        let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        let content_type = header("content-type");
        let digest = header("docker-content-digest");
        let limit = crate::manifest::MAX_MANIFEST_BYTES;
        let body = read_limited(response.into_body().into_reader(), limit).map_err(|e| self.http_error(format!("manifest {reference}: {e}")))?;
        Ok((body, content_type, digest))
    }

    /// A blob's bytes from `offset` on. A registry that ignores the Range
    /// header answers with the whole blob; `offset` in the answer says which.
    pub fn blob(&mut self, digest: &Digest, offset: u64) -> Result<BlobStream, RegistryError> {
        let url = format!("{}/blobs/{digest}", self.base);
        let headers: Vec<(&str, String)> = if offset > 0 { vec![("Range", format!("bytes={offset}-"))] } else { vec![] };
        let response = self.get(&url, &headers)?;
        if response.status() == 416 {
            return Err(self.http_error(format!("blob {digest}: the registry has no bytes past {offset} (HTTP 416)")));
        }
        self.check_status(&response, &url, &format!("blob {digest}"), &[200, 206])?;
        let start = if response.status() == 206 { offset } else { 0 };
        Ok(BlobStream { offset: start, reader: Box::new(response.into_body().into_reader()) })
    }
}

fn read_limited(reader: impl Read, limit: u64) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    reader.take(limit + 1).read_to_end(&mut body)?;
    if body.len() as u64 > limit {
        return Err(std::io::Error::other(format!("more than {limit} bytes")));
    }
    Ok(body)
}

/// `realm="https://auth",service="registry",scope="repository:a:pull"`.
fn challenge_params(text: &str) -> Vec<(String, String)> {
    let mut params = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else { break };
        let key = key.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let (value, after) = if let Some(quoted) = after.strip_prefix('"') {
            match quoted.find('"') {
                Some(end) => (&quoted[..end], &quoted[end + 1..]),
                None => (quoted, ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (&after[..end], &after[end..]),
                None => (after, ""),
            }
        };
        params.push((key, value.to_string()));
        rest = after.trim_start_matches([',', ' ']);
    }
    params
}

fn url_encode(text: &str) -> String {
    text.bytes().map(|b| if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_challenges_split_into_parameters() {
        let params = challenge_params(r#"realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#);
        assert_eq!(params[0], ("realm".into(), "https://auth.docker.io/token".into()));
        assert_eq!(params[1], ("service".into(), "registry.docker.io".into()));
        assert_eq!(params[2], ("scope".into(), "repository:library/busybox:pull".into()));
        assert_eq!(url_encode("repository:a/b:pull"), "repository%3Aa%2Fb%3Apull");
    }
}
