//! `coreos.units[]` entries.

use serde::Serialize;

use super::fields::{clean, items, Fields};
use crate::report::Report;
use crate::yaml::Node;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnitCommand {
    Start,
    Stop,
    Restart,
    Reload,
    TryRestart,
    ReloadOrRestart,
    ReloadOrTryRestart,
}

impl UnitCommand {
    pub const ALL: [(&'static str, UnitCommand); 7] = [
        ("start", UnitCommand::Start),
        ("stop", UnitCommand::Stop),
        ("restart", UnitCommand::Restart),
        ("reload", UnitCommand::Reload),
        ("try-restart", UnitCommand::TryRestart),
        ("reload-or-restart", UnitCommand::ReloadOrRestart),
        ("reload-or-try-restart", UnitCommand::ReloadOrTryRestart),
    ];

    pub fn as_str(self) -> &'static str {
        Self::ALL.iter().find(|(_, command)| *command == self).map(|(name, _)| *name).unwrap_or("start")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DropIn {
    pub name: String,
    pub content: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unit {
    pub name: String,
    pub content: Option<String>,
    pub enable: bool,
    pub mask: bool,
    /// Written under /run/systemd/system, gone after a reboot.
    pub runtime: bool,
    pub command: Option<UnitCommand>,
    pub drop_ins: Vec<DropIn>,
}

const KNOWN: &[&str] = &["name", "content", "enable", "mask", "runtime", "command", "drop_ins"];

/// Unit types systemd has that basalt's init does not run: refused by
/// name, so a unit is never accepted here and then silently never loaded.
const UNRUN_SUFFIXES: &[&str] = &["device", "mount", "automount", "swap", "path", "slice", "scope"];

/// systemd-networkd files, which coreos-cloudinit also accepted under
/// coreos.units (the usual way to give CoreOS a static address).
pub const NETWORKD_SUFFIXES: &[&str] = &["network", "netdev", "link"];

impl Unit {
    pub fn is_networkd(&self) -> bool {
        self.name.rsplit_once('.').is_some_and(|(_, suffix)| NETWORKD_SUFFIXES.contains(&suffix))
    }
}

pub fn parse_unit(node: &Node, path: &str, report: &mut Report) -> Option<Unit> {
    clean(report, |report| {
        let fields = Fields::of(node, path, report)?;
        fields.warn_unknown(KNOWN, report);
        let Some(name_node) = fields.get("name") else {
            report.error(path, Some(node.position), "a unit needs a name");
            return None;
        };
        let name = fields.string("name", report)?;
        let suffix = name.rsplit_once('.').map_or("", |(_, suffix)| suffix);
        if basalt_unit::name::valid(&name) && UNRUN_SUFFIXES.contains(&suffix) {
            report.error(
                fields.key_path("name"),
                Some(name_node.position),
                format!("{name:?}: .{suffix} units are not run by basalt's init, which runs {} units", basalt_unit::name::SUPPORTED_SUFFIXES.map(|s| format!(".{s}")).join(", ")),
            );
        } else if !valid_unit_name(&name) {
            report.error(
                fields.key_path("name"),
                Some(name_node.position),
                format!(
                    "{name:?} is not a unit name such as \"etcd.service\" (suffixes: {})",
                    basalt_unit::name::SUPPORTED_SUFFIXES.iter().chain(NETWORKD_SUFFIXES).copied().collect::<Vec<_>>().join(", ")
                ),
            );
        }
        let command = match fields.get("command") {
            None => None,
            Some(node) => {
                let text = fields.string("command", report)?;
                match UnitCommand::ALL.iter().find(|(spelling, _)| *spelling == text) {
                    Some((_, command)) => Some(*command),
                    None => {
                        report.error(
                            fields.key_path("command"),
                            Some(node.position),
                            format!("{text:?} is not a unit command; expected one of start, stop, restart, reload, try-restart, reload-or-restart, reload-or-try-restart"),
                        );
                        None
                    }
                }
            }
        };
        let mut drop_ins = Vec::new();
        if let Some(list) = fields.get("drop_ins") {
            for (item_path, item) in items(list, &fields.key_path("drop_ins"), report) {
                let Some(drop_in_fields) = Fields::of(item, &item_path, report) else { continue };
                drop_in_fields.warn_unknown(&["name", "content"], report);
                let name = drop_in_fields.string("name", report);
                match &name {
                    Some(name) if name.ends_with(".conf") && !name.contains('/') && name.len() > 5 => {}
                    _ => report.error(drop_in_fields.key_path("name"), Some(drop_in_fields.get("name").map_or(item.position, |n| n.position)), "a drop-in needs a name ending in \".conf\" (no '/')"),
                }
                let content = drop_in_fields.string("content", report).unwrap_or_default();
                if let Some(name) = name {
                    drop_ins.push(DropIn { name, content });
                }
            }
        }
        let is_networkd = name.rsplit_once('.').is_some_and(|(_, suffix)| NETWORKD_SUFFIXES.contains(&suffix));
        for key in ["command", "enable", "mask"] {
            if let (true, Some(position)) = (is_networkd, fields.key_position(key)) {
                report.warning(fields.key_path(key), Some(position), "networkd files are read by the network service, not run; ignored");
            }
        }
        Some(Unit {
            name,
            content: fields.string("content", report),
            enable: fields.bool("enable", report).unwrap_or(false) && !is_networkd,
            mask: fields.bool("mask", report).unwrap_or(false) && !is_networkd,
            runtime: fields.bool("runtime", report).unwrap_or(false),
            command: command.filter(|_| !is_networkd),
            drop_ins,
        })
    })
}

/// `name.suffix` or `name@instance.suffix` (lib/unit's rules) of a unit
/// init runs or a networkd file.
pub fn valid_unit_name(name: &str) -> bool {
    let suffix = name.rsplit_once('.').map_or("", |(_, suffix)| suffix);
    basalt_unit::name::valid(name) && (basalt_unit::name::SUPPORTED_SUFFIXES.contains(&suffix) || NETWORKD_SUFFIXES.contains(&suffix))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml;

    fn parse(text: &str) -> (Option<Unit>, Report) {
        let node = yaml::parse(text).unwrap();
        let mut report = Report::default();
        (parse_unit(&node, "coreos.units[0]", &mut report), report)
    }

    #[test]
    fn a_unit_with_drop_ins_parses() {
        let (unit, report) = parse("name: etcd.service\ncommand: start\nenable: true\ndrop_ins:\n  - name: 50-env.conf\n    content: |\n      [Service]\n      Environment=A=1\n");
        assert!(report.problems.is_empty(), "{report}");
        let unit = unit.unwrap();
        assert_eq!(unit.command, Some(UnitCommand::Start));
        assert_eq!(unit.drop_ins[0].content, "[Service]\nEnvironment=A=1\n");
    }

    #[test]
    fn an_unknown_command_fails_the_unit() {
        let (unit, report) = parse("name: a.service\ncommand: launch\n");
        assert!(unit.is_none());
        assert!(report.to_string().starts_with("2:10: error: coreos.units[0].command: \"launch\" is not a unit command"), "{report}");
    }

    #[test]
    fn unit_names() {
        assert!(valid_unit_name("etcd.service"));
        assert!(valid_unit_name("sinatra@1.service"));
        assert!(valid_unit_name("nginx@.service"));
        assert!(!valid_unit_name("etcd"));
        assert!(!valid_unit_name("../x.service"));
        assert!(!valid_unit_name("a.exe"));
        assert!(valid_unit_name("backup.timer"));
        assert!(valid_unit_name("docker-tcp.socket"));
        assert!(!valid_unit_name("data.mount"));
        assert!(valid_unit_name("static.network"));
        let (unit, report) = parse("name: data.mount\ncontent: |\n  [Mount]\n  What=/dev/vdb\n");
        assert!(unit.is_none());
        assert!(report.to_string().contains("\"data.mount\": .mount units are not run by basalt's init, which runs .service, .target, .socket, .timer units"), "{report}");
    }
}
