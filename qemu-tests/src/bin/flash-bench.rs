//! Shipping figures: `basalt flash` throughput as a ratio to
//! `dd bs=4M conv=fsync` of the same image onto the same loop block device in
//! the same run, and `basalt publish aws` upload throughput to a local moto
//! server. Prints a markdown table.
//!
//! Fairness: dd and flash take turns (dd first in even rounds, flash first in
//! odd ones), median of 3 each, and every timed run starts from the same
//! target: the loop device's backing file emptied (hole-punched) and
//! preallocated again (`fallocate`: every block allocated, none written, as
//! on a physical disk no write has to allocate), and the device's page cache
//! dropped, so no run inherits written blocks or cached pages from the one
//! before. Both read the same image, whose data is in the page cache for both
//! after the first round. flash also verifies the sha256 of all of it; dd
//! checks nothing.
//!
//! Needs root (losetup), util-linux (fallocate, blockdev), `moto_server` (PyPI
//! moto[server]), BASALT_BIN and BASALT_IMAGE (default out/basalt.img).

use basalt_qemu_tests::bench::{median, timed, LoopDevice};
use basalt_qemu_tests::{basalt_bin, default_image, require_image};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const RUNS: usize = 3;

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
    let dev = LoopDevice::attach(&backing)?;
    let zst = dir.path().join("basalt.img.zst");
    timed(Command::new(&basalt).arg("convert").arg(&img).args(["--format", "raw.zst", "-o"]).arg(&zst).stdout(Stdio::null()))?;
    let zst_sha = std::fs::read_to_string(format!("{}.sha256", zst.display()))?.split_whitespace().next().unwrap_or("").to_string();
    let zst_mib = std::fs::metadata(&zst)?.len() as f64 / 1048576.0;
    let fresh = || -> anyhow::Result<()> {
        // Empty, then every block allocated again (unwritten): like a
        // physical disk, no write has to allocate, and nothing is cached.
        timed(Command::new("fallocate").args(["--punch-hole", "--offset", "0", "--length", &bytes.to_string()]).arg(&backing))?;
        timed(Command::new("fallocate").args(["--offset", "0", "--length", &bytes.to_string()]).arg(&backing))?;
        timed(Command::new("blockdev").arg("--flushbufs").arg(&dev.0))?;
        Ok(())
    };
    let dd_once = || -> anyhow::Result<f64> {
        fresh()?;
        timed(Command::new("dd").arg(format!("if={}", img.display())).arg(format!("of={}", dev.0)).args(["bs=4M", "conv=fsync", "status=none"]))
    };
    let flash_once = |source: &Path, sha: &str| -> anyhow::Result<f64> {
        fresh()?;
        timed(Command::new(&basalt).arg("flash").arg(source).arg(&dev.0).args(["--sha256", sha]).stdout(Stdio::null()))
    };
    let (mut dd, mut flash, mut flash_zst) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..RUNS {
        if round % 2 == 0 {
            dd.push(dd_once()?);
            flash.push(flash_once(&img, &sha)?);
        } else {
            flash.push(flash_once(&img, &sha)?);
            dd.push(dd_once()?);
        }
        flash_zst.push(flash_once(&zst, &zst_sha)?);
    }
    drop(dev);
    let (dd_s, flash_s, zst_s) = (median(dd), median(flash), median(flash_zst));

    // Upload to moto.
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut moto = Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
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
        upload.push(timed(&mut publish_cmd(&basalt, &img, &endpoint, &state, &format!("bench-{i}")))?);
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
    println!("| `basalt flash` of the `.img.zst` ({zst_mib:.0} MiB) to the same device | {:.0} MiB/s of image ({zst_s:.1} s, sha256 verified) | — | — |", mib / zst_s);
    println!("| `.img.zst` flash throughput / dd throughput | {:.2} | — | — |", dd_s / zst_s);
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
