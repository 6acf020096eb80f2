//! Durability: every batch of mutations is one record in the write-ahead log
//! (`wal`), synced before any of it is acknowledged; redb holds the keyspace
//! as of the last checkpoint, taken every few thousand batches, when the log
//! fills, and after a second without writes, with `Durability::Immediate`.
//! At start the tree is rebuilt from redb and the log's newer records. The
//! tree in memory is the working copy; these files are the truth.
//!
//! Tables: `nodes` maps a path to its node (parents sort before children, so
//! a scan rebuilds the tree in one pass), `events` keeps the watch history by
//! index so `waitIndex` works across restarts, `meta` holds the current index.

use crate::event::Event;
use crate::timestamp::Timestamp;
use crate::tree::{Change, NodeRecord, Tree};
use crate::wal::Wal;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

const NODES: TableDefinition<&str, &[u8]> = TableDefinition::new("nodes");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const META_INDEX: &str = "index";
const META_GENERATION: &str = "wal-generation";

/// The database file inside the data directory.
pub const DB_FILE: &str = "store.redb";
/// The write-ahead log inside the data directory.
pub const WAL_FILE: &str = "store.wal";
/// Bytes the log pre-allocates; a checkpoint comes when 3/4 are used.
pub const WAL_BYTES: u64 = 16 << 20;
/// Batches between checkpoints at most.
const CHECKPOINT_BATCHES: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot create the data directory {path}: {source}")]
    DataDir { path: PathBuf, source: std::io::Error },
    #[error("cannot open the store database {path}: {source}")]
    Open { path: PathBuf, source: Box<redb::DatabaseError> },
    #[error("write-ahead log {path}: {source}")]
    Wal { path: PathBuf, source: std::io::Error },
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
    wal: Wal,
    generation: u64,
    history_capacity: usize,
    unpersisted_changes: Vec<Change>,
    unpersisted_events: Vec<Event>,
    batches: usize,
}

impl Engine {
    /// Open (or create) the store in `data_dir`: rebuild the tree from redb
    /// and the log, and fold the log into redb.
    pub fn open(data_dir: &Path, history_capacity: usize) -> Result<(Engine, Tree), EngineError> {
        // Values may be secrets: the directory is the owner's alone (a
        // directory that exists keeps the mode it was given).
        let dir_error = |source| EngineError::DataDir { path: data_dir.to_path_buf(), source };
        if let Some(parent) = data_dir.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(dir_error)?;
        }
        match std::fs::DirBuilder::new().mode(0o700).create(data_dir) {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(dir_error(e)),
            _ => {}
        }
        let path = data_dir.join(DB_FILE);
        let db = Database::create(&path).map_err(|e| EngineError::Open { path: path.clone(), source: Box::new(e) })?;
        {
            // Make sure the tables exist, so reads never meet a missing table.
            let txn = db.begin_write().map_err(storage)?;
            txn.open_table(NODES).map_err(storage)?;
            txn.open_table(EVENTS).map_err(storage)?;
            txn.open_table(META).map_err(storage)?;
            txn.commit().map_err(storage)?;
        }
        let generation = read_meta(&db, META_GENERATION)?.unwrap_or(1);
        let wal_path = data_dir.join(WAL_FILE);
        let (wal, _) = Wal::open(&wal_path, WAL_BYTES, generation).map_err(|source| EngineError::Wal { path: wal_path.clone(), source })?;
        let mut engine = Engine { db, wal, generation, history_capacity, unpersisted_changes: Vec::new(), unpersisted_events: Vec::new(), batches: 0 };
        let tree = engine.recover()?;
        engine.checkpoint(&tree)?;
        Ok((engine, tree))
    }

    /// Rebuild the tree from what is on disk: redb, then the log's records
    /// past redb's index. What the log adds is kept as not yet in redb.
    pub fn recover(&mut self) -> Result<Tree, EngineError> {
        let mut tree = self.load_db()?;
        let wal_path = self.wal.path().to_path_buf();
        let (wal, records) = Wal::open(&wal_path, WAL_BYTES, self.generation).map_err(|source| EngineError::Wal { path: wal_path.clone(), source })?;
        self.wal = wal;
        for record in records {
            if record.seq <= tree.index() {
                continue;
            }
            replay_batch(&mut tree, &record.payload).map_err(|why| EngineError::Corrupt { path: format!("log record {}", record.seq), why })?;
            tree.set_index(record.seq);
        }
        let (changes, events) = tree.take_pending();
        self.unpersisted_changes = changes;
        self.unpersisted_events = events;
        Ok(tree)
    }

    fn load_db(&self) -> Result<Tree, EngineError> {
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
            let event = decode_event(v.value()).map_err(|why| EngineError::Corrupt { path: format!("event {}", k.value()), why })?;
            events.push(event);
        }
        Ok(Tree::restore(index, nodes, events, self.history_capacity))
    }

    /// Make everything the tree changed since the last call durable: one
    /// log record, one sync. Checkpoints into redb when it is time.
    pub fn commit(&mut self, tree: &mut Tree) -> Result<(), EngineError> {
        let (changes, events) = tree.take_pending();
        if changes.is_empty() && events.is_empty() {
            return Ok(());
        }
        let payload = encode_batch(tree, &changes, &events);
        self.wal.append(tree.index(), &payload).map_err(|source| EngineError::Wal { path: self.wal.path().to_path_buf(), source })?;
        self.unpersisted_changes.extend(changes);
        self.unpersisted_events.extend(events);
        self.batches += 1;
        if self.batches >= CHECKPOINT_BATCHES || self.wal.used() > self.wal.capacity() / 4 * 3 {
            // The log already holds this batch: a failed checkpoint loses nothing.
            if let Err(e) = self.checkpoint(tree) {
                eprintln!("basalt-store: checkpoint failed, the log keeps the changes: {e}");
            }
        }
        Ok(())
    }

    /// Whether redb is behind the log.
    pub fn needs_checkpoint(&self) -> bool {
        !self.unpersisted_changes.is_empty() || !self.unpersisted_events.is_empty()
    }

    /// Write everything the log holds into redb, durably, and start a new log.
    pub fn checkpoint(&mut self, tree: &Tree) -> Result<(), EngineError> {
        if !self.needs_checkpoint() && self.wal.used() == 0 {
            return Ok(());
        }
        let next_generation = self.generation + 1;
        let mut txn = self.db.begin_write().map_err(storage)?;
        txn.set_durability(Durability::Immediate).map_err(storage)?;
        {
            let mut nodes = txn.open_table(NODES).map_err(storage)?;
            for change in &self.unpersisted_changes {
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
                        let below: Vec<String> =
                            nodes.range(low.as_str()..high.as_str()).map_err(storage)?.map(|e| e.map(|(k, _)| k.value().to_string())).collect::<Result<_, _>>().map_err(storage)?;
                        for k in below {
                            nodes.remove(k.as_str()).map_err(storage)?;
                        }
                    }
                }
            }
            let mut table = txn.open_table(EVENTS).map_err(storage)?;
            let keep_from = tree.index().saturating_sub(self.history_capacity as u64);
            for e in self.unpersisted_events.iter().filter(|e| e.index() > keep_from) {
                table.insert(e.index(), encode_event(e).as_slice()).map_err(storage)?;
            }
            let old: Vec<u64> = table.range(..=keep_from).map_err(storage)?.map(|e| e.map(|(k, _)| k.value())).collect::<Result<_, _>>().map_err(storage)?;
            for k in old {
                table.remove(k).map_err(storage)?;
            }
            let mut meta = txn.open_table(META).map_err(storage)?;
            meta.insert(META_INDEX, tree.index()).map_err(storage)?;
            meta.insert(META_GENERATION, next_generation).map_err(storage)?;
        }
        txn.commit().map_err(storage)?;
        self.generation = next_generation;
        self.wal.reset(next_generation);
        self.unpersisted_changes.clear();
        self.unpersisted_events.clear();
        self.batches = 0;
        Ok(())
    }
}

fn read_meta(db: &Database, key: &str) -> Result<Option<u64>, EngineError> {
    let txn = db.begin_read().map_err(storage)?;
    let meta = txn.open_table(META).map_err(storage)?;
    Ok(meta.get(key).map_err(storage)?.map(|v| v.value()))
}

// An event on disk: one flag byte (1: a TTL refresh), then its JSON.
pub(crate) fn encode_event(e: &Event) -> Vec<u8> {
    let mut record = vec![u8::from(e.refresh)];
    serde_json::to_writer(&mut record, e).expect("event serialises");
    record
}

pub(crate) fn decode_event(bytes: &[u8]) -> Result<Event, String> {
    let (flag, json) = bytes.split_first().ok_or("empty record")?;
    let mut event: Event = serde_json::from_slice(json).map_err(|e| e.to_string())?;
    event.refresh = *flag == 1;
    Ok(event)
}

// A log record's payload: the batch's changes in order, as the nodes are
// after it (1 = put path+node, 2 = remove path), then its events (3).
const OP_PUT: u8 = 1;
const OP_REMOVE: u8 = 2;
const OP_EVENT: u8 = 3;

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn encode_batch(tree: &Tree, changes: &[Change], events: &[Event]) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    for change in changes {
        match change {
            Change::Put(path) => {
                if let Some(rec) = tree.record_at(path) {
                    out.push(OP_PUT);
                    put_bytes(&mut out, path.as_bytes());
                    put_bytes(&mut out, &encode_node(&rec));
                }
            }
            Change::Remove(path) => {
                out.push(OP_REMOVE);
                put_bytes(&mut out, path.as_bytes());
            }
        }
    }
    for e in events {
        out.push(OP_EVENT);
        put_bytes(&mut out, &encode_event(e));
    }
    out
}

fn replay_batch(tree: &mut Tree, mut bytes: &[u8]) -> Result<(), String> {
    fn take<'a>(bytes: &mut &'a [u8]) -> Result<&'a [u8], String> {
        if bytes.len() < 4 {
            return Err("truncated length".into());
        }
        let len = u32::from_le_bytes(bytes[..4].try_into().expect("4 bytes")) as usize;
        if bytes.len() < 4 + len {
            return Err("truncated field".into());
        }
        let field = &bytes[4..4 + len];
        *bytes = &bytes[4 + len..];
        Ok(field)
    }
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| "path is not UTF-8".to_string());
    while let Some((&op, rest)) = bytes.split_first() {
        bytes = rest;
        match op {
            OP_PUT => {
                let path = text(take(&mut bytes)?)?;
                let rec = decode_node(take(&mut bytes)?)?;
                tree.replay_put(&path, rec);
            }
            OP_REMOVE => tree.replay_remove(&text(take(&mut bytes)?)?),
            OP_EVENT => tree.replay_event(decode_event(take(&mut bytes)?)?),
            other => return Err(format!("unknown operation {other}")),
        }
    }
    Ok(())
}

// A node on disk: flags (1 = directory, 2 = has a TTL), created, modified and
// expiration as little-endian u64, then the value's bytes.
pub(crate) fn encode_node(rec: &NodeRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(25 + rec.value.len());
    let flags = u8::from(rec.dir) | (u8::from(rec.expires.is_some()) << 1);
    out.push(flags);
    out.extend_from_slice(&rec.created.to_le_bytes());
    out.extend_from_slice(&rec.modified.to_le_bytes());
    out.extend_from_slice(&rec.expires.map_or(0, |t| t.0).to_le_bytes());
    out.extend_from_slice(rec.value.as_bytes());
    out
}

pub(crate) fn decode_node(bytes: &[u8]) -> Result<NodeRecord, String> {
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

    fn scenario(tree: &mut Tree, engine: &mut Engine, now: Timestamp) {
        for i in 0..8 {
            tree.apply(&set(&format!("/d/{i}"), "v"), now).unwrap();
            engine.commit(tree).unwrap();
        }
        tree.apply(&Mutation::Delete { key: "/d/3".into(), dir: false, recursive: false }, now).unwrap();
        tree.apply(&set("/e/x/y", "deep"), now).unwrap();
        tree.apply(&Mutation::Delete { key: "/e".into(), dir: true, recursive: true }, now).unwrap();
        let ttl = Some(now.plus_seconds(1000));
        tree.apply(&Mutation::Set { key: "/t".into(), dir: true, value: String::new(), expires: ttl, refresh: false }, now).unwrap();
        tree.apply(&set("/t/child", "c"), now).unwrap();
        tree.apply(&Mutation::Update { key: "/t".into(), value: String::new(), expires: None, refresh: false }, now).unwrap();
        engine.commit(tree).unwrap();
    }

    #[test]
    fn a_new_data_directory_is_the_owners_alone() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("var/lib/store");
        drop(Engine::open(&data, 5).unwrap());
        assert_eq!(std::fs::metadata(&data).unwrap().permissions().mode() & 0o777, 0o700);
    }

    #[test]
    fn reopening_after_checkpoint_gives_back_the_same_tree_and_history() {
        let dir = tempfile::tempdir().unwrap();
        let now = Timestamp::now();
        let expected = {
            let (mut engine, mut tree) = Engine::open(dir.path(), 5).unwrap();
            scenario(&mut tree, &mut engine, now);
            engine.checkpoint(&tree).unwrap();
            (tree.index(), tree.all_records(), tree.history().start_index())
        };
        let (_engine, tree) = Engine::open(dir.path(), 5).unwrap();
        assert_eq!((tree.index(), tree.all_records(), tree.history().start_index()), expected);
        assert_eq!(tree.index(), 14);
        assert!(tree.get("/e", false, now).is_err());
    }

    #[test]
    fn the_log_alone_brings_back_what_was_never_checkpointed() {
        let dir = tempfile::tempdir().unwrap();
        let now = Timestamp::now();
        let expected = {
            let (mut engine, mut tree) = Engine::open(dir.path(), 1000).unwrap();
            scenario(&mut tree, &mut engine, now);
            assert!(engine.needs_checkpoint());
            // Dropped without a checkpoint, as a killed process would be.
            (tree.index(), tree.all_records(), tree.get("/", true, now).unwrap().to_json())
        };
        let (engine, tree) = Engine::open(dir.path(), 1000).unwrap();
        assert!(!engine.needs_checkpoint(), "opening folds the log into redb");
        assert_eq!((tree.index(), tree.all_records(), tree.get("/", true, now).unwrap().to_json()), expected);
        assert_eq!(tree.next_expiry(), None, "the update removed the directory's TTL");
        assert_eq!(tree.watch_scan("/d/0", false, 1).unwrap().unwrap().index(), 1);
        // And once more, now from redb alone.
        drop(engine);
        let (_, again) = Engine::open(dir.path(), 1000).unwrap();
        assert_eq!(again.all_records(), expected.1);
    }
}
