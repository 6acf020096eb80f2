//! How cloud-config asks the service supervisor to act on units. The
//! supervisor (stage 2 of `init`) owns the units; cloud-config only files
//! requests, in init's own protocol (`basalt_control::Request`, filed with
//! `basalt_control::file_request`), so it can ask for exactly what init
//! does.

use std::path::{Path, PathBuf};

use basalt_control::Request;

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

/// The control request for a unit command of `coreos.units`.
pub fn control_request(unit: &str, command: UnitCommand) -> Request {
    let unit = unit.to_string();
    match command {
        UnitCommand::Start => Request::Start(unit),
        UnitCommand::Stop => Request::Stop(unit),
        UnitCommand::Restart => Request::Restart(unit),
        UnitCommand::Reload => Request::ReloadUnit(unit),
        UnitCommand::TryRestart => Request::TryRestart(unit),
        UnitCommand::ReloadOrRestart => Request::ReloadOrRestart(unit),
        UnitCommand::ReloadOrTryRestart => Request::ReloadOrTryRestart(unit),
    }
}

/// The default: requests filed under the root for init to take.
pub struct RequestDir {
    root: PathBuf,
}

impl RequestDir {
    pub fn new(root: &Path) -> Self {
        RequestDir { root: root.to_path_buf() }
    }

    fn file(&self, request: &Request) -> Result<(), SupervisorError> {
        let path = self.root.join(basalt_control::REQUEST_DIR.trim_start_matches('/'));
        basalt_control::file_request(&self.root, request).map(|_| ()).map_err(|source| SupervisorError { path, source })
    }
}

impl Supervisor for RequestDir {
    fn reload(&mut self) -> Result<(), SupervisorError> {
        self.file(&Request::Reload)
    }

    fn request(&mut self, unit: &str, command: UnitCommand) -> Result<(), SupervisorError> {
        self.file(&control_request(unit, command))
    }
}

/// Reads back filed requests in order; for tests and for `show`.
pub fn pending_requests(root: &Path) -> Vec<String> {
    basalt_control::filed_requests(root).into_iter().map(|(_, line)| line).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unit_command_is_a_request_init_takes() {
        for (word, command) in UnitCommand::ALL {
            let line = control_request("web.service", command).encode();
            assert_eq!(line, format!("{word} web.service"));
            assert_eq!(Request::parse(&line).unwrap(), control_request("web.service", command), "{line}");
        }
    }

    #[test]
    fn requests_are_files_read_back_in_order() {
        let root = tempfile::tempdir().unwrap();
        let mut supervisor = RequestDir::new(root.path());
        supervisor.reload().unwrap();
        supervisor.request("etcd.service", UnitCommand::Start).unwrap();
        supervisor.request("web.service", UnitCommand::ReloadOrRestart).unwrap();
        assert_eq!(pending_requests(root.path()), ["reload", "start etcd.service", "reload-or-restart web.service"]);
    }
}
