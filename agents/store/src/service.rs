//! The running store: the tree behind a lock, one writer thread that applies
//! mutations in batches and persists each batch with a single fsync before
//! answering (group commit), expires TTLs on time, and wakes watchers.
//! Readers see only what is already on disk: the writer holds the lock from
//! applying a batch until its commit returns.

use crate::engine::{Engine, EngineError};
use crate::error::{ErrorCode, EtcdError};
use crate::event::Event;
use crate::request::Mutation;
use crate::timestamp::Timestamp;
use crate::tree::Tree;
use std::path::Path;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::sync::{oneshot, watch};

/// Size limits on what one request may store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_key_bytes: 4096, max_value_bytes: 1024 * 1024 }
    }
}

/// How many queued mutations one commit takes at most.
const MAX_BATCH: usize = 512;

struct Job {
    mutation: Mutation,
    reply: oneshot::Sender<Result<Event, EtcdError>>,
}

struct Shared {
    tree: Arc<RwLock<Tree>>,
    jobs: mpsc::Sender<Job>,
    index: watch::Receiver<u64>,
    limits: Limits,
}

/// A handle on the running store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
}

impl Store {
    /// Open the data directory and start the writer thread.
    pub fn open(data_dir: &Path, limits: Limits, history_capacity: usize) -> Result<Store, EngineError> {
        let (mut engine, mut tree) = Engine::open(data_dir, history_capacity)?;
        // TTLs that ran out while the store was down expire now, durably.
        tree.expire(Timestamp::now());
        engine.commit(&mut tree)?;
        let (index_tx, index_rx) = watch::channel(tree.index());
        let tree = Arc::new(RwLock::new(tree));
        let (jobs_tx, jobs_rx) = mpsc::channel();
        let writer_tree = tree.clone();
        std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || writer(engine, writer_tree, jobs_rx, index_tx))
            .map_err(|e| EngineError::Storage(format!("cannot start the writer thread: {e}")))?;
        Ok(Store { shared: Arc::new(Shared { tree, jobs: jobs_tx, index: index_rx, limits }) })
    }

    pub fn limits(&self) -> Limits {
        self.shared.limits
    }

    pub fn index(&self) -> u64 {
        self.read().index()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Tree> {
        self.shared.tree.read().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, key: &str, recursive: bool) -> Result<Event, EtcdError> {
        self.read().get(key, recursive, Timestamp::now())
    }

    fn check(&self, mutation: &Mutation) -> Result<(), EtcdError> {
        let limits = self.shared.limits;
        let too_big = |what: &str, len: usize, max: usize| {
            EtcdError::new(
                ErrorCode::InvalidField,
                format!("{what} is {len} bytes, more than the limit of {max}"),
                self.index(),
            )
        };
        if mutation.key().len() > limits.max_key_bytes {
            return Err(too_big("key", mutation.key().len(), limits.max_key_bytes));
        }
        let value = match mutation {
            Mutation::Set { value, .. }
            | Mutation::Create { value, .. }
            | Mutation::Update { value, .. }
            | Mutation::CompareAndSwap { value, .. } => value.len(),
            _ => 0,
        };
        if value > limits.max_value_bytes {
            return Err(too_big("value", value, limits.max_value_bytes));
        }
        Ok(())
    }

    fn submit(&self, mutation: Mutation) -> Result<oneshot::Receiver<Result<Event, EtcdError>>, EtcdError> {
        self.check(&mutation)?;
        let (reply, rx) = oneshot::channel();
        self.shared
            .jobs
            .send(Job { mutation, reply })
            .map_err(|_| EtcdError::new(ErrorCode::Internal, "the writer has stopped", 0))?;
        Ok(rx)
    }

    /// Apply a mutation; returns once it is on disk.
    pub async fn write(&self, mutation: Mutation) -> Result<Event, EtcdError> {
        let rx = self.submit(mutation)?;
        rx.await.unwrap_or_else(|_| Err(EtcdError::new(ErrorCode::Internal, "the writer has stopped", 0)))
    }

    /// The same, for callers outside an async runtime.
    pub fn write_blocking(&self, mutation: Mutation) -> Result<Event, EtcdError> {
        let rx = self.submit(mutation)?;
        rx.blocking_recv()
            .unwrap_or_else(|_| Err(EtcdError::new(ErrorCode::Internal, "the writer has stopped", 0)))
    }

    /// The keys of the kept events from index `from` on.
    pub fn changed_keys(&self, from: u64) -> Vec<String> {
        let tree = self.read();
        tree.history().iter().filter(|e| e.index() >= from).map(|e| e.node.key.clone()).collect()
    }

    /// Start a watch: fails at once with 401 if `since` is no longer kept.
    /// The returned watch's `start_index` is the store index at this moment.
    pub fn watch(&self, key: &str, recursive: bool, since: u64) -> Result<Watch, EtcdError> {
        let mut changes = self.shared.index.clone();
        changes.mark_unchanged();
        let tree = self.read();
        let start_index = tree.index();
        let ready = tree.watch_scan(key, recursive, since)?;
        let next = if since == 0 { start_index + 1 } else { since.max(start_index + 1) };
        Ok(Watch {
            store: self.clone(),
            key: key.to_string(),
            recursive,
            start_index,
            next,
            ready,
            changes,
        })
    }
}

/// One pending watch (`wait=true`).
pub struct Watch {
    store: Store,
    key: String,
    recursive: bool,
    pub start_index: u64,
    next: u64,
    ready: Option<Event>,
    changes: watch::Receiver<u64>,
}

impl Watch {
    /// The next event the watcher sees, waiting as long as it takes.
    pub async fn next_event(&mut self) -> Result<Event, EtcdError> {
        loop {
            if let Some(e) = self.ready.take() {
                self.next = e.index() + 1;
                return Ok(e);
            }
            if self.changes.changed().await.is_err() {
                return Err(EtcdError::new(ErrorCode::Internal, "the store has stopped", 0));
            }
            let tree = self.store.read();
            let found = tree.history().scan(&crate::tree::clean_path(&self.key), self.recursive, self.next, self.start_index + 1, tree.index())?;
            match found {
                // Live notifications carry the index of their own event.
                Some(mut e) => {
                    e.etcd_index = e.index();
                    self.ready = Some(e);
                }
                None => self.next = self.next.max(tree.index() + 1),
            }
        }
    }
}

/// How long the writer waits without work before it checkpoints the log into redb.
const IDLE_CHECKPOINT: Duration = Duration::from_secs(1);

fn writer(mut engine: Engine, tree: Arc<RwLock<Tree>>, jobs: mpsc::Receiver<Job>, index: watch::Sender<u64>) {
    loop {
        let next_expiry = tree.read().unwrap_or_else(|p| p.into_inner()).next_expiry();
        let mut wait = next_expiry.map(|at| Duration::from_nanos(at.0.saturating_sub(Timestamp::now().0)));
        if engine.needs_checkpoint() {
            wait = Some(wait.map_or(IDLE_CHECKPOINT, |w| w.min(IDLE_CHECKPOINT)));
        }
        let first = match wait {
            None => match jobs.recv() {
                Ok(j) => Some(j),
                Err(_) => return,
            },
            Some(wait) => match jobs.recv_timeout(wait) {
                Ok(j) => Some(j),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => {
                    let guard = tree.read().unwrap_or_else(|p| p.into_inner());
                    let _ = engine.checkpoint(&guard);
                    return;
                }
            },
        };
        let mut batch: Vec<Job> = first.into_iter().collect();
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let mut guard = tree.write().unwrap_or_else(|p| p.into_inner());
        let now = Timestamp::now();
        guard.expire(now);
        if batch.is_empty() && engine.needs_checkpoint() && guard.next_expiry().is_none_or(|t| t > now) {
            // Idle: fold the log into redb so the next start replays little.
            if let Err(e) = engine.checkpoint(&guard) {
                eprintln!("basalt-store: checkpoint failed, the log keeps the changes: {e}");
            }
        }
        let results: Vec<Result<Event, EtcdError>> = batch.iter().map(|j| guard.apply(&j.mutation, now)).collect();
        let results = match engine.commit(&mut guard) {
            Ok(()) => results,
            Err(err) => {
                // Nothing of this batch is acknowledged: go back to what is on disk.
                eprintln!("basalt-store: commit failed, batch of {} refused: {err}", batch.len());
                match engine.recover() {
                    Ok(t) => *guard = t,
                    Err(e) => {
                        eprintln!("basalt-store: cannot reload after a failed commit: {e}");
                        std::process::abort();
                    }
                }
                let index = guard.index();
                batch
                    .iter()
                    .map(|_| Err(EtcdError::new(ErrorCode::Internal, format!("storage: {err}"), index)))
                    .collect()
            }
        };
        let current = guard.index();
        drop(guard);
        index.send_if_modified(|i| {
            let changed = *i != current;
            *i = current;
            changed
        });
        for (job, result) in batch.into_iter().zip(results) {
            let _ = job.reply.send(result);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(key: &str, value: &str) -> Mutation {
        Mutation::Set { key: key.into(), dir: false, value: value.into(), expires: None, refresh: false }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn watch_sees_a_later_write_and_ttl_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Limits::default(), 1000).unwrap();
        store.write(set("/a", "1")).await.unwrap();
        let mut w = store.watch("/a", false, 0).unwrap();
        assert_eq!(w.start_index, 1);
        let s2 = store.clone();
        let writer = tokio::spawn(async move { s2.write(set("/a", "2")).await.unwrap() });
        let e = w.next_event().await.unwrap();
        assert_eq!((e.node.value.as_deref(), e.etcd_index), (Some("2"), 2));
        writer.await.unwrap();

        let expires = Some(Timestamp::now().plus_seconds(1));
        store.write(Mutation::Set { key: "/t".into(), dir: false, value: "x".into(), expires, refresh: false }).await.unwrap();
        let mut w = store.watch("/t", false, 0).unwrap();
        let e = tokio::time::timeout(Duration::from_secs(10), w.next_event()).await.unwrap().unwrap();
        assert_eq!(e.action, crate::event::Action::Expire);
        assert_eq!(store.get("/t", false).unwrap_err().code, ErrorCode::KeyNotFound);
    }

    #[test]
    fn oversized_writes_are_refused_whole() {
        let dir = tempfile::tempdir().unwrap();
        let limits = Limits { max_key_bytes: 10, max_value_bytes: 5 };
        let store = Store::open(dir.path(), limits, 1000).unwrap();
        let e = store.write_blocking(set("/k", "123456")).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidField);
        assert_eq!(store.write_blocking(set("/0123456789a", "1")).unwrap_err().code, ErrorCode::InvalidField);
        assert_eq!(store.index(), 0);
        store.write_blocking(set("/k", "12345")).unwrap();
        drop(store);
        // Give the writer thread a moment to release the database file.
        let store = (0..100)
            .find_map(|_| {
                std::thread::sleep(Duration::from_millis(20));
                Store::open(dir.path(), limits, 1000).ok()
            })
            .unwrap();
        assert_eq!(store.get("/k", false).unwrap().node.value.as_deref(), Some("12345"));
    }
}
