//! A mutation of the keyspace, as data: what the HTTP layer parses a request
//! into, what the writer thread queues, and what the tree applies. Mirrors
//! how etcd maps PUT/POST/DELETE with their conditions onto store operations.

use crate::timestamp::Timestamp;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mutation {
    /// PUT without conditions: create or replace a file, or create a directory.
    Set { key: String, dir: bool, value: String, expires: Option<Timestamp>, refresh: bool },
    /// PUT with `prevExist=false`, and POST (`unique`: an in-order key below `key`).
    Create { key: String, dir: bool, value: String, unique: bool, expires: Option<Timestamp> },
    /// PUT with `prevExist=true` and no other condition.
    Update { key: String, value: String, expires: Option<Timestamp>, refresh: bool },
    /// PUT with `prevValue` and/or `prevIndex`.
    CompareAndSwap { key: String, prev_value: String, prev_index: u64, value: String, expires: Option<Timestamp>, refresh: bool },
    /// DELETE without conditions.
    Delete { key: String, dir: bool, recursive: bool },
    /// DELETE with `prevValue` and/or `prevIndex`.
    CompareAndDelete { key: String, prev_value: String, prev_index: u64 },
}

impl Mutation {
    pub fn key(&self) -> &str {
        match self {
            Mutation::Set { key, .. }
            | Mutation::Create { key, .. }
            | Mutation::Update { key, .. }
            | Mutation::CompareAndSwap { key, .. }
            | Mutation::Delete { key, .. }
            | Mutation::CompareAndDelete { key, .. } => key,
        }
    }
}
