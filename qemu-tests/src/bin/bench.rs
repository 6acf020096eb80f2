//! `make bench` for the build-and-boot path: build time with warm inputs,
//! sizes, time from QEMU start to `basalt: ready` under the same
//! accelerator the tests use, memory, and the supervisor bringing up 100
//! services and 20 timers. Prints figures and their ratio to the targets.

use basalt_qemu_tests::bench::median;
use basalt_qemu_tests::{image, Vm};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

const RUNS: usize = 3;

fn main() -> anyhow::Result<()> {
    let basalt = PathBuf::from(std::env::var("BASALT_BIN").unwrap_or_else(|_| "target/x86_64-unknown-linux-gnu/release/basalt".into()));
    let dir = tempfile::tempdir()?;
    let img = dir.path().join("bench.img");

    let mut build = Vec::new();
    for _ in 0..RUNS {
        let t = Instant::now();
        let out = Command::new(&basalt).args(["build", "--output"]).arg(&img).output()?;
        anyhow::ensure!(out.status.success(), "build failed: {}", String::from_utf8_lossy(&out.stderr));
        build.push(t.elapsed().as_secs_f64());
    }

    let esp = dir.path().join("esp");
    image::extract_partition(&img, 1, &esp)?;
    let uki_name = image::fat_list(&esp, "EFI/Linux")?.remove(0);
    let uki = image::fat_read(&esp, &format!("EFI/Linux/{uki_name}"))?;
    let cmdline = image::uki_section(&uki, ".cmdline")?;
    let usr_blocks: u64 = image::cmdline_param(&cmdline, "basalt.usr_blocks").unwrap_or("0").parse()?;
    let sections = basalt_uki::sections(&uki)?;
    let size_of = |n: &str| sections.iter().find(|(s, _)| s == n).map(|(_, d)| d.len()).unwrap_or(0) as f64 / 1048576.0;

    let mut boot = Vec::new();
    for i in 0..RUNS {
        let mut vm = Vm::boot(&format!("bench-{i}"), &img)?;
        vm.wait_ready(Duration::from_secs(120))?;
        boot.push(vm.started.elapsed().as_secs_f64());
        vm.power_cut()?;
    }

    // Memory in use with every service idle, and time to a blessed boot of a
    // slot that has a boot counter (the path an update takes).
    let counted = dir.path().join("counted.img");
    anyhow::ensure!(Command::new("cp").arg("--sparse=always").arg(&img).arg(&counted).status()?.success());
    image::set_counter(&counted);
    let mut blessed = Vec::new();
    let mut mem = Vec::new();
    let mut used = Vec::new();
    for i in 0..RUNS {
        let mut vm = Vm::boot(&format!("bench-blessed-{i}"), &counted)?;
        vm.wait_for("boot blessed", Duration::from_secs(180))?;
        blessed.push(vm.started.elapsed().as_secs_f64());
        std::thread::sleep(Duration::from_secs(5));
        let meminfo = vm.run_ok("cat /proc/meminfo", Duration::from_secs(30))?;
        let field = |k: &str| -> f64 { meminfo.lines().find(|l| l.starts_with(k)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()).unwrap_or(0.0) };
        mem.push((field("MemTotal:") - field("MemAvailable:")) / 1024.0);
        used.push((field("MemTotal:") - field("MemFree:") - field("Buffers:") - field("Cached:")) / 1024.0);
        vm.power_cut()?;
    }
    let (blessed, mem, used) = (median(blessed), median(mem), median(used));

    // The supervisor with 100 trivial services and 20 timers: from the
    // reload that enables them until all are active, and PID 1's memory
    // (VmRSS) before and with them.
    let make_units = "cd /etc/systemd/system && mkdir -p multi-user.target.wants timers.target.wants && for i in $(seq 0 99); do printf '[Service]\\nExecStart=/usr/bin/sleep 100000\\n' > bench-$i.service; ln -sf ../bench-$i.service multi-user.target.wants/; done && for j in $(seq 0 19); do printf '[Service]\\nType=oneshot\\nExecStart=/usr/bin/true\\n' > tick-$j.service; printf '[Timer]\\nOnActiveSec=1h\\n' > tick-$j.timer; ln -sf ../tick-$j.timer timers.target.wants/; done; echo made";
    let measure = "grep VmRSS /proc/1/status; t0=$(cut -d' ' -f1 /proc/uptime); basaltctl reload; while [ \"$(basaltctl status | grep -cE '^(bench-[0-9]+[.]service|tick-[0-9]+[.]timer) +active')\" -lt 120 ]; do :; done; t1=$(cut -d' ' -f1 /proc/uptime); echo took $t0 $t1; grep VmRSS /proc/1/status";
    let mut ready = Vec::new();
    let (mut rss_idle, mut rss_busy) = (Vec::new(), Vec::new());
    for i in 0..RUNS {
        let mut vm = Vm::boot(&format!("bench-units-{i}"), &img)?;
        vm.wait_ready(Duration::from_secs(120))?;
        vm.run_ok(make_units, Duration::from_secs(60))?;
        let out = vm.run_ok(measure, Duration::from_secs(300))?;
        let rss: Vec<f64> = out.lines().filter(|l| l.starts_with("VmRSS:")).filter_map(|l| l.split_whitespace().nth(1)?.parse().ok()).collect();
        let took: Vec<f64> = out.lines().find_map(|l| l.strip_prefix("took ")).map(|t| t.split_whitespace().filter_map(|v| v.parse().ok()).collect()).unwrap_or_default();
        anyhow::ensure!(rss.len() == 2 && took.len() == 2, "unexpected answer from the unit benchmark: {out}");
        ready.push(took[1] - took[0]);
        rss_idle.push(rss[0] / 1024.0);
        rss_busy.push(rss[1] / 1024.0);
        vm.power_cut()?;
    }
    let (ready, rss_idle, rss_busy) = (median(ready), median(rss_idle), median(rss_busy));

    let accel = format!("{:?}", basalt_vm::detect_accel()).to_uppercase();
    let (b, t) = (median(build), median(boot));
    let usr = usr_blocks as f64 * 4096.0 / 1048576.0;
    let uki_mib = uki.len() as f64 / 1048576.0;
    println!("## Build and boot (median of {RUNS})\n");
    println!("| figure | value | target | ratio to target |");
    println!("| --- | --- | --- | --- |");
    println!("| build time, warm inputs | {b:.1} s | < 15 s | {:.2} |", b / 15.0);
    println!("| /usr filesystem (squashfs) | {usr:.1} MiB | < 64 MiB | {:.2} |", usr / 64.0);
    println!("| UKI | {uki_mib:.1} MiB (kernel {:.1}, initramfs {:.1}) | — | — |", size_of(".linux"), size_of(".initrd"));
    println!("| QEMU start → `basalt: ready` ({accel}) | {t:.1} s | < 10 s | {:.2} |", t / 10.0);
    println!("| QEMU start → boot blessed ({accel}, gate: sshd up 10 s) | {blessed:.1} s | — | — |");
    println!("| memory in use, services idle (MemTotal − MemAvailable) | {mem:.1} MiB | < 48 MiB | {:.2} |", mem / 48.0);
    println!("| memory used by programs and kernel (MemTotal − MemFree − Buffers − Cached) | {used:.1} MiB | — | — |");
    println!("| the same, CoreOS as its slides boast | 114 MB | — | ours/CoreOS {:.2} |", mem * 1.048576 / 114.0);
    println!("| supervisor: `reload` → 100 services and 20 timers active ({accel}) | {ready:.2} s | — | — |");
    println!("| PID 1 memory (VmRSS): idle, and with those 120 units | {rss_idle:.1} MiB, {rss_busy:.1} MiB | — | — |");
    Ok(())
}
