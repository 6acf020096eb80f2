//! `basaltctl config`: cloud-config on the machine.
//!
//!   config validate FILE   each problem as FILE:LINE:COLUMN: error|warning: KEY: reason
//!   config show [--json]   what this boot's cloud-config run found, rejected, applied
//!
//! `validate` uses the agent's own checks (the cloud-config library), so it
//! says exactly what the agent would reject; `show` prints the status the
//! agent kept in /run/basalt/cloud-config/status.json in the words of its log.

use basalt_cloud_config::status::{Status, STATUS_FILE};

pub const USAGE: &str = "  config validate FILE check user data: line and column of each problem
  config show [--json] what cloud-config found, rejected and applied this boot";

pub fn run(args: &[&str]) -> Result<(), String> {
    match args {
        ["validate", file] => validate(file),
        ["show"] => show(false),
        ["show", "--json"] => show(true),
        _ => Err(format!("usage:\n{USAGE}")),
    }
}

fn validate(file: &str) -> Result<(), String> {
    let bytes = std::fs::read(file).map_err(|e| format!("{file}: {e}"))?;
    let report = basalt_cloud_config::validate(&bytes);
    print!("{}", report.render(file));
    if report.has_errors() {
        std::process::exit(1);
    }
    Ok(())
}

fn show(json: bool) -> Result<(), String> {
    let text = match std::fs::read_to_string(STATUS_FILE) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(format!("cloud-config has not run this boot ({STATUS_FILE} does not exist)")),
        Err(e) => return Err(format!("{STATUS_FILE}: {e}")),
    };
    if json {
        print!("{text}");
        return Ok(());
    }
    let status: Status = serde_json::from_str(&text).map_err(|e| format!("{STATUS_FILE}: {e}"))?;
    for line in status.lines() {
        println!("{line}");
    }
    Ok(())
}
