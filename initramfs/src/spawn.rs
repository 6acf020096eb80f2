//! Starting one process of a service: its environment (Environment=,
//! EnvironmentFile=, $NOTIFY_SOCKET, and what the supervisor adds), user and
//! group, directory, stdio (the unit's log pipe, a socket, or /dev/null),
//! the sockets it is passed (sd_listen_fds(3)), its `Limit*=`, and its
//! cgroup, joined before exec so that nothing it does escapes it.

use crate::{activation, sys};
use basalt_unit::{Input, NotifyAccess, Output, Unit};
use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;

pub struct Account {
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

pub fn lookup_user(name: &str) -> Option<Account> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() >= 7 && f[0] == name)
        .and_then(|f| Some(Account { uid: f[2].parse().ok()?, gid: f[3].parse().ok()?, home: f[5].to_string() }))
}

pub fn lookup_group(name: &str) -> Option<u32> {
    let group = std::fs::read_to_string("/etc/group").ok()?;
    group.lines().map(|l| l.split(':').collect::<Vec<_>>()).find(|f| f.len() >= 3 && f[0] == name).and_then(|f| f[2].parse().ok())
}

/// Forks and execs `argv` as a process of unit `u`: returns its PID and
/// the read end of the pipe its stdout and stderr go to (unless they go to
/// a socket or /dev/null). `passed` are the sockets it gets from fd 3 on,
/// with their names; `extra_env` is added last (ExecStopPost='s
/// $SERVICE_RESULT…).
pub fn spawn(u: &Unit, argv: &[String], passed: &[(i32, String)], extra_env: &[(String, String)], cgroup: Option<&basalt_cgroup::Cgroup>) -> Result<(i32, OwnedFd), String> {
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`, which has two.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(std::io::Error::last_os_error().to_string());
    }
    // SAFETY: the pipe's two new descriptors, each owned by nothing else.
    let (read_end, write_end) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: F_SETFL on an open descriptor takes an int flag argument.
    unsafe { libc::fcntl(read_end.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    env.insert("PATH".into(), "/usr/bin:/usr/sbin".into());
    env.insert("LANG".into(), "C.UTF-8".into());
    let (mut uid, mut gid) = (None, None);
    let mut home = "/root".to_string();
    if let Some(user) = &u.user {
        let acct = lookup_user(user).ok_or_else(|| format!("User={user} does not exist"))?;
        (uid, gid) = (Some(acct.uid), Some(acct.gid));
        home = acct.home;
        env.insert("USER".into(), user.clone());
        env.insert("LOGNAME".into(), user.clone());
    }
    if let Some(g) = &u.group {
        gid = Some(lookup_group(g).ok_or_else(|| format!("Group={g} does not exist"))?);
    }
    env.insert("HOME".into(), home.clone());
    if u.notify() != NotifyAccess::None {
        env.insert("NOTIFY_SOCKET".into(), basalt_control::NOTIFY_SOCKET.into());
    }
    // As systemd.exec(5): EnvironmentFile= overrides Environment=.
    env.extend(u.environment.iter().cloned());
    for (path, optional) in &u.environment_files {
        match std::fs::read_to_string(path) {
            Ok(text) => env.extend(basalt_unit::parse_env_file(&text)),
            Err(_) if *optional => {}
            Err(e) => return Err(format!("EnvironmentFile={path}: {e}")),
        }
    }
    env.extend(extra_env.iter().cloned());
    // $VAR and ${VAR} in the arguments, from the service's environment.
    let argv = basalt_unit::name::expand_env(argv, |k| env.get(k).cloned());
    let mut cmd = std::process::Command::new(&argv[0]);
    cmd.args(&argv[1..]).arg0(&argv[0]);
    cmd.env_clear().envs(&env);
    if let Some(dir) = &u.working_directory {
        cmd.current_dir(if dir == "~" { home.as_str() } else { dir.trim_start_matches('-') });
    }
    // StandardInput=socket: the connection, or the one listening socket.
    let socket = match u.standard_input {
        Input::Socket if passed.len() == 1 => {
            // SAFETY: the descriptor is open (owned by the supervisor's sockets or connections) for this borrow.
            let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(passed[0].0) };
            Some(fd.try_clone_to_owned().map_err(|e| e.to_string())?)
        }
        Input::Socket => return Err(format!("StandardInput=socket needs exactly one socket, and {} are passed", passed.len())),
        Input::Null => None,
    };
    let output = match u.standard_output {
        Output::Inherit if socket.is_some() => Output::Socket,
        Output::Inherit | Output::Socket if socket.is_none() => Output::Log,
        other => other,
    };
    let error = match u.standard_error {
        Output::Inherit => output,
        Output::Socket if socket.is_none() => Output::Log,
        other => other,
    };
    let stdio = |o: Output| -> Result<std::process::Stdio, String> {
        Ok(match (o, &socket) {
            (Output::Null, _) => std::process::Stdio::null(),
            (Output::Socket, Some(s)) => s.try_clone().map_err(|e| e.to_string())?.into(),
            _ => write_end.try_clone().map_err(|e| e.to_string())?.into(),
        })
    };
    cmd.stdout(stdio(output)?);
    cmd.stderr(stdio(error)?);
    drop(write_end);
    cmd.stdin(match &socket {
        Some(s) => s.try_clone().map_err(|e| e.to_string())?.into(),
        None => std::process::Stdio::null(),
    });
    let join = cgroup.map(|c| c.procs_fd()).transpose().map_err(|e| format!("its cgroup: {e}"))?;
    let join_fd = join.as_ref().map(|f| f.as_raw_fd());
    let rlimits: Vec<(i32, libc::rlimit)> = u.rlimits.iter().map(|l| (l.resource, libc::rlimit { rlim_cur: l.soft, rlim_max: l.hard })).collect();
    let mut exec = if passed.is_empty() {
        None
    } else {
        let env: Vec<(String, String)> = env.into_iter().collect();
        let (fds, names): (Vec<i32>, Vec<String>) = passed.iter().cloned().unzip();
        Some(activation::ExecWithFds::new(&argv, &env, fds, &names).map_err(|e| e.to_string())?)
    };
    // What the spawn opens must land above the fds the sockets go to.
    let _held = if exec.is_some() { activation::occupy_below(3 + passed.len() as i32) } else { Vec::new() };
    // SAFETY: the closure runs in the forked child before exec and only
    // makes async-signal-safe calls (sigprocmask, setsid, write, setrlimit,
    // setgroups, setgid, setuid, and for sockets fcntl, dup2, getpid,
    // execve) on memory prepared before the fork; no allocation, no locks.
    unsafe {
        cmd.pre_exec(move || {
            sys::unblock_all_signals();
            // Its own session and process group.
            libc::setsid();
            if let Some(fd) = join_fd {
                basalt_cgroup::join_fd(fd)?;
            }
            // Limits first, while still root: raising a hard limit needs it.
            for (resource, limit) in &rlimits {
                if libc::setrlimit(*resource as _, limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if let Some(g) = gid {
                if uid.is_some() && libc::setgroups(0, std::ptr::null()) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::setgid(g) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if let Some(id) = uid {
                if libc::setuid(id) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if let Some(exec) = exec.as_mut() {
                return Err(exec.exec());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| e.to_string())?;
    drop(join);
    Ok((child.id() as i32, read_end))
}
