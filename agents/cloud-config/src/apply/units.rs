//! `coreos.units`: unit files, drop-ins, masks and enablement written the way
//! systemd lays them out, which is what basalt's supervisor reads.

use super::root::Root;
use super::Log;
use crate::config::Unit;

use basalt_unit::install::ETC_UNITS;
const RUN_UNITS: &str = "/run/systemd/system";
const ETC_NETWORK: &str = "/etc/systemd/network";
const RUN_NETWORK: &str = "/run/systemd/network";
/// Where an image's own units may already be, for `enable` without `content`.
const VENDOR_UNITS: &[&str] = &["/etc/systemd/system", "/run/systemd/system", "/usr/lib/systemd/system", "/lib/systemd/system"];

/// Writes every unit; returns whether anything on disk changed (so the
/// supervisor must re-read its units).
pub fn write_units(root: &Root, units: &[Unit], log: &mut Log) -> bool {
    let mut changed = false;
    for unit in units {
        if unit.is_networkd() {
            // For the network service, not the supervisor: no reload needed.
            let base = if unit.runtime { RUN_NETWORK } else { ETC_NETWORK };
            if let Some(content) = &unit.content {
                let path = format!("{base}/{}", unit.name);
                log.outcome(format!("wrote network file {path}"), root.write(&path, content.as_bytes(), 0o644, 0, 0));
            }
            for drop_in in &unit.drop_ins {
                let path = format!("{base}/{}.d/{}", unit.name, drop_in.name);
                log.outcome(format!("wrote drop-in {path}"), root.write(&path, drop_in.content.as_bytes(), 0o644, 0, 0));
            }
            continue;
        }
        let base = if unit.runtime { RUN_UNITS } else { ETC_UNITS };
        let unit_path = format!("{base}/{}", unit.name);
        if unit.mask {
            if unit.content.is_some() || unit.enable {
                log.fail(format!("unit {}: masked, so its content and enable were not applied", unit.name));
            }
            changed |= log.outcome(format!("masked {}", unit.name), root.ensure_symlink(&unit_path, "/dev/null"));
            continue;
        }
        if let Some(content) = &unit.content {
            changed |= log.outcome(format!("wrote unit {unit_path}"), root.write(&unit_path, content.as_bytes(), 0o644, 0, 0));
        } else if std::fs::read_link(root.path(&unit_path)).is_ok_and(|target| target.as_os_str() == "/dev/null") {
            // Declared again without mask: unmask.
            changed |= log.outcome(format!("unmasked {}", unit.name), root.remove(&unit_path));
        }
        for drop_in in &unit.drop_ins {
            let path = format!("{base}/{}.d/{}", unit.name, drop_in.name);
            changed |= log.outcome(format!("wrote drop-in {path}"), root.write(&path, drop_in.content.as_bytes(), 0o644, 0, 0));
        }
        if unit.enable {
            changed |= enable(root, unit, log);
        }
    }
    changed
}

/// Links the unit into each `WantedBy=`/`RequiredBy=` target of its
/// `[Install]` section, as `systemctl enable` would.
fn enable(root: &Root, unit: &Unit, log: &mut Log) -> bool {
    let template = basalt_unit::name::template_of(&unit.name);
    let found = VENDOR_UNITS.iter().flat_map(|dir| [format!("{dir}/{}", unit.name)].into_iter().chain(template.clone().map(|t| format!("{dir}/{t}"))));
    let located = match &unit.content {
        Some(content) => Some((format!("{}/{}", if unit.runtime { RUN_UNITS } else { ETC_UNITS }, unit.name), content.clone())),
        None => found.into_iter().find_map(|path| root.read_to_string(&path).map(|content| (path, content))),
    };
    let Some((unit_path, content)) = located else {
        log.fail(format!("unit {}: enable: no content given and no unit file of that name in the image", unit.name));
        return false;
    };
    let targets = install_targets(&content);
    if targets.is_empty() {
        log.fail(format!("unit {}: enable: its [Install] section has no WantedBy= or RequiredBy=", unit.name));
        return false;
    }
    let mut changed = false;
    for (kind, target) in targets {
        let link = format!("{ETC_UNITS}/{target}.{kind}/{}", unit.name);
        changed |= log.outcome(format!("enabled {} in {target}", unit.name), root.ensure_symlink(&link, &unit_path));
    }
    changed
}

pub use basalt_unit::install::install_targets;
