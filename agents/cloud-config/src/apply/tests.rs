//! Applying whole user data to a scratch root, with the supervisor and the
//! command runner replaced by recorders.

use std::os::unix::fs::MetadataExt;

use super::*;
use crate::config::UnitCommand;
use crate::supervisor::SupervisorError;
use crate::validate::parse_user_data;

#[derive(Default)]
struct RecordingSupervisor {
    requests: Vec<String>,
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
struct RecordingRunner {
    runs: Vec<Vec<String>>,
}

impl CommandRunner for RecordingRunner {
    fn run(&mut self, argv: &[String]) -> Result<(), String> {
        self.runs.push(argv.to_vec());
        Ok(())
    }
}

fn scratch_root() -> (tempfile::TempDir, Root) {
    let scratch = tempfile::tempdir().unwrap();
    let root = Root::new(scratch.path());
    root.write("/etc/passwd", b"root:x:0:0:root:/root:/bin/sh\ncore:x:500:500:CoreOS Admin:/home/core:/bin/sh\n", 0o644, 0, 0).unwrap();
    root.write("/etc/group", b"root:x:0:\ncore:x:500:\n", 0o644, 0, 0).unwrap();
    root.write("/etc/shadow", b"root:*:19000:0:99999:7:::\ncore:*:19000:0:99999:7:::\n", 0o640, 0, 0).unwrap();
    root.ensure_dir("/home/core", 0o755, 500, 500).unwrap();
    (scratch, root)
}

const USER_DATA: &str = r#"#cloud-config
hostname: node-$private_ipv4
ssh_authorized_keys:
  - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGZha2VrZXk core@laptop
coreos:
  units:
    - name: hello.service
      enable: true
      command: start
      content: |
        [Service]
        ExecStart=/bin/echo hello from $public_ipv4
        [Install]
        WantedBy=multi-user.target
runcmd:
  - echo once
bootcmd:
  - [touch, /run/booted]
"#;

fn metadata() -> Metadata {
    Metadata { instance_id: Some("i-0123".into()), private_ipv4: Some("10.0.0.5".into()), public_ipv4: Some("203.0.113.7".into()), ..Metadata::default() }
}

#[test]
fn a_second_run_changes_nothing_and_runs_nothing() {
    let (_scratch, root) = scratch_root();
    let user_data = parse_user_data(USER_DATA.as_bytes());
    assert!(user_data.report.problems.is_empty(), "{}", user_data.report);
    let (mut supervisor, mut runner) = (RecordingSupervisor::default(), RecordingRunner::default());
    let mut applier = Applier { root: root.clone(), supervisor: &mut supervisor, runner: &mut runner, live: false };
    let first = applier.apply(&user_data, &metadata());
    assert!(first.failures.is_empty(), "{:?}", first.failures);
    assert!(!first.changes.is_empty());
    let second = applier.apply(&user_data, &metadata());
    assert_eq!(second, Log::default());
    assert_eq!(supervisor.requests, ["reload", "start hello.service"]);
    assert_eq!(runner.runs, [vec!["touch".to_string(), "/run/booted".into()], vec!["/bin/sh".into(), "-c".into(), "echo once".into()]]);

    assert_eq!(root.read_to_string("/etc/hostname").unwrap(), "node-10.0.0.5\n");
    let unit = root.read_to_string("/etc/systemd/system/hello.service").unwrap();
    assert!(unit.contains("ExecStart=/bin/echo hello from 203.0.113.7\n"), "{unit}");
    let link = std::fs::read_link(root.path("/etc/systemd/system/multi-user.target.wants/hello.service")).unwrap();
    assert_eq!(link, std::path::Path::new("/etc/systemd/system/hello.service"));
    let keys = root.path("/home/core/.ssh/authorized_keys");
    assert!(std::fs::read_to_string(&keys).unwrap().contains("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGZha2VrZXk core@laptop\n"));
    let metadata = std::fs::metadata(&keys).unwrap();
    assert_eq!((metadata.mode() & 0o777, metadata.uid(), metadata.gid()), (0o600, 500, 500));
    let ssh_dir = std::fs::metadata(root.path("/home/core/.ssh")).unwrap();
    assert_eq!((ssh_dir.mode() & 0o777, ssh_dir.uid()), (0o700, 500));
    assert_eq!(root.read_to_string("/etc/environment").unwrap().lines().filter(|l| l.starts_with("COREOS")).collect::<Vec<_>>(), ["COREOS_PUBLIC_IPV4=203.0.113.7", "COREOS_PRIVATE_IPV4=10.0.0.5"]);
}

#[test]
fn a_reboot_reruns_per_boot_work_only_and_a_new_instance_reruns_runcmd() {
    let (_scratch, root) = scratch_root();
    let user_data = parse_user_data(USER_DATA.as_bytes());
    let (mut supervisor, mut runner) = (RecordingSupervisor::default(), RecordingRunner::default());
    let mut applier = Applier { root: root.clone(), supervisor: &mut supervisor, runner: &mut runner, live: false };
    applier.apply(&user_data, &metadata());
    // A reboot empties /run.
    std::fs::remove_dir_all(root.path("/run")).unwrap();
    applier.apply(&user_data, &metadata());
    let new_instance = Metadata { instance_id: Some("i-4567".into()), ..metadata() };
    applier.apply(&user_data, &new_instance);
    let commands: Vec<String> = runner.runs.iter().map(|argv| argv.last().unwrap().clone()).collect();
    assert_eq!(commands, ["/run/booted", "echo once", "/run/booted", "echo once"]);
    assert_eq!(supervisor.requests, ["reload", "start hello.service", "start hello.service"]);
    assert_eq!(root.read_to_string("/var/lib/basalt/cloud-config/instance-id").unwrap(), "i-4567\n");
}

#[test]
fn unknown_owners_fail_only_their_file() {
    let (_scratch, root) = scratch_root();
    let user_data = parse_user_data(b"#cloud-config\nwrite_files:\n  - path: /etc/a\n    owner: nobody-here\n  - path: /etc/b\n    owner: core\n    content: b\n");
    let (mut supervisor, mut runner) = (RecordingSupervisor::default(), RecordingRunner::default());
    let mut applier = Applier { root: root.clone(), supervisor: &mut supervisor, runner: &mut runner, live: false };
    let log = applier.apply(&user_data, &metadata());
    assert_eq!(log.failures, ["write_files /etc/a: owner \"nobody-here\" does not exist; file not written"]);
    assert!(!root.exists("/etc/a"));
    let b = std::fs::metadata(root.path("/etc/b")).unwrap();
    assert_eq!((b.uid(), b.gid()), (500, 500));
}
