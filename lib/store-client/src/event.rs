//! What the keys API answers with: an event (`action`, `node`, `prevNode`)
//! whose nodes render exactly like etcd's `NodeExtern`.

use crate::timestamp::Timestamp;
use serde::{Deserialize, Serialize};

/// The `action` of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    #[serde(rename = "get")]
    Get,
    #[serde(rename = "create")]
    Create,
    #[serde(rename = "set")]
    Set,
    #[serde(rename = "update")]
    Update,
    #[serde(rename = "delete")]
    Delete,
    #[serde(rename = "compareAndSwap")]
    CompareAndSwap,
    #[serde(rename = "compareAndDelete")]
    CompareAndDelete,
    #[serde(rename = "expire")]
    Expire,
}

/// One node as the API shows it. Field order and omissions follow etcd, so
/// byte-level comparisons with etcd's answers only differ in the indexes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeView {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dir: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiration: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub ttl: i64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeView>,
    #[serde(rename = "modifiedIndex", default, skip_serializing_if = "is_zero_u64")]
    pub modified_index: u64,
    #[serde(rename = "createdIndex", default, skip_serializing_if = "is_zero_u64")]
    pub created_index: u64,
}

fn is_zero_i64(v: &i64) -> bool {
    *v == 0
}

fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}

/// The answer to a keys request, and an entry of the watch history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub action: Action,
    pub node: NodeView,
    #[serde(rename = "prevNode", default, skip_serializing_if = "Option::is_none")]
    pub prev_node: Option<NodeView>,
    /// The store index when this answer was made (header `X-Etcd-Index`).
    #[serde(skip)]
    pub etcd_index: u64,
    /// A TTL refresh: kept in the history but never shown to watchers, and
    /// (as in etcd) never part of an answer.
    #[serde(skip)]
    pub refresh: bool,
}

impl Event {
    pub fn new(action: Action, key: &str, modified_index: u64, created_index: u64) -> Event {
        Event { action, node: NodeView { key: display_key(key), modified_index, created_index, ..NodeView::default() }, prev_node: None, etcd_index: 0, refresh: false }
    }

    /// The index this event happened at.
    pub fn index(&self) -> u64 {
        self.node.modified_index
    }

    /// etcd answers 201 Created for a create, and for a set of a new key.
    pub fn is_created(&self) -> bool {
        self.action == Action::Create || (self.action == Action::Set && self.prev_node.is_none())
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("event serialises")
    }
}

/// The root is shown without a key, as etcd 3's v2 API does.
pub fn display_key(path: &str) -> String {
    if path == "/" {
        String::new()
    } else {
        path.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_like_etcd() {
        let mut e = Event::new(Action::Set, "/foo", 7, 7);
        e.node.value = Some("bar".into());
        assert_eq!(e.to_json(), r#"{"action":"set","node":{"key":"/foo","value":"bar","modifiedIndex":7,"createdIndex":7}}"#);
        assert!(e.is_created());
        let mut d = Event::new(Action::Get, "/", 0, 0);
        d.node.dir = true;
        assert_eq!(d.to_json(), r#"{"action":"get","node":{"dir":true}}"#);
        let back: Event = serde_json::from_str(&e.to_json()).unwrap();
        assert_eq!(back.node, e.node);
    }

    #[test]
    fn empty_value_is_kept() {
        let mut e = Event::new(Action::Create, "/k", 2, 2);
        e.node.value = Some(String::new());
        assert!(e.to_json().contains(r#""value":"""#));
    }
}
