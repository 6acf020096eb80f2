//! basaltctl's container verbs, talking to the runtime agent over
//! /run/basalt/runtime.sock (see agents/runtime/src/api.rs):
//! `images ls|pull|rm|prune`, `run`, `ps`, `exec`, `rm`, and `start`,
//! `stop` and `logs` for a name the runtime knows as a container.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use basalt_runtime::api::{call, ContainerStatus, ExecInput, Reply, Request};
use basalt_runtime::spec::{ContainerSpec, Port, Volume, FORMAT_VERSION};
use base64::Engine as _;

pub const USAGE: &str = "containers (basalt-runtime.service):
  images ls|pull REF|rm REF|prune   container images in the store
  run [--name N] [--cpu 750m] [--memory 128M] [--pids N] [--net bridge|host|none]
      [-p [IP:]HOST:CONTAINER[/udp]]... [--restart always|on-failure|never]
      [-e K=V]... [-v SRC:DST[:ro]]... [--privileged] [--cap-add CAP]... [--cap-drop CAP]...
      [--device /dev/X[:/dev/Y][:rwm]]... [--security-opt seccomp=default|unconfined|PATH] [--userns auto]
      IMAGE [ARGS...]
      (default: a private bridge network, docker's capabilities, the default
      devices only, the default seccomp profile; anything wider is named)
  ps                  containers: state, pid, restarts, last exit, what each was granted
  inspect NAME        its declaration, capabilities, seccomp profile and device rules (JSON)
  exec [-i] [-t] NAME CMD...   run CMD in a running container (-i: stdin too, -t: a terminal)
  rm [-f] NAME        remove a container (-f: stop it first)
  start|stop|logs NAME   act on the container NAME if the runtime has one, else on the unit";

/// Whether `name` is one of the runtime's containers (units win when the
/// name carries a unit suffix).
pub fn is_container(name: &str) -> bool {
    let unit_suffix = [".service", ".target", ".socket", ".timer", ".mount", ".path"].iter().any(|s| name.ends_with(s));
    !unit_suffix && basalt_runtime::spec::valid_name(name) && Path::new(basalt_runtime::store::DEFAULT_ROOT).join("containers").join(name).join("container.json").exists()
}

/// Sends a request whose answer is one `ok` or `error`.
fn simple(request: Request) -> Result<(), String> {
    let mut outcome = Err("no answer from the runtime agent".to_string());
    call(&request, |reply| match reply {
        Reply::Ok(text) => {
            println!("{text}");
            outcome = Ok(());
        }
        Reply::Error(e) => outcome = Err(e),
        other => outcome = Err(format!("unexpected answer {other:?}")),
    })?;
    outcome
}

pub fn images(args: &[&str]) -> Result<(), String> {
    match args {
        [] | ["ls"] => {
            let mut outcome = Err("no answer from the runtime agent".to_string());
            call(&Request::Images, |reply| match reply {
                Reply::Images(list) => {
                    println!("{:<48} {:<19} {:>10}  USED BY", "IMAGE", "DIGEST", "SIZE");
                    for image in list {
                        let used = if image.used_by.is_empty() { "-".to_string() } else { image.used_by.join(",") };
                        println!("{:<48} {:<19} {:>10}  {used}", image.reference, &image.digest[..image.digest.len().min(19)], human(image.size));
                    }
                    outcome = Ok(());
                }
                Reply::Error(e) => outcome = Err(e),
                other => outcome = Err(format!("unexpected answer {other:?}")),
            })?;
            outcome
        }
        ["pull", reference] => simple(Request::Pull { reference: reference.to_string() }),
        ["rm", reference] => simple(Request::RemoveImage { reference: reference.to_string() }),
        ["prune"] => simple(Request::Prune),
        _ => Err(format!("usage:\n{USAGE}")),
    }
}

fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b if b >= 1 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

/// `run`'s arguments as a container spec.
pub fn parse_run(args: &[&str]) -> Result<ContainerSpec, String> {
    let mut spec = ContainerSpec {
        version: FORMAT_VERSION,
        source: "basaltctl".into(),
        name: String::new(),
        image: String::new(),
        args: vec![],
        env: BTreeMap::new(),
        cpu_millis: None,
        memory_bytes: None,
        pids_limit: None,
        network: "bridge".into(),
        restart: "always".into(),
        volumes: vec![],
        ports: vec![],
        privileged: false,
        cap_add: vec![],
        cap_drop: vec![],
        devices: vec![],
        seccomp: None,
        userns: None,
    };
    let mut rest = args;
    while let Some((first, tail)) = rest.split_first() {
        if !first.starts_with('-') {
            break;
        }
        let first: &str = first;
        if first == "--privileged" {
            spec.privileged = true;
            rest = tail;
            continue;
        }
        let (flag, inline): (&str, Option<&str>) = match first.split_once('=') {
            Some((f, v)) => (f, Some(v)),
            None => (first, None),
        };
        let (value, tail): (&str, &[&str]) = match inline {
            Some(v) => (v, tail),
            None => match tail.split_first() {
                Some((v, t)) => (*v, t),
                None => return Err(format!("{flag} needs a value")),
            },
        };
        match flag {
            "--name" => spec.name = value.to_string(),
            "--cpu" => spec.cpu_millis = Some(basalt_cloud_config::config::parse_cpu_millis(value).ok_or_else(|| format!("--cpu {value:?} is not a CPU amount such as 750m or 2"))?),
            "--memory" => spec.memory_bytes = Some(basalt_cloud_config::config::parse_memory_bytes(value).ok_or_else(|| format!("--memory {value:?} is not a size such as 128M or 2G"))?),
            "--pids" => spec.pids_limit = Some(value.parse().map_err(|_| format!("--pids {value:?} is not a number"))?),
            "--net" | "--network" => spec.network = value.to_string(),
            "--restart" => spec.restart = value.to_string(),
            "--cap-add" => spec.cap_add.push(value.to_string()),
            "--cap-drop" => spec.cap_drop.push(value.to_string()),
            "--device" => spec.devices.push(value.to_string()),
            "--userns" => spec.userns = Some(value.to_string()),
            "--security-opt" => match value.split_once(['=', ':']) {
                Some(("seccomp", profile)) => spec.seccomp = Some(profile.to_string()),
                _ => return Err(format!("--security-opt {value:?}: only seccomp=default|unconfined|PATH is supported")),
            },
            "-p" | "--publish" => {
                let port = basalt_cloud_config::config::parse_port(value).ok_or_else(|| format!("-p {value:?} is not a port mapping such as 8080:80, 127.0.0.1:8443:443 or 53:53/udp"))?;
                spec.ports.push(Port { host_ip: port.host_ip, host_port: port.host_port, container_port: port.container_port, protocol: port.protocol });
            }
            "-e" | "--env" => {
                let (key, val) = value.split_once('=').ok_or_else(|| format!("-e {value:?} is not KEY=VALUE"))?;
                spec.env.insert(key.to_string(), val.to_string());
            }
            "-v" | "--volume" => {
                let parts: Vec<&str> = value.split(':').collect();
                let (source, target, read_only) = match parts.as_slice() {
                    [s, t] => (*s, *t, false),
                    [s, t, "ro"] => (*s, *t, true),
                    [s, t, "rw"] => (*s, *t, false),
                    _ => return Err(format!("-v {value:?} is not SRC:DST or SRC:DST:ro")),
                };
                spec.volumes.push(Volume { source: source.into(), target: target.into(), read_only });
            }
            other => return Err(format!("unknown option {other}")),
        }
        rest = tail;
    }
    let (image, command) = rest.split_first().ok_or("run needs an image")?;
    spec.image = image.to_string();
    spec.args = command.iter().map(|s| s.to_string()).collect();
    if spec.name.is_empty() {
        let reference = basalt_runtime::reference::Reference::parse(image).map_err(|e| e.to_string())?;
        spec.name = reference.repository.rsplit('/').next().unwrap_or("container").to_string();
    }
    spec.check()?;
    if !spec.ports.is_empty() && spec.network != "bridge" {
        return Err(format!(
            "-p publishes ports of a bridge network container; add --net bridge (with --net {} the container's ports are {})",
            spec.network,
            if spec.network == "host" { "the machine's" } else { "unreachable" }
        ));
    }
    Ok(spec)
}

pub fn run(args: &[&str]) -> Result<(), String> {
    simple(Request::Run { spec: parse_run(args)? })
}

pub fn ps() -> Result<(), String> {
    let mut outcome = Err("no answer from the runtime agent".to_string());
    call(&Request::Ps, |reply| match reply {
        Reply::Containers(list) => {
            print_ps(&list);
            outcome = Ok(());
        }
        Reply::Error(e) => outcome = Err(e),
        other => outcome = Err(format!("unexpected answer {other:?}")),
    })?;
    outcome
}

/// The declaration, the capabilities, seccomp profile and device rules it
/// gets, and its state, as JSON.
pub fn inspect(name: &str) -> Result<(), String> {
    let mut outcome = Err("no answer from the runtime agent".to_string());
    call(&Request::Inspect { name: name.to_string() }, |reply| match reply {
        Reply::Inspect(inspection) => {
            println!("{}", serde_json::to_string_pretty(&inspection).expect("serialises"));
            outcome = Ok(());
        }
        Reply::Error(e) => outcome = Err(e),
        other => outcome = Err(format!("unexpected answer {other:?}")),
    })?;
    outcome
}

fn print_ps(list: &[ContainerStatus]) {
    println!("{:<20} {:<40} {:<9} {:>7} {:>8} {:>5} {:<15} {:<10}  DETAIL", "NAME", "IMAGE", "STATE", "PID", "RESTARTS", "EXIT", "ADDRESS", "GRANTED");
    for c in list {
        println!(
            "{:<20} {:<40} {:<9} {:>7} {:>8} {:>5} {:<15} {:<10}  {}",
            c.name,
            c.image,
            c.state,
            c.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            c.restarts,
            c.exit_code.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
            c.address.as_deref().unwrap_or("-"),
            c.granted,
            c.detail
        );
    }
}

pub fn start(name: &str) -> Result<(), String> {
    simple(Request::Start { name: name.to_string() })
}

pub fn stop(name: &str) -> Result<(), String> {
    simple(Request::Stop { name: name.to_string() })
}

pub fn rm(args: &[&str]) -> Result<(), String> {
    match args {
        ["-f", name] | [name, "-f"] => simple(Request::Remove { name: name.to_string(), force: true }),
        [name] => simple(Request::Remove { name: name.to_string(), force: false }),
        _ => Err("usage: basaltctl rm [-f] NAME".into()),
    }
}

/// The size (rows, columns) of the terminal on `fd`, if it is one with a size.
fn window_size(fd: i32) -> Option<[u16; 2]> {
    // SAFETY: winsize is four u16s, for which all zeroes is valid.
    let mut size: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes one winsize into `size`, alive for the call.
    let ok = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut size) } == 0;
    (ok && size.ws_row > 0 && size.ws_col > 0).then_some([size.ws_row, size.ws_col])
}

/// The local terminal in raw mode (keys go to the container's terminal as
/// typed, ^C included) until `restore`.
struct RawMode(libc::termios);

impl RawMode {
    fn enter() -> Result<RawMode, String> {
        // SAFETY: termios is integers and arrays of them; all zeroes is valid.
        let mut saved: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: fills `saved`, a live termios.
        if unsafe { libc::tcgetattr(0, &mut saved) } != 0 {
            return Err(format!("reading the terminal's settings: {}", std::io::Error::last_os_error()));
        }
        let mut raw = saved;
        // SAFETY: edits `raw`, a live termios, in place.
        unsafe { libc::cfmakeraw(&mut raw) };
        // SAFETY: reads `raw`, a live termios, for the call.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &raw) };
        Ok(RawMode(saved))
    }

    fn restore(&self) {
        // SAFETY: reads the termios saved by enter(), alive in self.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &self.0) };
    }
}

/// `exec [-i] [-t] NAME CMD...`: the options, the name and the command.
fn parse_exec<'a>(args: &'a [&'a str]) -> Result<(bool, bool, &'a str, &'a [&'a str]), String> {
    let (mut interactive, mut tty) = (false, false);
    let mut rest = args;
    while let Some((flag, tail)) = rest.split_first().filter(|(f, _)| f.starts_with('-')) {
        match *flag {
            "-i" | "--interactive" => interactive = true,
            "-t" | "--tty" => tty = true,
            "-it" | "-ti" => (interactive, tty) = (true, true),
            other => return Err(format!("unknown option {other}; usage: basaltctl exec [-i] [-t] NAME CMD...")),
        }
        rest = tail;
    }
    let (name, command) = rest.split_first().filter(|(_, c)| !c.is_empty()).ok_or("usage: basaltctl exec [-i] [-t] NAME CMD...")?;
    Ok((interactive, tty, name, command))
}

/// Runs a command in a container; exits with its code. `-i` passes stdin
/// on, `-t` gives it a terminal (with `-i`, this one in raw mode).
pub fn exec(args: &[&str]) -> Result<(), String> {
    let (interactive, tty, name, command) = parse_exec(args)?;
    // SAFETY: isatty takes a descriptor number only.
    let stdin_is_terminal = unsafe { libc::isatty(0) } == 1;
    if tty && interactive && !stdin_is_terminal {
        return Err("-t with -i needs stdin to be a terminal (without -t, stdin is passed on through a pipe)".into());
    }
    let size = tty.then(|| window_size(0).or_else(|| window_size(1)).unwrap_or([24, 80]));
    let request = Request::Exec { name: name.to_string(), args: command.iter().map(|s| s.to_string()).collect(), interactive, tty: size };
    // SIGWINCH is taken by a thread of its own: blocked here before any other thread starts.
    if tty && interactive {
        basalt_runtime::linux::sys::sigmask(libc::SIG_BLOCK, &[libc::SIGWINCH]);
    }
    let stream = basalt_runtime::api::connect_at(basalt_runtime::api::SOCKET, &request)?;
    let raw = if interactive {
        let writer = std::sync::Arc::new(std::sync::Mutex::new(stream.try_clone().map_err(|e| e.to_string())?));
        let raw = if tty { Some(RawMode::enter()?) } else { None };
        if tty {
            let writer = writer.clone();
            std::thread::spawn(move || loop {
                // SAFETY: sigset_t is plain data; all zeroes is valid (and emptied below).
                let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
                let mut signal = 0;
                // SAFETY: the calls read and write `set` and `signal`, locals
                // alive for their duration; SIGWINCH is blocked in every thread
                // (above, before they started), so sigwait may take it.
                unsafe {
                    libc::sigemptyset(&mut set);
                    libc::sigaddset(&mut set, libc::SIGWINCH);
                    libc::sigwait(&set, &mut signal);
                }
                if let Some(size) = window_size(0) {
                    let _ = basalt_runtime::api::send_line(&mut *writer.lock().unwrap(), &ExecInput::Resize(size));
                }
            });
        }
        std::thread::spawn(move || {
            let mut buffer = vec![0u8; 16384];
            loop {
                // SAFETY: reads at most buffer.len() bytes into `buffer`, which has them.
                let n = unsafe { libc::read(0, buffer.as_mut_ptr().cast(), buffer.len()) };
                if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                let message = if n <= 0 { ExecInput::Eof } else { ExecInput::Stdin(base64::engine::general_purpose::STANDARD.encode(&buffer[..n as usize])) };
                let end = message == ExecInput::Eof;
                if basalt_runtime::api::send_line(&mut *writer.lock().unwrap(), &message).is_err() || end {
                    break;
                }
            }
        });
        raw
    } else {
        stream.shutdown(std::net::Shutdown::Write).map_err(|e| e.to_string())?;
        None
    };
    let mut code = None;
    let mut error = None;
    let outcome = basalt_runtime::api::replies(stream, |reply| match reply {
        Reply::Output { stream, data } => {
            let bytes = base64::engine::general_purpose::STANDARD.decode(data).unwrap_or_default();
            if stream == 2 {
                let _ = std::io::stderr().write_all(&bytes);
            } else {
                let _ = std::io::stdout().write_all(&bytes);
                let _ = std::io::stdout().flush();
            }
        }
        Reply::Exit(c) => code = Some(c),
        Reply::Error(e) => error = Some(e),
        other => error = Some(format!("unexpected answer {other:?}")),
    });
    if let Some(raw) = &raw {
        raw.restore();
    }
    outcome?;
    if let Some(e) = error {
        return Err(e);
    }
    std::process::exit(code.unwrap_or(1));
}

pub fn log_paths(name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = Path::new(basalt_runtime::logs::LOG_DIR);
    (dir.join(format!("{name}.log")), dir.join(format!("{name}.log.1")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_reads_rkt_style_flags() {
        let spec = parse_run(&["--cpu=750m", "--memory", "128M", "--net=none", "-e", "A=1", "-v", "/srv:/data:ro", "--restart", "on-failure", "example.com/app:1.0", "serve", "-x"]).unwrap();
        assert_eq!(spec.name, "app");
        assert_eq!((spec.cpu_millis, spec.memory_bytes), (Some(750), Some(128 << 20)));
        assert_eq!(spec.args, ["serve", "-x"]);
        assert!(spec.volumes[0].read_only);
        assert_eq!(spec.network, "none");
        assert!(parse_run(&["--memory", "lots", "x"]).unwrap_err().contains("--memory"));
        let spec = parse_run(&["--net", "bridge", "-p", "8080:80", "--publish=127.0.0.1:5353:53/udp", "x"]).unwrap();
        assert_eq!(spec.network, "bridge");
        assert_eq!(
            spec.ports,
            [
                Port { host_ip: None, host_port: 8080, container_port: 80, protocol: "tcp".into() },
                Port { host_ip: Some("127.0.0.1".into()), host_port: 5353, container_port: 53, protocol: "udp".into() }
            ]
        );
        assert!(parse_run(&["--net", "host", "-p", "8080:80", "x"]).unwrap_err().contains("add --net bridge"));
        assert_eq!(parse_run(&["-p", "8080:80", "x"]).unwrap().network, "bridge", "the default network is a private one");
        assert!(parse_run(&["--net", "bridge", "-p", "80:eighty", "x"]).unwrap_err().contains("\"80:eighty\" is not a port mapping"));
        assert!(parse_run(&["--net", "bridge", "-p", "80:80", "-p", "80:81", "x"]).unwrap_err().contains("publish the same host port"));
        assert!(parse_run(&["--wat", "1", "x"]).unwrap_err().contains("unknown option --wat"));
    }

    #[test]
    fn run_grants_only_what_is_named() {
        let spec = parse_run(&["x"]).unwrap();
        assert!(!spec.privileged && spec.cap_add.is_empty() && spec.devices.is_empty() && spec.seccomp.is_none());
        let spec = parse_run(&["--privileged", "--cap-add", "NET_ADMIN", "--cap-drop=mknod", "--device", "/dev/fuse", "--security-opt", "seccomp=unconfined", "x", "sh"]).unwrap();
        assert!(spec.privileged);
        assert_eq!((spec.cap_add, spec.cap_drop, spec.devices), (vec!["NET_ADMIN".to_string()], vec!["mknod".to_string()], vec!["/dev/fuse".to_string()]));
        assert_eq!(spec.seccomp.as_deref(), Some("unconfined"));
        assert_eq!(spec.args, ["sh"]);
        assert!(parse_run(&["--cap-add", "SUPERPOWER", "x"]).unwrap_err().contains("cap_add: \"SUPERPOWER\" is not a capability"));
        assert!(parse_run(&["--device", "/etc/passwd", "x"]).unwrap_err().contains("is not a path below /dev"));
        assert!(parse_run(&["--security-opt", "apparmor=x", "x"]).unwrap_err().contains("only seccomp="));
        assert!(parse_run(&["--userns", "auto", "x"]).unwrap().remapped());
        assert!(parse_run(&["--userns", "keep-id", "x"]).unwrap_err().contains("userns: \"keep-id\" is not auto or host"));
        assert!(parse_run(&["--userns", "auto", "--privileged", "x"]).unwrap_err().contains("contradict"));
        assert!(parse_run(&["--security-opt", "seccomp=strict", "x"]).unwrap_err().contains("\"strict\" is not default, unconfined"));
    }

    #[test]
    fn exec_reads_docker_style_flags() {
        assert_eq!(parse_exec(&["web", "ls", "-l"]).unwrap(), (false, false, "web", &["ls", "-l"][..]));
        assert_eq!(parse_exec(&["-it", "web", "sh"]).unwrap(), (true, true, "web", &["sh"][..]));
        assert_eq!(parse_exec(&["-i", "--tty", "web", "sh"]).unwrap(), (true, true, "web", &["sh"][..]));
        assert!(parse_exec(&["-x", "web", "sh"]).unwrap_err().contains("unknown option -x"));
        assert!(parse_exec(&["-i", "web"]).unwrap_err().contains("usage"));
    }
}
