//! Reading typed values out of marked YAML nodes. Every getter reports a
//! problem at the node's own line and column and returns `None` when the
//! value does not fit, so the caller can drop just that key or entry.

use crate::report::Report;
use crate::yaml::{Node, Value};

/// A mapping being read, with the key path it sits at (`users[1]`).
pub struct Fields<'a> {
    pub path: String,
    entries: &'a [(Node, Node)],
}

pub fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

impl<'a> Fields<'a> {
    /// `None` (and an error) if `node` is not a mapping.
    pub fn of(node: &'a Node, path: &str, report: &mut Report) -> Option<Fields<'a>> {
        match &node.value {
            Value::Mapping(entries) => Some(Fields { path: path.to_string(), entries }),
            _ => {
                let key = if path.is_empty() { "user-data" } else { path };
                report.error(key, Some(node.position), format!("expected a mapping, found {}", node.kind()));
                None
            }
        }
    }

    /// Every (key, value) in source order.
    pub fn entries(&self) -> &'a [(Node, Node)] {
        self.entries
    }

    pub fn get(&self, key: &str) -> Option<&'a Node> {
        self.entries.iter().find(|(name, _)| name.as_scalar() == Some(key)).map(|(_, value)| value).filter(|value| !value.is_null())
    }

    /// Where the key itself is written, for problems about the key rather than its value.
    pub fn key_position(&self, key: &str) -> Option<crate::yaml::Position> {
        self.entries.iter().find(|(name, _)| name.as_scalar() == Some(key)).map(|(name, _)| name.position)
    }

    pub fn key_path(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// Warns about each key not in `known`, by name.
    pub fn warn_unknown(&self, known: &[&str], report: &mut Report) {
        for (name, _) in self.entries {
            let text = name.as_scalar().unwrap_or("?");
            if !known.contains(&text) {
                report.warning(self.key_path(text), Some(name.position), format!("unknown key {text:?}, ignored"));
            }
        }
    }

    pub fn string(&self, key: &str, report: &mut Report) -> Option<String> {
        self.get(key).and_then(|node| string(node, &self.key_path(key), report))
    }

    pub fn bool(&self, key: &str, report: &mut Report) -> Option<bool> {
        let node = self.get(key)?;
        let value = node.as_bool();
        if value.is_none() {
            report.error(self.key_path(key), Some(node.position), format!("expected true or false, found {}", describe(node)));
        }
        value
    }

    pub fn strings(&self, key: &str, report: &mut Report) -> Option<Vec<String>> {
        self.get(key).and_then(|node| strings(node, &self.key_path(key), report))
    }
}

/// A scalar as text. Numbers and booleans are accepted as their spelling,
/// as coreos-cloudinit's string fields did.
pub fn string(node: &Node, path: &str, report: &mut Report) -> Option<String> {
    match &node.value {
        Value::Scalar { text, .. } => Some(text.clone()),
        _ => {
            report.error(path, Some(node.position), format!("expected a string, found {}", node.kind()));
            None
        }
    }
}

/// A list of strings; a single string counts as a list of one.
pub fn strings(node: &Node, path: &str, report: &mut Report) -> Option<Vec<String>> {
    match &node.value {
        Value::Scalar { text, .. } => Some(vec![text.clone()]),
        Value::Sequence(items) => {
            let mut values = Vec::new();
            let mut ok = true;
            for (index, item) in items.iter().enumerate() {
                match string(item, &format!("{path}[{index}]"), report) {
                    Some(value) => values.push(value),
                    None => ok = false,
                }
            }
            ok.then_some(values)
        }
        Value::Mapping(_) => {
            report.error(path, Some(node.position), "expected a list of strings, found a mapping");
            None
        }
    }
}

/// The items of a list, each with its path; an error if not a list.
pub fn items<'a>(node: &'a Node, path: &str, report: &mut Report) -> Vec<(String, &'a Node)> {
    match &node.value {
        Value::Sequence(items) => items.iter().enumerate().map(|(index, item)| (format!("{path}[{index}]"), item)).collect(),
        _ if node.is_null() => Vec::new(),
        _ => {
            report.error(path, Some(node.position), format!("expected a list, found {}", node.kind()));
            Vec::new()
        }
    }
}

/// A scalar shown in a message: its text, quoted; other nodes by kind.
pub fn describe(node: &Node) -> String {
    match &node.value {
        Value::Scalar { text, .. } => format!("{text:?}"),
        _ => node.kind().to_string(),
    }
}

/// Runs `read` and tells whether it reported any new error: an entry with a
/// bad field is dropped whole rather than applied half.
pub fn clean<T>(report: &mut Report, read: impl FnOnce(&mut Report) -> Option<T>) -> Option<T> {
    let before = report.error_count();
    let value = read(report);
    if report.error_count() > before {
        None
    } else {
        value
    }
}
