//! The cluster backend: the same keys API, with a real etcd v3 cluster as the
//! replicated, durable log underneath — no consensus of our own.
//!
//! Every batch of mutations becomes one log entry, appended at key
//! `<prefix>/log/<20-digit sequence>` with a transaction that succeeds only
//! if that key does not exist yet. A writer always appends right after the
//! last entry it applied, so the entries are contiguous and every store
//! applies the same entries in the same order to its own tree: the same
//! keyspace, the same indexes, the same answers on every machine. An entry
//! carries its proposer's clock, so TTLs expire identically everywhere; a
//! store with a TTL due and nothing to write appends an empty entry.
//!
//! It talks to etcd through its v3 JSON gateway (`/v3/kv/txn`,
//! `/v3/kv/range`, `/v3/watch`) with this crate's HTTP client: no gRPC,
//! protoc or code generation in the build. Requests fail over between the
//! configured members, so a stopped member or a leader change costs a retry.
//!
//! Every `snapshot_every` entries, the store that appended the entry writes
//! a snapshot of its tree (in chunks under `<prefix>/snap/<sequence>/`,
//! then `<prefix>/snap/latest`), and deletes the log older than one interval
//! behind it and older snapshots. A store that finds the entries it needs
//! gone starts from the newest snapshot.

use crate::client::{Client, Endpoint};
use crate::error::{ErrorCode, EtcdError};
use crate::event::Event;
use crate::request::Mutation;
use crate::timestamp::Timestamp;
use crate::tree::Tree;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::time::{Duration, Instant};

/// How long one operation keeps retrying across members before it fails.
const RETRY_FOR: Duration = Duration::from_secs(20);
/// Entries between snapshots, and the log kept behind the newest one.
pub const DEFAULT_SNAPSHOT_EVERY: u64 = 10_000;
/// Bytes per snapshot chunk (base64 of it stays under etcd's request limit).
const CHUNK_BYTES: usize = 1 << 20;

/// Entries fetched per range request while catching up.
const FETCH_LIMIT: usize = 500;
/// Bytes of values and keys one entry carries at most (more go into further
/// entries): base64 and JSON must stay under etcd's 1.5 MiB request limit.
pub const ENTRY_BYTES: usize = 700 * 1024;

/// Split a batch into runs whose keys and values fit one entry each (a
/// single mutation always makes its own run, whatever its size).
pub fn entry_runs(mutations: &[Mutation]) -> Vec<std::ops::Range<usize>> {
    let size = |m: &Mutation| {
        m.key().len()
            + match m {
                Mutation::Set { value, .. } | Mutation::Create { value, .. } | Mutation::Update { value, .. } | Mutation::CompareAndSwap { value, .. } => value.len(),
                _ => 0,
            }
    };
    let mut runs = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, m) in mutations.iter().enumerate() {
        let s = size(m);
        if i > start && bytes + s > ENTRY_BYTES {
            runs.push(start..i);
            start = i;
            bytes = 0;
        }
        bytes += s;
    }
    if start < mutations.len() {
        runs.push(start..mutations.len());
    }
    runs
}

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("no etcd member answered within {RETRY_FOR:?}; last error: {0}")]
    Unavailable(String),
    #[error("etcd answered something unexpected: {0}")]
    Protocol(String),
    #[error("log entry {seq} cannot be read: {why}")]
    BadEntry { seq: u64, why: String },
}

/// One log entry: a batch of mutations from one store.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    /// Unique per proposal, so a store recognises its own entry when the
    /// answer to its append was lost and the append did happen.
    pub id: String,
    pub now: Timestamp,
    pub mutations: Vec<Mutation>,
}

/// Apply one entry to a tree: expire what is due at the entry's time, then
/// the mutations in order.
pub fn apply_entry(tree: &mut Tree, entry: &Entry) -> Vec<Result<Event, EtcdError>> {
    tree.expire(entry.now);
    let results = entry.mutations.iter().map(|m| tree.apply(m, entry.now)).collect();
    // Nothing is kept locally: the cluster is the storage.
    tree.take_pending();
    results
}

pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

pub fn unbase64(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        } as u32)
    };
    let bytes: Vec<u8> = text.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= value(c)? << (18 - 6 * i);
        }
        let take = chunk.len().saturating_sub(1);
        for i in 0..take {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    Some(out)
}

/// A connection to the cluster, failing over between members.
pub struct Members {
    endpoints: Vec<Endpoint>,
    current: usize,
    client: Client,
}

impl Members {
    pub fn new(endpoints: Vec<Endpoint>) -> Members {
        assert!(!endpoints.is_empty(), "the cluster backend needs at least one etcd member");
        // Start with the leader if one says so: a follower would forward every
        // write to it, one more hop each. Any member works if none answers.
        let current = endpoints.iter().position(is_leader).unwrap_or(0);
        let client = Client::new(endpoints[current].clone());
        Members { endpoints, current, client }
    }

    /// POST a JSON request to the gateway, retrying on other members.
    fn call(&mut self, path: &str, body: &Value) -> Result<Value, ClusterError> {
        let deadline = Instant::now() + RETRY_FOR;
        let body = body.to_string();
        let mut last = String::new();
        let mut pause = Duration::from_millis(20);
        while Instant::now() < deadline {
            match self.client.request_with_type("POST", path, "application/json", &body) {
                Ok(r) if r.status == 200 => {
                    return serde_json::from_slice(&r.body).map_err(|e| ClusterError::Protocol(format!("{path}: {e}")));
                }
                // A refusal (too large, malformed) is the same on every member.
                Ok(r) if (400..500).contains(&r.status) => {
                    return Err(ClusterError::Protocol(format!("{path}: HTTP {} {}", r.status, r.text().trim())));
                }
                Ok(r) => last = format!("{path}: HTTP {} {}", r.status, r.text().trim()),
                Err(e) => last = format!("{path}: {e}"),
            }
            // Another member may be able to answer (or will be, after an election).
            self.current = (self.current + 1) % self.endpoints.len();
            self.client = Client::new(self.endpoints[self.current].clone());
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(500));
        }
        Err(ClusterError::Unavailable(last))
    }
}

/// Whether this member says it leads (`/v3/maintenance/status`).
pub fn is_leader(endpoint: &Endpoint) -> bool {
    let mut c = Client::new(endpoint.clone());
    c.set_timeout(Some(Duration::from_secs(2)));
    let Ok(r) = c.request_with_type("POST", "/v3/maintenance/status", "application/json", "{}") else {
        return false;
    };
    let v: Value = serde_json::from_slice(&r.body).unwrap_or_default();
    v["leader"].is_string() && v["leader"] == v["header"]["member_id"]
}

/// The log in the cluster.
pub struct ClusterLog {
    members: Members,
    prefix: String,
    snapshot_every: u64,
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// A tree as a snapshot: index, then every node, then the kept events.
pub fn encode_snapshot(tree: &Tree) -> Vec<u8> {
    let records = tree.all_records();
    let mut out = Vec::new();
    out.extend_from_slice(&tree.index().to_le_bytes());
    out.extend_from_slice(&(records.len() as u32).to_le_bytes());
    for (path, rec) in &records {
        put_bytes(&mut out, path.as_bytes());
        put_bytes(&mut out, &crate::engine::encode_node(rec));
    }
    let events: Vec<&Event> = tree.history().iter().collect();
    out.extend_from_slice(&(events.len() as u32).to_le_bytes());
    for e in events {
        put_bytes(&mut out, &crate::engine::encode_event(e));
    }
    out
}

pub fn decode_snapshot(mut bytes: &[u8], history_capacity: usize) -> Result<Tree, String> {
    fn word<const N: usize>(bytes: &mut &[u8]) -> Result<[u8; N], String> {
        let (head, rest) = bytes.split_at_checked(N).ok_or("truncated snapshot")?;
        *bytes = rest;
        Ok(head.try_into().expect("N bytes"))
    }
    fn field<'a>(bytes: &mut &'a [u8]) -> Result<&'a [u8], String> {
        let len = u32::from_le_bytes(word::<4>(bytes)?) as usize;
        let (head, rest) = bytes.split_at_checked(len).ok_or("truncated snapshot")?;
        *bytes = rest;
        Ok(head)
    }
    let index = u64::from_le_bytes(word::<8>(&mut bytes)?);
    let n = u32::from_le_bytes(word::<4>(&mut bytes)?);
    let mut nodes = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let path = String::from_utf8(field(&mut bytes)?.to_vec()).map_err(|_| "path is not UTF-8")?;
        nodes.push((path, crate::engine::decode_node(field(&mut bytes)?)?));
    }
    let n = u32::from_le_bytes(word::<4>(&mut bytes)?);
    let mut events = Vec::with_capacity(n as usize);
    for _ in 0..n {
        events.push(crate::engine::decode_event(field(&mut bytes)?)?);
    }
    Ok(Tree::restore(index, nodes, events, history_capacity))
}

fn log_key(prefix: &str, seq: u64) -> String {
    format!("{prefix}/log/{seq:020}")
}

fn str_u64(v: &Value) -> u64 {
    v.as_str().and_then(|s| s.parse().ok()).or_else(|| v.as_u64()).unwrap_or(0)
}

impl ClusterLog {
    pub fn new(endpoints: Vec<Endpoint>, prefix: &str, snapshot_every: u64) -> ClusterLog {
        ClusterLog { members: Members::new(endpoints), prefix: prefix.trim_end_matches('/').to_string(), snapshot_every: snapshot_every.max(1) }
    }

    /// Whether the store that appended entry `seq` should snapshot after it.
    pub fn snapshot_due(&self, seq: u64) -> bool {
        seq.is_multiple_of(self.snapshot_every)
    }

    fn snap_dir(&self, seq: u64) -> String {
        format!("{}/snap/{seq:020}/", self.prefix)
    }

    fn latest_key(&self) -> String {
        format!("{}/snap/latest", self.prefix)
    }

    /// Write a snapshot of `tree`, which has applied exactly `seq` entries,
    /// then drop the log more than one interval behind it and older snapshots.
    pub fn write_snapshot(&mut self, seq: u64, tree: &Tree) -> Result<(), ClusterError> {
        let bytes = encode_snapshot(tree);
        let chunks: Vec<&[u8]> = bytes.chunks(CHUNK_BYTES).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            let key = format!("{}{i:06}", self.snap_dir(seq));
            self.members.call("/v3/kv/put", &json!({"key": base64(key.as_bytes()), "value": base64(chunk)}))?;
        }
        let latest = format!("{seq:020} {}", chunks.len());
        self.members.call("/v3/kv/put", &json!({"key": base64(self.latest_key().as_bytes()), "value": base64(latest.as_bytes())}))?;
        let keep_from = seq.saturating_sub(self.snapshot_every) + 1;
        self.members.call(
            "/v3/kv/deleterange",
            &json!({
                "key": base64(format!("{}/log/", self.prefix).as_bytes()),
                "range_end": base64(log_key(&self.prefix, keep_from).as_bytes()),
            }),
        )?;
        self.members.call(
            "/v3/kv/deleterange",
            &json!({
                "key": base64(self.snap_dir(0).as_bytes()),
                "range_end": base64(self.snap_dir(seq).as_bytes()),
            }),
        )?;
        Ok(())
    }

    /// The newest snapshot: the sequence it was taken at, and the tree.
    pub fn read_snapshot(&mut self, history_capacity: usize) -> Result<Option<(u64, Tree)>, ClusterError> {
        for _ in 0..5 {
            let answer = self.members.call("/v3/kv/range", &json!({"key": base64(self.latest_key().as_bytes())}))?;
            let Some(latest) = answer["kvs"][0]["value"].as_str().and_then(unbase64) else {
                return Ok(None);
            };
            let latest = String::from_utf8_lossy(&latest).into_owned();
            let mut parts = latest.split(' ');
            let seq: u64 = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
            let count: usize = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
            let dir = self.snap_dir(seq);
            let answer = self.members.call(
                "/v3/kv/range",
                &json!({
                    "key": base64(dir.as_bytes()),
                    "range_end": base64(format!("{}0", dir.trim_end_matches('/')).as_bytes()),
                    "sort_order": "ASCEND",
                    "sort_target": "KEY",
                }),
            )?;
            let chunks: Vec<Vec<u8>> = answer["kvs"].as_array().into_iter().flatten().filter_map(|kv| kv["value"].as_str().and_then(unbase64)).collect();
            if chunks.len() != count {
                // A newer snapshot replaced it meanwhile: read `latest` again.
                continue;
            }
            let tree = decode_snapshot(&chunks.concat(), history_capacity).map_err(|why| ClusterError::BadEntry { seq, why: format!("snapshot: {why}") })?;
            return Ok(Some((seq, tree)));
        }
        Err(ClusterError::Protocol("the newest snapshot kept changing while it was read".into()))
    }

    /// Append `entry` as number `seq`; false if that number is taken.
    pub fn append(&mut self, seq: u64, entry: &Entry) -> Result<bool, ClusterError> {
        let key = base64(log_key(&self.prefix, seq).as_bytes());
        let value = base64(&serde_json::to_vec(entry).expect("entry serialises"));
        let txn = json!({
            "compare": [{"key": key, "target": "CREATE", "result": "EQUAL", "create_revision": "0"}],
            "success": [{"request_put": {"key": key, "value": value}}],
        });
        let answer = self.members.call("/v3/kv/txn", &txn)?;
        Ok(answer.get("succeeded").and_then(Value::as_bool).unwrap_or(false))
    }

    /// Entries after number `after`, in order (at most a batch of them).
    pub fn fetch_after(&mut self, after: u64) -> Result<Vec<(u64, Entry)>, ClusterError> {
        let range = json!({
            "key": base64(log_key(&self.prefix, after + 1).as_bytes()),
            "range_end": base64(format!("{}/log0", self.prefix).as_bytes()),
            "limit": FETCH_LIMIT.to_string(),
            "sort_order": "ASCEND",
            "sort_target": "KEY",
        });
        let answer = self.members.call("/v3/kv/range", &range)?;
        let mut out = Vec::new();
        for kv in answer.get("kvs").and_then(Value::as_array).into_iter().flatten() {
            let key = kv.get("key").and_then(Value::as_str).and_then(unbase64).unwrap_or_default();
            let key = String::from_utf8_lossy(&key).into_owned();
            let seq: u64 = key.rsplit('/').next().and_then(|s| s.parse().ok()).unwrap_or(0);
            let raw = kv.get("value").and_then(Value::as_str).and_then(unbase64).unwrap_or_default();
            let entry: Entry = serde_json::from_slice(&raw).map_err(|e| ClusterError::BadEntry { seq, why: e.to_string() })?;
            out.push((seq, entry));
        }
        Ok(out)
    }
}

/// Ring `bell` whenever the log in the cluster grows, for as long as `bell`
/// returns true. Watches through the gateway's streaming `/v3/watch`,
/// reconnecting to the next member when a stream breaks.
pub fn watch_log(endpoints: Vec<Endpoint>, prefix: String, bell: impl Fn() -> bool) {
    let prefix = prefix.trim_end_matches('/').to_string();
    let mut which = 0;
    let mut start_revision = 0u64;
    loop {
        let endpoint = endpoints[which % endpoints.len()].clone();
        which += 1;
        let request = json!({"create_request": {
            "key": base64(format!("{prefix}/log/").as_bytes()),
            "range_end": base64(format!("{prefix}/log0").as_bytes()),
            "start_revision": start_revision.to_string(),
        }})
        .to_string();
        let stream: Option<Box<dyn std::io::Read>> = match &endpoint {
            Endpoint::Tcp(addr) => std::net::TcpStream::connect(addr).ok().and_then(|mut s| {
                let head = format!("POST /v3/watch HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{request}", request.len());
                s.write_all(head.as_bytes()).ok()?;
                Some(Box::new(s) as Box<dyn std::io::Read>)
            }),
            Endpoint::Unix(_) => None,
        };
        if let Some(stream) = stream {
            // The gateway sends one JSON object per line inside a chunked
            // body; any line that mentions events is enough to ring.
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    let events = &v["result"]["events"];
                    if let Some(events) = events.as_array() {
                        for e in events {
                            start_revision = start_revision.max(str_u64(&e["kv"]["mod_revision"]) + 1);
                        }
                        if !bell() {
                            return;
                        }
                    }
                }
            }
        }
        // Whatever happened while the stream was down is fetched by range.
        if !bell() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// What a rejected batch is answered with.
pub fn unavailable(e: &ClusterError, index: u64) -> EtcdError {
    EtcdError::new(ErrorCode::Internal, format!("cluster: {e}"), index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        for text in ["", "f", "fo", "foo", "foob", "fooba", "foobar", "/b/log/1"] {
            let enc = base64(text.as_bytes());
            assert_eq!(unbase64(&enc).unwrap(), text.as_bytes(), "{text}");
        }
        assert_eq!(base64(b"/b/log/1"), "L2IvbG9nLzE=");
        assert_eq!(base64(b"hello"), "aGVsbG8=");
    }

    #[test]
    fn snapshots_round_trip() {
        let now = Timestamp::now();
        let mut tree = Tree::default();
        for i in 0..5 {
            let m = Mutation::Set { key: format!("/s/{i}"), dir: false, value: "v".into(), expires: Some(now.plus_seconds(60)), refresh: false };
            tree.apply(&m, now).unwrap();
        }
        let back = decode_snapshot(&encode_snapshot(&tree), 1000).unwrap();
        assert_eq!(back.all_records(), tree.all_records());
        assert_eq!(back.index(), 5);
        assert_eq!(back.next_expiry(), tree.next_expiry());
        assert_eq!(back.watch_scan("/s", true, 1).unwrap().unwrap().index(), 1);
        assert!(decode_snapshot(&[1, 2, 3], 1000).is_err());
    }

    #[test]
    fn big_batches_are_split_into_entries() {
        let m = |n: usize| Mutation::Set { key: "/k".into(), dir: false, value: "v".repeat(n), expires: None, refresh: false };
        assert_eq!(entry_runs(&[m(1), m(1), m(1)]), vec![0..3]);
        assert_eq!(entry_runs(&[m(600 * 1024), m(200 * 1024), m(1)]), vec![0..1, 1..3]);
        assert_eq!(entry_runs(&[m(1024 * 1024), m(1024 * 1024)]), vec![0..1, 1..2]);
        assert!(entry_runs(&[]).is_empty());
    }

    #[test]
    fn entries_apply_the_same_everywhere() {
        let now = Timestamp::now();
        let entry = Entry {
            id: "n1-1".into(),
            now,
            mutations: vec![
                Mutation::Set { key: "/a".into(), dir: false, value: "1".into(), expires: Some(now.plus_seconds(5)), refresh: false },
                Mutation::Create { key: "/a".into(), dir: false, value: "2".into(), unique: false, expires: None },
            ],
        };
        let wire: Entry = serde_json::from_slice(&serde_json::to_vec(&entry).unwrap()).unwrap();
        let (mut one, mut two) = (Tree::default(), Tree::default());
        let r1 = apply_entry(&mut one, &entry);
        let r2 = apply_entry(&mut two, &wire);
        assert_eq!(format!("{r1:?}"), format!("{r2:?}"));
        assert_eq!(r1[1].as_ref().unwrap_err().code, ErrorCode::NodeExist);
        let tick = Entry { id: "n2-1".into(), now: now.plus_seconds(6), mutations: vec![] };
        apply_entry(&mut one, &tick);
        apply_entry(&mut two, &tick);
        assert_eq!(one.index(), 2);
        assert_eq!(one.all_records(), two.all_records());
    }
}
