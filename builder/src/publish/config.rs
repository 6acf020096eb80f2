//! Credentials, region and endpoints the way the AWS CLI finds them:
//! environment first (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
//! AWS_SESSION_TOKEN, AWS_REGION / AWS_DEFAULT_REGION, AWS_PROFILE,
//! AWS_ENDPOINT_URL[_EBS|_EC2]), then the profile in ~/.aws/credentials
//! and ~/.aws/config (or AWS_SHARED_CREDENTIALS_FILE / AWS_CONFIG_FILE).

use super::sigv4::Credentials;
use anyhow::{bail, Result};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Sections of an INI file: `[name]` → key → value.
pub fn parse_ini(text: &str) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let mut section = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim().to_string();
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            out.entry(section.clone()).or_default().insert(k.trim().to_string(), v.trim().to_string());
        }
    }
    out
}

pub struct Environment {
    pub vars: BTreeMap<String, String>,
    pub credentials_file: Option<String>,
    pub config_file: Option<String>,
}

impl Environment {
    pub fn from_process() -> Environment {
        let vars: BTreeMap<String, String> = std::env::vars().filter(|(k, _)| k.starts_with("AWS_")).collect();
        let home = std::env::var("HOME").unwrap_or_default();
        let path = |var: &str, default: &str| -> PathBuf { vars.get(var).map(PathBuf::from).unwrap_or_else(|| PathBuf::from(&home).join(default)) };
        let credentials_file = std::fs::read_to_string(path("AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials")).ok();
        let config_file = std::fs::read_to_string(path("AWS_CONFIG_FILE", ".aws/config")).ok();
        Environment { vars, credentials_file, config_file }
    }

    fn var(&self, k: &str) -> Option<&str> {
        self.vars.get(k).map(String::as_str).filter(|v| !v.is_empty())
    }

    fn profile(&self) -> &str {
        self.var("AWS_PROFILE").unwrap_or("default")
    }

    /// The profile's keys: from the credentials file's `[name]`, then the
    /// config file's `[profile name]` (`[default]` for the default profile).
    fn profile_entry(&self, key: &str) -> Option<String> {
        let name = self.profile();
        let from_credentials = self.credentials_file.as_deref().map(parse_ini).and_then(|ini| ini.get(name)?.get(key).cloned());
        let config_section = if name == "default" { "default".to_string() } else { format!("profile {name}") };
        from_credentials.or_else(|| self.config_file.as_deref().map(parse_ini).and_then(|ini| ini.get(&config_section)?.get(key).cloned()))
    }

    pub fn credentials(&self) -> Result<Credentials> {
        if let (Some(id), Some(secret)) = (self.var("AWS_ACCESS_KEY_ID"), self.var("AWS_SECRET_ACCESS_KEY")) {
            return Ok(Credentials { access_key_id: id.into(), secret_access_key: secret.into(), session_token: self.var("AWS_SESSION_TOKEN").map(str::to_string) });
        }
        match (self.profile_entry("aws_access_key_id"), self.profile_entry("aws_secret_access_key")) {
            (Some(id), Some(secret)) => Ok(Credentials { access_key_id: id, secret_access_key: secret, session_token: self.profile_entry("aws_session_token") }),
            _ => bail!("no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or add aws_access_key_id and aws_secret_access_key to profile {:?} in ~/.aws/credentials", self.profile()),
        }
    }

    pub fn region(&self, given: Option<&str>) -> Result<String> {
        if let Some(r) = given.or(self.var("AWS_REGION")).or(self.var("AWS_DEFAULT_REGION")) {
            return Ok(r.to_string());
        }
        self.profile_entry("region").ok_or_else(|| anyhow::anyhow!("no AWS region: pass --region, set AWS_REGION, or add region to profile {:?} in ~/.aws/config", self.profile()))
    }

    /// The endpoint of `service` (ebs, ec2) in `region`.
    pub fn endpoint(&self, given: Option<&str>, service: &str, region: &str) -> String {
        let specific = format!("AWS_ENDPOINT_URL_{}", service.to_ascii_uppercase());
        given.or(self.var(&specific)).or(self.var("AWS_ENDPOINT_URL")).map(|e| e.trim_end_matches('/').to_string()).unwrap_or_else(|| format!("https://{service}.{region}.amazonaws.com"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)], credentials: Option<&str>, config: Option<&str>) -> Environment {
        Environment { vars: vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), credentials_file: credentials.map(str::to_string), config_file: config.map(str::to_string) }
    }

    #[test]
    fn environment_variables_win() {
        let e = env(&[("AWS_ACCESS_KEY_ID", "AK"), ("AWS_SECRET_ACCESS_KEY", "SK"), ("AWS_REGION", "eu-west-1")], Some("[default]\naws_access_key_id=X\naws_secret_access_key=Y\n"), None);
        assert_eq!(e.credentials().unwrap(), Credentials { access_key_id: "AK".into(), secret_access_key: "SK".into(), session_token: None });
        assert_eq!(e.region(None).unwrap(), "eu-west-1");
        assert_eq!(e.region(Some("us-east-2")).unwrap(), "us-east-2");
    }

    #[test]
    fn profiles_come_from_credentials_and_config_files() {
        let creds = "[default]\naws_access_key_id = D\naws_secret_access_key = DS\n\n[ship]\naws_access_key_id = P\naws_secret_access_key = PS\naws_session_token = T\n";
        let config = "[default]\nregion = us-west-2\n[profile ship]\nregion = ap-south-1\n";
        let e = env(&[("AWS_PROFILE", "ship")], Some(creds), Some(config));
        assert_eq!(e.credentials().unwrap(), Credentials { access_key_id: "P".into(), secret_access_key: "PS".into(), session_token: Some("T".into()) });
        assert_eq!(e.region(None).unwrap(), "ap-south-1");
        let e = env(&[], Some(creds), Some(config));
        assert_eq!(e.credentials().unwrap().access_key_id, "D");
        assert_eq!(e.region(None).unwrap(), "us-west-2");
    }

    #[test]
    fn missing_credentials_and_region_say_where_to_put_them() {
        let e = env(&[], None, None);
        assert!(e.credentials().unwrap_err().to_string().contains("AWS_ACCESS_KEY_ID"));
        assert!(e.region(None).unwrap_err().to_string().contains("--region"));
    }

    #[test]
    fn endpoints_default_to_aws_and_can_be_overridden() {
        let e = env(&[("AWS_ENDPOINT_URL_EBS", "http://127.0.0.1:5000/")], None, None);
        assert_eq!(e.endpoint(None, "ebs", "eu-west-1"), "http://127.0.0.1:5000");
        assert_eq!(e.endpoint(None, "ec2", "eu-west-1"), "https://ec2.eu-west-1.amazonaws.com");
        assert_eq!(e.endpoint(Some("http://x:1"), "ec2", "eu-west-1"), "http://x:1");
    }
}
