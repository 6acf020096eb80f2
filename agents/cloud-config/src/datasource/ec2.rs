//! EC2 instance metadata. IMDSv2 first (`PUT /latest/api/token` with
//! `X-aws-ec2-metadata-token-ttl-seconds`, then every `GET` with
//! `X-aws-ec2-metadata-token`); if the service refuses the token request it
//! is asked again without one (IMDSv1).
//!
//! Tried only where it can answer: when the firmware says Amazon (DMI
//! vendor, an `i-` asset tag, a Xen `ec2` UUID), when the kernel command line
//! says `basalt.datasource=ec2` or names `basalt.imds_url=`, when QEMU's
//! fw_cfg names one (`opt/org.basalt/imds-url`: a metadata service the host
//! runs, for local runs and the end-to-end tests), or when the environment
//! names a URL (tests). Elsewhere probing a link-local address
//! would only slow every boot down.

use super::cmdline::{DATASOURCE, IMDS_URL};
use super::fw_cfg;
use super::{with_retries, Datasource, DatasourceError, Environment, Found, READ_LIMIT};
use crate::http::{self, HttpError};
use crate::metadata::Metadata;

pub const DEFAULT_URL: &str = "http://169.254.169.254";
const TOKEN_TTL_SECONDS: &str = "21600";

pub struct Ec2;

impl Ec2 {
    /// The metadata service to ask, or `None` when this is not EC2.
    fn base_url(environment: &Environment) -> Option<String> {
        if let Some(url) = &environment.imds_url {
            return Some(url.trim_end_matches('/').to_string());
        }
        let cmdline = environment.kernel_command_line();
        if let Some(url) = cmdline.get(IMDS_URL) {
            return Some(url.trim_end_matches('/').to_string());
        }
        if let Some(url) = fw_cfg::setting(environment, fw_cfg::IMDS_URL_NAME) {
            return Some(url.trim_end_matches('/').to_string());
        }
        if cmdline.get(DATASOURCE) == Some("ec2") || on_ec2(environment) {
            return Some(DEFAULT_URL.to_string());
        }
        None
    }
}

fn on_ec2(environment: &Environment) -> bool {
    let read = |path: &str| std::fs::read_to_string(environment.sys.join(path)).unwrap_or_default().trim().to_string();
    read("class/dmi/id/sys_vendor").contains("Amazon")
        || read("class/dmi/id/bios_vendor").contains("Amazon")
        || read("class/dmi/id/board_asset_tag").starts_with("i-")
        || read("hypervisor/uuid").to_ascii_lowercase().starts_with("ec2")
}

struct Client<'a> {
    base: String,
    token: Option<String>,
    environment: &'a Environment,
}

impl Client<'_> {
    /// Gets an IMDSv2 token; `Ok(None)` means the service wants IMDSv1.
    fn token(&self) -> Result<Option<String>, HttpError> {
        let url = format!("{}/latest/api/token", self.base);
        let response = with_retries(&self.environment.retry, || http::request("PUT", &url, &[("X-aws-ec2-metadata-token-ttl-seconds", TOKEN_TTL_SECONDS)], self.environment.retry.timeout, 4096))?;
        Ok((response.status == 200).then(|| String::from_utf8_lossy(&response.body).trim().to_string()))
    }

    /// A metadata path; `Ok(None)` for 404.
    fn get(&self, path: &str) -> Result<Option<Vec<u8>>, DatasourceError> {
        let url = format!("{}/latest/{path}", self.base);
        let headers: Vec<(&str, &str)> = self.token.iter().map(|token| ("X-aws-ec2-metadata-token", token.as_str())).collect();
        let response = with_retries(&self.environment.retry, || http::request("GET", &url, &headers, self.environment.retry.timeout, READ_LIMIT))?;
        match response.status {
            200 => Ok(Some(response.body)),
            404 => Ok(None),
            status => Err(DatasourceError::Status { url, status }),
        }
    }

    fn get_text(&self, path: &str) -> Result<Option<String>, DatasourceError> {
        Ok(self.get(path)?.map(|bytes| String::from_utf8_lossy(&bytes).trim().to_string()).filter(|text| !text.is_empty()))
    }
}

impl Datasource for Ec2 {
    fn name(&self) -> &'static str {
        "ec2"
    }

    fn needs_network(&self, environment: &Environment) -> bool {
        Ec2::base_url(environment).is_some()
    }

    fn fetch(&self, environment: &Environment) -> Result<Option<Found>, DatasourceError> {
        let Some(base) = Ec2::base_url(environment) else { return Ok(None) };
        let mut client = Client { base, token: None, environment };
        client.token = match client.token() {
            Ok(token) => token,
            // Nobody answered within the retries: no metadata service here.
            Err(error) if error.is_transient() => return Ok(None),
            Err(error) => return Err(error.into()),
        };
        let Some(instance_id) = client.get_text("meta-data/instance-id")? else { return Ok(None) };
        let mut public_keys = Vec::new();
        // `public-keys/` lists `0=name` lines; each key is at `public-keys/N/openssh-key`.
        for line in client.get_text("meta-data/public-keys/")?.unwrap_or_default().lines() {
            let index = line.split('=').next().unwrap_or("").trim();
            if index.is_empty() || !index.chars().all(|c| c.is_ascii_digit()) {
                continue;
            }
            if let Some(key) = client.get_text(&format!("meta-data/public-keys/{index}/openssh-key"))? {
                public_keys.push(key);
            }
        }
        let ipv6 = client.get_text("meta-data/ipv6")?;
        let metadata = Metadata {
            instance_id: Some(instance_id),
            hostname: client.get_text("meta-data/hostname")?,
            public_ipv4: client.get_text("meta-data/public-ipv4")?,
            private_ipv4: client.get_text("meta-data/local-ipv4")?,
            // EC2's IPv6 addresses are global: the same one is public and private.
            public_ipv6: ipv6.clone(),
            private_ipv6: ipv6,
            public_keys,
        };
        let user_data = client.get("user-data")?;
        let flavour = if client.token.is_some() { "IMDSv2" } else { "IMDSv1" };
        Ok(Some(Found { source: format!("ec2 {} ({flavour})", client.base), user_data, metadata }))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::datasource::testenv::Scratch;
    use crate::http::testserver::{self, Request, Server};

    pub const TOKEN: &str = "AQAEAFakeTokenForTests==";

    /// An EC2 metadata service: IMDSv2 tokens required unless `v1_only`, in
    /// which case the token request is refused as old services do.
    pub fn imds(user_data: Option<&'static [u8]>, v1_only: bool) -> Server {
        testserver::serve(move |request: &Request| {
            if request.method == "PUT" && request.path == "/latest/api/token" {
                if v1_only {
                    return (405, Vec::new());
                }
                return match request.header("X-aws-ec2-metadata-token-ttl-seconds") {
                    Some(_) => (200, TOKEN.as_bytes().to_vec()),
                    None => (400, Vec::new()),
                };
            }
            if !v1_only && request.header("X-aws-ec2-metadata-token") != Some(TOKEN) {
                return (401, Vec::new());
            }
            let body: &[u8] = match request.path.as_str() {
                "/latest/meta-data/instance-id" => b"i-0abc123def4567890",
                "/latest/meta-data/hostname" => b"ip-10-0-1-23.ec2.internal",
                "/latest/meta-data/local-ipv4" => b"10.0.1.23",
                "/latest/meta-data/public-ipv4" => b"203.0.113.23",
                "/latest/meta-data/public-keys/" => b"0=laptop\n1=ci",
                "/latest/meta-data/public-keys/0/openssh-key" => b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGxhcHRvcA laptop\n",
                "/latest/meta-data/public-keys/1/openssh-key" => b"ssh-rsa AAAAB3NzaC1yc2EAAAADAQAB ci\n",
                "/latest/user-data" => match user_data {
                    Some(bytes) => bytes,
                    None => return (404, Vec::new()),
                },
                _ => return (404, Vec::new()),
            };
            (200, body.to_vec())
        })
    }

    fn environment(scratch: &Scratch, server: &Server) -> Environment {
        Environment { imds_url: Some(server.url.clone()), ..scratch.environment() }
    }

    #[test]
    fn imdsv2_gives_user_data_and_metadata() {
        let scratch = Scratch::new();
        let server = imds(Some(b"#cloud-config\nhostname: from-ec2\n"), false);
        let found = Ec2.fetch(&environment(&scratch, &server)).unwrap().unwrap();
        assert_eq!(found.user_data.unwrap(), b"#cloud-config\nhostname: from-ec2\n");
        assert_eq!(found.metadata.instance_id.as_deref(), Some("i-0abc123def4567890"));
        assert_eq!(found.metadata.private_ipv4.as_deref(), Some("10.0.1.23"));
        assert_eq!(found.metadata.public_ipv4.as_deref(), Some("203.0.113.23"));
        assert_eq!(found.metadata.hostname.as_deref(), Some("ip-10-0-1-23.ec2.internal"));
        assert_eq!(found.metadata.public_keys.len(), 2);
        assert!(found.source.ends_with("(IMDSv2)"));
        let log = server.log.lock().unwrap();
        assert_eq!(log[0], "PUT /latest/api/token");
    }

    #[test]
    fn imdsv1_is_the_fallback() {
        let scratch = Scratch::new();
        let server = imds(None, true);
        let found = Ec2.fetch(&environment(&scratch, &server)).unwrap().unwrap();
        assert_eq!(found.user_data, None);
        assert!(found.source.ends_with("(IMDSv1)"));
        assert_eq!(found.metadata.public_keys[0], "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGxhcHRvcA laptop");
    }

    #[test]
    fn no_service_is_no_source() {
        let scratch = Scratch::new();
        assert_eq!(Ec2.fetch(&scratch.environment()).unwrap(), None, "not EC2 by the firmware: not even tried");
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let environment = Environment { imds_url: Some(format!("http://127.0.0.1:{port}")), ..scratch.environment() };
        assert_eq!(Ec2.fetch(&environment).unwrap(), None);
    }

    #[test]
    fn the_firmware_or_the_command_line_turn_it_on() {
        let scratch = Scratch::new();
        let environment = scratch.environment();
        std::fs::write(&environment.cmdline, "basalt.imds_url=http://10.0.2.2:8080/\n").unwrap();
        assert_eq!(Ec2::base_url(&environment).as_deref(), Some("http://10.0.2.2:8080"));
        std::fs::write(&environment.cmdline, "").unwrap();
        assert_eq!(Ec2::base_url(&environment), None);
        let entry = scratch.sys().join("firmware/qemu_fw_cfg/by_name/opt/org.basalt/imds-url");
        std::fs::create_dir_all(&entry).unwrap();
        std::fs::write(entry.join("raw"), "http://10.0.2.2:8169/\n").unwrap();
        assert_eq!(Ec2::base_url(&environment).as_deref(), Some("http://10.0.2.2:8169"));
        assert!(Ec2.needs_network(&environment));
        std::fs::remove_dir_all(&entry).unwrap();
        std::fs::create_dir_all(scratch.sys().join("class/dmi/id")).unwrap();
        std::fs::write(scratch.sys().join("class/dmi/id/sys_vendor"), "Amazon EC2\n").unwrap();
        assert_eq!(Ec2::base_url(&environment).as_deref(), Some(DEFAULT_URL));
    }
}
