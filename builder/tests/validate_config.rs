//! `basalt validate-config FILE` on the build host: the checks the machine's
//! cloud-config agent makes, each problem with its line and column.

use std::path::Path;
use std::process::Command;

fn validate(file: &Path, extra: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_basalt")).arg("validate-config").args(extra).arg(file).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn every_problem_is_printed_with_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("user-data.yml");
    std::fs::write(&file, "#cloud-config\nhostname: web1\nusers: alice\nwrite_files:\n  - path: relative/file\n    content: x\ncolour: blue\n").unwrap();
    let (code, stdout, _) = validate(&file, &[]);
    let f = file.display();
    assert_eq!(
        stdout,
        format!(
            "{f}:3:8: error: users: expected a list, found a scalar\n\
             {f}:5:11: error: write_files[0].path: \"relative/file\" is not an absolute path without \"..\" components\n\
             {f}:7:1: warning: colour: unknown key \"colour\", ignored\n\
             {f}: 2 error(s), 1 warning(s)\n"
        )
    );
    assert_eq!(code, 1);

    let (code, stdout, _) = validate(&file, &["--json"]);
    assert_eq!(code, 1);
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["problems"][0]["position"], serde_json::json!({"line": 3, "column": 8}));
    assert_eq!(json["problems"][2]["severity"], "warning");
}

#[test]
fn a_clean_file_passes_and_whole_input_problems_have_no_position() {
    let dir = tempfile::tempdir().unwrap();
    let clean = Path::new(env!("CARGO_MANIFEST_DIR")).join("../agents/cloud-config/tests/corpus/etcd-fleet-cluster.yml");
    let (code, stdout, _) = validate(&clean, &[]);
    // coreos.etcd configures etcd-member.service; coreos.fleet is warned about by name, not an error.
    assert!(stdout.ends_with(": 0 error(s), 1 warning(s)\n") && stdout.contains("coreos.fleet: fleet is not part of basalt"), "{stdout}");
    assert_eq!(code, 0, "{stdout}");

    let junk = dir.path().join("junk.bin");
    std::fs::write(&junk, b"\x89PNG\r\n\x1a\n\0\0").unwrap();
    let (code, stdout, _) = validate(&junk, &[]);
    assert_eq!(code, 1);
    assert!(stdout.starts_with(&format!("{}:1:1: error: user-data: user data is not text (byte 0x89)", junk.display())), "{stdout}");

    let missing = dir.path().join("missing.yml");
    let (code, _, stderr) = validate(&missing, &[]);
    assert_eq!(code, 1);
    assert!(stderr.contains(&format!("reading {}", missing.display())), "{stderr}");
}
