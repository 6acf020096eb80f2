//! User data as a whole: every document in it parsed, every problem placed.
//! This is what `basalt validate-config FILE` on the build host and
//! `basaltctl config validate|show` on a machine call.

use crate::config::{self, CloudConfig};
use crate::report::Report;
use crate::userdata::{self, PartKind};

/// A `#!` script from the user data; it runs once per instance.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Script {
    /// `None` for plain user data, `part N (name)` inside multipart.
    pub label: Option<String>,
    pub text: String,
}

/// What a piece of user data says, after every check.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct UserData {
    /// All `#cloud-config` documents merged in order.
    pub config: CloudConfig,
    pub scripts: Vec<Script>,
    pub report: Report,
}

/// Parses user data as fetched (maybe gzip, maybe multipart).
pub fn parse_user_data(bytes: &[u8]) -> UserData {
    let mut user_data = UserData::default();
    for part in userdata::split(bytes, &mut user_data.report) {
        match part.kind {
            PartKind::CloudConfig => {
                let (config, report) = config::parse(&part.text);
                user_data.report.absorb(report, part.label.as_deref(), part.line_offset);
                user_data.config.merge(config);
            }
            PartKind::Script => user_data.scripts.push(Script { label: part.label, text: part.text }),
        }
    }
    // Envelope problems were found before the documents were parsed; report
    // them all in the order of the parts (a stable sort keeps each part's own order).
    user_data.report.problems.sort_by_key(|problem| part_number(problem.part.as_deref()));
    user_data
}

/// N of a `part N (name)` label; 0 for the user data as a whole.
fn part_number(label: Option<&str>) -> usize {
    label.and_then(|label| label.strip_prefix("part ")).and_then(|rest| rest.split(' ').next()).and_then(|n| n.parse().ok()).unwrap_or(0)
}

/// Every problem in `bytes`, each with its key, line and column.
pub fn validate(bytes: &[u8]) -> Report {
    parse_user_data(bytes).report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clean_config_has_no_problems() {
        let report = validate(b"#cloud-config\nhostname: a\nssh_authorized_keys:\n  - ssh-ed25519 AAAAC3Nz a@b\n");
        assert!(report.problems.is_empty(), "{report}");
    }

    #[test]
    fn multipart_problems_point_into_the_whole_file() {
        let text = "Content-Type: multipart/mixed; boundary=\"B\"\n\n--B\nContent-Type: text/cloud-config\n\n#cloud-config\nhostname: bad_name\n--B--\n";
        let report = validate(text.as_bytes());
        assert_eq!(report.to_string(), "part 1: 7:11: error: hostname: \"bad_name\" is not a host name (letters, digits and '-' in dot-separated labels of at most 63, 253 in all)\n");
    }

    #[test]
    fn problems_come_in_the_order_of_the_parts() {
        let text = "Content-Type: multipart/mixed; boundary=\"B\"\n\n--B\nContent-Type: text/cloud-config\n\n#cloud-config\nusers: [a\n--B\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\nAAEC\n--B--\n";
        let report = validate(text.as_bytes());
        let parts: Vec<_> = report.problems.iter().map(|problem| problem.part.clone().unwrap()).collect();
        assert_eq!(parts, ["part 1", "part 2"], "{report}");
    }

    #[test]
    fn scripts_are_kept_for_later() {
        let user_data = parse_user_data(b"#!/bin/sh\necho hi\n");
        assert_eq!(user_data.scripts.len(), 1);
        assert!(user_data.report.problems.is_empty());
    }
}
