//! Differential conformance: the same requests against a real etcd (Debian's
//! etcd-server, v2 API enabled, started here on loopback ports of its own)
//! and against basalt-store, comparing status, X-Etcd-Index and body. Our
//! store is first brought to etcd's starting index, so indexes compare
//! as they are; only expiration timestamps, TTL countdowns and the (in etcd
//! random) order of unsorted listings are normalised.

use basalt_store::client::{form, Client, RawResponse};
use basalt_store::harness::{Etcd, StoreProcess};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

struct Pair {
    _etcd: Etcd,
    _ours: StoreProcess,
    etcd: Client,
    ours: Client,
    mismatches: Vec<String>,
    compared: usize,
}

fn start(dir: &Path) -> Pair {
    let etcd_proc = Etcd::start(&dir.join("etcd"));
    let ours_proc = StoreProcess::start(Path::new(env!("CARGO_BIN_EXE_basalt-store")), &dir.join("ours"), &[]);
    let mut etcd = Client::new(etcd_proc.endpoint.clone());
    let mut ours = Client::new(ours_proc.endpoint.clone());
    let base = etcd.request("GET", "/v2/keys/", None).unwrap().etcd_index().unwrap();
    // Bring our index to etcd's without leaving anything behind.
    if base > 0 {
        for _ in 0..base - 1 {
            ours.request("PUT", "/v2/keys/_warmup", Some("value=x")).unwrap();
        }
        let r = ours.request("DELETE", "/v2/keys/_warmup", None).unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(ours.request("GET", "/v2/keys/", None).unwrap().etcd_index(), Some(base));
    Pair { _etcd: etcd_proc, _ours: ours_proc, etcd, ours, mismatches: Vec::new(), compared: 0 }
}

fn normalise_value(v: &mut Value) {
    match v {
        Value::Object(map) => {
            if map.contains_key("expiration") {
                map.insert("expiration".into(), Value::String("<time>".into()));
            }
            if let Some(ttl) = map.get("ttl").and_then(Value::as_i64) {
                // A countdown read at slightly different moments.
                map.insert("ttl".into(), Value::String(if ttl > 0 { "<positive>".into() } else { "<due>".into() }));
            }
            if let Some(Value::Array(nodes)) = map.get_mut("nodes") {
                nodes.sort_by(|a, b| a["key"].as_str().cmp(&b["key"].as_str()));
            }
            for (_, child) in map.iter_mut() {
                normalise_value(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(normalise_value),
        _ => {}
    }
}

fn normalise(r: &RawResponse) -> Value {
    let body = if r.body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice::<Value>(&r.body) {
            Ok(mut v) => {
                normalise_value(&mut v);
                v
            }
            Err(_) => Value::String(r.text()),
        }
    };
    serde_json::json!({
        "status": r.status,
        "index": r.etcd_index(),
        "content-type": r.header("Content-Type"),
        "body": body,
    })
}

impl Pair {
    /// Send the same request to both and record any difference.
    fn same(&mut self, method: &str, path: &str, body: Option<&str>) -> Value {
        let e = self.etcd.request(method, path, body).unwrap_or_else(|e| panic!("etcd {method} {path}: {e}"));
        let o = self.ours.request(method, path, body).unwrap_or_else(|e| panic!("ours {method} {path}: {e}"));
        let (ne, no) = (normalise(&e), normalise(&o));
        self.compared += 1;
        if ne != no {
            self.mismatches.push(format!("{method} {path} {body:?}\n  etcd: {ne}\n  ours: {no}"));
        }
        no
    }

    fn put(&mut self, key: &str, pairs: &[(&str, &str)]) -> Value {
        self.same("PUT", &format!("/v2/keys{key}"), Some(&form(pairs)))
    }

    fn finish(self) {
        assert!(self.mismatches.is_empty(), "{} of {} requests answered differently:\n{}", self.mismatches.len(), self.compared, self.mismatches.join("\n"));
    }
}

#[test]
fn keys_api_matches_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = start(dir.path());
    // Reads of an empty store, writes, replaces.
    p.same("GET", "/v2/keys/", None);
    p.same("GET", "/v2/keys", None);
    p.put("/foo", &[("value", "bar")]);
    p.put("/foo", &[("value", "baz")]);
    p.same("GET", "/v2/keys/foo", None);
    p.same("HEAD", "/v2/keys/foo", None);
    p.same("GET", "/v2/keys/nope", None);
    p.same("GET", "/v2/keys/nope/deeper", None);
    p.same("GET", "/v2/keys/foo/bar", None);
    p.put("/foo/bar", &[("value", "x")]);
    p.put("/empty", &[("value", "")]);
    p.put("/nothing", &[]);
    p.put("/unicode/ünï/ключ", &[("value", "välue ✓ & = +")]);
    p.same("GET", "/v2/keys/unicode/%C3%BCn%C3%AF/%D0%BA%D0%BB%D1%8E%D1%87", None);
    p.put("/a//b/./c/../d", &[("value", "clean")]);
    p.same("GET", "/v2/keys/a/b/d", None);
    // Directories and listings.
    for (k, v) in [("/dir/a", "1"), ("/dir/b", "2"), ("/dir/sub/c", "3"), ("/dir/_hidden", "h"), ("/dir/sub/_h2", "h")] {
        p.put(k, &[("value", v)]);
    }
    p.same("GET", "/v2/keys/dir", None);
    p.same("GET", "/v2/keys/dir?recursive=true", None);
    p.same("GET", "/v2/keys/dir?recursive=true&sorted=true", None);
    p.same("GET", "/v2/keys/dir/_hidden", None);
    p.same("GET", "/v2/keys/?recursive=true&sorted=true", None);
    p.put("/dir", &[("value", "x")]);
    p.put("/dir2", &[("dir", "true")]);
    p.put("/dir2", &[("dir", "true")]);
    p.put("/dir2", &[("dir", "true"), ("prevExist", "true")]);
    p.put("/dir2", &[("value", "v"), ("prevExist", "true")]);
    p.put("/dir2", &[("dir", "true"), ("prevExist", "false")]);
    p.same("GET", "/v2/keys/dir2", None);
    // prevExist: create and update.
    p.put("/foo", &[("value", "x"), ("prevExist", "false")]);
    p.put("/new", &[("value", "n"), ("prevExist", "false")]);
    p.put("/missing", &[("value", "x"), ("prevExist", "true")]);
    p.put("/new", &[("value", "n2"), ("prevExist", "true")]);
    // Compare-and-swap.
    let idx = p.same("GET", "/v2/keys/new", None)["body"]["node"]["modifiedIndex"].as_u64().unwrap().to_string();
    p.put("/new", &[("value", "n3"), ("prevValue", "wrong")]);
    p.put("/new", &[("value", "n3"), ("prevIndex", "999999")]);
    p.put("/new", &[("value", "n3"), ("prevValue", "wrong"), ("prevIndex", "999999")]);
    p.put("/new", &[("value", "n3"), ("prevValue", "n2"), ("prevIndex", &idx)]);
    p.put("/new", &[("value", "n4"), ("prevValue", "n3"), ("prevExist", "true")]);
    p.put("/nope", &[("value", "n3"), ("prevValue", "n2")]);
    p.put("/dir", &[("value", "n3"), ("prevValue", "n2")]);
    p.put("/new", &[("value", "n5"), ("prevValue", "")]);
    // Malformed parameters.
    p.put("/bad", &[("value", "x"), ("prevIndex", "abc")]);
    p.put("/bad", &[("value", "x"), ("prevIndex", "")]);
    p.put("/bad", &[("value", "x"), ("ttl", "abc")]);
    p.put("/bad", &[("value", "x"), ("ttl", "-1")]);
    p.put("/bad", &[("value", "x"), ("ttl", "")]);
    p.put("/bad", &[("value", "x"), ("prevExist", "maybe")]);
    p.put("/bad", &[("value", "x"), ("dir", "yes")]);
    p.put("/bad", &[("value", "x"), ("wait", "true")]);
    p.same("GET", "/v2/keys/bad?recursive=maybe", None);
    p.same("GET", "/v2/keys/bad?wait=true&waitIndex=-3", None);
    p.put("/bad", &[("value", "x"), ("refresh", "true"), ("ttl", "5")]);
    p.put("/bad", &[("refresh", "true")]);
    p.put("/notthere", &[("refresh", "true"), ("ttl", "5")]);
    p.put("/bad", &[("value", "x"), ("noValueOnSuccess", "true")]);
    p.same("POST", "/v2/keys/queue", Some("value=a&noValueOnSuccess=true"));
    // TTL, refresh, and turning a TTL off.
    p.put("/ttl", &[("value", "t"), ("ttl", "100")]);
    p.same("GET", "/v2/keys/ttl", None);
    p.put("/ttl", &[("refresh", "true"), ("ttl", "200"), ("prevExist", "true")]);
    p.put("/ttl", &[("value", "u"), ("prevExist", "true")]);
    p.put("/ttldir", &[("dir", "true"), ("ttl", "100")]);
    p.put("/ttldir", &[("dir", "true"), ("ttl", "200"), ("prevExist", "true")]);
    p.same("GET", "/v2/keys/ttldir", None);
    // In-order keys.
    p.same("POST", "/v2/keys/queue", Some("value=job1"));
    p.same("POST", "/v2/keys/queue", Some("value=job2&ttl=50"));
    p.same("POST", "/v2/keys/queue", Some("dir=true"));
    p.same("GET", "/v2/keys/queue?sorted=true", None);
    p.same("POST", "/v2/keys/foo", Some("value=x"));
    p.same("POST", "/v2/keys/", Some("value=atroot"));
    // Deletes and compare-and-delete.
    p.same("DELETE", "/v2/keys/foo/bar", None);
    p.same("DELETE", "/v2/keys/foo", None);
    p.same("DELETE", "/v2/keys/foo", None);
    p.same("DELETE", "/v2/keys/dir", None);
    p.same("DELETE", "/v2/keys/dir?dir=true", None);
    p.same("DELETE", "/v2/keys/dir?recursive=true", None);
    p.same("DELETE", "/v2/keys/dir2?dir=true", None);
    p.same("DELETE", "/v2/keys/?recursive=true", None);
    p.same("DELETE", "/v2/keys/", None);
    p.put("/", &[("value", "x")]);
    p.put("/cad", &[("value", "v")]);
    let idx = p.same("GET", "/v2/keys/cad", None)["body"]["node"]["modifiedIndex"].as_u64().unwrap().to_string();
    p.same("DELETE", "/v2/keys/cad?prevValue=w", None);
    p.same("DELETE", "/v2/keys/cad?prevIndex=999999", None);
    p.same("DELETE", &format!("/v2/keys/cad?prevIndex={idx}&prevValue=v"), None);
    p.same("DELETE", "/v2/keys/cad?prevValue=v", None);
    p.same("DELETE", "/v2/keys/queue?prevValue=v", None);
    p.same("DELETE", "/v2/keys/cad?prevValue=", None);
    p.same("PATCH", "/v2/keys/x", None);
    // Odd corners.
    p.put("/dv", &[("dir", "true"), ("value", "ignored")]);
    p.put("/file1", &[("value", "1")]);
    p.put("/file2", &[("value", "2")]);
    p.same("DELETE", "/v2/keys/file1?dir=true", None);
    p.same("DELETE", "/v2/keys/file2?recursive=true", None);
    p.put("/enc%2Fslash", &[("value", "x")]);
    p.same("GET", "/v2/keys/enc/slash", None);
    p.same("GET", "/v2/keys/enc%2fslash", None);
    p.put("/sp%20ace/k", &[("value", "a b")]);
    p.same("GET", "/v2/keys/sp%20ace?recursive=true", None);
    p.put("/hid/_d/x", &[("value", "1")]);
    p.same("GET", "/v2/keys/hid?recursive=true", None);
    p.same("GET", "/v2/keys/hid/_d?recursive=true", None);
    p.same("GET", "/v2/keys/dv?dir=true", None);
    p.same("POST", "/v2/keys/dv", Some("value=x&prevExist=false"));
    p.same("GET", "/v2/keys/?recursive=true&sorted=true", None);
    p.finish();
}

#[test]
fn ttl_expiry_and_watches_match_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = start(dir.path());
    let first = p.put("/w/a", &[("value", "1")])["index"].as_u64().unwrap();
    p.put("/w/b", &[("value", "2")]);
    p.put("/w/sub/c", &[("value", "3")]);
    p.put("/other", &[("value", "o")]);
    p.same("DELETE", "/v2/keys/w/sub?recursive=true", None);
    p.put("/w/cas", &[("value", "x")]);
    p.same("DELETE", "/v2/keys/w/cas?prevValue=x", None);
    p.same("GET", &format!("/v2/keys/w/cas?wait=true&waitIndex={}", first + 5), None);
    p.same("GET", &format!("/v2/keys/w?wait=true&recursive=true&waitIndex={}", first + 5), None);
    // Watches answered from history.
    for q in [
        format!("/v2/keys/w/a?wait=true&waitIndex={first}"),
        format!("/v2/keys/w/b?wait=true&waitIndex={first}"),
        format!("/v2/keys/w?wait=true&recursive=true&waitIndex={}", first + 1),
        format!("/v2/keys/w/sub/c?wait=true&waitIndex={}", first + 3),
        format!("/v2/keys/?wait=true&recursive=true&waitIndex={}", first + 3),
    ] {
        p.same("GET", &q, None);
    }
    // A watch that waits: both block until the write, then answer alike. It
    // asks for the next index explicitly, so it sees the write even if it
    // reaches the server after it.
    let next = p.same("GET", "/v2/keys/", None)["index"].as_u64().unwrap() + 1;
    let mut answers = Vec::new();
    std::thread::scope(|s| {
        let (etcd_ep, ours_ep) = (p.etcd.endpoint().clone(), p.ours.endpoint().clone());
        let watchers: Vec<_> = [etcd_ep, ours_ep]
            .into_iter()
            .map(|ep| {
                s.spawn(move || {
                    let mut c = Client::new(ep);
                    c.request("GET", &format!("/v2/keys/w?wait=true&recursive=true&waitIndex={next}"), None).unwrap()
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(500));
        p.put("/w/unrelated-first", &[("value", "u")]);
        answers = watchers.into_iter().map(|h| h.join().unwrap()).collect();
    });
    assert_eq!(normalise(&answers[0]), normalise(&answers[1]));
    assert_eq!(answers[1].status, 200);
    // TTL expiry: etcd removes due keys within about half a second.
    p.put("/short", &[("value", "s"), ("ttl", "1")]);
    p.put("/shortdir", &[("dir", "true"), ("ttl", "1")]);
    p.put("/shortdir/child", &[("value", "c")]);
    let before = p.same("GET", "/v2/keys/short", None)["index"].as_u64().unwrap();
    std::thread::sleep(Duration::from_millis(2600));
    p.same("GET", "/v2/keys/short", None);
    p.same("GET", "/v2/keys/shortdir/child", None);
    p.same("GET", &format!("/v2/keys/short?wait=true&waitIndex={}", before + 1), None);
    p.same("GET", &format!("/v2/keys/shortdir/child?wait=true&waitIndex={}", before + 1), None);
    // Fill the history past its 1,000 events: older indexes are cleared (401).
    for i in 0..1005 {
        let body = format!("value={i}");
        p.etcd.request("POST", "/v2/keys/many", Some(&body)).unwrap();
        p.ours.request("POST", "/v2/keys/many", Some(&body)).unwrap();
    }
    p.same("GET", &format!("/v2/keys/w?wait=true&waitIndex={first}"), None);
    p.same("GET", "/v2/keys/w?wait=true&waitIndex=1", None);
    let now = p.same("GET", "/v2/keys/", None)["index"].as_u64().unwrap();
    p.same("GET", &format!("/v2/keys/many?wait=true&recursive=true&waitIndex={}", now - 999), None);
    p.finish();
}

/// A fixed pseudo-random walk over a small keyspace — every verb and
/// condition, files and directories colliding — answered alike by both.
#[test]
fn random_operations_match_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = start(dir.path());
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let names = ["a", "b", "_h", "a/b", "a/c", "b/a/c", "q"];
    for _ in 0..400 {
        let key = format!("/r/{}", names[next(names.len() as u64) as usize]);
        let value = format!("v{}", next(4));
        let index = p.same("GET", "/v2/keys/", None)["index"].as_u64().unwrap();
        // Sometimes a real recent index, sometimes a stale one.
        let prev_index = (index.saturating_sub(next(6))).max(1).to_string();
        let path = format!("/v2/keys{key}");
        match next(14) {
            0 => p.put(&key, &[("value", &value)]),
            1 => p.put(&key, &[("value", &value), ("prevExist", "false")]),
            2 => p.put(&key, &[("value", &value), ("prevExist", "true")]),
            3 => p.put(&key, &[("value", &value), ("prevValue", &format!("v{}", next(4)))]),
            4 => p.put(&key, &[("value", &value), ("prevIndex", &prev_index)]),
            5 => p.put(&key, &[("dir", "true")]),
            6 => p.put(&key, &[("dir", "true"), ("prevExist", "false")]),
            7 => p.same("POST", &path, Some(&format!("value={value}"))),
            8 => p.same("DELETE", &path, None),
            9 => p.same("DELETE", &format!("{path}?dir=true"), None),
            10 => p.same("DELETE", &format!("{path}?recursive=true"), None),
            11 => p.same("DELETE", &format!("{path}?prevValue={value}"), None),
            12 => p.same("DELETE", &format!("{path}?prevIndex={prev_index}"), None),
            _ => p.same("GET", &format!("{path}?recursive=true&sorted=true"), None),
        };
    }
    p.same("GET", "/v2/keys/r?recursive=true&sorted=true", None);
    let now = p.same("GET", "/v2/keys/", None)["index"].as_u64().unwrap();
    for back in [1, 50, 300, 700] {
        p.same("GET", &format!("/v2/keys/r?wait=true&recursive=true&waitIndex={}", now.saturating_sub(back).max(1)), None);
    }
    p.finish();
}
