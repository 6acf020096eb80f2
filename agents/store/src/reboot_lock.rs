//! The reboot lock: a counting semaphore with named holders kept in the store
//! (locksmith's design, at locksmith's keys, so its tools read it), changed
//! only by compare-and-swap on the key's modifiedIndex. `max` machines of a
//! group may reboot at once; a holder that comes back after its reboot
//! releases its slot.
//!
//! Served over HTTP as FleetLock (`POST /v1/pre-reboot`, `POST
//! /v1/steady-state`, header `fleet-lock-protocol: true`, body
//! `{"client_params":{"id":"<node>","group":"default"}}`), so zincati-style
//! agents and ours speak the same protocol.

use crate::error::{ErrorCode, EtcdError};
use crate::request::Mutation;
use crate::service::Store;
use serde::{Deserialize, Serialize};

pub const FLEETLOCK_PRE_REBOOT: &str = "/v1/pre-reboot";
pub const FLEETLOCK_STEADY_STATE: &str = "/v1/steady-state";
pub const DEFAULT_GROUP: &str = "default";
const BASE: &str = "/coreos.com/updateengine/rebootlock";
/// Compare-and-swap attempts before giving up under heavy contention.
const ATTEMPTS: usize = 64;

/// The stored value: `{"semaphore":1,"max":1,"holders":[]}` (`semaphore` is
/// the number of free slots).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Semaphore {
    pub semaphore: i64,
    pub max: i64,
    #[serde(default)]
    pub holders: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("no reboot slot free in group {group:?}: held by {holders:?} (max {max})")]
    Busy { group: String, holders: Vec<String>, max: i64 },
    #[error("the reboot lock value at {key} is not a semaphore: {why}")]
    Corrupt { key: String, why: String },
    #[error("the reboot lock stayed contended for {ATTEMPTS} attempts")]
    Contended,
    #[error("invalid maximum {0}: at least 1")]
    BadMax(i64),
    #[error("store: {0}")]
    Store(#[from] EtcdError),
}

impl LockError {
    pub fn is_busy(&self) -> bool {
        matches!(self, LockError::Busy { .. })
    }

    /// A short machine-readable kind, as FleetLock error bodies carry.
    pub fn kind(&self) -> &'static str {
        match self {
            LockError::Busy { .. } => "failed_lock",
            LockError::Corrupt { .. } => "corrupt_semaphore",
            LockError::Contended => "contended",
            LockError::BadMax(_) => "bad_max",
            LockError::Store(_) => "store_error",
        }
    }
}

/// What the lock needs from a store: read a key, and replace it only if
/// unchanged. Implemented by the in-process store and by the HTTP client.
pub trait CasStore {
    /// The value and modifiedIndex of a key, or None if it does not exist.
    fn read(&self, key: &str) -> Result<Option<(String, u64)>, EtcdError>;
    /// Write `value` if the key is still at `prev_index` (None: only if it
    /// does not exist). Ok(false) when someone else changed it first.
    fn swap(&self, key: &str, value: &str, prev_index: Option<u64>) -> Result<bool, EtcdError>;
}

impl CasStore for Store {
    fn read(&self, key: &str) -> Result<Option<(String, u64)>, EtcdError> {
        match self.get(key, false) {
            Ok(e) => Ok(Some((e.node.value.unwrap_or_default(), e.node.modified_index))),
            Err(e) if e.code == ErrorCode::KeyNotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn swap(&self, key: &str, value: &str, prev_index: Option<u64>) -> Result<bool, EtcdError> {
        let m = match prev_index {
            Some(i) => Mutation::CompareAndSwap { key: key.into(), prev_value: String::new(), prev_index: i, value: value.into(), expires: None, refresh: false },
            None => Mutation::Create { key: key.into(), dir: false, value: value.into(), unique: false, expires: None },
        };
        match self.write_blocking(m) {
            Ok(_) => Ok(true),
            Err(e) if matches!(e.code, ErrorCode::TestFailed | ErrorCode::NodeExist | ErrorCode::KeyNotFound) => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// Through the HTTP client, for a lock held in a store on another machine
/// (or the local one, from another process).
impl CasStore for std::sync::Mutex<crate::client::Client> {
    fn read(&self, key: &str) -> Result<Option<(String, u64)>, EtcdError> {
        let mut client = self.lock().unwrap_or_else(|p| p.into_inner());
        match client.get(key, false) {
            Ok(r) => Ok(Some((r.event.node.value.unwrap_or_default(), r.event.node.modified_index))),
            Err(e) if e.code() == Some(ErrorCode::KeyNotFound) => Ok(None),
            Err(e) => Err(client_error(e)),
        }
    }

    fn swap(&self, key: &str, value: &str, prev_index: Option<u64>) -> Result<bool, EtcdError> {
        let mut client = self.lock().unwrap_or_else(|p| p.into_inner());
        let opts = match prev_index {
            Some(i) => crate::client::SetOptions { prev_index: Some(i), ..Default::default() },
            None => crate::client::SetOptions { prev_exist: Some(false), ..Default::default() },
        };
        match client.set(key, value, &opts) {
            Ok(_) => Ok(true),
            Err(e) if matches!(e.code(), Some(ErrorCode::TestFailed | ErrorCode::NodeExist | ErrorCode::KeyNotFound)) => Ok(false),
            Err(e) => Err(client_error(e)),
        }
    }
}

fn client_error(e: crate::client::ClientError) -> EtcdError {
    match e {
        crate::client::ClientError::Etcd(e) => e,
        other => EtcdError::new(ErrorCode::Internal, other.to_string(), 0),
    }
}

/// The lock of one group.
pub struct RebootLock<S: CasStore> {
    store: S,
    group: String,
    key: String,
}

impl<S: CasStore> RebootLock<S> {
    pub fn new(store: S, group: &str) -> RebootLock<S> {
        let group = if group.is_empty() { DEFAULT_GROUP } else { group };
        // locksmith keeps the default group at the base key, others below groups/.
        let key = if group == DEFAULT_GROUP { format!("{BASE}/semaphore") } else { format!("{BASE}/groups/{group}/semaphore") };
        RebootLock { store, group: group.to_string(), key }
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// The semaphore as stored (a missing key is one free slot).
    pub fn status(&self) -> Result<Semaphore, LockError> {
        Ok(self.load()?.0)
    }

    fn load(&self) -> Result<(Semaphore, Option<u64>), LockError> {
        match self.store.read(&self.key)? {
            None => Ok((Semaphore { semaphore: 1, max: 1, holders: vec![] }, None)),
            Some((value, index)) => {
                let sem = serde_json::from_str(&value).map_err(|e| LockError::Corrupt { key: self.key.clone(), why: e.to_string() })?;
                Ok((sem, Some(index)))
            }
        }
    }

    /// Read, change and swap until the swap wins.
    fn modify(&self, change: impl Fn(&mut Semaphore) -> Result<bool, LockError>) -> Result<(), LockError> {
        for _ in 0..ATTEMPTS {
            let (mut sem, index) = self.load()?;
            if !change(&mut sem)? {
                return Ok(());
            }
            let value = serde_json::to_string(&sem).expect("semaphore serialises");
            if self.store.swap(&self.key, &value, index)? {
                return Ok(());
            }
        }
        Err(LockError::Contended)
    }

    /// Take a slot for `holder`. Taking it again while holding it succeeds.
    pub fn acquire(&self, holder: &str) -> Result<(), LockError> {
        self.modify(|sem| {
            if sem.holders.iter().any(|h| h == holder) {
                return Ok(false);
            }
            if sem.semaphore <= 0 {
                return Err(LockError::Busy { group: self.group.clone(), holders: sem.holders.clone(), max: sem.max });
            }
            sem.semaphore -= 1;
            sem.holders.push(holder.to_string());
            Ok(true)
        })
    }

    /// Give `holder`'s slot back. Releasing what is not held succeeds.
    pub fn release(&self, holder: &str) -> Result<(), LockError> {
        self.modify(|sem| {
            let before = sem.holders.len();
            sem.holders.retain(|h| h != holder);
            if sem.holders.len() == before {
                return Ok(false);
            }
            sem.semaphore += 1;
            Ok(true)
        })
    }

    /// Change how many may hold the lock at once.
    pub fn set_max(&self, max: i64) -> Result<(), LockError> {
        if max < 1 {
            return Err(LockError::BadMax(max));
        }
        self.modify(|sem| {
            sem.semaphore += max - sem.max;
            sem.max = max;
            Ok(true)
        })
    }
}

/// FleetLock's request body.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ClientParams {
    pub id: String,
    #[serde(default)]
    pub group: String,
}

pub fn parse_fleetlock_body(body: &[u8]) -> Result<ClientParams, String> {
    #[derive(Deserialize)]
    struct Wrapper {
        client_params: ClientParams,
    }
    let w: Wrapper = serde_json::from_slice(body).map_err(|e| format!("body is not a FleetLock request: {e}"))?;
    if w.client_params.id.is_empty() {
        return Err("client_params.id is empty".into());
    }
    let g = &w.client_params.group;
    if !g.is_empty() && !g.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.') {
        return Err(format!("group {g:?} has characters other than letters, digits, '-', '_' and '.'"));
    }
    Ok(w.client_params)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::Limits;

    #[test]
    fn counting_semaphore_with_holders() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Limits::default(), 1000).unwrap();
        let lock = RebootLock::new(store.clone(), "default");
        assert_eq!(lock.key(), "/coreos.com/updateengine/rebootlock/semaphore");
        lock.acquire("node-a").unwrap();
        lock.acquire("node-a").unwrap();
        assert!(lock.acquire("node-b").unwrap_err().is_busy());
        lock.set_max(2).unwrap();
        lock.acquire("node-b").unwrap();
        assert!(lock.acquire("node-c").unwrap_err().is_busy());
        assert_eq!(lock.status().unwrap(), Semaphore { semaphore: 0, max: 2, holders: vec!["node-a".into(), "node-b".into()] });
        lock.release("node-a").unwrap();
        lock.release("node-a").unwrap();
        lock.acquire("node-c").unwrap();
        let stored = store.get(lock.key(), false).unwrap().node.value.unwrap();
        assert_eq!(stored, r#"{"semaphore":0,"max":2,"holders":["node-b","node-c"]}"#);
        assert_eq!(RebootLock::new(store.clone(), "workers").key(), "/coreos.com/updateengine/rebootlock/groups/workers/semaphore");
    }

    #[test]
    fn concurrent_holders_never_exceed_max() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Limits::default(), 1000).unwrap();
        RebootLock::new(store.clone(), "g").set_max(3).unwrap();
        let winners: Vec<bool> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..12)
                .map(|i| {
                    let store = store.clone();
                    s.spawn(move || RebootLock::new(store, "g").acquire(&format!("n{i}")).is_ok())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(winners.iter().filter(|w| **w).count(), 3);
        let sem = RebootLock::new(store, "g").status().unwrap();
        assert_eq!((sem.semaphore, sem.holders.len()), (0, 3));
    }

    #[test]
    fn fleetlock_body() {
        let p = parse_fleetlock_body(br#"{"client_params":{"id":"n1","group":"default"}}"#).unwrap();
        assert_eq!(p, ClientParams { id: "n1".into(), group: "default".into() });
        assert!(parse_fleetlock_body(br#"{"client_params":{"id":""}}"#).is_err());
        assert!(parse_fleetlock_body(br#"{"client_params":{"id":"x","group":"../x"}}"#).is_err());
        assert!(parse_fleetlock_body(b"nope").is_err());
    }
}
