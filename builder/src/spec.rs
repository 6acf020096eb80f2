//! The image spec (`image/basalt.yaml`): what goes into an image. Parsed with
//! unknown fields refused, so a typo is an error naming the file, the field
//! and what is allowed, never a silently ignored setting.

use anyhow::{bail, Context, Result};
use basalt_disk::layout::Sizes;
pub use basalt_fwcfg::ConsoleShell;
use serde::{Deserialize, Deserializer};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// Image name: os-release ID, UKI file names, and the seed of every GUID.
    pub name: String,
    /// Image version (os-release IMAGE_VERSION); UKIs sort by it.
    pub version: String,
    /// The kernel package, e.g. `linux-image-6.1.0-50-cloud-amd64`.
    pub kernel: String,
    /// Further Debian packages unpacked into /usr.
    #[serde(default)]
    pub packages: Vec<String>,
    /// Modules loaded by the initramfs, by name; their dependencies come along.
    pub initramfs_modules: Vec<String>,
    /// Files placed into /usr.
    #[serde(default)]
    pub files: Vec<FileSpec>,
    /// Extra kernel command-line words, after basalt's own.
    #[serde(default)]
    pub cmdline: Vec<String>,
    #[serde(default)]
    pub partitions: PartitionSpec,
    /// A root shell on the serial console once booted: `hypervisor` (only
    /// when a local hypervisor sets fw_cfg `opt/org.basalt/console-shell=1`),
    /// `never` (the default) or `always` (development only).
    #[serde(default, deserialize_with = "console_shell_field")]
    pub console_shell: ConsoleShell,
    /// What was accepted but should be written otherwise (old `true`/`false`).
    #[serde(skip)]
    pub warnings: Vec<String>,
}

const CONSOLE_SHELL_VALUES: &str =
    "`hypervisor` (a shell only when a local hypervisor sets fw_cfg opt/org.basalt/console-shell=1, as `basalt run` does), `never` or `always` (every boot, anywhere: development only)";

/// `console_shell`: one of the named values; the old booleans are read as
/// `always` (true) and `never` (false), with a warning from `Spec::parse`.
fn console_shell_field<'de, D: Deserializer<'de>>(d: D) -> Result<ConsoleShell, D::Error> {
    struct Visitor;
    impl serde::de::Visitor<'_> for Visitor {
        type Value = ConsoleShell;
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(f, "one of {CONSOLE_SHELL_VALUES}")
        }
        fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<ConsoleShell, E> {
            Ok(if v { ConsoleShell::Always } else { ConsoleShell::Never })
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ConsoleShell, E> {
            ConsoleShell::parse(v).ok_or_else(|| E::custom(format!("{v:?} is not one of {CONSOLE_SHELL_VALUES}")))
        }
    }
    d.deserialize_any(Visitor)
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    /// Absolute path under /usr.
    pub path: String,
    /// Inline content...
    pub content: Option<String>,
    /// ...or a file, relative to the spec's directory.
    pub source: Option<PathBuf>,
    /// Octal permission string such as "0644" (default "0644").
    pub mode: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PartitionSpec {
    #[serde(default = "d_esp")]
    pub esp_mib: u64,
    #[serde(default = "d_bios")]
    pub bios_boot_mib: u64,
    #[serde(default = "d_usr")]
    pub usr_mib: u64,
    #[serde(default = "d_oem")]
    pub oem_mib: u64,
    #[serde(default = "d_root")]
    pub root_mib: u64,
}
fn d_esp() -> u64 {
    Sizes::default().esp_mib
}
fn d_bios() -> u64 {
    Sizes::default().bios_boot_mib
}
fn d_usr() -> u64 {
    Sizes::default().usr_mib
}
fn d_oem() -> u64 {
    Sizes::default().oem_mib
}
fn d_root() -> u64 {
    Sizes::default().root_mib
}
impl Default for PartitionSpec {
    fn default() -> Self {
        PartitionSpec { esp_mib: d_esp(), bios_boot_mib: d_bios(), usr_mib: d_usr(), oem_mib: d_oem(), root_mib: d_root() }
    }
}

impl PartitionSpec {
    pub fn sizes(&self) -> Sizes {
        Sizes { esp_mib: self.esp_mib, bios_boot_mib: self.bios_boot_mib, usr_mib: self.usr_mib, oem_mib: self.oem_mib, root_mib: self.root_mib }
    }
}

impl FileSpec {
    pub fn mode_bits(&self) -> Result<u32> {
        match &self.mode {
            None => Ok(0o644),
            Some(m) => u32::from_str_radix(m.trim_start_matches("0o"), 8).ok().filter(|v| *v <= 0o7777).with_context(|| format!("mode {m:?} is not an octal permission like \"0644\"")),
        }
    }
}

impl Spec {
    pub fn load(path: &Path) -> Result<Spec> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading image spec {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("image spec {}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Spec> {
        let mut spec: Spec = serde_yaml::from_str(text).map_err(|e| anyhow::anyhow!("{e}"))?;
        spec.check()?;
        let value: serde_yaml::Value = serde_yaml::from_str(text)?;
        if let Some(b) = value.get("console_shell").and_then(serde_yaml::Value::as_bool) {
            spec.warnings.push(format!(
                "field `console_shell`: `{b}` is read as `{}`; write `hypervisor`, `never` or `always`{}",
                spec.console_shell,
                if b {
                    " (`always` gives every machine the image boots on, an EC2 instance's serial console included, an unauthenticated root shell; `hypervisor` keeps it for `basalt run`)"
                } else {
                    ""
                }
            ));
        }
        Ok(spec)
    }

    fn check(&self) -> Result<()> {
        let word = |field: &str, v: &str| -> Result<()> {
            if v.is_empty() || !v.chars().all(|c| c.is_ascii_alphanumeric() || "._-+~".contains(c)) {
                bail!("field `{field}`: {v:?} must be non-empty and use only letters, digits and . _ - + ~");
            }
            Ok(())
        };
        word("name", &self.name)?;
        if self.name.contains('+') || self.name.contains('_') {
            bail!("field `name`: {:?} may not contain '+' or '_' (they separate version and boot counter in UKI names)", self.name);
        }
        word("version", &self.version)?;
        if self.version.contains('+') || !self.version.starts_with(|c: char| c.is_ascii_digit()) {
            bail!("field `version`: {:?} must start with a digit and not contain '+' (e.g. 1.2.0)", self.version);
        }
        word("kernel", &self.kernel)?;
        for p in &self.packages {
            word("packages", p)?;
        }
        if self.initramfs_modules.is_empty() {
            bail!("field `initramfs_modules`: list at least the modules that reach the disk (e.g. virtio_pci, virtio_blk, dm_verity, squashfs)");
        }
        for f in &self.files {
            if !f.path.starts_with("/usr/") || f.path.contains("/../") || f.path.ends_with('/') {
                bail!("field `files`: path {:?} must be a file under /usr/ (defaults for /etc live in /usr/share/basalt/etc)", f.path);
            }
            match (&f.content, &f.source) {
                (Some(_), None) | (None, Some(_)) => {}
                _ => bail!("field `files`: {} needs exactly one of `content` or `source`", f.path),
            }
            f.mode_bits().with_context(|| format!("field `files`: {}", f.path))?;
        }
        for w in &self.cmdline {
            if w.is_empty() || w.chars().any(char::is_whitespace) || w.starts_with("basalt.") {
                bail!("field `cmdline`: {w:?} must be one word and not a basalt.* parameter (the builder sets those)");
            }
        }
        let p = &self.partitions;
        let min = |field: &str, v: u64, least: u64| -> Result<()> {
            if v < least {
                bail!("field `partitions.{field}`: {v} MiB is below the minimum of {least} MiB");
            }
            Ok(())
        };
        min("esp_mib", p.esp_mib, 64)?;
        min("bios_boot_mib", p.bios_boot_mib, 1)?;
        min("usr_mib", p.usr_mib, 64)?;
        min("oem_mib", p.oem_mib, 33)?;
        min("root_mib", p.root_mib, 64)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "name: basalt\nversion: 1.0.0\nkernel: linux-image-x\ninitramfs_modules: [virtio_blk]\n";

    fn err(text: &str) -> String {
        format!("{:#}", Spec::parse(text).unwrap_err())
    }

    #[test]
    fn minimal_spec_gets_defaults() {
        let s = Spec::parse(GOOD).unwrap();
        assert_eq!(s.partitions.usr_mib, 1024);
        assert_eq!(s.console_shell, ConsoleShell::Never);
        assert!(s.warnings.is_empty());
    }

    #[test]
    fn console_shell_is_one_of_three_values() {
        for (text, want) in [("hypervisor", ConsoleShell::Hypervisor), ("never", ConsoleShell::Never), ("always", ConsoleShell::Always), ("\"always\"", ConsoleShell::Always)] {
            let s = Spec::parse(&format!("{GOOD}console_shell: {text}\n")).unwrap();
            assert_eq!(s.console_shell, want, "{text}");
            assert!(s.warnings.is_empty(), "{:?}", s.warnings);
        }
    }

    #[test]
    fn console_shell_booleans_are_mapped_with_a_warning() {
        let s = Spec::parse(&format!("{GOOD}console_shell: true\n")).unwrap();
        assert_eq!(s.console_shell, ConsoleShell::Always);
        assert!(s.warnings.len() == 1 && s.warnings[0].contains("`true` is read as `always`") && s.warnings[0].contains("`hypervisor`"), "{:?}", s.warnings);
        let s = Spec::parse(&format!("{GOOD}console_shell: false\n")).unwrap();
        assert_eq!(s.console_shell, ConsoleShell::Never);
        assert!(s.warnings.len() == 1 && s.warnings[0].contains("`false` is read as `never`"), "{:?}", s.warnings);
    }

    #[test]
    fn a_bad_console_shell_is_refused_with_the_field_and_the_values() {
        for bad in ["yes", "hypervisr", "1", "[always]", "{a: b}"] {
            let e = err(&format!("{GOOD}console_shell: {bad}\n"));
            assert!(e.contains("console_shell") && e.contains("`hypervisor`") && e.contains("`never`") && e.contains("`always`"), "{bad}: {e}");
            assert!(e.contains("line 5"), "{bad}: {e}");
        }
    }

    #[test]
    fn unknown_field_names_field_and_allowed() {
        let e = err(&format!("{GOOD}kernal: x\n"));
        assert!(e.contains("unknown field `kernal`") && e.contains("expected one of") && e.contains("`kernel`"), "{e}");
        assert!(e.contains("line 5"), "{e}");
        let e = err(&format!("{GOOD}partitions:\n  usr_size: 3\n"));
        assert!(e.contains("unknown field `usr_size`") && e.contains("`usr_mib`"), "{e}");
    }

    #[test]
    fn wrong_types_and_missing_fields() {
        assert!(err("name: basalt\nversion: 1.0.0\ninitramfs_modules: []\n").contains("missing field `kernel`"));
        let e = err(&format!("{GOOD}partitions:\n  usr_mib: lots\n"));
        assert!(e.contains("usr_mib") && e.contains("invalid type"), "{e}");
    }

    #[test]
    fn bad_values_are_named() {
        assert!(err(&GOOD.replace("1.0.0", "v1+2")).contains("field `version`"));
        assert!(err(&GOOD.replace("basalt", "bas alt")).contains("field `name`"));
        assert!(err(&format!("{GOOD}files:\n  - path: /etc/x\n    content: y\n")).contains("must be a file under /usr/"));
        assert!(err(&format!("{GOOD}files:\n  - path: /usr/x\n")).contains("exactly one of"));
        assert!(err(&format!("{GOOD}files:\n  - path: /usr/x\n    content: y\n    mode: \"999\"\n")).contains("octal"));
        assert!(err(&format!("{GOOD}cmdline: [basalt.slot=B]\n")).contains("field `cmdline`"));
        assert!(err(&format!("{GOOD}partitions:\n  usr_mib: 8\n")).contains("partitions.usr_mib"));
        assert!(err(&GOOD.replace("[virtio_blk]", "[]")).contains("initramfs_modules"));
    }
}
