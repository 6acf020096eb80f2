//! From a declared container and its image to an OCI bundle: the overlay
//! root (the image's unpacked layers under a writable upper directory kept
//! per container) and the `config.json` the runner reads.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::linux::devices::DeviceRule;
use crate::linux::{caps, sys};
use crate::manifest::ImageConfig;
use crate::oci::{self, Config};
use crate::spec::{ContainerSpec, DEFAULT_PIDS_LIMIT};

/// A container's directory: `config.json`, `rootfs/` (the overlay's mount
/// point), `upper/` and `work/` (its writable layer), `lower/N` (short links
/// to the image's layers, so long layer lists fit the mount options).
pub struct BundleDir {
    pub dir: PathBuf,
}

impl BundleDir {
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    /// Mounts the overlay: `layers` bottom first. `remapped`: the layers are
    /// the shifted copies, and the writable layer's root belongs to the
    /// container's root as the machine sees it.
    pub fn mount_rootfs(&self, layers: &[PathBuf], remapped: bool) -> Result<(), String> {
        let lower = self.dir.join("lower");
        let _ = std::fs::remove_dir_all(&lower);
        for sub in ["upper", "work", "rootfs", "lower"] {
            std::fs::create_dir_all(self.dir.join(sub)).map_err(|e| format!("creating {}: {e}", self.dir.join(sub).display()))?;
        }
        if remapped {
            let upper = sys::cpath(&self.dir.join("upper"));
            let owner = crate::linux::userns::BASE;
            // SAFETY: a NUL-terminated path.
            if unsafe { libc::chown(upper.as_ptr(), owner, owner) } != 0 {
                return Err(format!("owning {}: {}", self.dir.join("upper").display(), std::io::Error::last_os_error()));
            }
        }
        let mut names = Vec::new();
        for (index, layer) in layers.iter().enumerate().rev() {
            let link = lower.join(index.to_string());
            std::os::unix::fs::symlink(layer, &link).map_err(|e| format!("linking {}: {e}", link.display()))?;
            names.push(link.to_string_lossy().into_owned());
        }
        self.unmount_rootfs();
        let options = format!("lowerdir={},upperdir={},workdir={}", names.join(":"), self.dir.join("upper").display(), self.dir.join("work").display());
        // nodev: device nodes in the image or its writable layer do not work.
        sys::mount("overlay", &self.rootfs(), Some("overlay"), libc::MS_NODEV, Some(&options)).map_err(|e| format!("{e} (is the overlay module loaded?)"))
    }

    pub fn unmount_rootfs(&self) {
        while sys::umount_detach(&self.rootfs()).is_ok() {}
    }
}

fn passwd_lookup(rootfs: &Path, file: &str, name: &str) -> Option<(u32, u32, String)> {
    let text = std::fs::read_to_string(rootfs.join("etc").join(file)).ok()?;
    text.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() < 3 || fields[0] != name {
            return None;
        }
        Some((fields[2].parse().ok()?, fields.get(3).and_then(|g| g.parse().ok()).unwrap_or(0), fields.get(5).unwrap_or(&"/").to_string()))
    })
}

/// The image's `User` (`name`, `uid`, `name:group`, `uid:gid`) as ids and a
/// home directory, looked up in the container's own /etc/passwd and /etc/group.
pub fn resolve_user(rootfs: &Path, user: &str) -> Result<(u32, u32, String), String> {
    if user.is_empty() {
        return Ok((0, 0, passwd_lookup(rootfs, "passwd", "root").map(|u| u.2).unwrap_or_else(|| "/root".into())));
    }
    let (user_part, group_part) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let (uid, mut gid, home) = match user_part.parse::<u32>() {
        Ok(uid) => {
            let found = std::fs::read_to_string(rootfs.join("etc/passwd")).ok().and_then(|text| {
                text.lines().find_map(|l| {
                    let f: Vec<&str> = l.split(':').collect();
                    (f.len() >= 6 && f[2] == uid.to_string()).then(|| (f[3].parse().unwrap_or(0), f[5].to_string()))
                })
            });
            let (gid, home) = found.unwrap_or((0, "/".into()));
            (uid, gid, home)
        }
        Err(_) => passwd_lookup(rootfs, "passwd", user_part).ok_or_else(|| format!("image user {user_part:?} is not in the image's /etc/passwd"))?,
    };
    if let Some(group) = group_part {
        gid = match group.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => passwd_lookup(rootfs, "group", group).map(|g| g.0).ok_or_else(|| format!("image group {group:?} is not in the image's /etc/group"))?,
        };
    }
    Ok((uid, gid, home))
}

/// A bridge container's network as its config refers to it: the namespace
/// the agent made for it, and the /etc files written for it in its bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeFiles {
    pub namespace: PathBuf,
    pub hosts: PathBuf,
    pub resolv_conf: PathBuf,
}

impl BridgeFiles {
    pub fn new(namespace: PathBuf, bundle: &BundleDir) -> BridgeFiles {
        BridgeFiles { namespace, hosts: bundle.dir.join("hosts"), resolv_conf: bundle.dir.join("resolv.conf") }
    }
}

fn mount(destination: &str, kind: &str, source: &str, options: &[&str]) -> oci::Mount {
    oci::Mount { destination: destination.into(), kind: Some(kind.into()), source: Some(source.into()), options: options.iter().map(|o| o.to_string()).collect() }
}

/// The runtime config for `spec` run from `image`, its root at `rootfs`;
/// `bridge` for a container on the bridge network.
pub fn oci_config(spec: &ContainerSpec, image: &ImageConfig, rootfs: &Path, bridge: Option<&BridgeFiles>) -> Result<Config, String> {
    let run = &image.config;
    let (uid, gid, home) = resolve_user(rootfs, &run.user)?;
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    env.insert("PATH".into(), "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    for entry in &run.env {
        let (key, value) = entry.split_once('=').unwrap_or((entry, ""));
        env.insert(key.into(), value.into());
    }
    env.insert("HOSTNAME".into(), spec.name.clone());
    env.entry("HOME".into()).or_insert(home);
    for (key, value) in &spec.env {
        env.insert(key.clone(), value.clone());
    }
    // Docker's rule: args replace the image's Cmd and follow its Entrypoint.
    let mut args = run.entrypoint.clone();
    args.extend(if spec.args.is_empty() { run.cmd.clone() } else { spec.args.clone() });
    if args.is_empty() {
        return Err(format!("image {} names no command (no Entrypoint or Cmd) and the container gives no args", spec.image));
    }
    let granted_caps = capabilities_of(spec)?;
    let capabilities = if uid == 0 {
        oci::Capabilities { bounding: granted_caps.clone(), effective: granted_caps.clone(), inheritable: vec![], permitted: granted_caps.clone(), ambient: vec![] }
    } else {
        // A user other than root starts without capabilities, as with docker.
        oci::Capabilities { bounding: granted_caps.clone(), ..oci::Capabilities::default() }
    };
    let (device_rules, devices) = devices_of(spec)?;
    let seccomp = crate::seccomp::for_container(spec.seccomp.as_deref().or(spec.privileged.then_some(crate::seccomp::UNCONFINED)), &granted_caps)?;
    let mut mounts = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount("/dev", "tmpfs", "tmpfs", &["nosuid", "strictatime", "mode=755", "size=65536k"]),
        mount("/dev/pts", "devpts", "devpts", &["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]),
        mount("/dev/shm", "tmpfs", "shm", &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]),
        mount("/dev/mqueue", "mqueue", "mqueue", &["nosuid", "noexec", "nodev"]),
        // sysfs can only be mounted by the owner of the network namespace:
        // a remapped container on the machine's or the agent's network gets
        // the machine's /sys, read-only, as runc does.
        if spec.remapped() && spec.network != "none" {
            mount("/sys", "bind", "/sys", &["rbind", "nosuid", "noexec", "nodev", "ro"])
        } else {
            mount("/sys", "sysfs", "sysfs", &["nosuid", "noexec", "nodev", "ro"])
        },
    ];
    // A remapped container's kernel refuses a cgroup2 mount below the
    // machine's /sys bound in (EBUSY): it sees the machine's cgroup tree
    // there, read-only, as part of that /sys (with a sysfs of its own,
    // network none, /sys/fs/cgroup stays empty).
    if !spec.remapped() {
        mounts.push(mount("/sys/fs/cgroup", "cgroup2", "cgroup", &["nosuid", "noexec", "nodev", "relatime", "ro"]));
    }
    let etc_files: Vec<(&str, PathBuf)> = match (spec.network.as_str(), bridge) {
        ("host", _) => ["/etc/resolv.conf", "/etc/hosts"].iter().map(|f| (*f, PathBuf::from(f))).filter(|(_, source)| source.exists()).collect(),
        ("bridge", Some(files)) => vec![("/etc/resolv.conf", files.resolv_conf.clone()), ("/etc/hosts", files.hosts.clone())],
        ("bridge", None) => return Err("network: bridge needs the container's network namespace".into()),
        _ => vec![],
    };
    for (target, source) in etc_files {
        mounts.push(mount(target, "bind", &source.to_string_lossy(), &["rbind", "ro", "nosuid", "nodev", "noexec"]));
    }
    for volume in &spec.volumes {
        std::fs::create_dir_all(&volume.source).map_err(|e| format!("volume source {}: {e}", volume.source))?;
        // A volume cannot hold device nodes that work (unless privileged).
        let mut options = if spec.privileged { vec!["rbind", "rprivate"] } else { vec!["rbind", "rprivate", "nodev"] };
        if volume.read_only {
            options.push("ro");
        }
        mounts.push(mount(&volume.target, "bind", &volume.source, &options));
    }
    let mut namespaces: Vec<oci::Namespace> = ["pid", "ipc", "uts", "mount", "cgroup"].iter().map(|k| oci::Namespace { kind: k.to_string(), path: None }).collect();
    let mappings = if spec.remapped() {
        namespaces.push(oci::Namespace { kind: "user".into(), path: None });
        vec![oci::IdMapping { container_id: 0, host_id: crate::linux::userns::BASE, size: crate::linux::userns::SIZE }]
    } else {
        vec![]
    };
    match (spec.network.as_str(), bridge) {
        ("none", _) => namespaces.push(oci::Namespace { kind: "network".into(), path: None }),
        ("bridge", Some(files)) => namespaces.push(oci::Namespace { kind: "network".into(), path: Some(files.namespace.clone()) }),
        _ => {}
    }
    let resources = oci::Resources {
        memory: spec.memory_bytes.map(|bytes| oci::Memory { limit: Some(bytes as i64), swap: Some(bytes as i64) }),
        cpu: spec.cpu_millis.map(|millis| oci::Cpu { shares: None, quota: Some(millis as i64 * 100), period: Some(100_000) }),
        pids: Some(oci::Pids { limit: spec.pids_limit.unwrap_or(DEFAULT_PIDS_LIMIT) as i64 }),
        devices: device_rules,
    };
    let config = Config {
        oci_version: "1.0.2".into(),
        process: oci::Process {
            terminal: false,
            user: oci::User { uid, gid, umask: None, additional_gids: vec![] },
            args,
            env: env.into_iter().map(|(k, v)| format!("{k}={v}")).collect(),
            cwd: if run.working_dir.is_empty() { "/".into() } else { run.working_dir.clone() },
            capabilities: Some(capabilities),
            rlimits: vec![oci::Rlimit { kind: "RLIMIT_NOFILE".into(), hard: 1_048_576, soft: 1_048_576 }],
            no_new_privileges: true,
            oom_score_adj: None,
        },
        root: oci::Root { path: "rootfs".into(), readonly: false },
        hostname: Some(spec.name.clone()),
        mounts,
        linux: oci::Linux {
            namespaces,
            resources: Some(resources),
            cgroups_path: Some(format!("/basalt/{}", spec.name)),
            masked_paths: if spec.privileged { vec![] } else { MASKED_PATHS.iter().map(|p| p.to_string()).collect() },
            readonly_paths: if spec.privileged { vec![] } else { READONLY_PATHS.iter().map(|p| p.to_string()).collect() },
            sysctl: BTreeMap::new(),
            devices,
            seccomp,
            uid_mappings: mappings.clone(),
            gid_mappings: mappings,
        },
        annotations: BTreeMap::new(),
    };
    config.check()?;
    Ok(config)
}

/// runc's masked and read-only paths.
const MASKED_PATHS: &[&str] =
    &["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware"];
const READONLY_PATHS: &[&str] = &["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"];

/// The bounding set: docker's default, or every capability when
/// privileged, then `cap_drop` and `cap_add` (`ALL` in either).
pub fn capabilities_of(spec: &ContainerSpec) -> Result<Vec<String>, String> {
    let mut set: Vec<String> = if spec.privileged { caps::all() } else { caps::DEFAULT.iter().map(|c| c.to_string()).collect() };
    for name in &spec.cap_drop {
        match crate::spec::capability_name(name).map_err(|e| format!("cap_drop: {e}"))?.as_str() {
            "ALL" => set.clear(),
            cap => set.retain(|c| c != cap),
        }
    }
    for name in &spec.cap_add {
        match crate::spec::capability_name(name).map_err(|e| format!("cap_add: {e}"))?.as_str() {
            "ALL" => set = caps::all(),
            cap if !set.iter().any(|c| c == cap) => set.push(cap.to_string()),
            _ => {}
        }
    }
    Ok(set)
}

fn major_minor(rdev: u64) -> (i64, i64) {
    // glibc's encoding of dev_t.
    let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
    let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
    (major as i64, minor as i64)
}

/// The device program's rules (nothing but the defaults, which the runner
/// adds; everything when privileged; granted devices) and the nodes to make.
pub fn devices_of(spec: &ContainerSpec) -> Result<(Vec<DeviceRule>, Vec<oci::Device>), String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let mut rules = vec![if spec.privileged { DeviceRule::allow_all() } else { DeviceRule::deny_all() }];
    let mut nodes = Vec::new();
    for text in &spec.devices {
        let grant = crate::spec::parse_device(text)?;
        let meta = std::fs::metadata(&grant.host).map_err(|e| format!("devices: {}: {e}", grant.host))?;
        let kind = if meta.file_type().is_block_device() {
            "b"
        } else if meta.file_type().is_char_device() {
            "c"
        } else {
            return Err(format!("devices: {} is not a device node", grant.host));
        };
        let (major, minor) = major_minor(meta.rdev());
        rules.push(DeviceRule { allow: true, kind: Some(kind.into()), major: Some(major), minor: Some(minor), access: Some(grant.access.clone()) });
        nodes.push(oci::Device { path: grant.container, kind: kind.into(), major, minor, file_mode: Some(meta.mode() & 0o777), uid: Some(0), gid: Some(0) });
    }
    Ok((rules, nodes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::RunDefaults;

    fn spec() -> ContainerSpec {
        ContainerSpec::parse(br#"{"version":1,"source":"basaltctl","name":"web","image":"example.com/web:1","args":["-p","80"],"env":{"A":"b"},"cpu_millis":750,"memory_bytes":1048576,"network":"none","restart":"always","volumes":[],"ports":[]}"#).unwrap()
    }

    #[test]
    fn the_config_follows_docker_rules() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\nwww:x:33:34:www:/var/www:/bin/false\n").unwrap();
        std::fs::write(dir.path().join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        let image = ImageConfig {
            config: RunDefaults { entrypoint: vec!["/bin/httpd".into()], cmd: vec!["-h".into()], env: vec!["PATH=/bin".into(), "A=a".into()], user: "www:staff".into(), ..RunDefaults::default() },
            ..ImageConfig::default()
        };
        let config = oci_config(&spec(), &image, dir.path(), None).unwrap();
        assert_eq!(config.process.args, ["/bin/httpd", "-p", "80"]);
        assert_eq!((config.process.user.uid, config.process.user.gid), (33, 50));
        assert!(config.process.env.contains(&"PATH=/bin".to_string()) && config.process.env.contains(&"A=b".to_string()) && config.process.env.contains(&"HOME=/var/www".to_string()));
        assert!(config.process.capabilities.as_ref().unwrap().effective.is_empty(), "not root: no effective capabilities");
        let resources = config.linux.resources.as_ref().unwrap();
        assert_eq!(resources.cpu.as_ref().unwrap().quota, Some(75_000));
        assert_eq!(resources.memory.as_ref().unwrap().limit, Some(1 << 20));
        assert!(config.has_namespace("network"));
        let unknown = ImageConfig { config: RunDefaults { cmd: vec!["x".into()], user: "nobody".into(), ..RunDefaults::default() }, ..ImageConfig::default() };
        assert!(oci_config(&spec(), &unknown, dir.path(), None).unwrap_err().contains("\"nobody\" is not in the image's /etc/passwd"));
        // On the bridge: the agent's namespace joined by path, its own /etc files.
        let mut bridged = spec();
        bridged.network = "bridge".into();
        assert!(oci_config(&bridged, &image, dir.path(), None).unwrap_err().contains("network: bridge"));
        let files = BridgeFiles::new(PathBuf::from("/run/basalt/netns/web"), &BundleDir { dir: PathBuf::from("/store/containers/web") });
        let config = oci_config(&bridged, &image, dir.path(), Some(&files)).unwrap();
        assert_eq!(config.namespace_path("network"), Some(Path::new("/run/basalt/netns/web")));
        let hosts = config.mounts.iter().find(|m| m.destination == "/etc/hosts").unwrap();
        assert_eq!(hosts.source.as_deref(), Some("/store/containers/web/hosts"));
        assert!(hosts.options.contains(&"ro".to_string()));
    }
}
