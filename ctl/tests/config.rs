//! `basaltctl config validate FILE` on the machine: the agent's own checks,
//! each problem with its line and column, exit 1 when something would be
//! rejected. (`config show` is checked on booted machines, in
//! qemu-tests/tests/cloud_config.rs.)

use std::process::Command;

fn basaltctl(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_basaltctl")).args(args).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn validate_prints_line_and_column_of_each_problem() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("u.yml");
    std::fs::write(&file, "#cloud-config\nusers: alice\ncolour: blue\nhostname: \"unterminated\n").unwrap();
    let path = file.to_str().unwrap();
    let (code, stdout, _) = basaltctl(&["config", "validate", path]);
    assert_eq!(
        stdout,
        format!(
            "{path}:4:11: error: user-data: YAML syntax error: while scanning a quoted scalar, found unexpected end of stream; none of this document was applied\n{path}: 1 error(s), 0 warning(s)\n"
        )
    );
    assert_eq!(code, 1);

    std::fs::write(&file, "#cloud-config\nusers: alice\ncolour: blue\n").unwrap();
    let (code, stdout, _) = basaltctl(&["config", "validate", path]);
    assert_eq!(stdout, format!("{path}:2:8: error: users: expected a list, found a scalar\n{path}:3:1: warning: colour: unknown key \"colour\", ignored\n{path}: 1 error(s), 1 warning(s)\n"));
    assert_eq!(code, 1);

    std::fs::write(&file, "#cloud-config\nhostname: fine\ncolour: blue\n").unwrap();
    let (code, stdout, _) = basaltctl(&["config", "validate", path]);
    assert!(stdout.ends_with(": 0 error(s), 1 warning(s)\n"), "{stdout}");
    assert_eq!(code, 0, "warnings alone pass");
}

#[test]
fn wrong_usage_and_missing_files_are_named() {
    let (code, _, stderr) = basaltctl(&["config", "frobnicate"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("config validate FILE"), "{stderr}");
    let (code, _, stderr) = basaltctl(&["config", "validate", "/nonexistent/user-data"]);
    assert_eq!(code, 1);
    assert!(stderr.starts_with("basaltctl: /nonexistent/user-data: No such file"), "{stderr}");
}
