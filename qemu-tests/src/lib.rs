//! The end-to-end harness: boots a basalt image in QEMU under OVMF, keeps
//! every byte of the serial console (in memory and in a log file that is kept
//! when a test fails), runs commands on the console shell, and controls the
//! VM through QMP (power off, reset). Boots fail on a kernel panic, an Oops,
//! a dm-verity error or a basalt error unless the test expects them.

pub mod bench;
pub mod harness;
pub mod http;
pub mod image;
pub mod registry;

use anyhow::{bail, Context, Result};
use basalt_vm::VmConfig;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Console lines that mean the boot went wrong.
/// (dm-verity reports a bad block as "data block N is corrupted".)
pub const FAILURE_PATTERNS: &[&str] = &["Kernel panic", "Oops:", "BUG:", "is corrupted", "basalt: error"];

/// The image `make test` built, or the one a test names.
pub fn default_image() -> PathBuf {
    match std::env::var_os("BASALT_IMAGE") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../out/basalt.img"),
    }
}

/// The `basalt` binary `make test` built (`BASALT_BIN`), or the workspace's release build.
pub fn basalt_bin() -> PathBuf {
    match std::env::var_os("BASALT_BIN") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/x86_64-unknown-linux-gnu/release/basalt"),
    }
}

pub fn require_image(path: &Path) -> Result<()> {
    if !path.exists() {
        bail!("{} does not exist: run `make test`, which builds the image first", path.display());
    }
    Ok(())
}

#[derive(Default)]
struct Console {
    bytes: Vec<u8>,
    closed: bool,
}

pub struct Vm {
    name: String,
    child: Child,
    console: Arc<(Mutex<Console>, Condvar)>,
    serial: UnixStream,
    qmp: Option<BufReader<UnixStream>>,
    /// Console offset up to which `wait_for` has consumed.
    cursor: usize,
    pub started: Instant,
    _state: tempfile::TempDir,
    log_path: PathBuf,
    next_marker: u32,
}

fn connect(path: &Path, deadline: Instant) -> Result<UnixStream> {
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() > deadline => return Err(e).with_context(|| format!("connecting to {}", path.display())),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

impl Vm {
    /// Boots `image` behind an overlay. `name` names the kept log.
    pub fn boot(name: &str, image: &Path) -> Result<Vm> {
        Self::boot_with(name, image, |_| {})
    }

    pub fn boot_with(name: &str, image: &Path, adjust: impl FnOnce(&mut VmConfig)) -> Result<Vm> {
        Self::boot_with_qemu_args(name, image, adjust, &[])
    }

    /// Like `boot_with`, with more QEMU arguments after the harness's own:
    /// another NIC on a network of the test's own, for instance.
    pub fn boot_with_qemu_args(name: &str, image: &Path, adjust: impl FnOnce(&mut VmConfig), qemu_args: &[String]) -> Result<Vm> {
        require_image(image)?;
        let state = tempfile::Builder::new().prefix("basalt-vm-").tempdir()?;
        let mut cfg = VmConfig::new(image, state.path());
        adjust(&mut cfg);
        cfg.prepare()?;
        let serial_sock = state.path().join("serial.sock");
        let qmp_sock = state.path().join("qmp.sock");
        let log_path = state.path().join("serial.log");
        let mut cmd = cfg.command(basalt_vm::detect_accel());
        cmd.args(qemu_args);
        // wait=on: QEMU does not start the guest before we listen, so no byte is lost.
        cmd.arg("-chardev").arg(format!("socket,id=ser0,path={},server=on,wait=on,logfile={}", serial_sock.display(), log_path.display()));
        cmd.args(["-serial", "chardev:ser0"]);
        cmd.arg("-qmp").arg(format!("unix:{},server=on,wait=off", qmp_sock.display()));
        cmd.stdin(std::process::Stdio::null());
        cmd.stderr(std::fs::File::create(state.path().join("qemu.stderr"))?);
        let child = cmd.spawn().context("starting qemu-system-x86_64 (install qemu-system-x86)")?;
        let deadline = Instant::now() + Duration::from_secs(20);
        let serial = connect(&serial_sock, deadline)?;
        let started = Instant::now();
        let console = Arc::new((Mutex::new(Console::default()), Condvar::new()));
        let reader = serial.try_clone()?;
        let sink = console.clone();
        std::thread::spawn(move || pump(reader, sink));
        let qmp = connect(&qmp_sock, deadline).ok().map(BufReader::new);
        let mut vm = Vm { name: name.to_string(), child, console, serial, qmp, cursor: 0, started, _state: state, log_path, next_marker: 0 };
        vm.qmp_handshake()?;
        Ok(vm)
    }

    /// The qcow2 overlay the VM writes to (the image itself stays untouched).
    pub fn overlay_path(&self) -> PathBuf {
        self._state.path().join("disk.qcow2")
    }

    /// Everything the console has printed so far.
    pub fn console_text(&self) -> String {
        String::from_utf8_lossy(&self.console.0.lock().unwrap().bytes).into_owned()
    }

    /// Waits until `pattern` appears after what earlier waits consumed.
    /// Fails on a failure pattern, on QEMU exiting, or at the timeout.
    pub fn wait_for(&mut self, pattern: &str, timeout: Duration) -> Result<String> {
        self.wait_for_any(&[pattern], timeout, false).map(|(_, text)| text)
    }

    /// Waits for any of `patterns`; with `allow_failures`, failure patterns are
    /// ordinary text (for tests that expect them). Returns which matched and
    /// the text from the cursor up to the end of the match.
    pub fn wait_for_any(&mut self, patterns: &[&str], timeout: Duration, allow_failures: bool) -> Result<(usize, String)> {
        let deadline = Instant::now() + timeout;
        let (lock, cond) = &*self.console;
        let mut console = lock.lock().unwrap();
        loop {
            let text = String::from_utf8_lossy(&console.bytes[self.cursor.min(console.bytes.len())..]).into_owned();
            let first = patterns.iter().enumerate().filter_map(|(i, p)| text.find(p).map(|at| (at, i, p.len()))).min();
            let failure = if allow_failures { None } else { FAILURE_PATTERNS.iter().filter_map(|p| text.find(p).map(|at| (at, *p))).min() };
            match (first, failure) {
                (Some((at, i, len)), f) if f.is_none_or(|(fat, _)| fat > at) => {
                    // Lossy decoding can change lengths; find the match in the raw bytes.
                    let raw = &console.bytes[self.cursor..];
                    let needle = patterns[i].as_bytes();
                    let raw_at = raw.windows(needle.len()).position(|w| w == needle).unwrap_or(at);
                    self.cursor += raw_at + len;
                    return Ok((i, text[..at + len].to_string()));
                }
                (_, Some((_, p))) => {
                    let line = text.lines().find(|l| l.contains(p)).unwrap_or(p).to_string();
                    bail!("console shows a failure ({p}): {line}\n{}", self.log_hint());
                }
                _ => {}
            }
            if console.closed {
                bail!("QEMU exited before {patterns:?} appeared\n{}", self.log_hint());
            }
            let now = Instant::now();
            if now >= deadline {
                bail!("timed out after {:?} waiting for {patterns:?}\n{}", timeout, self.log_hint());
            }
            console = cond.wait_timeout(console, deadline - now).unwrap().0;
        }
    }

    fn log_hint(&self) -> String {
        let stderr = std::fs::read_to_string(self._state.path().join("qemu.stderr")).unwrap_or_default();
        let stderr: String = stderr.lines().filter(|l| !l.contains("QEMU waiting for connection")).collect::<Vec<_>>().join("\n");
        format!("(serial log: {}){}", self.kept_log_path().display(), if stderr.is_empty() { String::new() } else { format!("\nqemu: {stderr}") })
    }

    fn kept_log_path(&self) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/qemu-tests").join(format!("{}.log", self.name))
    }

    /// Waits for `basalt: ready` and returns (version, slot).
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<(String, String)> {
        let text = self.wait_for("basalt: ready", timeout)?;
        let _ = text;
        let rest = self.wait_for("\n", Duration::from_secs(5))?;
        let field = |k: &str| rest.split_whitespace().find_map(|w| w.strip_prefix(k)).map(str::to_string).unwrap_or_default();
        Ok((field("version="), field("slot=")))
    }

    /// Runs a shell command on the console shell; returns exit status and output.
    pub fn run(&mut self, command: &str, timeout: Duration) -> Result<(i32, String)> {
        self.next_marker += 1;
        let n = self.next_marker;
        // The quotes keep the markers out of the terminal's echo of the command.
        let line = format!("echo BEGIN\"\"{n}; {command}; echo END\"\"{n}:$?\n");
        self.serial.write_all(line.as_bytes())?;
        self.wait_for(&format!("BEGIN{n}\n"), timeout)?;
        let text = self.wait_for(&format!("END{n}:"), timeout)?;
        let status_line = self.wait_for("\n", Duration::from_secs(5))?;
        let status: i32 = status_line.trim().parse().with_context(|| format!("exit status {status_line:?}"))?;
        let output = text.strip_suffix(&format!("END{n}:")).unwrap_or(&text);
        Ok((status, without_console_noise(output)))
    }

    /// Whether a shell answers on the console: types a command line and
    /// waits up to `wait` for its output or a `# ` prompt after it. The
    /// terminal's echo of the typed line is neither (the quotes keep the
    /// marker out of it), so a console nobody reads from answers nothing.
    /// Consumes nothing of what later waits see.
    pub fn shell_answers(&mut self, wait: Duration) -> Result<bool> {
        self.next_marker += 1;
        let marker = format!("PROBE{}\n", self.next_marker);
        let from = self.console.0.lock().unwrap().bytes.len();
        self.serial.write_all(format!("echo PROBE\"\"{}\n", self.next_marker).as_bytes())?;
        let deadline = Instant::now() + wait;
        let (lock, cond) = &*self.console;
        let mut console = lock.lock().unwrap();
        loop {
            let text = String::from_utf8_lossy(&console.bytes[from..]).into_owned();
            if text.contains(&marker) || text.contains("\n# ") {
                return Ok(true);
            }
            if let Some(p) = FAILURE_PATTERNS.iter().find(|p| text.contains(*p)) {
                bail!("console shows a failure ({p})\n{}", self.log_hint());
            }
            let now = Instant::now();
            if now >= deadline || console.closed {
                return Ok(false);
            }
            console = cond.wait_timeout(console, deadline - now).unwrap().0;
        }
    }

    /// Like `run`, but the command must succeed.
    pub fn run_ok(&mut self, command: &str, timeout: Duration) -> Result<String> {
        let (status, out) = self.run(command, timeout)?;
        if status != 0 {
            bail!("`{command}` exited {status}: {out}");
        }
        Ok(out)
    }

    /// Types a line on the console without waiting for anything.
    pub fn send(&mut self, line: &str) -> Result<()> {
        self.serial.write_all(line.as_bytes())?;
        self.serial.write_all(b"\n")?;
        Ok(())
    }

    fn qmp_handshake(&mut self) -> Result<()> {
        let Some(q) = self.qmp.as_mut() else { bail!("no QMP socket") };
        let mut greeting = String::new();
        q.read_line(&mut greeting)?;
        self.qmp("qmp_capabilities").map(|_| ())
    }

    /// Executes a QMP command and returns its `return` value.
    pub fn qmp(&mut self, command: &str) -> Result<serde_json::Value> {
        let q = self.qmp.as_mut().context("no QMP connection")?;
        q.get_mut().write_all(format!("{{\"execute\":\"{command}\"}}\n").as_bytes())?;
        loop {
            let mut line = String::new();
            if q.read_line(&mut line)? == 0 {
                bail!("QMP closed during {command}");
            }
            let v: serde_json::Value = serde_json::from_str(&line)?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                bail!("QMP {command}: {e}");
            }
            // Asynchronous events (RESET, SHUTDOWN...) come in between; skip them.
        }
    }

    /// A hard reset, like pressing the reset button.
    pub fn reset(&mut self) -> Result<()> {
        self.qmp("system_reset").map(|_| ())
    }

    /// Pulls the plug: QEMU ends at once.
    pub fn power_cut(&mut self) -> Result<()> {
        let _ = self.qmp("quit");
        self.wait_exit(Duration::from_secs(10)).map(|_| ())
    }

    /// Waits for QEMU to exit by itself (the guest powered off).
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("QEMU still running after {timeout:?}\n{}", self.log_hint());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Drops the lines other writers put on the console while a command ran:
/// service output init mirrors (`[NAME.service] ...`), init's own
/// (`basalt: ...`) and kernel messages (`[   12.345678] ...`).
pub fn without_console_noise(text: &str) -> String {
    // A kernel or service log prefix: "[    7.913442] " or "[name.service] ".
    let prefix_at = |l: &str, at: usize| {
        l[at..].starts_with('[')
            && l[at..].find("] ").is_some_and(|end| {
                let inner = &l[at + 1..at + end];
                inner.ends_with(".service") || inner.trim().split('.').all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
            })
    };
    let noise = |l: &str| l.starts_with("basalt: ") || prefix_at(l, 0);
    // A kernel message can also land in the middle of a command's output
    // line (the console is shared): cut it off there, keeping the line's own text.
    let kernel_stamp_at = |l: &str, at: usize| {
        l[at..].starts_with('[')
            && l[at..].find("] ").is_some_and(|end| {
                let parts: Vec<&str> = l[at + 1..at + end].trim().split('.').collect();
                parts.len() == 2 && parts.iter().all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
            })
    };
    let cut = |l: &str| -> String {
        match l.match_indices('[').map(|(at, _)| at).find(|&at| at > 0 && kernel_stamp_at(l, at)) {
            Some(at) => format!("{}{}", &l[..at], if l.ends_with('\n') { "\n" } else { "" }),
            None => l.to_string(),
        }
    };
    let mut out: String = text.split_inclusive('\n').filter(|l| !noise(l)).map(cut).collect();
    if text.ends_with('\n') && !out.ends_with('\n') && !out.is_empty() {
        out.push('\n');
    }
    out
}

fn pump(mut from: UnixStream, sink: Arc<(Mutex<Console>, Condvar)>) {
    let mut buf = [0u8; 4096];
    loop {
        let n = from.read(&mut buf).unwrap_or(0);
        let (lock, cond) = &*sink;
        let mut c = lock.lock().unwrap();
        if n == 0 {
            c.closed = true;
            cond.notify_all();
            return;
        }
        // Serial lines end in CR LF; keeping only LF lets text offsets be byte offsets.
        c.bytes.extend(buf[..n].iter().filter(|&&b| b != b'\r'));
        cond.notify_all();
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let kept = self.kept_log_path();
            let _ = std::fs::create_dir_all(kept.parent().unwrap());
            if std::fs::copy(&self.log_path, &kept).is_ok() {
                eprintln!("serial console of {} kept in {}", self.name, kept.display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn console_noise_is_dropped_and_output_kept() {
        let t = "usr\n[network.service] udhcpc: lease\n[   12.345678] virtio_net up\nbasalt: blessed\n[x] stays\n";
        assert_eq!(super::without_console_noise(t), "usr\n[x] stays\n");
        // A kernel message written into the middle of a command's output line.
        assert_eq!(super::without_console_noise("50000 100000[    7.913442] basalt0: port 1(bs0a580002) entered blocking state\n"), "50000 100000\n");
        assert_eq!(super::without_console_noise("a [1] b\n"), "a [1] b\n", "brackets in output stay");
    }
}
