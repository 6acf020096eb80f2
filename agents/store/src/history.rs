//! The event history watches are answered from: the last `capacity` events
//! (etcd keeps 1,000), contiguous by index, so a watcher that comes back with
//! `waitIndex` misses nothing that is still kept, and learns with 401 when
//! what it asked for is gone.

use crate::error::{ErrorCode, EtcdError};
use crate::event::{Action, Event};
use std::collections::VecDeque;

pub const DEFAULT_CAPACITY: usize = 1000;

#[derive(Debug, Clone)]
pub struct History {
    events: VecDeque<Event>,
    capacity: usize,
}

impl History {
    pub fn new(capacity: usize) -> History {
        History { events: VecDeque::with_capacity(capacity.min(4096)), capacity: capacity.max(1) }
    }

    pub fn push(&mut self, event: Event) {
        if self.events.len() == self.capacity {
            self.events.pop_front();
        }
        self.events.push_back(event);
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The oldest kept index (0 while nothing happened yet).
    pub fn start_index(&self) -> u64 {
        self.events.front().map_or(0, Event::index)
    }

    pub fn last_index(&self) -> u64 {
        self.events.back().map_or(0, Event::index)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Event> {
        self.events.iter()
    }

    /// The first event at or after `since` that a watcher on `key` would see.
    /// Events from `live_from` on are matched the way etcd notifies live
    /// watchers (hidden keys stay hidden from recursive watchers); older ones
    /// the way etcd scans its history.
    pub fn scan(&self, key: &str, recursive: bool, since: u64, live_from: u64, current_index: u64) -> Result<Option<Event>, EtcdError> {
        let start = self.start_index();
        if since < start {
            return Err(EtcdError::new(ErrorCode::EventIndexCleared, format!("the requested history has been cleared [{start}/{since}]"), current_index));
        }
        if since > self.last_index() {
            return Ok(None);
        }
        let skip = (since - start) as usize;
        Ok(self.events.iter().skip(skip.saturating_sub(1)).filter(|e| e.index() >= since).find(|e| watch_matches(e, key, recursive, e.index() >= live_from)).cloned())
    }
}

/// Whether a watcher on `key` sees `event`.
pub fn watch_matches(event: &Event, key: &str, recursive: bool, live: bool) -> bool {
    if event.refresh {
        return false;
    }
    let event_key = if event.node.key.is_empty() { "/" } else { event.node.key.as_str() };
    if event_key == key {
        return true;
    }
    if recursive && is_below(event_key, key) && !(live && is_hidden_below(key, event_key)) {
        return true;
    }
    // Deleting or expiring a directory also ends everything below it.
    matches!(event.action, Action::Delete | Action::Expire) && event.prev_node.as_ref().is_some_and(|p| p.dir) && is_below(key, event_key)
}

/// `path` lies strictly below the directory `dir`.
pub fn is_below(path: &str, dir: &str) -> bool {
    if dir == "/" {
        return path != "/";
    }
    path.len() > dir.len() && path.starts_with(dir) && path.as_bytes()[dir.len()] == b'/'
}

/// A name starting with `_` below the watched path is hidden from it.
fn is_hidden_below(watch: &str, key: &str) -> bool {
    let rest = if watch == "/" { key } else { &key[watch.len()..] };
    rest.split('/').any(|c| c.starts_with('_'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(action: Action, key: &str, index: u64) -> Event {
        Event::new(action, key, index, index)
    }

    #[test]
    fn scan_finds_first_matching_and_reports_cleared() {
        let mut h = History::new(3);
        for (i, k) in ["/a", "/b", "/a/x", "/c"].iter().enumerate() {
            h.push(ev(Action::Set, k, i as u64 + 1));
        }
        assert_eq!(h.start_index(), 2);
        let err = h.scan("/a", false, 1, 99, 4).unwrap_err();
        assert_eq!(err.code, ErrorCode::EventIndexCleared);
        assert_eq!(err.cause, "the requested history has been cleared [2/1]");
        assert_eq!(h.scan("/a", false, 2, 99, 4).unwrap(), None);
        assert_eq!(h.scan("/a", true, 2, 99, 4).unwrap().unwrap().index(), 3);
        assert_eq!(h.scan("/", true, 4, 99, 4).unwrap().unwrap().index(), 4);
        assert_eq!(h.scan("/", true, 5, 99, 4).unwrap(), None);
    }

    #[test]
    fn deleting_a_directory_reaches_watchers_below_it() {
        let mut e = ev(Action::Delete, "/dir", 5);
        e.prev_node = Some(crate::event::NodeView { key: "/dir".into(), dir: true, ..Default::default() });
        assert!(watch_matches(&e, "/dir/a/b", false, true));
        assert!(!watch_matches(&e, "/dirt", false, true));
    }

    #[test]
    fn hidden_keys_are_hidden_from_live_recursive_watchers() {
        let e = ev(Action::Set, "/a/_hidden/x", 5);
        assert!(!watch_matches(&e, "/a", true, true));
        assert!(watch_matches(&e, "/a", true, false));
        assert!(watch_matches(&e, "/a/_hidden/x", false, true));
        assert!(watch_matches(&e, "/a/_hidden", true, true));
    }
}
