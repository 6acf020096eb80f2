//! Applying user data to a root directory: `/` on a machine, a scratch
//! directory in tests. Idempotent: a second run with the same user data
//! changes nothing, per-instance work runs once per instance id and per-boot
//! work once per boot.

mod accounts;
mod block;
mod commands;
mod handoff;
mod root;
mod units;

use std::io;

pub use accounts::{Accounts, NO_PASSWORD};
pub use commands::{instance_dir, CommandRunner, ProcessRunner, BOOT_STATE_DIR, STATE_DIR};
pub use handoff::{container_json, etcd_env, network_file, store_seed_json, update_conf, CONTAINER_DIR, ETCD_FILE, ETCD_UNIT, FORMAT_VERSION, NETWORK_DIR, STORE_SEED_FILE, UPDATE_FILE};
pub use root::Root;
pub use units::install_targets;

use crate::config::{CloudConfig, User, WriteFile};
use crate::metadata::Metadata;
use crate::supervisor::Supervisor;
use crate::validate::UserData;

/// What one run did and what it could not do.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Log {
    pub changes: Vec<String>,
    pub failures: Vec<String>,
}

impl Log {
    pub fn change(&mut self, what: impl Into<String>) {
        self.changes.push(what.into());
    }

    pub fn fail(&mut self, what: impl Into<String>) {
        self.failures.push(what.into());
    }

    /// Records a filesystem step: a change when it changed something (and
    /// `what` is not empty), a failure when it failed. Returns whether it changed.
    pub fn outcome(&mut self, what: String, result: io::Result<bool>) -> bool {
        match result {
            Ok(true) => {
                if !what.is_empty() {
                    self.changes.push(what);
                }
                true
            }
            Ok(false) => false,
            Err(error) => {
                let what = if what.is_empty() { "saving cloud-config state".to_string() } else { what };
                self.failures.push(format!("{what}: {error}"));
                false
            }
        }
    }
}

pub struct Applier<'a> {
    pub root: Root,
    pub supervisor: &'a mut dyn Supervisor,
    pub runner: &'a mut dyn CommandRunner,
    /// Also set the running kernel's host name; only for the real `/`.
    pub live: bool,
}

/// The user name that `ssh_authorized_keys` and the platform's keys are for.
pub const CORE_USER: &str = "core";

impl Applier<'_> {
    /// Applies `user_data` with `metadata` from its datasource. The instance id
    /// must be known by now (see `metadata::instance_id`).
    pub fn apply(&mut self, user_data: &UserData, metadata: &Metadata) -> Log {
        let mut log = Log::default();
        let mut config = user_data.config.clone();
        let metadata = &with_static_private_ipv4(metadata, &config);
        config.substitute(&|text| metadata.substitute(text));
        let root = self.root.clone();

        self.apply_hostname(&config, metadata, &mut log);
        let mut accounts = Accounts::load(&root);
        self.apply_users(&config, metadata, &mut accounts, &mut log);
        for file in &config.write_files {
            apply_file(&root, &accounts, file, &mut log);
        }
        handoff::write_network(&root, &config.network, &mut log);
        let units_changed = units::write_units(&root, &config.units, &mut log);
        let etcd = handoff::write_etcd(&root, config.etcd.as_ref(), &mut log);
        let store_changed = handoff::write_store_cluster(&root, config.etcd.as_ref(), &mut log);
        if units_changed || etcd.enabled {
            if let Err(error) = self.supervisor.reload() {
                log.fail(error.to_string());
            }
        }
        if store_changed {
            match self.supervisor.request(handoff::STORE_UNIT, crate::config::UnitCommand::Restart) {
                Ok(()) => log.change(format!("asked the supervisor to restart {}", handoff::STORE_UNIT)),
                Err(error) => log.fail(error.to_string()),
            }
        }
        if etcd.changed_settings {
            match self.supervisor.request(ETCD_UNIT, crate::config::UnitCommand::Restart) {
                Ok(()) => log.change(format!("asked the supervisor to restart {ETCD_UNIT}")),
                Err(error) => log.fail(error.to_string()),
            }
        }
        self.request_unit_commands(&config, &mut log);
        handoff::write_containers(&root, &config.containers, &mut log);
        handoff::write_store_seed(&root, &config.store_seed, &mut log);
        handoff::write_update(&root, &config.update, &mut log);

        commands::run_bootcmd(&root, self.runner, &config.bootcmd, &mut log);
        let scripts: Vec<_> = user_data.scripts.iter().map(|script| crate::validate::Script { label: script.label.clone(), text: metadata.substitute(&script.text) }).collect();
        let instance_id = metadata.instance_id.clone().unwrap_or_else(|| "iid-unknown".into());
        commands::run_per_instance(&root, self.runner, &instance_id, &config.runcmd, &scripts, &mut log);
        log
    }

    fn apply_hostname(&mut self, config: &CloudConfig, metadata: &Metadata, log: &mut Log) {
        // User data wins over the platform's name, as with coreos-cloudinit.
        let hostname = config.hostname.clone().or_else(|| metadata.hostname.as_deref().map(short_enough));
        let hostname = hostname.filter(|name| {
            let valid = crate::config::valid_hostname(name);
            if !valid {
                log.fail(format!("hostname {name:?} (after substitution) is not a host name; not set"));
            }
            valid
        });
        if let Some(hostname) = &hostname {
            log.outcome(format!("set hostname {hostname}"), self.root.write("/etc/hostname", format!("{hostname}\n").as_bytes(), 0o644, 0, 0));
            if self.live {
                let current = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
                if current.trim() != hostname {
                    if let Err(error) = std::fs::write("/proc/sys/kernel/hostname", hostname) {
                        log.fail(format!("setting the running host name: {error}"));
                    }
                }
            }
        }
        if config.manage_etc_hosts {
            let names = hostname.map(|name| format!("{name} localhost")).unwrap_or_else(|| "localhost".into());
            let hosts = format!("# Written by basalt-cloud-config (manage_etc_hosts: localhost).\n127.0.0.1 {names}\n::1 {names}\n");
            log.outcome("wrote /etc/hosts".into(), self.root.write("/etc/hosts", hosts.as_bytes(), 0o644, 0, 0));
        }
        // CoreOS units read these through EnvironmentFile=/etc/environment.
        let variables: Vec<String> = [
            ("COREOS_PUBLIC_IPV4", &metadata.public_ipv4),
            ("COREOS_PRIVATE_IPV4", &metadata.private_ipv4),
            ("COREOS_PUBLIC_IPV6", &metadata.public_ipv6),
            ("COREOS_PRIVATE_IPV6", &metadata.private_ipv6),
        ]
        .into_iter()
        .filter_map(|(name, value)| value.as_ref().map(|value| format!("{name}={value}")))
        .collect();
        if !variables.is_empty() {
            let existing = self.root.read_to_string("/etc/environment").unwrap_or_default();
            let updated = block::replace(&existing, &variables);
            log.outcome("wrote /etc/environment".into(), self.root.write("/etc/environment", updated.as_bytes(), 0o644, 0, 0));
        }
    }

    fn apply_users(&mut self, config: &CloudConfig, metadata: &Metadata, accounts: &mut Accounts, log: &mut Log) {
        let mut core_keys = config.ssh_authorized_keys.clone();
        for key in &metadata.public_keys {
            if !core_keys.contains(key) {
                core_keys.push(key.clone());
            }
        }
        let mut users: Vec<User> = config.users.clone();
        // The image should ship `core`; if it does not, keys for it still need an account.
        if !core_keys.is_empty() && !users.iter().any(|user| user.name == CORE_USER) {
            users.insert(0, User { name: CORE_USER.into(), ..User::default() });
        }
        let existed: Vec<bool> = users.iter().map(|user| accounts.user(&user.name).is_some()).collect();
        let ensured: Vec<_> = users.iter().map(|user| accounts.ensure_user(user)).collect();
        log.changes.append(&mut accounts.changes);
        log.outcome(String::new(), accounts.save(&self.root));

        for ((user, account), existed) in users.iter().zip(&ensured).zip(existed) {
            if !existed && !user.no_create_home && account.home != "/" {
                log.outcome(format!("created home {}", account.home), self.root.ensure_dir(&account.home, 0o755, account.uid, account.gid));
            }
            let mut keys = user.ssh_authorized_keys.clone();
            if user.name == CORE_USER {
                keys.extend(core_keys.iter().filter(|key| !user.ssh_authorized_keys.contains(key)).cloned());
            }
            // No keys at all leaves the file alone: a datasource that is down
            // for one boot must not lock everyone out.
            if keys.is_empty() {
                continue;
            }
            let ssh_dir = format!("{}/.ssh", account.home.trim_end_matches('/'));
            log.outcome(String::new(), self.root.ensure_dir(&ssh_dir, 0o700, account.uid, account.gid));
            let path = format!("{ssh_dir}/authorized_keys");
            let existing = self.root.read_to_string(&path).unwrap_or_default();
            let updated = block::replace(&existing, &keys);
            log.outcome(format!("wrote {} SSH key(s) for {} to {path}", keys.len(), user.name), self.root.write(&path, updated.as_bytes(), 0o600, account.uid, account.gid));
        }
    }

    fn request_unit_commands(&mut self, config: &CloudConfig, log: &mut Log) {
        let requests: Vec<_> = config.units.iter().filter_map(|unit| unit.command.map(|command| (unit.name.as_str(), command))).collect();
        if requests.is_empty() {
            return;
        }
        let marker = format!("{BOOT_STATE_DIR}/unit-commands.done");
        if self.root.exists(&marker) {
            return;
        }
        for (unit, command) in requests {
            match self.supervisor.request(unit, command) {
                Ok(()) => log.change(format!("asked the supervisor to {} {unit}", command.as_str())),
                Err(error) => log.fail(error.to_string()),
            }
        }
        log.outcome(String::new(), self.root.write(&marker, b"done\n", 0o644, 0, 0));
    }
}

/// `$private_ipv4` where the datasource does not know it (QEMU's fw_cfg,
/// NoCloud without `local-ipv4`): the first IPv4 address the user data
/// itself gives an interface, in `network.interfaces` or a `.network`
/// unit. cloud-config runs before the network is up, so that is the address
/// the machine is about to have.
fn with_static_private_ipv4(metadata: &Metadata, config: &CloudConfig) -> Metadata {
    let mut metadata = metadata.clone();
    if metadata.private_ipv4.is_none() {
        let ipv4 = |address: &str| address.split('/').next().and_then(|ip| ip.trim().parse::<std::net::Ipv4Addr>().ok()).map(|ip| ip.to_string());
        let from_interfaces = config.network.iter().flat_map(|interface| interface.addresses.iter()).find_map(|address| ipv4(address));
        let from_units = || {
            config
                .units
                .iter()
                .filter(|unit| unit.name.ends_with(".network"))
                .filter_map(|unit| unit.content.as_deref())
                .find_map(|content| content.lines().filter_map(|line| line.trim().strip_prefix("Address=")).find_map(ipv4))
        };
        metadata.private_ipv4 = from_interfaces.or_else(from_units);
    }
    metadata
}

/// The kernel keeps at most 64 bytes of host name; a longer platform name
/// (an FQDN) is cut to its first label.
fn short_enough(name: &str) -> String {
    if name.len() <= 63 {
        name.to_string()
    } else {
        name.split('.').next().unwrap_or(name).chars().take(63).collect()
    }
}

fn apply_file(root: &Root, accounts: &Accounts, file: &WriteFile, log: &mut Log) {
    let (user, group) = match file.owner.split_once(':') {
        Some((user, group)) => (user, Some(group)),
        None => (file.owner.as_str(), None),
    };
    let Some(uid) = accounts.resolve_uid(user) else {
        log.fail(format!("write_files {}: owner {user:?} does not exist; file not written", file.path));
        return;
    };
    let gid = match group {
        Some(group) => accounts.resolve_gid(group),
        None => accounts.user(user).map(|account| account.gid).or(Some(0)),
    };
    let Some(gid) = gid else {
        log.fail(format!("write_files {}: group {:?} does not exist; file not written", file.path, group.unwrap_or_default()));
        return;
    };
    log.outcome(format!("wrote {}", file.path), root.write(&file.path, &file.content, file.permissions, uid, gid));
}

#[cfg(test)]
mod tests;
