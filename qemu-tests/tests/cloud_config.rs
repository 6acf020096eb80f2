//! cloud-config on the booted system: user data from QEMU fw_cfg, from a
//! NoCloud disk the test makes, and from an EC2-style metadata service the
//! test runs on the host; bad user data of every kind. Four boots in all:
//! fw_cfg (and a reboot), NoCloud, and the metadata service, where the bad
//! inputs are served one after another and cloud-config is run again.

use basalt_qemu_tests::{default_image, Vm};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BOOT: Duration = Duration::from_secs(180);
const CMD: Duration = Duration::from_secs(60);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A fresh ed25519 key pair; returns (private key file, public key line).
fn key_pair(dir: &Path, name: &str) -> (PathBuf, String) {
    let key = dir.join(name);
    let status = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"]).arg(&key).status().expect("ssh-keygen (openssh-client)");
    assert!(status.success());
    let public = std::fs::read_to_string(key.with_extension("pub")).unwrap().trim().to_string();
    (key, public)
}

fn ssh(key: &Path, port: u16, user: &str, command: &str) -> (bool, String) {
    let out = Command::new("ssh")
        .args(["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR", "-i"])
        .arg(key)
        .args(["-p", &port.to_string(), &format!("{user}@127.0.0.1"), command])
        .output()
        .expect("ssh (openssh-client)");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

/// Runs `command` over ssh as `user`, retrying while sshd comes up.
fn ssh_ok(key: &Path, port: u16, user: &str, command: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (ok, out) = ssh(key, port, user, command);
        if ok {
            return out;
        }
        assert!(Instant::now() < deadline, "ssh as {user} never succeeded for {command:?}: {out}");
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// The line of `basaltctl status` for `unit`.
fn unit_line(status: &str, unit: &str) -> String {
    status.lines().find(|line| line.starts_with(unit)).unwrap_or_else(|| panic!("{unit} not in:\n{status}")).to_string()
}

/// The 1-based line of `user_data` that starts with `prefix`.
fn line_of(user_data: &str, prefix: &str) -> usize {
    user_data.lines().position(|line| line.starts_with(prefix)).unwrap_or_else(|| panic!("no {prefix:?} line")) + 1
}

fn fw_cfg_user_data(public_key: &str) -> String {
    format!(
        r#"#cloud-config
hostname: fwcfg-node
ssh_authorized_keys:
  - {public_key}
users:
  - name: alice
    gecos: Alice from fw_cfg
    groups: [wheel]
    ssh_authorized_keys:
      - {public_key}
write_files:
  - path: /etc/hello/greeting.txt
    content: "hello from fw_cfg\n"
    owner: alice
    permissions: '0640'
  - path: /var/lib/hello/blob
    encoding: b64
    content: YmluYXJ5IGJsb2I=
coreos:
  units:
    - name: hello.service
      enable: true
      command: start
      content: |
        [Unit]
        Description=A unit from user data
        [Service]
        ExecStart=/usr/bin/sh -c 'echo hello-unit-up; exec sleep 1000000'
        [Install]
        WantedBy=multi-user.target
bootcmd:
  - echo boot >> /var/lib/hello/bootcmd.log
runcmd:
  - echo once >> /var/lib/hello/runcmd.log
  - [sh, -c, "grep -c . /var/lib/hello/runcmd.log > /var/lib/hello/runcmd.count"]
manage_etc_hosts: sometimes
favourite_colour: blue
"#
    )
}

/// fw_cfg user data: keys for core and a new user, host name, files, a unit
/// that runs; a wrong value and an unknown key are rejected by name while the
/// rest applies; runcmd runs once, bootcmd on every boot.
#[test]
fn user_data_from_fw_cfg_applies_once_per_instance() {
    let dir = tempfile::tempdir().unwrap();
    let (key, public_key) = key_pair(dir.path(), "fwcfg");
    let user_data = dir.path().join("user-data");
    std::fs::write(&user_data, fw_cfg_user_data(&public_key)).unwrap();
    let port = free_port();
    let mut vm = Vm::boot_with("cloud_config_fw_cfg", &default_image(), |c| {
        c.ssh_port = port;
        c.fw_cfg.push(("opt/org.basalt/user-data".into(), user_data.clone()));
    })
    .unwrap();
    vm.wait_ready(BOOT).unwrap();
    vm.wait_for("cloud-config: done:", BOOT).unwrap();
    // ssh as core and as the new user, with the key the user data gave.
    let out = ssh_ok(&key, port, "core", "id -un; hostname; basaltctl status");
    assert!(out.starts_with("core\nfwcfg-node\n"), "{out}");
    assert!(unit_line(&out, "cloud-config.service").contains("exited"), "{out}");
    assert!(unit_line(&out, "hello.service").contains("active"), "{out}");
    let out = ssh_ok(&key, port, "alice", "id; cat /etc/hello/greeting.txt; stat -c '%a %U' /etc/hello/greeting.txt; cat /var/lib/hello/blob");
    assert!(out.starts_with("uid=1000(alice) gid=1000(alice) groups=10(wheel),1000(alice)\n"), "{out}");
    assert!(out.contains("hello from fw_cfg\n640 alice\nbinary blob"), "{out}");
    let out = vm.run_ok("cat /var/lib/hello/runcmd.count /var/lib/hello/bootcmd.log; basaltctl logs hello", CMD).unwrap();
    assert_eq!(out, "1\nboot\nhello-unit-up\n");
    // What was rejected, exactly, from the machine itself (the console has
    // the same lines, see docs/cloud-config.md).
    let text = fw_cfg_user_data(&public_key);
    let show = ssh_ok(&key, port, "core", "basaltctl config show");
    let lines: Vec<&str> = show.lines().collect();
    assert!(lines[0].starts_with("user data from fw_cfg opt/org.basalt/user-data ("), "{show}");
    assert_eq!(
        lines[1..3],
        [
            format!("rejected: {}:19: error: manage_etc_hosts: \"sometimes\" is not supported; the only value is \"localhost\"", line_of(&text, "manage_etc_hosts")),
            format!("{}:1: warning: favourite_colour: unknown key \"favourite_colour\", ignored", line_of(&text, "favourite_colour")),
        ],
        "{show}"
    );
    assert!(show.contains("\napplied: set hostname fwcfg-node\n"), "{show}");
    assert!(show.ends_with(", 1 rejected, 1 warning(s), 0 failure(s)\n"), "{show}");

    // After a reboot: the same instance, so runcmd does not run again;
    // bootcmd does, and the unit is started again as an enabled unit.
    let _ = ssh(&key, port, "core", "basaltctl reboot");
    vm.wait_for("rebooting", CMD).unwrap();
    vm.wait_ready(BOOT).unwrap();
    vm.wait_for("cloud-config: done:", BOOT).unwrap();
    let show = ssh_ok(&key, port, "core", "basaltctl config show");
    assert!(!show.contains("ran runcmd") && show.contains("applied: ran bootcmd[0]"), "{show}");
    let out = ssh_ok(&key, port, "core", "hostname; cat /var/lib/hello/runcmd.log /var/lib/hello/runcmd.count /var/lib/hello/bootcmd.log; basaltctl status");
    assert!(out.starts_with("fwcfg-node\nonce\n1\nboot\nboot\n"), "{out}");
    assert!(unit_line(&out, "hello.service").contains("active"), "{out}");
    vm.power_cut().unwrap();
}
