//! Shared by the host tests: a scratch root that looks like a fresh basalt
//! image's /etc, and recorders standing in for the supervisor and for
//! command execution.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use basalt_cloud_config::apply::{Applier, CommandRunner, Log, Root};
use basalt_cloud_config::config::UnitCommand;
use basalt_cloud_config::metadata::Metadata;
use basalt_cloud_config::supervisor::{Supervisor, SupervisorError};
use basalt_cloud_config::{parse_user_data, UserData};

#[derive(Default)]
pub struct RecordingSupervisor {
    pub requests: Vec<String>,
}

impl Supervisor for RecordingSupervisor {
    fn reload(&mut self) -> Result<(), SupervisorError> {
        self.requests.push("reload".into());
        Ok(())
    }

    fn request(&mut self, unit: &str, command: UnitCommand) -> Result<(), SupervisorError> {
        self.requests.push(format!("{} {unit}", command.as_str()));
        Ok(())
    }
}

#[derive(Default)]
pub struct RecordingRunner {
    pub runs: Vec<Vec<String>>,
}

impl CommandRunner for RecordingRunner {
    fn run(&mut self, argv: &[String]) -> Result<(), String> {
        self.runs.push(argv.to_vec());
        Ok(())
    }
}

pub const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\ncore:x:500:500:CoreOS Admin:/home/core:/bin/sh\n";
pub const GROUP: &str = "root:x:0:\nshadow:x:42:\nsudo:x:27:\ndocker:x:233:\ncore:x:500:\n";
pub const SHADOW: &str = "root:*:19000:0:99999:7:::\ncore:*:19000:0:99999:7:::\n";

/// A scratch root with the accounts a basalt image ships.
pub fn image_root() -> (tempfile::TempDir, Root) {
    let scratch = tempfile::tempdir().unwrap();
    let root = Root::new(scratch.path());
    root.write("/etc/passwd", PASSWD.as_bytes(), 0o644, 0, 0).unwrap();
    root.write("/etc/group", GROUP.as_bytes(), 0o644, 0, 0).unwrap();
    root.write("/etc/shadow", SHADOW.as_bytes(), 0o640, 0, 42).unwrap();
    root.ensure_dir("/home/core", 0o755, 500, 500).unwrap();
    (scratch, root)
}

pub fn corpus_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus").join(name)
}

pub fn corpus(name: &str) -> Vec<u8> {
    std::fs::read(corpus_path(name)).unwrap()
}

/// Metadata as a cloud would give it.
pub fn cloud_metadata() -> Metadata {
    Metadata { instance_id: Some("i-0corpus".into()), hostname: Some("node-7".into()), public_ipv4: Some("203.0.113.7".into()), private_ipv4: Some("10.0.0.7".into()), ..Metadata::default() }
}

pub struct Applied {
    pub scratch: tempfile::TempDir,
    pub root: Root,
    pub user_data: UserData,
    pub first: Log,
    pub second: Log,
    pub requests: Vec<String>,
    pub runs: Vec<Vec<String>>,
}

impl Applied {
    pub fn read(&self, path: &str) -> String {
        self.root.read_to_string(path).unwrap_or_else(|| panic!("{path} was not written"))
    }

    pub fn mode_owner(&self, path: &str) -> (u32, u32, u32) {
        use std::os::unix::fs::MetadataExt;
        let metadata = std::fs::symlink_metadata(self.root.path(path)).unwrap_or_else(|_| panic!("{path} is missing"));
        (metadata.mode() & 0o7777, metadata.uid(), metadata.gid())
    }

    pub fn link(&self, path: &str) -> String {
        std::fs::read_link(self.root.path(path)).unwrap_or_else(|_| panic!("{path} is not a symlink")).to_string_lossy().into_owned()
    }
}

/// Parses `bytes` and applies them twice to a fresh image root.
pub fn apply_twice(bytes: &[u8], metadata: &Metadata) -> Applied {
    let (scratch, root) = image_root();
    let user_data = parse_user_data(bytes);
    let mut supervisor = RecordingSupervisor::default();
    let mut runner = RecordingRunner::default();
    let mut applier = Applier { root: root.clone(), supervisor: &mut supervisor, runner: &mut runner, live: false };
    let first = applier.apply(&user_data, metadata);
    let second = applier.apply(&user_data, metadata);
    Applied { scratch, root, user_data, first, second, requests: supervisor.requests, runs: runner.runs }
}
