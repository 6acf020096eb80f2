//! Running one container from an OCI bundle, as `runc run` does: this
//! process creates the cgroup (limits first), unshares the PID namespace and
//! forks the container's first process, places it in the cgroup, lets it set
//! itself up (namespaces, mounts, pivot_root, devices, hostname, limits,
//! capabilities, user, no_new_privs) and exec the command, forwards signals
//! to it, and exits with its status (128+N for a signal). Setup errors come
//! back over a close-on-exec pipe, so the parent knows the exec happened when
//! the pipe closes empty.
//!
//! It must run single-threaded: the child allocates between fork and exec.

use std::ffi::CString;
use std::io::{Read, Write};
use std::os::unix::io::FromRawFd;
use std::path::{Path, PathBuf};

use super::cgroup::Cgroup;
use super::sys::{self, check, cstr};
use super::{caps, mounts, seccomp};
use crate::oci::Config;

/// Exit code when the container could not be started (as docker and podman use).
pub const SETUP_FAILED: i32 = 125;

const FORWARDED: &[libc::c_int] = &[libc::SIGTERM, libc::SIGINT, libc::SIGHUP, libc::SIGQUIT, libc::SIGUSR1, libc::SIGUSR2, libc::SIGWINCH];

pub fn rlimit_resource(name: &str) -> Option<libc::__rlimit_resource_t> {
    Some(match name {
        "RLIMIT_AS" => libc::RLIMIT_AS,
        "RLIMIT_CORE" => libc::RLIMIT_CORE,
        "RLIMIT_CPU" => libc::RLIMIT_CPU,
        "RLIMIT_DATA" => libc::RLIMIT_DATA,
        "RLIMIT_FSIZE" => libc::RLIMIT_FSIZE,
        "RLIMIT_LOCKS" => libc::RLIMIT_LOCKS,
        "RLIMIT_MEMLOCK" => libc::RLIMIT_MEMLOCK,
        "RLIMIT_MSGQUEUE" => libc::RLIMIT_MSGQUEUE,
        "RLIMIT_NICE" => libc::RLIMIT_NICE,
        "RLIMIT_NOFILE" => libc::RLIMIT_NOFILE,
        "RLIMIT_NPROC" => libc::RLIMIT_NPROC,
        "RLIMIT_RSS" => libc::RLIMIT_RSS,
        "RLIMIT_RTPRIO" => libc::RLIMIT_RTPRIO,
        "RLIMIT_RTTIME" => libc::RLIMIT_RTTIME,
        "RLIMIT_SIGPENDING" => libc::RLIMIT_SIGPENDING,
        "RLIMIT_STACK" => libc::RLIMIT_STACK,
        _ => return None,
    })
}

fn pipe() -> Result<(i32, i32), String> {
    let mut fds = [0; 2];
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, || "pipe".into())?;
    Ok((fds[0], fds[1]))
}

fn status_code(status: libc::c_int) -> i32 {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        SETUP_FAILED
    }
}

/// Runs the bundle's container to its end; returns its exit code. Either
/// way, `exit-status` in the bundle says how it ended.
pub fn run(bundle: &Path, id: &str) -> Result<i32, String> {
    let mut oom_kills = 0;
    let result = run_to_end(bundle, id, &mut oom_kills);
    let code = result.as_ref().copied().unwrap_or(SETUP_FAILED);
    let error = result.as_ref().err().map(|e| e.replace('\n', " ")).unwrap_or_default();
    let _ = std::fs::write(bundle.join(EXIT_FILE), format!("{code} {oom_kills} {error}\n"));
    result
}

fn run_to_end(bundle: &Path, id: &str, oom_kills: &mut u64) -> Result<i32, String> {
    let config = Config::load(bundle)?;
    let root = if config.root.path.is_absolute() { config.root.path.clone() } else { bundle.join(&config.root.path) };
    let root = root.canonicalize().map_err(|e| format!("root.path {}: {e}", root.display()))?;
    let resources = config.linux.resources.as_ref().filter(|r| r.memory.is_some() || r.cpu.is_some() || r.pids.is_some());
    // Every container has a cgroup: its device program hangs on it.
    let mut devices = config.linux.resources.as_ref().map(|r| r.devices.clone()).unwrap_or_default();
    devices.extend(super::devices::default_rules());
    let cgroups_path = config.linux.cgroups_path.clone().unwrap_or_else(|| format!("/basalt/{id}"));
    let cgroup = super::cgroup::create(&cgroups_path, resources, &devices)?;
    let result = start_and_wait(&config, &root, Some(&cgroup));
    *oom_kills = cgroup.oom_kills();
    if *oom_kills > 0 {
        eprintln!("basalt-runtime: {id}: the kernel's OOM killer ended {oom_kills} process(es) of the container: it reached its memory limit");
    }
    cgroup.remove();
    result
}

/// Written into the bundle when the container is gone: `CODE OOM_KILLS [SETUP ERROR]`.
pub const EXIT_FILE: &str = "exit-status";

fn start_and_wait(config: &Config, root: &Path, cgroup: Option<&Cgroup>) -> Result<i32, String> {
    let (go_read, go_write) = pipe()?;
    let (error_read, error_write) = pipe()?;
    sys::sigmask(libc::SIG_BLOCK, &[FORWARDED, &[libc::SIGCHLD]].concat());
    let userns = config.has_namespace("user");
    let pid = if userns {
        prepare_for_user_namespace(config)?;
        // The user and PID namespaces made by one clone: the new PID
        // namespace (and so its /proc) belongs to the new user namespace.
        // SAFETY: clone without CLONE_VM and a null stack behaves as fork;
        // this process is single-threaded.
        unsafe { libc::syscall(libc::SYS_clone, (libc::CLONE_NEWUSER | libc::CLONE_NEWPID | libc::SIGCHLD) as libc::c_ulong, 0usize, 0usize, 0usize, 0usize) as libc::pid_t }
    } else {
        if config.has_namespace("pid") {
            check(unsafe { libc::unshare(libc::CLONE_NEWPID) }, || "unsharing the PID namespace".into())?;
        }
        unsafe { libc::fork() }
    };
    if pid < 0 {
        return Err(format!("fork: {}", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        unsafe {
            libc::close(go_write);
            libc::close(error_read);
        }
        let mut go = [0u8; 1];
        let proceed = unsafe { libc::read(go_read, go.as_mut_ptr().cast(), 1) } == 1;
        let error = if proceed { child(config, root).unwrap_err() } else { "the runtime went away before the start".into() };
        let mut pipe = unsafe { std::fs::File::from_raw_fd(error_write) };
        let _ = pipe.write_all(error.as_bytes());
        unsafe { libc::_exit(SETUP_FAILED) };
    }
    unsafe {
        libc::close(go_read);
        libc::close(error_write);
    }
    let mapped = if userns { write_id_maps(pid, config) } else { Ok(()) };
    let placed = mapped.and_then(|()| cgroup.map(|c| c.add(pid)).unwrap_or(Ok(())));
    let mut go = unsafe { std::fs::File::from_raw_fd(go_write) };
    if let Err(e) = placed {
        drop(go);
        let mut status = 0;
        unsafe { libc::waitpid(pid, &mut status, 0) };
        return Err(e);
    }
    let _ = go.write_all(b"1");
    drop(go);
    let mut message = String::new();
    let _ = unsafe { std::fs::File::from_raw_fd(error_read) }.read_to_string(&mut message);
    if !message.is_empty() {
        let mut status = 0;
        unsafe { libc::waitpid(pid, &mut status, 0) };
        return Err(message);
    }
    Ok(wait_forwarding(pid))
}

/// Before the clone of a user namespace's first process: what only the
/// machine's root can do is done here, for the child to inherit. The
/// network namespace named by path is joined, and the rlimits set (raising
/// a hard limit needs CAP_SYS_RESOURCE outside the namespace).
fn prepare_for_user_namespace(config: &Config) -> Result<(), String> {
    if let Some(path) = config.namespace_path("network") {
        let c = sys::cpath(path);
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        check(fd, || format!("linux.namespaces: network namespace {}", path.display()))?;
        let joined = unsafe { libc::setns(fd, libc::CLONE_NEWNET) };
        unsafe { libc::close(fd) };
        check(joined, || format!("linux.namespaces: joining the network namespace {}", path.display()))?;
    }
    for limit in &config.process.rlimits {
        let resource = rlimit_resource(&limit.kind).expect("checked when loaded");
        let value = libc::rlimit { rlim_cur: limit.soft, rlim_max: limit.hard };
        check(unsafe { libc::setrlimit(resource, &value) }, || format!("process.rlimits: {}", limit.kind))?;
    }
    Ok(())
}

/// The child's uid_map and gid_map, written by this (the machine's) side.
fn write_id_maps(pid: libc::pid_t, config: &Config) -> Result<(), String> {
    for (file, mappings) in [("uid_map", &config.linux.uid_mappings), ("gid_map", &config.linux.gid_mappings)] {
        let text: String = mappings.iter().map(|m| format!("{} {} {}\n", m.container_id, m.host_id, m.size)).collect();
        sys::write_file(Path::new(&format!("/proc/{pid}/{file}")), &text).map_err(|e| format!("linux.{}: {e}", if file == "uid_map" { "uidMappings" } else { "gidMappings" }))?;
    }
    Ok(())
}

/// Waits for `pid`, passing the forwarded signals on to it.
fn wait_forwarding(pid: i32) -> i32 {
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    unsafe {
        libc::sigemptyset(&mut set);
        for &s in FORWARDED.iter().chain(&[libc::SIGCHLD]) {
            libc::sigaddset(&mut set, s);
        }
    }
    loop {
        let mut status = 0;
        let reaped = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if reaped == pid {
            return status_code(status);
        }
        if reaped < 0 {
            return SETUP_FAILED;
        }
        let signal = unsafe { libc::sigwaitinfo(&set, std::ptr::null_mut()) };
        if signal > 0 && signal != libc::SIGCHLD {
            unsafe { libc::kill(pid, signal) };
        }
    }
}

/// In the container's first process: everything up to exec. Only returns on error.
fn child(config: &Config, root: &Path) -> Result<std::convert::Infallible, String> {
    sys::reset_signals();
    if config.has_namespace("user") {
        // The maps are written: become the namespace's root (the machine's
        // first ID of the range), so files made from here on have an owner
        // the namespace can name.
        check(unsafe { libc::setresgid(0, 0, 0) }, || "becoming root of the user namespace (gid)".into())?;
        check(unsafe { libc::setgroups(0, std::ptr::null()) }, || "dropping supplementary groups in the user namespace".into())?;
        check(unsafe { libc::setresuid(0, 0, 0) }, || "becoming root of the user namespace (uid)".into())?;
    }
    // A network namespace named by path (the agent's bridge network made
    // it) is joined, while the host's paths are still there.
    let network_path = config.namespace_path("network");
    // With a user namespace the parent joined it before the clone: from
    // inside, the child has no rights over a namespace the machine owns.
    if let Some(path) = network_path.filter(|_| !config.has_namespace("user")) {
        let c = sys::cpath(path);
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        check(fd, || format!("linux.namespaces: network namespace {}", path.display()))?;
        let joined = unsafe { libc::setns(fd, libc::CLONE_NEWNET) };
        unsafe { libc::close(fd) };
        check(joined, || format!("linux.namespaces: joining the network namespace {}", path.display()))?;
    }
    let mut flags = 0;
    for (kind, flag) in [("mount", libc::CLONE_NEWNS), ("uts", libc::CLONE_NEWUTS), ("ipc", libc::CLONE_NEWIPC), ("network", libc::CLONE_NEWNET), ("cgroup", libc::CLONE_NEWCGROUP)] {
        if config.has_namespace(kind) && !(kind == "network" && network_path.is_some()) {
            flags |= flag;
        }
    }
    check(unsafe { libc::unshare(flags) }, || "unsharing namespaces".into())?;
    if config.has_namespace("network") && network_path.is_none() {
        loopback_up()?;
    }
    if config.has_namespace("mount") {
        // Nothing mounted for the container reaches the host, and back.
        sys::mount("none", Path::new("/"), None, libc::MS_REC | libc::MS_PRIVATE, None)?;
        // The root must be a mount point of its own for pivot_root.
        sys::mount(&root.to_string_lossy(), root, None, libc::MS_BIND | libc::MS_REC, None)?;
        for mount in &config.mounts {
            mounts::mount_one(root, mount)?;
        }
        let userns = config.has_namespace("user");
        mounts::default_devices(root, userns)?;
        mounts::extra_devices(root, &config.linux.devices, userns)?;
        mounts::pivot_root(root)?;
        mounts::mask_and_protect(&config.linux.masked_paths, &config.linux.readonly_paths)?;
        if config.root.readonly {
            sys::mount("none", Path::new("/"), None, libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | mounts::locked_flags(Path::new("/")), None)?;
        }
    } else {
        return Err("linux.namespaces: a container needs its own mount namespace here".into());
    }
    for (key, value) in &config.linux.sysctl {
        sys::write_file(&PathBuf::from("/proc/sys").join(key.replace('.', "/")), value)?;
    }
    if let Some(hostname) = &config.hostname {
        if config.has_namespace("uts") {
            check(unsafe { libc::sethostname(hostname.as_ptr().cast(), hostname.len()) }, || format!("setting the host name {hostname:?}"))?;
        }
    }
    for limit in &config.process.rlimits {
        let resource = rlimit_resource(&limit.kind).expect("checked when loaded");
        let value = libc::rlimit { rlim_cur: limit.soft, rlim_max: limit.hard };
        check(unsafe { libc::setrlimit(resource, &value) }, || format!("process.rlimits: {}", limit.kind))?;
    }
    if let Some(adjust) = config.process.oom_score_adj {
        sys::write_file(Path::new("/proc/self/oom_score_adj"), &adjust.to_string())?;
    }
    let env: Vec<CString> = config.process.env.iter().map(|e| cstr(e)).collect();
    let program = find_program(&config.process.args[0], &config.process.env)?;
    // Compiled while everything is still allowed; installed last.
    let filters = config.linux.seccomp.as_ref().map(seccomp::compile).transpose()?.unwrap_or_default();
    let cwd = Path::new(&config.process.cwd);
    if !cwd.is_dir() {
        std::fs::create_dir_all(cwd).map_err(|e| format!("process.cwd {}: {e}", cwd.display()))?;
    }
    become_user(config)?;
    std::env::set_current_dir(cwd).map_err(|e| format!("process.cwd {}: {e}", cwd.display()))?;
    if config.process.no_new_privileges {
        check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) }, || "setting no_new_privs".into())?;
    }
    if let Some(umask) = config.process.user.umask {
        unsafe { libc::umask(umask as libc::mode_t) };
    }
    // Descriptors beyond stdio must not leak into the container.
    unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) };
    let args: Vec<CString> = config.process.args.iter().map(|a| cstr(a)).collect();
    seccomp::install(&filters)?;
    exec(&program, &args, &env)
}

/// Capabilities, groups and user ids, in the order that keeps the
/// capabilities the config wants across the user switch.
pub fn become_user(config: &Config) -> Result<(), String> {
    let caps = config.process.capabilities.clone().unwrap_or_default();
    caps::limit_bounding(&caps.bounding)?;
    check(unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) }, || "keeping capabilities across setuid".into())?;
    let user = &config.process.user;
    let groups: Vec<libc::gid_t> = user.additional_gids.clone();
    check(unsafe { libc::setgroups(groups.len(), groups.as_ptr()) }, || "process.user.additionalGids (setgroups)".into())?;
    check(unsafe { libc::setresgid(user.gid, user.gid, user.gid) }, || format!("process.user.gid {}", user.gid))?;
    check(unsafe { libc::setresuid(user.uid, user.uid, user.uid) }, || format!("process.user.uid {}", user.uid))?;
    caps::apply(&caps.effective, &caps.permitted, &caps.inheritable, &caps.ambient)?;
    check(unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 0, 0, 0, 0) }, || "clearing keepcaps".into())
}

/// `args[0]` as exec will find it: a path, or a name looked up in the
/// container's PATH.
pub fn find_program(name: &str, env: &[String]) -> Result<PathBuf, String> {
    if name.contains('/') {
        return Ok(PathBuf::from(name));
    }
    let path = env.iter().find_map(|e| e.strip_prefix("PATH=")).unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(name);
        let c = sys::cpath(&candidate);
        if unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0 && !candidate.is_dir() {
            return Ok(candidate);
        }
    }
    Err(format!("process.args[0]: {name:?} not found in the container's PATH ({path})"))
}

pub fn exec(program: &Path, args: &[CString], env: &[CString]) -> Result<std::convert::Infallible, String> {
    let program_c = sys::cpath(program);
    let mut argv: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<*const libc::c_char> = env.iter().map(|e| e.as_ptr()).collect();
    envp.push(std::ptr::null());
    unsafe { libc::execve(program_c.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    Err(format!("executing {}: {}", program.display(), std::io::Error::last_os_error()))
}

/// Brings up `lo` in a fresh network namespace.
fn loopback_up() -> Result<(), String> {
    unsafe {
        let socket = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        check(socket, || "socket for lo".into())?;
        let mut request: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo".iter().enumerate() {
            request.ifr_name[i] = *b as libc::c_char;
        }
        let got = libc::ioctl(socket, libc::SIOCGIFFLAGS, &mut request);
        request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        let set = if got == 0 { libc::ioctl(socket, libc::SIOCSIFFLAGS, &request) } else { got };
        libc::close(socket);
        check(set, || "bringing up lo".into())
    }
}

/// Runs `args` inside the running container whose first process (as the
/// host sees it) is `pid`: joins its cgroup and namespaces, takes the
/// config's user and capabilities, and execs. Returns the command's exit
/// code. With `tty`, stdin is a terminal that becomes the command's
/// controlling terminal in a session of its own (and `TERM` defaults to xterm).
pub fn exec_in(pid: i32, config: &Config, cgroup: Option<&Cgroup>, args: &[String], tty: bool) -> Result<i32, String> {
    if let Some(cgroup) = cgroup {
        cgroup.add(std::process::id() as i32)?;
    }
    let mut fds = Vec::new();
    // The user namespace first: the others belong to it.
    for kind in ["user", "ipc", "uts", "net", "pid", "cgroup", "mnt"] {
        let path = format!("/proc/{pid}/ns/{kind}");
        let own = std::fs::read_link(format!("/proc/self/ns/{kind}")).ok();
        if std::fs::read_link(&path).ok() == own {
            continue;
        }
        let c = cstr(&path);
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        check(fd, || format!("opening {path} (is the container running?)"))?;
        fds.push((kind, fd));
    }
    for (kind, fd) in fds {
        check(unsafe { libc::setns(fd, 0) }, || format!("joining the container's {kind} namespace"))?;
        unsafe { libc::close(fd) };
    }
    let filters = config.linux.seccomp.as_ref().map(seccomp::compile).transpose()?.unwrap_or_default();
    sys::sigmask(libc::SIG_BLOCK, &[FORWARDED, &[libc::SIGCHLD]].concat());
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(format!("fork: {}", std::io::Error::last_os_error()));
    }
    if child == 0 {
        let error = (|| -> Result<std::convert::Infallible, String> {
            sys::reset_signals();
            if tty {
                check(unsafe { libc::setsid() }, || "starting a session".into())?;
                check(unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) }, || "taking the terminal as the controlling one".into())?;
            }
            let program = find_program(&args[0], &config.process.env)?;
            become_user(config)?;
            let cwd = Path::new(&config.process.cwd);
            std::env::set_current_dir(cwd).map_err(|e| format!("{}: {e}", cwd.display()))?;
            if config.process.no_new_privileges {
                check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) }, || "setting no_new_privs".into())?;
            }
            let argv: Vec<CString> = args.iter().map(|a| cstr(a)).collect();
            let mut env: Vec<CString> = config.process.env.iter().map(|e| cstr(e)).collect();
            if tty && !config.process.env.iter().any(|e| e.starts_with("TERM=")) {
                env.push(cstr("TERM=xterm"));
            }
            // A command run in the container is under its filter too.
            seccomp::install(&filters)?;
            exec(&program, &argv, &env)
        })()
        .unwrap_err();
        eprintln!("basalt-runtime exec: {error}");
        unsafe { libc::_exit(126) };
    }
    Ok(wait_forwarding(child))
}
