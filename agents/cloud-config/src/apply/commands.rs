//! `bootcmd` (every boot), `runcmd` and `#!` scripts (once per instance).
//!
//! "Once" is kept in marker files: per-instance ones under
//! /var/lib/basalt/cloud-config/instances/<instance-id>/, per-boot ones under
//! /run/basalt/cloud-config/ (a tmpfs, empty at each boot). A marker is
//! written after the work ran, whether it succeeded or not, so a failing
//! command is not retried on every boot.

use std::process::{Command as Process, Stdio};
use std::time::{Duration, Instant};

use super::root::Root;
use super::Log;
use crate::config::Command;
use crate::validate::Script;

pub const STATE_DIR: &str = "/var/lib/basalt/cloud-config";
pub const BOOT_STATE_DIR: &str = "/run/basalt/cloud-config";

/// Runs programs for cloud-config. The agent runs real processes; tests can
/// record instead.
pub trait CommandRunner {
    /// Runs `argv`; `Err` carries why it failed (exit status, timeout).
    fn run(&mut self, argv: &[String]) -> Result<(), String>;
}

/// Runs each command as a child process sharing the agent's stdout and
/// stderr (so its output lands in the agent's log), with a time limit: a
/// command that hangs must not hold the boot forever.
pub struct ProcessRunner {
    pub timeout: Duration,
}

impl Default for ProcessRunner {
    fn default() -> Self {
        ProcessRunner { timeout: Duration::from_secs(600) }
    }
}

impl CommandRunner for ProcessRunner {
    fn run(&mut self, argv: &[String]) -> Result<(), String> {
        let (program, args) = argv.split_first().ok_or("empty command")?;
        let mut child = Process::new(program).args(args).stdin(Stdio::null()).spawn().map_err(|error| format!("could not start {program}: {error}"))?;
        let started = Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(()),
                Ok(Some(status)) => return Err(format!("exited with {status}")),
                Ok(None) if started.elapsed() > self.timeout => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(format!("killed after {} s", self.timeout.as_secs()));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                Err(error) => return Err(error.to_string()),
            }
        }
    }
}

/// An instance id made safe as one path component.
pub fn instance_dir(instance_id: &str) -> String {
    let safe: String = instance_id.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' }).collect();
    let safe = if safe.is_empty() || safe.starts_with('.') { format!("_{safe}") } else { safe };
    format!("{STATE_DIR}/instances/{safe}")
}

fn argv(command: &Command) -> Vec<String> {
    match command {
        Command::Shell(line) => vec!["/bin/sh".into(), "-c".into(), line.clone()],
        Command::Argv(words) => words.clone(),
    }
}

fn describe(command: &Command) -> String {
    match command {
        Command::Shell(line) => line.clone(),
        Command::Argv(words) => words.join(" "),
    }
}

/// Runs the work behind `marker` unless the marker says it already ran.
fn once(root: &Root, marker: &str, log: &mut Log, work: impl FnOnce(&mut Log)) {
    if root.exists(marker) {
        return;
    }
    work(log);
    log.outcome(String::new(), root.write(marker, b"done\n", 0o644, 0, 0));
}

fn run_all(runner: &mut dyn CommandRunner, key: &str, commands: &[Command], log: &mut Log) {
    for (index, command) in commands.iter().enumerate() {
        match runner.run(&argv(command)) {
            Ok(()) => log.change(format!("ran {key}[{index}]: {}", describe(command))),
            Err(why) => log.fail(format!("{key}[{index}]: {}: {why}", describe(command))),
        }
    }
}

pub fn run_bootcmd(root: &Root, runner: &mut dyn CommandRunner, commands: &[Command], log: &mut Log) {
    if commands.is_empty() {
        return;
    }
    once(root, &format!("{BOOT_STATE_DIR}/bootcmd.done"), log, |log| run_all(runner, "bootcmd", commands, log));
}

pub fn run_per_instance(root: &Root, runner: &mut dyn CommandRunner, instance_id: &str, runcmd: &[Command], scripts: &[Script], log: &mut Log) {
    let dir = instance_dir(instance_id);
    log.outcome(String::new(), root.write(&format!("{STATE_DIR}/instance-id"), format!("{instance_id}\n").as_bytes(), 0o644, 0, 0));
    if !runcmd.is_empty() {
        once(root, &format!("{dir}/runcmd.done"), log, |log| run_all(runner, "runcmd", runcmd, log));
    }
    if !scripts.is_empty() {
        once(root, &format!("{dir}/scripts.done"), log, |log| {
            for (index, script) in scripts.iter().enumerate() {
                let path = format!("{dir}/scripts/{index:02}");
                let name = script.label.clone().unwrap_or_else(|| "user-data script".into());
                if let Err(error) = root.write(&path, script.text.as_bytes(), 0o700, 0, 0) {
                    log.fail(format!("{name}: could not save it to {path}: {error}"));
                    continue;
                }
                match runner.run(&[root.path(&path).to_string_lossy().into_owned()]) {
                    Ok(()) => log.change(format!("ran {name} ({path})")),
                    Err(why) => log.fail(format!("{name} ({path}): {why}")),
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids_become_safe_directory_names() {
        assert_eq!(instance_dir("i-0abc"), format!("{STATE_DIR}/instances/i-0abc"));
        assert_eq!(instance_dir("../x"), format!("{STATE_DIR}/instances/_.._x"));
    }

    #[test]
    fn the_process_runner_reports_exit_status() {
        let mut runner = ProcessRunner::default();
        assert!(runner.run(&["/bin/sh".into(), "-c".into(), "exit 0".into()]).is_ok());
        let error = runner.run(&["/bin/sh".into(), "-c".into(), "exit 3".into()]).unwrap_err();
        assert!(error.contains("exit status: 3"), "{error}");
        assert!(runner.run(&["/nonexistent/program".into()]).unwrap_err().starts_with("could not start"));
    }
}
