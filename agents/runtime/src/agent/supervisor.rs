//! One thread per container: pull its image if the store lacks it, mount
//! its overlay, write its config, run it (`basalt-runtime run --bundle`)
//! with its output in its log, and restart it under its policy: `always`,
//! `on-failure` (exit code not 0) or `never`, after 100 ms doubling for each
//! failure in a row up to 60 s; a run of 10 s or more starts the doubling
//! afresh (the supervisor's rule for services). Stopping sends SIGTERM, and
//! after the stop timeout kills everything in the container's cgroup.

use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{say, Agent, Record};
use crate::api::ContainerStatus;
use crate::bundle::{self, BundleDir};
use crate::linux::cgroup::{self, Cgroup};
use crate::logs::Log;
use crate::reference::Reference;

const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(60);
const STABLE_RUN: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Command_ {
    Start,
    Stop,
    Remove,
    /// The agent is stopping: stop the container, keep its desired state.
    Shutdown,
}

pub struct Supervised {
    record: Mutex<Record>,
    status: Mutex<ContainerStatus>,
    commands: Mutex<Sender<Command_>>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

enum Outcome {
    Exited {
        code: i32,
        ran: Duration,
    },
    Failed(String),
    /// The image could not be had (the network or registry may not be up
    /// yet): retried whatever the policy, which is about the container's exits.
    PullFailed(String),
    Stopped,
    Removed,
    Shutdown,
}

impl Supervised {
    pub fn start(agent: Arc<Agent>, record: Record) -> Arc<Supervised> {
        let (sender, receiver) = mpsc::channel();
        let status = ContainerStatus {
            name: record.spec.name.clone(),
            image: record.spec.image.clone(),
            source: record.spec.source.clone(),
            state: if record.desired_running { "starting".into() } else { "stopped".into() },
            pid: None,
            restarts: 0,
            exit_code: None,
            oom_kills: 0,
            detail: String::new(),
            address: None,
            granted: String::new(),
        };
        let supervised = Arc::new(Supervised { record: Mutex::new(record), status: Mutex::new(status), commands: Mutex::new(sender), thread: Mutex::new(None) });
        let worker = supervised.clone();
        let thread = std::thread::spawn(move || worker.supervise(&agent, receiver));
        *supervised.thread.lock().unwrap() = Some(thread);
        supervised
    }

    pub fn record(&self) -> Record {
        self.record.lock().unwrap().clone()
    }

    pub fn status(&self) -> ContainerStatus {
        let mut status = self.status.lock().unwrap().clone();
        status.granted = self.record().spec.grants();
        status
    }

    pub fn is_active(&self) -> bool {
        matches!(self.status().state.as_str(), "pulling" | "starting" | "running" | "stopping" | "backoff")
    }

    fn send(&self, command: Command_) {
        let _ = self.commands.lock().unwrap().send(command);
    }

    pub fn start_again(&self) {
        self.send(Command_::Start);
    }

    /// Stops the container and waits until it is down (or `limit` passes).
    pub fn stop_and_wait(&self, limit: Duration) -> bool {
        self.send(Command_::Stop);
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if !self.is_active() && !self.record().desired_running {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    pub fn remove_and_wait(&self) {
        self.send(Command_::Remove);
        self.join();
    }

    pub fn shutdown(&self) {
        self.send(Command_::Shutdown);
    }

    pub fn join(&self) {
        if let Some(thread) = self.thread.lock().unwrap().take() {
            let _ = thread.join();
        }
    }

    fn set_state(&self, state: &str, detail: impl Into<String>) {
        let mut status = self.status.lock().unwrap();
        status.state = state.into();
        status.detail = detail.into();
    }

    fn set_desired(&self, agent: &Agent, running: bool) {
        let record = {
            let mut record = self.record.lock().unwrap();
            record.desired_running = running;
            record.clone()
        };
        if let Err(e) = agent.save_record(&record) {
            say(&format!("{}: keeping its state: {e}", record.spec.name));
        }
    }

    fn supervise(&self, agent: &Agent, commands: Receiver<Command_>) {
        let name = self.record().spec.name;
        let mut backoff = FIRST_BACKOFF;
        loop {
            if !self.record().desired_running {
                let exited = self.status().exit_code.is_some() && self.status().state != "stopped";
                if !exited {
                    self.set_state("stopped", "");
                }
                match commands.recv() {
                    Ok(Command_::Start) => {
                        self.set_desired(agent, true);
                        backoff = FIRST_BACKOFF;
                        continue;
                    }
                    Ok(Command_::Stop) => continue,
                    Ok(Command_::Remove) | Ok(Command_::Shutdown) | Err(_) => return,
                }
            }
            let outcome = self.run_once(agent, &commands);
            let restart = match &outcome {
                Outcome::Removed | Outcome::Shutdown => return,
                Outcome::Stopped => {
                    self.set_desired(agent, false);
                    self.set_state("stopped", "stopped on request");
                    continue;
                }
                Outcome::Exited { code, ran } => {
                    if *ran >= STABLE_RUN {
                        backoff = FIRST_BACKOFF;
                    }
                    match self.record().spec.restart.as_str() {
                        "always" => true,
                        "on-failure" => *code != 0,
                        _ => false,
                    }
                }
                Outcome::PullFailed(message) => {
                    say(&format!("{name}: {message}"));
                    self.status.lock().unwrap().detail = message.clone();
                    true
                }
                Outcome::Failed(message) => {
                    say(&format!("{name}: {message}"));
                    let mut status = self.status.lock().unwrap();
                    status.exit_code = Some(crate::linux::process::SETUP_FAILED);
                    status.detail = message.clone();
                    drop(status);
                    self.record().spec.restart != "never"
                }
            };
            // Like Docker's RestartCount: only a container that ran is
            // restarted; retrying a pull or a setup that failed is not.
            let ran = matches!(outcome, Outcome::Exited { .. });
            let detail = self.status().detail;
            if !restart {
                self.set_desired(agent, false);
                let state = if matches!(outcome, Outcome::Failed(_)) { "failed" } else { "exited" };
                self.set_state(state, detail);
                continue;
            }
            self.set_state("backoff", format!("{detail}; restarting in {:.1} s", backoff.as_secs_f64()));
            say(&format!("{name}: restarting in {:.1} s", backoff.as_secs_f64()));
            match commands.recv_timeout(backoff) {
                Ok(Command_::Stop) => {
                    self.set_desired(agent, false);
                    continue;
                }
                Ok(Command_::Remove) | Ok(Command_::Shutdown) | Err(RecvTimeoutError::Disconnected) => return,
                Ok(Command_::Start) | Err(RecvTimeoutError::Timeout) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
            if ran {
                self.status.lock().unwrap().restarts += 1;
            }
        }
    }

    /// Gets the image, prepares the bundle and runs the container once.
    fn run_once(&self, agent: &Agent, commands: &Receiver<Command_>) -> Outcome {
        let record = self.record();
        let spec = &record.spec;
        let bundle = BundleDir { dir: agent.container_dir(&spec.name) };
        let reference = match Reference::parse(&spec.image) {
            Ok(r) => r.to_string(),
            Err(e) => return Outcome::Failed(e.to_string()),
        };
        let image = {
            let store = agent.store.lock().unwrap();
            match store.image(&reference) {
                Ok(Some(image)) => image,
                Ok(None) => {
                    self.set_state("pulling", reference.clone());
                    say(&format!("{}: pulling {reference}", spec.name));
                    match crate::pull::pull(&store, &agent.settings(), &reference) {
                        Ok((image, report)) => {
                            say(&format!("{}: pulled {} ({} bytes in {:.1} s)", spec.name, image.manifest_digest, report.downloaded, report.seconds));
                            image
                        }
                        Err(e) => return Outcome::PullFailed(format!("pulling {reference}: {e}")),
                    }
                }
                Err(e) => return Outcome::Failed(e.to_string()),
            }
        };
        if record.image_digest.as_ref() != Some(&image.manifest_digest) {
            // A new image: the old writable layer belongs to the old one.
            if record.image_digest.is_some() {
                let _ = crate::store::remove_tree(&bundle.dir.join("upper"));
                let _ = crate::store::remove_tree(&bundle.dir.join("work"));
            }
            self.record.lock().unwrap().image_digest = Some(image.manifest_digest.clone());
            let _ = agent.save_record(&self.record());
        }
        self.set_state("starting", "");
        if !spec.ports.is_empty() && spec.network != "bridge" {
            say(&format!("{}: ports are only published with network bridge; with {} they are ignored (with host the container's ports are the machine's)", spec.name, spec.network));
        }
        let layers: Result<Vec<_>, String> = {
            let store = agent.store.lock().unwrap();
            image.config.rootfs.diff_ids.iter().map(|d| if spec.remapped() { store.shifted_layer(d).map_err(|e| e.to_string()) } else { Ok(store.layer_path(d)) }).collect()
        };
        let layers = match layers {
            Ok(layers) => layers,
            Err(e) => return Outcome::Failed(format!("userns: shifting the image's layers: {e}")),
        };
        if let Err(e) = bundle.mount_rootfs(&layers, spec.remapped()) {
            return Outcome::Failed(e);
        }
        let bridge = (spec.network == "bridge").then(|| bundle::BridgeFiles::new(agent.network.namespace_path(&spec.name), &bundle));
        let config = match bundle::oci_config(spec, &image.config, &bundle.rootfs(), bridge.as_ref()) {
            Ok(config) => config,
            Err(e) => {
                bundle.unmount_rootfs();
                return Outcome::Failed(e);
            }
        };
        let written = serde_json::to_vec_pretty(&config).map_err(|e| e.to_string()).and_then(|b| crate::store::write_atomically(&bundle.dir.join("config.json"), &b).map_err(|e| e.to_string()));
        if let Err(e) = written {
            bundle.unmount_rootfs();
            return Outcome::Failed(e);
        }
        if let Some(files) = &bridge {
            let attached = agent.network.attach(&spec.name, &spec.ports, &agent.settings().network).and_then(|attachment| {
                let resolv = crate::network::resolv_conf(&std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default());
                std::fs::write(&files.hosts, crate::network::hosts_file(&spec.name, attachment.address))
                    .and_then(|_| std::fs::write(&files.resolv_conf, resolv))
                    .map_err(|e| format!("writing the container's /etc files: {e}"))
                    .map(|_| attachment)
            });
            match attached {
                Ok(attachment) => {
                    self.status.lock().unwrap().address = Some(attachment.address.to_string());
                    let published: Vec<String> = spec.ports.iter().map(|p| format!("{} -> {}:{}", crate::network::ports::describe(p), attachment.address, p.container_port)).collect();
                    say(&format!(
                        "{}: address {} on {}{}",
                        spec.name,
                        attachment.address,
                        attachment.host_interface,
                        if published.is_empty() { String::new() } else { format!(", publishing {}", published.join(", ")) }
                    ));
                }
                Err(e) => {
                    agent.network.detach(&spec.name);
                    bundle.unmount_rootfs();
                    return Outcome::Failed(e);
                }
            }
        }
        let _ = std::fs::remove_file(bundle.dir.join(crate::linux::process::EXIT_FILE));
        let log = Log::open(&agent.paths.logs, &spec.name);
        let spawned = Command::new(&agent.runner).arg("run").arg("--bundle").arg(&bundle.dir).arg(&spec.name).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn();
        let mut child = match spawned {
            Ok(child) => child,
            Err(e) => {
                if bridge.is_some() {
                    agent.network.detach(&spec.name);
                    self.status.lock().unwrap().address = None;
                }
                bundle.unmount_rootfs();
                return Outcome::Failed(format!("starting {}: {e}", agent.runner.display()));
            }
        };
        let pumps = [Log::pump(log.clone(), child.stdout.take().unwrap()), Log::pump(log.clone(), child.stderr.take().unwrap())];
        let started = Instant::now();
        self.set_state("running", "");
        say(&format!("{}: started", spec.name));
        let (ended_by, status) = self.wait(agent, &mut child, commands);
        for pump in pumps {
            let _ = pump.join();
        }
        if bridge.is_some() {
            agent.network.detach(&spec.name);
            self.status.lock().unwrap().address = None;
        }
        bundle.unmount_rootfs();
        let ran = started.elapsed();
        let recorded = std::fs::read_to_string(bundle.dir.join(crate::linux::process::EXIT_FILE)).unwrap_or_default();
        let mut fields = recorded.trim_end().splitn(3, ' ');
        let code = fields.next().and_then(|c| c.parse().ok()).unwrap_or(status);
        let oom_kills = fields.next().and_then(|n| n.parse().ok()).unwrap_or(0u64);
        let setup_error = fields.next().filter(|e| !e.is_empty()).map(str::to_string);
        let detail = match (code, oom_kills) {
            (_, n) if n > 0 => format!("exited {code}: out of memory (OOM-killed) after {:.1} s", ran.as_secs_f64()),
            (c, _) if c > 128 && c < 160 => format!("exited {code} (signal {}) after {:.1} s", c - 128, ran.as_secs_f64()),
            _ => format!("exited {code} after {:.1} s", ran.as_secs_f64()),
        };
        log.lock().unwrap().write_line(format!("basalt-runtime: {detail}").as_bytes());
        say(&format!("{}: {detail}", spec.name));
        {
            let mut status = self.status.lock().unwrap();
            status.pid = None;
            status.exit_code = Some(code);
            status.oom_kills += oom_kills;
            status.detail = detail;
        }
        match ended_by {
            _ if setup_error.is_some() && ended_by.is_none() => Outcome::Failed(format!("could not start: {}", setup_error.unwrap_or_default())),
            Some(Command_::Remove) => Outcome::Removed,
            Some(Command_::Shutdown) => Outcome::Shutdown,
            Some(Command_::Stop) => Outcome::Stopped,
            _ => Outcome::Exited { code, ran },
        }
    }

    /// Waits for the runner; a stop, removal or shutdown ends the container.
    fn wait(&self, agent: &Agent, child: &mut Child, commands: &Receiver<Command_>) -> (Option<Command_>, i32) {
        let mut ended_by = None;
        let mut kill_at: Option<Instant> = None;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                use std::os::unix::process::ExitStatusExt;
                return (ended_by, status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0)));
            }
            if self.status().pid.is_none() {
                let pid = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", child.id())).ok().and_then(|t| t.split_whitespace().next().and_then(|p| p.parse().ok()));
                self.status.lock().unwrap().pid = pid;
            }
            if kill_at.is_some_and(|at| Instant::now() >= at) {
                // Everything in the container's cgroup; the runner then exits.
                let name = self.record().spec.name;
                if let Ok(path) = cgroup::resolve(&format!("/basalt/{name}")) {
                    Cgroup { path }.kill();
                }
                kill_at = Some(Instant::now() + Duration::from_secs(5));
            }
            match commands.recv_timeout(Duration::from_millis(50)) {
                Ok(Command_::Start) | Err(RecvTimeoutError::Timeout) => {}
                Ok(command) => {
                    if ended_by.is_none() {
                        ended_by = Some(command);
                        self.set_state("stopping", "");
                        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
                        kill_at = Some(Instant::now() + Duration::from_secs(agent.settings().stop_timeout_seconds));
                    } else if command == Command_::Remove || command == Command_::Shutdown {
                        ended_by = Some(command);
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    if ended_by.is_none() {
                        ended_by = Some(Command_::Shutdown);
                        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
                        kill_at = Some(Instant::now() + Duration::from_secs(agent.settings().stop_timeout_seconds));
                    }
                }
            }
        }
    }
}
