//! `store-bench`: basalt-store against a real etcd (Debian's etcd-server, v2
//! API, its default fsync-per-commit durability) started in the same run on
//! loopback, both driven by the same keep-alive HTTP client: sequential
//! writes and reads, then concurrent ones. Prints writes/s, reads/s, p50 and
//! p99 latency, and the ratios ours/etcd.
//!
//! With `--cluster`, both sides run on a 3-member etcd cluster on loopback:
//! etcd's v2 API through its leader, against basalt-store's cluster backend
//! (its log in the same cluster).
//!
//! cargo run --release -p basalt-store --bin store-bench [-- --ops N --clients C] [--cluster]

use basalt_store::client::{form, Client, Endpoint};
use basalt_store::harness::{Etcd, StoreProcess};
use std::process::Command;
use std::time::{Duration, Instant};

/// Each phase alternates etcd and ours this many times.
const ROUNDS: usize = 5;

/// Latencies and busy time of one side, summed over the rounds.
#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    busy: Duration,
}

struct Run {
    ops_per_sec: f64,
    p50: Duration,
    p99: Duration,
}

impl Tally {
    fn run(mut self) -> Run {
        self.latencies.sort();
        Run { ops_per_sec: self.latencies.len() as f64 / self.busy.as_secs_f64(), p50: percentile(&self.latencies, 0.5), p99: percentile(&self.latencies, 0.99) }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// `clients` connections, each doing `ops` requests one after the other.
fn drive(endpoint: &Endpoint, clients: usize, ops: usize, write: bool, tag: &str, tally: &mut Tally) {
    let value = "v".repeat(64);
    let start = Instant::now();
    let latencies: Vec<Duration> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..clients)
            .map(|c| {
                let (endpoint, value) = (endpoint.clone(), &value);
                s.spawn(move || {
                    let mut client = Client::new(endpoint);
                    let mut lat = Vec::with_capacity(ops);
                    for i in 0..ops {
                        let path = format!("/v2/keys/bench/{tag}/c{c}/k{}", i % 1000);
                        let t = Instant::now();
                        let r = if write { client.request("PUT", &path, Some(&form(&[("value", value)]))) } else { client.request("GET", &path, None) }.expect("request");
                        lat.push(t.elapsed());
                        assert!(r.status < 300, "{} {path}: HTTP {} {}", if write { "PUT" } else { "GET" }, r.status, r.text());
                    }
                    lat
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    tally.busy += start.elapsed();
    tally.latencies.extend(latencies);
}

struct EtcdSide {
    endpoint: Endpoint,
}

/// Which member leads, by etcd's own account.
fn leader_of(members: &[Etcd]) -> usize {
    members.iter().position(|m| basalt_store::cluster::is_leader(&m.endpoint)).unwrap_or(0)
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1000.0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // The child this benchmark starts as the store under test.
    if args.get(1).map(String::as_str) == Some("serve") {
        let config = basalt_store::daemon::parse_args(args[2..].to_vec()).expect("store arguments");
        basalt_store::daemon::run(config).expect("store");
        return;
    }
    let flag = |name: &str, default: usize| args.windows(2).find(|w| w[0] == name).map(|w| w[1].parse().expect("a number")).unwrap_or(default);
    let ops = flag("--ops", 2000);
    let clients = flag("--clients", 16);
    let cluster = args.iter().any(|a| a == "--cluster");
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut cmd = Command::new(std::env::current_exe().expect("own path"));
    cmd.arg("serve");
    let (_members, etcd, ours) = if cluster {
        let members = Etcd::start_cluster(&dir.path().join("etcd"), 3);
        let leader = leader_of(&members);
        let urls: Vec<String> = members.iter().map(Etcd::url).collect();
        let ours = StoreProcess::start_command(cmd, &dir.path().join("ours"), &["--cluster", &urls.join(",")]);
        let etcd = members[leader].endpoint.clone();
        (members, etcd, ours)
    } else {
        let etcd = Etcd::start(&dir.path().join("etcd"));
        let ours = StoreProcess::start_command(cmd, &dir.path().join("ours"), &[]);
        let endpoint = etcd.endpoint.clone();
        (vec![etcd], endpoint, ours)
    };
    let etcd = EtcdSide { endpoint: etcd };
    let etcd_version = Command::new("etcd").arg("--version").output().map(|o| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").to_string()).unwrap_or_default();
    println!(
        "store-bench: {ops} sequential ops, then {clients} clients x {} ops, each in {ROUNDS} rounds alternating etcd and ours; values of 64 bytes; {} cores",
        ops / 4,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );
    if cluster {
        println!("etcd: {etcd_version}, 3 members on loopback; etcd's v2 API through the leader against basalt-store's cluster backend on the same cluster");
    } else {
        println!("etcd: {etcd_version}, v2 API, data on {}", dir.path().display());
    }
    println!();
    println!("{:<22} {:>11} {:>9} {:>9} {:>11} {:>9} {:>9} {:>7}", "phase", "etcd op/s", "p50 ms", "p99 ms", "ours op/s", "p50 ms", "p99 ms", "ratio");
    let phases: [(&str, usize, usize, bool); 4] =
        [("sequential writes", 1, ops, true), ("sequential reads", 1, ops, false), ("concurrent writes", clients, ops / 4, true), ("concurrent reads", clients, ops / 4, false)];
    for (name, c, n, write) in phases {
        let tag = if c == 1 { "seq" } else { "conc" };
        if !write {
            // The keys to read must exist.
            for ep in [&etcd.endpoint, &ours.endpoint] {
                drive(ep, c, n.min(1000), true, tag, &mut Tally::default());
            }
        }
        // Alternate in rounds, so whatever else the machine is doing weighs
        // on both sides alike.
        let (mut e, mut o) = (Tally::default(), Tally::default());
        for _ in 0..ROUNDS {
            drive(&etcd.endpoint, c, n / ROUNDS, write, tag, &mut e);
            drive(&ours.endpoint, c, n / ROUNDS, write, tag, &mut o);
        }
        let (e, o) = (e.run(), o.run());
        println!("{:<22} {:>11.0} {:>9} {:>9} {:>11.0} {:>9} {:>9} {:>6.2}x", name, e.ops_per_sec, ms(e.p50), ms(e.p99), o.ops_per_sec, ms(o.p50), ms(o.p99), o.ops_per_sec / e.ops_per_sec);
    }
    // Both must still hold what was written.
    for ep in [&etcd.endpoint, &ours.endpoint] {
        let mut c = Client::new(ep.clone());
        let r = c.request("GET", "/v2/keys/bench/seq/c0/k0", None).expect("read back");
        assert_eq!(r.status, 200, "{}", r.text());
    }
}
