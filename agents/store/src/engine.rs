//! Durability: the keyspace kept in redb, one write transaction per batch of
//! mutations, committed with `Durability::Immediate` (fsync) before any of
//! them is acknowledged. The tree in memory is the working copy; this file is
//! the truth it is rebuilt from at start.
//!
//! Tables: `nodes` maps a path to its node (parents sort before children, so
//! a scan rebuilds the tree in one pass), `events` keeps the watch history by
//! index so `waitIndex` works across restarts, `meta` holds the current index.

use crate::event::Event;
use crate::timestamp::Timestamp;
use crate::tree::{Change, NodeRecord, Tree};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::{Path, PathBuf};

const NODES: TableDefinition<&str, &[u8]> = TableDefinition::new("nodes");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const META_INDEX: &str = "index";

/// The database file inside the data directory.
pub const DB_FILE: &str = "store.redb";

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot create the data directory {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error("cannot open the store database {path}: {source}")]
    Open { path: PathBuf, source: Box<redb::DatabaseError> },
    #[error("storage engine: {0}")]
    Storage(String),
    #[error("stored record for {path} is damaged: {why}")]
    Corrupt { path: String, why: String },
}

fn storage(e: impl std::fmt::Display) -> EngineError {
    EngineError::Storage(e.to_string())
}

pub struct Engine {
    db: Database,
    history_capacity: usize,
}

impl Engine {
    /// Open (or create) the database in `data_dir` and rebuild the tree from it.
    pub fn open(data_dir: &Path, history_capacity: usize) -> Result<(Engine, Tree), EngineError> {
        std::fs::create_dir_all(data_dir)
            .map_err(|source| EngineError::DataDir { path: data_dir.to_path_buf(), source })?;
        let path = data_dir.join(DB_FILE);
        let db = Database::create(&path).map_err(|e| EngineError::Open { path: path.clone(), source: Box::new(e) })?;
        let engine = Engine { db, history_capacity };
        {
            // Make sure the tables exist, so reads never meet a missing table.
            let txn = engine.db.begin_write().map_err(storage)?;
            txn.open_table(NODES).map_err(storage)?;
            txn.open_table(EVENTS).map_err(storage)?;
            txn.open_table(META).map_err(storage)?;
            txn.commit().map_err(storage)?;
        }
        let tree = engine.load()?;
        Ok((engine, tree))
    }

    /// Rebuild the tree from what is on disk.
    pub fn load(&self) -> Result<Tree, EngineError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let meta = txn.open_table(META).map_err(storage)?;
        let index = meta.get(META_INDEX).map_err(storage)?.map(|v| v.value()).unwrap_or(0);
        let nodes_table = txn.open_table(NODES).map_err(storage)?;
        let mut nodes = Vec::new();
        for entry in nodes_table.iter().map_err(storage)? {
            let (k, v) = entry.map_err(storage)?;
            let path = k.value().to_string();
            let rec = decode_node(v.value()).map_err(|why| EngineError::Corrupt { path: path.clone(), why })?;
            nodes.push((path, rec));
        }
        let events_table = txn.open_table(EVENTS).map_err(storage)?;
        let mut events = Vec::new();
        for entry in events_table.iter().map_err(storage)? {
            let (k, v) = entry.map_err(storage)?;
            // One flag byte (1: a TTL refresh), then the event's JSON.
            let bytes = v.value();
            let corrupt = |why: String| EngineError::Corrupt { path: format!("event {}", k.value()), why };
            let (flag, json) = bytes.split_first().ok_or_else(|| corrupt("empty record".into()))?;
            let mut event: Event = serde_json::from_slice(json).map_err(|e| corrupt(e.to_string()))?;
            event.refresh = *flag == 1;
            events.push(event);
        }
        Ok(Tree::restore(index, nodes, events, self.history_capacity))
    }

    /// Write everything the tree changed since the last call, durably.
    pub fn persist(&self, tree: &mut Tree) -> Result<(), EngineError> {
        let (changes, events) = tree.take_pending();
        if changes.is_empty() && events.is_empty() {
            return Ok(());
        }
        let mut txn = self.db.begin_write().map_err(storage)?;
        txn.set_durability(Durability::Immediate).map_err(storage)?;
        {
            let mut nodes = txn.open_table(NODES).map_err(storage)?;
            for change in &changes {
                match change {
                    Change::Put(path) => {
                        if let Some(rec) = tree.record_at(path) {
                            nodes.insert(path.as_str(), encode_node(&rec).as_slice()).map_err(storage)?;
                        }
                    }
                    Change::Remove(path) => {
                        nodes.remove(path.as_str()).map_err(storage)?;
                        // Everything below `path`: keys from "path/" up to "path0" ('0' follows '/').
                        let low = format!("{path}/");
                        let high = format!("{path}0");
                        let below: Vec<String> = nodes
                            .range(low.as_str()..high.as_str())
                            .map_err(storage)?
                            .map(|e| e.map(|(k, _)| k.value().to_string()))
                            .collect::<Result<_, _>>()
                            .map_err(storage)?;
                        for k in below {
                            nodes.remove(k.as_str()).map_err(storage)?;
                        }
                    }
                }
            }
            let mut table = txn.open_table(EVENTS).map_err(storage)?;
            let mut last = 0;
            for e in &events {
                let mut record = vec![u8::from(e.refresh)];
                serde_json::to_writer(&mut record, e).map_err(storage)?;
                table.insert(e.index(), record.as_slice()).map_err(storage)?;
                last = last.max(e.index());
            }
            if last > self.history_capacity as u64 {
                let cut = last - self.history_capacity as u64;
                let old: Vec<u64> = table
                    .range(..=cut)
                    .map_err(storage)?
                    .map(|e| e.map(|(k, _)| k.value()))
                    .collect::<Result<_, _>>()
                    .map_err(storage)?;
                for k in old {
                    table.remove(k).map_err(storage)?;
                }
            }
            let mut meta = txn.open_table(META).map_err(storage)?;
            meta.insert(META_INDEX, tree.index()).map_err(storage)?;
        }
        txn.commit().map_err(storage)?;
        Ok(())
    }
}

// A node on disk: flags (1 = directory, 2 = has a TTL), created, modified and
// expiration as little-endian u64, then the value's bytes.
fn encode_node(rec: &NodeRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(25 + rec.value.len());
    let flags = u8::from(rec.dir) | (u8::from(rec.expires.is_some()) << 1);
    out.push(flags);
    out.extend_from_slice(&rec.created.to_le_bytes());
    out.extend_from_slice(&rec.modified.to_le_bytes());
    out.extend_from_slice(&rec.expires.map_or(0, |t| t.0).to_le_bytes());
    out.extend_from_slice(rec.value.as_bytes());
    out
}

fn decode_node(bytes: &[u8]) -> Result<NodeRecord, String> {
    if bytes.len() < 25 {
        return Err(format!("{} bytes, shorter than the 25-byte header", bytes.len()));
    }
    let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    let flags = bytes[0];
    Ok(NodeRecord {
        dir: flags & 1 != 0,
        created: word(1),
        modified: word(9),
        expires: (flags & 2 != 0).then(|| Timestamp(word(17))),
        value: String::from_utf8(bytes[25..].to_vec()).map_err(|_| "value is not UTF-8".to_string())?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::Mutation;

    fn set(key: &str, value: &str) -> Mutation {
        Mutation::Set { key: key.into(), dir: false, value: value.into(), expires: None, refresh: false }
    }

    #[test]
    fn node_encoding_round_trips() {
        let rec = NodeRecord { dir: false, value: "héllo".into(), created: 3, modified: 9, expires: Some(Timestamp(77)) };
        assert_eq!(decode_node(&encode_node(&rec)).unwrap(), rec);
        assert!(decode_node(&[1, 2]).is_err());
    }

    #[test]
    fn reopening_gives_back_the_same_tree_and_history() {
        let dir = tempfile::tempdir().unwrap();
        let now = Timestamp::now();
        let expected = {
            let (engine, mut tree) = Engine::open(dir.path(), 5).unwrap();
            for i in 0..8 {
                tree.apply(&set(&format!("/d/{i}"), "v"), now).unwrap();
                engine.persist(&mut tree).unwrap();
            }
            tree.apply(&Mutation::Delete { key: "/d/3".into(), dir: false, recursive: false }, now).unwrap();
            tree.apply(&set("/e/x/y", "deep"), now).unwrap();
            tree.apply(&Mutation::Delete { key: "/e".into(), dir: true, recursive: true }, now).unwrap();
            engine.persist(&mut tree).unwrap();
            (tree.index(), tree.all_records(), tree.history().start_index())
        };
        let (_engine, tree) = Engine::open(dir.path(), 5).unwrap();
        assert_eq!((tree.index(), tree.all_records(), tree.history().start_index()), expected);
        assert_eq!(tree.index(), 11);
        assert_eq!(tree.history().start_index(), 7);
        assert!(tree.get("/e", false, now).is_err());
    }
}
