//! Update apply throughput: `basalt-update write-slot` (hash the stream,
//! decompress, write, read back and verify the verity tree, sync) of the
//! default image's full payload onto a loop block device, as a ratio to
//! `dd bs=4M conv=fsync` of the same usr bytes onto the same device in the
//! same run (alternating, median of 5 each), and the CPU time the apply
//! took. Prints a markdown table.
//!
//! Needs root (losetup), BASALT_BIN and BASALT_IMAGE (default out/basalt.img).

use basalt_qemu_tests::bench::{median, timed, timed_cpu, LoopDevice};
use basalt_qemu_tests::{basalt_bin, default_image, require_image};
use std::process::{Command, Stdio};

const RUNS: usize = 5;

struct Collect(Vec<u8>);

impl basalt_repo::payload::Sink for Collect {
    fn usr(&mut self, d: &[u8]) -> std::io::Result<()> {
        self.0.extend_from_slice(d);
        Ok(())
    }
    fn uki(&mut self, _: char, _: &[u8]) -> std::io::Result<()> {
        Ok(())
    }
}

fn main() -> anyhow::Result<()> {
    let basalt = basalt_bin();
    let agent = basalt.with_file_name("basalt-update");
    let img = default_image();
    require_image(&img)?;
    let dir = tempfile::tempdir()?;
    let payload = dir.path().join("full.payload");
    timed(Command::new(&basalt).arg("payload").arg(&img).arg("-o").arg(&payload).stdout(Stdio::null()))?;
    let data = std::fs::read(&payload)?;
    let mut r = &data[..];
    let header = basalt_repo::payload::read_header(&mut r)?;
    let mut usr = Collect(Vec::new());
    basalt_repo::payload::unpack(r, &header, None, &mut usr)?;
    let usr_path = dir.path().join("usr.img");
    std::fs::write(&usr_path, &usr.0)?;
    let mib = usr.0.len() as f64 / 1048576.0;

    let backing = dir.path().join("slot.raw");
    std::fs::File::create(&backing)?.set_len(usr.0.len() as u64 + (16 << 20))?;
    let dev = LoopDevice::attach(&backing)?;
    let (mut dd, mut apply, mut cpu) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..RUNS {
        dd.push(timed(Command::new("dd").arg(format!("if={}", usr_path.display())).arg(format!("of={}", dev.0)).args(["bs=4M", "conv=fsync", "status=none"]))?);
        let (wall, used) = timed_cpu(Command::new(&agent).arg("write-slot").arg(&payload).arg(&dev.0).arg("B"))?;
        apply.push(wall);
        cpu.push(used);
    }
    drop(dev);
    let (dd_s, apply_s, cpu_s) = (median(dd), median(apply), median(cpu));
    println!("## Update apply (median of {RUNS})");
    println!();
    println!("| figure | value | target | ratio to target |");
    println!("| --- | --- | --- | --- |");
    println!("| full payload | {:.1} MiB for {mib:.1} MiB of usr slot and two UKIs | — | — |", data.len() as f64 / 1048576.0);
    println!("| `dd bs=4M conv=fsync` of the usr bytes to a loop device | {:.0} MiB/s ({dd_s:.2} s) | — | — |", mib / dd_s);
    println!("| `basalt-update write-slot` to the same device (verified) | {:.0} MiB/s ({apply_s:.2} s) | — | — |", mib / apply_s);
    println!("| CPU time of the apply, all threads | {cpu_s:.2} s ({:.0} MiB of usr per CPU second) | — | — |", mib / cpu_s);
    println!("| apply throughput / dd throughput | {:.2} | ≥ 0.8 | {:.2} |", dd_s / apply_s, dd_s / apply_s / 0.8);
    Ok(())
}
