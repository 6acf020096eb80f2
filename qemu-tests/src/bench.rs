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

/// Runs `cmd` to completion (it must succeed, its output is discarded):
/// its wall time and the CPU time (user and system, all its threads), in
/// seconds.
pub fn timed_cpu(cmd: &mut Command) -> anyhow::Result<(f64, f64)> {
    use std::process::Stdio;
    let t = Instant::now();
    let child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn()?;
    let pid = child.id() as libc::pid_t;
    // SAFETY: rusage is plain integers and timevals, for which all zeroes is valid.
    let (mut status, mut usage) = (0, unsafe { std::mem::zeroed::<libc::rusage>() });
    // SAFETY: waits for our own child; status and usage are ours to fill.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall = t.elapsed().as_secs_f64();
    anyhow::ensure!(r == pid, "wait4: {}", std::io::Error::last_os_error());
    let mut err = String::new();
    if let Some(mut e) = child.stderr {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    anyhow::ensure!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "{cmd:?} failed: {err}");
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok((wall, secs(usage.ru_utime) + secs(usage.ru_stime)))
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
