//! A panic anywhere in PID 1. Release builds abort on panic (`panic =
//! "abort"`), and PID 1 dying is a kernel panic ("Attempted to kill init"),
//! so the hook installed first thing in `main` never returns: it logs the
//! message and where it happened, then shuts the machine down cleanly and
//! reboots (the boot counter and the health gate take it from there).
//!
//! With the `panic-trigger` feature (tests only: no image spec or Makefile
//! target enables it) init panics on purpose when its environment has
//! `BASALT_PANIC_TEST=1`. The kernel puts a `name=value` word of its command
//! line without a dot into init's environment, so `BASALT_PANIC_TEST=1` on
//! the command line triggers it in a VM, and stage 2 inherits it.

use crate::{log, sys};
use std::fmt::Write;

/// Enough for a message and a location; longer messages are cut.
const LINE_MAX: usize = 1024;

/// A line on the stack: the hook formats into it without allocating.
struct StackLine {
    buf: [u8; LINE_MAX],
    len: usize,
}

impl Write for StackLine {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        // Keep room for the newline; cut silently rather than fail the write.
        let room = LINE_MAX - 1 - self.len;
        let take = s.len().min(room);
        self.buf[self.len..self.len + take].copy_from_slice(&s.as_bytes()[..take]);
        self.len += take;
        Ok(())
    }
}

/// The console line a panic is reported with.
fn panic_line(out: &mut StackLine, message: Option<&str>, location: Option<&std::panic::Location<'_>>) {
    let _ = out.write_str("basalt: error: init panicked: ");
    let _ = out.write_str(message.unwrap_or("(no message)"));
    if let Some(at) = location {
        let _ = write!(out, " at {}:{}:{}", at.file(), at.line(), at.column());
    }
    out.buf[out.len] = b'\n';
    out.len += 1;
}

pub fn install_hook() {
    std::panic::set_hook(Box::new(|info| {
        let mut line = StackLine { buf: [0; LINE_MAX], len: 0 };
        panic_line(&mut line, info.payload_as_str(), info.location());
        log::emergency(&line.buf[..line.len]);
        if sys::is_pid1() {
            log::emergency(b"basalt: rebooting after the panic ...\n");
            sys::shutdown(sys::Halt::Reboot);
        }
        // Not PID 1 (someone ran init by hand): the abort that follows is fine.
    }));
}

/// Panics when a test asked for it (only built with the `panic-trigger`
/// feature), while another thread holds stdout's lock forever: a hook that
/// logged through that lock would hang PID 1 instead of rebooting.
#[cfg(feature = "panic-trigger")]
pub fn trigger_if_asked(stage: &str) {
    if std::env::var("BASALT_PANIC_TEST").as_deref() != Ok("1") {
        return;
    }
    let (locked, is_locked) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _held = std::io::stdout().lock();
        let _ = locked.send(());
        loop {
            std::thread::park();
        }
    });
    let _ = is_locked.recv();
    panic!("panic test trigger in {stage} (BASALT_PANIC_TEST=1)");
}

#[cfg(not(feature = "panic-trigger"))]
pub fn trigger_if_asked(_stage: &str) {}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(message: Option<&str>) -> String {
        let mut out = StackLine { buf: [0; LINE_MAX], len: 0 };
        panic_line(&mut out, message, Some(std::panic::Location::caller()));
        String::from_utf8(out.buf[..out.len].to_vec()).unwrap()
    }

    #[test]
    fn a_panic_line_names_the_message_and_where() {
        let l = line(Some("index out of bounds"));
        assert!(l.starts_with("basalt: error: init panicked: index out of bounds at initramfs/src/panic.rs:"), "{l}");
        assert!(l.ends_with('\n') && l.matches('\n').count() == 1, "{l}");
        assert!(line(None).contains("(no message)"));
    }

    #[test]
    fn a_long_message_is_cut_to_one_line() {
        let l = line(Some(&"x".repeat(5000)));
        assert_eq!(l.len(), LINE_MAX);
        assert!(l.ends_with('\n'));
    }
}
