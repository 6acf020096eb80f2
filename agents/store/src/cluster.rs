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
//! Not yet: compacting the log behind a snapshot (a new store replays it
//! from the start).

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
                Mutation::Set { value, .. }
                | Mutation::Create { value, .. }
                | Mutation::Update { value, .. }
                | Mutation::CompareAndSwap { value, .. } => value.len(),
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
        let client = Client::new(endpoints[0].clone());
        Members { endpoints, current: 0, client }
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

/// The log in the cluster.
pub struct ClusterLog {
    members: Members,
    prefix: String,
}

fn log_key(prefix: &str, seq: u64) -> String {
    format!("{prefix}/log/{seq:020}")
}

fn str_u64(v: &Value) -> u64 {
    v.as_str().and_then(|s| s.parse().ok()).or_else(|| v.as_u64()).unwrap_or(0)
}

impl ClusterLog {
    pub fn new(endpoints: Vec<Endpoint>, prefix: &str) -> ClusterLog {
        ClusterLog { members: Members::new(endpoints), prefix: prefix.trim_end_matches('/').to_string() }
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
            let entry: Entry =
                serde_json::from_slice(&raw).map_err(|e| ClusterError::BadEntry { seq, why: e.to_string() })?;
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
                let head = format!(
                    "POST /v3/watch HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{request}",
                    request.len()
                );
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
