//! Where user data comes from. One module per source behind one trait, in
//! the shape of afterburn's providers. Sources are tried in this order; the
//! first that is present provides the user data and metadata:
//!
//! 1. QEMU fw_cfg (`opt/org.basalt/user-data`, `opt/org.basalt/meta-data`)
//! 2. a URL on the kernel command line (`basalt.config_url=`)
//! 3. NoCloud (a vfat or iso9660 filesystem labelled `cidata`)
//! 4. config drive (a filesystem labelled `config-2`)
//! 5. EC2 instance metadata (IMDSv2, IMDSv1 fallback)
//!
//! The OEM partition is read as well, whichever of those answers: its
//! `cloud-config.yml` holds the platform's defaults and is applied first.
//! A source that is not there is not an error. The network sources (2 and
//! 5) get a temporary DHCP lease when the machine has no network yet (see
//! `network`).

mod block;
mod cmdline;
mod config_drive;
mod ec2;
mod fat;
pub mod fw_cfg;
mod iso9660;
pub mod network;
mod nocloud;
mod oem;

use std::path::PathBuf;
use std::time::Duration;

pub use block::{find_filesystem, BlockDevice, Filesystem};
pub use cmdline::{CmdlineUrl, KernelCommandLine};
pub use config_drive::ConfigDrive;
pub use ec2::Ec2;
pub use fw_cfg::FwCfg;
pub use nocloud::NoCloud;
pub use oem::Oem;

use crate::metadata::Metadata;

/// Nothing bigger than this is read from any source. User data between
/// `MAX_USER_DATA_BYTES` (1 MiB) and this is read so that the rejection can
/// say exactly how big it was.
pub const READ_LIMIT: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum DatasourceError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{device}: {message}")]
    Filesystem { device: PathBuf, message: String },
    #[error(transparent)]
    Http(#[from] crate::http::HttpError),
    #[error("{url}: HTTP status {status}")]
    Status { url: String, status: u16 },
    #[error("{what} is larger than {READ_LIMIT} bytes; not read")]
    TooLarge { what: String },
}

/// How long to keep trying a network source while the network comes up.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    pub attempts: u32,
    /// First pause; it doubles after each failure, up to `max_delay`.
    pub delay: Duration,
    pub max_delay: Duration,
    pub timeout: Duration,
}

impl Default for Retry {
    /// About half a minute in all before a network source is given up.
    fn default() -> Self {
        Retry { attempts: 10, delay: Duration::from_millis(500), max_delay: Duration::from_secs(5), timeout: Duration::from_secs(5) }
    }
}

/// Where the sources look. On a machine these are the real `/sys`, `/dev`,
/// `/proc/cmdline`; tests point them at scratch directories, image files and
/// a server on 127.0.0.1.
#[derive(Debug, Clone)]
pub struct Environment {
    pub sys: PathBuf,
    pub dev: PathBuf,
    pub cmdline: PathBuf,
    /// The EC2 metadata service. `None`: `http://169.254.169.254`, tried only
    /// when the firmware says this is EC2 or the kernel command line asks.
    pub imds_url: Option<String>,
    pub retry: Retry,
    /// Take a temporary DHCP lease for the network sources when there is no
    /// default route (the agent at boot); off for tests and tools.
    pub ephemeral_dhcp: bool,
}

impl Default for Environment {
    fn default() -> Self {
        Environment { sys: "/sys".into(), dev: "/dev".into(), cmdline: "/proc/cmdline".into(), imds_url: None, retry: Retry::default(), ephemeral_dhcp: false }
    }
}

impl Environment {
    pub fn kernel_command_line(&self) -> KernelCommandLine {
        KernelCommandLine::parse(&std::fs::read_to_string(&self.cmdline).unwrap_or_default())
    }
}

/// What a source found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Found {
    /// Which source, and where (`nocloud /dev/vdb`), for the log.
    pub source: String,
    /// `None` when the source is there but has no user data (an EC2 instance
    /// launched without any still has its keys and addresses).
    pub user_data: Option<Vec<u8>>,
    pub metadata: Metadata,
}

pub trait Datasource {
    fn name(&self) -> &'static str;
    /// `Ok(None)` when the source is not there.
    fn fetch(&self, environment: &Environment) -> Result<Option<Found>, DatasourceError>;
    /// Whether `fetch` will go to the network (and so needs one up).
    fn needs_network(&self, _environment: &Environment) -> bool {
        false
    }
}

/// The user-data sources in the order they are tried.
pub fn user_sources() -> Vec<Box<dyn Datasource>> {
    vec![Box::new(FwCfg), Box::new(CmdlineUrl), Box::new(NoCloud), Box::new(ConfigDrive), Box::new(Ec2)]
}

/// Everything found on this machine.
#[derive(Debug, Default)]
pub struct Discovery {
    pub oem: Option<Found>,
    pub user: Option<Found>,
    /// Sources that were there but failed, e.g. an unreadable disk.
    pub errors: Vec<String>,
    /// What was done on the way (a temporary DHCP lease), for the log.
    pub notes: Vec<String>,
}

pub fn discover(environment: &Environment) -> Discovery {
    let mut discovery = Discovery::default();
    match Oem.fetch(environment) {
        Ok(found) => discovery.oem = found,
        Err(error) => discovery.errors.push(format!("oem: {error}")),
    }
    let mut network = network::EphemeralNetwork::default();
    for source in user_sources() {
        if environment.ephemeral_dhcp && source.needs_network(environment) {
            match network.up(environment) {
                Ok(note) => discovery.notes.extend(note),
                Err(error) => discovery.errors.push(format!("{}: bringing up the network: {error}", source.name())),
            }
        }
        match source.fetch(environment) {
            Ok(Some(found)) => {
                discovery.user = Some(found);
                break;
            }
            Ok(None) => {}
            Err(error) => discovery.errors.push(format!("{}: {error}", source.name())),
        }
    }
    discovery.notes.extend(network.down());
    discovery
}

/// Calls `attempt` until it succeeds, fails for good, or the attempts run out.
pub(crate) fn with_retries<T>(retry: &Retry, mut attempt: impl FnMut() -> Result<T, crate::http::HttpError>) -> Result<T, crate::http::HttpError> {
    let mut delay = retry.delay;
    let mut tries = 0;
    loop {
        tries += 1;
        match attempt() {
            Err(error) if error.is_transient() && tries < retry.attempts.max(1) => {
                std::thread::sleep(delay);
                delay = (delay * 2).min(retry.max_delay);
            }
            other => return other,
        }
    }
}

#[cfg(test)]
pub(crate) mod testenv {
    //! Scratch `/sys` and `/dev` trees holding real filesystem images made
    //! with the real tools, as the tests need them.

    use std::path::{Path, PathBuf};
    use std::process::Command;

    pub struct Scratch {
        pub dir: tempfile::TempDir,
    }

    impl Scratch {
        pub fn new() -> Scratch {
            let scratch = Scratch { dir: tempfile::tempdir().unwrap() };
            std::fs::create_dir_all(scratch.sys().join("class/block")).unwrap();
            std::fs::create_dir_all(scratch.dev()).unwrap();
            scratch
        }

        pub fn sys(&self) -> PathBuf {
            self.dir.path().join("sys")
        }

        pub fn dev(&self) -> PathBuf {
            self.dir.path().join("dev")
        }

        pub fn environment(&self) -> super::Environment {
            super::Environment {
                sys: self.sys(),
                dev: self.dev(),
                cmdline: self.dir.path().join("cmdline"),
                imds_url: None,
                retry: super::Retry { attempts: 3, delay: std::time::Duration::from_millis(10), max_delay: std::time::Duration::from_millis(20), timeout: std::time::Duration::from_secs(5) },
                ephemeral_dhcp: false,
            }
        }

        /// Makes `image` appear as block device `name`, with a sysfs entry.
        pub fn add_device(&self, name: &str, image: &Path, uevent: &str) {
            let sys = self.sys().join("class/block").join(name);
            std::fs::create_dir_all(&sys).unwrap();
            std::fs::write(sys.join("uevent"), format!("DEVNAME={name}\n{uevent}")).unwrap();
            let size = std::fs::metadata(image).unwrap().len() / 512;
            std::fs::write(sys.join("size"), format!("{size}\n")).unwrap();
            std::fs::copy(image, self.dev().join(name)).unwrap();
        }

        /// A vfat image labelled `label` holding `files` (paths may have directories).
        pub fn vfat(&self, label: &str, files: &[(&str, &[u8])]) -> PathBuf {
            let image = self.dir.path().join(format!("{label}-{}.vfat", files.len()));
            let _ = std::fs::remove_file(&image);
            run(Command::new("mkfs.vfat").args(["-C", "-n", label]).arg(&image).arg("8192"), "dosfstools");
            let staging = self.dir.path().join("staging");
            for (path, content) in files {
                let _ = std::fs::remove_dir_all(&staging);
                let local = staging.join(path.replace('/', "_"));
                std::fs::create_dir_all(&staging).unwrap();
                std::fs::write(&local, content).unwrap();
                let mut directory = String::new();
                let components: Vec<&str> = path.split('/').collect();
                for component in &components[..components.len() - 1] {
                    directory.push('/');
                    directory.push_str(component);
                    let _ = Command::new("mmd").arg("-i").arg(&image).arg(format!("::{directory}")).output();
                }
                run(Command::new("mcopy").arg("-i").arg(&image).arg(&local).arg(format!("::/{path}")), "mtools");
            }
            image
        }

        /// An iso9660 image (Rock Ridge and Joliet, as cloud-localds and
        /// OpenStack make them) labelled `label` holding `files`.
        pub fn iso(&self, label: &str, files: &[(&str, &[u8])], extensions: &[&str]) -> PathBuf {
            let tree = self.dir.path().join(format!("iso-tree-{label}"));
            let _ = std::fs::remove_dir_all(&tree);
            for (path, content) in files {
                let local = tree.join(path);
                std::fs::create_dir_all(local.parent().unwrap()).unwrap();
                std::fs::write(local, content).unwrap();
            }
            let image = self.dir.path().join(format!("{label}.iso"));
            let _ = std::fs::remove_file(&image);
            run(Command::new("xorriso").args(["-as", "mkisofs", "-quiet", "-V", label]).args(extensions).arg("-o").arg(&image).arg(&tree), "xorriso");
            image
        }
    }

    /// Runs a tool the test needs; a missing tool fails the test naming its package.
    pub fn run(command: &mut Command, package: &str) {
        let output = command.output().unwrap_or_else(|error| panic!("could not run {:?} ({error}): install the Debian package {package} (listed in tools/host-packages.txt)", command.get_program()));
        assert!(output.status.success(), "{:?} failed: {}", command, String::from_utf8_lossy(&output.stderr));
    }
}
