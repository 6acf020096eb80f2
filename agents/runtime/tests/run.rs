//! `basalt-runtime run --bundle` on the build host (as root; no limits, since
//! the host's cgroups are hybrid; limits are proven in qemu-tests/tests/runtime.rs):
//! the container is PID 1 of its own namespaces, with its host name, the
//! configured capabilities and no_new_privs, masked paths, a read-only root,
//! its exit code passed on, and setup errors reported with exit code 125;
//! the device program (in a cgroup below the host's cgroup v2 mount) lets it
//! use the default devices and no other, unless the config allows one.

use std::path::Path;
use std::process::Command;

use basalt_qemu_tests::registry::{busybox, APPLETS};

fn bundle(dir: &Path, args: &[&str], readonly: bool) {
    let rootfs = dir.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    let busybox_path = rootfs.join("bin/busybox");
    if !busybox_path.exists() {
        std::fs::write(&busybox_path, busybox().unwrap()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&busybox_path, std::fs::Permissions::from_mode(0o755)).unwrap();
        for applet in APPLETS {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
        }
    }
    let args: Vec<String> = args.iter().map(|a| serde_json::to_string(a).unwrap()).collect();
    let config = format!(
        r#"{{"ociVersion":"1.0.2","process":{{"terminal":false,"user":{{"uid":0,"gid":0}},"args":[{}],"env":["PATH=/bin"],"cwd":"/",
        "capabilities":{{"bounding":["CAP_KILL","CAP_NET_BIND_SERVICE"],"effective":["CAP_KILL","CAP_NET_BIND_SERVICE"],"permitted":["CAP_KILL","CAP_NET_BIND_SERVICE"]}},
        "noNewPrivileges":true}},"root":{{"path":"rootfs","readonly":{readonly}}},"hostname":"boxed",
        "mounts":[{{"destination":"/proc","type":"proc","source":"proc"}},{{"destination":"/dev","type":"tmpfs","source":"tmpfs","options":["nosuid","mode=755"]}},
        {{"destination":"/tmp","type":"tmpfs","source":"tmpfs"}}],
        "linux":{{"namespaces":[{{"type":"pid"}},{{"type":"network"}},{{"type":"ipc"}},{{"type":"uts"}},{{"type":"mount"}}],"maskedPaths":["/proc/kcore","/proc/version"],"readonlyPaths":["/proc/sys"]}}}}"#,
        args.join(",")
    );
    std::fs::write(dir.join("config.json"), config).unwrap();
}

fn run(dir: &Path) -> (i32, String, String) {
    // Each test's container has a name (and cgroup) of its own.
    let id = format!("host-test-{}", dir.file_name().unwrap().to_string_lossy().trim_start_matches('.'));
    let out = Command::new(env!("CARGO_BIN_EXE_basalt-runtime")).args(["run", "--bundle"]).arg(dir).arg(id).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn a_bundle_runs_isolated_and_its_status_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let script = "echo pid=$$; hostname; grep -E '^(CapEff|CapBnd|NoNewPrivs)' /proc/self/status; cat /proc/net/dev | grep -c ':'; \
                  ls -l /dev/null; cat /proc/version; echo masked-end; touch /proc/sys/x 2>/dev/null || echo sys-ro; touch /root-file 2>/dev/null || echo root-ro; exit 3";
    bundle(dir.path(), &["sh", "-c", script], true);
    let (code, out, err) = run(dir.path());
    assert_eq!(code, 3, "exit code passed on: {out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "pid=1", "{out}");
    assert_eq!(lines[1], "boxed");
    // CAP_KILL (5) and CAP_NET_BIND_SERVICE (10).
    assert!(out.contains("CapEff:\t0000000000000420") && out.contains("CapBnd:\t0000000000000420") && out.contains("NoNewPrivs:\t1"), "{out}");
    assert_eq!(lines[5], "1", "a new network namespace has only lo: {out}");
    assert!(lines[6].starts_with("crw-rw-rw-"), "default devices: {out}");
    assert_eq!(lines[7], "masked-end", "/proc/version is masked by /dev/null: {out}");
    assert!(out.contains("sys-ro") && out.contains("root-ro"), "{out}");
    assert!(!dir.path().join("rootfs/root-file").exists());
    let exit_status = std::fs::read_to_string(dir.path().join("exit-status")).unwrap();
    assert_eq!(exit_status.trim(), "3 0");

    // A program that is not there: 125, the reason named, recorded.
    bundle(dir.path(), &["no-such-program"], false);
    let (code, _, err) = run(dir.path());
    assert_eq!(code, 125);
    assert!(err.contains("\"no-such-program\" not found in the container's PATH"), "{err}");
    assert!(std::fs::read_to_string(dir.path().join("exit-status")).unwrap().starts_with("125 0 process.args[0]"));

    // A config the runtime cannot honour is refused by name.
    let config = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
    std::fs::write(dir.path().join("config.json"), config.replacen("\"hostname\"", "\"hooks\":{},\"hostname\"", 1)).unwrap();
    let (code, _, err) = run(dir.path());
    assert_eq!(code, 125);
    assert!(err.contains("unknown field `hooks`"), "{err}");
    // Nothing of the container is left mounted on the host.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(dir.path().to_str().unwrap()), "{mounts}");
}

/// A network namespace named by path (what the agent's bridge network
/// makes) is joined, not a new one made.
#[test]
fn a_network_namespace_named_by_path_is_joined() {
    let dir = tempfile::tempdir().unwrap();
    let held = dir.path().join("netns");
    basalt_runtime::network::netns::create(&held).unwrap();
    use std::os::unix::fs::MetadataExt;
    let inode = std::fs::metadata(&held).unwrap().ino();
    bundle(dir.path(), &["readlink", "/proc/self/ns/net"], false);
    let config = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
    let joined = config.replacen(r#"{"type":"network"}"#, &format!(r#"{{"type":"network","path":"{}"}}"#, held.display()), 1);
    std::fs::write(dir.path().join("config.json"), joined).unwrap();
    let (code, out, err) = run(dir.path());
    basalt_runtime::network::netns::remove(&held);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), format!("net:[{inode}]"));
    // Any other namespace by path is refused by name.
    let config = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
    std::fs::write(dir.path().join("config.json"), config.replacen(r#"{"type":"ipc"}"#, r#"{"type":"ipc","path":"/proc/1/ns/ipc"}"#, 1)).unwrap();
    let (code, _, err) = run(dir.path());
    assert_eq!(code, 125);
    assert!(err.contains("joining an existing ipc namespace (path) is not supported"), "{err}");
}

/// A block device of this machine (its disk), as "major minor".
fn a_host_disk() -> String {
    for entry in std::fs::read_dir("/sys/block").unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("loop") || name.starts_with("ram") {
            continue;
        }
        let dev = std::fs::read_to_string(entry.path().join("dev")).unwrap();
        return dev.trim().replace(':', " ");
    }
    panic!("no disk in /sys/block");
}

#[test]
fn the_device_program_allows_the_default_devices_and_what_the_config_grants() {
    let dir = tempfile::tempdir().unwrap();
    let disk = a_host_disk();
    // Root with CAP_MKNOD, on a tmpfs that allows device nodes: only the
    // device program stands between the container and the host's disk.
    let script = format!(
        "echo x > /dev/null && echo null-ok; head -c 4 /dev/urandom | wc -c; mknod /tmp/null c 1 3 && echo hi > /tmp/null && echo own-null-ok; \
         mknod /tmp/disk b {disk} && echo mknod-ok; mknod /tmp/mem c 1 1 && echo mem-mknod-ok; \
         head -c 512 /tmp/disk > /dev/null && echo read-ok; exit 0"
    );
    bundle(dir.path(), &["sh", "-c", &script], false);
    let config = std::fs::read_to_string(dir.path().join("config.json")).unwrap();
    let with_mknod = config.replace(r#"["CAP_KILL","CAP_NET_BIND_SERVICE"]"#, r#"["CAP_KILL","CAP_NET_BIND_SERVICE","CAP_MKNOD"]"#);
    std::fs::write(dir.path().join("config.json"), &with_mknod).unwrap();
    let (code, out, err) = run(dir.path());
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("null-ok") && out.contains("own-null-ok") && out.lines().any(|l| l.trim() == "4"), "the default devices work: {out}{err}");
    assert!(!out.contains("mknod-ok") && !out.contains("read-ok"), "the host's disk must stay out of reach: {out}{err}");
    assert!(err.contains("Operation not permitted"), "{err}");

    // Granted by the config (as --device does): made and read.
    let (major, minor) = disk.split_once(' ').unwrap();
    let granted = with_mknod.replacen(
        r#""linux":{"#,
        &format!(r#""linux":{{"resources":{{"devices":[{{"allow":false,"access":"rwm"}},{{"allow":true,"type":"b","major":{major},"minor":{minor},"access":"rm"}}]}},"#),
        1,
    );
    std::fs::write(dir.path().join("config.json"), granted).unwrap();
    let (code, out, err) = run(dir.path());
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("mknod-ok") && out.contains("read-ok") && out.contains("null-ok"), "{out}{err}");
    assert!(!out.contains("mem-mknod-ok"), "only the granted device: {out}{err}");

    // A rule the program cannot express is refused by index and field.
    let bad = with_mknod.replacen(r#""linux":{"#, r#""linux":{"resources":{"devices":[{"allow":true,"type":"q","access":"rwm"}]},"#, 1);
    std::fs::write(dir.path().join("config.json"), bad).unwrap();
    let (code, _, err) = run(dir.path());
    assert_eq!(code, 125);
    assert!(err.contains("linux.resources.devices[0]: type \"q\" is not c, b or a"), "{err}");
}

/// The config with `seccomp` (serialised `linux.seccomp`) in its linux object.
fn with_seccomp(dir: &Path, seccomp: Option<basalt_runtime::oci::Seccomp>) {
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let config = match seccomp {
        Some(s) => config.replacen(r#""linux":{"#, &format!(r#""linux":{{"seccomp":{},"#, serde_json::to_string(&s).unwrap()), 1),
        None => config,
    };
    std::fs::write(dir.join("config.json"), config).unwrap();
}

#[test]
fn the_seccomp_filter_is_installed_last_and_refuses_what_the_profile_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let caps = vec!["CAP_KILL".to_string(), "CAP_NET_BIND_SERVICE".to_string()];
    let script = "grep '^Seccomp:' /proc/self/status; unshare -U true && echo unshare-ok; mkdir /tmp/d && echo mkdir-ok; echo end";

    // Unconfined: no filter, a new user namespace can be made.
    bundle(dir.path(), &["sh", "-c", script], false);
    let (code, out, err) = run(dir.path());
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("Seccomp:\t0") && out.contains("unshare-ok") && out.contains("mkdir-ok"), "{out}{err}");

    // The default profile: mode 2 (filter), unshare refused without CAP_SYS_ADMIN.
    bundle(dir.path(), &["sh", "-c", script], false);
    with_seccomp(dir.path(), basalt_runtime::seccomp::for_container(None, &caps).unwrap());
    let (code, out, err) = run(dir.path());
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("Seccomp:\t2") && !out.contains("unshare-ok") && out.contains("mkdir-ok") && out.contains("end"), "{out}{err}");
    assert!(err.contains("Operation not permitted"), "{err}");

    // A profile of the user's, in docker's format: mkdir refused, with EACCES.
    let profile_path = dir.path().join("profile.json");
    std::fs::write(&profile_path, r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO","errnoRet":13}]}"#).unwrap();
    bundle(dir.path(), &["sh", "-c", script], false);
    with_seccomp(dir.path(), basalt_runtime::seccomp::for_container(Some(profile_path.to_str().unwrap()), &caps).unwrap());
    let (code, out, err) = run(dir.path());
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("Seccomp:\t2") && out.contains("unshare-ok") && !out.contains("mkdir-ok"), "{out}{err}");
    assert!(err.contains("Permission denied"), "{err}");

    // A filter that refuses execve: the start fails, reported as a setup error.
    std::fs::write(&profile_path, r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["execve"],"action":"SCMP_ACT_ERRNO"}]}"#).unwrap();
    bundle(dir.path(), &["sh", "-c", script], false);
    with_seccomp(dir.path(), basalt_runtime::seccomp::for_container(Some(profile_path.to_str().unwrap()), &caps).unwrap());
    let (code, _, err) = run(dir.path());
    assert_eq!(code, 125, "{err}");
    assert!(err.contains("Operation not permitted"), "{err}");
}

#[test]
fn a_user_namespace_makes_the_containers_root_an_unprivileged_user_of_the_machine() {
    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::write(shared.join("root-only"), "secret").unwrap();
    std::fs::set_permissions(shared.join("root-only"), std::fs::Permissions::from_mode(0o600)).unwrap();
    let disk = a_host_disk();
    let script = format!(
        "id -u; cat /proc/self/uid_map; grep ^CapEff /proc/self/status; mknod /tmp/disk b {disk} && echo MKNOD-OK; touch /shared/made-here && echo touched; \
         cat /shared/root-only && echo READ-ROOT-FILE; echo end"
    );
    bundle(dir.path(), &["sh", "-c", &script], false);
    let all = r#"["CAP_CHOWN","CAP_DAC_OVERRIDE","CAP_DAC_READ_SEARCH","CAP_FOWNER","CAP_MKNOD","CAP_SYS_ADMIN","CAP_KILL","CAP_NET_BIND_SERVICE"]"#;
    let config = std::fs::read_to_string(dir.path().join("config.json")).unwrap().replace(r#"["CAP_KILL","CAP_NET_BIND_SERVICE"]"#, all);
    let config = config.replacen(r#"{"type":"mount"}"#, r#"{"type":"mount"},{"type":"user"}"#, 1).replacen(
        r#""linux":{"#,
        r#""linux":{"uidMappings":[{"containerID":0,"hostID":100000,"size":65536}],"gidMappings":[{"containerID":0,"hostID":100000,"size":65536}],"#,
        1,
    );
    let config = config.replacen(
        r#"{"destination":"/tmp","type":"tmpfs","source":"tmpfs"}"#,
        &format!(r#"{{"destination":"/tmp","type":"tmpfs","source":"tmpfs"}},{{"destination":"/shared","type":"bind","source":"{}","options":["rbind"]}}"#, shared.display()),
        1,
    );
    // The root as the agent gives it: the image's files shifted into the range.
    basalt_runtime::linux::userns::copy_shifted(&dir.path().join("rootfs"), &dir.path().join("rootfs-shifted")).unwrap();
    let config = config.replacen(r#""path":"rootfs""#, r#""path":"rootfs-shifted""#, 1);
    std::fs::write(dir.path().join("config.json"), config).unwrap();
    let (code, out, err) = run(dir.path());
    assert_eq!(code, 0, "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "0", "root inside: {out}{err}");
    assert_eq!(lines[1].split_whitespace().collect::<Vec<_>>(), ["0", "100000", "65536"], "{out}");
    assert!(out.contains("touched") && out.contains("end"), "{out}{err}");
    assert!(!out.contains("MKNOD-OK") && !out.contains("READ-ROOT-FILE"), "capabilities inside give nothing over the machine's files and devices: {out}{err}");
    let made = std::fs::metadata(shared.join("made-here")).unwrap();
    assert_eq!((made.uid(), made.gid()), (100_000, 100_000), "the container's root is 100000 outside");
}
