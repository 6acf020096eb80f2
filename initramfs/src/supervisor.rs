//! The service supervisor: PID 1's work once the system is up. Units come
//! from /usr/lib/systemd/system (built in), /run/systemd/system (this boot
//! only) and /etc/systemd/system (the user's, which win on equal names), with
//! drop-ins from NAME.d/ in all three.
//! Enabled units (WantedBy=multi-user.target in /usr, or a link in a
//! multi-user.target.wants/ directory) start in After/Before order. Services
//! restart by their Restart= policy with a doubling back-off, their output
//! is logged, orphans are reaped, and a health gate blesses the boot.
//! A unit's `Alias=` names are other names for it (see `aliases_of`).
//! `.socket` units listen and start their service on the first connection
//! (or, with Accept=yes, an instance per connection), passing the sockets
//! as sd_listen_fds(3) expects; `.timer` units start theirs when
//! `basalt_unit::timer::next_elapse` says so.

use crate::logs::Logs;
use crate::{activation, bless, log, notify, spawn, sys};
use basalt_control::{Request, Status, UnitStatus};
use basalt_unit::timer::{Moments, Stamp};
use basalt_unit::{Ending, KillMode, NotifyAccess, ServiceType, Unit};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::path::Path;
use std::time::{Duration, Instant};

use basalt_unit::install::UNIT_DIRS;
const HEALTH_CONF: [&str; 2] = ["/etc/basalt/health.conf", "/usr/share/basalt/etc/basalt/health.conf"];
const BOOT_STATE: &str = "/var/lib/basalt/boot-state";
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A service that ran this long before exiting starts its back-off afresh.
const STABLE_RUN: Duration = Duration::from_secs(10);
/// When a timer with `Persistent=yes` last elapsed: one file per timer
/// holding the wall-clock seconds.
const TIMER_STAMPS: &str = "/var/lib/basalt/timers";
/// systemd's TriggerLimitIntervalSec= and TriggerLimitBurst= defaults: a
/// socket whose service is started more often than this fails.
const TRIGGER_LIMIT: (Duration, usize) = (Duration::from_secs(2), 20);
/// The targets whose `.wants/` links enable units for boot.
const BOOT_TARGETS: [&str; 3] = ["multi-user.target", "sockets.target", "timers.target"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proc {
    Pre(usize),
    Main,
    Oneshot(usize),
    Post,
    Stop,
    /// ExecReload= of a running service.
    Reload,
    /// ExecStart= of a Type=forking service, which leaves the main process behind.
    Fork,
    /// The n-th ExecStopPost=.
    StopPost(usize),
}

/// Why a service failed: the message, systemd's `$SERVICE_RESULT` word for
/// it, and how its process ended, where one did.
#[derive(Debug, Clone)]
struct Why {
    reason: String,
    result: &'static str,
    ending: Option<Ending>,
}

impl Why {
    fn new(reason: String, result: &'static str, ending: Option<Ending>) -> Why {
        Why { reason, result, ending }
    }

    /// A process that ended this way: `exit-code`, `signal` or `timeout`.
    fn ended(reason: String, ending: Ending) -> Why {
        let result = match ending {
            Ending::Exited(_) => "exit-code",
            Ending::Signaled(_) => "signal",
            Ending::Timeout => "timeout",
        };
        Why::new(reason, result, Some(ending))
    }
}

/// How a service ends once its processes are gone and ExecStopPost= ran.
#[derive(Debug, Clone)]
enum Outcome {
    /// A stop asked for (and a start after it, for a restart); how the
    /// main process ended, once it has.
    Stopped {
        restart_after: bool,
        ending: Option<Ending>,
    },
    /// The main process ended cleanly and is not restarted.
    Done(Option<Ending>),
    Failed(Why),
    /// Failed, and restarted by Restart= after the back-off.
    Restart(Why),
}

impl Outcome {
    /// What ExecStopPost= is told, as systemd.exec(5) names it:
    /// $SERVICE_RESULT, $EXIT_CODE and $EXIT_STATUS.
    fn environment(&self) -> Vec<(String, String)> {
        let (result, ending) = match self {
            Outcome::Stopped { ending, .. } => ("success", *ending),
            Outcome::Done(ending) => ("success", *ending),
            Outcome::Failed(why) | Outcome::Restart(why) => (why.result, why.ending),
        };
        let mut env = vec![("SERVICE_RESULT".to_string(), result.to_string())];
        match ending {
            Some(Ending::Exited(code)) => env.extend([("EXIT_CODE".into(), "exited".into()), ("EXIT_STATUS".into(), code.to_string())]),
            Some(Ending::Signaled(sig)) => {
                let name = basalt_unit::signal_name(sig);
                env.extend([("EXIT_CODE".into(), "killed".into()), ("EXIT_STATUS".into(), name.trim_start_matches("SIG").to_string())]);
            }
            _ => {}
        }
        env
    }

    /// A clean outcome made a failure by a failed ExecStopPost=.
    fn worsened(self, why: Why) -> Outcome {
        match self {
            Outcome::Stopped { .. } | Outcome::Done(_) => Outcome::Failed(why),
            other => other,
        }
    }
}

#[derive(Debug, Clone)]
enum State {
    Inactive,
    Queued,
    Activating {
        pid: i32,
    },
    Active {
        pid: i32,
        since: Instant,
    },
    /// A oneshot that finished successfully (RemainAfterExit or not: both count as done).
    Exited,
    Failed {
        reason: String,
    },
    AutoRestart {
        at: Instant,
        reason: String,
    },
    /// Its processes are being stopped: the main one (`pid`) or, once it
    /// is gone, what is left in its cgroup.
    Stopping {
        pid: Option<i32>,
        deadline: Instant,
        outcome: Outcome,
        killed: bool,
    },
    /// ExecStopPost= number `step` runs.
    StopPost {
        pid: i32,
        step: usize,
        deadline: Instant,
        outcome: Outcome,
    },
    /// Active without a process: a socket listening, a timer waiting.
    Armed,
}

struct Service {
    unit: Option<Unit>,
    load_error: Option<String>,
    state: State,
    restarts: u32,
    failures_in_row: u32,
    /// Since boot: when it last started, and last stopped running (what
    /// OnUnitActiveSec= and OnUnitInactiveSec= count from).
    active_at: Option<Duration>,
    inactive_at: Option<Duration>,
    running: bool,
    /// Its cgroup, `system.slice/NAME`, from its first start on.
    cgroup: Option<basalt_cgroup::Cgroup>,
    /// When a start that has not finished times out (TimeoutStartSec=).
    start_deadline: Option<Instant>,
    /// The last `STATUS=` it sent over $NOTIFY_SOCKET.
    status_text: Option<String>,
}

impl Service {
    fn new() -> Service {
        Service {
            unit: None,
            load_error: None,
            state: State::Inactive,
            restarts: 0,
            failures_in_row: 0,
            active_at: None,
            inactive_at: None,
            running: false,
            cgroup: None,
            start_deadline: None,
            status_text: None,
        }
    }
    fn settled(&self) -> bool {
        !matches!(self.state, State::Queued | State::Activating { .. })
    }
    fn up(&self) -> bool {
        matches!(self.state, State::Active { .. } | State::Exited | State::Armed)
    }
    /// Starting, running or stopping: a socket's service in this state
    /// handles the socket itself.
    fn busy(&self) -> bool {
        matches!(self.state, State::Queued | State::Activating { .. } | State::Active { .. } | State::Stopping { .. } | State::StopPost { .. } | State::AutoRestart { .. })
    }
    /// On its way down: stopping its processes or running ExecStopPost=.
    fn winding_down(&self) -> bool {
        matches!(self.state, State::Stopping { .. } | State::StopPost { .. })
    }
}

/// A started timer: when, its last elapse, and the fraction of
/// RandomizedDelaySec= this elapse waits.
struct TimerRun {
    activated: Stamp,
    last: Option<(Option<Duration>, i64)>,
    fraction: f64,
    next: Option<Duration>,
}

/// How long a control connection may take to send its request line, and
/// to take its answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// A control connection: what it sent so far and the answer still to
/// write, all without blocking the supervisor.
struct Client {
    stream: UnixStream,
    received: Vec<u8>,
    answer: Option<Vec<u8>>,
    written: usize,
    since: Instant,
    /// The reboot or power-off it asked for, once its answer is out.
    halt: Option<sys::Halt>,
}

pub struct BootInfo {
    pub version: String,
    pub slot: String,
    /// `<IMAGE_ID>_<version>_<slot>`: the booted UKI's name without counter.
    pub uki_base: String,
}

struct Health {
    required: Vec<String>,
    settle: Duration,
    healthy_since: Option<Instant>,
    blessed: bool,
    tries_left: Option<u32>,
    detail: String,
}

pub struct Supervisor {
    services: BTreeMap<String, Service>,
    /// The units enabled when they were last looked at: a reload starts only
    /// units enabled since, not ones the user stopped or that failed.
    enabled: BTreeSet<String>,
    children: HashMap<i32, (String, Proc)>,
    pipes: HashMap<i32, (OwnedFd, String)>,
    logs: Logs,
    listener: Option<UnixListener>,
    /// Control connections being read from or answered.
    clients: Vec<Client>,
    /// $NOTIFY_SOCKET of the services (sd_notify(3)).
    notify: Option<UnixDatagram>,
    signals: OwnedFd,
    health: Health,
    boot: BootInfo,
    console_shell: Option<i32>,
    want_console_shell: bool,
    /// Alias name → the unit that answers to it.
    aliases: BTreeMap<String, String>,
    /// Instances of templates started by name (`start echo@2.service`).
    asked: BTreeSet<String>,
    /// Templates, from which instances are made (per connection too).
    templates: UnitFiles,
    /// The listening sockets of each socket unit that is up.
    sockets: BTreeMap<String, Vec<OwnedFd>>,
    /// Per-connection instances of Accept=yes sockets: their connection
    /// and socket unit.
    conns: BTreeMap<String, (OwnedFd, String)>,
    accepted: u64,
    /// When each socket last started its service (the trigger limit).
    triggered: BTreeMap<String, Vec<Instant>>,
    timer_runs: BTreeMap<String, TimerRun>,
    /// Since boot, when the supervisor started (OnStartupSec=).
    startup: Duration,
}

fn now() -> Instant {
    Instant::now()
}

/// Time since boot, suspend included (CLOCK_BOOTTIME, what OnBootSec= counts).
fn mono_now() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into `ts`, a live local.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn real_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

fn stamp_now() -> Stamp {
    Stamp { mono: mono_now(), real: real_now() }
}

/// A number in [0, 1) from the kernel's random pool.
fn random_fraction() -> f64 {
    let mut bytes = [0u8; 8];
    // SAFETY: getrandom writes at most bytes.len() bytes into `bytes`.
    unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), libc::GRND_NONBLOCK) };
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

/// A persistent timer's last elapse, from an earlier boot.
fn read_timer_stamp(name: &str) -> Option<i64> {
    std::fs::read_to_string(Path::new(TIMER_STAMPS).join(name)).ok()?.trim().parse().ok()
}

fn write_timer_stamp(name: &str, real: i64) {
    if let Err(e) = sys::write_durably(&Path::new(TIMER_STAMPS).join(name), format!("{real}\n").as_bytes()) {
        log::error(&format!("{name}: recording its elapse: {e}"));
    }
}

/// Unit files from both directories: (name → (main text, drop-ins)),
/// templates (`echo@.service`) among them.
fn read_unit_files() -> UnitFiles {
    let mut found: UnitFiles = BTreeMap::new();
    for dir in UNIT_DIRS {
        let Ok(rd) = std::fs::read_dir(dir) else { continue };
        let mut names: Vec<String> = rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| runnable(n)).collect();
        names.sort();
        for n in names {
            let path = Path::new(dir).join(&n);
            // A link to /dev/null masks the unit.
            if std::fs::read_link(&path).is_ok_and(|t| t == Path::new("/dev/null")) {
                found.remove(&n);
                continue;
            }
            if let Ok(text) = std::fs::read_to_string(&path) {
                found.entry(n.clone()).or_default().0 = text;
            }
        }
    }
    for (name, (_, drop_ins)) in found.iter_mut() {
        *drop_ins = read_drop_ins(name);
    }
    found
}

/// Unit files the supervisor loads: services, sockets and timers.
fn runnable(name: &str) -> bool {
    use basalt_unit::name::Kind;
    matches!(Kind::of(name), Some(Kind::Service | Kind::Socket | Kind::Timer))
}

/// The drop-ins of `name` from both directories, sorted by file name; /etc's
/// (and /run's) replace /usr's of the same name.
fn read_drop_ins(name: &str) -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = Vec::new();
    for dir in UNIT_DIRS {
        let d = Path::new(dir).join(format!("{name}.d"));
        let Ok(rd) = std::fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let fname = e.file_name().to_string_lossy().into_owned();
            if fname.ends_with(".conf") {
                files.retain(|(f, _)| *f != fname);
                if let Ok(t) = std::fs::read_to_string(e.path()) {
                    files.push((fname, t));
                }
            }
        }
    }
    files.sort();
    files.into_iter().map(|(f, t)| (format!("{name}.d/{f}"), t)).collect()
}

/// Instances the unit files ask for: names linked in a `.wants/` or
/// `.requires/` directory, and names in other units' Requires=, Wants=,
/// After= and Before= (unparsed, so a specifier there is not an instance).
fn wanted_names(files: &UnitFiles) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for dir in UNIT_DIRS {
        let Ok(rd) = std::fs::read_dir(dir) else { continue };
        for d in rd.flatten() {
            let dname = d.file_name().to_string_lossy().into_owned();
            if dname.ends_with(".wants") || dname.ends_with(".requires") {
                if let Ok(links) = std::fs::read_dir(d.path()) {
                    names.extend(links.flatten().map(|e| e.file_name().to_string_lossy().into_owned()));
                }
            }
        }
    }
    for (main, drop_ins) in files.values() {
        for text in std::iter::once(main).chain(drop_ins.iter().map(|(_, t)| t)) {
            for line in text.lines() {
                let Some((key, value)) = line.split_once('=') else { continue };
                if matches!(key.trim(), "Requires" | "Wants" | "After" | "Before") {
                    names.extend(value.split_whitespace().filter(|n| !n.contains('%')).map(str::to_string));
                }
            }
        }
    }
    names
}

type UnitFiles = BTreeMap<String, (String, Vec<(String, String)>)>;

/// Takes the templates (`echo@.service`) out of `files`: they run only as
/// instances.
fn take_templates(files: &mut UnitFiles) -> UnitFiles {
    let templates: UnitFiles = files.iter().filter(|(name, _)| basalt_unit::name::is_template(name)).map(|(n, f)| (n.clone(), f.clone())).collect();
    files.retain(|name, _| !templates.contains_key(name));
    templates
}

/// The files of instance `name` when it has none of its own but its
/// template has: the template's text, its drop-ins, then the instance's own
/// drop-ins (`echo@1.service.d/`).
fn instance_files(name: &str, templates: &UnitFiles) -> Option<(String, Vec<(String, String)>)> {
    let (text, template_drop_ins) = templates.get(&basalt_unit::name::template_of(name)?)?;
    let mut drop_ins = template_drop_ins.clone();
    drop_ins.extend(read_drop_ins(name));
    Some((text.clone(), drop_ins))
}

/// Whether the user (/etc) or this boot (/run) has a unit file of that name.
fn local_unit_file(name: &str) -> bool {
    UNIT_DIRS[1..].iter().any(|dir| Path::new(dir).join(name).symlink_metadata().is_ok())
}

/// The names units answer to besides their own: each unit's `Alias=`. In
/// systemd an alias is a link that `systemctl enable` makes in /etc, so it
/// shadows a unit file of the same name in /usr (Debian's etcd-server ships
/// an `etcd.service` of its own, which `etcd-member.service`'s alias
/// replaces), while the user's own file of that name in /etc or /run wins
/// over the alias. Built-in units are enabled by being shipped, so their
/// aliases hold from the start. A unit shadowed by an alias declares none
/// itself; when two units claim one name, the first by name keeps it.
fn aliases_of(units: &BTreeMap<String, Unit>, local: impl Fn(&str) -> bool) -> BTreeMap<String, String> {
    let claims = |shadowed: &BTreeMap<String, String>, report: bool| {
        let mut claims: BTreeMap<String, String> = BTreeMap::new();
        for (name, unit) in units.iter().filter(|(name, _)| !shadowed.contains_key(*name)) {
            for alias in unit.aliases.iter().filter(|alias| *alias != name && !local(alias)) {
                match claims.get(alias) {
                    Some(owner) if owner != name => {
                        if report {
                            log::info(&format!("{name}: Alias={alias} is already {owner}'s; ignored"));
                        }
                    }
                    _ => {
                        claims.insert(alias.clone(), name.clone());
                    }
                }
            }
        }
        claims
    };
    claims(&claims(&BTreeMap::new(), false), true)
}

/// The unit `name` (queued) must wait for, if any: a unit it is ordered
/// after (its After=, the other's Before=) that has not settled yet; and for
/// a unit with default dependencies, any early unit (DefaultDependencies=no)
/// still queued or starting, unless that early unit is ordered after it.
/// This is how cloud-config runs before every other service, including units
/// it writes itself, without each of them naming it.
fn waiting_for(name: &str, services: &BTreeMap<String, Service>) -> Option<String> {
    let u = services.get(name)?.unit.as_ref()?;
    let unsettled = |other: &str| services.get(other).is_some_and(|o| !o.settled());
    if let Some(after) = u.after.iter().find(|a| *a != name && unsettled(a)) {
        return Some(after.clone());
    }
    for (other_name, other) in services {
        let Some(ou) = &other.unit else { continue };
        if other_name == name || other.settled() {
            continue;
        }
        let early_first = u.default_dependencies && !ou.default_dependencies && !ou.after.iter().any(|a| a == name);
        if ou.before.iter().any(|b| b == name) || early_first {
            return Some(other_name.clone());
        }
    }
    None
}

/// Units enabled for boot: links in multi-user.target.wants/ (and
/// sockets.target.wants/, timers.target.wants/), and built-in units that
/// say WantedBy= one of those (enabled by being shipped).
fn enabled_units(services: &BTreeMap<String, Service>) -> Vec<String> {
    let mut enabled = Vec::new();
    for dir in UNIT_DIRS {
        for target in BOOT_TARGETS {
            if let Ok(rd) = std::fs::read_dir(Path::new(dir).join(format!("{target}.wants"))) {
                enabled.extend(rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()));
            }
        }
    }
    for (name, s) in services {
        let builtin = Path::new(UNIT_DIRS[0]).join(name).exists();
        if builtin && s.unit.as_ref().is_some_and(|u| u.wanted_by.iter().any(|w| BOOT_TARGETS.contains(&w.as_str()))) {
            enabled.push(name.clone());
        }
    }
    enabled.sort();
    enabled.dedup();
    enabled
}

/// The machine's memory in bytes and its task limit, what `MemoryMax=50%`
/// and `TasksMax=10%` are shares of (systemd's: the smaller of pid_max and
/// threads-max).
fn machine_size() -> (u64, u64) {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kib: u64 = meminfo.lines().find_map(|l| l.strip_prefix("MemTotal:")).and_then(|v| v.split_whitespace().next()?.parse().ok()).unwrap_or(0);
    let number = |path: &str| std::fs::read_to_string(path).ok().and_then(|t| t.trim().parse::<u64>().ok());
    let tasks = number("/proc/sys/kernel/pid_max").into_iter().chain(number("/proc/sys/kernel/threads-max")).min().unwrap_or(4_194_304);
    (kib * 1024, tasks)
}

fn read_health_conf() -> (Vec<String>, Duration) {
    for p in HEALTH_CONF {
        if let Ok(text) = std::fs::read_to_string(p) {
            let env = basalt_unit::parse_env_file(&text);
            let get = |k: &str| env.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
            let required = get("REQUIRED_UNITS").map(|v| v.split_whitespace().map(str::to_string).collect()).unwrap_or_default();
            let settle = get("HEALTHY_SECONDS").and_then(|v| basalt_unit::parse_duration(&v)).unwrap_or(Duration::from_secs(15));
            return (required, settle);
        }
    }
    (Vec::new(), Duration::from_secs(15))
}

fn signalfd(set: &libc::sigset_t) -> OwnedFd {
    // SAFETY: -1 asks for a new descriptor; `set` is a live sigset_t.
    let fd = unsafe { libc::signalfd(-1, set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
    assert!(fd >= 0, "signalfd");
    // SAFETY: `fd` is the new descriptor just checked, owned by nothing else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

impl Supervisor {
    pub fn new(signals: &libc::sigset_t, boot: BootInfo, want_console_shell: bool) -> Supervisor {
        let (required, settle) = read_health_conf();
        let mut health = Health { required, settle, healthy_since: None, blessed: false, tries_left: None, detail: String::new() };
        match bless::find_uki(&boot.uki_base) {
            Ok(Some(name)) => {
                let counter = bless::split_counter(&name).and_then(|(_, c)| c);
                health.tries_left = counter;
                health.blessed = counter.is_none();
            }
            Ok(None) => health.detail = format!("no UKI {}*.efi on the ESP", boot.uki_base),
            Err(e) => health.detail = format!("ESP: {e}"),
        }
        let listener = (|| {
            std::fs::create_dir_all("/run/basalt")?;
            let _ = std::fs::remove_file(basalt_control::SOCKET);
            let l = UnixListener::bind(basalt_control::SOCKET)?;
            l.set_nonblocking(true)?;
            // Root and the wheel group (core is in it, as CoreOS's admin user).
            std::fs::set_permissions(basalt_control::SOCKET, std::os::unix::fs::PermissionsExt::from_mode(0o660))?;
            let _ = std::os::unix::fs::chown(basalt_control::SOCKET, Some(0), spawn::lookup_group("wheel"));
            Ok::<_, std::io::Error>(l)
        })()
        .map_err(|e| log::error(&format!("control socket {}: {e}", basalt_control::SOCKET)))
        .ok();
        let _ = std::fs::create_dir_all(basalt_control::REQUEST_DIR);
        Supervisor {
            services: BTreeMap::new(),
            enabled: BTreeSet::new(),
            children: HashMap::new(),
            pipes: HashMap::new(),
            logs: Logs::default(),
            listener,
            clients: Vec::new(),
            notify: notify::bind(basalt_control::NOTIFY_SOCKET).map_err(|e| log::error(&format!("notify socket {}: {e}", basalt_control::NOTIFY_SOCKET))).ok(),
            signals: signalfd(signals),
            health,
            boot,
            console_shell: None,
            want_console_shell,
            aliases: BTreeMap::new(),
            asked: BTreeSet::new(),
            templates: BTreeMap::new(),
            sockets: BTreeMap::new(),
            conns: BTreeMap::new(),
            accepted: 0,
            triggered: BTreeMap::new(),
            timer_runs: BTreeMap::new(),
            startup: mono_now(),
        }
    }

    /// (Re)reads unit files. Running services keep running with their old
    /// definition until restarted.
    pub fn load_units(&mut self) {
        let mut files = read_unit_files();
        let templates = take_templates(&mut files);
        let mut wanted = wanted_names(&files);
        // Instances already loaded, or asked for by name, stay.
        wanted.extend(self.services.keys().cloned());
        wanted.extend(self.asked.iter().cloned());
        let machine = basalt_unit::Machine::current();
        let parse = |name: &str, (main, drop_ins): &(String, Vec<(String, String)>)| {
            let ins: Vec<(&str, &str)> = drop_ins.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
            Unit::parse_on(name, main, &ins, &machine)
        };
        let mut parsed: BTreeMap<String, Result<Unit, basalt_unit::UnitError>> = files.iter().map(|(name, f)| (name.clone(), parse(name, f))).collect();
        // Instances wanted by name, then those the parsed units depend on
        // (`Requires=apache@%i.service` of a sidekick), until none is new.
        while !wanted.is_empty() {
            let mut next = BTreeSet::new();
            for name in std::mem::take(&mut wanted) {
                if parsed.contains_key(&name) {
                    continue;
                }
                if let Some(f) = instance_files(&name, &templates) {
                    let unit = parse(&name, &f);
                    if let Ok(u) = &unit {
                        next.extend(u.requires.iter().chain(&u.wants).chain(&u.after).chain(&u.before).cloned().chain(u.triggers()));
                    }
                    parsed.insert(name, unit);
                }
            }
            for u in parsed.values().flatten() {
                next.extend(u.requires.iter().chain(&u.wants).cloned().chain(u.triggers()).filter(|n| !parsed.contains_key(n)));
            }
            next.retain(|n| !parsed.contains_key(n) && basalt_unit::name::template_of(n).is_some_and(|t| templates.contains_key(&t)));
            wanted = next;
        }
        // As systemd: a service started by a socket (Accept=no) wants it and
        // starts after it, so starting the service by name also listens.
        let socket_of: Vec<(String, String)> =
            parsed.iter().filter_map(|(name, u)| u.as_ref().ok().filter(|u| u.socket.as_ref().is_some_and(|s| !s.accept)).and_then(|u| Some((u.triggers()?, name.clone())))).collect();
        for (service, socket) in socket_of {
            if let Some(Ok(u)) = parsed.get_mut(&service) {
                for list in [&mut u.wants, &mut u.after] {
                    if !list.contains(&socket) {
                        list.push(socket.clone());
                    }
                }
            }
        }
        self.templates = templates;
        let units: BTreeMap<String, Unit> = parsed.iter().filter_map(|(name, u)| Some((name.clone(), u.as_ref().ok()?.clone()))).collect();
        self.aliases = aliases_of(&units, local_unit_file);
        for alias in self.aliases.keys() {
            parsed.remove(alias);
        }
        for (name, mut parsed) in parsed {
            if let Ok(u) = &mut parsed {
                // Dependencies on an alias are on the unit behind it.
                for names in [&mut u.after, &mut u.before, &mut u.requires, &mut u.wants, &mut u.binds_to, &mut u.part_of, &mut u.conflicts, &mut u.requisite] {
                    for other in names.iter_mut() {
                        if let Some(target) = self.aliases.get(other) {
                            *other = target.clone();
                        }
                    }
                }
            }
            let name = &name;
            let svc = self.services.entry(name.clone()).or_insert_with(Service::new);
            match parsed {
                Ok(u) => {
                    for w in &u.warnings {
                        log::info(&format!("{name}:{}: warning: {}", w.line, w.message));
                    }
                    svc.unit = Some(u);
                    svc.load_error = None;
                }
                Err(e) => {
                    log::error(&format!("unit {e}"));
                    svc.load_error = Some(e.to_string());
                    if matches!(svc.state, State::Inactive | State::Queued) {
                        svc.state = State::Failed { reason: format!("bad unit file: {e}") };
                    }
                }
            }
        }
    }

    /// The unit a name means: itself, or the unit it is an alias of.
    fn resolve(&self, name: &str) -> String {
        self.aliases.get(name).cloned().unwrap_or_else(|| name.to_string())
    }

    /// Starts the units enabled since the last call (at boot: all of them).
    pub fn start_enabled(&mut self) {
        let enabled: BTreeSet<String> = enabled_units(&self.services).iter().map(|name| self.resolve(name)).collect();
        let new: Vec<String> = enabled.difference(&self.enabled).cloned().collect();
        for name in &new {
            if let Err(e) = self.queue_start(name) {
                log::error(&e);
            }
        }
        self.enabled = enabled;
    }

    fn queue_start(&mut self, name: &str) -> Result<(), String> {
        let svc = self.services.get_mut(name).ok_or_else(|| format!("no such unit {name}"))?;
        if let Some(e) = &svc.load_error {
            return Err(format!("{name} cannot be loaded: {e}"));
        }
        let deps: Vec<String> = svc.unit.as_ref().map(|u| u.requires.iter().chain(&u.wants).chain(&u.binds_to).cloned().collect()).unwrap_or_default();
        let startable = matches!(svc.state, State::Inactive | State::Failed { .. } | State::Exited | State::AutoRestart { .. });
        if startable {
            svc.state = State::Queued;
            // Conflicts=, both ways: what this unit conflicts with, and what conflicts with it, stops.
            let mine: Vec<String> = self.services[name].unit.as_ref().map(|u| u.conflicts.clone()).unwrap_or_default();
            let theirs = self.services.iter().filter(|(_, s)| s.unit.as_ref().is_some_and(|u| u.conflicts.iter().any(|c| c == name))).map(|(n, _)| n.clone());
            let conflicting: BTreeSet<String> = mine.into_iter().chain(theirs).filter(|c| c != name).collect();
            for c in conflicting {
                if self.services.get(&c).is_some_and(|s| !matches!(s.state, State::Inactive | State::Failed { .. }) && !s.winding_down()) {
                    log::info(&format!("{c}: stopping, it conflicts with {name}"));
                    let _ = self.stop(&c, false);
                }
            }
        }
        for d in deps {
            if self.services.contains_key(&d) && !self.services[&d].up() && !matches!(self.services[&d].state, State::Queued) {
                let _ = self.queue_start(&d);
            }
        }
        Ok(())
    }

    /// Starts queued units whose ordering dependencies have settled.
    fn run_queue(&mut self) {
        loop {
            let ready: Vec<String> =
                self.services.iter().filter(|(_, s)| matches!(s.state, State::Queued)).filter(|(name, _)| waiting_for(name, &self.services).is_none()).map(|(n, _)| n.clone()).collect();
            if ready.is_empty() {
                return;
            }
            for name in ready {
                let (failed_dep, missing_requisite) = {
                    let u = self.services[&name].unit.as_ref().unwrap();
                    let failed = u
                        .requires
                        .iter()
                        .chain(&u.binds_to)
                        .find(|r| match self.services.get(*r) {
                            None => true,
                            Some(s) => matches!(s.state, State::Failed { .. }),
                        })
                        .cloned();
                    (failed, u.requisite.iter().find(|r| !self.services.get(*r).is_some_and(|s| s.up())).cloned())
                };
                if let Some(dep) = failed_dep {
                    self.services.get_mut(&name).unwrap().state = State::Failed { reason: format!("required unit {dep} failed or is missing") };
                    continue;
                }
                if let Some(dep) = missing_requisite {
                    self.services.get_mut(&name).unwrap().state = State::Failed { reason: format!("requisite unit {dep} is not active") };
                    continue;
                }
                self.begin(&name);
            }
        }
    }

    fn begin(&mut self, name: &str) {
        let u = self.services[name].unit.clone().unwrap();
        self.services.get_mut(name).unwrap().active_at = Some(mono_now());
        if u.socket.is_some() {
            return self.start_socket(name, &u);
        }
        if u.timer.is_some() {
            return self.start_timer(name, &u);
        }
        let svc = self.services.get_mut(name).unwrap();
        svc.start_deadline = u.start_limit().map(|limit| now() + limit);
        svc.status_text = None;
        if let Err(e) = self.prepare_cgroup(name, &u) {
            return self.failed(name, Why::new(e, "resources", None));
        }
        if !u.exec_start_pre.is_empty() {
            self.step(name, &u, Proc::Pre(0));
        } else {
            self.start_main(name, &u);
        }
    }

    /// Binds a socket unit's sockets; it is up once all are listening. As
    /// systemd, refused while the service it starts is not loaded.
    fn start_socket(&mut self, name: &str, u: &Unit) {
        let spec = u.socket.as_ref().unwrap();
        let target = u.triggers().unwrap();
        let loaded = if spec.accept { self.templates.contains_key(&target) } else { self.services.get(&target).is_some_and(|s| s.unit.is_some()) };
        if !loaded {
            return self.failed(name, Why::new(format!("the service it starts, {target}, is not loaded"), "resources", None));
        }
        let mut fds = Vec::new();
        for listen in &spec.listen {
            match activation::bind(listen, spec) {
                Ok(fd) => fds.push(fd),
                Err(e) => return self.failed(name, Why::new(format!("cannot listen on {e}"), "resources", None)),
            }
        }
        log::info(&format!("{name}: listening on {}", spec.listen.iter().map(|l| l.to_string()).collect::<Vec<_>>().join(", ")));
        self.sockets.insert(name.to_string(), fds);
        self.services.get_mut(name).unwrap().state = State::Armed;
    }

    /// Starts a timer: it elapses by its settings from now on. A
    /// persistent timer remembers its last elapse across boots; any timer
    /// remembers it across a stop and start in the same boot.
    fn start_timer(&mut self, name: &str, u: &Unit) {
        let spec = u.timer.as_ref().unwrap();
        let target = u.triggers().unwrap();
        if self.services.get(&target).is_none_or(|s| s.unit.is_none()) {
            return self.failed(name, Why::new(format!("the unit it starts, {target}, is not loaded"), "resources", None));
        }
        let earlier = self.timer_runs.remove(name).and_then(|r| r.last);
        let last = earlier.or_else(|| spec.persistent.then(|| read_timer_stamp(name)).flatten().map(|real| (None, real)));
        self.timer_runs.insert(name.to_string(), TimerRun { activated: stamp_now(), last, fraction: random_fraction(), next: None });
        self.services.get_mut(name).unwrap().state = State::Armed;
    }

    /// Timers that are due start their unit; those with nothing left to
    /// elapse become `elapsed` (or inactive, with RemainAfterElapse=no).
    fn elapse_timers(&mut self) {
        let armed: Vec<String> = self.timer_runs.keys().filter(|n| self.services.get(*n).is_some_and(|s| matches!(s.state, State::Armed))).cloned().collect();
        for name in armed {
            let Some(u) = self.services[&name].unit.clone() else { continue };
            let (Some(spec), Some(target)) = (u.timer.as_ref(), u.triggers()) else { continue };
            let run = &self.timer_runs[&name];
            let unit = self.services.get(&target);
            let now = stamp_now();
            let moments =
                Moments { now, startup: self.startup, activated: run.activated, last_trigger: run.last, unit_active: unit.and_then(|s| s.active_at), unit_inactive: unit.and_then(|s| s.inactive_at) };
            let next = basalt_unit::timer::next_elapse(spec, &moments).map(|at| at + spec.randomized_delay.mul_f64(run.fraction));
            match next {
                None => {
                    log::info(&format!("{name}: elapsed; nothing left to elapse"));
                    self.timer_runs.get_mut(&name).unwrap().next = None;
                    self.services.get_mut(&name).unwrap().state = if spec.remain_after_elapse { State::Exited } else { State::Inactive };
                }
                Some(at) if at <= now.mono => {
                    log::info(&format!("{name}: elapsed; starting {target}"));
                    let run = self.timer_runs.get_mut(&name).unwrap();
                    run.last = Some((Some(now.mono), now.real));
                    run.fraction = random_fraction();
                    run.next = None;
                    if spec.persistent {
                        write_timer_stamp(&name, now.real);
                    }
                    if let Err(e) = self.queue_start(&target) {
                        log::error(&format!("{name}: {e}"));
                    }
                }
                Some(at) => self.timer_runs.get_mut(&name).unwrap().next = Some(at),
            }
        }
    }

    /// A listening socket has a connection or datagram waiting. Accept=no:
    /// its service starts and gets the sockets. Accept=yes: each
    /// connection gets an instance of the template, the connection its
    /// socket. A socket whose service is started too often fails.
    fn socket_ready(&mut self, name: &str, fd: i32) {
        let Some(u) = self.services.get(name).and_then(|s| s.unit.clone()) else { return };
        let (Some(spec), Some(target)) = (u.socket.as_ref(), u.triggers()) else { return };
        let recent = self.triggered.entry(name.to_string()).or_default();
        recent.retain(|at| at.elapsed() < TRIGGER_LIMIT.0);
        if recent.len() >= TRIGGER_LIMIT.1 {
            log::info(&format!("{name}: failed: its service was started {} times in {} s (trigger limit)", TRIGGER_LIMIT.1, TRIGGER_LIMIT.0.as_secs()));
            self.sockets.remove(name);
            self.services.get_mut(name).unwrap().state = State::Failed { reason: "trigger limit hit".into() };
            return;
        }
        recent.push(now());
        if !spec.accept {
            if let Err(e) = self.queue_start(&target) {
                log::error(&format!("{name}: {e}"));
            }
            return;
        }
        let Some(listener) = self.sockets.get(name).and_then(|fds| fds.iter().find(|f| f.as_raw_fd() == fd)) else { return };
        self.accepted += 1;
        let conn = match activation::accept(listener, self.accepted) {
            Ok(Some(conn)) => conn,
            Ok(None) => return,
            Err(e) => return log::error(&format!("{name}: accept: {e}")),
        };
        let (conn, suffix) = conn;
        if self.conns.values().filter(|(_, s)| s == name).count() >= spec.max_connections as usize {
            log::info(&format!("{name}: {} connections already; refusing one more (MaxConnections=)", spec.max_connections));
            return;
        }
        let Some(instance) = basalt_unit::name::instance_name(&target, &suffix) else { return };
        let Some((text, drop_ins)) = instance_files(&instance, &self.templates) else {
            return log::error(&format!("{name}: {target} is not loaded; connection closed"));
        };
        let ins: Vec<(&str, &str)> = drop_ins.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        match Unit::parse_on(&instance, &text, &ins, &basalt_unit::Machine::current()) {
            Ok(unit) => {
                self.services.insert(instance.clone(), Service { unit: Some(unit), ..Service::new() });
                self.conns.insert(instance.clone(), (conn, name.to_string()));
                let _ = self.queue_start(&instance);
            }
            Err(e) => log::error(&format!("{name}: unit {e}; connection closed")),
        }
    }

    /// Notes when units stop running (OnUnitInactiveSec=), and forgets
    /// per-connection instances that ended, closing their connection.
    fn observe(&mut self) {
        let at = mono_now();
        for s in self.services.values_mut() {
            let running = matches!(s.state, State::Activating { .. } | State::Active { .. }) || s.winding_down();
            if s.running && !running {
                s.inactive_at = Some(at);
            }
            s.running = running;
        }
        let ended: Vec<String> = self.conns.keys().filter(|n| self.services.get(*n).is_none_or(|s| matches!(s.state, State::Inactive | State::Failed { .. } | State::Exited))).cloned().collect();
        for name in ended {
            if let Some(Service { state: State::Failed { reason }, .. }) = self.services.remove(&name) {
                log::info(&format!("{name}: failed: {reason}"));
            }
            self.conns.remove(&name);
        }
    }

    /// The sockets to poll: those of sockets that are up, unless (Accept=no)
    /// their service is running and handles them itself.
    fn listening_fds(&self) -> Vec<(i32, String)> {
        let mut fds = Vec::new();
        for (name, list) in &self.sockets {
            let Some(u) = self.services.get(name).filter(|s| matches!(s.state, State::Armed)).and_then(|s| s.unit.as_ref()) else { continue };
            let accept = u.socket.as_ref().is_some_and(|s| s.accept);
            if accept || !u.triggers().and_then(|t| self.services.get(&t)).is_some_and(|s| s.busy()) {
                fds.extend(list.iter().map(|fd| (fd.as_raw_fd(), name.clone())));
            }
        }
        fds
    }

    /// The sockets a service's ExecStart= gets, with their names: its
    /// connection (an Accept=yes instance), or the listening sockets of
    /// every Accept=no socket unit that starts it.
    fn passed_fds(&self, name: &str) -> Vec<(i32, String)> {
        if let Some((conn, _)) = self.conns.get(name) {
            return vec![(conn.as_raw_fd(), "connection".into())];
        }
        let mut fds = Vec::new();
        for (socket, list) in &self.sockets {
            let Some(u) = self.services.get(socket).and_then(|s| s.unit.as_ref()) else { continue };
            let Some(spec) = u.socket.as_ref().filter(|s| !s.accept) else { continue };
            if u.triggers().as_deref() == Some(name) {
                let fd_name = spec.fd_name.clone().unwrap_or_else(|| socket.clone());
                fds.extend(list.iter().map(|fd| (fd.as_raw_fd(), fd_name.clone())));
            }
        }
        fds
    }

    fn start_main(&mut self, name: &str, u: &Unit) {
        match u.service_type {
            ServiceType::Simple => {
                if let Some(pid) = self.spawn(name, u, &u.exec_start[0].argv, Proc::Main, &[]) {
                    self.services.get_mut(name).unwrap().state = State::Active { pid, since: now() };
                    self.start_post(name, u);
                }
            }
            // Activating until READY=1 arrives over $NOTIFY_SOCKET.
            ServiceType::Notify => {
                if let Some(pid) = self.spawn(name, u, &u.exec_start[0].argv, Proc::Main, &[]) {
                    self.services.get_mut(name).unwrap().state = State::Activating { pid };
                }
            }
            ServiceType::Forking => {
                if let Some(pid) = self.spawn(name, u, &u.exec_start[0].argv, Proc::Fork, &[]) {
                    self.services.get_mut(name).unwrap().state = State::Activating { pid };
                }
            }
            ServiceType::Oneshot => self.step(name, u, Proc::Oneshot(0)),
        }
    }

    /// The service is up: ExecStartPost= runs beside it, and its start no
    /// longer times out.
    fn start_post(&mut self, name: &str, u: &Unit) {
        self.services.get_mut(name).unwrap().start_deadline = None;
        for c in &u.exec_start_post {
            self.spawn(name, u, &c.argv, Proc::Post, &[]);
        }
    }

    fn step(&mut self, name: &str, u: &Unit, p: Proc) {
        let cmd = match p {
            Proc::Pre(i) => &u.exec_start_pre[i],
            Proc::Oneshot(i) => &u.exec_start[i],
            _ => unreachable!(),
        };
        if let Some(pid) = self.spawn(name, u, &cmd.argv, p, &[]) {
            self.services.get_mut(name).unwrap().state = State::Activating { pid };
        }
    }

    /// Starts a process of the unit (see `spawn::spawn`) in its cgroup. On
    /// failure a start step fails the unit; others are logged.
    fn spawn(&mut self, name: &str, u: &Unit, argv: &[String], p: Proc, extra_env: &[(String, String)]) -> Option<i32> {
        // Sockets go to ExecStart=, as systemd passes them.
        let passed = if matches!(p, Proc::Main | Proc::Oneshot(_) | Proc::Fork) { self.passed_fds(name) } else { Vec::new() };
        let cgroup = self.services.get(name).and_then(|s| s.cgroup.as_ref());
        match spawn::spawn(u, argv, &passed, extra_env, cgroup) {
            Ok((pid, read_end)) => {
                self.children.insert(pid, (name.to_string(), p));
                self.pipes.insert(read_end.as_raw_fd(), (read_end, name.to_string()));
                Some(pid)
            }
            Err(e) => {
                let reason = format!("cannot start {}: {e}", argv[0]);
                self.logs.line(name, format!("{reason}\n").as_bytes(), true);
                if !matches!(p, Proc::Post | Proc::Stop | Proc::Reload | Proc::StopPost(_)) {
                    self.failed(name, Why::new(reason, "resources", None));
                }
                None
            }
        }
    }

    /// Gives a service its cgroup, `system.slice/NAME`, with its resource
    /// limits written. Without cgroup v2 a service that asks for no limits
    /// runs in init's group.
    fn prepare_cgroup(&mut self, name: &str, u: &Unit) -> Result<(), String> {
        let mut controllers: Vec<&str> = u.cgroup_limits.iter().map(|l| basalt_unit::limits::controller(l.file)).collect();
        controllers.dedup();
        let cgroup = match basalt_cgroup::Cgroup::create(&format!("system.slice/{name}"), &controllers) {
            Ok(c) => c,
            Err(e) if u.cgroup_limits.is_empty() => {
                log::info(&format!("{name}: no cgroup of its own ({e}); stopping it signals its process group"));
                return Ok(());
            }
            Err(e) => return Err(format!("its cgroup: {e}")),
        };
        let (memory, tasks) = machine_size();
        for l in &u.cgroup_limits {
            cgroup.set(l.file, &l.value(memory, tasks)).map_err(|e| format!("{}=: {e}", l.directive))?;
        }
        self.services.get_mut(name).unwrap().cgroup = Some(cgroup);
        Ok(())
    }

    /// A start step failed or could not run: the unit fails, or restarts
    /// if Restart= says so for a failed exit.
    fn failed(&mut self, name: &str, why: Why) {
        let u = self.services[name].unit.as_ref().unwrap();
        let outcome = if u.restarts_after(why.ending.unwrap_or(Ending::Exited(1))) { Outcome::Restart(why) } else { Outcome::Failed(why) };
        self.wind_down(name, outcome);
    }

    fn schedule_restart(&mut self, name: &str, reason: String) {
        let svc = self.services.get_mut(name).unwrap();
        let u = svc.unit.as_ref().unwrap();
        svc.failures_in_row += 1;
        let exp = svc.failures_in_row.saturating_sub(1).min(16);
        let delay = u.restart_sec.max(Duration::from_millis(100)).saturating_mul(1 << exp).min(MAX_BACKOFF);
        log::info(&format!("{name}: {reason}; restarting in {:.1} s", delay.as_secs_f64()));
        svc.state = State::AutoRestart { at: now() + delay, reason };
    }

    /// Stops tracking the unit's processes (KillMode=none leaves them running).
    fn forget(&mut self, name: &str) {
        self.children.retain(|_, (n, _)| n != name);
    }

    /// Whether anything of the unit still runs: in its cgroup, or a
    /// process the supervisor started for it.
    fn has_processes(&self, name: &str) -> bool {
        self.services[name].cgroup.as_ref().is_some_and(|c| c.populated()) || self.children.values().any(|(n, _)| n == name)
    }

    /// The process of the unit that counts as its main one.
    fn main_pid(&self, name: &str) -> Option<i32> {
        self.children.iter().find(|(_, (n, p))| n == name && *p == Proc::Main).map(|(pid, _)| *pid)
    }

    fn child_exited(&mut self, pid: i32, status: i32) {
        if Some(pid) == self.console_shell {
            self.console_shell = None;
            return;
        }
        let Some((name, p)) = self.children.remove(&pid) else { return };
        let ending = if libc::WIFEXITED(status) { Ending::Exited(libc::WEXITSTATUS(status)) } else { Ending::Signaled(libc::WTERMSIG(status)) };
        let how = match ending {
            Ending::Exited(code) => format!("exited with status {code}"),
            Ending::Signaled(sig) => format!("killed by {}", basalt_unit::signal_name(sig)),
            Ending::Timeout => "timed out".to_string(),
        };
        let Some(u) = self.services.get(&name).and_then(|s| s.unit.clone()) else { return };
        let ok = u.clean(ending);
        let state = self.services[&name].state.clone();
        match p {
            Proc::Pre(_) | Proc::Oneshot(_) | Proc::Fork if matches!(state, State::Stopping { .. }) => {
                let State::Stopping { outcome, .. } = state else { unreachable!() };
                self.wind_down(&name, outcome);
            }
            Proc::Pre(i) | Proc::Oneshot(i) => {
                let cmd = if let Proc::Pre(_) = p { &u.exec_start_pre[i] } else { &u.exec_start[i] };
                if !ok && !cmd.ignore_failure {
                    let what = if let Proc::Pre(_) = p { "ExecStartPre" } else { "ExecStart" };
                    self.failed(&name, Why::ended(format!("{what} {} {how}", cmd.argv[0]), ending));
                } else if let Proc::Pre(i) = p {
                    if i + 1 < u.exec_start_pre.len() {
                        self.step(&name, &u, Proc::Pre(i + 1));
                    } else {
                        self.start_main(&name, &u);
                    }
                } else if i + 1 < u.exec_start.len() {
                    self.step(&name, &u, Proc::Oneshot(i + 1));
                } else {
                    self.start_post(&name, &u);
                    let svc = self.services.get_mut(&name).unwrap();
                    svc.failures_in_row = 0;
                    svc.state = State::Exited;
                }
            }
            Proc::Fork => {
                if !ok {
                    return self.failed(&name, Why::ended(format!("ExecStart {} {how}", u.exec_start[0].argv[0]), ending));
                }
                match self.forked_main(&name, &u) {
                    Ok(main) => {
                        log::info(&format!("{name}: started; main process {main}"));
                        self.children.insert(main, (name.clone(), Proc::Main));
                        self.services.get_mut(&name).unwrap().state = State::Active { pid: main, since: now() };
                        self.start_post(&name, &u);
                    }
                    Err(e) => self.failed(&name, Why::new(e, "protocol", None)),
                }
            }
            Proc::Main => match state {
                State::Stopping { outcome: Outcome::Stopped { restart_after, .. }, .. } => self.wind_down(&name, Outcome::Stopped { restart_after, ending: Some(ending) }),
                State::Stopping { outcome, .. } => self.wind_down(&name, outcome),
                State::Active { since, .. } => {
                    let svc = self.services.get_mut(&name).unwrap();
                    if since.elapsed() >= STABLE_RUN {
                        svc.failures_in_row = 0;
                    }
                    let outcome = if u.restarts_after(ending) {
                        Outcome::Restart(Why::ended(format!("main process {how}"), ending))
                    } else if ok {
                        Outcome::Done(Some(ending))
                    } else {
                        Outcome::Failed(Why::ended(format!("main process {how}"), ending))
                    };
                    self.wind_down(&name, outcome);
                }
                // Type=notify: gone before READY=1.
                State::Activating { .. } => self.failed(&name, Why::ended(format!("main process {how} before it was ready (READY=1)"), if ok { Ending::Exited(1) } else { ending })),
                _ => {}
            },
            Proc::Stop => match state {
                // KillMode=none: the stop is done once ExecStop= is.
                State::Stopping { outcome, .. } if u.kill_mode == KillMode::None => {
                    self.forget(&name);
                    self.wind_down(&name, outcome);
                }
                State::Stopping { pid: Some(main), .. } => self.signal(&name, Some(main), u.kill_signal, false),
                // A oneshot's ExecStop=: nothing else runs.
                State::Stopping { pid: None, outcome, .. } => self.wind_down(&name, outcome),
                _ => {}
            },
            Proc::Post => {}
            Proc::Reload => {
                if !u.clean(ending) {
                    log::info(&format!("{name}: ExecReload {} {how}", u.exec_reload[0].argv[0]));
                }
            }
            Proc::StopPost(i) => {
                let State::StopPost { step, outcome, .. } = state else { return };
                if step != i {
                    return;
                }
                let cmd = &u.exec_stop_post[i];
                let outcome = if !ok && !cmd.ignore_failure {
                    log::info(&format!("{name}: ExecStopPost {} {how}", cmd.argv[0]));
                    outcome.worsened(Why::ended(format!("ExecStopPost {} {how}", cmd.argv[0]), ending))
                } else {
                    outcome
                };
                self.post_stop(&name, outcome, i + 1);
            }
        }
    }

    /// The main process a Type=forking ExecStart= left behind: the PID in
    /// PIDFile=, or else the one process in the service's cgroup.
    fn forked_main(&self, name: &str, u: &Unit) -> Result<i32, String> {
        let pid = match &u.pid_file {
            Some(file) => {
                let text = std::fs::read_to_string(file).map_err(|e| format!("PIDFile={file}: {e}"))?;
                text.trim().parse::<i32>().ok().filter(|p| *p > 1).ok_or_else(|| format!("PIDFile={file} holds {:?}, not a PID", text.trim()))?
            }
            None => {
                let procs = self.services[name].cgroup.as_ref().map(|c| c.procs()).unwrap_or_default();
                match procs.as_slice() {
                    [one] => *one,
                    [] => return Err("ExecStart= exited and left no process behind (Type=forking)".into()),
                    more => return Err(format!("{} processes are left in its cgroup and none is known as the main one: set PIDFile=", more.len())),
                }
            }
        };
        // Orphans are init's children: one that is gone was reaped already.
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return Err(format!("its main process {pid} is not running"));
        }
        Ok(pid)
    }

    /// The service's main process (and start steps) are gone: what is left
    /// of it in its cgroup goes as KillMode= says, then ExecStopPost= runs,
    /// then it ends by `outcome`.
    fn wind_down(&mut self, name: &str, outcome: Outcome) {
        let svc = &self.services[name];
        let Some(u) = svc.unit.clone() else { return self.finish(name, outcome) };
        let populated = svc.cgroup.as_ref().is_some_and(|c| c.populated());
        if populated && matches!(u.kill_mode, KillMode::ControlGroup | KillMode::Mixed) {
            let (deadline, killed) = match svc.state {
                State::Stopping { deadline, killed, .. } => (deadline, killed),
                _ => (now() + u.timeout_stop, false),
            };
            let cgroup = svc.cgroup.as_ref().unwrap();
            if u.kill_mode == KillMode::Mixed {
                cgroup.kill();
            } else if !killed {
                cgroup.signal(u.kill_signal);
                cgroup.signal(libc::SIGCONT);
            }
            self.services.get_mut(name).unwrap().state = State::Stopping { pid: None, deadline, outcome, killed: killed || u.kill_mode == KillMode::Mixed };
            return;
        }
        self.post_stop(name, outcome, 0);
    }

    /// Runs ExecStopPost= from number `from` on, then ends the unit.
    fn post_stop(&mut self, name: &str, outcome: Outcome, from: usize) {
        let Some(u) = self.services[name].unit.clone() else { return self.finish(name, outcome) };
        for step in from..u.exec_stop_post.len() {
            if let Some(pid) = self.spawn(name, &u, &u.exec_stop_post[step].argv, Proc::StopPost(step), &outcome.environment()) {
                self.services.get_mut(name).unwrap().state = State::StopPost { pid, step, deadline: now() + u.timeout_stop, outcome };
                return;
            }
        }
        self.finish(name, outcome);
    }

    /// The unit is down: inactive, failed, or waiting to restart.
    fn finish(&mut self, name: &str, outcome: Outcome) {
        let svc = self.services.get_mut(name).unwrap();
        svc.start_deadline = None;
        if let Some(c) = svc.cgroup.as_ref().filter(|c| !c.populated()) {
            // Made again on the next start; gone meanwhile.
            let _ = std::fs::remove_dir(&c.path);
            svc.cgroup = None;
        }
        match outcome {
            Outcome::Stopped { restart_after, .. } => self.stopped(name, restart_after),
            Outcome::Done(_) => svc.state = State::Inactive,
            Outcome::Failed(why) => {
                log::info(&format!("{name}: failed: {}", why.reason));
                svc.state = State::Failed { reason: why.reason };
            }
            Outcome::Restart(why) => self.schedule_restart(name, why.reason),
        }
    }

    fn stopped(&mut self, name: &str, restart_after: bool) {
        let svc = self.services.get_mut(name).unwrap();
        svc.state = State::Inactive;
        if restart_after {
            svc.restarts += 1;
            let _ = self.queue_start(name);
        }
    }

    /// Sends `signal` to the service's processes as KillMode= says;
    /// `last` is the SIGKILL after the stop timeout.
    fn signal(&self, name: &str, main: Option<i32>, signal: i32, last: bool) {
        let svc = &self.services[name];
        let mode = svc.unit.as_ref().map_or(KillMode::ControlGroup, |u| u.kill_mode);
        let signal = if last { libc::SIGKILL } else { signal };
        let kill = |pid: i32, sig: i32| {
            // SAFETY: kill takes no pointers.
            unsafe { libc::kill(pid, sig) };
        };
        match (mode, svc.cgroup.as_ref()) {
            (KillMode::ControlGroup, Some(c)) | (KillMode::Mixed, Some(c)) if last => c.kill(),
            (KillMode::ControlGroup, Some(c)) => {
                c.signal(signal);
                c.signal(libc::SIGCONT);
            }
            // Without a cgroup: the process group the service started in.
            (KillMode::ControlGroup | KillMode::Mixed, None) => {
                if let Some(m) = main {
                    kill(-m, signal);
                    kill(m, signal);
                }
            }
            (KillMode::Mixed | KillMode::Process, _) => {
                if let Some(m) = main {
                    kill(m, signal);
                }
            }
            (KillMode::None, _) => {}
        }
    }

    /// Units that are up and bound (BindsTo=) to a unit that is down:
    /// stopped, as systemd does.
    fn stop_unbound(&mut self) {
        let down = |s: &Service| matches!(s.state, State::Inactive | State::Failed { .. } | State::AutoRestart { .. }) || s.winding_down();
        let unbound: Vec<(String, String)> = self
            .services
            .iter()
            .filter(|(_, s)| matches!(s.state, State::Active { .. } | State::Activating { .. } | State::Exited | State::Armed))
            .filter_map(|(n, s)| Some((n.clone(), s.unit.as_ref()?.binds_to.iter().find(|b| self.services.get(*b).is_none_or(down))?.clone())))
            .collect();
        for (name, bound) in unbound {
            log::info(&format!("{name}: stopping, it is bound to {bound}, which is down"));
            let _ = self.stop(&name, false);
        }
    }

    /// Stops unit `name` (and starts it again after, for a restart). PartOf=:
    /// a stop or restart of this unit is also one of the units that are part
    /// of it and up; this unit is no longer up by then, so a cycle of PartOf=
    /// ends.
    fn stop(&mut self, name: &str, restart_after: bool) -> Result<(), String> {
        let was_stopping = self.services.get(name).ok_or_else(|| format!("no such unit {name}"))?.winding_down();
        self.halt(name, Outcome::Stopped { restart_after, ending: None });
        if !was_stopping {
            let parts: Vec<String> =
                self.services.iter().filter(|(n, s)| *n != name && s.up() && s.unit.as_ref().is_some_and(|u| u.part_of.iter().any(|p| p == name))).map(|(n, _)| n.clone()).collect();
            for part in parts {
                log::info(&format!("{part}: {}, it is part of {name}", if restart_after { "restarting" } else { "stopping" }));
                let _ = self.stop(&part, restart_after);
            }
        }
        Ok(())
    }

    /// Takes unit `name` down, to end by `outcome`: ExecStop= or KillSignal=
    /// for a running one, then what `wind_down` does.
    fn halt(&mut self, name: &str, outcome: Outcome) {
        let svc = &self.services[name];
        let u = svc.unit.clone();
        let timeout = u.as_ref().map(|u| u.timeout_stop).unwrap_or(Duration::from_secs(10));
        let stopping = |pid, outcome| State::Stopping { pid, deadline: now() + timeout, outcome, killed: false };
        match svc.state.clone() {
            State::Active { pid, .. } | State::Activating { pid } => {
                let u = u.unwrap();
                let main = self.main_pid(name).or(Some(pid));
                if matches!(svc.state, State::Active { .. }) && !u.exec_stop.is_empty() {
                    self.spawn(name, &u, &u.exec_stop[0].argv, Proc::Stop, &[]);
                } else if u.kill_mode == KillMode::None {
                    // Nothing is signalled: the processes are left to themselves.
                    self.forget(name);
                    return self.wind_down(name, outcome);
                } else {
                    self.signal(name, main, u.kill_signal, false);
                }
                self.services.get_mut(name).unwrap().state = stopping(Some(pid), outcome);
            }
            State::Stopping { .. } | State::StopPost { .. } => {}
            State::Armed => {
                self.close_sockets(name);
                self.finish(name, outcome);
            }
            // A oneshot that remains after exit: ExecStop=, ExecStopPost=.
            State::Exited if u.as_ref().is_some_and(|u| u.remain_after_exit && u.socket.is_none() && u.timer.is_none()) => {
                let u = u.unwrap();
                if !u.exec_stop.is_empty() && self.spawn(name, &u, &u.exec_stop[0].argv, Proc::Stop, &[]).is_some() {
                    self.services.get_mut(name).unwrap().state = stopping(None, outcome);
                } else {
                    self.wind_down(name, outcome);
                }
            }
            _ => self.finish(name, outcome),
        }
    }

    /// Closes a socket unit's sockets (RemoveOnStop=: and removes their files).
    fn close_sockets(&mut self, name: &str) {
        if self.sockets.remove(name).is_none() {
            return;
        }
        let Some(spec) = self.services.get(name).and_then(|s| s.unit.as_ref()).and_then(|u| u.socket.clone()) else { return };
        if spec.remove_on_stop {
            for listen in &spec.listen {
                if let basalt_unit::socket::Address::Path(p) = &listen.address {
                    let _ = std::fs::remove_file(p);
                }
            }
        }
    }

    fn handle(&mut self, req: Request) -> Result<String, String> {
        match req.clone() {
            Request::Status => Ok(self.status().encode()),
            Request::Start(n) => {
                if !self.services.contains_key(&self.resolve(&n)) {
                    // An instance of a template is made when it is asked for.
                    if basalt_unit::name::template_of(&n).is_some() {
                        self.asked.insert(n.clone());
                    }
                    self.load_units();
                }
                self.queue_start(&self.resolve(&n)).map(|_| "ok\n".into())
            }
            Request::Stop(n) => self.stop(&self.resolve(&n), false).map(|_| "ok\n".into()),
            Request::Restart(n) => {
                self.load_units();
                self.stop(&self.resolve(&n), true).map(|_| "ok\n".into())
            }
            Request::ReloadUnit(n) => self.reload_unit(&self.resolve(&n)).map(|_| "ok\n".into()),
            Request::TryRestart(n) => {
                let name = self.resolve(&n);
                if self.running(&name)? {
                    self.load_units();
                    self.stop(&name, true)?;
                }
                Ok("ok\n".into())
            }
            Request::ReloadOrRestart(n) | Request::ReloadOrTryRestart(n) => {
                let name = self.resolve(&n);
                let running = self.running(&name)?;
                let reloadable = self.services[&name].unit.as_ref().is_some_and(|u| !u.exec_reload.is_empty());
                if running && reloadable {
                    self.reload_unit(&name)?;
                } else if running || matches!(req, Request::ReloadOrRestart(_)) {
                    self.load_units();
                    self.stop(&name, true)?;
                }
                Ok("ok\n".into())
            }
            Request::Reload => {
                self.load_units();
                self.start_enabled();
                Ok("ok\n".into())
            }
            Request::Reboot | Request::PowerOff => Ok("ok\n".into()),
        }
    }

    /// Whether unit `name` is up (active or starting), as try-restart asks.
    fn running(&self, name: &str) -> Result<bool, String> {
        let svc = self.services.get(name).ok_or_else(|| format!("no such unit {name}"))?;
        Ok(matches!(svc.state, State::Active { .. } | State::Activating { .. } | State::Armed))
    }

    /// `reload NAME`: runs ExecReload= beside the running service; its
    /// output goes to the unit's log, and a failure is logged, not a failure
    /// of the unit (the service keeps running). As systemctl, refused for a
    /// unit that is not running or has no ExecReload=.
    fn reload_unit(&mut self, name: &str) -> Result<(), String> {
        let svc = self.services.get(name).ok_or_else(|| format!("no such unit {name}"))?;
        let u = svc.unit.clone().ok_or_else(|| format!("{name} is not loaded"))?;
        if u.exec_reload.is_empty() {
            return Err(format!("{name} cannot be reloaded: it has no ExecReload= (restart it instead)"));
        }
        if !matches!(svc.state, State::Active { .. }) {
            return Err(format!("{name} is not active, so it cannot be reloaded"));
        }
        log::info(&format!("{name}: reloading"));
        for c in &u.exec_reload {
            self.spawn(name, &u, &c.argv, Proc::Reload, &[]);
        }
        Ok(())
    }

    fn status(&self) -> Status {
        let units = self
            .services
            .iter()
            .map(|(name, s)| {
                let (state, pid, detail) = match &s.state {
                    State::Inactive => ("inactive", None, String::new()),
                    State::Queued => ("queued", None, String::new()),
                    State::Activating { pid } => ("activating", Some(*pid), s.status_text.clone().unwrap_or_default()),
                    State::Active { pid, since } => {
                        let running = format!("running {} s", since.elapsed().as_secs());
                        ("active", Some(*pid), s.status_text.as_ref().map_or(running.clone(), |t| format!("{running}; {t}")))
                    }
                    State::Exited if s.unit.as_ref().is_some_and(|u| u.timer.is_some()) => ("active", None, "elapsed; nothing left to elapse".into()),
                    State::Exited => ("exited", None, "finished successfully".into()),
                    State::Armed => ("active", None, self.armed_detail(name, s)),
                    State::Failed { reason } => ("failed", None, reason.clone()),
                    State::AutoRestart { at, reason } => ("auto-restart", None, format!("{reason}; restart in {:.1} s", at.saturating_duration_since(now()).as_secs_f64())),
                    State::Stopping { pid, .. } => ("stopping", *pid, if pid.is_none() { "waiting for what is left in its cgroup".into() } else { String::new() }),
                    State::StopPost { pid, step, .. } => ("stopping", Some(*pid), format!("ExecStopPost {}", step + 1)),
                };
                UnitStatus { name: name.clone(), state: state.into(), pid, restarts: s.restarts, detail }
            })
            .collect();
        Status { version: self.boot.version.clone(), slot: self.boot.slot.clone(), tries_left: self.health.tries_left, blessed: self.health.blessed, health: self.health.detail.clone(), units }
    }

    fn armed_detail(&self, name: &str, s: &Service) -> String {
        let Some(u) = &s.unit else { return String::new() };
        if let Some(spec) = &u.socket {
            return format!("listening on {}", spec.listen.iter().map(|l| l.to_string()).collect::<Vec<_>>().join(", "));
        }
        match self.timer_runs.get(name).and_then(|r| r.next) {
            Some(at) => format!("waiting; elapses in {} s", at.saturating_sub(mono_now()).as_secs()),
            None => "waiting".into(),
        }
    }

    /// The health gate: every required unit up, continuously, for the settle time.
    fn check_health(&mut self) {
        if self.health.blessed {
            self.health.detail = "passed; boot blessed".into();
            return;
        }
        let missing: Vec<&String> = self.health.required.iter().filter(|r| !self.services.get(*r).is_some_and(|s| s.up())).collect();
        if !missing.is_empty() {
            self.health.healthy_since = None;
            self.health.detail = format!("waiting for {}", missing.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" "));
            return;
        }
        let since = *self.health.healthy_since.get_or_insert_with(now);
        if since.elapsed() < self.health.settle {
            self.health.detail = format!("required units up {} s of {} s", since.elapsed().as_secs(), self.health.settle.as_secs());
            return;
        }
        match bless::bless(&self.boot.uki_base) {
            Ok(file) => {
                self.health.blessed = true;
                self.health.tries_left = None;
                self.health.detail = "passed; boot blessed".into();
                let _ = std::fs::create_dir_all("/var/lib/basalt");
                let _ = std::fs::write(BOOT_STATE, format!("blessed=yes\nslot={}\nversion={}\nuki={file}\n", self.boot.slot, self.boot.version));
                log::info(&format!("boot blessed: slot {} version {} ({file})", self.boot.slot, self.boot.version));
            }
            Err(e) => {
                self.health.detail = format!("blessing failed: {e}");
                self.health.healthy_since = None;
                log::error(&format!("blessing the boot: {e}"));
            }
        }
    }

    fn next_deadline(&self) -> Duration {
        let mut d = Duration::from_secs(1);
        for s in self.services.values() {
            let at = match s.state {
                State::AutoRestart { at, .. } => at,
                // What is left in the cgroup may go at any moment.
                State::Stopping { pid: None, .. } => now() + Duration::from_millis(100),
                State::Stopping { deadline, .. } | State::StopPost { deadline, .. } => deadline,
                State::Activating { .. } => match s.start_deadline {
                    Some(at) => at,
                    None => continue,
                },
                _ => continue,
            };
            d = d.min(at.saturating_duration_since(now()));
        }
        let mono = mono_now();
        for run in self.timer_runs.values() {
            if let Some(at) = run.next {
                d = d.min(at.saturating_sub(mono));
            }
        }
        d
    }

    /// What is due: restarts after their back-off, stops and starts that
    /// ran out of time, and stops waiting for an empty cgroup.
    fn timers(&mut self) {
        let names: Vec<String> = self.services.keys().cloned().collect();
        for name in names {
            let svc = &self.services[&name];
            let Some(u) = svc.unit.clone() else { continue };
            match svc.state.clone() {
                State::AutoRestart { at, .. } if at <= now() => {
                    let svc = self.services.get_mut(&name).unwrap();
                    svc.restarts += 1;
                    svc.state = State::Queued;
                }
                State::Activating { .. } if svc.start_deadline.is_some_and(|at| at <= now()) => {
                    let limit = u.start_limit().unwrap_or_default().as_secs_f64();
                    log::info(&format!("{name}: did not start within {limit:.0} s (TimeoutStartSec=); stopping it"));
                    let why = Why::ended(format!("start timed out after {limit:.0} s"), Ending::Timeout);
                    let outcome = if u.restarts_after(Ending::Timeout) { Outcome::Restart(why) } else { Outcome::Failed(why) };
                    self.services.get_mut(&name).unwrap().start_deadline = None;
                    self.halt(&name, outcome);
                }
                State::Stopping { pid: None, outcome, .. } if !self.has_processes(&name) => self.post_stop(&name, outcome, 0),
                State::Stopping { pid, deadline, outcome, killed: false } if deadline <= now() => {
                    log::info(&format!("{name}: did not stop within {} s; killing it", u.timeout_stop.as_secs()));
                    self.signal(&name, pid, libc::SIGKILL, true);
                    self.services.get_mut(&name).unwrap().state = State::Stopping { pid, deadline: now() + Duration::from_secs(5), outcome, killed: true };
                }
                State::Stopping { pid: None, deadline, outcome, killed: true } if deadline <= now() => {
                    log::error(&format!("{name}: processes are left in its cgroup after SIGKILL; going on without them"));
                    self.post_stop(&name, outcome, 0);
                }
                State::StopPost { pid, step, deadline, outcome } if deadline <= now() => {
                    log::info(&format!("{name}: ExecStopPost {} did not finish within {} s; killing it", step + 1, u.timeout_stop.as_secs()));
                    // SAFETY: kill takes no pointers.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    self.children.remove(&pid);
                    let why = Why::ended(format!("ExecStopPost {} timed out", u.exec_stop_post[step].argv[0]), Ending::Timeout);
                    self.post_stop(&name, outcome.worsened(why), step + 1);
                }
                _ => {}
            }
        }
    }

    /// Requests cloud-config files (`basalt_control::file_request`): unit
    /// commands and `reload`.
    fn file_requests(&mut self) {
        for (f, text) in basalt_control::filed_requests(Path::new("/")) {
            let _ = std::fs::remove_file(&f);
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                match Request::parse(line.trim()) {
                    Ok(Request::Reboot | Request::PowerOff | Request::Status) | Err(_) => log::error(&format!("request file {}: {line:?} refused", f.display())),
                    Ok(req) => {
                        if let Err(e) = self.handle(req) {
                            log::error(&format!("request file {}: {e}", f.display()));
                        }
                    }
                }
            }
        }
    }

    /// Takes the connections waiting on the control socket.
    fn accept(&mut self) {
        let Some(listener) = &self.listener else { return };
        while let Ok((stream, _)) = listener.accept() {
            if stream.set_nonblocking(true).is_ok() {
                self.clients.push(Client { stream, received: Vec::new(), answer: None, written: 0, since: now(), halt: None });
            }
        }
    }

    /// Reads what control connections sent, answers whole requests, writes
    /// what the socket takes, and drops connections that are done or too
    /// slow. Returns a reboot or power-off whose answer is out.
    fn serve_clients(&mut self) -> Option<sys::Halt> {
        use std::io::{Read, Write};
        let mut halt = None;
        let mut clients = std::mem::take(&mut self.clients);
        clients.retain_mut(|c| {
            if c.answer.is_none() {
                let mut ended = false;
                let mut buf = [0u8; 1024];
                loop {
                    match c.stream.read(&mut buf) {
                        Ok(0) => {
                            ended = true;
                            break;
                        }
                        Ok(n) if c.received.len() < basalt_control::MAX_REQUEST => c.received.extend_from_slice(&buf[..n]),
                        Ok(_) => break,
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(_) => return false,
                    }
                }
                let answer = match basalt_control::request_in(&c.received, ended) {
                    None if c.since.elapsed() < CLIENT_TIMEOUT && !ended => return true,
                    None => format!("error no request line within {} s\n", CLIENT_TIMEOUT.as_secs()),
                    Some(Err(e)) => format!("error {e}\n"),
                    Some(Ok(req)) => {
                        c.halt = match req {
                            Request::Reboot => Some(sys::Halt::Reboot),
                            Request::PowerOff => Some(sys::Halt::PowerOff),
                            _ => None,
                        };
                        self.handle(req).unwrap_or_else(|e| format!("error {e}\n"))
                    }
                };
                c.answer = Some(answer.into_bytes());
                c.since = now();
            }
            let answer = c.answer.as_ref().unwrap();
            while c.written < answer.len() {
                match c.stream.write(&answer[c.written..]) {
                    Ok(n) => c.written += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && c.since.elapsed() < ANSWER_TIMEOUT => return true,
                    Err(_) => break,
                }
            }
            halt = halt.or(c.halt);
            false
        });
        self.clients.append(&mut clients);
        halt
    }

    /// sd_notify(3) messages from services: READY=1 finishes a Type=notify
    /// start, STATUS= shows in `status`, MAINPID= names another main
    /// process. Whose messages count is the unit's NotifyAccess=.
    fn notifications(&mut self) {
        while let Some((pid, message)) = self.notify.as_ref().and_then(notify::receive) {
            let Some(name) = self.sender(pid) else {
                log::info(&format!("notify: a message from PID {pid}, which is no service's, ignored"));
                continue;
            };
            let Some(u) = self.services[&name].unit.clone() else { continue };
            let main = self.main_pid(&name);
            let allowed = match u.notify() {
                NotifyAccess::None => false,
                NotifyAccess::Main => main == Some(pid),
                NotifyAccess::Exec => self.children.get(&pid).is_some_and(|(n, _)| *n == name),
                NotifyAccess::All => true,
            };
            if !allowed {
                log::info(&format!("{name}: a notification from PID {pid} ignored (NotifyAccess={:?}, main process {main:?})", u.notify()));
                continue;
            }
            for (key, value) in notify::assignments(&message) {
                match key {
                    "READY" if value == "1" => {
                        if let (State::Activating { .. }, Some(main)) = (&self.services[&name].state, main) {
                            if u.service_type == ServiceType::Notify {
                                log::info(&format!("{name}: ready"));
                                self.services.get_mut(&name).unwrap().state = State::Active { pid: main, since: now() };
                                self.start_post(&name, &u);
                            }
                        }
                    }
                    "STATUS" => self.services.get_mut(&name).unwrap().status_text = Some(value.to_string()).filter(|v| !v.is_empty()),
                    "MAINPID" => match value.parse::<i32>() {
                        Ok(new) if new > 1 && basalt_cgroup::of_process(new).is_some_and(|g| g == format!("/system.slice/{name}")) => {
                            if let Some(old) = main {
                                self.children.remove(&old);
                            }
                            self.children.insert(new, (name.clone(), Proc::Main));
                            if let State::Active { pid, .. } | State::Activating { pid } = &mut self.services.get_mut(&name).unwrap().state {
                                *pid = new;
                            }
                        }
                        _ => log::info(&format!("{name}: MAINPID={value} ignored: not a process of the service")),
                    },
                    _ => {}
                }
            }
        }
    }

    /// The unit a process belongs to: one the supervisor started, or one
    /// in a service's cgroup.
    fn sender(&self, pid: i32) -> Option<String> {
        if let Some((name, _)) = self.children.get(&pid) {
            return Some(name.clone());
        }
        let group = basalt_cgroup::of_process(pid)?;
        let name = group.strip_prefix("/system.slice/")?.split('/').next()?;
        self.services.contains_key(name).then(|| name.to_string())
    }

    fn drain_pipe(&mut self, fd: i32) {
        let mut buf = [0u8; 8192];
        loop {
            // SAFETY: reads at most buf.len() bytes into `buf`, which has them.
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 {
                let unit = self.pipes[&fd].1.clone();
                self.logs.write_chunk(fd, &unit, &buf[..n as usize], true);
                continue;
            }
            if n == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EAGAIN) {
                if let Some((_, unit)) = self.pipes.remove(&fd) {
                    self.logs.close(fd, &unit, true);
                }
            }
            return;
        }
    }

    fn reap(&mut self) {
        loop {
            let mut status = 0;
            // SAFETY: writes one int into `status`, a live local.
            let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
            if pid <= 0 {
                return;
            }
            self.child_exited(pid, status);
        }
    }

    /// Runs until a reboot or power-off is asked for.
    pub fn run(&mut self) -> sys::Halt {
        loop {
            if self.want_console_shell && self.console_shell.is_none() {
                self.console_shell = crate::stage2::spawn_console_shell();
            }
            self.stop_unbound();
            self.run_queue();
            self.observe();
            self.elapse_timers();
            self.run_queue();
            self.check_health();
            let mut fds = vec![libc::pollfd { fd: self.signals.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
            for fd in [self.listener.as_ref().map(|l| l.as_raw_fd()), self.notify.as_ref().map(|n| n.as_raw_fd())].into_iter().flatten() {
                fds.push(libc::pollfd { fd, events: libc::POLLIN, revents: 0 });
            }
            fds.extend(self.clients.iter().map(|c| libc::pollfd { fd: c.stream.as_raw_fd(), events: if c.answer.is_some() { libc::POLLOUT } else { libc::POLLIN }, revents: 0 }));
            let listening = self.listening_fds();
            let socket_start = fds.len();
            fds.extend(listening.iter().map(|(fd, _)| libc::pollfd { fd: *fd, events: libc::POLLIN, revents: 0 }));
            let pipe_start = fds.len();
            fds.extend(self.pipes.keys().map(|&fd| libc::pollfd { fd, events: libc::POLLIN, revents: 0 }));
            let mut timeout = self.next_deadline().as_millis().min(1000) as i32;
            if !self.clients.is_empty() {
                timeout = timeout.min(200);
            }
            // SAFETY: `fds` holds fds.len() live pollfd entries for the kernel to update.
            unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as _, timeout) };
            for p in &fds[pipe_start..] {
                if p.revents != 0 {
                    self.drain_pipe(p.fd);
                }
            }
            for (p, (fd, socket)) in fds[socket_start..pipe_start].iter().zip(&listening) {
                if p.revents != 0 {
                    self.socket_ready(socket, *fd);
                }
            }
            if fds[0].revents != 0 {
                // SAFETY: signalfd_siginfo is integers only; all zeroes is valid.
                let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
                // SAFETY: reads at most one signalfd_siginfo into `info`, which is one.
                while unsafe { libc::read(self.signals.as_raw_fd(), (&mut info as *mut libc::signalfd_siginfo).cast(), std::mem::size_of::<libc::signalfd_siginfo>()) } > 0 {
                    match info.ssi_signo as i32 {
                        libc::SIGCHLD => self.reap(),
                        libc::SIGTERM | libc::SIGINT => return sys::Halt::Reboot,
                        libc::SIGUSR1 | libc::SIGUSR2 => return sys::Halt::PowerOff,
                        _ => {}
                    }
                }
            }
            self.notifications();
            self.accept();
            if let Some(h) = self.serve_clients() {
                return h;
            }
            self.timers();
            self.file_requests();
        }
    }

    /// Stops every service, in reverse start order, within their stop timeouts.
    pub fn stop_all(&mut self) {
        let names: Vec<String> = self.services.keys().rev().cloned().collect();
        for n in &names {
            let _ = self.stop(n, false);
        }
        let deadline = now() + Duration::from_secs(15);
        while self.services.values().any(Service::winding_down) && now() < deadline {
            let mut fds = [libc::pollfd { fd: self.signals.as_raw_fd(), events: libc::POLLIN, revents: 0 }];
            // SAFETY: `fds` is one live pollfd.
            unsafe { libc::poll(fds.as_mut_ptr(), 1, 200) };
            // SAFETY: signalfd_siginfo is integers only; all zeroes is valid.
            let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
            // SAFETY: reads at most one signalfd_siginfo into `info`, which is one.
            while unsafe { libc::read(self.signals.as_raw_fd(), (&mut info as *mut libc::signalfd_siginfo).cast(), std::mem::size_of::<libc::signalfd_siginfo>()) } > 0 {}
            self.reap();
            self.timers();
            let fds: Vec<i32> = self.pipes.keys().copied().collect();
            for fd in fds {
                self.drain_pipe(fd);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str, unit_section: &str, state: State) -> (String, Service) {
        let text = format!("[Unit]\n{unit_section}\n[Service]\nExecStart=/bin/true\n");
        let unit = Unit::parse(name, &text, &[]).unwrap();
        (name.to_string(), Service { unit: Some(unit), state, ..Service::new() })
    }

    #[test]
    fn exec_stop_post_is_told_how_the_service_ended() {
        let env = |o: Outcome| o.environment().into_iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ");
        assert_eq!(env(Outcome::Stopped { restart_after: false, ending: Some(Ending::Signaled(15)) }), "SERVICE_RESULT=success EXIT_CODE=killed EXIT_STATUS=TERM");
        assert_eq!(env(Outcome::Stopped { restart_after: true, ending: None }), "SERVICE_RESULT=success");
        assert_eq!(env(Outcome::Done(Some(Ending::Exited(0)))), "SERVICE_RESULT=success EXIT_CODE=exited EXIT_STATUS=0");
        assert_eq!(env(Outcome::Failed(Why::ended("x".into(), Ending::Exited(3)))), "SERVICE_RESULT=exit-code EXIT_CODE=exited EXIT_STATUS=3");
        assert_eq!(env(Outcome::Restart(Why::ended("x".into(), Ending::Signaled(9)))), "SERVICE_RESULT=signal EXIT_CODE=killed EXIT_STATUS=KILL");
        assert_eq!(env(Outcome::Failed(Why::ended("x".into(), Ending::Timeout))), "SERVICE_RESULT=timeout");
        assert_eq!(env(Outcome::Failed(Why::new("no user".into(), "resources", None))), "SERVICE_RESULT=resources");
    }

    #[test]
    fn a_failed_exec_stop_post_fails_a_clean_end_only() {
        let why = || Why::ended("ExecStopPost /bin/false exited with status 1".into(), Ending::Exited(1));
        assert!(matches!(Outcome::Done(None).worsened(why()), Outcome::Failed(w) if w.reason.starts_with("ExecStopPost")));
        assert!(matches!(Outcome::Stopped { restart_after: true, ending: None }.worsened(why()), Outcome::Failed(_)));
        let kept = Outcome::Restart(Why::ended("main process exited with status 2".into(), Ending::Exited(2))).worsened(why());
        assert!(matches!(kept, Outcome::Restart(w) if w.reason.starts_with("main process")));
    }

    #[test]
    fn instances_come_from_their_template_which_is_no_unit() {
        let file = |text: &str, drop_ins: &[(&str, &str)]| (text.to_string(), drop_ins.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect::<Vec<_>>());
        let mut files: UnitFiles = [
            ("echo@.service".to_string(), file("[Service]\nExecStart=/bin/echo %i\n", &[("echo@.service.d/a.conf", "[Unit]\nDescription=%n\n")])),
            ("echo@own.service".to_string(), file("[Service]\nExecStart=/bin/echo mine\n", &[])),
            ("web.service".to_string(), file("[Service]\nExecStart=/bin/true\n", &[])),
        ]
        .into_iter()
        .collect();
        let templates = take_templates(&mut files);
        assert_eq!(templates.keys().collect::<Vec<_>>(), ["echo@.service"]);
        assert_eq!(files.keys().collect::<Vec<_>>(), ["echo@own.service", "web.service"]);
        let (text, drop_ins) = instance_files("echo@1.service", &templates).unwrap();
        let ins: Vec<(&str, &str)> = drop_ins.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
        let u = Unit::parse("echo@1.service", &text, &ins).unwrap();
        assert_eq!((u.exec_start[0].argv.clone(), u.description), (vec!["/bin/echo".to_string(), "1".to_string()], "echo@1.service".to_string()));
        assert!(instance_files("web@1.service", &templates).is_none());
        assert!(instance_files("web.service", &templates).is_none());
    }

    #[test]
    fn aliases_shadow_vendor_units_but_not_the_users() {
        let unit = |name: &str, install: &str| (name.to_string(), Unit::parse(name, &format!("[Service]\nExecStart=/bin/true\n[Install]\n{install}\n"), &[]).unwrap());
        let units: BTreeMap<String, Unit> = [
            unit("etcd-member.service", "Alias=etcd.service etcd2.service"),
            // Debian's own unit, shadowed: its alias counts no more.
            unit("etcd.service", "Alias=etcd2.service other.service"),
            unit("web.service", "WantedBy=multi-user.target"),
        ]
        .into_iter()
        .collect();
        let map = |pairs: &[(&str, &str)]| pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect::<BTreeMap<_, _>>();
        assert_eq!(aliases_of(&units, |_| false), map(&[("etcd.service", "etcd-member.service"), ("etcd2.service", "etcd-member.service")]));
        // The user's own etcd.service in /etc wins over the alias (and keeps its own).
        assert_eq!(aliases_of(&units, |name| name == "etcd.service"), map(&[("etcd2.service", "etcd-member.service"), ("other.service", "etcd.service")]));
    }

    #[test]
    fn early_units_go_first_and_after_before_order_the_rest() {
        let mut services: BTreeMap<String, Service> = [
            service("basalt-cloud-config.service", "DefaultDependencies=no\nBefore=network.service", State::Activating { pid: 1 }),
            service("network.service", "", State::Queued),
            service("sshd.service", "After=network.service", State::Queued),
            service("user.service", "", State::Queued),
            service("other-early.service", "DefaultDependencies=no", State::Queued),
            service("late-early.service", "DefaultDependencies=no\nAfter=user.service", State::Queued),
        ]
        .into_iter()
        .collect();
        let wait = |services: &BTreeMap<String, Service>, name: &str| waiting_for(name, services);
        // Units with default dependencies, even ones cloud-config just wrote,
        // wait for the early units; early units only for their own order.
        assert_eq!(wait(&services, "network.service").as_deref(), Some("basalt-cloud-config.service"));
        assert_eq!(wait(&services, "user.service").as_deref(), Some("basalt-cloud-config.service"));
        assert_eq!(wait(&services, "sshd.service").as_deref(), Some("network.service"));
        assert_eq!(wait(&services, "other-early.service"), None);
        assert_eq!(wait(&services, "late-early.service").as_deref(), Some("user.service"));
        services.get_mut("basalt-cloud-config.service").unwrap().state = State::Exited;
        services.get_mut("other-early.service").unwrap().state = State::Failed { reason: "x".into() };
        // An early unit ordered after a normal one does not hold that one
        // back, but still goes before the others.
        assert_eq!(wait(&services, "user.service"), None);
        assert_eq!(wait(&services, "network.service").as_deref(), Some("late-early.service"));
        services.get_mut("late-early.service").unwrap().state = State::Exited;
        assert_eq!(wait(&services, "network.service"), None);
        assert_eq!(wait(&services, "sshd.service").as_deref(), Some("network.service"));
        services.get_mut("network.service").unwrap().state = State::Active { pid: 2, since: now() };
        assert_eq!(wait(&services, "sshd.service"), None);
    }
}
