//! The `lock` reboot strategy's FleetLock calls against a real store
//! (in-process, on loopback): one machine at a time gets the reboot slot,
//! and giving it back lets the next one in.

use basalt_store::http::App;
use basalt_store::{server, Limits, Store};
use basalt_update::fetch::Client;
use basalt_update::reboot::{pre_reboot, steady_state};
use std::sync::Arc;

#[test]
fn one_machine_reboots_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("data"), Limits::default(), 1000).unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    runtime.spawn(server::serve_tcp(listener, Arc::new(App { store, client_urls: Vec::new() })));

    let client = Client::new();
    assert!(pre_reboot(&client, &url, "machine-a").unwrap(), "a free slot is granted");
    assert!(pre_reboot(&client, &url, "machine-a").unwrap(), "asking again while holding it is fine");
    assert!(!pre_reboot(&client, &url, "machine-b").unwrap(), "the slot is taken");
    steady_state(&client, &url, "machine-a").unwrap();
    assert!(pre_reboot(&client, &url, "machine-b").unwrap(), "given back, the next machine gets it");
    steady_state(&client, &url, "machine-b").unwrap();
    let e = pre_reboot(&client, "http://127.0.0.1:1", "machine-c").unwrap_err();
    assert!(e.contains("127.0.0.1:1"), "{e}");
}
