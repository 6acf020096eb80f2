//! A YAML document as a tree whose every node remembers where it started,
//! so that each problem found later can name its line and column.
//!
//! Scalars keep their source text: cloud-config interprets `0644` as octal and
//! `yes` as a boolean the way coreos-cloudinit's YAML 1.1 parser did, which a
//! YAML 1.2 resolver would not.

use std::collections::HashMap;
use std::fmt;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

/// Where something is in the source text, both 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

impl Position {
    pub fn new(line: usize, column: usize) -> Self {
        Position { line, column }
    }

    fn from_marker(marker: &Marker) -> Self {
        // yaml-rust2 counts lines from 1 and columns from 0.
        Position { line: marker.line(), column: marker.col() + 1 }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.column)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Source text of the scalar; `quoted` is false only for plain scalars,
    /// the ones whose type YAML guesses (`yes`, `12`, `~`).
    Scalar {
        text: String,
        quoted: bool,
    },
    Sequence(Vec<Node>),
    /// Keys in source order; duplicate keys are reported by the parser below.
    Mapping(Vec<(Node, Node)>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: Value,
    pub position: Position,
}

impl Node {
    /// What a user would call this kind of node, for messages.
    pub fn kind(&self) -> &'static str {
        match &self.value {
            Value::Scalar { .. } if self.is_null() => "null",
            Value::Scalar { .. } => "a scalar",
            Value::Sequence(_) => "a list",
            Value::Mapping(_) => "a mapping",
        }
    }

    pub fn is_null(&self) -> bool {
        matches!(&self.value, Value::Scalar { text, quoted: false } if matches!(text.as_str(), "" | "~" | "null" | "Null" | "NULL"))
    }

    pub fn as_scalar(&self) -> Option<&str> {
        match &self.value {
            Value::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    pub fn as_mapping(&self) -> Option<&[(Node, Node)]> {
        match &self.value {
            Value::Mapping(entries) => Some(entries),
            _ => None,
        }
    }

    pub fn as_sequence(&self) -> Option<&[Node]> {
        match &self.value {
            Value::Sequence(items) => Some(items),
            _ => None,
        }
    }

    /// A boolean in YAML 1.1 spelling, which is what coreos-cloudinit users wrote.
    pub fn as_bool(&self) -> Option<bool> {
        match &self.value {
            Value::Scalar { text, quoted: false } => match text.as_str() {
                "true" | "True" | "TRUE" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" => Some(true),
                "false" | "False" | "FALSE" | "no" | "No" | "NO" | "off" | "Off" | "OFF" => Some(false),
                _ => None,
            },
            _ => None,
        }
    }
}

/// The YAML text could not be parsed at all.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{position}: {message}")]
pub struct SyntaxError {
    pub position: Position,
    pub message: String,
}

/// Parses the first document of `text`. An empty document is a null node.
pub fn parse(text: &str) -> Result<Node, SyntaxError> {
    let mut builder = TreeBuilder::default();
    let mut parser = Parser::new_from_str(text);
    parser.load(&mut builder, false).map_err(|error| SyntaxError { position: Position::from_marker(error.marker()), message: error.info().to_string() })?;
    if let Some(error) = builder.error {
        return Err(error);
    }
    Ok(builder.root.unwrap_or(Node { value: Value::Scalar { text: String::new(), quoted: false }, position: Position::new(1, 1) }))
}

enum Open {
    Sequence { node: Node, anchor: usize },
    Mapping { node: Node, anchor: usize, pending_key: Option<Node> },
}

#[derive(Default)]
struct TreeBuilder {
    stack: Vec<Open>,
    anchors: HashMap<usize, Node>,
    root: Option<Node>,
    error: Option<SyntaxError>,
    documents: usize,
}

impl TreeBuilder {
    fn finish(&mut self, node: Node, anchor: usize) {
        if anchor != 0 {
            self.anchors.insert(anchor, node.clone());
        }
        match self.stack.last_mut() {
            None => {
                if self.root.is_none() {
                    self.root = Some(node);
                }
            }
            Some(Open::Sequence { node: parent, .. }) => {
                if let Value::Sequence(items) = &mut parent.value {
                    items.push(node);
                }
            }
            Some(Open::Mapping { node: parent, pending_key, .. }) => match pending_key.take() {
                None => *pending_key = Some(node),
                Some(key) => {
                    if let Value::Mapping(entries) = &mut parent.value {
                        let duplicate = entries.iter().any(|(existing, _)| existing.as_scalar().is_some() && existing.as_scalar() == key.as_scalar());
                        if duplicate && self.error.is_none() {
                            self.error = Some(SyntaxError { position: key.position, message: format!("duplicate key {:?}", key.as_scalar().unwrap_or_default()) });
                        }
                        entries.push((key, node));
                    }
                }
            },
        }
    }
}

impl MarkedEventReceiver for TreeBuilder {
    fn on_event(&mut self, event: Event, marker: Marker) {
        let position = Position::from_marker(&marker);
        match event {
            Event::DocumentStart => self.documents += 1,
            Event::Scalar(text, style, anchor, _tag) => {
                let quoted = !matches!(style, TScalarStyle::Plain);
                self.finish(Node { value: Value::Scalar { text, quoted }, position }, anchor);
            }
            Event::SequenceStart(anchor, _tag) => self.stack.push(Open::Sequence { node: Node { value: Value::Sequence(Vec::new()), position }, anchor }),
            Event::MappingStart(anchor, _tag) => self.stack.push(Open::Mapping { node: Node { value: Value::Mapping(Vec::new()), position }, anchor, pending_key: None }),
            Event::SequenceEnd | Event::MappingEnd => {
                if let Some(open) = self.stack.pop() {
                    let (node, anchor) = match open {
                        Open::Sequence { node, anchor } => (node, anchor),
                        Open::Mapping { node, anchor, .. } => (node, anchor),
                    };
                    self.finish(node, anchor);
                }
            }
            Event::Alias(anchor) => {
                // An alias is a copy of what its anchor named, placed here.
                let node = match self.anchors.get(&anchor) {
                    Some(target) => Node { value: target.value.clone(), position },
                    None => Node { value: Value::Scalar { text: String::new(), quoted: false }, position },
                };
                self.finish(node, 0);
            }
            Event::Nothing | Event::StreamStart | Event::StreamEnd | Event::DocumentEnd => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_one_based_lines_and_columns() {
        let root = parse("#cloud-config\nhostname: web1\nusers:\n  - name: alice\n").unwrap();
        let entries = root.as_mapping().unwrap();
        assert_eq!(entries[0].0.as_scalar(), Some("hostname"));
        assert_eq!(entries[0].0.position, Position::new(2, 1));
        assert_eq!(entries[0].1.position, Position::new(2, 11));
        let users = entries[1].1.as_sequence().unwrap();
        let alice = users[0].as_mapping().unwrap();
        assert_eq!(alice[0].1.as_scalar(), Some("alice"));
        assert_eq!(alice[0].0.position, Position::new(4, 5));
    }

    #[test]
    fn scalars_keep_their_source_text() {
        let root = parse("a: 0644\nb: '0644'\nc: yes\n").unwrap();
        let entries = root.as_mapping().unwrap();
        assert_eq!(entries[0].1.value, Value::Scalar { text: "0644".into(), quoted: false });
        assert_eq!(entries[1].1.value, Value::Scalar { text: "0644".into(), quoted: true });
        assert_eq!(entries[2].1.as_bool(), Some(true));
    }

    #[test]
    fn syntax_errors_carry_a_position() {
        let error = parse("a: [1, 2\nb: c\n").unwrap_err();
        assert!(error.position.line >= 1, "{error}");
        let error = parse("key: value\n  bad: indent\n").unwrap_err();
        assert_eq!(error.position.line, 2, "{error}");
    }

    #[test]
    fn duplicate_keys_are_errors() {
        let error = parse("hostname: a\nhostname: b\n").unwrap_err();
        assert_eq!(error.position, Position::new(2, 1));
        assert!(error.message.contains("duplicate key \"hostname\""));
    }

    #[test]
    fn aliases_copy_their_anchor() {
        let root = parse("a: &k [x, y]\nb: *k\n").unwrap();
        let entries = root.as_mapping().unwrap();
        assert_eq!(entries[1].1.as_sequence().unwrap().len(), 2);
        assert_eq!(entries[1].1.position.line, 2);
    }
}
