//! Durability under SIGKILL: writers hammer the store, the store is killed
//! mid-stream, restarted on the same data, and every write that was
//! acknowledged before the kill must be there, many times over.

use basalt_store::client::{Client, Endpoint, SetOptions};
use basalt_store::harness::StoreProcess;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

const ROUNDS: usize = 25;
const WRITERS: usize = 4;

#[test]
fn every_acknowledged_write_survives_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let binary = Path::new(env!("CARGO_BIN_EXE_basalt-store"));
    // (key, value, index) of every acknowledged write, across all rounds.
    let acknowledged: Mutex<Vec<(String, String, u64)>> = Mutex::new(Vec::new());
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for round in 0..ROUNDS {
        let mut store = StoreProcess::start(binary, &data, &[]);
        // Check everything acknowledged so far, before adding more.
        verify(&store.endpoint, &acknowledged.lock().unwrap(), round);
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            for w in 0..WRITERS {
                let (endpoint, acknowledged, stop) = (store.endpoint.clone(), &acknowledged, &stop);
                s.spawn(move || {
                    let mut c = Client::new(endpoint);
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let key = format!("/crash/r{round}/w{w}/{n}");
                        let value = format!("{round}-{w}-{n}");
                        // A POST and a DELETE now and then, so recovery sees more than sets.
                        let result = match n % 10 {
                            7 => c.append(&format!("/crash/r{round}/q{w}"), &value).map(|r| (r.event.node.key.clone(), r)),
                            _ => c.set(&key, &value, &SetOptions::default()).map(|r| (key.clone(), r)),
                        };
                        match result {
                            Ok((k, r)) => acknowledged.lock().unwrap().push((k, value, r.etcd_index)),
                            Err(_) => break, // killed: this write may or may not have landed
                        }
                        n += 1;
                    }
                });
            }
            // Kill somewhere between 50 and 400 ms into the load.
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            std::thread::sleep(Duration::from_millis(50 + seed % 350));
            store.kill();
            stop.store(true, Ordering::Relaxed);
        });
    }
    let store = StoreProcess::start(binary, &data, &[]);
    let all = acknowledged.lock().unwrap();
    verify(&store.endpoint, &all, ROUNDS);
    assert!(all.len() > ROUNDS * WRITERS, "the load did write: {} acknowledged writes", all.len());
}

fn verify(endpoint: &Endpoint, acknowledged: &[(String, String, u64)], round: usize) {
    let mut c = Client::new(endpoint.clone());
    let index = c.get("/", false).unwrap().etcd_index;
    let max_ack = acknowledged.iter().map(|a| a.2).max().unwrap_or(0);
    assert!(index >= max_ack, "round {round}: index {index} went back behind acknowledged index {max_ack}");
    for (key, value, _) in acknowledged {
        match c.get(key, false) {
            Ok(r) => assert_eq!(r.event.node.value.as_deref(), Some(value.as_str()), "round {round}: {key}"),
            Err(e) => panic!("round {round}: acknowledged write {key}={value} is lost: {e}"),
        }
    }
}
