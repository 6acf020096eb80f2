//! `write_files[]` entries.

use base64::Engine;
use serde::Serialize;

use super::fields::{clean, describe, Fields};
use crate::report::Report;
use crate::userdata::{gunzip_limited, MAX_USER_DATA_BYTES};
use crate::yaml::{Node, Value};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WriteFile {
    pub path: String,
    /// Decoded bytes.
    #[serde(serialize_with = "serialize_content")]
    pub content: Vec<u8>,
    /// True when `content` came through an encoding: such content is never
    /// touched by `$private_ipv4`-style substitution.
    pub encoded: bool,
    /// `user` or `user:group`, names or numbers.
    pub owner: String,
    pub permissions: u32,
}

fn serialize_content<S: serde::Serializer>(content: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
    match std::str::from_utf8(content) {
        Ok(text) => serializer.serialize_str(text),
        Err(_) => serializer.serialize_str(&format!("<{} bytes of binary data>", content.len())),
    }
}

const KNOWN: &[&str] = &["path", "content", "owner", "permissions", "encoding"];

pub fn parse_write_file(node: &Node, path: &str, report: &mut Report) -> Option<WriteFile> {
    clean(report, |report| {
        let fields = Fields::of(node, path, report)?;
        fields.warn_unknown(KNOWN, report);
        let Some(path_node) = fields.get("path") else {
            report.error(path, Some(node.position), "a file needs a path");
            return None;
        };
        let file_path = fields.string("path", report)?;
        if !valid_absolute_path(&file_path) {
            report.error(fields.key_path("path"), Some(path_node.position), format!("{file_path:?} is not an absolute path without \"..\" components"));
        }
        let raw = fields.string("content", report).unwrap_or_default();
        let encoding = fields.string("encoding", report);
        let content = match encoding.as_deref() {
            None => Some(raw.clone().into_bytes()),
            Some(encoding) => decode(&raw, encoding)
                .map_err(|message| {
                    let at = fields.get("encoding").map(|n| n.position);
                    report.error(fields.key_path("encoding"), at, message)
                })
                .ok(),
        };
        let owner = fields.string("owner", report).unwrap_or_else(|| "root:root".to_string());
        if owner.is_empty() || owner.split(':').count() > 2 || owner.contains(char::is_whitespace) {
            report.error(fields.key_path("owner"), fields.get("owner").map(|n| n.position), format!("{owner:?} is not \"user\" or \"user:group\""));
        }
        let permissions = match fields.get("permissions") {
            Some(node) => parse_mode(node).or_else(|| {
                report.error(fields.key_path("permissions"), Some(node.position), format!("{} is not an octal file mode such as \"0644\"", describe(node)));
                None
            }),
            None => Some(0o644),
        };
        Some(WriteFile { path: file_path, content: content?, encoded: encoding.is_some(), owner, permissions: permissions? })
    })
}

/// The encodings coreos-cloudinit accepted, with their aliases.
fn decode(raw: &str, encoding: &str) -> Result<Vec<u8>, String> {
    let base64 = |text: &str| {
        let compact: String = text.split_whitespace().collect();
        base64::engine::general_purpose::STANDARD.decode(compact).map_err(|error| format!("content is not valid base64: {error}"))
    };
    let gunzip = |bytes: &[u8]| gunzip_limited(bytes, MAX_USER_DATA_BYTES).map_err(|error| format!("content: {error}"));
    match encoding {
        "b64" | "base64" => base64(raw),
        "gz" | "gzip" => gunzip(raw.as_bytes()),
        "gz+b64" | "gzip+b64" | "gz+base64" | "gzip+base64" => gunzip(&base64(raw)?),
        other => Err(format!("{other:?} is not an encoding; expected b64, gzip or gzip+b64")),
    }
}

/// Octal, whether written `0644`, `644`, `"0644"` or `0o644`: coreos-cloudinit
/// read permissions as octal text, so a YAML 1.2 decimal reading of `0644`
/// would surprise everyone.
fn parse_mode(node: &Node) -> Option<u32> {
    let Value::Scalar { text, .. } = &node.value else { return None };
    let digits = text.strip_prefix("0o").unwrap_or(text);
    let mode = u32::from_str_radix(digits, 8).ok()?;
    (mode <= 0o7777).then_some(mode)
}

pub fn valid_absolute_path(path: &str) -> bool {
    path.starts_with('/') && path.len() > 1 && !path.contains('\0') && !path.split('/').any(|component| component == "..")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml;
    use std::io::Write;

    fn parse_file(text: &str) -> (Option<WriteFile>, Report) {
        let node = yaml::parse(text).unwrap();
        let mut report = Report::default();
        (parse_write_file(&node, "write_files[0]", &mut report), report)
    }

    #[test]
    fn defaults_are_root_and_0644() {
        let (file, report) = parse_file("path: /etc/motd\ncontent: hello\n");
        assert!(report.problems.is_empty());
        let file = file.unwrap();
        assert_eq!((file.owner.as_str(), file.permissions, file.content.as_slice()), ("root:root", 0o644, &b"hello"[..]));
    }

    #[test]
    fn modes_are_octal_however_written() {
        for spelling in ["0600", "'0600'", "600", "0o600"] {
            let (file, _) = parse_file(&format!("path: /a\npermissions: {spelling}\n"));
            assert_eq!(file.unwrap().permissions, 0o600, "{spelling}");
        }
        let (file, report) = parse_file("path: /a\npermissions: 0999\n");
        assert!(file.is_none());
        assert_eq!(report.to_string(), "2:14: error: write_files[0].permissions: \"0999\" is not an octal file mode such as \"0644\"\n");
    }

    #[test]
    fn encodings_decode() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(b"zipped").unwrap();
        let packed = base64::engine::general_purpose::STANDARD.encode(gz.finish().unwrap());
        let (file, report) = parse_file(&format!("path: /a\nencoding: gzip+base64\ncontent: {packed}\n"));
        assert!(report.problems.is_empty(), "{report}");
        assert_eq!(file.unwrap().content, b"zipped");
        let (file, _) = parse_file("path: /a\nencoding: b64\ncontent: aGk=\n");
        assert_eq!(file.unwrap().content, b"hi");
        let (file, report) = parse_file("path: /a\nencoding: rot13\ncontent: x\n");
        assert!(file.is_none());
        assert_eq!(report.to_string(), "2:11: error: write_files[0].encoding: \"rot13\" is not an encoding; expected b64, gzip or gzip+b64\n");
    }

    #[test]
    fn relative_and_escaping_paths_are_refused() {
        assert!(!valid_absolute_path("etc/motd"));
        assert!(!valid_absolute_path("/etc/../../x"));
        assert!(valid_absolute_path("/etc/motd"));
    }
}
