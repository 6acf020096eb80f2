//! Stage 2: PID 1 of the booted system. Sets up the basics, hands over to
//! the supervisor (services, control socket, health gate), says the system is
//! ready, offers a console shell where the image and the machine allow it
//! (`console_shell`), and powers off or
//! reboots cleanly on `basaltctl` or on the signals busybox's
//! `poweroff`/`reboot` send (SIGUSR2/SIGTERM; SIGUSR1 halts = power-off).

use crate::cmdline::param;
use crate::supervisor::{BootInfo, Supervisor};
use crate::{log, sys};
use std::fs;
use std::os::unix::process::CommandExt;
use std::process::Command;

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
    let shell = console_shell(&cmdline, std::path::Path::new("/sys"));
    log::info(&shell.1);
    let shell = shell.0;
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
    sys::shutdown(how)
}

/// Whether this boot gets a root shell on the console, and the line that
/// says so: the image's `basalt.console_shell=` (the builder writes it from the
/// spec; absent means never), and for `hypervisor` the fw_cfg entry only a
/// local hypervisor can set (`basalt run` and the end-to-end tests do).
/// Called after coldplug, which loads `qemu_fw_cfg` on QEMU machines.
pub fn console_shell(cmdline: &str, sys: &std::path::Path) -> (bool, String) {
    use basalt_fwcfg::{ConsoleShell, CONSOLE_SHELL_ENTRY, CONSOLE_SHELL_PARAM};
    let Some(setting) = ConsoleShell::from_cmdline(cmdline) else {
        return (false, format!("console shell: off ({CONSOLE_SHELL_PARAM}= absent or unknown)"));
    };
    let on = setting.enabled(sys);
    let why = match (setting, on) {
        (ConsoleShell::Never, _) => "the image never has one".to_string(),
        (ConsoleShell::Always, _) => "the image always has one".to_string(),
        (ConsoleShell::Hypervisor, true) => format!("the hypervisor set fw_cfg {CONSOLE_SHELL_ENTRY}"),
        (ConsoleShell::Hypervisor, false) => format!("only when the hypervisor sets fw_cfg {CONSOLE_SHELL_ENTRY}=1"),
    };
    (on, format!("console shell: {} ({CONSOLE_SHELL_PARAM}={setting}: {why})", if on { "on" } else { "off" }))
}

fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data (zeroed is valid, and sigemptyset
    // initialises it anyway); the calls only read and write `set`, which lives
    // on this stack for their duration.
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
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe calls (sigprocmask, setsid, ioctl); it allocates nothing
    // and touches no locks.
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

#[cfg(test)]
mod tests {
    use super::console_shell;

    #[test]
    fn the_console_shell_follows_the_cmdline_and_for_hypervisor_fw_cfg() {
        let sys = tempfile::tempdir().unwrap();
        let (on, line) = console_shell("console=ttyS0 panic=10", sys.path());
        assert!(!on && line.contains("absent"), "{line}");
        assert!(!console_shell("basalt.console_shell=true", sys.path()).0);
        assert!(!console_shell("basalt.console_shell=never", sys.path()).0);
        assert!(console_shell("basalt.console_shell=always", sys.path()).0);
        let (on, line) = console_shell("basalt.console_shell=hypervisor", sys.path());
        assert!(!on && line.contains("only when the hypervisor sets fw_cfg opt/org.basalt/console-shell=1"), "{line}");
        let entry = basalt_fwcfg::entry_path(sys.path(), basalt_fwcfg::CONSOLE_SHELL_ENTRY);
        std::fs::create_dir_all(entry.parent().unwrap()).unwrap();
        std::fs::write(&entry, "1").unwrap();
        let (on, line) = console_shell("basalt.console_shell=hypervisor", sys.path());
        assert!(on && line.starts_with("console shell: on"), "{line}");
        assert!(!console_shell("basalt.console_shell=never", sys.path()).0);
    }
}
