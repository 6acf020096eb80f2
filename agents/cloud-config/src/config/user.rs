//! `users[]` entries and `ssh_authorized_keys`.

use serde::Serialize;

use super::fields::{clean, describe, Fields};
use crate::report::Report;
use crate::yaml::Node;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct User {
    pub name: String,
    /// A crypt(3) hash; `None` leaves a new account locked.
    pub passwd: Option<String>,
    pub ssh_authorized_keys: Vec<String>,
    pub gecos: Option<String>,
    pub homedir: Option<String>,
    pub no_create_home: bool,
    pub primary_group: Option<String>,
    pub groups: Vec<String>,
    pub no_user_group: bool,
    pub system: bool,
    pub shell: Option<String>,
}

const KNOWN: &[&str] = &["name", "passwd", "ssh_authorized_keys", "gecos", "homedir", "no_create_home", "primary_group", "groups", "no_user_group", "system", "shell", "no_log_init"];

/// Keys coreos-cloudinit had that need the network at boot or tools basalt
/// does not ship.
const UNSUPPORTED: &[(&str, &str)] = &[
    ("ssh_import_github_users", "importing keys from GitHub is not supported; list the keys in ssh_authorized_keys"),
    ("coreos_ssh_import_url", "importing keys from a URL is not supported; list the keys in ssh_authorized_keys"),
    ("coreos_ssh_import_github", "importing keys from GitHub is not supported; list the keys in ssh_authorized_keys"),
    ("coreos_ssh_import_github_users", "importing keys from GitHub is not supported; list the keys in ssh_authorized_keys"),
];

pub fn parse_user(node: &Node, path: &str, report: &mut Report) -> Option<User> {
    // A bad key drops only that key, not the user, so its problems are kept
    // apart from the ones that reject the entry.
    let mut key_report = Report::default();
    let user = clean(report, |report| {
        let fields = Fields::of(node, path, report)?;
        let mut known: Vec<&str> = KNOWN.to_vec();
        for (key, why) in UNSUPPORTED {
            if let Some(value) = fields.get(key) {
                report.warning(fields.key_path(key), fields.key_position(key).or(Some(value.position)), format!("{why}; ignored"));
            }
            known.push(key);
        }
        fields.warn_unknown(&known, report);
        let Some(name_node) = fields.get("name") else {
            report.error(path, Some(node.position), "a user needs a name");
            return None;
        };
        let name = fields.string("name", report)?;
        if !valid_account_name(&name) {
            report.error(
                fields.key_path("name"),
                Some(name_node.position),
                format!("{name:?} is not a valid user name (lower-case letters, digits, '_' and '-', starting with a letter or '_', at most 32)"),
            );
        }
        let passwd = fields.string("passwd", report);
        if let (Some(hash), Some(node)) = (&passwd, fields.get("passwd")) {
            if !valid_password_hash(hash) {
                report.error(fields.key_path("passwd"), Some(node.position), "expected a crypt(3) password hash such as \"$6$salt$...\" (a plain password is never accepted)");
            }
        }
        let ssh_authorized_keys = ssh_keys(&fields, "ssh_authorized_keys", &mut key_report);
        let gecos = fields.string("gecos", report);
        if let (Some(gecos), Some(node)) = (&gecos, fields.get("gecos")) {
            if gecos.contains([':', '\n']) {
                report.error(fields.key_path("gecos"), Some(node.position), "must not contain ':' or a line break");
            }
        }
        let homedir = absolute_path(&fields, "homedir", report);
        let shell = absolute_path(&fields, "shell", report);
        let primary_group = fields.string("primary_group", report);
        if let (Some(group), Some(node)) = (&primary_group, fields.get("primary_group")) {
            check_group_name(group, &fields.key_path("primary_group"), node, report);
        }
        let groups = match fields.get("groups") {
            // coreos-cloudinit took a list; cloud-init also a comma-separated string.
            Some(node) if node.as_scalar().is_some() => node.as_scalar().unwrap_or("").split(',').map(str::trim).filter(|g| !g.is_empty()).map(String::from).collect(),
            Some(_) => fields.strings("groups", report).unwrap_or_default(),
            None => Vec::new(),
        };
        if let Some(node) = fields.get("groups") {
            for group in &groups {
                check_group_name(group, &fields.key_path("groups"), node, report);
            }
        }
        let user = User {
            name,
            passwd,
            ssh_authorized_keys,
            gecos,
            homedir,
            no_create_home: fields.bool("no_create_home", report).unwrap_or(false),
            primary_group,
            groups,
            no_user_group: fields.bool("no_user_group", report).unwrap_or(false),
            system: fields.bool("system", report).unwrap_or(false),
            shell,
        };
        let _ = fields.bool("no_log_init", report);
        Some(user)
    });
    report.problems.extend(key_report.problems);
    user
}

fn check_group_name(group: &str, path: &str, node: &Node, report: &mut Report) {
    if !valid_account_name(group) {
        report.error(path, Some(node.position), format!("{group:?} is not a valid group name"));
    }
}

fn absolute_path(fields: &Fields, key: &str, report: &mut Report) -> Option<String> {
    let value = fields.string(key, report)?;
    if !value.starts_with('/') || value.contains([':', '\n']) {
        report.error(fields.key_path(key), fields.get(key).map(|n| n.position), format!("expected an absolute path, found {value:?}"));
        return None;
    }
    Some(value)
}

/// Reads a list of public keys; each bad key is an error of its own and is
/// left out, the good ones still apply.
pub fn ssh_keys(fields: &Fields, key: &str, report: &mut Report) -> Vec<String> {
    let Some(node) = fields.get(key) else { return Vec::new() };
    let path = fields.key_path(key);
    let items: Vec<(String, &Node)> = match node.as_sequence() {
        Some(items) => items.iter().enumerate().map(|(i, item)| (format!("{path}[{i}]"), item)).collect(),
        None if node.as_scalar().is_some() => vec![(path.clone(), node)],
        None => {
            report.error(&path, Some(node.position), format!("expected a list of public keys, found {}", node.kind()));
            return Vec::new();
        }
    };
    let mut keys = Vec::new();
    for (item_path, item) in items {
        match item.as_scalar() {
            Some(text) if valid_ssh_public_key(text.trim()) => keys.push(text.trim().to_string()),
            Some(_) => {
                report.error(item_path, Some(item.position), format!("{} is not an SSH public key (expected e.g. \"ssh-ed25519 AAAA... comment\"); this key was left out", abbreviate(&describe(item))))
            }
            None => report.error(item_path, Some(item.position), format!("expected a public key, found {}", item.kind())),
        }
    }
    keys
}

fn abbreviate(text: &str) -> String {
    if text.chars().count() > 40 {
        format!("{}…", text.chars().take(40).collect::<String>())
    } else {
        text.to_string()
    }
}

/// Key types OpenSSH and dropbear know; options before the type are allowed
/// (`no-pty,command="…" ssh-ed25519 AAAA…`).
pub fn valid_ssh_public_key(line: &str) -> bool {
    const TYPES: &[&str] =
        &["ssh-ed25519", "ssh-rsa", "ssh-dss", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com"];
    if line.contains(['\n', '\r']) {
        return false;
    }
    let words: Vec<&str> = line.split_whitespace().collect();
    words.windows(2).any(|pair| TYPES.contains(&pair[0]) && pair[1].starts_with("AAAA") && pair[1].bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=')))
}

/// The names `useradd` accepts by default (Debian's NAME_REGEX, system part).
pub fn valid_account_name(name: &str) -> bool {
    let mut chars = name.chars();
    let Some(first) = chars.next() else { return false };
    name.len() <= 32 && (first.is_ascii_lowercase() || first == '_') && name.trim_end_matches('$').chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// A hash in crypt(3) modular format, or `*`/`!` for explicitly locked.
fn valid_password_hash(hash: &str) -> bool {
    if hash.contains([':', '\n', ' ']) {
        return false;
    }
    hash == "*" || hash == "!" || (hash.starts_with('$') && hash.matches('$').count() >= 3)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml;

    fn parse(text: &str) -> (Option<User>, Report) {
        let node = yaml::parse(text).unwrap();
        let mut report = Report::default();
        (parse_user(&node, "users[0]", &mut report), report)
    }

    #[test]
    fn a_full_user_parses() {
        let (user, report) = parse("name: alice\npasswd: $6$salt$hash\ngroups: [sudo, docker]\nshell: /bin/bash\nssh_authorized_keys:\n  - ssh-ed25519 AAAAC3Nza alice@laptop\n");
        assert!(report.problems.is_empty(), "{report}");
        let user = user.unwrap();
        assert_eq!(user.groups, ["sudo", "docker"]);
        assert_eq!(user.ssh_authorized_keys, ["ssh-ed25519 AAAAC3Nza alice@laptop"]);
    }

    #[test]
    fn plain_passwords_are_refused() {
        let (user, report) = parse("name: bob\npasswd: hunter2\n");
        assert!(user.is_none());
        assert_eq!(report.to_string(), "2:9: error: users[0].passwd: expected a crypt(3) password hash such as \"$6$salt$...\" (a plain password is never accepted)\n");
    }

    #[test]
    fn bad_keys_are_dropped_alone() {
        let (user, report) = parse("name: carol\nssh_authorized_keys:\n  - not a key\n  - ssh-rsa AAAAB3 carol\n");
        assert_eq!(user.unwrap().ssh_authorized_keys, ["ssh-rsa AAAAB3 carol"]);
        assert!(report.to_string().starts_with("3:5: error: users[0].ssh_authorized_keys[0]: \"not a key\" is not an SSH public key"), "{report}");
    }

    #[test]
    fn key_options_before_the_type_are_allowed() {
        assert!(valid_ssh_public_key("no-pty,command=\"/bin/true\" ssh-ed25519 AAAAC3Nz x"));
        assert!(!valid_ssh_public_key("ssh-ed25519"));
        assert!(!valid_ssh_public_key("AAAAC3Nz ssh-ed25519"));
    }

    #[test]
    fn account_names() {
        assert!(valid_account_name("core"));
        assert!(valid_account_name("_svc-1"));
        assert!(!valid_account_name("Root"));
        assert!(!valid_account_name("a:b"));
        assert!(!valid_account_name(""));
    }
}
