//! Stage 2: PID 1 of the booted system. Sets up the basics, hands over to
//! the supervisor (services, control socket, health gate), says the system is
//! ready, offers a console shell on development images, and powers off or
//! reboots cleanly on `basaltctl` or on the signals busybox's
//! `poweroff`/`reboot` send (SIGUSR2/SIGTERM; SIGUSR1 halts = power-off).

use crate::cmdline::param;
use crate::supervisor::{BootInfo, Supervisor};
use crate::{log, sys};
use std::fs;
use std::os::unix::process::CommandExt;
use std::process::Command;

const CONSOLE_SHELL_MARK: &str = "/usr/lib/basalt/console-shell";

pub fn os_release_field(text: &str, key: &str) -> Option<String> {
    text.lines().filter_map(|l| l.split_once('=')).find(|(k, _)| *k == key).map(|(_, v)| v.trim_matches('"').to_string())
}

pub fn run() -> ! {
    let signals = block_signals();
    let os_release = fs::read_to_string("/usr/lib/os-release").unwrap_or_default();
    let version = os_release_field(&os_release, "IMAGE_VERSION").unwrap_or_else(|| "unknown".into());
    let image_id = os_release_field(&os_release, "IMAGE_ID").unwrap_or_else(|| "basalt".into());
    let cmdline = fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let slot = param(&cmdline, "basalt.slot").unwrap_or("?").to_string();
    if let Err(e) = setup_basics() {
        log::error(&format!("setting up the booted system: {e}"));
    }
    crate::setup::run();
    let boot = BootInfo { uki_base: format!("{image_id}_{version}_{}", slot.to_lowercase()), version: version.clone(), slot: slot.clone() };
    let shell = std::path::Path::new(CONSOLE_SHELL_MARK).exists();
    let mut supervisor = Supervisor::new(&signals, boot, shell);
    supervisor.load_units();
    supervisor.start_enabled();
    log::info(&format!("ready version={version} slot={slot}"));
    let how = supervisor.run();
    log::info(match how {
        sys::Halt::Reboot => "rebooting ...",
        sys::Halt::PowerOff => "powering off ...",
    });
    supervisor.stop_all();
    shutdown(how)
}

fn block_signals() -> libc::sigset_t {
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGCHLD, libc::SIGTERM, libc::SIGINT, libc::SIGUSR1, libc::SIGUSR2] {
            libc::sigaddset(&mut set, s);
        }
        libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn setup_basics() -> std::io::Result<()> {
    fs::create_dir_all("/dev/pts")?;
    let _ = sys::mount("devpts", "/dev/pts", "devpts", libc::MS_NOSUID | libc::MS_NOEXEC, "gid=5,mode=620,ptmxmode=666");
    fs::create_dir_all("/dev/shm")?;
    let _ = sys::mount("tmpfs", "/dev/shm", "tmpfs", libc::MS_NOSUID | libc::MS_NODEV, "mode=1777");
    let _ = sys::mount("cgroup2", "/sys/fs/cgroup", "cgroup2", libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC, "");
    Ok(())
}

pub fn spawn_console_shell() -> Option<i32> {
    let mut cmd = Command::new("/usr/bin/sh");
    cmd.arg0("-sh").env_clear().env("PATH", "/usr/bin:/usr/sbin").env("HOME", "/root").env("TERM", "vt100").env("PS1", "# ").current_dir("/root");
    unsafe {
        cmd.pre_exec(|| {
            sys::unblock_all_signals();
            libc::setsid();
            libc::ioctl(0, libc::TIOCSCTTY, 1);
            Ok(())
        });
    }
    match cmd.spawn() {
        Ok(child) => Some(child.id() as i32),
        Err(e) => {
            log::error(&format!("console shell: {e}"));
            None
        }
    }
}

/// After the services stopped: end stray processes, flush, ROOT read-only, end.
fn shutdown(how: sys::Halt) -> ! {
    unsafe { libc::kill(-1, libc::SIGTERM) };
    std::thread::sleep(std::time::Duration::from_millis(500));
    unsafe { libc::kill(-1, libc::SIGKILL) };
    sys::sync();
    // ROOT read-only before the end, so a power-off never needs a journal replay.
    let _ = sys::mount("", "/", "", libc::MS_REMOUNT | libc::MS_RDONLY, "");
    sys::sync();
    sys::halt(how)
}
