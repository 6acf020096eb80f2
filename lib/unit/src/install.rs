//! Where unit files live and how they are enabled, as systemd lays them
//! out: the unit directories in priority order, and the `.wants/` and
//! `.requires/` links an `[Install]` section asks for. init reads this
//! layout; cloud-config and `systemctl enable` write it.

use std::path::{Path, PathBuf};

/// Lowest priority first: a unit in /etc replaces one of the same name in
/// /run (units for this boot only, e.g. cloud-config's `runtime: true`),
/// which replaces one in /usr, as with systemd.
pub const UNIT_DIRS: [&str; 3] = ["/usr/lib/systemd/system", "/run/systemd/system", "/etc/systemd/system"];

/// The user's units, and where enablement links go.
pub const ETC_UNITS: &str = "/etc/systemd/system";

/// (`wants` or `requires`, target) pairs from a unit's `[Install]` section.
pub fn install_targets(content: &str) -> Vec<(&'static str, String)> {
    let mut targets = Vec::new();
    let mut in_install = false;
    for line in content.lines().map(str::trim) {
        if line.starts_with('[') {
            in_install = line == "[Install]";
            continue;
        }
        if !in_install {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else { continue };
        let kind = match key.trim() {
            "WantedBy" => "wants",
            "RequiredBy" => "requires",
            _ => continue,
        };
        for target in value.split_whitespace() {
            if !targets.iter().any(|(k, t)| *k == kind && t == target) {
                targets.push((kind, target.to_string()));
            }
        }
    }
    targets
}

/// The file unit `name` is read from under `root` (`/` on the running
/// system): the one in the directory of highest priority, or for an
/// instance its template's. A link to /dev/null (a mask) is returned as is.
pub fn unit_file(root: &Path, name: &str) -> Option<PathBuf> {
    let template = crate::name::template_of(name);
    for candidate in std::iter::once(name.to_string()).chain(template) {
        for dir in UNIT_DIRS.iter().rev() {
            let path = root.join(dir.trim_start_matches('/')).join(&candidate);
            if path.symlink_metadata().is_ok() {
                return Some(Path::new(dir).join(&candidate));
            }
        }
    }
    None
}

/// Whether the unit file at `path` (as [`unit_file`] gives it) is a mask.
pub fn is_mask(root: &Path, path: &Path) -> bool {
    std::fs::read_link(root.join(path.strip_prefix("/").unwrap_or(path))).is_ok_and(|t| t == Path::new("/dev/null"))
}

/// The enablement links of unit `name` that exist under `root`, in every
/// unit directory: `…/multi-user.target.wants/NAME`.
pub fn enablement_links(root: &Path, name: &str) -> Vec<PathBuf> {
    let mut links = Vec::new();
    for dir in UNIT_DIRS {
        let Ok(entries) = std::fs::read_dir(root.join(dir.trim_start_matches('/'))) else { continue };
        let mut found: Vec<PathBuf> = entries
            .flatten()
            .filter(|e| e.file_name().to_str().is_some_and(|n| n.ends_with(".wants") || n.ends_with(".requires")))
            .map(|e| Path::new(dir).join(e.file_name()).join(name))
            .filter(|link| root.join(link.strip_prefix("/").unwrap_or(link)).symlink_metadata().is_ok())
            .collect();
        found.sort();
        links.extend(found);
    }
    links
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn install_sections_name_their_targets() {
        let content = "[Unit]\nDescription=x\n[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target default.target\nRequiredBy=web.target\n";
        assert_eq!(install_targets(content), [("wants", "multi-user.target".to_string()), ("wants", "default.target".to_string()), ("requires", "web.target".to_string())]);
        assert!(install_targets("[Service]\nWantedBy=x.target\n").is_empty());
    }

    #[test]
    fn unit_files_are_found_by_priority_and_template() {
        let root = tempfile::tempdir().unwrap();
        let dir = |d: &str| {
            let p = root.path().join(d.trim_start_matches('/'));
            std::fs::create_dir_all(&p).unwrap();
            p
        };
        std::fs::write(dir("/usr/lib/systemd/system").join("web.service"), "").unwrap();
        std::fs::write(dir("/usr/lib/systemd/system").join("echo@.service"), "").unwrap();
        assert_eq!(unit_file(root.path(), "web.service").unwrap(), Path::new("/usr/lib/systemd/system/web.service"));
        std::fs::write(dir("/etc/systemd/system").join("web.service"), "").unwrap();
        assert_eq!(unit_file(root.path(), "web.service").unwrap(), Path::new("/etc/systemd/system/web.service"));
        assert_eq!(unit_file(root.path(), "echo@1.service").unwrap(), Path::new("/usr/lib/systemd/system/echo@.service"));
        assert!(unit_file(root.path(), "nope.service").is_none());
        std::os::unix::fs::symlink("/dev/null", dir("/etc/systemd/system").join("masked.service")).unwrap();
        assert!(is_mask(root.path(), &unit_file(root.path(), "masked.service").unwrap()));
        assert!(!is_mask(root.path(), Path::new("/etc/systemd/system/web.service")));
        std::os::unix::fs::symlink("/etc/systemd/system/web.service", dir("/etc/systemd/system/multi-user.target.wants").join("web.service")).unwrap();
        assert_eq!(enablement_links(root.path(), "web.service"), [Path::new("/etc/systemd/system/multi-user.target.wants/web.service")]);
        assert!(enablement_links(root.path(), "echo@1.service").is_empty());
    }
}
