//! Shipping figures: `basalt flash` throughput as a ratio to
//! `dd bs=4M conv=fsync` of the same image onto the same loop block device in
//! the same run (alternating, median of 3 each), and `basalt publish aws`
//! upload throughput to a local moto server. Prints a markdown table.
//!
//! Needs root (losetup), `moto_server` (PyPI moto[server]), BASALT_BIN and
//! BASALT_IMAGE (default out/basalt.img).

use basalt_qemu_tests::{basalt_bin, default_image, require_image};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const RUNS: usize = 3;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn run(cmd: &mut Command) -> anyhow::Result<f64> {
    let t = Instant::now();
    let out = cmd.output()?;
    anyhow::ensure!(out.status.success(), "{:?} failed: {}{}", cmd, String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Ok(t.elapsed().as_secs_f64())
}

struct Loop(String);

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

fn main() -> anyhow::Result<()> {
    let basalt = basalt_bin();
    let img = default_image();
    require_image(&img)?;
    let bytes = std::fs::metadata(&img)?.len();
    let mib = bytes as f64 / 1048576.0;
    let sha = String::from_utf8(Command::new("sha256sum").arg(&img).output()?.stdout)?.split_whitespace().next().unwrap_or("").to_string();
    let dir = tempfile::tempdir()?;

    // Flash vs dd onto the same loop device.
    let backing = dir.path().join("disk.raw");
    std::fs::File::create(&backing)?.set_len(bytes)?;
    let out = Command::new("losetup").args(["--find", "--show"]).arg(&backing).output()?;
    anyhow::ensure!(out.status.success(), "losetup failed (root and the loop driver are needed): {}", String::from_utf8_lossy(&out.stderr));
    let dev = Loop(String::from_utf8(out.stdout)?.trim().to_string());
    let (mut dd, mut flash) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        dd.push(run(Command::new("dd").arg(format!("if={}", img.display())).arg(format!("of={}", dev.0)).args(["bs=4M", "conv=fsync", "status=none"]))?);
        flash.push(run(Command::new(&basalt).arg("flash").arg(&img).arg(&dev.0).args(["--sha256", &sha]).stdout(Stdio::null()))?);
    }
    drop(dev);
    let (dd_s, flash_s) = (median(dd), median(flash));

    // Upload to moto.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut moto = Command::new("moto_server").args(["-H", "127.0.0.1", "-p", &port.to_string()]).stdout(Stdio::null()).stderr(Stdio::null()).spawn()
        .map_err(|e| anyhow::anyhow!("moto_server: {e}; pip install 'moto[server]'"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "moto_server did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let endpoint = format!("http://127.0.0.1:{port}");
    let plan = Command::new(&basalt).args(["publish", "aws"]).arg(&img).args(["--dry-run", "--region", "us-east-1"]).output()?;
    let plan = String::from_utf8_lossy(&plan.stdout).into_owned();
    let blocks: u64 = plan.split("KiB: ").nth(1).and_then(|s| s.split_whitespace().next()).and_then(|n| n.parse().ok()).unwrap_or(0);
    let mut upload = Vec::new();
    for i in 0..RUNS {
        let state = dir.path().join(format!("state-{i}"));
        upload.push(run(&mut publish_cmd(&basalt, &img, &endpoint, &state, &format!("bench-{i}")))?);
    }
    let _ = moto.kill();
    let _ = moto.wait();
    let upload_s = median(upload);
    let upload_mib = blocks as f64 * 0.5;

    println!("## Shipping (median of {RUNS})");
    println!();
    println!("| figure | value | target | ratio to target |");
    println!("| --- | --- | --- | --- |");
    println!("| `dd bs=4M conv=fsync` to a loop device | {:.0} MiB/s ({dd_s:.1} s for {mib:.0} MiB) | — | — |", mib / dd_s);
    println!("| `basalt flash` to the same loop device | {:.0} MiB/s ({flash_s:.1} s, sha256 verified) | — | — |", mib / flash_s);
    println!("| flash throughput / dd throughput | {:.2} | ≥ 0.9 | {:.2} |", dd_s / flash_s, dd_s / flash_s / 0.9);
    println!("| `publish aws` to local moto, end to end | {:.1} MiB/s ({blocks} blocks, {upload_mib:.0} MiB in {upload_s:.1} s) | — | — |", upload_mib / upload_s);
    Ok(())
}

fn publish_cmd(basalt: &Path, img: &Path, endpoint: &str, state: &Path, name: &str) -> Command {
    let mut c = Command::new(basalt);
    c.args(["publish", "aws"]).arg(img).args(["--endpoint-url", endpoint, "--region", "us-east-1", "--name", name, "--state-file"]).arg(state);
    c.envs([("AWS_ACCESS_KEY_ID", "bench"), ("AWS_SECRET_ACCESS_KEY", "bench")]);
    c.stdout(Stdio::null());
    c
}
