//! The running store: the tree behind a lock, one writer thread that applies
//! mutations in batches and persists each batch with a single fsync before
//! answering (group commit), expires TTLs on time, and wakes watchers.
//! Readers see only what is already on disk: the writer holds the lock from
//! applying a batch until its commit returns.
//!
//! Two backends, one per writer: this machine's disk (`Backend::Local`), or
//! a real etcd v3 cluster holding the log every store applies
//! (`Backend::Cluster`, see `cluster`).

use crate::client::Endpoint;
use crate::cluster::{self, ClusterLog, Entry};
use crate::engine::{Engine, EngineError};
use crate::error::{ErrorCode, EtcdError};
use crate::event::Event;
use crate::request::Mutation;
use crate::timestamp::Timestamp;
use crate::tree::Tree;
use std::path::{Path, PathBuf};
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

/// What the writer thread is sent.
enum Msg {
    Job(Job),
    /// Answer once everything known to the backend is applied here.
    Sync(oneshot::Sender<()>),
    /// The cluster's log grew.
    Remote,
    /// The last handle is gone.
    Stop,
}

/// Where the keyspace is kept.
#[derive(Debug, Clone)]
pub enum Backend {
    /// This machine's disk: redb behind the write-ahead log, in this directory.
    Local { data_dir: PathBuf },
    /// A real etcd v3 cluster (these members), the log kept under `prefix`.
    Cluster { endpoints: Vec<Endpoint>, prefix: String, snapshot_every: u64 },
}

struct Shared {
    tree: Arc<RwLock<Tree>>,
    jobs: mpsc::Sender<Msg>,
    index: watch::Receiver<u64>,
    limits: Limits,
}

impl Drop for Shared {
    fn drop(&mut self) {
        let _ = self.jobs.send(Msg::Stop);
    }
}

/// A handle on the running store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
}

impl Store {
    /// Open the data directory and start the writer thread.
    pub fn open(data_dir: &Path, limits: Limits, history_capacity: usize) -> Result<Store, EngineError> {
        Store::open_backend(Backend::Local { data_dir: data_dir.into() }, limits, history_capacity)
    }

    /// Open either backend and start its writer thread.
    pub fn open_backend(backend: Backend, limits: Limits, history_capacity: usize) -> Result<Store, EngineError> {
        let (jobs_tx, jobs_rx) = mpsc::channel();
        let spawn_error = |e: std::io::Error| EngineError::Storage(format!("cannot start a thread: {e}"));
        let (tree, index_rx) = match backend {
            Backend::Local { data_dir } => {
                let (mut engine, mut tree) = Engine::open(&data_dir, history_capacity)?;
                // TTLs that ran out while the store was down expire now, durably.
                tree.expire(Timestamp::now());
                engine.commit(&mut tree)?;
                let (index_tx, index_rx) = watch::channel(tree.index());
                let tree = Arc::new(RwLock::new(tree));
                let writer_tree = tree.clone();
                std::thread::Builder::new().name("store-writer".into()).spawn(move || writer(engine, writer_tree, jobs_rx, index_tx)).map_err(spawn_error)?;
                (tree, index_rx)
            }
            Backend::Cluster { endpoints, prefix, snapshot_every } => {
                let mut log = ClusterLog::new(endpoints.clone(), &prefix, snapshot_every);
                let mut tree = Tree::new(history_capacity);
                let mut applied = 0;
                catch_up(&mut log, &mut tree, &mut applied, None).map_err(|e| EngineError::Storage(e.to_string()))?;
                let (index_tx, index_rx) = watch::channel(tree.index());
                let tree = Arc::new(RwLock::new(tree));
                let writer_tree = tree.clone();
                std::thread::Builder::new().name("store-writer".into()).spawn(move || cluster_writer(log, applied, writer_tree, jobs_rx, index_tx)).map_err(spawn_error)?;
                let bell = jobs_tx.clone();
                std::thread::Builder::new().name("store-log-watch".into()).spawn(move || cluster::watch_log(endpoints, prefix, || bell.send(Msg::Remote).is_ok())).map_err(spawn_error)?;
                (tree, index_rx)
            }
        };
        Ok(Store { shared: Arc::new(Shared { tree, jobs: jobs_tx, index: index_rx, limits }) })
    }

    /// Wait until everything the backend holds is applied here (for
    /// `quorum=true` reads; immediate on the local backend).
    pub async fn sync(&self) {
        let (tx, rx) = oneshot::channel();
        if self.shared.jobs.send(Msg::Sync(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    pub fn sync_blocking(&self) {
        let (tx, rx) = oneshot::channel();
        if self.shared.jobs.send(Msg::Sync(tx)).is_ok() {
            let _ = rx.blocking_recv();
        }
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
        let too_big = |what: &str, len: usize, max: usize| EtcdError::new(ErrorCode::InvalidField, format!("{what} is {len} bytes, more than the limit of {max}"), self.index());
        if mutation.key().len() > limits.max_key_bytes {
            return Err(too_big("key", mutation.key().len(), limits.max_key_bytes));
        }
        let value = match mutation {
            Mutation::Set { value, .. } | Mutation::Create { value, .. } | Mutation::Update { value, .. } | Mutation::CompareAndSwap { value, .. } => value.len(),
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
        self.shared.jobs.send(Msg::Job(Job { mutation, reply })).map_err(|_| EtcdError::new(ErrorCode::Internal, "the writer has stopped", 0))?;
        Ok(rx)
    }

    /// Apply a mutation; returns once it is on disk.
    pub async fn write(&self, mutation: Mutation) -> Result<Event, EtcdError> {
        let rx = self.submit(mutation)?;
        rx.await.unwrap_or_else(|_| Err(EtcdError::new(ErrorCode::Internal, "the writer has stopped", 0)))
    }

    /// The same, for callers outside an async runtime (it blocks the thread;
    /// from async code use `write`).
    pub fn write_blocking(&self, mutation: Mutation) -> Result<Event, EtcdError> {
        let rx = self.submit(mutation)?;
        rx.blocking_recv().unwrap_or_else(|_| Err(EtcdError::new(ErrorCode::Internal, "the writer has stopped", 0)))
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
        Ok(Watch { store: self.clone(), key: key.to_string(), recursive, start_index, next, ready, changes })
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

/// The next messages for the writer: waits up to `wait` (forever if None)
/// for the first, then takes whatever else is queued, up to a batch.
fn next_batch(rx: &mpsc::Receiver<Msg>, wait: Option<Duration>) -> (Vec<Job>, Vec<oneshot::Sender<()>>, bool) {
    let first = match wait {
        None => rx.recv().unwrap_or(Msg::Stop),
        Some(w) => match rx.recv_timeout(w) {
            Ok(m) => m,
            Err(RecvTimeoutError::Timeout) => return (Vec::new(), Vec::new(), false),
            Err(RecvTimeoutError::Disconnected) => Msg::Stop,
        },
    };
    let (mut jobs, mut syncs, mut stop) = (Vec::new(), Vec::new(), false);
    let mut take = |m: Msg| match m {
        Msg::Job(j) => jobs.push(j),
        Msg::Sync(s) => syncs.push(s),
        Msg::Remote => {}
        Msg::Stop => stop = true,
    };
    take(first);
    for _ in 1..MAX_BATCH {
        match rx.try_recv() {
            Ok(m) => take(m),
            Err(_) => break,
        }
    }
    (jobs, syncs, stop)
}

fn until(t: Timestamp) -> Duration {
    Duration::from_nanos(t.0.saturating_sub(Timestamp::now().0))
}

fn publish(index: &watch::Sender<u64>, current: u64) {
    index.send_if_modified(|i| {
        let changed = *i != current;
        *i = current;
        changed
    });
}

fn writer(mut engine: Engine, tree: Arc<RwLock<Tree>>, rx: mpsc::Receiver<Msg>, index: watch::Sender<u64>) {
    loop {
        let next_expiry = tree.read().unwrap_or_else(|p| p.into_inner()).next_expiry();
        let mut wait = next_expiry.map(until);
        if engine.needs_checkpoint() {
            wait = Some(wait.map_or(IDLE_CHECKPOINT, |w| w.min(IDLE_CHECKPOINT)));
        }
        let (batch, syncs, stop) = next_batch(&rx, wait);
        let mut guard = tree.write().unwrap_or_else(|p| p.into_inner());
        let now = Timestamp::now();
        guard.expire(now);
        if (batch.is_empty() || stop) && engine.needs_checkpoint() {
            // Idle (or stopping): fold the log into redb so the next start replays little.
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
                batch.iter().map(|_| Err(EtcdError::new(ErrorCode::Internal, format!("storage: {err}"), index))).collect()
            }
        };
        let current = guard.index();
        drop(guard);
        publish(&index, current);
        for (job, result) in batch.into_iter().zip(results) {
            let _ = job.reply.send(result);
        }
        for s in syncs {
            let _ = s.send(());
        }
        if stop {
            return;
        }
    }
}

/// Apply the cluster's entries after `applied`; if one is `ours`, return
/// the answers it got.
fn catch_up(log: &mut ClusterLog, tree: &mut Tree, applied: &mut u64, ours: Option<&str>) -> Result<Option<Vec<Result<Event, EtcdError>>>, cluster::ClusterError> {
    let mut found = None;
    loop {
        let entries = log.fetch_after(*applied)?;
        if entries.is_empty() {
            return Ok(found);
        }
        if entries[0].0 != *applied + 1 {
            // What we need was compacted away: start from the newest snapshot.
            match log.read_snapshot(tree.history().capacity())? {
                Some((seq, snapshot)) if seq > *applied => {
                    *tree = snapshot;
                    *applied = seq;
                    continue;
                }
                _ => return Err(cluster::ClusterError::Protocol(format!("the log after entry {applied} is gone and no newer snapshot exists"))),
            }
        }
        for (seq, entry) in entries {
            if seq != *applied + 1 {
                // Entries are contiguous by construction; a gap means the range raced an append.
                return Ok(found);
            }
            let results = cluster::apply_entry(tree, &entry);
            *applied = seq;
            if ours == Some(entry.id.as_str()) {
                found = Some(results);
            }
        }
    }
}

fn cluster_writer(mut log: ClusterLog, mut applied: u64, tree: Arc<RwLock<Tree>>, rx: mpsc::Receiver<Msg>, index: watch::Sender<u64>) {
    let node = format!("{}-{}", std::process::id(), Timestamp::now().0);
    let mut proposals = 0u64;
    loop {
        let next_expiry = tree.read().unwrap_or_else(|p| p.into_inner()).next_expiry();
        let (batch, syncs, stop) = next_batch(&rx, next_expiry.map(until));
        if stop {
            return;
        }
        let now = Timestamp::now();
        let due = next_expiry.is_some_and(|t| t <= now);
        let mutations: Vec<Mutation> = batch.iter().map(|j| j.mutation.clone()).collect();
        let mut results = Vec::with_capacity(batch.len());
        let mut guard = tree.write().unwrap_or_else(|p| p.into_inner());
        if batch.is_empty() && !due {
            // Someone else wrote, or a reader wants to be current.
            if let Err(e) = catch_up(&mut log, &mut guard, &mut applied, None) {
                eprintln!("basalt-store: cannot read the cluster's log: {e}");
            }
        }
        // Our batch (or, with nothing to write but a TTL due, an empty entry
        // whose clock expires it) goes right after the last applied entry.
        let mut runs = cluster::entry_runs(&mutations);
        if runs.is_empty() && due {
            runs.push(0..0);
        }
        for run in runs {
            proposals += 1;
            let entry = Entry { id: format!("{node}-{proposals}"), now, mutations: mutations[run.clone()].to_vec() };
            let answers = loop {
                match log.append(applied + 1, &entry) {
                    Ok(true) => {
                        applied += 1;
                        let answers = cluster::apply_entry(&mut guard, &entry);
                        if log.snapshot_due(applied) {
                            if let Err(e) = log.write_snapshot(applied, &guard) {
                                eprintln!("basalt-store: snapshot at log entry {applied} failed: {e}");
                            }
                        }
                        break answers;
                    }
                    // Taken: apply what others wrote (maybe ours, if an earlier answer was lost).
                    Ok(false) => match catch_up(&mut log, &mut guard, &mut applied, Some(&entry.id)) {
                        Ok(Some(found)) => break found,
                        Ok(None) => continue,
                        Err(e) => break run.clone().map(|_| Err(cluster::unavailable(&e, guard.index()))).collect(),
                    },
                    Err(e) => break run.clone().map(|_| Err(cluster::unavailable(&e, guard.index()))).collect(),
                }
            };
            results.extend(answers);
        }
        drop(guard);
        let current = tree.read().unwrap_or_else(|p| p.into_inner()).index();
        publish(&index, current);
        for (job, result) in batch.into_iter().zip(results) {
            let _ = job.reply.send(result);
        }
        for s in syncs {
            let _ = s.send(());
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
