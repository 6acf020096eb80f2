//! The cluster backend against a real 3-member etcd cluster on loopback:
//! two stores sharing it answer alike, compare-and-swap holds across them,
//! a watch on one sees a write through the other, TTLs expire everywhere,
//! a third store started later rebuilds the same keyspace from the log, and
//! all of it keeps working with one member stopped.

use basalt_store::client::{Client, SetOptions};
use basalt_store::harness::{Etcd, StoreProcess};
use basalt_store::ErrorCode;
use std::path::Path;
use std::time::{Duration, Instant};

fn store(dir: &Path, name: &str, members: &str) -> StoreProcess {
    StoreProcess::start(Path::new(env!("CARGO_BIN_EXE_basalt-store")), &dir.join(name), &["--cluster", members])
}

/// Which member leads, by etcd's own account.
fn leader_of(members: &[Etcd]) -> usize {
    members.iter().position(|m| basalt_store::cluster::is_leader(&m.endpoint)).unwrap_or(0)
}

fn get_value(c: &mut Client, key: &str) -> Option<String> {
    let r = c.request("GET", &format!("/v2/keys{key}?quorum=true"), None).unwrap();
    if r.status == 404 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    v["node"]["value"].as_str().map(str::to_string)
}

fn counter_race(a: &StoreProcess, b: &StoreProcess, per_client: usize) -> u64 {
    let wins: u64 = std::thread::scope(|s| {
        let handles: Vec<_> = [a, b, a, b]
            .into_iter()
            .map(|st| {
                s.spawn(move || {
                    let mut c = Client::new(st.endpoint.clone());
                    let mut won = 0;
                    for _ in 0..per_client {
                        let r = c.request("GET", "/v2/keys/counter?quorum=true", None).unwrap();
                        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
                        let n: u64 = v["node"]["value"].as_str().unwrap().parse().unwrap();
                        let idx = v["node"]["modifiedIndex"].as_u64().unwrap();
                        let opts = SetOptions { prev_index: Some(idx), ..Default::default() };
                        match c.set("/counter", &(n + 1).to_string(), &opts) {
                            Ok(_) => won += 1,
                            Err(e) => assert_eq!(e.code(), Some(ErrorCode::TestFailed), "{e}"),
                        }
                    }
                    won
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    wins
}

#[test]
fn stores_share_one_keyspace_through_an_etcd_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let mut members = Etcd::start_cluster(&dir.path().join("etcd"), 3);
    let urls: Vec<String> = members.iter().map(Etcd::url).collect();
    let urls = urls.join(",");
    let a = store(dir.path(), "a", &urls);
    let b = store(dir.path(), "b", &urls);
    let (mut ca, mut cb) = (Client::new(a.endpoint.clone()), Client::new(b.endpoint.clone()));

    // A write through one store is read, with the same indexes, through the other.
    let set = ca.set("/config/name", "basalt", &SetOptions::default()).unwrap();
    let r = cb.request("GET", "/v2/keys/config/name?quorum=true", None).unwrap();
    let seen: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(seen["node"]["value"], "basalt");
    assert_eq!(seen["node"]["modifiedIndex"], set.event.node.modified_index);
    assert_eq!(r.etcd_index(), Some(set.etcd_index));
    // Conditions are decided once, for everyone.
    let create = SetOptions { prev_exist: Some(false), ..Default::default() };
    assert_eq!(cb.set("/config/name", "x", &create).unwrap_err().code(), Some(ErrorCode::NodeExist));

    // Compare-and-swap from 4 clients on 2 stores: every win counted once.
    ca.set("/counter", "0", &SetOptions::default()).unwrap();
    let wins = counter_race(&a, &b, 15);
    assert_eq!(get_value(&mut ca, "/counter"), Some(wins.to_string()));
    assert!(wins >= 15, "someone wins each round: {wins}");

    // A watch on one store sees a write through the other.
    let now = cb.get("/", false).unwrap().etcd_index;
    let watcher = {
        let ep = b.endpoint.clone();
        std::thread::spawn(move || Client::new(ep).watch("/jobs", true, now + 1))
    };
    std::thread::sleep(Duration::from_millis(200));
    ca.append("/jobs", "build").unwrap();
    let event = watcher.join().unwrap().unwrap();
    assert_eq!(event.event.node.value.as_deref(), Some("build"));

    // Big values from concurrent clients are split over several log entries
    // (etcd refuses requests over 1.5 MiB); the largest value allowed fits.
    std::thread::scope(|s| {
        for i in 0..4 {
            let ep = a.endpoint.clone();
            s.spawn(move || {
                let value = format!("{i}").repeat(600 * 1024);
                Client::new(ep).set(&format!("/big/{i}"), &value, &SetOptions::default()).unwrap();
            });
        }
    });
    let biggest = "x".repeat(1024 * 1024);
    ca.set("/big/max", &biggest, &SetOptions::default()).unwrap();
    for i in 0..4 {
        assert_eq!(get_value(&mut cb, &format!("/big/{i}")).map(|v| v.len()), Some(600 * 1024));
    }
    assert_eq!(get_value(&mut cb, "/big/max").as_deref(), Some(biggest.as_str()));

    // TTLs expire on every store.
    let ttl = SetOptions { ttl: Some(1), ..Default::default() };
    ca.set("/lease", "held", &ttl).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while get_value(&mut cb, "/lease").is_some() {
        assert!(Instant::now() < deadline, "the TTL never expired");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(get_value(&mut ca, "/lease"), None);

    // The leader stopped: the others elect a new one, and both stores keep
    // reading and writing through the members that are left.
    let leader = leader_of(&members);
    members[leader].stop();
    for i in 0..20 {
        let (writer, reader) = if i % 2 == 0 { (&mut ca, &mut cb) } else { (&mut cb, &mut ca) };
        writer.set(&format!("/after-stop/{i}"), "ok", &SetOptions::default()).unwrap();
        assert_eq!(get_value(reader, &format!("/after-stop/{i}")).as_deref(), Some("ok"));
    }
    let wins_after = counter_race(&a, &b, 5);
    assert_eq!(get_value(&mut cb, "/counter"), Some((wins + wins_after).to_string()));

    // A store started later rebuilds the same keyspace from the log.
    let c = store(dir.path(), "c", &urls);
    let mut cc = Client::new(c.endpoint.clone());
    let all = |cl: &mut Client| cl.request("GET", "/v2/keys/?recursive=true&sorted=true&quorum=true", None).unwrap();
    let (ra, rc) = (all(&mut ca), all(&mut cc));
    assert_eq!(ra.etcd_index(), rc.etcd_index());
    assert_eq!(ra.text(), rc.text());
}

#[test]
fn the_log_is_compacted_behind_snapshots_and_new_stores_start_from_them() {
    let dir = tempfile::tempdir().unwrap();
    let members = Etcd::start_cluster(&dir.path().join("etcd"), 1);
    let url = members[0].url();
    let start = |name: &str| StoreProcess::start(Path::new(env!("CARGO_BIN_EXE_basalt-store")), &dir.path().join(name), &["--cluster", &url, "--cluster-snapshot-every", "50"]);
    let a = start("a");
    let mut ca = Client::new(a.endpoint.clone());
    for i in 0..230 {
        ca.set(&format!("/many/{}", i % 40), &i.to_string(), &SetOptions::default()).unwrap();
    }
    // Entries 1..=150 are gone: the newest snapshot is at 200, one interval kept behind it.
    let mut etcd = Client::new(members[0].endpoint.clone());
    let range = serde_json::json!({
        "key": basalt_store::cluster::base64(b"/basalt/store/log/"),
        "range_end": basalt_store::cluster::base64(b"/basalt/store/log0"),
        "count_only": true,
    });
    let r = etcd.request_with_type("POST", "/v3/kv/range", "application/json", &range.to_string()).unwrap();
    let count: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(count["count"], "80", "log entries left: {}", r.text());

    // A new store starts from the snapshot and the log after it.
    let b = start("b");
    let mut cb = Client::new(b.endpoint.clone());
    let all = |c: &mut Client| c.request("GET", "/v2/keys/?recursive=true&sorted=true&quorum=true", None).unwrap();
    let (ra, rb) = (all(&mut ca), all(&mut cb));
    assert_eq!(rb.etcd_index(), Some(230));
    assert_eq!((ra.etcd_index(), ra.text()), (rb.etcd_index(), rb.text()));
    // Its history came with the snapshot: a watch from an old index is answered.
    let w = cb.watch("/many/0", false, 195).unwrap();
    assert_eq!(w.event.node.modified_index, 201);
    // And it writes on from there.
    cb.set("/after", "snapshot", &SetOptions::default()).unwrap();
    assert_eq!(get_value(&mut ca, "/after").as_deref(), Some("snapshot"));
}
