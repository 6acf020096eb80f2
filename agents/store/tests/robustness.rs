//! Behaviour under contention and bad input: compare-and-swap races from many
//! clients (against etcd and against basalt-store, with the same
//! assertions), refused oversized or malformed requests that leave nothing
//! behind, etcd's own `etcdctl` (v2) as a client, the Unix socket, and the
//! FleetLock endpoints.

use basalt_store::client::{form, Client, Endpoint, SetOptions};
use basalt_store::harness::{Etcd, StoreProcess};
use basalt_store::ErrorCode;
use std::path::Path;
use std::process::Command;

fn ours(dir: &Path, extra: &[&str]) -> StoreProcess {
    StoreProcess::start(Path::new(env!("CARGO_BIN_EXE_basalt-store")), &dir.join("ours"), extra)
}

/// Many clients increment one counter with prevIndex compare-and-swap; every
/// acknowledged swap must count, none twice.
fn cas_counter(endpoint: &Endpoint, clients: usize, attempts: usize) -> (u64, u64) {
    let mut c = Client::new(endpoint.clone());
    c.set("/race/counter", "0", &SetOptions::default()).unwrap();
    let (won, lost) = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|_| {
                s.spawn(|| {
                    let mut c = Client::new(endpoint.clone());
                    let (mut won, mut lost) = (0u64, 0u64);
                    for _ in 0..attempts {
                        let r = c.get("/race/counter", false).unwrap();
                        let n: u64 = r.event.node.value.unwrap().parse().unwrap();
                        let opts = SetOptions { prev_index: Some(r.event.node.modified_index), ..Default::default() };
                        match c.set("/race/counter", &(n + 1).to_string(), &opts) {
                            Ok(_) => won += 1,
                            Err(e) if e.code() == Some(ErrorCode::TestFailed) => lost += 1,
                            Err(e) => panic!("unexpected answer to a compare-and-swap: {e}"),
                        }
                    }
                    (won, lost)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    });
    let final_value: u64 = c.get("/race/counter", false).unwrap().event.node.value.unwrap().parse().unwrap();
    assert_eq!(won + lost, (clients * attempts) as u64);
    assert_eq!(final_value, won, "every acknowledged swap is counted exactly once");
    // Creating the same key from every client at once: exactly one wins.
    let created: usize = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|i| {
                s.spawn(move || {
                    let mut c = Client::new(endpoint.clone());
                    let opts = SetOptions { prev_exist: Some(false), ..Default::default() };
                    match c.set("/race/once", &i.to_string(), &opts) {
                        Ok(r) => {
                            assert_eq!(r.status, 201);
                            1
                        }
                        Err(e) => {
                            assert_eq!(e.code(), Some(ErrorCode::NodeExist));
                            0
                        }
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    assert_eq!(created, 1);
    (won, lost)
}

#[test]
fn compare_and_swap_races_behave_like_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start(&dir.path().join("etcd"));
    let store = ours(dir.path(), &[]);
    let (etcd_won, _) = cas_counter(&etcd.endpoint, 8, 40);
    let (ours_won, _) = cas_counter(&store.endpoint, 8, 40);
    assert!(etcd_won >= 40 && ours_won >= 40, "at least one client wins each round: etcd {etcd_won}, ours {ours_won}");
}

#[test]
fn bad_input_is_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let store = ours(dir.path(), &[]);
    let mut c = Client::new(store.endpoint.clone());
    c.set("/keep", "v", &SetOptions::default()).unwrap();
    let before = c.request("GET", "/v2/keys/?recursive=true&sorted=true", None).unwrap();
    let index = before.etcd_index().unwrap();
    let long_key = format!("/{}", "k".repeat(5000));
    let big_value = "v".repeat(1024 * 1024 + 1);
    let cases: Vec<(&str, String, Option<String>, u16, u32)> = vec![
        ("PUT", format!("/v2/keys{long_key}"), Some("value=x".into()), 400, 209),
        ("PUT", "/v2/keys/big".into(), Some(form(&[("value", &big_value)])), 400, 209),
        ("PUT", "/v2/keys/huge".into(), Some(format!("value={}", "v".repeat(4 * 1024 * 1024))), 400, 210),
        ("PUT", "/v2/keys/esc".into(), Some("value=%zz".into()), 400, 210),
        ("PUT", "/v2/keys/%zz".into(), Some("value=x".into()), 400, 210),
        ("PUT", "/v2/keys/utf".into(), Some("value=%ff%fe".into()), 400, 209),
        ("PUT", "/v2/keys/ttl".into(), Some("value=x&ttl=1.5".into()), 400, 202),
        ("PUT", "/v2/keys/ttl".into(), Some("value=x&ttl=99999999999999999999999".into()), 400, 202),
        ("POST", "/v2/keys/keep".into(), Some("value=x".into()), 400, 104),
        ("PUT", "/v2/keys/keep/child".into(), Some("value=x".into()), 400, 104),
        ("GET", "/v2/keys/x?waitIndex=abc&wait=true".into(), None, 400, 203),
    ];
    for (method, path, body, status, code) in cases {
        let r = c.request(method, &path, body.as_deref()).unwrap();
        let shown: String = path.chars().take(60).collect();
        assert_eq!(r.status, status, "{method} {shown}: {}", r.text());
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap_or_else(|_| panic!("{method} {shown}: not JSON: {}", r.text()));
        assert_eq!(v["errorCode"], code, "{method} {shown}: {v}");
        assert!(v["message"].is_string());
    }
    let after = c.request("GET", "/v2/keys/?recursive=true&sorted=true", None).unwrap();
    assert_eq!(after.etcd_index(), Some(index), "no refused request moved the index");
    assert_eq!(after.body, before.body, "no refused request left anything behind");
    // Garbage instead of HTTP: the connection is closed, the store lives on.
    use std::io::{Read, Write};
    let Endpoint::Tcp(addr) = &store.endpoint else { unreachable!() };
    let mut raw = std::net::TcpStream::connect(addr).unwrap();
    raw.write_all(b"\x00\x01 not http at all\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    let _ = raw.read_to_end(&mut answer);
    assert_eq!(c.get("/keep", false).unwrap().event.node.value.as_deref(), Some("v"));
}

#[test]
fn etcdctl_v2_works_against_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = ours(dir.path(), &[]);
    let Endpoint::Tcp(addr) = &store.endpoint else { unreachable!() };
    let url = format!("http://{addr}");
    if Command::new("etcdctl").arg("--version").output().is_err() {
        panic!("etcdctl is not installed: `apt-get install etcd-client` (Debian package etcd-client, listed in tools/host-packages.txt)");
    }
    let ctl = |args: &[&str]| {
        let out = Command::new("etcdctl").env("ETCDCTL_API", "2").args(["--endpoints", &url]).args(args).output().unwrap();
        assert!(out.status.success(), "etcdctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    ctl(&["set", "/config/name", "basalt"]);
    assert_eq!(ctl(&["get", "/config/name"]), "basalt");
    ctl(&["mk", "/config/new", "1"]);
    ctl(&["mkdir", "/config/sub"]);
    assert_eq!(ctl(&["ls", "--sort", "/config"]), "/config/name\n/config/new\n/config/sub");
    ctl(&["update", "/config/new", "2"]);
    ctl(&["set", "--swap-with-value", "2", "/config/new", "3"]);
    assert_eq!(ctl(&["get", "/config/new"]), "3");
    ctl(&["rm", "/config/new"]);
    ctl(&["rmdir", "/config/sub"]);
    let listed = ctl(&["ls", "--recursive", "/"]);
    assert_eq!(listed, "/config\n/config/name");
    // A watch for the change after the current index: it sees the change
    // whether it connects before or after the write.
    let now = Client::new(store.endpoint.clone()).get("/", false).unwrap().etcd_index.to_string();
    let watcher = Command::new("etcdctl").env("ETCDCTL_API", "2").args(["--endpoints", &url, "watch", "--after-index", &now, "/config/name"]).stdout(std::process::Stdio::piped()).spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    ctl(&["set", "/config/name", "changed"]);
    let out = watcher.wait_with_output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "changed");
    let out = Command::new("etcdctl").env("ETCDCTL_API", "2").args(["--endpoints", &url, "get", "/nope"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Key not found"));
}

#[test]
fn the_service_renders_templates_when_their_keys_change() {
    let dir = tempfile::tempdir().unwrap();
    let templates = dir.path().join("templates.d");
    std::fs::create_dir_all(&templates).unwrap();
    let dest = dir.path().join("etc/app.conf");
    let reloads = dir.path().join("reloads");
    std::fs::write(templates.join("app.tmpl"), "{% for s in gets('/services/app') %}server {{ s.value }};\n{% endfor %}").unwrap();
    std::fs::write(
        templates.join("app.toml"),
        format!("[template]\nsrc = \"app.tmpl\"\ndest = \"{}\"\nkeys = [\"/services/app\"]\nmode = \"0600\"\nreload_cmd = \"echo reload >> {}\"\n", dest.display(), reloads.display()),
    )
    .unwrap();
    let templates_arg = templates.display().to_string();
    let store = ours(dir.path(), &["--templates-dir", &templates_arg]);
    let mut c = Client::new(store.endpoint.clone());
    let wait_for = |want: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            if std::fs::read_to_string(&dest).ok().as_deref() == Some(want) {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "{} never became {want:?}", dest.display());
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    wait_for("");
    c.set("/services/app/a", "10.0.0.1:80", &SetOptions::default()).unwrap();
    wait_for("server 10.0.0.1:80;\n");
    c.set("/services/app/b", "10.0.0.2:80", &SetOptions::default()).unwrap();
    wait_for("server 10.0.0.1:80;\nserver 10.0.0.2:80;\n");
    c.delete("/services/app/a", false).unwrap();
    wait_for("server 10.0.0.2:80;\n");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&dest).unwrap().permissions().mode() & 0o7777, 0o600);
    let reloaded = std::fs::read_to_string(&reloads).unwrap();
    assert!(reloaded.lines().count() >= 3, "reload ran after each change: {reloaded:?}");
}

#[test]
fn unix_socket_and_fleetlock() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("run/store.sock");
    let socket_arg = socket.display().to_string();
    let store = ours(dir.path(), &["--socket", &socket_arg]);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777, 0o660);
    let mut unix = Client::new(Endpoint::Unix(socket.clone()));
    unix.set("/via/socket", "yes", &SetOptions::default()).unwrap();
    let mut tcp = Client::new(store.endpoint.clone());
    assert_eq!(tcp.get("/via/socket", false).unwrap().event.node.value.as_deref(), Some("yes"));

    let lock = |c: &mut Client, path: &str, id: &str| {
        let body = format!(r#"{{"client_params":{{"id":"{id}","group":"default"}}}}"#);
        let Endpoint::Unix(p) = c.endpoint().clone() else { unreachable!() };
        // FleetLock bodies are JSON, so send them raw with the protocol header.
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(p).unwrap();
        write!(s, "POST {path} HTTP/1.1\r\nHost: x\r\nfleet-lock-protocol: true\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out.split_whitespace().nth(1).unwrap().parse::<u16>().unwrap()
    };
    assert_eq!(lock(&mut unix, "/v1/pre-reboot", "node-a"), 200);
    assert_eq!(lock(&mut unix, "/v1/pre-reboot", "node-a"), 200);
    assert_eq!(lock(&mut unix, "/v1/pre-reboot", "node-b"), 409);
    assert_eq!(lock(&mut unix, "/v1/steady-state", "node-a"), 200);
    assert_eq!(lock(&mut unix, "/v1/pre-reboot", "node-b"), 200);
    let sem = tcp.get("/coreos.com/updateengine/rebootlock/semaphore", false).unwrap();
    assert_eq!(sem.event.node.value.as_deref(), Some(r#"{"semaphore":0,"max":1,"holders":["node-b"]}"#));
    // The same lock through the library over HTTP, as another process would take it.
    let remote = basalt_store::reboot_lock::RebootLock::new(std::sync::Mutex::new(Client::new(store.endpoint.clone())), "default");
    assert!(remote.acquire("node-c").unwrap_err().is_busy());
    remote.set_max(2).unwrap();
    remote.acquire("node-c").unwrap();
    assert_eq!(remote.status().unwrap().holders, vec!["node-b".to_string(), "node-c".to_string()]);
    assert_eq!(lock(&mut unix, "/v1/pre-reboot", "node-d"), 409);
}
