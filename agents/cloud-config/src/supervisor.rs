//! How cloud-config asks the service supervisor to act on units. The
//! supervisor (stage 2 of `init`) owns the units; cloud-config only files
//! requests.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::config::UnitCommand;

#[derive(Debug, thiserror::Error)]
#[error("could not file a request with the supervisor at {path}: {source}")]
pub struct SupervisorError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

pub trait Supervisor {
    /// Unit files or their enablement changed: read them again.
    fn reload(&mut self) -> Result<(), SupervisorError>;
    /// Start, stop, restart… a unit.
    fn request(&mut self, unit: &str, command: UnitCommand) -> Result<(), SupervisorError>;
}

/// Where requests are filed, under the root.
pub const REQUEST_DIR: &str = "run/basalt/supervisor/requests";

/// The default: one small file per request in `/run/basalt/supervisor/requests/`.
///
/// Each file is named `<20-digit nanoseconds since the epoch>-<4-digit
/// sequence>.request`, holds one line (`reload`, or `<command> <unit>` such as
/// `start etcd.service`), and appears atomically (written as `.tmp`, then
/// renamed). The supervisor handles them in name order and deletes each when
/// done. /run is a tmpfs, so a request never outlives the boot it was made in.
pub struct RequestDir {
    dir: PathBuf,
}

static SEQUENCE: AtomicU64 = AtomicU64::new(0);

impl RequestDir {
    pub fn new(root: &Path) -> Self {
        RequestDir { dir: root.join(REQUEST_DIR) }
    }

    fn file(&self, line: &str) -> Result<(), SupervisorError> {
        let error = |source| SupervisorError { path: self.dir.clone(), source };
        std::fs::create_dir_all(&self.dir).map_err(error)?;
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let sequence = SEQUENCE.fetch_add(1, Ordering::Relaxed) % 10_000;
        let name = format!("{nanos:020}-{sequence:04}.request");
        let temporary = self.dir.join(format!(".{name}.tmp"));
        let mut file = std::fs::File::create(&temporary).map_err(error)?;
        file.write_all(format!("{line}\n").as_bytes()).map_err(error)?;
        file.sync_all().map_err(error)?;
        std::fs::rename(&temporary, self.dir.join(name)).map_err(error)
    }
}

impl Supervisor for RequestDir {
    fn reload(&mut self) -> Result<(), SupervisorError> {
        self.file("reload")
    }

    fn request(&mut self, unit: &str, command: UnitCommand) -> Result<(), SupervisorError> {
        self.file(&format!("{} {unit}", command.as_str()))
    }
}

/// Reads back filed requests in order; for tests and for `show`.
pub fn pending_requests(root: &Path) -> Vec<String> {
    let dir = root.join(REQUEST_DIR);
    let mut names: Vec<_> = std::fs::read_dir(&dir).map(|entries| entries.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect()).unwrap_or_default();
    names.retain(|name| name.ends_with(".request"));
    names.sort();
    names.iter().filter_map(|name| std::fs::read_to_string(dir.join(name)).ok()).map(|line| line.trim_end().to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_files_read_back_in_order() {
        let root = tempfile::tempdir().unwrap();
        let mut supervisor = RequestDir::new(root.path());
        supervisor.reload().unwrap();
        supervisor.request("etcd.service", UnitCommand::Start).unwrap();
        supervisor.request("web.service", UnitCommand::Restart).unwrap();
        assert_eq!(pending_requests(root.path()), ["reload", "start etcd.service", "restart web.service"]);
        let leftovers = std::fs::read_dir(root.path().join(REQUEST_DIR)).unwrap().filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".tmp"));
        assert_eq!(leftovers.count(), 0);
    }
}
