//! MIME multipart user data (RFC 2046), the way cloud-init's tools build it:
//! a `Content-Type: multipart/mixed; boundary=…` header, then parts each
//! with their own headers, optionally base64.

use base64::Engine;

use crate::report::Report;
use crate::yaml::Position;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MimePart {
    /// 1-based, in order of appearance.
    pub number: usize,
    /// Lower-case media type without parameters, e.g. `text/cloud-config`.
    pub content_type: String,
    pub filename: Option<String>,
    pub body: Vec<u8>,
    /// Lines before the body in the whole text, when the body is stored as is.
    pub body_line_offset: Option<usize>,
}

/// Whether text starts with a MIME header block.
pub fn looks_like_mime(text: &str) -> bool {
    let first = text.lines().next().unwrap_or("").to_ascii_lowercase();
    first.starts_with("content-type:") || first.starts_with("mime-version:")
}

struct Headers {
    fields: Vec<(String, String)>,
}

impl Headers {
    fn get(&self, name: &str) -> Option<&str> {
        self.fields.iter().find(|(key, _)| key.eq_ignore_ascii_case(name)).map(|(_, value)| value.as_str())
    }
}

/// Reads a header block from `lines` (folded lines joined); returns the
/// headers and how many lines were used, the blank line included.
fn read_headers(lines: &[&str]) -> (Headers, usize) {
    let mut fields: Vec<(String, String)> = Vec::new();
    let mut used = 0;
    for line in lines {
        used += 1;
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            break;
        }
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = fields.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
        } else if let Some((key, value)) = line.split_once(':') {
            fields.push((key.trim().to_string(), value.trim().to_string()));
        }
    }
    (Headers { fields }, used)
}

/// A parameter such as `boundary` or `filename` from a header value.
fn parameter(value: &str, name: &str) -> Option<String> {
    value.split(';').skip(1).find_map(|param| {
        let (key, val) = param.split_once('=')?;
        key.trim().eq_ignore_ascii_case(name).then(|| val.trim().trim_matches('"').to_string())
    })
}

fn media_type(value: &str) -> String {
    value.split(';').next().unwrap_or("").trim().to_ascii_lowercase()
}

pub fn parse(text: &str, report: &mut Report) -> Vec<MimePart> {
    let lines: Vec<&str> = text.split('\n').collect();
    let (headers, header_lines) = read_headers(&lines);
    let content_type = headers.get("Content-Type").unwrap_or("");
    let Some(boundary) = parameter(content_type, "boundary").filter(|_| media_type(content_type).starts_with("multipart/")) else {
        report.error("user-data", Some(Position::new(1, 1)), "MIME user data without a multipart Content-Type and boundary; none of it was applied");
        return Vec::new();
    };
    let delimiter = format!("--{boundary}");
    let closing = format!("--{boundary}--");

    // Index of each delimiter line; the parts lie between them.
    let mut starts = Vec::new();
    let mut end = lines.len();
    for (index, line) in lines.iter().enumerate().skip(header_lines) {
        let line = line.trim_end();
        if line == closing {
            end = index;
            break;
        }
        if line == delimiter {
            starts.push(index);
        }
    }
    let mut parts = Vec::new();
    for (number, &start) in starts.iter().enumerate() {
        let stop = starts.get(number + 1).copied().unwrap_or(end);
        let part_lines = &lines[start + 1..stop];
        let (part_headers, used) = read_headers(part_lines);
        let body_lines = &part_lines[used.min(part_lines.len())..];
        // The line break before a delimiter belongs to the delimiter.
        let raw_body = body_lines.join("\n");
        let content_type = part_headers.get("Content-Type").map(media_type).unwrap_or_else(|| "text/plain".into());
        let filename = part_headers.get("Content-Disposition").and_then(|value| parameter(value, "filename")).or_else(|| part_headers.get("Content-Type").and_then(|value| parameter(value, "name")));
        let encoding = part_headers.get("Content-Transfer-Encoding").unwrap_or("7bit").to_ascii_lowercase();
        let label_number = number + 1;
        let (body, body_line_offset) = match encoding.as_str() {
            "base64" => {
                let compact: String = raw_body.split_whitespace().collect();
                match base64::engine::general_purpose::STANDARD.decode(compact) {
                    Ok(bytes) => (bytes, None),
                    Err(error) => {
                        report.error("user-data", Some(Position::new(start + 1 + used + 1, 1)), format!("part {label_number}: invalid base64: {error}; part ignored"));
                        continue;
                    }
                }
            }
            "7bit" | "8bit" | "binary" => (raw_body.into_bytes(), Some(start + 1 + used)),
            other => {
                report.error("user-data", Some(Position::new(start + 1, 1)), format!("part {label_number}: Content-Transfer-Encoding {other} is not supported; part ignored"));
                continue;
            }
        };
        parts.push(MimePart { number: label_number, content_type, filename, body, body_line_offset });
    }
    if parts.is_empty() && !report.has_errors() {
        report.warning("user-data", Some(Position::new(1, 1)), format!("multipart user data has no parts with boundary {boundary:?}"));
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::userdata::{split, PartKind};

    const MIXED: &str = "Content-Type: multipart/mixed; boundary=\"==BOUNDARY==\"\n\
MIME-Version: 1.0\n\
\n\
--==BOUNDARY==\n\
Content-Type: text/cloud-config; charset=\"us-ascii\"\n\
Content-Disposition: attachment; filename=\"config.yml\"\n\
\n\
#cloud-config\n\
hostname: from-mime\n\
\n\
--==BOUNDARY==\n\
Content-Type: text/x-shellscript\n\
Content-Transfer-Encoding: base64\n\
\n\
IyEvYmluL3NoCmVjaG8gaGkK\n\
--==BOUNDARY==--\n";

    #[test]
    fn parts_keep_type_name_and_body() {
        let mut report = Report::default();
        let parts = parse(MIXED, &mut report);
        assert_eq!(parts.len(), 2, "{report}");
        assert_eq!(parts[0].content_type, "text/cloud-config");
        assert_eq!(parts[0].filename.as_deref(), Some("config.yml"));
        assert_eq!(parts[0].body, b"#cloud-config\nhostname: from-mime\n");
        assert_eq!(parts[0].body_line_offset, Some(7));
        assert_eq!(parts[1].body, b"#!/bin/sh\necho hi\n");
    }

    #[test]
    fn user_data_splits_into_a_config_and_a_script() {
        let mut report = Report::default();
        let parts = split(MIXED.as_bytes(), &mut report);
        assert!(report.problems.is_empty(), "{report}");
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].kind, PartKind::CloudConfig);
        assert_eq!(parts[0].label.as_deref(), Some("part 1 (config.yml)"));
        assert_eq!(parts[0].line_offset, 7);
        assert_eq!(parts[1].kind, PartKind::Script);
    }

    #[test]
    fn bad_base64_rejects_only_that_part() {
        let text = MIXED.replace("IyEvYmluL3NoCmVjaG8gaGkK", "***");
        let mut report = Report::default();
        let parts = split(text.as_bytes(), &mut report);
        assert_eq!(parts.len(), 1);
        assert!(report.to_string().contains("part 2: invalid base64"), "{report}");
    }
}
