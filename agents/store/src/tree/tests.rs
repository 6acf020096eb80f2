use super::*;

const T0: Timestamp = Timestamp(1_700_000_000 * 1_000_000_000);

fn set(key: &str, value: &str) -> Mutation {
    Mutation::Set { key: key.into(), dir: false, value: value.into(), expires: None, refresh: false }
}

fn code(r: Result<Event, EtcdError>) -> (ErrorCode, String, u64) {
    let e = r.unwrap_err();
    (e.code, e.cause, e.index)
}

#[test]
fn set_get_and_indexes() {
    let mut t = Tree::default();
    let e = t.apply(&set("/foo", "bar"), T0).unwrap();
    assert_eq!(e.to_json(), r#"{"action":"set","node":{"key":"/foo","value":"bar","modifiedIndex":1,"createdIndex":1}}"#);
    assert!(e.is_created());
    let e = t.apply(&set("foo", "baz"), T0).unwrap();
    assert_eq!(e.to_json(), r#"{"action":"set","node":{"key":"/foo","value":"baz","modifiedIndex":2,"createdIndex":2},"prevNode":{"key":"/foo","value":"bar","modifiedIndex":1,"createdIndex":1}}"#);
    assert!(!e.is_created());
    let g = t.get("/foo", false, T0).unwrap();
    assert_eq!(g.etcd_index, 2);
    assert_eq!(g.node.value.as_deref(), Some("baz"));
    assert_eq!(code(t.get("/nope/deeper", false, T0)), (ErrorCode::KeyNotFound, "/nope".into(), 2));
    assert_eq!(code(t.get("/foo/x", false, T0)), (ErrorCode::NotDir, "/foo".into(), 2));
}

#[test]
fn directories_list_recursively_and_hide_underscores() {
    let mut t = Tree::default();
    t.apply(&set("/d/a", "1"), T0).unwrap();
    t.apply(&set("/d/sub/b", "2"), T0).unwrap();
    t.apply(&set("/d/_hidden", "3"), T0).unwrap();
    let flat = t.get("/d", false, T0).unwrap();
    assert_eq!(
        flat.to_json(),
        r#"{"action":"get","node":{"key":"/d","dir":true,"nodes":[{"key":"/d/a","value":"1","modifiedIndex":1,"createdIndex":1},{"key":"/d/sub","dir":true,"modifiedIndex":2,"createdIndex":2}],"modifiedIndex":1,"createdIndex":1}}"#
    );
    let deep = t.get("/d", true, T0).unwrap();
    assert_eq!(deep.node.nodes[1].nodes[0].key, "/d/sub/b");
    // Hidden nodes are still readable by name.
    assert_eq!(t.get("/d/_hidden", false, T0).unwrap().node.value.as_deref(), Some("3"));
    let root = t.get("/", false, T0).unwrap();
    assert_eq!(root.node.key, "");
    assert!(root.node.dir);
}

#[test]
fn create_update_and_their_conditions() {
    let mut t = Tree::default();
    let create = |k: &str| Mutation::Create { key: k.into(), dir: false, value: "v".into(), unique: false, expires: None };
    t.apply(&create("/k"), T0).unwrap();
    assert_eq!(code(t.apply(&create("/k"), T0)), (ErrorCode::NodeExist, "/k".into(), 1));
    let update = |k: &str, v: &str| Mutation::Update { key: k.into(), value: v.into(), expires: None, refresh: false };
    let e = t.apply(&update("/k", "w"), T0).unwrap();
    assert_eq!(e.action, Action::Update);
    assert_eq!((e.node.modified_index, e.node.created_index), (2, 1));
    assert_eq!(code(t.apply(&update("/missing", "w"), T0)).0, ErrorCode::KeyNotFound);
    assert_eq!(code(t.apply(&update("/", "w"), T0)), (ErrorCode::RootReadOnly, "/".into(), 2));
    assert_eq!(code(t.apply(&create("/k/under"), T0)), (ErrorCode::NotDir, "/k".into(), 2));
}

#[test]
fn compare_and_swap_and_delete() {
    let mut t = Tree::default();
    t.apply(&set("/k", "one"), T0).unwrap();
    let cas = |pv: &str, pi: u64, v: &str| Mutation::CompareAndSwap { key: "/k".into(), prev_value: pv.into(), prev_index: pi, value: v.into(), expires: None, refresh: false };
    assert_eq!(code(t.apply(&cas("two", 0, "x"), T0)), (ErrorCode::TestFailed, "[two != one]".into(), 1));
    assert_eq!(code(t.apply(&cas("", 5, "x"), T0)), (ErrorCode::TestFailed, "[5 != 1]".into(), 1));
    assert_eq!(code(t.apply(&cas("two", 5, "x"), T0)).1, "[two != one] [5 != 1]");
    let e = t.apply(&cas("one", 1, "two"), T0).unwrap();
    assert_eq!(e.action, Action::CompareAndSwap);
    assert_eq!(e.prev_node.unwrap().value.as_deref(), Some("one"));
    let cad = |pv: &str, pi: u64| Mutation::CompareAndDelete { key: "/k".into(), prev_value: pv.into(), prev_index: pi };
    assert_eq!(code(t.apply(&cad("one", 0), T0)).0, ErrorCode::TestFailed);
    let e = t.apply(&cad("two", 2), T0).unwrap();
    assert_eq!(e.to_json(), r#"{"action":"compareAndDelete","node":{"key":"/k","modifiedIndex":3,"createdIndex":1},"prevNode":{"key":"/k","value":"two","modifiedIndex":2,"createdIndex":1}}"#);
    assert_eq!(code(t.get("/k", false, T0)).0, ErrorCode::KeyNotFound);
}

#[test]
fn delete_rules_for_directories() {
    let mut t = Tree::default();
    t.apply(&set("/d/a", "1"), T0).unwrap();
    let del = |k: &str, dir: bool, recursive: bool| Mutation::Delete { key: k.into(), dir, recursive };
    assert_eq!(code(t.apply(&del("/d", false, false), T0)), (ErrorCode::NotFile, "/d".into(), 1));
    assert_eq!(code(t.apply(&del("/d", true, false), T0)), (ErrorCode::DirNotEmpty, "/d".into(), 1));
    assert_eq!(code(t.apply(&del("/", true, true), T0)).0, ErrorCode::RootReadOnly);
    let e = t.apply(&del("/d", false, true), T0).unwrap();
    assert!(e.node.dir);
    assert_eq!(e.node.modified_index, 2);
    assert!(t.get("/", true, T0).unwrap().node.nodes.is_empty());
    let (changes, events) = t.take_pending();
    assert_eq!(changes.last(), Some(&Change::Remove("/d".into())));
    assert_eq!(events.len(), 2);
}

#[test]
fn in_order_keys_are_zero_padded_indexes() {
    let mut t = Tree::default();
    t.apply(&set("/other", "x"), T0).unwrap();
    let post = Mutation::Create { key: "/q".into(), dir: false, value: "job".into(), unique: true, expires: None };
    let e = t.apply(&post, T0).unwrap();
    assert_eq!(e.node.key, "/q/00000000000000000002");
    assert_eq!(e.action, Action::Create);
}

#[test]
fn ttl_shows_and_expires() {
    let mut t = Tree::default();
    let m = Mutation::Set { key: "/t".into(), dir: false, value: "v".into(), expires: Some(T0.plus_seconds(5)), refresh: false };
    let e = t.apply(&m, T0).unwrap();
    assert_eq!(e.node.ttl, 5);
    assert_eq!(t.next_expiry(), Some(T0.plus_seconds(5)));
    assert!(t.expire(T0.plus_seconds(4)).is_empty());
    let gone = t.expire(T0.plus_seconds(5));
    assert_eq!(gone.len(), 1);
    assert_eq!(gone[0].action, Action::Expire);
    assert_eq!(gone[0].node.modified_index, 2);
    assert_eq!(t.index(), 2);
    assert_eq!(t.next_expiry(), None);
    // A TTL directory takes its children with it.
    let d = Mutation::Set { key: "/td".into(), dir: true, value: String::new(), expires: Some(T0.plus_seconds(1)), refresh: false };
    t.apply(&d, T0).unwrap();
    t.apply(&set("/td/x", "1"), T0).unwrap();
    assert_eq!(t.expire(T0.plus_seconds(2)).len(), 1);
    assert_eq!(code(t.get("/td/x", false, T0)).0, ErrorCode::KeyNotFound);
}

#[test]
fn update_without_ttl_makes_permanent_and_refresh_keeps_value() {
    let mut t = Tree::default();
    let m = Mutation::Set { key: "/t".into(), dir: false, value: "v".into(), expires: Some(T0.plus_seconds(5)), refresh: false };
    t.apply(&m, T0).unwrap();
    let refresh = Mutation::Set { key: "/t".into(), dir: false, value: String::new(), expires: Some(T0.plus_seconds(50)), refresh: true };
    let e = t.apply(&refresh, T0).unwrap();
    assert!(e.refresh);
    assert_eq!(e.node.value.as_deref(), Some("v"));
    assert_eq!(e.node.ttl, 50);
    let u = Mutation::Update { key: "/t".into(), value: "w".into(), expires: None, refresh: false };
    let e = t.apply(&u, T0).unwrap();
    assert_eq!(e.node.ttl, 0);
    assert!(t.expire(T0.plus_seconds(100)).is_empty());
}

#[test]
fn watch_scan_from_old_index_and_future() {
    let mut t = Tree::new(4);
    for i in 0..6 {
        t.apply(&set(&format!("/w/{i}"), "x"), T0).unwrap();
    }
    // Kept: indexes 3..=6.
    assert_eq!(t.watch_scan("/w", true, 2).unwrap_err().code, ErrorCode::EventIndexCleared);
    let e = t.watch_scan("/w", true, 3).unwrap().unwrap();
    assert_eq!((e.node.key.as_str(), e.etcd_index), ("/w/2", 6));
    assert_eq!(t.watch_scan("/w/5", false, 3).unwrap().unwrap().index(), 6);
    assert_eq!(t.watch_scan("/w", true, 0).unwrap(), None);
    assert_eq!(t.watch_scan("/w", false, 3).unwrap(), None);
}

#[test]
fn failed_writes_leave_nothing_behind() {
    let mut t = Tree::default();
    t.apply(&set("/f", "file"), T0).unwrap();
    let before = t.all_records();
    assert!(t.apply(&set("/f/a/b", "x"), T0).is_err());
    assert!(t.apply(&Mutation::Create { key: "/f".into(), dir: false, value: "y".into(), unique: false, expires: None }, T0).is_err());
    assert_eq!(t.all_records(), before);
    assert_eq!(t.index(), 1);
    t.take_pending();
    assert!(t.apply(&set("/", "x"), T0).is_err());
    assert_eq!(t.take_pending(), (vec![], vec![]));
}

#[test]
fn restore_rebuilds_the_same_tree() {
    let mut t = Tree::default();
    t.apply(&set("/a/b/c", "1"), T0).unwrap();
    t.apply(&Mutation::Set { key: "/a/t".into(), dir: false, value: "2".into(), expires: Some(T0.plus_seconds(9)), refresh: false }, T0).unwrap();
    let events: Vec<Event> = t.history().iter().cloned().collect();
    let back = Tree::restore(t.index(), t.all_records(), events, 1000);
    assert_eq!(back.all_records(), t.all_records());
    assert_eq!(back.get("/", true, T0).unwrap().to_json(), t.get("/", true, T0).unwrap().to_json());
    assert_eq!(back.next_expiry(), Some(T0.plus_seconds(9)));
    assert_eq!(back.watch_scan("/a", true, 1).unwrap().unwrap().index(), 1);
}

#[test]
fn clean_path_never_leaves_the_root() {
    assert_eq!(clean_path(""), "/");
    assert_eq!(clean_path("a//b/./c/"), "/a/b/c");
    assert_eq!(clean_path("/../../x"), "/x");
    assert_eq!(clean_path("/a/b/../c"), "/a/c");
}
