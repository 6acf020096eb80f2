//! basaltctl: status, logs and control of a booted basalt machine. It talks
//! to init over its control socket and reads service logs from
//! /var/log/basalt. Later agents add their own verbs here.

mod config;
mod runtime;
mod store;
mod systemctl;
mod update;

use basalt_control::{call, Request, Status, LOG_DIR};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::time::Duration;

const USAGE: &str = "usage: basaltctl <command>
  status              version, slot, boot counter, blessing, services
  logs NAME [-f]      a service's output (-f: keep following)
  start|stop|restart NAME
  reload NAME         run a unit's ExecReload=
  try-restart|reload-or-restart|reload-or-try-restart NAME
  reload              re-read unit files, start newly enabled units
  reboot | poweroff
  notify [--ready] [--status=TEXT] [--pid=PID] [KEY=VALUE...]
                      tell init about this service (sd_notify(3)); also
                      installed as systemd-notify
  config validate FILE check user data: line and column of each problem
  config show [--json] what cloud-config found, rejected and applied this boot
  store ...           the node's key/value store:";

fn main() {
    let mut args: Vec<String> = std::env::args().collect();
    // Called as systemd-notify: `basaltctl notify`.
    let called = args.first().map(|a| a.rsplit('/').next().unwrap_or(a).to_string()).unwrap_or_default();
    args.remove(0);
    if called == "systemd-notify" {
        args.insert(0, "notify".into());
    }
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    if called == "systemctl" {
        std::process::exit(systemctl::run(&words));
    }
    let result = match words.as_slice() {
        ["notify", rest @ ..] => notify(rest),
        ["status"] => status(),
        ["logs", name] if runtime::is_container(name) => follow(runtime::log_paths(name), name, false),
        ["logs", name, "-f"] | ["logs", "-f", name] if runtime::is_container(name) => follow(runtime::log_paths(name), name, true),
        ["logs", name] => logs(name, false),
        ["logs", name, "-f"] | ["logs", "-f", name] => logs(name, true),
        ["start", n] if runtime::is_container(n) => runtime::start(n),
        ["stop", n] if runtime::is_container(n) => runtime::stop(n),
        ["start", n] => simple(Request::Start(unit_name(n))),
        ["stop", n] => simple(Request::Stop(unit_name(n))),
        ["images", rest @ ..] => runtime::images(rest),
        ["run", rest @ ..] => runtime::run(rest),
        ["ps"] => runtime::ps(),
        ["inspect", name] => runtime::inspect(name),
        ["exec", rest @ ..] => runtime::exec(rest),
        ["rm", rest @ ..] => runtime::rm(rest),
        ["restart", n] => simple(Request::Restart(unit_name(n))),
        ["reload"] => simple(Request::Reload),
        ["reload", n] => simple(Request::ReloadUnit(unit_name(n))),
        ["try-restart", n] => simple(Request::TryRestart(unit_name(n))),
        ["reload-or-restart", n] => simple(Request::ReloadOrRestart(unit_name(n))),
        ["reload-or-try-restart", n] => simple(Request::ReloadOrTryRestart(unit_name(n))),
        ["reboot"] => simple(Request::Reboot),
        ["poweroff"] => simple(Request::PowerOff),
        ["config", rest @ ..] => config::run(rest),
        ["store", rest @ ..] => store::run(rest),
        ["update", rest @ ..] => update::run(rest),
        ["-h" | "--help" | "help"] => {
            println!("{USAGE}\n{}\n{}\n{}\n{}", store::USAGE, runtime::USAGE, update::USAGE, systemctl::USAGE);
            Ok(())
        }
        _ => {
            eprintln!("{USAGE}\n{}\n{}\n{}", store::USAGE, runtime::USAGE, update::USAGE);
            std::process::exit(2);
        }
    };
    if let Err(e) = result {
        eprintln!("basaltctl: {e}");
        std::process::exit(1);
    }
}

/// `notify --ready --status=TEXT KEY=VALUE…`, as systemd-notify(1) takes
/// them, sent to $NOTIFY_SOCKET as one message.
fn notify(args: &[&str]) -> Result<(), String> {
    let mut lines = Vec::new();
    for a in args {
        match *a {
            "--ready" => lines.push("READY=1".to_string()),
            "--reloading" => lines.push("RELOADING=1".into()),
            "--stopping" => lines.push("STOPPING=1".into()),
            "--booted" => return if std::path::Path::new(basalt_control::SOCKET).exists() { Ok(()) } else { Err("not booted by basalt's init".into()) },
            _ if a.starts_with("--status=") => lines.push(format!("STATUS={}", &a["--status=".len()..])),
            _ if a.starts_with("--pid=") => {
                let pid = &a["--pid=".len()..];
                let pid = if pid == "parent" { std::os::unix::process::parent_id().to_string() } else { pid.to_string() };
                if pid.parse::<u32>().is_err() {
                    return Err(format!("--pid={pid}: expected a PID or parent"));
                }
                lines.push(format!("MAINPID={pid}"));
            }
            _ if a.starts_with("--") => return Err(format!("notify: unknown option {a}")),
            _ if a.contains('=') && !a.contains('\n') => lines.push(a.to_string()),
            _ => return Err(format!("notify: {a:?} is not KEY=VALUE")),
        }
    }
    if lines.is_empty() {
        return Err("notify: nothing to send (--ready, --status=TEXT or KEY=VALUE)".into());
    }
    basalt_control::notify(&lines.join("\n"))?;
    // init tells whose message this is from the sender's cgroup, which it
    // can only read while the sender lives: stay a moment (systemd-notify
    // waits on a BARRIER=1 for the same reason).
    std::thread::sleep(std::time::Duration::from_millis(500));
    Ok(())
}

/// `sshd` means `sshd.service`, as with systemctl.
fn unit_name(n: &str) -> String {
    if n.contains('.') {
        n.to_string()
    } else {
        format!("{n}.service")
    }
}

fn simple(req: Request) -> Result<(), String> {
    call(&req).map(|_| ()).map_err(|e| e.to_string())
}

fn status() -> Result<(), String> {
    let answer = call(&Request::Status).map_err(|e| e.to_string())?;
    let s = Status::decode(&answer).map_err(|e| e.to_string())?;
    println!("version:    {}", s.version);
    println!("slot:       {}", s.slot);
    println!("tries left: {}", s.tries_left.map(|t| t.to_string()).unwrap_or_else(|| "- (no boot counter)".into()));
    println!("blessed:    {}", if s.blessed { "yes" } else { "no" });
    println!("health:     {}", s.health);
    println!();
    println!("{:<32} {:<13} {:>7} {:>8}  DETAIL", "UNIT", "STATE", "PID", "RESTARTS");
    for u in &s.units {
        println!("{:<32} {:<13} {:>7} {:>8}  {}", u.name, u.state, u.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()), u.restarts, u.detail);
    }
    Ok(())
}

fn logs(name: &str, follow_on: bool) -> Result<(), String> {
    let unit = unit_name(name);
    let path = PathBuf::from(LOG_DIR).join(format!("{unit}.log"));
    let rotated = PathBuf::from(LOG_DIR).join(format!("{unit}.log.1"));
    follow((path, rotated), &unit, follow_on)
}

/// Prints a log and its rotated predecessor; with `follow`, keeps printing.
fn follow((path, rotated): (PathBuf, PathBuf), unit: &str, follow: bool) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    if let Ok(old) = std::fs::read(&rotated) {
        let _ = out.write_all(&old);
    }
    let mut f = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !follow => return Err(format!("no logs for {unit} ({} does not exist)", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => loop {
            std::thread::sleep(Duration::from_millis(200));
            if let Ok(f) = std::fs::File::open(&path) {
                break f;
            }
        },
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).map_err(|e| e.to_string())?;
    out.write_all(&buf).map_err(|e| e.to_string())?;
    out.flush().ok();
    if !follow {
        return Ok(());
    }
    let mut pos = buf.len() as u64;
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        if len < pos {
            // Rotated: start over with the new file.
            f = std::fs::File::open(&path).map_err(|e| e.to_string())?;
            pos = 0;
        }
        f.seek(SeekFrom::Start(pos)).map_err(|e| e.to_string())?;
        let mut chunk = Vec::new();
        f.read_to_end(&mut chunk).map_err(|e| e.to_string())?;
        pos += chunk.len() as u64;
        if out.write_all(&chunk).and_then(|_| out.flush()).is_err() {
            return Ok(());
        }
    }
}
