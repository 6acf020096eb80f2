//! What was wrong with a piece of user data: each problem names the key, the
//! line and column, and why. Validation on the build host, `show` on the
//! machine and the agent's log all print the same `Problem`s.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::yaml::Position;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The key (or list entry) was rejected and not applied.
    Error,
    /// Applied anyway, or ignored harmlessly (unknown keys).
    Warning,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    pub severity: Severity,
    /// Which part of a multipart user data, e.g. `part 2 (config.yml)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part: Option<String>,
    /// Dotted key path such as `users[1].groups`, or `user-data` for the whole input.
    pub key: String,
    /// Absent only for problems with the input as a whole (its size).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<Position>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(part) = &self.part {
            write!(f, "{part}: ")?;
        }
        if let Some(position) = self.position {
            write!(f, "{position}: ")?;
        }
        let severity = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{severity}: {}: {}", self.key, self.message)
    }
}

impl Problem {
    /// The problem as compilers print theirs, `FILE:LINE:COLUMN: error: KEY: reason`
    /// (`FILE: part 2 (a.yml): LINE:COLUMN: …` inside multipart, whose
    /// encoded parts count lines from their own start).
    pub fn in_file(&self, file: &str) -> String {
        if self.position.is_some() && self.part.is_none() {
            format!("{file}:{self}")
        } else {
            format!("{file}: {self}")
        }
    }
}

/// Every problem found in one piece of user data, in the order found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    pub problems: Vec<Problem>,
}

impl Report {
    pub fn error(&mut self, key: impl Into<String>, position: Option<Position>, message: impl Into<String>) {
        self.push(Severity::Error, key.into(), position, message.into());
    }

    pub fn warning(&mut self, key: impl Into<String>, position: Option<Position>, message: impl Into<String>) {
        self.push(Severity::Warning, key.into(), position, message.into());
    }

    fn push(&mut self, severity: Severity, key: String, position: Option<Position>, message: String) {
        self.problems.push(Problem { severity, part: None, key, position, message });
    }

    pub fn error_count(&self) -> usize {
        self.problems.iter().filter(|problem| problem.severity == Severity::Error).count()
    }

    pub fn warning_count(&self) -> usize {
        self.problems.iter().filter(|problem| problem.severity == Severity::Warning).count()
    }

    pub fn has_errors(&self) -> bool {
        self.error_count() > 0
    }

    /// What `validate` commands print: each problem located in `file`, then
    /// a count (`FILE: 2 error(s), 1 warning(s)`).
    pub fn render(&self, file: &str) -> String {
        let mut out: String = self.problems.iter().map(|problem| problem.in_file(file) + "\n").collect();
        out.push_str(&format!("{file}: {} error(s), {} warning(s)\n", self.error_count(), self.warning_count()));
        out
    }

    /// Takes over another report's problems, labelling them with a part and
    /// moving their lines by `line_offset` (where the part starts in the whole input).
    pub fn absorb(&mut self, other: Report, part: Option<&str>, line_offset: usize) {
        for mut problem in other.problems {
            if problem.part.is_none() {
                problem.part = part.map(str::to_string);
            }
            if let Some(position) = &mut problem.position {
                position.line += line_offset;
            }
            self.problems.push(problem);
        }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for problem in &self.problems {
            writeln!(f, "{problem}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_print_position_severity_key_and_reason() {
        let mut report = Report::default();
        report.error("users[1].groups", Some(Position::new(5, 3)), "expected a list, found a mapping");
        report.warning("colour", Some(Position::new(9, 1)), "unknown key \"colour\", ignored");
        assert_eq!(
            report.to_string(),
            "5:3: error: users[1].groups: expected a list, found a mapping\n\
             9:1: warning: colour: unknown key \"colour\", ignored\n"
        );
        assert_eq!((report.error_count(), report.warning_count()), (1, 1));
    }

    #[test]
    fn rendered_for_a_file_like_a_compiler() {
        let mut report = Report::default();
        report.error("users", Some(Position::new(3, 8)), "expected a list, found a scalar");
        report.warning("colour", Some(Position::new(4, 1)), "unknown key \"colour\", ignored");
        report.error("user-data", None, "too big");
        report.absorb(
            Report { problems: vec![Problem { severity: Severity::Error, part: None, key: "hostname".into(), position: Some(Position::new(2, 11)), message: "bad".into() }] },
            Some("part 2"),
            0,
        );
        assert_eq!(
            report.render("u.yml"),
            "u.yml:3:8: error: users: expected a list, found a scalar\n\
             u.yml:4:1: warning: colour: unknown key \"colour\", ignored\n\
             u.yml: error: user-data: too big\n\
             u.yml: part 2: 2:11: error: hostname: bad\n\
             u.yml: 3 error(s), 1 warning(s)\n"
        );
    }

    #[test]
    fn absorbed_problems_name_their_part_and_move_lines() {
        let mut inner = Report::default();
        inner.error("hostname", Some(Position::new(2, 11)), "bad");
        let mut outer = Report::default();
        outer.absorb(inner, Some("part 2 (a.yml)"), 10);
        assert_eq!(outer.to_string(), "part 2 (a.yml): 12:11: error: hostname: bad\n");
    }
}
