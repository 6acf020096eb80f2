//! The envelope of user data: how big it may be, whether it is gzip, text,
//! MIME multipart, a `#cloud-config` document or a `#!` script.

use std::io::Read;

use crate::multipart;
use crate::report::Report;
use crate::yaml::Position;

/// The most user data basalt accepts, both as fetched and after gunzip.
/// EC2 itself allows 16 KiB; 1 MiB leaves room for generous `write_files`
/// while keeping a wrong upload (an image, a log) from filling memory or disk.
pub const MAX_USER_DATA_BYTES: usize = 1024 * 1024;

/// Multipart inside multipart inside … stops here.
const MAX_NESTING: usize = 4;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartKind {
    CloudConfig,
    Script,
}

/// One document found in the user data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub kind: PartKind,
    /// `None` for plain user data; `part N (filename)` inside multipart.
    pub label: Option<String>,
    pub text: String,
    /// Lines before this part's first line in the user data as fetched, so
    /// problems point into the file the user wrote; 0 when that cannot be
    /// known (the part was base64 or gzip inside the multipart).
    pub line_offset: usize,
}

/// Splits user data into its documents. Problems with the envelope go to
/// `report`; a rejected envelope yields no parts, so nothing from it applies.
pub fn split(bytes: &[u8], report: &mut Report) -> Vec<Part> {
    let mut parts = Vec::new();
    split_into(bytes, None, 0, 0, report, &mut parts);
    parts
}

fn split_into(bytes: &[u8], label: Option<String>, line_offset: usize, depth: usize, report: &mut Report, parts: &mut Vec<Part>) {
    let key = "user-data";
    if bytes.len() > MAX_USER_DATA_BYTES {
        let message = format!("user data is {} bytes, more than the limit of {MAX_USER_DATA_BYTES} bytes (1 MiB); none of it was applied", bytes.len());
        report.error(key, None, message);
        return;
    }
    if bytes.starts_with(&[0x1f, 0x8b]) {
        match gunzip_limited(bytes, MAX_USER_DATA_BYTES) {
            Ok(inflated) => split_into(&inflated, label, 0, depth, report, parts),
            Err(message) => report.error(key, None, format!("{message}; none of it was applied")),
        }
        return;
    }
    let text = match as_text(bytes) {
        Ok(text) => text,
        Err((position, byte)) => {
            report.error(
                key,
                Some(position),
                format!("user data is not text (byte 0x{byte:02x}); expected #cloud-config, a #! script, MIME multipart, or gzip of one of these; none of it was applied"),
            );
            return;
        }
    };
    let first_line = text.lines().next().unwrap_or("").trim_end();
    if text.trim().is_empty() {
        return;
    }
    if first_line == "#cloud-config" {
        parts.push(Part { kind: PartKind::CloudConfig, label, text: text.to_string(), line_offset });
    } else if first_line.starts_with("#!") {
        parts.push(Part { kind: PartKind::Script, label, text: text.to_string(), line_offset });
    } else if multipart::looks_like_mime(text) {
        if depth >= MAX_NESTING {
            report.error(key, Some(Position::new(1 + line_offset, 1)), format!("multipart nested more than {MAX_NESTING} deep; ignored"));
            return;
        }
        let mut inner = Report::default();
        for part in multipart::parse(text, &mut inner) {
            let label = Some(match &part.filename {
                Some(name) => format!("part {} ({name})", part.number),
                None => format!("part {}", part.number),
            });
            let mut part_report = Report::default();
            if part.content_type.starts_with("text/x-include") {
                part_report.warning(key, None, format!("{} parts (URLs to fetch) are not supported; ignored", part.content_type));
            } else if part.content_type == "text/cloud-config" && !part.body.starts_with(b"#cloud-config") && !part.body.starts_with(&[0x1f, 0x8b]) {
                // The part's type says what it is; accept it without the marker line.
                match as_text(&part.body) {
                    Ok(text) => parts.push(Part {
                        kind: PartKind::CloudConfig,
                        label: label.clone(),
                        text: format!("#cloud-config\n{text}"),
                        line_offset: part.body_line_offset.map(|offset| offset.saturating_sub(1)).unwrap_or(0),
                    }),
                    Err((position, byte)) => part_report.error(key, Some(position), format!("part is not text (byte 0x{byte:02x}); ignored")),
                }
            } else {
                split_into(&part.body, label.clone(), part.body_line_offset.unwrap_or(0), depth + 1, &mut part_report, parts);
            }
            inner.absorb(part_report, label.as_deref(), 0);
        }
        report.absorb(inner, None, 0);
    } else if first_line.starts_with('{') {
        report.error(key, Some(Position::new(1 + line_offset, 1)), "user data is JSON (an Ignition config?); basalt reads #cloud-config YAML and #! scripts; none of it was applied");
    } else {
        report.error(key, Some(Position::new(1 + line_offset, 1)), "the first line is neither \"#cloud-config\" nor a \"#!\" script line nor a MIME header; none of it was applied");
    }
}

/// Inflates at most `limit` bytes; more than that is an error, not a truncation.
pub fn gunzip_limited(bytes: &[u8], limit: usize) -> Result<Vec<u8>, String> {
    let mut inflated = Vec::new();
    let decoder = flate2::read::MultiGzDecoder::new(bytes);
    decoder.take(limit as u64 + 1).read_to_end(&mut inflated).map_err(|error| format!("user data looks gzip-compressed but does not inflate: {error}"))?;
    if inflated.len() > limit {
        return Err(format!("gzip user data inflates to more than the limit of {limit} bytes (1 MiB)"));
    }
    Ok(inflated)
}

/// UTF-8 without control characters other than tab, newline, carriage return
/// and form feed; otherwise the line and column of the first offending byte.
pub fn as_text(bytes: &[u8]) -> Result<&str, (Position, u8)> {
    let bytes = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    let valid_len = match std::str::from_utf8(bytes) {
        Ok(_) => bytes.len(),
        Err(error) => error.valid_up_to(),
    };
    let valid = std::str::from_utf8(&bytes[..valid_len]).expect("prefix is valid UTF-8");
    let bad_control = valid.char_indices().find(|(_, c)| c.is_control() && !matches!(c, '\t' | '\n' | '\r' | '\x0c')).map(|(index, _)| index);
    let bad_at = match bad_control {
        Some(index) => index,
        None if valid_len == bytes.len() => return Ok(valid),
        None => valid_len,
    };
    let before = &bytes[..bad_at];
    let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
    let line_start = before.iter().rposition(|&b| b == b'\n').map(|i| i + 1).unwrap_or(0);
    let column = String::from_utf8_lossy(&before[line_start..]).chars().count() + 1;
    Err((Position::new(line, column), bytes[bad_at]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    #[test]
    fn cloud_config_and_scripts_are_told_apart_by_their_first_line() {
        let mut report = Report::default();
        let parts = split(b"#cloud-config\nhostname: a\n", &mut report);
        assert_eq!(parts[0].kind, PartKind::CloudConfig);
        let parts = split(b"#!/bin/sh\necho hi\n", &mut report);
        assert_eq!(parts[0].kind, PartKind::Script);
        assert!(split(b"", &mut report).is_empty());
        assert!(report.problems.is_empty());
    }

    #[test]
    fn gzip_is_inflated_first() {
        let mut report = Report::default();
        let parts = split(&gzip(b"#cloud-config\nhostname: a\n"), &mut report);
        assert_eq!(parts[0].text, "#cloud-config\nhostname: a\n");
    }

    #[test]
    fn oversized_input_is_rejected_whole() {
        let mut report = Report::default();
        let mut big = b"#cloud-config\n".to_vec();
        big.resize(10 * 1024 * 1024, b'#');
        assert!(split(&big, &mut report).is_empty());
        assert_eq!(report.to_string(), "error: user-data: user data is 10485760 bytes, more than the limit of 1048576 bytes (1 MiB); none of it was applied\n");
    }

    #[test]
    fn a_gzip_bomb_is_stopped_at_the_limit() {
        let mut report = Report::default();
        let bomb = gzip(&vec![b'a'; 3 * MAX_USER_DATA_BYTES]);
        assert!(bomb.len() < MAX_USER_DATA_BYTES);
        assert!(split(&bomb, &mut report).is_empty());
        assert!(report.to_string().contains("inflates to more than the limit of 1048576 bytes"), "{report}");
    }

    #[test]
    fn binary_junk_names_the_first_bad_byte() {
        let mut report = Report::default();
        assert!(split(b"#cloud-config\nab\x00cd\n", &mut report).is_empty());
        assert_eq!(
            report.to_string(),
            "2:3: error: user-data: user data is not text (byte 0x00); expected #cloud-config, a #! script, MIME multipart, or gzip of one of these; none of it was applied\n"
        );
        let mut report = Report::default();
        split(&[0xff, 0xfe, 0x00, 0x01], &mut report);
        assert!(report.to_string().starts_with("1:1: error: user-data: user data is not text (byte 0xff)"), "{report}");
    }

    #[test]
    fn unrecognised_first_lines_are_rejected() {
        let mut report = Report::default();
        split(b"hostname: a\n", &mut report);
        assert!(report.to_string().starts_with("1:1: error: user-data: the first line is neither"), "{report}");
    }
}
