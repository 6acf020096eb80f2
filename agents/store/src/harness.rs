//! Starting real servers on loopback for the conformance tests, the crash
//! test and the benchmark: Debian's etcd (v2 API enabled) and this store's
//! own binary, each on ports of its own, each stopped when dropped.

use crate::client::{Client, Endpoint};
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free loopback port (the kernel's pick, released for the child to take).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free loopback port")
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| Path::new(d).join(program)).find(|p| p.is_file())
}

/// A running etcd.
pub struct Etcd {
    child: Child,
    pub endpoint: Endpoint,
    pub data_dir: PathBuf,
}

impl Etcd {
    /// Start etcd with its data in `data_dir`. Panics (naming the Debian
    /// package) when etcd is not installed: the tests must not pass without it.
    pub fn start(data_dir: &Path) -> Etcd {
        let etcd = which("etcd").unwrap_or_else(|| panic!("etcd is not installed: `apt-get install etcd-server` (Debian package etcd-server, listed in tools/host-packages.txt)"));
        let (client, peer) = (free_port(), free_port());
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        std::fs::create_dir_all(data_dir).expect("etcd data dir");
        let log = std::fs::File::create(data_dir.with_extension("log")).expect("etcd log file");
        let child = Command::new(etcd)
            .args(["--name", "n1", "--data-dir"])
            .arg(data_dir.join("etcd"))
            .args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("n1={peer_url}"), "--enable-v2=true"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting etcd");
        let etcd = Etcd { child, endpoint: Endpoint::Tcp(format!("127.0.0.1:{client}")), data_dir: data_dir.into() };
        etcd.wait_ready();
        etcd
    }

    /// Ready means answering, and no longer changing its index by itself
    /// (etcd writes its own membership records just after it starts).
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut client = Client::new(self.endpoint.clone());
        let mut last = None;
        let mut stable_since = Instant::now();
        while Instant::now() < deadline {
            if let Ok(r) = client.request("GET", "/v2/keys/", None) {
                let idx = r.etcd_index();
                if r.status == 200 && idx.is_some() {
                    if last != idx {
                        last = idx;
                        stable_since = Instant::now();
                    } else if stable_since.elapsed() > Duration::from_millis(1500) {
                        return;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("etcd did not become ready within 60 s; see {}", self.data_dir.with_extension("log").display());
    }
}

impl Etcd {
    /// Start an `n`-member cluster on loopback, each member with its data
    /// below `dir`, and wait until it has a leader.
    pub fn start_cluster(dir: &Path, n: usize) -> Vec<Etcd> {
        let etcd = which("etcd").unwrap_or_else(|| panic!("etcd is not installed: `apt-get install etcd-server` (Debian package etcd-server, listed in tools/host-packages.txt)"));
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let initial: Vec<String> = ports.iter().enumerate().map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}")).collect();
        let initial = initial.join(",");
        let members: Vec<Etcd> = ports
            .iter()
            .enumerate()
            .map(|(i, (client, peer))| {
                let data_dir = dir.join(format!("m{i}"));
                std::fs::create_dir_all(&data_dir).expect("etcd data dir");
                let log = std::fs::File::create(data_dir.with_extension("log")).expect("etcd log file");
                let client_url = format!("http://127.0.0.1:{client}");
                let peer_url = format!("http://127.0.0.1:{peer}");
                let child = Command::new(&etcd)
                    .args(["--name", &format!("m{i}"), "--data-dir"])
                    .arg(data_dir.join("etcd"))
                    .args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url])
                    .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
                    .args(["--initial-cluster", &initial, "--initial-cluster-state", "new"])
                    .args(["--initial-cluster-token", "basalt-store-test", "--enable-v2=true"])
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .expect("starting etcd");
                Etcd { child, endpoint: Endpoint::Tcp(format!("127.0.0.1:{client}")), data_dir }
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(60);
        for m in &members {
            let mut client = Client::new(m.endpoint.clone());
            loop {
                if let Ok(r) = client.request("GET", "/health", None) {
                    if r.status == 200 && r.text().contains("true") {
                        break;
                    }
                }
                assert!(Instant::now() < deadline, "etcd cluster did not become healthy; see {}", m.data_dir.with_extension("log").display());
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        members
    }

    /// Stop this member (SIGKILL).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        match &self.endpoint {
            Endpoint::Tcp(a) => format!("http://{a}"),
            Endpoint::Unix(p) => p.display().to_string(),
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A running `basalt-store`.
pub struct StoreProcess {
    child: Child,
    pub endpoint: Endpoint,
    /// `host:port` of its TLS listener, when given one (`--listen https://…`).
    pub tls_endpoint: Option<String>,
    pub data_dir: PathBuf,
}

impl StoreProcess {
    /// Start `binary` with its data in `data_dir` on a loopback port of its own.
    pub fn start(binary: &Path, data_dir: &Path, extra_args: &[&str]) -> StoreProcess {
        StoreProcess::start_command(Command::new(binary), data_dir, extra_args)
    }

    /// The same with a prepared command (a program that serves the store
    /// given `basalt-store`'s arguments).
    pub fn start_command(mut command: Command, data_dir: &Path, extra_args: &[&str]) -> StoreProcess {
        let program = command.get_program().to_string_lossy().into_owned();
        let mut child = command
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", "127.0.0.1:0", "--no-socket", "--templates-dir", "/nonexistent", "--seed-file", ""])
            .args(extra_args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {program}: {e}"));
        let stderr = child.stderr.take().expect("piped stderr");
        let mut lines = BufReader::new(stderr).lines();
        let mut endpoint = None;
        let mut tls_endpoint = None;
        let mut seen = Vec::new();
        for line in lines.by_ref() {
            let Ok(line) = line else { break };
            if let Some(url) = line.strip_prefix("basalt-store: listening on http://") {
                endpoint = Some(Endpoint::Tcp(url.to_string()));
            }
            if let Some(rest) = line.strip_prefix("basalt-store: listening on https://") {
                tls_endpoint = rest.split_whitespace().next().map(str::to_string);
            }
            let ready = line.starts_with("basalt-store: ready");
            seen.push(line);
            if ready {
                break;
            }
        }
        let Some(endpoint) = endpoint else {
            let _ = child.kill();
            panic!("basalt-store did not start: {}", seen.join("\n"));
        };
        // Keep draining its log so it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        StoreProcess { child, endpoint, tls_endpoint, data_dir: data_dir.into() }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, and wait for it to be gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for StoreProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
