//! Users and groups, by editing /etc/passwd, /etc/group, /etc/shadow and
//! (when the image has it) /etc/gshadow directly: the image ships no useradd.
//! Loaded once, changed in memory, written once with `save`.

use std::io;
use std::time::{SystemTime, UNIX_EPOCH};

use super::root::Root;
use crate::config::User;

/// A password field that no password can match but that, unlike a leading
/// `!`, OpenSSH does not treat as a locked account: key logins keep working.
pub const NO_PASSWORD: &str = "*";

const FIRST_USER_ID: u32 = 1000;
const LAST_USER_ID: u32 = 59999;
const FIRST_SYSTEM_ID: u32 = 100;
const LAST_SYSTEM_ID: u32 = 999;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

/// One colon-separated table (passwd, group, shadow, gshadow).
#[derive(Debug, Clone)]
struct Table {
    file: &'static str,
    mode: u32,
    rows: Vec<Vec<String>>,
    present: bool,
    changed: bool,
}

impl Table {
    fn load(root: &Root, file: &'static str, mode: u32, width: usize) -> Table {
        let text = root.read_to_string(file);
        let rows = text
            .as_deref()
            .unwrap_or("")
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| {
                let mut fields: Vec<String> = line.split(':').map(String::from).collect();
                fields.resize(fields.len().max(width), String::new());
                fields
            })
            .collect();
        Table { file, mode, rows, present: text.is_some(), changed: false }
    }

    fn find(&self, name: &str) -> Option<&Vec<String>> {
        self.rows.iter().find(|row| row[0] == name)
    }

    fn find_mut(&mut self, name: &str) -> Option<&mut Vec<String>> {
        self.rows.iter_mut().find(|row| row[0] == name)
    }

    fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        self.rows.iter().filter_map(|row| row[2].parse().ok())
    }

    fn push(&mut self, row: Vec<String>) {
        self.rows.push(row);
        self.changed = true;
    }

    fn save(&self, root: &Root, gid: u32) -> io::Result<bool> {
        if !self.changed {
            return Ok(false);
        }
        let text: String = self.rows.iter().map(|row| row.join(":") + "\n").collect();
        root.write(self.file, text.as_bytes(), self.mode, 0, gid)
    }
}

pub struct Accounts {
    passwd: Table,
    group: Table,
    shadow: Table,
    gshadow: Table,
    /// What was done, for the log.
    pub changes: Vec<String>,
}

impl Accounts {
    pub fn load(root: &Root) -> Accounts {
        Accounts {
            passwd: Table::load(root, "/etc/passwd", 0o644, 7),
            group: Table::load(root, "/etc/group", 0o644, 4),
            shadow: Table::load(root, "/etc/shadow", 0o640, 9),
            gshadow: Table::load(root, "/etc/gshadow", 0o640, 4),
            changes: Vec::new(),
        }
    }

    pub fn user(&self, name: &str) -> Option<Account> {
        let row = self.passwd.find(name)?;
        Some(Account { name: row[0].clone(), uid: row[2].parse().ok()?, gid: row[3].parse().ok()?, home: row[5].clone() })
    }

    pub fn gid(&self, name: &str) -> Option<u32> {
        self.group.find(name)?[2].parse().ok()
    }

    /// A user name or number to a uid.
    pub fn resolve_uid(&self, name: &str) -> Option<u32> {
        name.parse().ok().or_else(|| self.user(name).map(|account| account.uid))
    }

    /// A group name or number to a gid.
    pub fn resolve_gid(&self, name: &str) -> Option<u32> {
        name.parse().ok().or_else(|| self.gid(name))
    }

    fn free_id(&self, system: bool, taken: &dyn Fn(u32) -> bool) -> u32 {
        if system {
            // Like useradd: system ids are handed out from the top down.
            (FIRST_SYSTEM_ID..=LAST_SYSTEM_ID).rev().find(|id| !taken(*id)).unwrap_or(LAST_SYSTEM_ID)
        } else {
            let highest = self.passwd.ids().chain(self.group.ids()).filter(|id| (FIRST_USER_ID..=LAST_USER_ID).contains(id)).max();
            let mut id = highest.map_or(FIRST_USER_ID, |id| id + 1);
            while taken(id) {
                id += 1;
            }
            id
        }
    }

    /// The gid of `name`, creating the group if it does not exist.
    pub fn ensure_group(&mut self, name: &str, system: bool, preferred_gid: Option<u32>) -> u32 {
        if let Some(gid) = self.gid(name) {
            return gid;
        }
        let group_ids: Vec<u32> = self.group.ids().collect();
        let gid = match preferred_gid.filter(|gid| !group_ids.contains(gid)) {
            Some(gid) => gid,
            None => self.free_id(system, &|id| group_ids.contains(&id)),
        };
        self.group.push(vec![name.into(), "x".into(), gid.to_string(), String::new()]);
        if self.gshadow.present {
            self.gshadow.push(vec![name.into(), "!".into(), String::new(), String::new()]);
        }
        self.changes.push(format!("created group {name} ({gid})"));
        gid
    }

    /// Adds `user` to the members of `group`.
    pub fn add_member(&mut self, group: &str, user: &str) {
        for table in [&mut self.group, &mut self.gshadow] {
            let Some(row) = table.find_mut(group) else { continue };
            let mut members: Vec<String> = row[3].split(',').filter(|m| !m.is_empty()).map(String::from).collect();
            if members.iter().any(|member| member == user) {
                continue;
            }
            members.push(user.to_string());
            row[3] = members.join(",");
            table.changed = true;
            if table.file == "/etc/group" {
                self.changes.push(format!("added {user} to group {group}"));
            }
        }
    }

    /// Creates the user if missing (coreos-cloudinit's rule: an existing
    /// account keeps its uid, home and shell), then adds its groups and sets
    /// its password hash if one is given. Returns the account.
    pub fn ensure_user(&mut self, user: &User) -> Account {
        if self.user(&user.name).is_none() {
            self.create_user(user);
        }
        for group in &user.groups {
            self.ensure_group(group, true, None);
            self.add_member(group, &user.name);
        }
        if let Some(hash) = &user.passwd {
            self.set_password(&user.name, hash);
        }
        self.user(&user.name).expect("the user was just ensured")
    }

    fn create_user(&mut self, user: &User) {
        let passwd_ids: Vec<u32> = self.passwd.ids().collect();
        let group_ids: Vec<u32> = self.group.ids().collect();
        // A private group gets the same number as the user when it is free.
        let uid = self.free_id(user.system, &|id| passwd_ids.contains(&id) || (user.primary_group.is_none() && !user.no_user_group && group_ids.contains(&id)));
        let gid = match (&user.primary_group, user.no_user_group) {
            (Some(group), _) => self.ensure_group(group, user.system, None),
            (None, true) => self.ensure_group("users", true, Some(100)),
            (None, false) => self.ensure_group(&user.name, user.system, Some(uid)),
        };
        let home = user.homedir.clone().unwrap_or_else(|| if user.system { "/".into() } else { format!("/home/{}", user.name) });
        let shell = user.shell.clone().unwrap_or_else(|| if user.system { "/sbin/nologin".into() } else { "/bin/sh".into() });
        self.passwd.push(vec![user.name.clone(), "x".into(), uid.to_string(), gid.to_string(), user.gecos.clone().unwrap_or_default(), home, shell]);
        self.shadow.push(vec![
            user.name.clone(),
            user.passwd.clone().unwrap_or_else(|| NO_PASSWORD.into()),
            days_since_epoch().to_string(),
            "0".into(),
            "99999".into(),
            "7".into(),
            String::new(),
            String::new(),
            String::new(),
        ]);
        self.changes.push(format!("created user {} ({uid}:{gid})", user.name));
    }

    fn set_password(&mut self, name: &str, hash: &str) {
        match self.shadow.find_mut(name) {
            Some(row) if row[1] == hash => {}
            Some(row) => {
                row[1] = hash.to_string();
                row[2] = days_since_epoch().to_string();
                self.shadow.changed = true;
                self.changes.push(format!("set the password of {name}"));
            }
            None => {
                let row = vec![name.into(), hash.into(), days_since_epoch().to_string(), "0".into(), "99999".into(), "7".into(), String::new(), String::new(), String::new()];
                self.shadow.push(row);
                self.changes.push(format!("set the password of {name}"));
            }
        }
        // The hash lives in shadow; passwd only says "look there".
        if let Some(row) = self.passwd.find_mut(name) {
            if row[1] != "x" {
                row[1] = "x".into();
                self.passwd.changed = true;
            }
        }
    }

    /// Writes the tables that changed. Shadow files belong to group `shadow`
    /// when there is one, as on Debian.
    pub fn save(&self, root: &Root) -> io::Result<bool> {
        let shadow_gid = self.gid("shadow").unwrap_or(0);
        let mut changed = self.passwd.save(root, 0)?;
        changed |= self.group.save(root, 0)?;
        changed |= self.shadow.save(root, shadow_gid)?;
        changed |= self.gshadow.save(root, shadow_gid)?;
        Ok(changed)
    }
}

fn days_since_epoch() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() / 86_400).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch_root() -> (tempfile::TempDir, Root) {
        let scratch = tempfile::tempdir().unwrap();
        let root = Root::new(scratch.path());
        root.write("/etc/passwd", b"root:x:0:0:root:/root:/bin/sh\ncore:x:500:500:CoreOS Admin:/home/core:/bin/sh\n", 0o644, 0, 0).unwrap();
        root.write("/etc/group", b"root:x:0:\nshadow:x:42:\ncore:x:500:\ndocker:x:233:\n", 0o644, 0, 0).unwrap();
        root.write("/etc/shadow", b"root:*:19000:0:99999:7:::\ncore:*:19000:0:99999:7:::\n", 0o640, 0, 42).unwrap();
        (scratch, root)
    }

    #[test]
    fn a_new_user_gets_ids_a_private_group_and_a_locked_password() {
        let (_scratch, root) = scratch_root();
        let mut accounts = Accounts::load(&root);
        let user = User { name: "alice".into(), groups: vec!["docker".into(), "wheel".into()], ..User::default() };
        let account = accounts.ensure_user(&user);
        assert_eq!((account.uid, account.gid, account.home.as_str()), (1000, 1000, "/home/alice"));
        assert!(accounts.save(&root).unwrap());
        let passwd = root.read_to_string("/etc/passwd").unwrap();
        assert!(passwd.ends_with("alice:x:1000:1000::/home/alice:/bin/sh\n"), "{passwd}");
        let group = root.read_to_string("/etc/group").unwrap();
        assert!(group.contains("docker:x:233:alice\n"), "{group}");
        assert!(group.contains("alice:x:1000:\n"), "{group}");
        assert!(group.contains("wheel:x:999:alice\n"), "{group}");
        let shadow = root.read_to_string("/etc/shadow").unwrap();
        assert!(shadow.lines().any(|line| line.starts_with("alice:*:")), "{shadow}");
    }

    #[test]
    fn ensuring_again_changes_nothing() {
        let (_scratch, root) = scratch_root();
        let user = User { name: "bob".into(), passwd: Some("$6$s$h".into()), groups: vec!["docker".into()], ..User::default() };
        let mut accounts = Accounts::load(&root);
        accounts.ensure_user(&user);
        assert!(accounts.save(&root).unwrap());
        let mut again = Accounts::load(&root);
        again.ensure_user(&user);
        assert!(again.changes.is_empty(), "{:?}", again.changes);
        assert!(!again.save(&root).unwrap());
    }

    #[test]
    fn system_users_count_down_from_999() {
        let (_scratch, root) = scratch_root();
        let mut accounts = Accounts::load(&root);
        let account = accounts.ensure_user(&User { name: "etcd".into(), system: true, ..User::default() });
        assert_eq!((account.uid, account.gid, account.home.as_str()), (999, 999, "/"));
    }

    #[test]
    fn an_existing_user_keeps_its_ids_and_gains_groups() {
        let (_scratch, root) = scratch_root();
        let mut accounts = Accounts::load(&root);
        let account = accounts.ensure_user(&User { name: "core".into(), groups: vec!["docker".into()], ..User::default() });
        assert_eq!((account.uid, account.gid), (500, 500));
        assert_eq!(accounts.changes, ["added core to group docker"]);
    }
}
