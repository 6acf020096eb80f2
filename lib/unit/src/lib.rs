//! Unit files in the systemd format users already write, parsed into what
//! basalt's supervisor runs. The subset: `[Unit]` Description, After, Before,
//! Requires, Wants, BindsTo, PartOf, Conflicts, Requisite, DefaultDependencies; `[Service]`
//! Type=simple|exec|oneshot|notify|forking, RemainAfterExit, PIDFile, NotifyAccess,
//! ExecStartPre, ExecStart, ExecStartPost, ExecStop, ExecStopPost, ExecReload, Restart= (every value
//! systemd has), RestartSec, SuccessExitStatus, KillSignal, KillMode, Environment,
//! EnvironmentFile, WorkingDirectory, User, Group, TimeoutStartSec, TimeoutStopSec, TimeoutSec,
//! `Limit*=` and the cgroup limits MemoryMax= and friends (see [`limits`]),
//! StandardInput=null|socket, StandardOutput=/StandardError=; `[Socket]` of
//! `.socket` units (see [`socket`]); `[Timer]` of `.timer` units (see
//! [`timer`]); `[Install]` WantedBy, RequiredBy, Alias. Specifiers (`%i`, `%n`,
//! `%H`… see [`name`]) expand in every value; an instance of a template
//! (`echo@1.service` of `echo@.service`) is parsed from the template's text
//! under its own name. Anything else is a warning
//! naming the directive and its line, never silently dropped; a file that
//! cannot be understood at all is an error for that unit only.

pub mod calendar;
pub mod install;
pub mod limits;
pub mod name;
pub mod socket;
pub mod timer;

pub use name::Machine;

use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{unit}:{line}: {message}")]
pub struct UnitError {
    pub unit: String,
    pub line: usize,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub line: usize,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ServiceType {
    #[default]
    Simple,
    Oneshot,
    /// Up when the main process says `READY=1` over $NOTIFY_SOCKET.
    Notify,
    /// Up when ExecStart='s process exits cleanly; the main process is the
    /// one it left behind (PIDFile=, or the only one in the service's cgroup).
    Forking,
}

/// `KillMode=`: which of the service's processes a stop signals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KillMode {
    /// Every process in the service's cgroup.
    #[default]
    ControlGroup,
    /// KillSignal= to the main process, SIGKILL to the rest of the cgroup.
    Mixed,
    /// The main process only; the rest are left running.
    Process,
    /// No process: only ExecStop= runs.
    None,
}

/// `NotifyAccess=`: whose sd_notify(3) messages count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NotifyAccess {
    /// None (the default for types other than notify).
    #[default]
    None,
    /// The main process (the default for Type=notify).
    Main,
    /// The main process and the Exec*= commands.
    Exec,
    /// Any process in the service's cgroup.
    All,
}

/// `TimeoutStartSec=`: how long a start may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartTimeout {
    /// systemd's: 90 s, but no limit for Type=oneshot.
    #[default]
    Default,
    Limit(Duration),
    /// `0` or `infinity`.
    Never,
}

/// `TimeoutStopSec=0` or `infinity`: a stop waits as long as it takes
/// (the same span `parse_duration` gives `infinity`).
pub const NO_STOP_LIMIT: Duration = Duration::from_secs(u32::MAX as u64);

/// systemd's DefaultTimeoutStartSec=.
pub const DEFAULT_START_TIMEOUT: Duration = Duration::from_secs(90);

/// `Restart=`, with systemd.service(5)'s meaning of each value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Restart {
    #[default]
    No,
    Always,
    OnSuccess,
    OnFailure,
    OnAbnormal,
    OnAbort,
    /// Accepted as systemd does; basalt has no service watchdog, so this
    /// never restarts.
    OnWatchdog,
}

/// How a service's main process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// exit(2) with this status.
    Exited(i32),
    /// Killed by this signal.
    Signaled(i32),
    /// A start or stop that ran out of time.
    Timeout,
}

/// `SuccessExitStatus=`: exit codes and signals that count as a clean end,
/// besides status 0 and SIGHUP, SIGINT, SIGTERM and SIGPIPE.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SuccessStatus {
    pub codes: Vec<i32>,
    pub signals: Vec<i32>,
}

/// The signals by name, as `KillSignal=` and `SuccessExitStatus=` take them
/// (`SIGTERM` or `TERM`; Linux numbers).
const SIGNALS: [(&str, i32); 31] = [
    ("HUP", 1),
    ("INT", 2),
    ("QUIT", 3),
    ("ILL", 4),
    ("TRAP", 5),
    ("ABRT", 6),
    ("BUS", 7),
    ("FPE", 8),
    ("KILL", 9),
    ("USR1", 10),
    ("SEGV", 11),
    ("USR2", 12),
    ("PIPE", 13),
    ("ALRM", 14),
    ("TERM", 15),
    ("STKFLT", 16),
    ("CHLD", 17),
    ("CONT", 18),
    ("STOP", 19),
    ("TSTP", 20),
    ("TTIN", 21),
    ("TTOU", 22),
    ("URG", 23),
    ("XCPU", 24),
    ("XFSZ", 25),
    ("VTALRM", 26),
    ("PROF", 27),
    ("WINCH", 28),
    ("IO", 29),
    ("PWR", 30),
    ("SYS", 31),
];

/// `SIGTERM`, `TERM` or `15` → 15.
pub fn parse_signal(v: &str) -> Option<i32> {
    if let Ok(n) = v.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let bare = v.strip_prefix("SIG").unwrap_or(v);
    SIGNALS.iter().find(|(name, _)| *name == bare).map(|(_, n)| *n)
}

/// `SIGTERM` for 15, `signal 40` for one without a name.
pub fn signal_name(n: i32) -> String {
    SIGNALS.iter().find(|(_, m)| *m == n).map(|(name, _)| format!("SIG{name}")).unwrap_or_else(|| format!("signal {n}"))
}

/// Where a service's standard input comes from (`StandardInput=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Input {
    #[default]
    Null,
    /// The connection of an `Accept=yes` socket.
    Socket,
}

/// Where a service's standard output or error goes (`StandardOutput=`,
/// `StandardError=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Output {
    /// The unit's log (journal, syslog, kmsg and their `+console` forms).
    #[default]
    Log,
    Null,
    /// The connection of an `Accept=yes` socket.
    Socket,
    /// Output: the same as the input when that is a socket, else the log;
    /// error: the same as the output.
    Inherit,
}

/// One command line of an Exec*= directive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub argv: Vec<String>,
    /// `-` prefix: a failure of this command is not a failure of the unit.
    pub ignore_failure: bool,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Unit {
    pub name: String,
    pub description: String,
    pub after: Vec<String>,
    pub before: Vec<String>,
    pub requires: Vec<String>,
    pub wants: Vec<String>,
    /// `BindsTo=`: as Requires=, and this unit stops whenever that one is
    /// down (stopped, failed, restarting).
    pub binds_to: Vec<String>,
    /// `PartOf=`: a stop or restart of that unit is also one of this unit.
    pub part_of: Vec<String>,
    /// `Conflicts=`: starting this unit stops those, and starting one of
    /// those stops this (the supervisor looks both ways).
    pub conflicts: Vec<String>,
    /// `Requisite=`: as Requires=, but the unit is not started: it must be
    /// up already, or this unit fails.
    pub requisite: Vec<String>,
    /// `DefaultDependencies=no`: an early unit, one that the supervisor
    /// starts before every unit that keeps the default (`yes`), as systemd
    /// orders its early-boot units before sysinit.target.
    pub default_dependencies: bool,
    pub service_type: ServiceType,
    pub remain_after_exit: bool,
    pub exec_start_pre: Vec<Command>,
    pub exec_start: Vec<Command>,
    pub exec_start_post: Vec<Command>,
    pub exec_stop: Vec<Command>,
    /// `ExecReload=`: run, while the service runs, for `reload NAME`.
    pub exec_reload: Vec<Command>,
    /// `ExecStopPost=`: run, in order, once the service has stopped,
    /// however it stopped (even a start that failed).
    pub exec_stop_post: Vec<Command>,
    pub timeout_start: StartTimeout,
    pub kill_mode: KillMode,
    /// `NotifyAccess=`; for Type=notify, unset means `main`.
    pub notify_access: Option<NotifyAccess>,
    /// `PIDFile=` of a Type=forking service (relative paths are below /run).
    pub pid_file: Option<String>,
    /// `Limit*=`, applied with setrlimit(2) before exec.
    pub rlimits: Vec<limits::Rlimit>,
    /// `MemoryMax=`, `CPUQuota=`, `TasksMax=`…: written into the service's
    /// cgroup before it starts; a later one for the same file wins.
    pub cgroup_limits: Vec<limits::CgroupLimit>,
    pub restart: Restart,
    pub restart_sec: Duration,
    pub timeout_stop: Duration,
    /// `KillSignal=`: what stopping sends first (SIGTERM by default).
    pub kill_signal: i32,
    pub success_exit_status: SuccessStatus,
    pub environment: Vec<(String, String)>,
    /// Files of KEY=VALUE lines; `optional` for the `-` prefix.
    pub environment_files: Vec<(String, bool)>,
    pub working_directory: Option<String>,
    pub user: Option<String>,
    pub group: Option<String>,
    pub standard_input: Input,
    pub standard_output: Output,
    pub standard_error: Output,
    /// `[Socket]` of a `.socket` unit.
    pub socket: Option<socket::SocketSpec>,
    /// `[Timer]` of a `.timer` unit.
    pub timer: Option<timer::TimerSpec>,
    pub wanted_by: Vec<String>,
    pub required_by: Vec<String>,
    /// `Alias=`: more names the unit answers to (`etcd2.service` for
    /// `etcd-member.service`); the supervisor resolves them.
    pub aliases: Vec<String>,
    pub warnings: Vec<Warning>,
}

impl Unit {
    /// Parses a unit file and then its drop-ins, in order (later wins, an empty
    /// assignment resets a list, as in systemd).
    /// Specifiers expand with [`Machine::default`]'s facts; the supervisor
    /// uses [`Unit::parse_on`] with the running machine's.
    pub fn parse(name: &str, main: &str, drop_ins: &[(&str, &str)]) -> Result<Unit, UnitError> {
        Unit::parse_on(name, main, drop_ins, &Machine::default())
    }

    /// Parses unit `name` as [`Unit::parse`] does, expanding the specifiers
    /// (`%i`, `%n`, `%H`…) in every value with `machine`'s facts. An
    /// instance (`echo@1.service`) is parsed from its template's text under
    /// its own name, so `%i` is `1`; a template itself cannot be run.
    pub fn parse_on(name: &str, main: &str, drop_ins: &[(&str, &str)], machine: &Machine) -> Result<Unit, UnitError> {
        let mut u = Unit {
            name: name.to_string(),
            default_dependencies: true,
            restart_sec: Duration::from_millis(100),
            timeout_stop: Duration::from_secs(10),
            kill_signal: 15,
            standard_error: Output::Inherit,
            standard_output: Output::Inherit,
            ..Default::default()
        };
        let refuse = |message: String| Err(UnitError { unit: name.into(), line: 0, message });
        let Some(kind) = name::Kind::of(name) else {
            return refuse(format!("only {} units are supported", name::SUPPORTED_SUFFIXES.map(|s| format!(".{s}")).join(", ")));
        };
        match kind {
            name::Kind::Socket => u.socket = Some(socket::SocketSpec::default()),
            name::Kind::Timer => u.timer = Some(timer::TimerSpec { remain_after_elapse: true, ..Default::default() }),
            _ => {}
        }
        if !name::valid(name) {
            return refuse("not a unit name (PREFIX[@INSTANCE].SUFFIX of letters, digits and :-_.\\)".into());
        }
        if name::is_template(name) {
            return refuse("a template runs only as an instance, e.g. NAME@INSTANCE.SUFFIX".into());
        }
        u.apply(name, main, machine)?;
        for (dname, text) in drop_ins {
            u.apply(dname, text, machine)?;
        }
        if name.ends_with(".service") && u.exec_start.is_empty() {
            return Err(UnitError { unit: name.into(), line: 0, message: "no ExecStart=".into() });
        }
        if let Some(sock) = &u.socket {
            if sock.listen.is_empty() {
                return refuse("no ListenStream=, ListenDatagram= or ListenSequentialPacket=: the socket would listen on nothing".into());
            }
            if sock.accept && sock.service.is_some() {
                return refuse("Service= cannot be used with Accept=yes, which starts an instance of the PREFIX@.service template per connection".into());
            }
            if sock.accept && sock.listen.iter().any(|l| l.transport != socket::Transport::Stream) {
                return refuse("Accept=yes needs stream sockets (ListenStream=); datagram and seqpacket sockets have no connections".into());
            }
        }
        if let Some(t) = &u.timer {
            if t.is_empty() {
                return refuse("no OnCalendar=, OnActiveSec=, OnBootSec=, OnStartupSec=, OnUnitActiveSec= or OnUnitInactiveSec=: the timer would never elapse".into());
            }
        }
        if u.service_type != ServiceType::Oneshot && u.exec_start.len() > 1 {
            return Err(UnitError { unit: name.into(), line: 0, message: "more than one ExecStart= needs Type=oneshot".into() });
        }
        if u.pid_file.is_some() && u.service_type != ServiceType::Forking {
            u.warn(0, "PIDFile= is only read for Type=forking".into());
        }
        Ok(u)
    }

    fn apply(&mut self, file: &str, text: &str, machine: &Machine) -> Result<(), UnitError> {
        let mut section = String::new();
        let mut ignored = false;
        for (lineno, line) in logical_lines(text) {
            let err = |message: String| UnitError { unit: file.to_string(), line: lineno, message };
            let t = line.trim();
            if t.is_empty() || t.starts_with('#') || t.starts_with(';') {
                continue;
            }
            if t.starts_with('[') {
                if !t.ends_with(']') {
                    return Err(err(format!("bad section header {t:?}")));
                }
                section = t[1..t.len() - 1].to_string();
                let own = match name::Kind::of(&self.name) {
                    Some(name::Kind::Service) => "Service",
                    Some(name::Kind::Socket) => "Socket",
                    Some(name::Kind::Timer) => "Timer",
                    _ => "Unit",
                };
                ignored = !matches!(section.as_str(), "Unit" | "Install") && section != own;
                if ignored && matches!(section.as_str(), "Service" | "Socket" | "Timer") {
                    self.warn(lineno, format!("section [{section}] does not belong in a {} unit; its directives are ignored", self.name.rsplit_once('.').map_or("", |(_, s)| s)));
                } else if ignored {
                    self.warn(lineno, format!("section [{section}] is not supported; its directives are ignored"));
                }
                continue;
            }
            let Some((key, value)) = t.split_once('=') else {
                return Err(err(format!("expected Key=Value, found {t:?}")));
            };
            let (key, value) = (key.trim(), value.trim());
            if section.is_empty() {
                return Err(err(format!("{key}= outside of any section")));
            }
            if ignored {
                continue;
            }
            // As in systemd, the resource-control directives take no
            // specifiers: their `%` is a percentage.
            let value = if limits::is_cgroup_limit(key) { value.to_string() } else { name::expand_specifiers(value, &self.name.clone(), machine).map_err(|e| err(format!("{key}=: {e}")))? };
            self.directive(&section, key, &value, lineno).map_err(err)?;
        }
        Ok(())
    }

    /// How long a start may take, None for no limit.
    pub fn start_limit(&self) -> Option<Duration> {
        match self.timeout_start {
            StartTimeout::Default if self.service_type == ServiceType::Oneshot => None,
            StartTimeout::Default => Some(DEFAULT_START_TIMEOUT),
            StartTimeout::Limit(d) => Some(d),
            StartTimeout::Never => None,
        }
    }

    /// Whose sd_notify(3) messages count, with Type=notify's default.
    pub fn notify(&self) -> NotifyAccess {
        self.notify_access.unwrap_or(if self.service_type == ServiceType::Notify { NotifyAccess::Main } else { NotifyAccess::None })
    }

    /// Whether `ending` is a clean end: status 0, SIGHUP, SIGINT, SIGTERM or
    /// SIGPIPE, or one `SuccessExitStatus=` names.
    pub fn clean(&self, ending: Ending) -> bool {
        match ending {
            Ending::Exited(code) => code == 0 || self.success_exit_status.codes.contains(&code),
            Ending::Signaled(sig) => matches!(sig, 1 | 2 | 13 | 15) || self.success_exit_status.signals.contains(&sig),
            Ending::Timeout => false,
        }
    }

    /// Whether the main process ending this way restarts the service, as
    /// systemd.service(5)'s table for `Restart=` says. A stop asked for
    /// never restarts; the supervisor does not ask then.
    pub fn restarts_after(&self, ending: Ending) -> bool {
        let clean = self.clean(ending);
        match self.restart {
            Restart::No | Restart::OnWatchdog => false,
            Restart::Always => true,
            Restart::OnSuccess => clean,
            Restart::OnFailure => !clean,
            Restart::OnAbnormal => !clean && !matches!(ending, Ending::Exited(_)),
            Restart::OnAbort => !clean && matches!(ending, Ending::Signaled(_)),
        }
    }

    fn warn(&mut self, line: usize, message: String) {
        self.warnings.push(Warning { line, message });
    }

    fn directive(&mut self, section: &str, key: &str, value: &str, line: usize) -> Result<(), String> {
        let list = |v: &str| v.split_whitespace().map(str::to_string).collect::<Vec<_>>();
        fn extend_or_reset<T>(target: &mut Vec<T>, value: &str, items: Vec<T>) {
            if value.is_empty() {
                target.clear();
            } else {
                target.extend(items);
            }
        }
        match (section, key) {
            ("Unit", "Description") => self.description = value.to_string(),
            ("Unit", "After") => extend_or_reset(&mut self.after, value, list(value)),
            ("Unit", "Before") => extend_or_reset(&mut self.before, value, list(value)),
            ("Unit", "Requires") => extend_or_reset(&mut self.requires, value, list(value)),
            ("Unit", "Wants") => extend_or_reset(&mut self.wants, value, list(value)),
            ("Unit", "BindsTo") => extend_or_reset(&mut self.binds_to, value, list(value)),
            ("Unit", "PartOf") => extend_or_reset(&mut self.part_of, value, list(value)),
            ("Unit", "Conflicts") => extend_or_reset(&mut self.conflicts, value, list(value)),
            ("Unit", "Requisite") => extend_or_reset(&mut self.requisite, value, list(value)),
            ("Unit", "DefaultDependencies") => self.default_dependencies = parse_bool(value).ok_or_else(|| format!("DefaultDependencies={value}: expected yes or no"))?,
            ("Unit", "Documentation") => {}
            ("Service", "Type") => {
                self.service_type = match value {
                    "simple" | "exec" | "idle" => ServiceType::Simple,
                    "oneshot" => ServiceType::Oneshot,
                    "notify" | "notify-reload" => ServiceType::Notify,
                    "forking" => ServiceType::Forking,
                    "dbus" => {
                        self.warn(line, "Type=dbus is run as Type=simple: basalt has no D-Bus".into());
                        ServiceType::Simple
                    }
                    _ => return Err(format!("Type={value}: expected simple, exec, oneshot, notify or forking")),
                }
            }
            ("Service", "RemainAfterExit") => self.remain_after_exit = parse_bool(value).ok_or_else(|| format!("RemainAfterExit={value}: expected yes or no"))?,
            ("Service", "ExecStartPre") => extend_or_reset(&mut self.exec_start_pre, value, vec![parse_command(value)?]),
            ("Service", "ExecStart") => extend_or_reset(&mut self.exec_start, value, vec![parse_command(value)?]),
            ("Service", "ExecStartPost") => extend_or_reset(&mut self.exec_start_post, value, vec![parse_command(value)?]),
            ("Service", "ExecStop") => extend_or_reset(&mut self.exec_stop, value, vec![parse_command(value)?]),
            ("Service", "ExecReload") => extend_or_reset(&mut self.exec_reload, value, vec![parse_command(value)?]),
            ("Service", "ExecStopPost") => extend_or_reset(&mut self.exec_stop_post, value, vec![parse_command(value)?]),
            ("Service", "TimeoutStartSec" | "TimeoutSec") => {
                let span = parse_duration(value).ok_or_else(|| format!("{key}={value}: expected a time span, 0 or infinity"))?;
                let never = span.is_zero() || value == "infinity";
                self.timeout_start = if never { StartTimeout::Never } else { StartTimeout::Limit(span) };
                if key == "TimeoutSec" {
                    // As TimeoutStopSec=: 0 is no limit, not an instant SIGKILL.
                    self.timeout_stop = if never { NO_STOP_LIMIT } else { span };
                }
            }
            ("Service", "KillMode") => {
                self.kill_mode = match value {
                    "control-group" => KillMode::ControlGroup,
                    "mixed" => KillMode::Mixed,
                    "process" => KillMode::Process,
                    "none" => KillMode::None,
                    _ => return Err(format!("KillMode={value}: expected control-group, mixed, process or none")),
                }
            }
            ("Service", "NotifyAccess") => {
                self.notify_access = Some(match value {
                    "none" => NotifyAccess::None,
                    "main" => NotifyAccess::Main,
                    "exec" => NotifyAccess::Exec,
                    "all" => NotifyAccess::All,
                    _ => return Err(format!("NotifyAccess={value}: expected none, main, exec or all")),
                })
            }
            ("Service", "PIDFile") => {
                self.pid_file = match value {
                    "" => None,
                    v if v.split('/').any(|c| c == "..") => return Err(format!("PIDFile={v}: a path without ..")),
                    v if v.starts_with('/') => Some(v.to_string()),
                    v => Some(format!("/run/{v}")),
                }
            }
            ("Service", k) if limits::is_rlimit(k) => {
                let limit = limits::parse_rlimit(k, value)?;
                self.rlimits.retain(|l| l.resource != limit.resource);
                self.rlimits.push(limit);
            }
            ("Service", k) if limits::is_cgroup_limit(k) => {
                let limit = limits::parse_cgroup_limit(k, value)?;
                self.cgroup_limits.retain(|l| l.file != limit.file);
                self.cgroup_limits.push(limit);
            }
            ("Service", "Restart") => {
                self.restart = match value {
                    "no" => Restart::No,
                    "always" => Restart::Always,
                    "on-success" => Restart::OnSuccess,
                    "on-failure" => Restart::OnFailure,
                    "on-abnormal" => Restart::OnAbnormal,
                    "on-abort" => Restart::OnAbort,
                    "on-watchdog" => Restart::OnWatchdog,
                    _ => return Err(format!("Restart={value}: expected no, always, on-success, on-failure, on-abnormal, on-abort or on-watchdog")),
                }
            }
            ("Service", "RestartSec") => self.restart_sec = parse_duration(value).ok_or_else(|| format!("RestartSec={value}: expected a time span like 5, 5s or 500ms"))?,
            ("Service", "KillSignal") => self.kill_signal = parse_signal(value).ok_or_else(|| format!("KillSignal={value}: not a signal (SIGTERM, TERM or a number)"))?,
            ("Service", "SuccessExitStatus") => {
                if value.is_empty() {
                    self.success_exit_status = SuccessStatus::default();
                }
                for word in value.split_whitespace() {
                    match word.parse::<u8>() {
                        Ok(code) => self.success_exit_status.codes.push(code.into()),
                        Err(_) => match parse_signal(word).filter(|_| !word.bytes().all(|b| b.is_ascii_digit())) {
                            Some(sig) => self.success_exit_status.signals.push(sig),
                            None => return Err(format!("SuccessExitStatus: {word:?} is neither an exit status (0..255) nor a signal name")),
                        },
                    }
                }
            }
            ("Service", "TimeoutStopSec") => {
                let span = parse_duration(value).ok_or_else(|| format!("TimeoutStopSec={value}: expected a time span"))?;
                self.timeout_stop = if span.is_zero() { NO_STOP_LIMIT } else { span };
            }
            ("Service", "Environment") => {
                if value.is_empty() {
                    self.environment.clear();
                }
                for word in split_words(value)? {
                    let (k, v) = word.split_once('=').ok_or_else(|| format!("Environment: {word:?} is not KEY=VALUE"))?;
                    self.environment.push((k.to_string(), v.to_string()));
                }
            }
            ("Service", "EnvironmentFile") => {
                if value.is_empty() {
                    self.environment_files.clear();
                } else if let Some(p) = value.strip_prefix('-') {
                    self.environment_files.push((p.to_string(), true));
                } else {
                    self.environment_files.push((value.to_string(), false));
                }
            }
            ("Service", "WorkingDirectory") => self.working_directory = Some(value.to_string()).filter(|v| !v.is_empty()),
            ("Service", "User") => self.user = Some(value.to_string()).filter(|v| !v.is_empty()),
            ("Service", "Group") => self.group = Some(value.to_string()).filter(|v| !v.is_empty()),
            ("Service", "StandardInput") => {
                self.standard_input = match value {
                    "null" => Input::Null,
                    "socket" => Input::Socket,
                    _ => return Err(format!("StandardInput={value}: expected null or socket")),
                }
            }
            ("Service", "StandardOutput" | "StandardError") => {
                let output = match value {
                    "journal" | "syslog" | "kmsg" | "journal+console" | "syslog+console" | "kmsg+console" => Output::Log,
                    "null" => Output::Null,
                    "socket" => Output::Socket,
                    "inherit" => Output::Inherit,
                    _ => return Err(format!("{key}={value}: expected journal, inherit, null or socket")),
                };
                if key == "StandardOutput" {
                    self.standard_output = output;
                } else {
                    self.standard_error = output;
                }
            }
            ("Socket", _) => self.socket_directive(key, value, line)?,
            ("Timer", _) => self.timer_directive(key, value, line)?,
            ("Install", "WantedBy") => extend_or_reset(&mut self.wanted_by, value, list(value)),
            ("Install", "RequiredBy") => extend_or_reset(&mut self.required_by, value, list(value)),
            ("Install", "Alias") => {
                let names = list(value);
                let suffix = self.name.rsplit_once('.').map(|(_, s)| s).unwrap_or_default().to_string();
                if let Some(bad) = names.iter().find(|n| n.rsplit_once('.').map(|(_, s)| s) != Some(suffix.as_str()) || n.contains('/')) {
                    return Err(format!("Alias={bad}: an alias is another name with the same suffix (.{suffix})"));
                }
                extend_or_reset(&mut self.aliases, value, names)
            }
            ("Unit" | "Service" | "Install", _) => self.warn(line, format!("unknown directive {key}= in [{section}] ignored")),
            _ => {}
        }
        Ok(())
    }

    fn socket_directive(&mut self, key: &str, value: &str, line: usize) -> Result<(), String> {
        use socket::{Ipv6Only, Listen, Transport};
        let bool_of = |v: &str| parse_bool(v).ok_or_else(|| format!("{key}={v}: expected yes or no"));
        let mut unknown = false;
        let s = self.socket.as_mut().expect("a .socket unit has a [Socket] spec");
        match key {
            "ListenStream" | "ListenDatagram" | "ListenSequentialPacket" => {
                if value.is_empty() {
                    s.listen.clear();
                } else {
                    let transport = match key {
                        "ListenStream" => Transport::Stream,
                        "ListenDatagram" => Transport::Datagram,
                        _ => Transport::SequentialPacket,
                    };
                    let address = socket::parse_address(value).map_err(|e| format!("{key}={e}"))?;
                    if transport == Transport::SequentialPacket && !matches!(address, socket::Address::Path(_) | socket::Address::Abstract(_)) {
                        return Err(format!("{key}={value}: sequential-packet sockets are Unix sockets (a path or @name)"));
                    }
                    s.listen.push(Listen { transport, address });
                }
            }
            "Accept" => s.accept = bool_of(value)?,
            "Service" => {
                if name::Kind::of(value) != Some(name::Kind::Service) || !name::valid(value) || name::is_template(value) {
                    return Err(format!("Service={value}: expected the name of a service, such as app.service"));
                }
                s.service = Some(value.to_string());
            }
            "SocketMode" => s.socket_mode = socket::parse_mode(value).ok_or_else(|| format!("SocketMode={value}: expected an octal mode such as 0660"))?,
            "DirectoryMode" => s.directory_mode = socket::parse_mode(value).ok_or_else(|| format!("DirectoryMode={value}: expected an octal mode such as 0755"))?,
            "BindIPv6Only" => {
                s.ipv6_only = match value {
                    "default" => Ipv6Only::Default,
                    "both" => Ipv6Only::Both,
                    "ipv6-only" => Ipv6Only::Ipv6Only,
                    _ => return Err(format!("BindIPv6Only={value}: expected default, both or ipv6-only")),
                }
            }
            "Backlog" => s.backlog = value.parse().ok().filter(|b| *b > 0).ok_or_else(|| format!("Backlog={value}: expected a positive number"))?,
            "MaxConnections" => s.max_connections = value.parse().ok().filter(|b| *b > 0).ok_or_else(|| format!("MaxConnections={value}: expected a positive number"))?,
            "ReusePort" => s.reuse_port = bool_of(value)?,
            "FreeBind" => s.free_bind = bool_of(value)?,
            "RemoveOnStop" => s.remove_on_stop = bool_of(value)?,
            "FileDescriptorName" => {
                if value.is_empty() || value.len() > 255 || value.contains(':') || !value.chars().all(|c| c.is_ascii_graphic()) {
                    return Err(format!("FileDescriptorName={value:?}: expected 1 to 255 printable characters without ':'"));
                }
                s.fd_name = Some(value.to_string());
            }
            _ => unknown = true,
        }
        if unknown {
            self.warn(line, format!("unknown directive {key}= in [Socket] ignored"));
        }
        Ok(())
    }

    fn timer_directive(&mut self, key: &str, value: &str, line: usize) -> Result<(), String> {
        let span = |v: &str| parse_duration(v).ok_or_else(|| format!("{key}={v}: expected a time span such as 30, 5min or 1h 30min"));
        let mut unknown = false;
        let t = self.timer.as_mut().expect("a .timer unit has a [Timer] spec");
        let spans = match key {
            "OnActiveSec" => Some(&mut t.on_active),
            "OnBootSec" => Some(&mut t.on_boot),
            "OnStartupSec" => Some(&mut t.on_startup),
            "OnUnitActiveSec" => Some(&mut t.on_unit_active),
            "OnUnitInactiveSec" => Some(&mut t.on_unit_inactive),
            _ => None,
        };
        if let Some(list) = spans {
            if value.is_empty() {
                list.clear();
            } else {
                list.push(span(value)?);
            }
            return Ok(());
        }
        match key {
            "OnCalendar" => {
                if value.is_empty() {
                    t.on_calendar.clear();
                } else {
                    t.on_calendar.push(calendar::CalendarSpec::parse(value)?);
                }
            }
            "Persistent" => t.persistent = parse_bool(value).ok_or_else(|| format!("Persistent={value}: expected yes or no"))?,
            "RemainAfterElapse" => t.remain_after_elapse = parse_bool(value).ok_or_else(|| format!("RemainAfterElapse={value}: expected yes or no"))?,
            "RandomizedDelaySec" => t.randomized_delay = span(value)?,
            // The window within which systemd may coalesce elapses; basalt
            // elapses on time, which the setting allows.
            "AccuracySec" => {
                span(value)?;
            }
            "Unit" => {
                if !name::valid(value) || name::is_template(value) || matches!(name::Kind::of(value), None | Some(name::Kind::Timer)) {
                    return Err(format!("Unit={value}: expected the name of the unit to start, such as backup.service"));
                }
                t.unit = Some(value.to_string());
            }
            _ => unknown = true,
        }
        if unknown {
            self.warn(line, format!("unknown directive {key}= in [Timer] ignored"));
        }
        Ok(())
    }

    /// The unit a socket (Accept=no) or timer starts: `Service=`/`Unit=`,
    /// or the service of its own name (`app.socket` → `app.service`). For
    /// an `Accept=yes` socket, the template (`app@.service`) of the
    /// per-connection instances. None for other units.
    pub fn triggers(&self) -> Option<String> {
        let stem = self.name.rsplit_once('.')?.0;
        if let Some(s) = &self.socket {
            if s.accept {
                return Some(format!("{stem}@.service"));
            }
            return Some(s.service.clone().unwrap_or_else(|| format!("{stem}.service")));
        }
        let t = self.timer.as_ref()?;
        Some(t.unit.clone().unwrap_or_else(|| format!("{stem}.service")))
    }
}

/// Joins backslash-continued lines; yields (first line number, text).
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, line) in text.lines().enumerate() {
        let (start, mut acc) = current.take().unwrap_or((i + 1, String::new()));
        if let Some(body) = line.strip_suffix('\\') {
            acc.push_str(body);
            acc.push(' ');
            current = Some((start, acc));
        } else {
            acc.push_str(line);
            out.push((start, acc));
        }
    }
    if let Some(c) = current {
        out.push(c);
    }
    out
}

pub fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "yes" | "true" | "on" => Some(true),
        "0" | "no" | "false" | "off" => Some(false),
        _ => None,
    }
}

/// systemd time spans: a bare number is seconds; units us, ms, s, min, h.
pub fn parse_duration(v: &str) -> Option<Duration> {
    if v == "infinity" {
        return Some(Duration::from_secs(u32::MAX as u64));
    }
    let mut total = Duration::ZERO;
    for part in v.split_whitespace() {
        let split = part.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(part.len());
        let (num, unit) = part.split_at(split);
        let n: f64 = num.parse().ok()?;
        let secs = match unit {
            "" | "s" | "sec" => n,
            "ms" | "msec" => n / 1000.0,
            "us" | "usec" => n / 1_000_000.0,
            "m" | "min" => n * 60.0,
            "h" | "hr" => n * 3600.0,
            _ => return None,
        };
        total += Duration::from_secs_f64(secs);
    }
    (!v.trim().is_empty()).then_some(total)
}

/// Splits a command line the way systemd does for Exec*=: whitespace
/// separates words, double and single quotes group, backslash escapes.
pub fn split_words(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match (c, quote) {
            ('\\', _) => {
                let next = chars.next().ok_or("trailing backslash")?;
                cur.push(match next {
                    'n' => '\n',
                    't' => '\t',
                    other => other,
                });
                in_word = true;
            }
            ('"' | '\'', None) => {
                quote = Some(c);
                in_word = true;
            }
            (c, Some(q)) if c == q => quote = None,
            (c, None) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (c, _) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() {
        return Err(format!("unterminated quote in {s:?}"));
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

fn parse_command(value: &str) -> Result<Command, String> {
    let mut v = value;
    let mut ignore_failure = false;
    while let Some(c) = v.chars().next().filter(|c| "-@+!:".contains(*c)) {
        if c == '-' {
            ignore_failure = true;
        }
        v = &v[1..];
    }
    let argv = split_words(v)?;
    match argv.first() {
        None => Err("empty command".into()),
        Some(p) if !p.starts_with('/') => Err(format!("command {p:?} must be an absolute path")),
        Some(_) => Ok(Command { argv, ignore_failure }),
    }
}

/// Reads `KEY=VALUE` lines (an EnvironmentFile); comments and blank lines skipped.
pub fn parse_env_file(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))
        .filter_map(|l| l.strip_prefix("export ").unwrap_or(l).split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches('"').trim_matches('\'').to_string()))
        .collect()
}

/// A unit's dependencies and ordering as the supervisor's graph needs them.
pub fn start_order<'a>(units: &'a BTreeMap<String, Unit>, wanted: &[String]) -> Vec<&'a Unit> {
    // Everything pulled in by Wants/Requires from the wanted set.
    let mut pulled: Vec<String> = Vec::new();
    let mut stack: Vec<String> = wanted.to_vec();
    while let Some(n) = stack.pop() {
        if pulled.contains(&n) {
            continue;
        }
        if let Some(u) = units.get(&n) {
            stack.extend(u.wants.iter().cloned());
            stack.extend(u.requires.iter().cloned());
            pulled.push(n);
        }
    }
    pulled.sort();
    // Order by After/Before among pulled units (Kahn's algorithm, stable by name).
    let after = |a: &Unit, b: &str| a.after.iter().any(|x| x == b) || units.get(b).is_some_and(|bu| bu.before.contains(&a.name));
    let mut order: Vec<&Unit> = Vec::new();
    let mut remaining: Vec<&Unit> = pulled.iter().filter_map(|n| units.get(n)).collect();
    while !remaining.is_empty() {
        let pos = remaining.iter().position(|u| !remaining.iter().any(|other| other.name != u.name && after(u, &other.name))).unwrap_or(0); // a cycle: break it at the first unit by name
        order.push(remaining.remove(pos));
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    const WEB: &str = "[Unit]\nDescription=Web\nAfter=network.service\nRequires=network.service\n\n[Service]\nExecStartPre=-/usr/bin/mkdir -p /run/web\nExecStart=/usr/bin/httpd -f \\\n  -p 80 \"-h\" '/var/www html'\nRestart=on-failure\nRestartSec=2s\nEnvironment=A=1 \"B=two words\"\nEnvironmentFile=-/etc/web.env\nUser=core\nKillSignal=SIGINT\n\n[Install]\nWantedBy=multi-user.target\n";

    #[test]
    fn parses_the_common_subset() {
        let u = Unit::parse("web.service", WEB, &[]).unwrap();
        assert_eq!(u.description, "Web");
        assert_eq!(u.after, ["network.service"]);
        assert_eq!(u.exec_start[0].argv, ["/usr/bin/httpd", "-f", "-p", "80", "-h", "/var/www html"]);
        assert!(u.exec_start_pre[0].ignore_failure);
        assert_eq!(u.restart, Restart::OnFailure);
        assert_eq!(u.restart_sec, Duration::from_secs(2));
        assert_eq!(u.environment, [("A".into(), "1".into()), ("B".into(), "two words".into())]);
        assert_eq!(u.environment_files, [("/etc/web.env".into(), true)]);
        assert_eq!(u.user.as_deref(), Some("core"));
        assert_eq!(u.wanted_by, ["multi-user.target"]);
        assert!(u.default_dependencies);
        assert!(!Unit::parse("early.service", "[Unit]\nDefaultDependencies=no\n[Service]\nExecStart=/bin/true\n", &[]).unwrap().default_dependencies);
        assert!(Unit::parse("x.service", "[Unit]\nDefaultDependencies=maybe\n[Service]\nExecStart=/bin/true\n", &[]).unwrap_err().message.contains("DefaultDependencies"));
        assert_eq!(u.kill_signal, 2);
        assert!(u.warnings.is_empty(), "{:?}", u.warnings);
    }

    #[test]
    fn restart_follows_systemds_table() {
        use Ending::*;
        let unit = |restart: &str| Unit::parse("x.service", &format!("[Service]\nExecStart=/bin/true\nRestart={restart}\nSuccessExitStatus=3 SIGUSR1\n"), &[]).unwrap();
        // Columns: clean exit, clean signal, exit 1, SIGKILL, timeout, exit 3 and SIGUSR1 (SuccessExitStatus).
        let endings = [Exited(0), Signaled(15), Exited(1), Signaled(9), Timeout, Exited(3), Signaled(10)];
        let table = [
            ("no", [false, false, false, false, false, false, false]),
            ("always", [true, true, true, true, true, true, true]),
            ("on-success", [true, true, false, false, false, true, true]),
            ("on-failure", [false, false, true, true, true, false, false]),
            ("on-abnormal", [false, false, false, true, true, false, false]),
            ("on-abort", [false, false, false, true, false, false, false]),
            ("on-watchdog", [false, false, false, false, false, false, false]),
        ];
        for (restart, expect) in table {
            let u = unit(restart);
            let got: Vec<bool> = endings.iter().map(|e| u.restarts_after(*e)).collect();
            assert_eq!(got, expect, "Restart={restart}");
        }
        let u = unit("no");
        assert!(u.clean(Exited(3)) && u.clean(Signaled(10)) && !u.clean(Exited(4)) && u.clean(Signaled(13)));
        let bad = |line: &str| Unit::parse("x.service", &format!("[Service]\nExecStart=/bin/true\n{line}\n"), &[]).unwrap_err().message;
        assert!(bad("SuccessExitStatus=300").contains("\"300\" is neither"), "{}", bad("SuccessExitStatus=300"));
        assert!(bad("SuccessExitStatus=SIGNOPE").contains("SIGNOPE"));
        assert!(bad("KillSignal=SIGNOPE").contains("not a signal"));
        assert!(bad("Restart=sometimes").contains("on-abnormal"));
        assert_eq!(Unit::parse("x.service", "[Service]\nExecStart=/bin/true\nKillSignal=9\n", &[]).unwrap().kill_signal, 9);
        assert_eq!((signal_name(15), signal_name(40)), ("SIGTERM".to_string(), "signal 40".to_string()));
    }

    #[test]
    fn aliases_are_other_names_of_the_same_kind() {
        let u = Unit::parse("etcd-member.service", "[Service]\nExecStart=/usr/bin/etcd\n[Install]\nAlias=etcd.service etcd2.service\n", &[]).unwrap();
        assert_eq!(u.aliases, ["etcd.service", "etcd2.service"]);
        assert!(u.warnings.is_empty(), "{:?}", u.warnings);
        let e = Unit::parse("etcd-member.service", "[Service]\nExecStart=/usr/bin/etcd\n[Install]\nAlias=etcd.target\n", &[]).unwrap_err();
        assert_eq!(e.line, 4);
        assert!(e.message.contains("same suffix (.service)"), "{e}");
    }

    #[test]
    fn drop_ins_override_and_reset() {
        let u = Unit::parse("web.service", WEB, &[("web.service.d/x.conf", "[Service]\nEnvironment=\nEnvironment=C=3\nRestart=always\n")]).unwrap();
        assert_eq!(u.environment, [("C".into(), "3".into())]);
        assert_eq!(u.restart, Restart::Always);
    }

    #[test]
    fn errors_name_unit_line_and_problem() {
        let e = Unit::parse("x.service", "[Service]\nExecStart=relative/path\n", &[]).unwrap_err();
        assert_eq!((e.line, e.unit.as_str()), (2, "x.service"));
        assert!(e.message.contains("absolute path"), "{e}");
        assert!(Unit::parse("x.service", "[Service]\nRestart=sometimes\nExecStart=/bin/true\n", &[]).unwrap_err().message.contains("on-failure"));
        assert!(Unit::parse("x.service", "[Service]\nType=oneshot\n", &[]).unwrap_err().message.contains("no ExecStart"));
        assert!(Unit::parse("x.service", "ExecStart=/bin/true\n", &[]).unwrap_err().message.contains("outside"));
        assert!(Unit::parse("x.socket", "", &[]).is_err());
        assert!(Unit::parse("x.service", "[Service]\nExecStart=/bin/echo \"open\n", &[]).unwrap_err().message.contains("unterminated"));
    }

    #[test]
    fn instances_expand_specifiers_from_their_own_name() {
        // The seeds' sidekick, as CoreOS users write it.
        let template = "[Unit]\nDescription=Announce %p %i on %H\nBindsTo=apache@%i.service\nAfter=apache@%i.service\n\n[Service]\nExecStart=/bin/sh -c \"while true; do etcdctl set /services/website/%p@%i '{ \\\"host\\\": \\\"%H\\\" }' --ttl 60; sleep 45; done\"\nEnvironment=INSTANCE=%I PCT=100%%\n";
        let machine = Machine { hostname: "core-01".into(), machine_id: "0123".into(), boot_id: "beef".into(), kernel_release: "6.1".into() };
        let u = Unit::parse_on("apache-discovery@1.service", template, &[("apache-discovery@.service.d/x.conf", "[Unit]\nAfter=etcd-%m.service\n")], &machine).unwrap();
        assert_eq!(u.description, "Announce apache-discovery 1 on core-01");
        assert_eq!(u.after, ["apache@1.service", "etcd-0123.service"]);
        assert_eq!(u.binds_to, ["apache@1.service"]);
        assert!(u.warnings.is_empty(), "{:?}", u.warnings);
        assert_eq!(u.exec_start[0].argv[2], "while true; do etcdctl set /services/website/apache-discovery@1 '{ \"host\": \"core-01\" }' --ttl 60; sleep 45; done");
        assert_eq!(u.environment, [("INSTANCE".to_string(), "1".to_string()), ("PCT".to_string(), "100%".to_string())]);

        let e = Unit::parse("a@1.service", "[Service]\nExecStart=/bin/echo 50%\n", &[]).unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.contains("ExecStart=") && e.message.contains("lone '%'"), "{e}");
        assert!(Unit::parse("a.service", "[Service]\nExecStart=/bin/echo %q\n", &[]).unwrap_err().message.contains("unknown specifier %q"));
        assert!(Unit::parse("a@.service", "[Service]\nExecStart=/bin/true\n", &[]).unwrap_err().message.contains("only as an instance"));
        assert!(Unit::parse("a b.service", "[Service]\nExecStart=/bin/true\n", &[]).unwrap_err().message.contains("not a unit name"));
    }

    #[test]
    fn durations_and_words() {
        assert_eq!(parse_duration("5"), Some(Duration::from_secs(5)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1min 30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("soon"), None);
        assert_eq!(split_words(r#"a "b c" d\ e"#).unwrap(), ["a", "b c", "d e"]);
    }

    #[test]
    fn start_order_follows_after_and_pulls_wants() {
        let mk = |name: &str, after: &[&str], wants: &[&str]| {
            let mut u = Unit::parse(name, "[Service]\nExecStart=/bin/true\n", &[]).unwrap();
            u.after = after.iter().map(|s| s.to_string()).collect();
            u.wants = wants.iter().map(|s| s.to_string()).collect();
            (name.to_string(), u)
        };
        let units: BTreeMap<_, _> =
            [mk("a.service", &["c.service"], &["c.service"]), mk("b.service", &["a.service"], &[]), mk("c.service", &[], &[]), mk("unused.service", &[], &[])].into_iter().collect();
        let order: Vec<_> = start_order(&units, &["b.service".into(), "a.service".into()]).iter().map(|u| u.name.clone()).collect();
        assert_eq!(order, ["c.service", "a.service", "b.service"]);
    }

    #[test]
    fn socket_units() {
        let text = "[Unit]\nDescription=Docker Socket for the API\n\n[Socket]\nListenStream=2375\nBindIPv6Only=both\nService=docker.service\n\n[Install]\nWantedBy=sockets.target\n";
        let u = Unit::parse("docker-tcp.socket", text, &[]).unwrap();
        let s = u.socket.as_ref().unwrap();
        assert_eq!(s.listen, [socket::Listen { transport: socket::Transport::Stream, address: socket::Address::Port(2375) }]);
        assert_eq!(s.ipv6_only, socket::Ipv6Only::Both);
        assert_eq!(u.triggers().as_deref(), Some("docker.service"));
        assert!(u.warnings.is_empty(), "{:?}", u.warnings);
        // Accept=yes: an instance of PREFIX@.service per connection.
        let u = Unit::parse("sshd.socket", "[Socket]\nListenStream=22\nAccept=yes\nMaxConnections=8\n", &[]).unwrap();
        assert_eq!((u.triggers().as_deref(), u.socket.as_ref().unwrap().max_connections), (Some("sshd@.service"), 8));
        let u = Unit::parse("app.socket", "[Socket]\nListenStream=/run/app.sock\nListenDatagram=@app\nSocketMode=0660\nFileDescriptorName=api\n[Service]\nExecStart=/bin/x\n", &[]).unwrap();
        assert_eq!((u.socket.as_ref().unwrap().socket_mode, u.triggers().as_deref()), (0o660, Some("app.service")));
        assert_eq!(u.warnings[0].message, "section [Service] does not belong in a socket unit; its directives are ignored");
        assert!(u.exec_start.is_empty());
        let err = |text: &str| Unit::parse("x.socket", text, &[]).unwrap_err().to_string();
        assert_eq!(err("[Socket]\nAccept=yes\n"), "x.socket:0: no ListenStream=, ListenDatagram= or ListenSequentialPacket=: the socket would listen on nothing");
        assert_eq!(err("[Socket]\nListenStream=0\n"), "x.socket:2: ListenStream=0: a port is 1 to 65535");
        assert!(err("[Socket]\nListenStream=80\nAccept=yes\nService=a.service\n").contains("Service= cannot be used with Accept=yes"));
        assert!(err("[Socket]\nListenDatagram=53\nAccept=yes\n").contains("Accept=yes needs stream sockets"));
        assert!(err("[Socket]\nListenStream=80\nService=a.timer\n").contains("Service=a.timer: expected the name of a service"));
        assert!(err("[Socket]\nListenSequentialPacket=80\n").contains("sequential-packet sockets are Unix sockets"));
    }

    #[test]
    fn timer_units() {
        let text = "[Timer]\nOnBootSec=15min\nOnUnitActiveSec=1h\nOnCalendar=Mon *-*-* 03:00\nPersistent=true\nRandomizedDelaySec=30\nAccuracySec=1min\n[Install]\nWantedBy=timers.target\n";
        let u = Unit::parse("backup.timer", text, &[]).unwrap();
        let t = u.timer.as_ref().unwrap();
        assert_eq!((t.on_boot.as_slice(), t.on_unit_active.as_slice()), (&[Duration::from_secs(900)][..], &[Duration::from_secs(3600)][..]));
        assert_eq!((t.on_calendar.len(), t.persistent, t.randomized_delay, t.remain_after_elapse), (1, true, Duration::from_secs(30), true));
        assert_eq!(u.triggers().as_deref(), Some("backup.service"));
        assert!(u.warnings.is_empty(), "{:?}", u.warnings);
        let u = Unit::parse("x.timer", "[Timer]\nOnActiveSec=5\nUnit=other.service\nWakeSystem=yes\n", &[]).unwrap();
        assert_eq!(u.triggers().as_deref(), Some("other.service"));
        assert_eq!(u.warnings[0].message, "unknown directive WakeSystem= in [Timer] ignored");
        let err = |text: &str| Unit::parse("x.timer", text, &[]).unwrap_err().to_string();
        assert!(err("[Timer]\nPersistent=yes\n").contains("the timer would never elapse"));
        assert_eq!(err("[Timer]\nOnCalendar=Mon 25:00\n"), "x.timer:2: OnCalendar=Mon 25:00: hour 25 is out of range 0..23");
        assert!(err("[Timer]\nOnBootSec=soon\n").contains("OnBootSec=soon: expected a time span"));
        assert!(err("[Timer]\nOnBootSec=1\nUnit=y.timer\n").contains("Unit=y.timer: expected the name of the unit to start"));
    }

    #[test]
    fn standard_input_and_output() {
        let u = Unit::parse("echo@1.service", "[Service]\nExecStart=/bin/cat\nStandardInput=socket\n", &[]).unwrap();
        assert_eq!((u.standard_input, u.standard_output, u.standard_error), (Input::Socket, Output::Inherit, Output::Inherit));
        let u = Unit::parse("a.service", "[Service]\nExecStart=/bin/cat\nStandardOutput=journal+console\nStandardError=null\n", &[]).unwrap();
        assert_eq!((u.standard_input, u.standard_output, u.standard_error), (Input::Null, Output::Log, Output::Null));
        assert!(Unit::parse("a.service", "[Service]\nExecStart=/bin/cat\nStandardInput=tty\n", &[]).unwrap_err().message.contains("StandardInput=tty: expected null or socket"));
    }

    #[test]
    fn service_types_timeouts_and_kill_modes() {
        let u =
            Unit::parse("n.service", "[Service]\nType=notify\nExecStart=/bin/app\nExecStopPost=/bin/clean $SERVICE_RESULT\nExecStopPost=-/bin/more\nTimeoutStartSec=5\nKillMode=mixed\n", &[]).unwrap();
        assert_eq!((u.service_type, u.kill_mode, u.notify(), u.start_limit()), (ServiceType::Notify, KillMode::Mixed, NotifyAccess::Main, Some(Duration::from_secs(5))));
        assert_eq!(u.exec_stop_post.len(), 2);
        assert!(u.exec_stop_post[1].ignore_failure);
        // systemd's defaults: 90 s for a start, none for a oneshot.
        let u = Unit::parse("s.service", "[Service]\nExecStart=/bin/app\n", &[]).unwrap();
        assert_eq!((u.start_limit(), u.notify(), u.kill_mode), (Some(DEFAULT_START_TIMEOUT), NotifyAccess::None, KillMode::ControlGroup));
        let u = Unit::parse("o.service", "[Service]\nType=oneshot\nExecStart=/bin/app\n", &[]).unwrap();
        assert_eq!(u.start_limit(), None);
        for never in ["0", "infinity"] {
            let u = Unit::parse("s.service", &format!("[Service]\nExecStart=/bin/app\nTimeoutStartSec={never}\n"), &[]).unwrap();
            assert_eq!(u.start_limit(), None, "{never}");
        }
        let u = Unit::parse("s.service", "[Service]\nExecStart=/bin/app\nTimeoutSec=7\nNotifyAccess=all\n", &[]).unwrap();
        assert_eq!((u.start_limit(), u.timeout_stop, u.notify()), (Some(Duration::from_secs(7)), Duration::from_secs(7), NotifyAccess::All));
        for never in ["TimeoutSec=0", "TimeoutSec=infinity", "TimeoutStopSec=0"] {
            let u = Unit::parse("s.service", &format!("[Service]\nExecStart=/bin/app\n{never}\n"), &[]).unwrap();
            assert_eq!(u.timeout_stop, NO_STOP_LIMIT, "{never}");
        }
        let u = Unit::parse("f.service", "[Service]\nType=forking\nPIDFile=app.pid\nExecStart=/bin/app\n", &[]).unwrap();
        assert_eq!((u.service_type, u.pid_file.as_deref()), (ServiceType::Forking, Some("/run/app.pid")));
        let err = |text: &str| Unit::parse("x.service", text, &[]).unwrap_err().to_string();
        assert_eq!(err("[Service]\nExecStart=/bin/a\nKillMode=all\n"), "x.service:3: KillMode=all: expected control-group, mixed, process or none");
        assert!(err("[Service]\nExecStart=/bin/a\nTimeoutStartSec=soon\n").contains("TimeoutStartSec=soon: expected a time span"));
        assert!(err("[Service]\nType=forking\nExecStart=/bin/a\nExecStart=/bin/b\n").contains("more than one ExecStart= needs Type=oneshot"));
        assert!(err("[Service]\nType=forking\nPIDFile=../etc/x\nExecStart=/bin/a\n").contains("without .."));
        assert!(err("[Service]\nType=bus\nExecStart=/bin/a\n").contains("Type=bus: expected simple"));
        let u = Unit::parse("s.service", "[Service]\nExecStart=/bin/app\nPIDFile=/run/x.pid\n", &[]).unwrap();
        assert!(u.warnings[0].message.contains("PIDFile= is only read for Type=forking"));
    }

    #[test]
    fn limits_are_parsed_and_the_last_one_wins() {
        let text = "[Service]\nExecStart=/bin/app\nLimitNOFILE=1024\nMemoryMax=64M\nTasksMax=16\nCPUQuota=20%\n";
        let u = Unit::parse("l.service", text, &[("l.service.d/more.conf", "[Service]\nLimitNOFILE=2048:4096\nMemoryMax=128M\n")]).unwrap();
        assert_eq!(u.rlimits, vec![limits::Rlimit { resource: 7, soft: 2048, hard: 4096 }]);
        let files: Vec<(&str, String)> = u.cgroup_limits.iter().map(|l| (l.file, l.value(1 << 30, 1000))).collect();
        assert_eq!(files, vec![("pids.max", "16".to_string()), ("cpu.max", "20000 100000".into()), ("memory.max", (128u64 << 20).to_string())]);
        assert!(u.warnings.is_empty(), "{:?}", u.warnings);
        let err = Unit::parse("l.service", "[Service]\nExecStart=/bin/app\nMemoryMax=big\n", &[]).unwrap_err().to_string();
        assert!(err.starts_with("l.service:3: MemoryMax=big: expected a size"), "{err}");
    }
}
