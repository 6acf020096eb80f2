//! What the `make bench` programs share: medians, timed commands and loop
//! devices as targets.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Runs `cmd` to completion (it must succeed); its wall time in seconds.
pub fn timed(cmd: &mut Command) -> anyhow::Result<f64> {
    let t = Instant::now();
    let out = cmd.output()?;
    anyhow::ensure!(out.status.success(), "{:?} failed: {}{}", cmd, String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Ok(t.elapsed().as_secs_f64())
}

/// A loop block device over a file, detached when dropped.
pub struct LoopDevice(pub String);

impl LoopDevice {
    pub fn attach(backing: &Path) -> anyhow::Result<LoopDevice> {
        let out = Command::new("losetup").args(["--find", "--show"]).arg(backing).output()?;
        anyhow::ensure!(out.status.success(), "losetup failed (root and the loop driver are needed): {}", String::from_utf8_lossy(&out.stderr));
        Ok(LoopDevice(String::from_utf8(out.stdout)?.trim().to_string()))
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}
