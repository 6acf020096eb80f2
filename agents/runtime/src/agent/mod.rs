//! The runtime agent (`basalt-runtime serve`, basalt-runtime.service): keeps the
//! declared containers (cloud-config's `/etc/basalt/containers/*.json`) and
//! those started with `basaltctl run` running under their restart policies,
//! answers the control socket, and keeps each container's record on ROOT so
//! that an agent restart or a reboot brings back what should run.

mod exec;
mod server;
mod supervisor;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::settings::Settings;
use crate::spec::{ContainerSpec, DECLARED_DIR};
use crate::store::{write_atomically, Store};
pub use supervisor::Supervised;

/// What is kept of a container across agent restarts:
/// `containers/NAME/container.json` under the store root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub spec: ContainerSpec,
    /// Whether it should be running (false after `stop`, or after it
    /// exited under a policy that does not restart it).
    pub desired_running: bool,
    /// The image the container was created from, kept from prune.
    pub image_digest: Option<Digest>,
}

pub struct Paths {
    pub store: PathBuf,
    pub declared: PathBuf,
    pub logs: PathBuf,
    pub socket: PathBuf,
    pub settings: PathBuf,
    /// Where the bridge network's namespaces are held.
    pub netns: PathBuf,
}

impl Default for Paths {
    fn default() -> Paths {
        Paths {
            store: crate::store::DEFAULT_ROOT.into(),
            declared: DECLARED_DIR.into(),
            logs: crate::logs::LOG_DIR.into(),
            socket: crate::api::SOCKET.into(),
            settings: crate::settings::SETTINGS_FILE.into(),
            netns: crate::network::NETNS_DIR.into(),
        }
    }
}

pub struct Agent {
    pub paths: Paths,
    /// Re-read when the file changes (cloud-config may write it after the
    /// agent started).
    settings: Mutex<(Settings, Option<SystemTime>)>,
    pub store: Mutex<Store>,
    pub containers: Mutex<BTreeMap<String, Arc<Supervised>>>,
    /// This program, which runs each container (`run --bundle`).
    pub runner: PathBuf,
    /// Declaration files already reported as bad, by modification time.
    bad_declarations: Mutex<BTreeMap<PathBuf, SystemTime>>,
    /// The bridge network (`network: bridge`).
    pub network: crate::network::Network,
}

/// One line to the agent's log (stdout is a pipe to init: flushed per line).
pub fn say(message: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{message}");
    let _ = out.flush();
}

impl Agent {
    pub fn settings(&self) -> Settings {
        self.settings.lock().unwrap().0.clone()
    }

    /// Loads the settings file again if it changed; a bad file keeps the old settings.
    pub fn reload_settings(&self) {
        let modified = std::fs::metadata(&self.paths.settings).and_then(|m| m.modified()).ok();
        let mut current = self.settings.lock().unwrap();
        if current.1 == modified {
            return;
        }
        current.1 = modified;
        match Settings::load(&self.paths.settings) {
            Ok(settings) => {
                current.0 = settings;
                say(&format!("{}: settings loaded", self.paths.settings.display()));
            }
            Err(e) => say(&format!("error: {e}; keeping the settings in use")),
        }
    }

    pub fn containers_dir(&self) -> PathBuf {
        self.paths.store.join("containers")
    }

    pub fn container_dir(&self, name: &str) -> PathBuf {
        self.containers_dir().join(name)
    }

    pub fn save_record(&self, record: &Record) -> Result<(), String> {
        let dir = self.container_dir(&record.spec.name);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        // Environment values may be secrets.
        let path = dir.join("container.json");
        write_atomically(&path, &serde_json::to_vec_pretty(record).expect("records serialise")).map_err(|e| e.to_string())?;
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600));
        Ok(())
    }

    fn load_records(&self) -> Vec<Record> {
        let mut records = Vec::new();
        for entry in std::fs::read_dir(self.containers_dir()).into_iter().flatten().flatten() {
            let path = entry.path().join("container.json");
            match std::fs::read(&path).map_err(|e| e.to_string()).and_then(|b| serde_json::from_slice::<Record>(&b).map_err(|e| e.to_string())) {
                Ok(record) => records.push(record),
                Err(e) => say(&format!("{}: ignored: {e}", path.display())),
            }
        }
        records
    }

    /// Leftovers of an agent that died with containers running: their
    /// processes are killed, their cgroups and overlay mounts removed.
    fn clean_leftovers(&self) {
        let basalt = Path::new(crate::linux::cgroup::ROOT).join("basalt");
        for entry in std::fs::read_dir(&basalt).into_iter().flatten().flatten() {
            if entry.path().is_dir() {
                let cgroup = crate::linux::cgroup::Cgroup { path: entry.path() };
                if cgroup.populated() {
                    say(&format!("{}: killing processes left from an earlier run", entry.file_name().to_string_lossy()));
                }
                cgroup.remove();
            }
        }
        for entry in std::fs::read_dir(self.containers_dir()).into_iter().flatten().flatten() {
            crate::bundle::BundleDir { dir: entry.path() }.unmount_rootfs();
        }
    }

    /// Adds a container and starts supervising it.
    pub fn adopt(self: &Arc<Self>, record: Record) {
        let name = record.spec.name.clone();
        let supervised = Supervised::start(self.clone(), record);
        self.containers.lock().unwrap().insert(name, supervised);
    }

    /// Brings the declared containers in line with their files: new ones
    /// are created, changed ones replaced, ones whose file is gone removed.
    pub fn reconcile_declared(self: &Arc<Self>) {
        let mut declared = BTreeMap::new();
        for entry in std::fs::read_dir(&self.paths.declared).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            let modified = entry.metadata().and_then(|m| m.modified()).unwrap_or(SystemTime::UNIX_EPOCH);
            let parsed = std::fs::read(&path).map_err(|e| e.to_string()).and_then(|bytes| ContainerSpec::parse(&bytes)).and_then(|spec| {
                let stem = path.file_stem().unwrap_or_default().to_string_lossy();
                if spec.name != stem {
                    return Err(format!("the file is named {stem}.json but declares {:?}", spec.name));
                }
                Ok(spec)
            });
            match parsed {
                Ok(spec) => {
                    self.bad_declarations.lock().unwrap().remove(&path);
                    declared.insert(spec.name.clone(), spec);
                }
                Err(e) => {
                    if self.bad_declarations.lock().unwrap().insert(path.clone(), modified) != Some(modified) {
                        say(&format!("{}: error: {e}; the container is not started", path.display()));
                    }
                }
            }
        }
        let current: Vec<(String, Arc<Supervised>)> = self.containers.lock().unwrap().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        for (name, supervised) in &current {
            let record = supervised.record();
            if record.spec.source != "cloud-config" {
                continue;
            }
            match declared.get(name) {
                Some(spec) if *spec == record.spec => {}
                Some(_) => {
                    say(&format!("{name}: its declaration changed; replacing the container"));
                    let _ = self.remove(name, true);
                }
                None => {
                    say(&format!("{name}: its declaration is gone; removing the container"));
                    let _ = self.remove(name, true);
                }
            }
        }
        for (name, spec) in declared {
            let existing = self.containers.lock().unwrap().get(&name).map(|s| s.record());
            match existing {
                Some(record) if record.spec.source != "cloud-config" => {
                    if self.bad_declarations.lock().unwrap().insert(PathBuf::from(&name), SystemTime::UNIX_EPOCH).is_none() {
                        say(&format!("{name}: declared in {}, but a container of that name was started with basaltctl run; remove it first", self.paths.declared.display()));
                    }
                }
                Some(_) => {}
                None => {
                    let record = Record { spec, desired_running: true, image_digest: None };
                    if let Err(e) = self.save_record(&record) {
                        say(&format!("{name}: {e}"));
                        continue;
                    }
                    self.adopt(record);
                }
            }
        }
    }

    /// Stops (if `force`) and removes a container with its writable layer and logs.
    pub fn remove(&self, name: &str, force: bool) -> Result<(), String> {
        let supervised = self.containers.lock().unwrap().get(name).cloned().ok_or_else(|| format!("no container {name:?}"))?;
        if !force && supervised.is_active() {
            return Err(format!("container {name} is {}; stop it first (or remove with -f)", supervised.status().state));
        }
        supervised.remove_and_wait();
        self.containers.lock().unwrap().remove(name);
        let dir = self.container_dir(name);
        crate::bundle::BundleDir { dir: dir.clone() }.unmount_rootfs();
        let _ = crate::store::remove_tree(&dir);
        crate::logs::Log::remove(&self.paths.logs, name);
        if let Err(e) = self.network.release(name) {
            say(&format!("{name}: releasing its address: {e}"));
        }
        Ok(())
    }

    /// Manifests that containers use, kept by prune and image removal.
    pub fn images_in_use(&self) -> Vec<(String, Option<Digest>, String)> {
        self.containers.lock().unwrap().values().map(|s| s.record()).map(|r| (r.spec.name, r.image_digest, r.spec.image)).collect()
    }
}

/// Container roots are overlay mounts; the module is not loaded at boot.
fn load_overlay() {
    let known = |_: ()| std::fs::read_to_string("/proc/filesystems").is_ok_and(|t| t.lines().any(|l| l.trim_end().ends_with("overlay")));
    if known(()) {
        return;
    }
    match std::process::Command::new("modprobe").arg("overlay").status() {
        Ok(status) if status.success() && known(()) => {}
        outcome => say(&format!("error: overlayfs is not available (modprobe overlay: {outcome:?}); containers cannot start")),
    }
}

/// `basalt-runtime serve`: runs until SIGTERM, then stops every container.
pub fn serve(paths: Paths) -> Result<(), String> {
    crate::linux::sys::sigmask(libc::SIG_BLOCK, &[libc::SIGTERM, libc::SIGINT, libc::SIGCHLD]);
    load_overlay();
    let modified = std::fs::metadata(&paths.settings).and_then(|m| m.modified()).ok();
    let settings = Mutex::new((Settings::load(&paths.settings)?, modified));
    let store = Store::open(&paths.store).map_err(|e| e.to_string())?;
    let runner = std::env::current_exe().map_err(|e| format!("finding this program: {e}"))?;
    let network = crate::network::Network::new(&paths.netns, &paths.store.join("network/addresses.json"));
    let agent = Arc::new(Agent { paths, settings, store: Mutex::new(store), containers: Mutex::new(BTreeMap::new()), runner, bad_declarations: Mutex::new(BTreeMap::new()), network });
    std::fs::create_dir_all(agent.containers_dir()).map_err(|e| e.to_string())?;
    agent.clean_leftovers();
    let records = agent.load_records();
    let names: Vec<String> = records.iter().map(|r| r.spec.name.clone()).collect();
    for note in agent.network.clean_leftovers(&names) {
        say(&note);
    }
    for record in records {
        agent.adopt(record);
    }
    agent.reconcile_declared();
    let listener = server::listen(&agent.paths.socket)?;
    {
        let agent = agent.clone();
        std::thread::spawn(move || server::accept(agent, listener));
    }
    {
        let agent = agent.clone();
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_secs(5));
            agent.reload_settings();
            agent.reconcile_declared();
        });
    }
    say(&format!("ready: {} containers, socket {}", agent.containers.lock().unwrap().len(), agent.paths.socket.display()));
    // SIGCHLD is blocked here, so children are reaped by their waiters only.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
    }
    loop {
        let signal = unsafe { libc::sigwaitinfo(&set, std::ptr::null_mut()) };
        if signal == libc::SIGTERM || signal == libc::SIGINT {
            break;
        }
    }
    say("stopping containers");
    let all: Vec<Arc<Supervised>> = agent.containers.lock().unwrap().values().cloned().collect();
    for supervised in &all {
        supervised.shutdown();
    }
    for supervised in &all {
        supervised.join();
    }
    let _ = std::fs::remove_file(&agent.paths.socket);
    say("stopped");
    Ok(())
}
