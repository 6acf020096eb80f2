//! init: PID 1 of basalt. Run by the kernel from the initramfs it is stage 1
//! (modules, dm-verity /usr, ROOT, switch_root); exec'd from /usr with
//! `--stage2` it is the booted system's PID 1.

mod activation;
mod bless;
mod blockdev;
mod cmdline;
mod dm;
mod grow;
mod log;
mod logs;
mod modprobe;
mod notify;
mod panic;
mod setup;
mod spawn;
mod stage1;
mod stage2;
mod supervisor;
mod sys;

use std::time::Duration;

/// How long a failed boot shows its error before rebooting (and, through
/// boot counting, eventually falling back to the other slot).
const FAILURE_REBOOT_DELAY: Duration = Duration::from_secs(10);

fn main() {
    // First of all: a panic in PID 1 must end in a clean reboot, not a kernel panic.
    panic::install_hook();
    let stage2 = std::env::args().nth(1).as_deref() == Some("--stage2");
    if !sys::is_pid1() {
        eprintln!("init: must run as PID 1 (the kernel starts it)");
        std::process::exit(2);
    }
    panic::trigger_if_asked(if stage2 { "stage 2" } else { "stage 1" });
    if stage2 {
        stage2::run();
    }
    if let Err(e) = stage1::run() {
        log::error(&e);
        log::info(&format!("boot failed; rebooting in {} s", FAILURE_REBOOT_DELAY.as_secs()));
        std::thread::sleep(FAILURE_REBOOT_DELAY);
        sys::sync();
        sys::halt(sys::Halt::Reboot);
    }
}
