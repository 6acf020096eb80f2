//! `basalt build` as a user runs it: reproducible output, and bad specs or
//! tampered inputs refused with a message that says what to do, leaving no
//! output behind.

use std::path::{Path, PathBuf};
use std::process::Command;

fn basalt() -> Command {
    Command::new(env!("CARGO_BIN_EXE_basalt"))
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().to_string()
}

fn build(spec: &Path, lock: &Path, output: &Path, epoch: &str) -> std::process::Output {
    basalt().args(["build", "--spec"]).arg(spec).arg("--lock").arg(lock).arg("--output").arg(output).env("SOURCE_DATE_EPOCH", epoch).output().unwrap()
}

#[test]
fn two_builds_from_the_same_inputs_are_identical() {
    let dir = tempfile::tempdir().unwrap();
    let spec = repo().join("image/basalt.yaml");
    let lock = repo().join("image/inputs.lock");
    let (a, b) = (dir.path().join("a.img"), dir.path().join("b.img"));
    for out in [&a, &b] {
        let o = build(&spec, &lock, out, "1700000000");
        assert!(o.status.success(), "build failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    assert_eq!(sha256(&a), sha256(&b), "same inputs, different images");
    // Another SOURCE_DATE_EPOCH is another image: the timestamps really come from it.
    let c = dir.path().join("c.img");
    assert!(build(&spec, &lock, &c, "1800000000").status.success());
    assert_ne!(sha256(&a), sha256(&c));
}

#[test]
fn a_bad_spec_names_file_field_and_allowed_values_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("bad.yaml");
    let good = std::fs::read_to_string(repo().join("image/basalt.yaml")).unwrap();
    std::fs::write(&spec, good.replace("console_shell:", "consol_shell:")).unwrap();
    let out = dir.path().join("x.img");
    let o = build(&spec, &repo().join("image/inputs.lock"), &out, "0");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("bad.yaml") && err.contains("unknown field `consol_shell`") && err.contains("`console_shell`"), "{err}");
    assert!(!out.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "nothing but the spec in the directory");
}

#[test]
fn a_tampered_input_is_refused_with_the_refetch_command() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    std::fs::create_dir_all(cache.join("debs")).unwrap();
    let lock = std::fs::read_to_string(repo().join("image/inputs.lock")).unwrap();
    let line = lock.lines().find(|l| l.starts_with("systemd-boot-efi")).unwrap();
    let version = line.split_whitespace().nth(1).unwrap();
    // The cache holds every real input, but one is replaced by other bytes.
    let real_cache = std::env::var_os("BASALT_CACHE").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/basalt"));
    for e in std::fs::read_dir(real_cache.join("debs")).unwrap().flatten() {
        std::fs::copy(e.path(), cache.join("debs").join(e.file_name())).unwrap();
    }
    let victim = cache.join("debs").join(format!("systemd-boot-efi_{version}_amd64.deb"));
    std::fs::write(&victim, b"not the package").unwrap();
    let out = dir.path().join("x.img");
    let o = basalt().args(["build", "--spec"]).arg(repo().join("image/basalt.yaml")).arg("--output").arg(&out).env("BASALT_CACHE", &cache).output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("systemd-boot-efi") && err.contains("pins") && err.contains("make inputs"), "{err}");
    assert!(!out.exists());
}
