//! The keyspace with etcd v2 semantics, independent of HTTP and of storage:
//! a tree of directories and files with created/modified indexes, TTLs, the
//! global index, compare-and-swap/delete, in-order keys and the watch
//! history. Every mutation also records which paths changed, so a storage
//! engine can persist exactly those.

use crate::error::{ErrorCode, EtcdError};
use crate::event::{display_key, Action, Event, NodeView};
use crate::history::{History, DEFAULT_CAPACITY};
use crate::request::Mutation;
use crate::timestamp::Timestamp;
use std::collections::{BTreeMap, BTreeSet};

/// Expiration times before this are treated as "no TTL", as etcd does.
const MIN_EXPIRE: Timestamp = Timestamp(946_684_800 * 1_000_000_000);

#[derive(Debug, Clone)]
pub(crate) enum Kind {
    File(String),
    Dir(BTreeMap<String, Node>),
}

#[derive(Debug, Clone)]
pub(crate) struct Node {
    created: u64,
    modified: u64,
    expires: Option<Timestamp>,
    kind: Kind,
}

impl Node {
    fn dir(index: u64, expires: Option<Timestamp>) -> Node {
        Node { created: index, modified: index, expires, kind: Kind::Dir(BTreeMap::new()) }
    }

    fn is_dir(&self) -> bool {
        matches!(self.kind, Kind::Dir(_))
    }

    fn value(&self) -> &str {
        match &self.kind {
            Kind::File(v) => v,
            Kind::Dir(_) => "",
        }
    }

    fn children(&self) -> Option<&BTreeMap<String, Node>> {
        match &self.kind {
            Kind::Dir(c) => Some(c),
            Kind::File(_) => None,
        }
    }

    fn children_mut(&mut self) -> Option<&mut BTreeMap<String, Node>> {
        match &mut self.kind {
            Kind::Dir(c) => Some(c),
            Kind::File(_) => None,
        }
    }

    fn set_ttl_fields(&self, view: &mut NodeView, now: Timestamp) {
        if let Some(t) = self.expires {
            view.expiration = Some(t);
            view.ttl = t.ttl_from(now);
        }
    }

    /// etcd's `Repr`: a directory shows its children only when recursive.
    fn repr(&self, path: &str, recursive: bool, now: Timestamp) -> NodeView {
        let mut view = NodeView { key: display_key(path), modified_index: self.modified, created_index: self.created, ..NodeView::default() };
        match &self.kind {
            Kind::File(v) => view.value = Some(v.clone()),
            Kind::Dir(children) => {
                view.dir = true;
                if recursive {
                    view.nodes = visible_children(path, children, true, now);
                }
            }
        }
        self.set_ttl_fields(&mut view, now);
        view
    }
}

fn child_path(dir: &str, name: &str) -> String {
    if dir == "/" {
        format!("/{name}")
    } else {
        format!("{dir}/{name}")
    }
}

fn visible_children(path: &str, children: &BTreeMap<String, Node>, recursive: bool, now: Timestamp) -> Vec<NodeView> {
    children.iter().filter(|(name, _)| !name.starts_with('_')).map(|(name, child)| child.repr(&child_path(path, name), recursive, now)).collect()
}

/// etcd's `path.Clean(path.Join("/", key))`: always absolute, no `.`, `..`
/// or empty components; `..` never climbs above the root.
pub fn clean_path(key: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in key.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    if parts.is_empty() {
        "/".to_string()
    } else {
        let mut s = String::with_capacity(key.len() + 1);
        for p in parts {
            s.push('/');
            s.push_str(p);
        }
        s
    }
}

fn components(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|c| !c.is_empty())
}

fn split_parent(path: &str) -> (&str, &str) {
    let at = path.rfind('/').unwrap_or(0);
    let parent = if at == 0 { "/" } else { &path[..at] };
    (parent, &path[at + 1..])
}

/// What a storage engine must do to catch up with the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Write the node at this path as it is now (if it still exists).
    Put(String),
    /// Remove the node at this path and everything below it.
    Remove(String),
}

/// A node as a storage engine keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeRecord {
    pub dir: bool,
    pub value: String,
    pub created: u64,
    pub modified: u64,
    pub expires: Option<Timestamp>,
}

/// The whole keyspace.
#[derive(Debug, Clone)]
pub struct Tree {
    root: Node,
    index: u64,
    history: History,
    ttl: BTreeSet<(Timestamp, String)>,
    changes: Vec<Change>,
    new_events: Vec<Event>,
}

impl Default for Tree {
    fn default() -> Self {
        Tree::new(DEFAULT_CAPACITY)
    }
}

impl Tree {
    pub fn new(history_capacity: usize) -> Tree {
        Tree { root: Node::dir(0, None), index: 0, history: History::new(history_capacity), ttl: BTreeSet::new(), changes: Vec::new(), new_events: Vec::new() }
    }

    /// The current index: the index of the last change.
    pub fn index(&self) -> u64 {
        self.index
    }

    pub fn history(&self) -> &History {
        &self.history
    }

    /// internalGet: walk from the root; a missing component is 100 naming
    /// that component, a file on the way is 104 naming the file.
    fn lookup(&self, path: &str) -> Result<&Node, EtcdError> {
        let mut node = &self.root;
        let mut walked = String::new();
        for name in components(path) {
            let Some(children) = node.children() else {
                let cause = if walked.is_empty() { "/".to_string() } else { walked };
                return Err(EtcdError::new(ErrorCode::NotDir, cause, self.index));
            };
            walked.push('/');
            walked.push_str(name);
            node = match children.get(name) {
                Some(n) => n,
                None => return Err(EtcdError::new(ErrorCode::KeyNotFound, walked, self.index)),
            };
        }
        Ok(node)
    }

    fn lookup_mut(&mut self, path: &str) -> Option<&mut Node> {
        let mut node = &mut self.root;
        for name in components(path) {
            node = node.children_mut()?.get_mut(name)?;
        }
        Some(node)
    }

    /// GET: the node, a directory with its children (all levels if `recursive`).
    pub fn get(&self, key: &str, recursive: bool, now: Timestamp) -> Result<Event, EtcdError> {
        let path = clean_path(key);
        let node = self.lookup(&path)?;
        let mut event = Event::new(Action::Get, &path, node.modified, node.created);
        event.etcd_index = self.index;
        match &node.kind {
            Kind::File(v) => event.node.value = Some(v.clone()),
            Kind::Dir(children) => {
                event.node.dir = true;
                event.node.nodes = visible_children(&path, children, recursive, now);
            }
        }
        node.set_ttl_fields(&mut event.node, now);
        Ok(event)
    }

    /// Apply one mutation at time `now`.
    pub fn apply(&mut self, mutation: &Mutation, now: Timestamp) -> Result<Event, EtcdError> {
        let event = match mutation {
            Mutation::Set { key, dir, value, expires, refresh } => self.set(key, *dir, value, *expires, *refresh, now),
            Mutation::Create { key, dir, value, unique, expires } => self.create_node(key, *dir, value, *unique, false, *expires, Action::Create, now),
            Mutation::Update { key, value, expires, refresh } => self.update(key, value, *expires, *refresh, now),
            Mutation::CompareAndSwap { key, prev_value, prev_index, value, expires, refresh } => self.compare_and_swap(key, prev_value, *prev_index, value, *expires, *refresh, now),
            Mutation::Delete { key, dir, recursive } => self.delete(key, *dir, *recursive, now),
            Mutation::CompareAndDelete { key, prev_value, prev_index } => self.compare_and_delete(key, prev_value, *prev_index, now),
        }?;
        self.record(event.clone());
        Ok(event)
    }

    fn record(&mut self, event: Event) {
        self.history.push(event.clone());
        self.new_events.push(event);
    }

    fn root_read_only(&self) -> EtcdError {
        EtcdError::new(ErrorCode::RootReadOnly, "/", self.index)
    }

    fn set(&mut self, key: &str, dir: bool, value: &str, expires: Option<Timestamp>, refresh: bool, now: Timestamp) -> Result<Event, EtcdError> {
        let path = clean_path(key);
        let prev = match self.lookup(&path) {
            Ok(n) => Some(n.repr(&path, false, now)),
            Err(e) if e.code == ErrorCode::KeyNotFound => {
                if refresh {
                    return Err(e);
                }
                None
            }
            Err(e) => return Err(e),
        };
        let value = match (&prev, refresh) {
            (Some(p), true) => p.value.clone().unwrap_or_default(),
            _ => value.to_string(),
        };
        let mut event = self.create_node(&path, dir, &value, false, true, expires, Action::Set, now)?;
        if prev.is_some() {
            event.prev_node = prev;
        }
        event.refresh = refresh;
        Ok(event)
    }

    /// internalCreate: make missing parent directories, then the node.
    #[allow(clippy::too_many_arguments)]
    fn create_node(&mut self, key: &str, dir: bool, value: &str, unique: bool, replace: bool, expires: Option<Timestamp>, action: Action, now: Timestamp) -> Result<Event, EtcdError> {
        let current = self.index;
        let next = current + 1;
        let path = if unique { clean_path(&format!("{key}/{next:020}")) } else { clean_path(key) };
        if path == "/" {
            return Err(self.root_read_only());
        }
        let expires = expires.filter(|t| *t >= MIN_EXPIRE);
        let (parent_path, name) = split_parent(&path);

        // Check the whole way first, so a failure leaves nothing behind.
        let mut node = &self.root;
        let mut walked = String::new();
        let mut missing_from = None;
        for (i, part) in components(parent_path).enumerate() {
            let children = node.children().expect("walk only descends into directories");
            walked.push('/');
            walked.push_str(part);
            match children.get(part) {
                Some(n) if n.is_dir() => node = n,
                Some(_) => return Err(EtcdError::new(ErrorCode::NotDir, walked, current)),
                None => {
                    missing_from = Some(i);
                    break;
                }
            }
        }
        let mut prev = None;
        if missing_from.is_none() {
            if let Some(existing) = node.children().and_then(|c| c.get(name)) {
                if !replace {
                    return Err(EtcdError::new(ErrorCode::NodeExist, path, current));
                }
                if existing.is_dir() {
                    return Err(EtcdError::new(ErrorCode::NotFile, path, current));
                }
                prev = Some(existing.repr(&path, false, now));
            }
        }
        if prev.is_some() {
            self.remove_node(&path);
        }

        // Now make the missing directories and the node.
        let mut created_dirs = Vec::new();
        {
            let mut node = &mut self.root;
            let mut walked = String::new();
            for part in components(parent_path) {
                walked.push('/');
                walked.push_str(part);
                let children = node.children_mut().expect("checked above");
                if !children.contains_key(part) {
                    children.insert(part.to_string(), Node::dir(next, None));
                    created_dirs.push(walked.clone());
                }
                node = children.get_mut(part).expect("just ensured");
            }
            let new_node = if dir { Node::dir(next, expires) } else { Node { created: next, modified: next, expires, kind: Kind::File(value.to_string()) } };
            node.children_mut().expect("checked above").insert(name.to_string(), new_node);
        }
        for d in created_dirs {
            self.changes.push(Change::Put(d));
        }
        self.changes.push(Change::Put(path.clone()));
        if let Some(t) = expires {
            self.ttl.insert((t, path.clone()));
        }

        let mut event = Event::new(action, &path, next, next);
        if dir {
            event.node.dir = true;
        } else {
            event.node.value = Some(value.to_string());
        }
        if let Some(t) = expires {
            event.node.expiration = Some(t);
            event.node.ttl = t.ttl_from(now);
        }
        event.prev_node = prev;
        self.index = next;
        event.etcd_index = next;
        Ok(event)
    }

    fn update(&mut self, key: &str, value: &str, expires: Option<Timestamp>, refresh: bool, now: Timestamp) -> Result<Event, EtcdError> {
        let path = clean_path(key);
        if path == "/" {
            return Err(self.root_read_only());
        }
        let current = self.index;
        let next = current + 1;
        let node = self.lookup(&path)?;
        if node.is_dir() && !value.is_empty() {
            return Err(EtcdError::new(ErrorCode::NotFile, path, current));
        }
        let value = if refresh { node.value().to_string() } else { value.to_string() };
        let mut event = Event::new(Action::Update, &path, next, node.created);
        event.prev_node = Some(node.repr(&path, false, now));
        let old_expires = node.expires;
        let node = self.lookup_mut(&path).expect("found above");
        // etcd leaves a directory's modifiedIndex alone on update (its write
        // fails silently) while the event reports the new index.
        if let Kind::File(v) = &mut node.kind {
            *v = value.clone();
            node.modified = next;
            event.node.value = Some(value);
        } else {
            event.node.dir = true;
        }
        self.set_expiry(&path, old_expires, expires.filter(|t| *t >= MIN_EXPIRE));
        let node = self.lookup(&path).expect("still there");
        node.set_ttl_fields(&mut event.node, now);
        self.changes.push(Change::Put(path));
        self.index = next;
        event.etcd_index = next;
        event.refresh = refresh;
        Ok(event)
    }

    fn set_expiry(&mut self, path: &str, old: Option<Timestamp>, new: Option<Timestamp>) {
        if let Some(t) = old {
            self.ttl.remove(&(t, path.to_string()));
        }
        if let Some(t) = new {
            self.ttl.insert((t, path.to_string()));
        }
        if let Some(node) = self.lookup_mut(path) {
            node.expires = new;
        }
    }

    fn compare_failure(&self, node: &Node, prev_value: &str, prev_index: u64) -> Option<EtcdError> {
        let index_ok = prev_index == 0 || node.modified == prev_index;
        let value_ok = prev_value.is_empty() || node.value() == prev_value;
        let cause = match (value_ok, index_ok) {
            (true, true) => return None,
            (false, true) => format!("[{} != {}]", prev_value, node.value()),
            (true, false) => format!("[{} != {}]", prev_index, node.modified),
            (false, false) => {
                format!("[{} != {}] [{} != {}]", prev_value, node.value(), prev_index, node.modified)
            }
        };
        Some(EtcdError::new(ErrorCode::TestFailed, cause, self.index))
    }

    #[allow(clippy::too_many_arguments)]
    fn compare_and_swap(&mut self, key: &str, prev_value: &str, prev_index: u64, value: &str, expires: Option<Timestamp>, refresh: bool, now: Timestamp) -> Result<Event, EtcdError> {
        let path = clean_path(key);
        if path == "/" {
            return Err(self.root_read_only());
        }
        let node = self.lookup(&path)?;
        if node.is_dir() {
            return Err(EtcdError::new(ErrorCode::NotFile, path, self.index));
        }
        if let Some(e) = self.compare_failure(node, prev_value, prev_index) {
            return Err(e);
        }
        let value = if refresh { node.value().to_string() } else { value.to_string() };
        let next = self.index + 1;
        let mut event = Event::new(Action::CompareAndSwap, &path, next, node.created);
        event.prev_node = Some(node.repr(&path, false, now));
        let old_expires = node.expires;
        let node = self.lookup_mut(&path).expect("found above");
        node.kind = Kind::File(value.clone());
        node.modified = next;
        self.set_expiry(&path, old_expires, expires.filter(|t| *t >= MIN_EXPIRE));
        event.node.value = Some(value);
        self.lookup(&path).expect("still there").set_ttl_fields(&mut event.node, now);
        self.changes.push(Change::Put(path));
        self.index = next;
        event.etcd_index = next;
        event.refresh = refresh;
        Ok(event)
    }

    fn delete(&mut self, key: &str, dir: bool, recursive: bool, now: Timestamp) -> Result<Event, EtcdError> {
        let path = clean_path(key);
        if path == "/" {
            return Err(self.root_read_only());
        }
        let dir = dir || recursive;
        let node = self.lookup(&path)?;
        let next = self.index + 1;
        if let Some(children) = node.children() {
            if !dir {
                return Err(EtcdError::new(ErrorCode::NotFile, path, self.index));
            }
            if !children.is_empty() && !recursive {
                return Err(EtcdError::new(ErrorCode::DirNotEmpty, path, self.index));
            }
        }
        let mut event = Event::new(Action::Delete, &path, next, node.created);
        event.node.dir = node.is_dir();
        event.prev_node = Some(node.repr(&path, false, now));
        self.remove_node(&path);
        self.index = next;
        event.etcd_index = next;
        Ok(event)
    }

    fn compare_and_delete(&mut self, key: &str, prev_value: &str, prev_index: u64, now: Timestamp) -> Result<Event, EtcdError> {
        let path = clean_path(key);
        let node = self.lookup(&path)?;
        if node.is_dir() {
            return Err(EtcdError::new(ErrorCode::NotFile, path, self.index));
        }
        if let Some(e) = self.compare_failure(node, prev_value, prev_index) {
            return Err(e);
        }
        let next = self.index + 1;
        let mut event = Event::new(Action::CompareAndDelete, &path, next, node.created);
        event.prev_node = Some(node.repr(&path, false, now));
        self.remove_node(&path);
        self.index = next;
        event.etcd_index = next;
        Ok(event)
    }

    /// Detach a node with everything below it, forgetting their TTLs.
    fn remove_node(&mut self, path: &str) {
        let (parent, name) = split_parent(path);
        let Some(removed) = self.lookup_mut(parent).and_then(|p| p.children_mut()).and_then(|c| c.remove(name)) else {
            return;
        };
        let mut stack = vec![(path.to_string(), removed)];
        while let Some((p, node)) = stack.pop() {
            if let Some(t) = node.expires {
                self.ttl.remove(&(t, p.clone()));
            }
            if let Kind::Dir(children) = node.kind {
                for (name, child) in children {
                    stack.push((child_path(&p, &name), child));
                }
            }
        }
        self.changes.push(Change::Remove(path.to_string()));
    }

    /// When the next TTL runs out, if any.
    pub fn next_expiry(&self) -> Option<Timestamp> {
        self.ttl.first().map(|(t, _)| *t)
    }

    /// Remove every node whose TTL ran out by `now`, one `expire` event each.
    pub fn expire(&mut self, now: Timestamp) -> Vec<Event> {
        let mut events = Vec::new();
        while let Some((t, path)) = self.ttl.first().cloned() {
            if t > now {
                break;
            }
            let Ok(node) = self.lookup(&path) else {
                self.ttl.remove(&(t, path));
                continue;
            };
            let next = self.index + 1;
            let mut event = Event::new(Action::Expire, &path, next, node.created);
            event.node.dir = node.is_dir();
            event.prev_node = Some(node.repr(&path, false, now));
            self.remove_node(&path);
            self.index = next;
            event.etcd_index = next;
            self.record(event.clone());
            events.push(event);
        }
        events
    }

    /// Watch: the first kept event at or after `since` (0: the next one)
    /// that a watcher on `key` sees, or None if it has not happened yet.
    pub fn watch_scan(&self, key: &str, recursive: bool, since: u64) -> Result<Option<Event>, EtcdError> {
        let path = clean_path(key);
        let since = if since == 0 { self.index + 1 } else { since };
        let found = self.history.scan(&path, recursive, since, self.index + 1, self.index)?;
        Ok(found.map(|mut e| {
            // etcd answers from history with the index of the store now.
            e.etcd_index = self.index;
            e
        }))
    }

    /// The changes and events since the last call, for a storage engine.
    pub fn take_pending(&mut self) -> (Vec<Change>, Vec<Event>) {
        (std::mem::take(&mut self.changes), std::mem::take(&mut self.new_events))
    }

    /// The stored form of the node at `path`, if it exists.
    pub fn record_at(&self, path: &str) -> Option<NodeRecord> {
        let node = self.lookup(path).ok()?;
        Some(NodeRecord { dir: node.is_dir(), value: node.value().to_string(), created: node.created, modified: node.modified, expires: node.expires })
    }

    /// Rebuild a tree from stored nodes (parents before children, as a
    /// sorted table gives them) and stored events.
    pub fn restore(index: u64, nodes: impl IntoIterator<Item = (String, NodeRecord)>, events: impl IntoIterator<Item = Event>, history_capacity: usize) -> Tree {
        let mut tree = Tree::new(history_capacity);
        tree.index = index;
        for (path, rec) in nodes {
            let (parent, name) = split_parent(&path);
            let node = Node { created: rec.created, modified: rec.modified, expires: rec.expires, kind: if rec.dir { Kind::Dir(BTreeMap::new()) } else { Kind::File(rec.value) } };
            // A node whose parent is missing cannot be reached; skip it.
            if let Some(children) = tree.lookup_mut(parent).and_then(|p| p.children_mut()) {
                children.insert(name.to_string(), node);
                if let Some(t) = rec.expires {
                    tree.ttl.insert((t, path.clone()));
                }
            }
        }
        for e in events {
            tree.history.push(e);
        }
        tree
    }

    /// Replay a node from the write-ahead log: put it at `path` as recorded,
    /// keeping the children of a directory that stays a directory.
    pub fn replay_put(&mut self, path: &str, rec: NodeRecord) {
        if let Some(t) = self.lookup(path).ok().and_then(|n| n.expires) {
            self.ttl.remove(&(t, path.to_string()));
        }
        let (parent, name) = split_parent(path);
        let Some(children) = self.lookup_mut(parent).and_then(|p| p.children_mut()) else {
            return;
        };
        match children.get_mut(name) {
            Some(existing) if existing.is_dir() && rec.dir => {
                existing.created = rec.created;
                existing.modified = rec.modified;
                existing.expires = rec.expires;
            }
            _ => {
                let kind = if rec.dir { Kind::Dir(BTreeMap::new()) } else { Kind::File(rec.value) };
                children.insert(name.to_string(), Node { created: rec.created, modified: rec.modified, expires: rec.expires, kind });
            }
        }
        if let Some(t) = rec.expires {
            self.ttl.insert((t, path.to_string()));
        }
        self.changes.push(Change::Put(path.to_string()));
    }

    /// Replay a removal from the write-ahead log.
    pub fn replay_remove(&mut self, path: &str) {
        self.remove_node(path);
    }

    /// Replay an event from the write-ahead log into the history.
    pub fn replay_event(&mut self, event: Event) {
        self.record(event);
    }

    /// Set the index a replayed batch ended at.
    pub fn set_index(&mut self, index: u64) {
        self.index = index;
    }

    /// Every node, parents first (for checks and compaction).
    pub fn all_records(&self) -> Vec<(String, NodeRecord)> {
        let mut out = Vec::new();
        let mut stack = vec![("/".to_string(), &self.root)];
        while let Some((path, node)) = stack.pop() {
            if path != "/" {
                out.push((path.clone(), NodeRecord { dir: node.is_dir(), value: node.value().to_string(), created: node.created, modified: node.modified, expires: node.expires }));
            }
            if let Some(children) = node.children() {
                for (name, child) in children.iter().rev() {
                    stack.push((child_path(&path, name), child));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
