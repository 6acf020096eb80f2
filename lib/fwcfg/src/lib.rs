//! QEMU's fw_cfg, as the guest reads it: `-fw_cfg name=opt/org.basalt/X,...`
//! on the QEMU command line shows up, once the `qemu_fw_cfg` kernel module is
//! loaded (init's coldplug loads it on QEMU machines), as
//! `/sys/firmware/qemu_fw_cfg/by_name/opt/org.basalt/X/raw`. Only whoever
//! starts the hypervisor can set an entry: a guest program, a cloud's
//! metadata service or user data cannot, and on hardware or on EC2 there is
//! no fw_cfg device at all.
//!
//! Also here, because fw_cfg gates it: the console-shell setting of an image
//! ([`ConsoleShell`]), which the builder puts on the UKI's command line
//! (`basalt.console_shell=`), init obeys, and `basalt flash`/`publish` read
//! back from a built image.

use std::io::Read;
use std::path::{Path, PathBuf};

/// Where sysfs lists fw_cfg entries by name, below the sysfs root.
pub const BY_NAME: &str = "firmware/qemu_fw_cfg/by_name";

/// The entry that lets an image built with `console_shell: hypervisor` start
/// its console shell: value `1`.
pub const CONSOLE_SHELL_ENTRY: &str = "opt/org.basalt/console-shell";

/// The kernel command-line key that carries an image's [`ConsoleShell`].
pub const CONSOLE_SHELL_PARAM: &str = "basalt.console_shell";

/// The `raw` file of entry `name` under the sysfs root `sys` (normally `/sys`).
pub fn entry_path(sys: &Path, name: &str) -> PathBuf {
    sys.join(BY_NAME).join(name).join("raw")
}

/// Why an entry could not be read.
#[derive(Debug)]
pub enum ReadError {
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The entry holds more than the caller's limit.
    TooLarge {
        name: String,
        limit: usize,
    },
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Io { path, source } => write!(f, "reading {}: {source}", path.display()),
            ReadError::TooLarge { name, limit } => write!(f, "fw_cfg {name} is larger than {limit} bytes"),
        }
    }
}

impl std::error::Error for ReadError {}

/// The bytes of entry `name`, at most `limit` of them; `None` when the entry
/// (or fw_cfg itself) is absent.
pub fn read(sys: &Path, name: &str, limit: usize) -> Result<Option<Vec<u8>>, ReadError> {
    let path = entry_path(sys, name);
    let file = match std::fs::File::open(&path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(ReadError::Io { path, source }),
    };
    let mut bytes = Vec::new();
    file.take(limit as u64 + 1).read_to_end(&mut bytes).map_err(|source| ReadError::Io { path: path.clone(), source })?;
    if bytes.len() > limit {
        return Err(ReadError::TooLarge { name: name.to_string(), limit });
    }
    Ok(Some(bytes))
}

/// A short text setting, trimmed; `None` when absent, empty, unreadable or
/// not UTF-8.
pub fn setting(sys: &Path, name: &str) -> Option<String> {
    let bytes = read(sys, name, 4096).ok()??;
    let text = String::from_utf8(bytes).ok()?.trim().to_string();
    (!text.is_empty()).then_some(text)
}

/// Whether an image offers a root shell on its serial console.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConsoleShell {
    /// Never.
    #[default]
    Never,
    /// Only when the hypervisor sets fw_cfg `opt/org.basalt/console-shell`
    /// to `1` (what `basalt run` and the end-to-end tests do).
    Hypervisor,
    /// On every boot, wherever the image runs: development only.
    Always,
}

impl ConsoleShell {
    pub const ALL: [ConsoleShell; 3] = [ConsoleShell::Never, ConsoleShell::Hypervisor, ConsoleShell::Always];

    pub fn as_str(self) -> &'static str {
        match self {
            ConsoleShell::Never => "never",
            ConsoleShell::Hypervisor => "hypervisor",
            ConsoleShell::Always => "always",
        }
    }

    pub fn parse(s: &str) -> Option<ConsoleShell> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// The value named on a kernel command line (the last one counts, as for
    /// the kernel); `None` when the line names none or an unknown one.
    pub fn from_cmdline(cmdline: &str) -> Option<ConsoleShell> {
        let value = cmdline.split_whitespace().filter_map(|w| w.strip_prefix(CONSOLE_SHELL_PARAM)?.strip_prefix('=')).next_back()?;
        Self::parse(value)
    }

    /// The command-line word for this setting.
    pub fn cmdline_word(self) -> String {
        format!("{CONSOLE_SHELL_PARAM}={}", self.as_str())
    }

    /// Whether this boot gets the shell, given the machine's fw_cfg (sysfs
    /// root `sys`).
    pub fn enabled(self, sys: &Path) -> bool {
        match self {
            ConsoleShell::Never => false,
            ConsoleShell::Always => true,
            ConsoleShell::Hypervisor => setting(sys, CONSOLE_SHELL_ENTRY).as_deref() == Some("1"),
        }
    }
}

impl std::fmt::Display for ConsoleShell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(sys: &Path, name: &str, bytes: &[u8]) {
        let p = entry_path(sys, name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }

    #[test]
    fn entries_are_read_from_sysfs_with_a_limit() {
        let sys = tempfile::tempdir().unwrap();
        assert_eq!(read(sys.path(), "opt/org.basalt/user-data", 10).unwrap(), None);
        put(sys.path(), "opt/org.basalt/user-data", b"0123456789");
        assert_eq!(read(sys.path(), "opt/org.basalt/user-data", 10).unwrap().unwrap(), b"0123456789");
        let e = read(sys.path(), "opt/org.basalt/user-data", 9).unwrap_err();
        assert!(e.to_string().contains("larger than 9 bytes"), "{e}");
        put(sys.path(), "opt/org.basalt/imds-url", b"  http://x/\n");
        assert_eq!(setting(sys.path(), "opt/org.basalt/imds-url").as_deref(), Some("http://x/"));
        put(sys.path(), "opt/org.basalt/empty", b"\n");
        assert_eq!(setting(sys.path(), "opt/org.basalt/empty"), None);
    }

    #[test]
    fn the_console_shell_setting_round_trips_through_the_cmdline() {
        for c in ConsoleShell::ALL {
            assert_eq!(ConsoleShell::parse(c.as_str()), Some(c));
            assert_eq!(ConsoleShell::from_cmdline(&format!("console=ttyS0 {} panic=10", c.cmdline_word())), Some(c));
        }
        assert_eq!(ConsoleShell::from_cmdline("console=ttyS0 panic=10"), None);
        assert_eq!(ConsoleShell::from_cmdline("basalt.console_shell=yes"), None);
        assert_eq!(ConsoleShell::from_cmdline("basalt.console_shell_x=always"), None);
        assert_eq!(ConsoleShell::from_cmdline("basalt.console_shell=always basalt.console_shell=never"), Some(ConsoleShell::Never));
    }

    #[test]
    fn hypervisor_means_only_with_the_fw_cfg_entry_set_to_1() {
        let sys = tempfile::tempdir().unwrap();
        assert!(!ConsoleShell::Hypervisor.enabled(sys.path()));
        assert!(ConsoleShell::Always.enabled(sys.path()));
        put(sys.path(), CONSOLE_SHELL_ENTRY, b"0");
        assert!(!ConsoleShell::Hypervisor.enabled(sys.path()));
        put(sys.path(), CONSOLE_SHELL_ENTRY, b"1");
        assert!(ConsoleShell::Hypervisor.enabled(sys.path()));
        assert!(!ConsoleShell::Never.enabled(sys.path()));
    }
}
