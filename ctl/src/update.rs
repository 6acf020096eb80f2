//! `basaltctl update status|check|apply|rollback`: the update agent's verbs.

use basalt_update::protocol::{call, format_bytes, Request, Response};
use std::time::Duration;

pub const USAGE: &str = "  update status       version, channel, stage, progress, staged and rolled-back versions
  update check        ask the repository now; changes nothing
  update apply [--allow-downgrade] [--no-wait]
                      install what the channel offers now, then reboot as configured
  update rollback [--no-reboot]
                      boot the other slot (the previous version) on purpose";

fn answer(r: Response) -> Result<Response, String> {
    if r.ok {
        Ok(r)
    } else {
        Err(r.message)
    }
}

pub fn run(args: &[&str]) -> Result<(), String> {
    match args {
        ["status"] => {
            let r = answer(call(&Request::Status, Duration::from_secs(10))?)?;
            print!("{}", r.status.unwrap_or_default().render());
            Ok(())
        }
        ["check"] => {
            let r = answer(call(&Request::Check, Duration::from_secs(120))?)?;
            println!("{}", r.message);
            Ok(())
        }
        ["apply", flags @ ..] => {
            let allow_downgrade = flags.contains(&"--allow-downgrade");
            let wait = !flags.contains(&"--no-wait");
            if let Some(bad) = flags.iter().find(|f| !["--allow-downgrade", "--no-wait"].contains(f)) {
                return Err(format!("unknown option {bad}\n{USAGE}"));
            }
            let r = answer(call(&Request::Apply { allow_downgrade }, Duration::from_secs(120))?)?;
            println!("{}", r.message);
            if wait && r.message.starts_with("installing") {
                follow()
            } else {
                Ok(())
            }
        }
        ["rollback", flags @ ..] => {
            let no_reboot = flags.contains(&"--no-reboot");
            if let Some(bad) = flags.iter().find(|f| **f != "--no-reboot") {
                return Err(format!("unknown option {bad}\n{USAGE}"));
            }
            let r = answer(call(&Request::Rollback { no_reboot }, Duration::from_secs(60))?)?;
            println!("{}", r.message);
            Ok(())
        }
        _ => Err(format!("usage:\n{USAGE}")),
    }
}

/// Prints progress until the update is staged, rebooting or failed.
fn follow() -> Result<(), String> {
    let mut last = String::new();
    loop {
        std::thread::sleep(Duration::from_millis(1000));
        let Ok(r) = call(&Request::Status, Duration::from_secs(10)) else {
            // The agent goes away when the machine reboots.
            println!("the update agent stopped (rebooting?)");
            return Ok(());
        };
        let s = r.status.unwrap_or_default();
        let line = match &s.progress {
            Some(p) if s.stage == "downloading" || s.stage == "verifying" => format!("{}: {} of {}, {:.1} MiB/s", p.stage, format_bytes(p.done), format_bytes(p.total), p.rate / 1048576.0),
            _ => s.stage.clone(),
        };
        if line != last {
            println!("{line}");
            last = line;
        }
        match s.stage.as_str() {
            "failed" => return Err(s.last_result),
            "staged" | "rebooting" | "waiting-for-window" | "waiting-for-lock" | "idle" => {
                println!("{}", s.last_result);
                return Ok(());
            }
            _ => {}
        }
    }
}
