//! The kernel command line: `basalt.config_url=http://…` names user data to
//! fetch; `basalt.imds_url=` and `basalt.datasource=ec2` point the EC2
//! source at a metadata service off EC2 (tests, other clouds).

use super::{with_retries, Datasource, DatasourceError, Environment, Found, READ_LIMIT};
use crate::http;

pub const CONFIG_URL: &str = "basalt.config_url";
pub const IMDS_URL: &str = "basalt.imds_url";
pub const DATASOURCE: &str = "basalt.datasource";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelCommandLine {
    pub parameters: Vec<(String, Option<String>)>,
}

impl KernelCommandLine {
    /// Splits on spaces outside double quotes, as the kernel does.
    pub fn parse(text: &str) -> KernelCommandLine {
        let mut parameters = Vec::new();
        let mut current = String::new();
        let mut quoted = false;
        let mut push = |word: &mut String| {
            if !word.is_empty() {
                let parameter = match word.split_once('=') {
                    Some((key, value)) => (key.to_string(), Some(value.to_string())),
                    None => (word.clone(), None),
                };
                parameters.push(parameter);
                word.clear();
            }
        };
        for c in text.chars() {
            match c {
                '"' => quoted = !quoted,
                c if c.is_whitespace() && !quoted => push(&mut current),
                c => current.push(c),
            }
        }
        push(&mut current);
        KernelCommandLine { parameters }
    }

    /// The last value given for `key` (later ones win, as for the kernel).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.parameters.iter().rev().find(|(name, _)| name == key).and_then(|(_, value)| value.as_deref())
    }
}

pub struct CmdlineUrl;

impl Datasource for CmdlineUrl {
    fn name(&self) -> &'static str {
        "cmdline"
    }

    fn needs_network(&self, environment: &Environment) -> bool {
        environment.kernel_command_line().get(CONFIG_URL).is_some()
    }

    fn fetch(&self, environment: &Environment) -> Result<Option<Found>, DatasourceError> {
        let cmdline = environment.kernel_command_line();
        let Some(url) = cmdline.get(CONFIG_URL) else { return Ok(None) };
        let response = with_retries(&environment.retry, || http::request("GET", url, &[], environment.retry.timeout, READ_LIMIT))?;
        if response.status != 200 {
            return Err(DatasourceError::Status { url: url.to_string(), status: response.status });
        }
        Ok(Some(Found { source: format!("cmdline {url}"), user_data: Some(response.body), metadata: Default::default() }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datasource::testenv::Scratch;
    use crate::http::testserver;

    #[test]
    fn parameters_split_like_the_kernel_does() {
        let cmdline = KernelCommandLine::parse("ro quiet basalt.config_url=http://10.0.2.2:8000/user-data a=\"b c\" a=d\n");
        assert_eq!(cmdline.get(CONFIG_URL), Some("http://10.0.2.2:8000/user-data"));
        assert_eq!(cmdline.get("a"), Some("d"));
        assert_eq!(cmdline.get("quiet"), None);
        assert_eq!(KernelCommandLine::parse("x=\"b c\"").get("x"), Some("b c"));
    }

    #[test]
    fn the_url_is_fetched_and_errors_are_reported() {
        let server = testserver::serve(|request| match request.path.as_str() {
            "/user-data" => (200, b"#cloud-config\nhostname: from-url\n".to_vec()),
            _ => (404, Vec::new()),
        });
        let scratch = Scratch::new();
        let environment = scratch.environment();
        assert_eq!(CmdlineUrl.fetch(&environment).unwrap(), None);
        std::fs::write(&environment.cmdline, format!("console=ttyS0 {CONFIG_URL}={}/user-data\n", server.url)).unwrap();
        let found = CmdlineUrl.fetch(&environment).unwrap().unwrap();
        assert_eq!(found.user_data.unwrap(), b"#cloud-config\nhostname: from-url\n");
        std::fs::write(&environment.cmdline, format!("{CONFIG_URL}={}/missing\n", server.url)).unwrap();
        let error = CmdlineUrl.fetch(&environment).unwrap_err();
        assert_eq!(error.to_string(), format!("{}/missing: HTTP status 404", server.url));
    }
}
