//! What one run of the agent did: where the user data came from, what was
//! rejected, applied and failed. The agent prints it to its log (and so to
//! the console) and keeps it in /run/basalt/cloud-config/status.json, which
//! `basaltctl config show` prints in the same words.

use serde::{Deserialize, Serialize};

use crate::report::{Problem, Severity};

/// Where the run's status is kept (a tmpfs: one boot's run).
pub const STATUS_FILE: &str = "/run/basalt/cloud-config/status.json";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The datasource(s), e.g. `nocloud /dev/vdb`; `none` when nothing was found.
    pub source: String,
    /// Size of the user data as found.
    #[serde(default)]
    pub bytes: usize,
    pub instance_id: String,
    /// Sources that were there but could not be read.
    #[serde(default)]
    pub datasource_errors: Vec<String>,
    pub problems: Vec<Problem>,
    pub changes: Vec<String>,
    pub failures: Vec<String>,
}

impl Status {
    /// The run in lines, as the agent logs them (after `cloud-config: `):
    /// `rejected: LINE:COLUMN: error: KEY: reason` for each error, the
    /// warnings as they are, `applied: …`, `failed: …`, then a count.
    pub fn lines(&self) -> Vec<String> {
        let mut lines = self.found_lines();
        lines.extend(self.outcome_lines());
        lines
    }

    /// What was found and what was rejected: known before anything is applied.
    pub fn found_lines(&self) -> Vec<String> {
        let mut lines: Vec<String> = self.datasource_errors.iter().map(|error| format!("datasource failed: {error}")).collect();
        if self.source == "none" {
            lines.push("no user data found (fw_cfg, kernel command line, NoCloud, config drive, EC2, OEM); nothing to do".into());
            return lines;
        }
        lines.push(format!("user data from {} ({} bytes), instance {}", self.source, self.bytes, self.instance_id));
        for problem in &self.problems {
            match problem.severity {
                Severity::Error => lines.push(format!("rejected: {problem}")),
                Severity::Warning => lines.push(problem.to_string()),
            }
        }
        lines
    }

    /// What applying did.
    pub fn outcome_lines(&self) -> Vec<String> {
        if self.source == "none" {
            return Vec::new();
        }
        let mut lines: Vec<String> = self.changes.iter().map(|change| format!("applied: {change}")).collect();
        lines.extend(self.failures.iter().map(|failure| format!("failed: {failure}")));
        let errors = self.problems.iter().filter(|problem| problem.severity == Severity::Error).count();
        lines.push(format!("done: {} change(s), {} rejected, {} warning(s), {} failure(s)", self.changes.len(), errors, self.problems.len() - errors, self.failures.len()));
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml::Position;

    #[test]
    fn a_run_reads_back_and_prints_what_was_rejected() {
        let status = Status {
            source: "nocloud /dev/vdb".into(),
            bytes: 412,
            instance_id: "iid-local01".into(),
            datasource_errors: vec![],
            problems: vec![
                Problem { severity: Severity::Error, part: None, key: "users".into(), position: Some(Position::new(3, 8)), message: "expected a list, found a scalar".into() },
                Problem { severity: Severity::Warning, part: None, key: "colour".into(), position: Some(Position::new(4, 1)), message: "unknown key \"colour\", ignored".into() },
            ],
            changes: vec!["set hostname web1".into()],
            failures: vec![],
        };
        let json = serde_json::to_string(&status).unwrap();
        let back: Status = serde_json::from_str(&json).unwrap();
        assert_eq!(back, status);
        assert_eq!(
            back.lines(),
            [
                "user data from nocloud /dev/vdb (412 bytes), instance iid-local01",
                "rejected: 3:8: error: users: expected a list, found a scalar",
                "4:1: warning: colour: unknown key \"colour\", ignored",
                "applied: set hostname web1",
                "done: 1 change(s), 1 rejected, 1 warning(s), 0 failure(s)",
            ]
        );
    }

    #[test]
    fn nothing_found_says_so() {
        let status = Status { source: "none".into(), datasource_errors: vec!["nocloud: /dev/vdb: unreadable".into()], ..Status::default() };
        assert_eq!(status.lines()[0], "datasource failed: nocloud: /dev/vdb: unreadable");
        assert!(status.lines()[1].starts_with("no user data found"));
    }
}
