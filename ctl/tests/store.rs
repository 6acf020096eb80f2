//! `basaltctl store …` against a real store (in-process, on a Unix socket in
//! a temporary directory): every verb, etcd's errors, watches.

use basalt_store::http::App;
use basalt_store::{server, Limits, Store};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;

struct Fixture {
    store: Store,
    _dir: tempfile::TempDir,
    socket: PathBuf,
    _runtime: tokio::runtime::Runtime,
}

fn store() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("store.sock");
    let store = Store::open(&dir.path().join("data"), Limits::default(), 1000).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let listener = runtime.block_on(async { server::bind_unix(&socket) }).unwrap();
    let app = Arc::new(App { store: store.clone(), client_urls: Vec::new() });
    runtime.spawn(server::serve_unix(listener, app));
    Fixture { store, _dir: dir, socket, _runtime: runtime }
}

fn basaltctl(socket: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_basaltctl"));
    c.arg("store").arg("--endpoint").arg(format!("unix:{}", socket.display())).args(args);
    c
}

fn run(socket: &Path, args: &[&str]) -> Output {
    basaltctl(socket, args).output().unwrap()
}

/// Succeeds; its stdout.
fn ok(socket: &Path, args: &[&str]) -> String {
    let out = run(socket, args);
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// Fails with exit status 1; its stderr.
fn fails(socket: &Path, args: &[&str]) -> String {
    let out = run(socket, args);
    assert_eq!(out.status.code(), Some(1), "{args:?} should fail: {}", String::from_utf8_lossy(&out.stdout));
    assert!(out.stdout.is_empty());
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn get_set_rm_ls_with_etcd_errors() {
    let f = store();
    let s = &f.socket;
    assert_eq!(ok(s, &["set", "/app/name", "web server"]), "");
    assert_eq!(ok(s, &["get", "/app/name"]), "web server\n");
    assert_eq!(ok(s, &["get", "app/name"]), "web server\n", "a relative key means the same");
    assert_eq!(ok(s, &["set", "/app/port", "--", "-80"]), "");
    assert_eq!(ok(s, &["get", "/app/port"]), "-80\n");

    // Conditions map onto etcd's.
    let e = fails(s, &["set", "/app/name", "x", "--create"]);
    assert!(e.contains("Key already exists (105): /app/name"), "{e}");
    let e = fails(s, &["set", "/app/new", "x", "--update"]);
    assert!(e.contains("Key not found (100): /app/new"), "{e}");
    let e = fails(s, &["set", "/app/name", "x", "--prev-value", "nginx"]);
    assert!(e.contains("Compare failed (101): [nginx != web server]"), "{e}");
    assert_eq!(ok(s, &["set", "/app/name", "nginx", "--prev-value", "web server"]), "");
    assert_eq!(ok(s, &["set", "/app/new", "1", "--create"]), "");
    let e = fails(s, &["set", "/app/new", "2", "--ttl", "-1"]);
    assert!(e.contains("--ttl \"-1\" is not a whole number"), "{e}");

    assert_eq!(ok(s, &["ls"]), "/app/\n");
    assert_eq!(ok(s, &["ls", "/app"]), "/app/name\n/app/new\n/app/port\n");
    assert_eq!(ok(s, &["set", "/app/sub/x", "1"]), "");
    assert_eq!(ok(s, &["ls", "-r"]), "/app/\n/app/name\n/app/new\n/app/port\n/app/sub/\n/app/sub/x\n");
    let e = fails(s, &["get", "/app"]);
    assert!(e.contains("/app is a directory"), "{e}");
    let e = fails(s, &["ls", "/app/name"]);
    assert!(e.contains("not a directory"), "{e}");
    let e = fails(s, &["get", "/nope"]);
    assert!(e.starts_with("basaltctl: Key not found (100): /nope [index "), "{e}");

    let e = fails(s, &["rm", "/app"]);
    assert!(e.contains("Not a file (102)") && e.contains("rm -r"), "{e}");
    let e = fails(s, &["rm", "/app/name", "--prev-value", "web server"]);
    assert!(e.contains("Compare failed (101)"), "{e}");
    assert_eq!(ok(s, &["rm", "/app/name", "--prev-value", "nginx"]), "");
    assert_eq!(ok(s, &["rm", "-r", "/app"]), "");
    assert_eq!(ok(s, &["ls"]), "");

    // Bad command lines and an unreachable store.
    let out = run(s, &["frobnicate"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("unknown command \"frobnicate\""));
    let e = String::from_utf8(basaltctl(Path::new("/nonexistent/store.sock"), &["get", "/x"]).output().unwrap().stderr).unwrap();
    assert!(e.contains("cannot reach the store at /nonexistent/store.sock"), "{e}");
}

#[test]
fn watch_prints_changes_from_now_from_history_and_forever() {
    let f = store();
    let s = &f.socket;
    ok(s, &["set", "/svc/a", "1"]);
    // From the history: the event at or after an old index, at once.
    assert_eq!(ok(s, &["watch", "/svc/a", "--after-index", "1"]), "set /svc/a 1\n");

    // The next change, recursively: from the index after the current one, so
    // it does not matter whether the watch is in place before the write.
    let next = (f.store.index() + 1).to_string();
    let one = basaltctl(s, &["watch", "-r", "/svc", "--after-index", &next]).stdout(Stdio::piped()).spawn().unwrap();
    ok(s, &["set", "/svc/b", "2"]);
    let out = one.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "set /svc/b 2\n");

    // Every change, expiry included, until killed.
    let next = (f.store.index() + 1).to_string();
    let mut forever = basaltctl(s, &["watch", "-r", "-f", "/svc", "--after-index", &next]).stdout(Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(forever.stdout.take().unwrap()).lines();
    ok(s, &["set", "/svc/t", "gone soon", "--ttl", "1"]);
    ok(s, &["rm", "/svc/a"]);
    let got: Vec<String> = (0..3).map(|_| lines.next().unwrap().unwrap()).collect();
    assert_eq!(got, ["set /svc/t gone soon", "delete /svc/a", "expire /svc/t"]);
    forever.kill().unwrap();
    forever.wait().unwrap();
}
