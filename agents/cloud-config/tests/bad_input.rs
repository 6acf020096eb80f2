//! Bad user data: each kind is rejected with exactly the message a user
//! needs, and whatever is still good applies.

mod common;

use basalt_cloud_config::{parse_user_data, validate};
use common::{apply_twice, cloud_metadata};

fn messages(bytes: &[u8]) -> Vec<String> {
    validate(bytes).problems.iter().map(|problem| problem.to_string()).collect()
}

#[test]
fn malformed_yaml_names_the_place_and_applies_nothing_from_that_document() {
    let text = "#cloud-config\nhostname: web1\nusers:\n  - name: alice\n    groups: [sudo\n  - name: bob\n";
    assert_eq!(messages(text.as_bytes()), ["6:9: error: user-data: YAML syntax error: illegal placement of ':' indicator; none of this document was applied"]);
    let applied = apply_twice(text.as_bytes(), &cloud_metadata());
    assert!(!applied.root.exists("/etc/hostname") || applied.read("/etc/hostname") == "node-7\n", "only the metadata's name");
    assert!(!applied.read("/etc/passwd").contains("alice"));
    assert_eq!(
        messages(b"#cloud-config\nhostname: \"unterminated\n"),
        ["2:11: error: user-data: YAML syntax error: while scanning a quoted scalar, found unexpected end of stream; none of this document was applied"]
    );
    assert_eq!(
        messages(b"#cloud-config\nwrite_files:\n\t- path: /x\n"),
        ["3:2: error: user-data: YAML syntax error: tabs disallowed within this context (block indentation); none of this document was applied"]
    );
}

#[test]
fn wrong_types_fail_their_key_and_the_rest_applies() {
    let text = "#cloud-config\n\
hostname: [not, a, name]\n\
manage_etc_hosts: sometimes\n\
ssh_authorized_keys:\n  - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGood good@key\n\
users:\n  - name: alice\n    groups: {sudo: yes}\n  - name: carol\n\
write_files:\n  - path: /etc/a.conf\n    permissions: rw-r--r--\n  - path: /etc/b.conf\n    content: b\n\
coreos:\n  units: etcd.service\n  update:\n    reboot_strategy: whenever\n";
    assert_eq!(
        messages(text.as_bytes()),
        [
            "2:11: error: hostname: expected a string, found a list",
            "3:19: error: manage_etc_hosts: \"sometimes\" is not supported; the only value is \"localhost\"",
            "8:13: error: users[0].groups: expected a list of strings, found a mapping",
            "12:18: error: write_files[0].permissions: \"rw-r--r--\" is not an octal file mode such as \"0644\"",
            "16:10: error: coreos.units: expected a list, found a scalar",
            "18:22: error: coreos.update.reboot_strategy: \"whenever\" is not a reboot strategy; expected one of reboot, etcd-lock, best-effort, fleetlock, off",
        ]
    );
    let applied = apply_twice(text.as_bytes(), &cloud_metadata());
    assert!(applied.first.failures.is_empty(), "{:?}", applied.first.failures);
    assert!(applied.read("/etc/passwd").contains("\ncarol:x:1000:1000::/home/carol:/bin/sh\n"));
    assert!(!applied.read("/etc/passwd").contains("alice"), "a user with a bad field is not created half");
    assert_eq!(applied.read("/etc/b.conf"), "b");
    assert!(!applied.root.exists("/etc/a.conf"));
    assert!(applied.read("/home/core/.ssh/authorized_keys").contains("good@key"));
    assert!(!applied.root.exists("/etc/basalt/update.conf"));
}

#[test]
fn unknown_keys_warn_by_name_and_are_ignored() {
    let text = "#cloud-config\nhostname: web1\napt_update: true\nusers:\n  - name: dave\n    sudo: ALL=(ALL) NOPASSWD:ALL\ncoreos:\n  oem:\n    id: vendor\n  etcd2:\n    name: x\n  colour: blue\n";
    assert_eq!(
        messages(text.as_bytes()),
        [
            "3:1: warning: apt_update: unknown key \"apt_update\", ignored",
            "6:5: warning: users[0].sudo: unknown key \"sudo\", ignored",
            "8:3: warning: coreos.oem: coreos.oem describes a vendor image and is ignored; ignored",
            "12:3: warning: coreos.colour: unknown key \"colour\", ignored",
        ]
    );
    let user_data = parse_user_data(text.as_bytes());
    assert_eq!(user_data.report.error_count(), 0);
    assert_eq!(user_data.config.hostname.as_deref(), Some("web1"));
    assert_eq!(user_data.config.users[0].name, "dave");
}

#[test]
fn ten_megabytes_are_refused_whole() {
    let mut big = b"#cloud-config\nwrite_files:\n  - path: /etc/big\n    content: |\n".to_vec();
    while big.len() < 10 * 1024 * 1024 {
        big.extend_from_slice(b"      0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n");
    }
    big.truncate(10 * 1024 * 1024);
    assert_eq!(messages(&big), ["error: user-data: user data is 10485760 bytes, more than the limit of 1048576 bytes (1 MiB); none of it was applied"]);
    let applied = apply_twice(&big, &cloud_metadata());
    assert!(!applied.root.exists("/etc/big"));
}

#[test]
fn binary_junk_is_refused_whole() {
    // Bytes as a mis-pasted image would give: a PNG header.
    let junk = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x01\x00";
    assert_eq!(messages(junk), ["1:1: error: user-data: user data is not text (byte 0x89); expected #cloud-config, a #! script, MIME multipart, or gzip of one of these; none of it was applied"]);
    let mut truncated_gzip = vec![0x1f, 0x8b, 0x08, 0x00];
    truncated_gzip.extend_from_slice(&[0xff; 16]);
    assert_eq!(messages(&truncated_gzip).len(), 1);
    assert!(messages(&truncated_gzip)[0].starts_with("error: user-data: user data looks gzip-compressed but does not inflate: "));
}

#[test]
fn text_that_is_neither_config_nor_script_is_refused() {
    assert_eq!(messages(b"hostname: forgot-the-header\n"), ["1:1: error: user-data: the first line is neither \"#cloud-config\" nor a \"#!\" script line nor a MIME header; none of it was applied"]);
    assert_eq!(
        messages(br#"{"ignition": {"version": "3.4.0"}}"#),
        ["1:1: error: user-data: user data is JSON (an Ignition config?); basalt reads #cloud-config YAML and #! scripts; none of it was applied"]
    );
}
