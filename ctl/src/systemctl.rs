//! `systemctl`: the verbs CoreOS users type, over init's control protocol
//! and the unit file layout, with systemctl's exit codes (0 yes/ok, 1
//! failed or no, 3 not active, 4 no such unit, 5 not found on start).

use basalt_control::{call, Request, Status, UnitStatus, LOG_DIR};
use basalt_unit::install::{self, ETC_UNITS};
use std::path::{Path, PathBuf};

pub const USAGE: &str = "systemctl (basaltctl as systemctl):
  systemctl start|stop|restart|reload|try-restart|reload-or-restart NAME...
  systemctl status [NAME...]      state, main PID and the last log lines
  systemctl is-active|is-failed|is-enabled NAME...
  systemctl enable|disable [--now] NAME...
  systemctl list-units | list-timers | daemon-reload
  systemctl cat NAME...
  systemctl show [-p PROP[,PROP]] [--value] NAME";

/// systemd's ActiveState and SubState for one of init's unit states.
pub fn states(state: &str) -> (&'static str, &'static str) {
    match state {
        "active" => ("active", "running"),
        "exited" => ("active", "exited"),
        "activating" | "queued" => ("activating", "start"),
        "auto-restart" => ("activating", "auto-restart"),
        "stopping" => ("deactivating", "stop"),
        "failed" => ("failed", "failed"),
        _ => ("inactive", "dead"),
    }
}

fn root() -> &'static Path {
    Path::new("/")
}

fn unit_status() -> Result<Status, String> {
    let answer = call(&Request::Status).map_err(|e| e.to_string())?;
    Status::decode(&answer).map_err(|e| e.to_string())
}

fn find<'a>(status: &'a Status, name: &str) -> Option<&'a UnitStatus> {
    status.units.iter().find(|u| u.name == name)
}

/// `Description=` of a unit file, if it has one.
fn description(path: &Path) -> String {
    let text = std::fs::read_to_string(root().join(path.strip_prefix("/").unwrap_or(path))).unwrap_or_default();
    text.lines().find_map(|l| l.trim().strip_prefix("Description=")).unwrap_or_default().trim().to_string()
}

/// systemctl's is-enabled word for a unit: enabled, static, disabled,
/// masked; None when there is no such unit file.
pub fn enablement(name: &str) -> Option<&'static str> {
    let path = install::unit_file(root(), name)?;
    if install::is_mask(root(), &path) {
        return Some("masked");
    }
    if !install::enablement_links(root(), name).is_empty() {
        return Some("enabled");
    }
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    let has_install = !install::install_targets(&text).is_empty();
    // Built-in units are enabled by their [Install] section (init's rule).
    Some(match (has_install, path.starts_with(install::UNIT_DIRS[0])) {
        (false, _) => "static",
        (true, true) => "enabled",
        (true, false) => "disabled",
    })
}

/// Runs `systemctl ARGS…`; returns the exit status.
pub fn run(args: &[&str]) -> i32 {
    let names = |rest: &[&str]| rest.iter().filter(|a| !a.starts_with('-')).map(|n| crate::unit_name(n)).collect::<Vec<_>>();
    match args {
        [verb @ ("start" | "stop" | "restart" | "reload" | "try-restart" | "reload-or-restart" | "reload-or-try-restart"), rest @ ..] if !rest.is_empty() => {
            let mut code = 0;
            for name in names(rest) {
                let req = match *verb {
                    "start" => Request::Start(name.clone()),
                    "stop" => Request::Stop(name.clone()),
                    "restart" => Request::Restart(name.clone()),
                    "reload" => Request::ReloadUnit(name.clone()),
                    "try-restart" => Request::TryRestart(name.clone()),
                    "reload-or-restart" => Request::ReloadOrRestart(name.clone()),
                    _ => Request::ReloadOrTryRestart(name.clone()),
                };
                if let Err(e) = call(&req) {
                    let e = e.to_string();
                    if e.contains("no such unit") {
                        eprintln!("Failed to {verb} {name}: Unit {name} not found.");
                        code = 5;
                    } else {
                        eprintln!("Failed to {verb} {name}: {e}");
                        code = code.max(1);
                    }
                }
            }
            code
        }
        ["daemon-reload"] => answer(call(&Request::Reload).map(|_| ())),
        ["is-active" | "is-failed", rest @ ..] if !rest.is_empty() => {
            let Ok(status) = unit_status().map_err(|e| eprintln!("{e}")) else { return 1 };
            let want_failed = args[0] == "is-failed";
            let mut yes = false;
            for name in names(rest) {
                let active = find(&status, &name).map_or("inactive", |u| states(&u.state).0);
                println!("{active}");
                yes |= if want_failed { active == "failed" } else { active == "active" };
            }
            match (yes, want_failed) {
                (true, _) => 0,
                (false, true) => 1,
                (false, false) => 3,
            }
        }
        ["is-enabled", rest @ ..] if !rest.is_empty() => {
            let mut code = 1;
            for name in names(rest) {
                match enablement(&name) {
                    Some(word) => {
                        println!("{word}");
                        if matches!(word, "enabled" | "static") {
                            code = 0;
                        }
                    }
                    None => eprintln!("Failed to get unit file state for {name}: No such file or directory"),
                }
            }
            code
        }
        ["enable" | "disable", rest @ ..] if !rest.is_empty() => {
            let now = rest.contains(&"--now");
            let mut code = 0;
            for name in names(rest) {
                let done = if args[0] == "enable" { enable(&name) } else { disable(&name) };
                if let Err(e) = done {
                    eprintln!("Failed to {} {name}: {e}", args[0]);
                    code = 1;
                    continue;
                }
                if now {
                    let req = if args[0] == "enable" { Request::Start(name.clone()) } else { Request::Stop(name.clone()) };
                    if let Err(e) = call(&req) {
                        eprintln!("Failed to {} {name}: {e}", if args[0] == "enable" { "start" } else { "stop" });
                        code = 1;
                    }
                }
            }
            code
        }
        ["status"] => {
            let Ok(status) = unit_status().map_err(|e| eprintln!("{e}")) else { return 1 };
            let failed = status.units.iter().filter(|u| u.state == "failed").count();
            println!(
                "● basalt {} (slot {})\n    State: {}\n   Health: {}\n    Units: {} loaded, {failed} failed",
                status.version,
                status.slot,
                if failed == 0 { "running" } else { "degraded" },
                status.health,
                status.units.len()
            );
            0
        }
        ["status", rest @ ..] => {
            let Ok(status) = unit_status().map_err(|e| eprintln!("{e}")) else { return 1 };
            let mut code = 0;
            for (i, name) in names(rest).iter().enumerate() {
                if i > 0 {
                    println!();
                }
                code = code.max(show_status(&status, name));
            }
            code
        }
        ["list-units", ..] => {
            let Ok(status) = unit_status().map_err(|e| eprintln!("{e}")) else { return 1 };
            println!("{:<40} {:<6} {:<12} {:<12} DESCRIPTION", "UNIT", "LOAD", "ACTIVE", "SUB");
            for u in &status.units {
                let (active, sub) = states(&u.state);
                let description = install::unit_file(root(), &u.name).map(|p| description(&p)).unwrap_or_default();
                println!("{:<40} {:<6} {active:<12} {sub:<12} {description}", u.name, "loaded");
            }
            println!("\n{} loaded units listed.", status.units.len());
            0
        }
        ["list-timers", ..] => {
            let Ok(status) = unit_status().map_err(|e| eprintln!("{e}")) else { return 1 };
            println!("{:<32} {:<12} {:<32} NEXT", "UNIT", "ACTIVE", "ACTIVATES");
            let timers: Vec<&UnitStatus> = status.units.iter().filter(|u| u.name.ends_with(".timer")).collect();
            for u in &timers {
                let stem = u.name.trim_end_matches(".timer");
                let path = install::unit_file(root(), &u.name);
                let text = path.map(|p| std::fs::read_to_string(p).unwrap_or_default()).unwrap_or_default();
                let activates = text.lines().find_map(|l| l.trim().strip_prefix("Unit=")).map(str::to_string).unwrap_or_else(|| format!("{stem}.service"));
                println!("{:<32} {:<12} {activates:<32} {}", u.name, states(&u.state).0, u.detail);
            }
            println!("\n{} timers listed.", timers.len());
            0
        }
        ["cat", rest @ ..] if !rest.is_empty() => {
            let mut code = 0;
            for name in names(rest) {
                match cat(&name) {
                    Ok(text) => print!("{text}"),
                    Err(e) => {
                        eprintln!("{e}");
                        code = 1;
                    }
                }
            }
            code
        }
        ["show", rest @ ..] => {
            let mut props: Vec<String> = Vec::new();
            let mut value_only = false;
            let mut unit = None;
            let mut it = rest.iter();
            while let Some(a) = it.next() {
                match *a {
                    "-p" | "--property" => props.extend(it.next().map(|p| p.split(',').map(str::to_string).collect::<Vec<_>>()).unwrap_or_default()),
                    "--value" => value_only = true,
                    a if a.starts_with("--property=") => props.extend(a["--property=".len()..].split(',').map(str::to_string)),
                    a if a.starts_with('-') => {
                        eprintln!("systemctl show: unknown option {a}");
                        return 1;
                    }
                    a => unit = Some(crate::unit_name(a)),
                }
            }
            let Some(name) = unit else {
                eprintln!("systemctl show: which unit? (systemctl show [-p PROP] NAME)");
                return 1;
            };
            let Ok(status) = unit_status().map_err(|e| eprintln!("{e}")) else { return 1 };
            for (k, v) in properties(&status, &name) {
                if props.is_empty() || props.iter().any(|p| p == k) {
                    if value_only {
                        println!("{v}");
                    } else {
                        println!("{k}={v}");
                    }
                }
            }
            0
        }
        _ => {
            eprintln!("{USAGE}");
            1
        }
    }
}

fn answer(r: Result<(), basalt_control::ControlError>) -> i32 {
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

/// The properties `systemctl show` gives, in systemd's names.
pub fn properties(status: &Status, name: &str) -> Vec<(&'static str, String)> {
    let unit = find(status, name);
    let path = install::unit_file(root(), name);
    let (active, sub) = unit.map_or(("inactive", "dead"), |u| states(&u.state));
    vec![
        ("Id", name.to_string()),
        ("Description", path.as_deref().map(description).unwrap_or_default()),
        (
            "LoadState",
            if unit.is_some() {
                "loaded"
            } else if path.is_some() {
                "not-loaded"
            } else {
                "not-found"
            }
            .to_string(),
        ),
        ("ActiveState", active.to_string()),
        ("SubState", sub.to_string()),
        ("MainPID", unit.and_then(|u| u.pid).unwrap_or(0).to_string()),
        ("NRestarts", unit.map_or(0, |u| u.restarts).to_string()),
        ("FragmentPath", path.map(|p| p.display().to_string()).unwrap_or_default()),
        ("UnitFileState", enablement(name).unwrap_or("").to_string()),
        ("StatusText", unit.map(|u| u.detail.clone()).unwrap_or_default()),
    ]
}

/// `systemctl status NAME`: its state, then its last 10 log lines.
fn show_status(status: &Status, name: &str) -> i32 {
    let Some(path) = install::unit_file(root(), name) else {
        eprintln!("Unit {name} could not be found.");
        return 4;
    };
    let unit = find(status, name);
    let (active, sub) = unit.map_or(("inactive", "dead"), |u| states(&u.state));
    let dot = match active {
        "active" => "●",
        "failed" => "×",
        _ => "○",
    };
    let desc = description(&path);
    println!("{dot} {name}{}", if desc.is_empty() { String::new() } else { format!(" - {desc}") });
    println!("     Loaded: {} ({}; {})", if unit.is_some() { "loaded" } else { "not-loaded" }, path.display(), enablement(name).unwrap_or("disabled"));
    let detail = unit.map(|u| u.detail.as_str()).filter(|d| !d.is_empty()).map(|d| format!("; {d}")).unwrap_or_default();
    println!("     Active: {active} ({sub}){detail}");
    if let Some(pid) = unit.and_then(|u| u.pid) {
        println!("   Main PID: {pid}");
    }
    if let Some(u) = unit.filter(|u| u.restarts > 0) {
        println!("   Restarts: {}", u.restarts);
    }
    let log = std::fs::read_to_string(PathBuf::from(LOG_DIR).join(format!("{name}.log"))).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    if !lines.is_empty() {
        println!();
        for l in &lines[lines.len().saturating_sub(10)..] {
            println!("{l}");
        }
    }
    if active == "active" {
        0
    } else {
        3
    }
}

/// `systemctl cat NAME`: the unit file and its drop-ins, each after a
/// `# PATH` line.
fn cat(name: &str) -> Result<String, String> {
    let path = install::unit_file(root(), name).ok_or_else(|| format!("No files found for {name}."))?;
    let mut out = format!("# {}\n{}", path.display(), std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?);
    let template = basalt_unit::name::template_of(name);
    for dir in install::UNIT_DIRS {
        for unit in template.iter().chain(std::iter::once(&name.to_string())) {
            let d = Path::new(dir).join(format!("{unit}.d"));
            let Ok(entries) = std::fs::read_dir(&d) else { continue };
            let mut files: Vec<PathBuf> = entries.flatten().map(|e| e.path()).filter(|p| p.extension().is_some_and(|x| x == "conf")).collect();
            files.sort();
            for f in files {
                out.push_str(&format!("\n# {}\n{}", f.display(), std::fs::read_to_string(&f).unwrap_or_default()));
            }
        }
    }
    Ok(out)
}

/// Links unit `name` into its `[Install]` targets in /etc, as systemctl
/// enable does, saying what it made.
fn enable(name: &str) -> Result<(), String> {
    let path = install::unit_file(root(), name).ok_or_else(|| format!("Unit file {name} does not exist."))?;
    if install::is_mask(root(), &path) {
        return Err(format!("Unit file {name} is masked."));
    }
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let targets = install::install_targets(&text);
    if targets.is_empty() {
        println!("The unit files have no installation config (WantedBy=, RequiredBy=); {name} is static and is not enabled.");
        return Ok(());
    }
    for (kind, target) in targets {
        let dir = Path::new(ETC_UNITS).join(format!("{target}.{kind}"));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let link = dir.join(name);
        if std::fs::read_link(&link).is_ok_and(|t| t == path) {
            continue;
        }
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&path, &link).map_err(|e| format!("{}: {e}", link.display()))?;
        println!("Created symlink {} → {}.", link.display(), path.display());
    }
    Ok(())
}

/// Removes unit `name`'s enablement links in /etc, as systemctl disable does.
fn disable(name: &str) -> Result<(), String> {
    for link in install::enablement_links(root(), name).into_iter().filter(|l| l.starts_with(ETC_UNITS)) {
        std::fs::remove_file(&link).map_err(|e| format!("{}: {e}", link.display()))?;
        println!("Removed \"{}\".", link.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_states_are_systemds_active_and_sub_states() {
        assert_eq!(states("active"), ("active", "running"));
        assert_eq!(states("exited"), ("active", "exited"));
        assert_eq!(states("auto-restart"), ("activating", "auto-restart"));
        assert_eq!(states("stopping"), ("deactivating", "stop"));
        assert_eq!(states("failed"), ("failed", "failed"));
        assert_eq!(states("inactive"), ("inactive", "dead"));
    }
}
