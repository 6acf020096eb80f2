//! seccomp profiles in docker's JSON format (moby's `profiles/seccomp`), the
//! format users already have, resolved for one container into the runtime
//! spec's `linux.seccomp`, as docker does before it hands a config to runc:
//! entries whose `includes` the container does not meet (capabilities in its
//! bounding set, architecture, kernel version) or whose `excludes` it does
//! are dropped, and what is left is what the runner compiles and installs
//! (`linux/seccomp.rs`).
//!
//! `default.json` is basalt's default profile, in the same format: an allow
//! list with EPERM for everything else, refusing what docker's default
//! refuses (see docs/runtime.md for the list and why).

use serde::Deserialize;

use crate::oci::{Seccomp, SeccompArg, SeccompSyscall};

pub const DEFAULT_PROFILE: &str = include_str!("default.json");

/// What a container's `seccomp` setting may say besides a profile's path.
pub const UNCONFINED: &str = "unconfined";
pub const DEFAULT: &str = "default";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Profile {
    pub default_action: String,
    #[serde(default)]
    pub default_errno_ret: Option<u32>,
    #[serde(default)]
    pub architectures: Vec<String>,
    #[serde(default)]
    pub arch_map: Vec<ArchMap>,
    #[serde(default)]
    pub flags: Vec<String>,
    #[serde(default)]
    pub syscalls: Vec<Entry>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ArchMap {
    pub architecture: String,
    #[serde(default)]
    pub sub_architectures: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Entry {
    #[serde(default)]
    pub names: Vec<String>,
    /// The older form: one name.
    #[serde(default)]
    pub name: Option<String>,
    pub action: String,
    #[serde(default)]
    pub errno_ret: Option<u32>,
    #[serde(default)]
    pub args: Vec<SeccompArg>,
    #[serde(default)]
    pub comment: String,
    #[serde(default)]
    pub includes: Filter,
    #[serde(default)]
    pub excludes: Filter,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Filter {
    #[serde(default)]
    pub caps: Vec<String>,
    #[serde(default)]
    pub arches: Vec<String>,
    #[serde(default)]
    pub min_kernel: Option<String>,
}

/// The machine's architecture as profiles name it, in both spellings.
const ARCH_NAMES: &[&str] = &["amd64", "x86_64"];
const SCMP_ARCH: &str = "SCMP_ARCH_X86_64";

/// A kernel release ("6.1.0-18-cloud-amd64") as (major, minor).
fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

fn running_kernel() -> Option<(u32, u32)> {
    kernel_version(std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?.trim())
}

impl Profile {
    pub fn parse(text: &str, origin: &str) -> Result<Profile, String> {
        serde_json::from_str(text).map_err(|e| format!("seccomp profile {origin}: {e}"))
    }

    /// The profile for a container whose bounding set is `caps` (names with
    /// the CAP_ prefix), on this machine's kernel.
    pub fn resolve(&self, caps: &[String], origin: &str) -> Result<Seccomp, String> {
        self.resolve_for(caps, running_kernel(), origin)
    }

    fn resolve_for(&self, caps: &[String], kernel: Option<(u32, u32)>, origin: &str) -> Result<Seccomp, String> {
        let covers_us = self.architectures.is_empty() || self.architectures.iter().chain(self.arch_map.iter().map(|a| &a.architecture)).any(|a| a == SCMP_ARCH);
        if !covers_us {
            return Err(format!("seccomp profile {origin}: its architectures ({}) do not include {SCMP_ARCH}", self.architectures.join(", ")));
        }
        let has = |cap: &String| caps.iter().any(|c| c == cap);
        let mut syscalls = Vec::new();
        for (index, entry) in self.syscalls.iter().enumerate() {
            let at = || format!("seccomp profile {origin}: syscalls[{index}]");
            let mut names = entry.names.clone();
            names.extend(entry.name.clone());
            if names.is_empty() {
                return Err(format!("{}: no names", at()));
            }
            let min_kernel = match &entry.includes.min_kernel {
                None => None,
                Some(text) => Some(kernel_version(text).ok_or_else(|| format!("{}: includes.minKernel {text:?} is not a kernel version such as \"5.8\"", at()))?),
            };
            let included = entry.includes.caps.iter().all(has)
                && (entry.includes.arches.is_empty() || entry.includes.arches.iter().any(|a| ARCH_NAMES.contains(&a.as_str())))
                && min_kernel.is_none_or(|min| kernel.is_some_and(|k| k >= min));
            let excluded = entry.excludes.caps.iter().any(has) || entry.excludes.arches.iter().any(|a| ARCH_NAMES.contains(&a.as_str()));
            if included && !excluded {
                syscalls.push(SeccompSyscall { names, action: entry.action.clone(), errno_ret: entry.errno_ret, args: entry.args.clone() });
            }
        }
        let seccomp = Seccomp { default_action: self.default_action.clone(), default_errno_ret: self.default_errno_ret, architectures: vec![SCMP_ARCH.into()], flags: self.flags.clone(), syscalls };
        // The runner would refuse it at the start; say so now, by origin.
        crate::linux::seccomp::compile(&seccomp).map_err(|e| format!("seccomp profile {origin}: {e}"))?;
        Ok(seccomp)
    }
}

/// The filter for a container's `seccomp` setting (`default` when absent,
/// `unconfined`, or a profile's path on the machine) and bounding set;
/// None for no filter.
pub fn for_container(setting: Option<&str>, caps: &[String]) -> Result<Option<Seccomp>, String> {
    match setting.unwrap_or(DEFAULT) {
        UNCONFINED => Ok(None),
        DEFAULT => Profile::parse(DEFAULT_PROFILE, "default")?.resolve(caps, "default").map(Some),
        path if path.starts_with('/') => {
            let text = std::fs::read_to_string(path).map_err(|e| format!("seccomp profile {path}: {e}"))?;
            Profile::parse(&text, path)?.resolve(caps, path).map(Some)
        }
        other => Err(format!("seccomp: {other:?} is not {DEFAULT}, {UNCONFINED} or the absolute path of a profile in docker's JSON format")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(seccomp: &Seccomp) -> Vec<&str> {
        seccomp.syscalls.iter().filter(|s| s.action == "SCMP_ACT_ALLOW").flat_map(|s| s.names.iter().map(|n| n.as_str())).collect()
    }

    #[test]
    fn the_default_profile_refuses_what_dockers_refuses_without_capabilities() {
        let caps: Vec<String> = crate::linux::caps::DEFAULT.iter().map(|c| c.to_string()).collect();
        let profile = Profile::parse(DEFAULT_PROFILE, "default").unwrap();
        let seccomp = profile.resolve_for(&caps, Some((6, 1)), "default").unwrap();
        assert_eq!(seccomp.default_action, "SCMP_ACT_ERRNO");
        let allowed = names(&seccomp);
        for call in ["read", "write", "openat", "execve", "mmap", "socket", "ptrace", "clone", "personality", "chown", "mknodat"] {
            assert!(allowed.contains(&call), "{call} is allowed");
        }
        for call in [
            "kexec_load",
            "kexec_file_load",
            "init_module",
            "finit_module",
            "delete_module",
            "open_by_handle_at",
            "name_to_handle_at",
            "bpf",
            "perf_event_open",
            "userfaultfd",
            "keyctl",
            "add_key",
            "request_key",
            "mount",
            "umount2",
            "pivot_root",
            "unshare",
            "setns",
            "swapon",
            "reboot",
            "acct",
            "iopl",
            "ioperm",
            "settimeofday",
            "clock_settime",
            "syslog",
            "io_uring_setup",
            "process_vm_readv",
        ] {
            assert!(!allowed.contains(&call), "{call} is refused without its capability");
        }
        // clone only without new namespaces; clone3 gets ENOSYS so libc falls back.
        let clone = seccomp.syscalls.iter().find(|s| s.names.contains(&"clone".to_string())).unwrap();
        assert_eq!(clone.args[0].op, "SCMP_CMP_MASKED_EQ");
        let clone3 = seccomp.syscalls.iter().find(|s| s.names.contains(&"clone3".to_string())).unwrap();
        assert_eq!((clone3.action.as_str(), clone3.errno_ret), ("SCMP_ACT_ERRNO", Some(38)));

        // With capabilities, what they cover.
        let mut more = caps.clone();
        more.extend(["CAP_SYS_ADMIN", "CAP_SYS_MODULE", "CAP_DAC_READ_SEARCH"].map(String::from));
        let seccomp = profile.resolve_for(&more, Some((6, 1)), "default").unwrap();
        let allowed = names(&seccomp);
        for call in ["mount", "unshare", "setns", "init_module", "open_by_handle_at", "bpf", "clone3"] {
            assert!(allowed.contains(&call), "{call} is allowed with its capability");
        }
        for call in ["kexec_load", "keyctl", "userfaultfd"] {
            assert!(!allowed.contains(&call), "{call} is never allowed");
        }
    }

    #[test]
    fn includes_and_excludes_follow_dockers_rules() {
        let profile = Profile::parse(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","architectures":["SCMP_ARCH_X86_64","SCMP_ARCH_X86"],"syscalls":[
                {"names":["read"],"action":"SCMP_ACT_ALLOW"},
                {"name":"write","action":"SCMP_ACT_ALLOW","includes":{"caps":["CAP_A","CAP_B"]}},
                {"names":["close"],"action":"SCMP_ACT_ALLOW","excludes":{"caps":["CAP_B"]}},
                {"names":["getpid"],"action":"SCMP_ACT_ALLOW","includes":{"arches":["arm64"]}},
                {"names":["gettid"],"action":"SCMP_ACT_ALLOW","includes":{"minKernel":"5.8"}}]}"#,
            "test",
        )
        .unwrap();
        let only_a = profile.resolve_for(&["CAP_A".into()], Some((5, 4)), "test").unwrap();
        assert_eq!(names(&only_a), ["read", "close"]);
        let both = profile.resolve_for(&["CAP_A".into(), "CAP_B".into()], Some((6, 1)), "test").unwrap();
        assert_eq!(names(&both), ["read", "write", "gettid"]);
    }

    #[test]
    fn bad_profiles_and_settings_are_refused_by_name() {
        let parse = |text: &str| Profile::parse(text, "/etc/p.json").and_then(|p| p.resolve_for(&[], Some((6, 1)), "/etc/p.json")).unwrap_err();
        assert!(parse(r#"{"defaultAction":"SCMP_ACT_ERRNO","syscals":[]}"#).contains("seccomp profile /etc/p.json: unknown field `syscals`"));
        assert!(parse(r#"{"defaultAction":"SCMP_ACT_ERRNO","architectures":["SCMP_ARCH_AARCH64"]}"#).contains("do not include SCMP_ARCH_X86_64"));
        assert!(parse(r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["raed"],"action":"SCMP_ACT_ALLOW"}]}"#).contains("\"raed\" is not a system call"));
        assert!(parse(r#"{"defaultAction":"SCMP_ACT_NOPE"}"#).contains("SCMP_ACT_NOPE"));
        assert!(parse(r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[{"names":["read"],"action":"SCMP_ACT_ALLOW","includes":{"minKernel":"new"}}]}"#).contains("minKernel \"new\""));
        assert!(for_container(Some("strict"), &[]).unwrap_err().contains("\"strict\" is not default, unconfined or the absolute path"));
        assert!(for_container(Some("/nonexistent/profile.json"), &[]).unwrap_err().starts_with("seccomp profile /nonexistent/profile.json:"));
        assert_eq!(for_container(Some("unconfined"), &[]).unwrap(), None);
    }
}
