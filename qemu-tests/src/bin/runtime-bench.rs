//! runtime-bench: the container runtime against runc and skopeo, on this
//! machine, in the same run.
//!
//! - Start latency: `basalt-runtime run --bundle B` and `runc run --bundle B`
//!   on the same bundle (a busybox root; the container's program is this
//!   binary, which prints CLOCK_MONOTONIC as its first act): time from the
//!   spawn to the container's first instruction, and to the runtime's exit.
//!   On the build host (hybrid cgroups) the bundle has no limits; both
//!   runtimes install basalt's default seccomp profile and a device filter
//!   (basalt-runtime its BPF device program on a cgroup below the cgroup v2
//!   mount, runc its v1 devices cgroup).
//! - Pull throughput from Debian's docker-registry on loopback: a 64 MiB
//!   incompressible layer into an empty store, against `skopeo copy` of the
//!   same image to an OCI layout.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use basalt_qemu_tests::bench::median;
use basalt_qemu_tests::registry::{busybox, busybox_layer, tar_layer, Auth, Compression, LayerFile, Layout, Registry, RunConfig};

const RUNS: usize = 25;

fn monotonic_ns() -> u64 {
    let mut ts = libc_timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock 1 is CLOCK_MONOTONIC, always present; `ts` is a live
    // repr(C) struct with the layout of x86_64 Linux's struct timespec.
    unsafe { clock_gettime(1, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[repr(C)]
struct libc_timespec {
    tv_sec: i64,
    tv_nsec: i64,
}

extern "C" {
    fn clock_gettime(clock: i32, ts: *mut libc_timespec) -> i32;
}

fn release_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().join(name)
}

/// A bundle whose program is this binary in `stamp` mode.
fn bundle(dir: &Path) -> PathBuf {
    let bundle = dir.join("bundle");
    let rootfs = bundle.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::write(rootfs.join("bin/busybox"), busybox().unwrap()).unwrap();
    std::fs::copy(std::env::current_exe().unwrap(), rootfs.join("stamp")).unwrap();
    // `runc spec`'s config, with what cannot run here changed: no terminal,
    // no cgroup v1 mount (the build host is hybrid).
    let output = Command::new("runc").arg("spec").current_dir(&bundle).output().expect("runc (Debian package runc; make deps installs it)");
    assert!(output.status.success(), "runc spec: {}", String::from_utf8_lossy(&output.stderr));
    let text = std::fs::read_to_string(bundle.join("config.json")).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&text).unwrap();
    config["process"]["terminal"] = false.into();
    config["process"]["args"] = serde_json::json!(["/stamp", "stamp"]);
    let mounts: Vec<serde_json::Value> = config["mounts"].as_array().unwrap().iter().filter(|m| m["type"] != "cgroup").cloned().collect();
    config["mounts"] = mounts.into();
    // Both runtimes under basalt's default seccomp profile (and, from the
    // spec's device rules, a device program or runc's device cgroup), as a
    // default basalt container starts.
    let caps: Vec<String> = config["process"]["capabilities"]["bounding"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_string()).collect();
    let profile = Command::new(release_bin("basalt-runtime")).arg("seccomp").arg("default").args(&caps).output().unwrap();
    assert!(profile.status.success(), "basalt-runtime seccomp: {}", String::from_utf8_lossy(&profile.stderr));
    config["linux"]["seccomp"] = serde_json::from_slice(&profile.stdout).unwrap();
    std::fs::write(bundle.join("config.json"), serde_json::to_vec_pretty(&config).unwrap()).unwrap();
    bundle
}

/// (ms to the first instruction, ms to exit) for one run.
fn one_run(command: &mut Command) -> (f64, f64) {
    let start = monotonic_ns();
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let mut out = String::new();
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    let status = child.wait().unwrap();
    let end = monotonic_ns();
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(status.success(), "{command:?}: {status}: {err}");
    let stamp: u64 = out.trim().parse().unwrap_or_else(|_| panic!("{command:?} printed {out:?} {err}"));
    ((stamp - start) as f64 / 1e6, (end - start) as f64 / 1e6)
}

fn start_latency(work: &Path) {
    let bundle = bundle(work);
    let ours = release_bin("basalt-runtime");
    let mut rows = Vec::new();
    for (label, make) in [
        (
            "basalt-runtime run",
            Box::new(|i: usize| {
                let mut c = Command::new(&ours);
                c.args(["run", "--bundle"]).arg(&bundle).arg(format!("bench-{i}"));
                c
            }) as Box<dyn Fn(usize) -> Command>,
        ),
        (
            "runc run",
            Box::new(|i: usize| {
                let mut c = Command::new("runc");
                c.args(["run", "--bundle"]).arg(&bundle).arg(format!("bench-{i}"));
                c
            }),
        ),
    ] {
        // One warm-up run each, then interleaving is not needed: the two
        // measure the same steps on the same, idle-as-possible machine.
        one_run(&mut make(0));
        let (firsts, exits): (Vec<f64>, Vec<f64>) = (1..=RUNS).map(|i| one_run(&mut make(i))).unzip();
        rows.push((label, median(firsts), median(exits)));
    }
    println!("| runtime | to first instruction (ms) | to exit (ms) |");
    println!("| --- | ---: | ---: |");
    for (label, first, exit) in &rows {
        println!("| {label} | {first:.1} | {exit:.1} |");
    }
    println!("| ratio basalt/runc | {:.2} | {:.2} |", rows[0].1 / rows[1].1, rows[0].2 / rows[1].2);
}

fn pull_throughput(work: &Path) {
    let registry = Registry::start(Auth::Anonymous).unwrap();
    let mut layout = Layout::new(&work.join("layout")).unwrap();
    // Incompressible content, so the registry and the wire carry all of it.
    let mut data = vec![0u8; 64 << 20];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for chunk in data.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
    }
    let layer = tar_layer(&[LayerFile::File { path: "blob".into(), mode: 0o644, data }]).unwrap();
    let image = layout.image(&[(busybox_layer(&busybox().unwrap()).unwrap(), Compression::Gzip), (layer, Compression::Gzip)], &RunConfig::default(), "amd64").unwrap();
    layout.tag_manifest("big", &image);
    layout.finish().unwrap();
    registry.push(&layout.dir, "big", "bench/big").unwrap();
    let reference = format!("{}/bench/big:big", registry.address());
    let settings = work.join("runtime.toml");
    std::fs::write(&settings, format!("[registries.\"{}\"]\ninsecure = true\n", registry.address())).unwrap();
    let mut ours = Vec::new();
    let mut unpack = Vec::new();
    let mut bytes = 0u64;
    for run in 0..3 {
        let started = Instant::now();
        let output = Command::new(release_bin("basalt-runtime")).args(["pull", "--settings"]).arg(&settings).arg("--store").arg(work.join(format!("store-{run}"))).arg(&reference).output().unwrap();
        ours.push(started.elapsed().as_secs_f64());
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{text}{}", String::from_utf8_lossy(&output.stderr));
        // "REF DIGEST: N bytes downloaded in S s (R resumed), L layers unpacked in U s, K reused"
        bytes = text.split(": ").nth(1).and_then(|t| t.split_whitespace().next()).and_then(|n| n.parse().ok()).unwrap_or(0);
        unpack.push(text.split("unpacked in ").nth(1).and_then(|t| t.split_whitespace().next()).and_then(|n| n.parse::<f64>().ok()).unwrap_or(0.0));
    }
    let mut skopeo = Vec::new();
    for run in 0..3 {
        let started = Instant::now();
        let status = Command::new("skopeo")
            .args(["copy", "--quiet", "--src-tls-verify=false"])
            .arg(format!("docker://{reference}"))
            .arg(format!("oci:{}:big", work.join(format!("skopeo-{run}")).display()))
            .status()
            .unwrap();
        assert!(status.success());
        skopeo.push(started.elapsed().as_secs_f64());
    }
    let mib = bytes as f64 / (1 << 20) as f64;
    println!("| pull of {mib:.1} MiB (2 gzip layers) from a loopback registry | seconds | MiB/s |");
    println!("| --- | ---: | ---: |");
    let downloads: Vec<f64> = ours.iter().zip(&unpack).map(|(all, unpacking)| all - unpacking).collect();
    println!("| basalt-runtime pull: download and verify | {:.2} | {:.0} |", median(downloads.clone()), mib / median(downloads));
    println!("| basalt-runtime pull: all, with unpacking (decompress, verify diff_id, write, sync) | {:.2} | {:.0} |", median(ours.clone()), mib / median(ours));
    println!("| skopeo copy to an OCI layout (download, verify) | {:.2} | {:.0} |", median(skopeo.clone()), mib / median(skopeo));
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("stamp") {
        println!("{}", monotonic_ns());
        return;
    }
    let work = tempfile::Builder::new().prefix("runtime-bench-").tempdir().unwrap();
    println!("## Containers (`runtime-bench`, medians, this machine, same run)\n");
    start_latency(work.path());
    println!();
    pull_throughput(work.path());
}
