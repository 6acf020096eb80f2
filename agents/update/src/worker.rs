//! The agent's one worker thread: scheduled checks, `basaltctl update`
//! requests, installing, rebooting, and making sense of the boot it finds
//! itself in.

use crate::state::write_atomic;
use crate::state::{self, Staged, State};
use crate::system::{self, Machine};
use basalt_repo::meta::{Delta, Release, MAX_METADATA_BYTES};
use basalt_repo::payload::Reference;
use basalt_repo::Trusted;
use basalt_update::apply::{self, Expect};
use basalt_update::config::{self, Config, Strategy};
use basalt_update::decide::{decide, Decision, Inputs};
use basalt_update::fetch::Client;
use basalt_update::protocol::{Progress, Request, Response, Status};
use basalt_update::reboot;
use std::path::Path;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

pub struct Command {
    pub request: Request,
    pub reply: Sender<Response>,
}

#[derive(Clone)]
pub struct Shared(Arc<Mutex<Status>>);

impl Shared {
    pub fn new() -> Shared {
        Shared(Arc::new(Mutex::new(Status { stage: "starting".into(), ..Status::default() })))
    }
    pub fn status(&self) -> Status {
        self.0.lock().unwrap().clone()
    }
    fn set(&self, f: impl FnOnce(&mut Status)) {
        f(&mut self.0.lock().unwrap())
    }
}

fn log(msg: &str) {
    println!("{msg}");
}

fn now_text() -> String {
    basalt_repo::meta::format_time(SystemTime::now())
}

pub struct Worker {
    shared: Shared,
    machine: Machine,
    cfg: Config,
    state: State,
    client: Client,
    pending_reboot: bool,
    next_check: Instant,
    next_retry: Option<Instant>,
}

impl Worker {
    pub fn start(shared: Shared) -> Result<Worker, String> {
        let machine = Machine::read()?;
        let cfg = Config::load(&[config::IMAGE_CONF, config::MACHINE_CONF]);
        for w in &cfg.warnings {
            log(&format!("warning: {w}"));
        }
        // The first check comes 10-20% of an interval after boot: a fleet
        // booted together does not ask the server all at once.
        let state = State::load();
        let jitter = cfg.check_interval.mul_f64(0.1 + 0.1 * state.position());
        let mut w = Worker { shared, machine, cfg, state, client: Client::new(), pending_reboot: false, next_check: Instant::now() + jitter, next_retry: None };
        w.reconcile();
        if w.pending_reboot {
            // Staged before the agent restarted: carry on with the reboot.
            w.next_retry = Some(Instant::now());
        }
        if let Err(e) = w.state.save() {
            log(&format!("error: saving {}: {e}", state::path().display()));
        }
        w.publish("idle");
        match &w.cfg.server {
            Some(s) => {
                log(&format!("running {} {} from slot {}; channel {} at {s}; first check in {} s", w.machine.image, w.machine.version, w.machine.slot.letter(), w.cfg.channel, jitter.as_secs()))
            }
            None => log(&format!("running {} {} from slot {}; no update server configured (SERVER= in {})", w.machine.image, w.machine.version, w.machine.slot.letter(), config::MACHINE_CONF)),
        }
        Ok(w)
    }

    /// Makes sense of this boot against what was staged before it.
    fn reconcile(&mut self) {
        let Some(staged) = self.state.staged.clone() else { return };
        let m = &self.machine;
        if staged.status == "writing" {
            let msg = format!("the update to {} was interrupted while writing slot {}; the next check starts it again", staged.version, staged.slot);
            log(&msg);
            self.state.last_result = msg;
            self.state.staged = None;
        } else if staged.version == m.version && staged.slot == m.slot.letter() {
            let msg = format!("updated from {} to {}, running from slot {}", staged.from_version, m.version, staged.slot);
            log(&msg);
            self.state.last_result = msg;
            self.state.staged = None;
            self.state.rolled_back = None;
        } else if staged.boot_id == m.boot_id {
            // The agent restarted; the machine did not.
            self.pending_reboot = true;
        } else {
            let detail = system::esp()
                .ok()
                .and_then(|esp| basalt_slots::find(&esp.linux_dir(), &basalt_slots::uki_base(&m.image, &staged.version, m.slot.other())))
                .map(|(file, n)| format!("its UKI {file} has {} tries left after {} boot(s)", n.left.map_or("all".into(), |l| l.to_string()), n.done))
                .unwrap_or_else(|| "its UKI is gone".into());
            let msg =
                format!("{} did not pass its health checks ({detail}); the boot loader went back to {} on slot {}; {} will not be retried", staged.version, m.version, m.slot.letter(), staged.version);
            log(&format!("rollback: {msg}"));
            self.state.rolled_back = Some(msg.clone());
            self.state.last_result = msg;
            if !self.state.failed.contains(&staged.version) {
                self.state.failed.push(staged.version.clone());
            }
            self.state.staged = None;
        }
    }

    fn publish(&self, stage: &str) {
        let (m, c, s) = (&self.machine, &self.cfg, &self.state);
        self.shared.set(|st| {
            st.image = m.image.clone();
            st.version = m.version.clone();
            st.slot = m.slot.letter().into();
            st.channel = c.channel.clone();
            st.server = c.server.clone();
            st.strategy = c.strategy.name().into();
            st.window = c.window.map(|w| w.describe());
            st.stage = stage.into();
            st.staged = s.staged.as_ref().filter(|x| x.status == "staged").map(|x| x.version.clone());
            st.last_check = s.last_check.clone();
            st.last_result = s.last_result.clone();
            st.rolled_back = s.rolled_back.clone();
            st.failed = s.failed.clone();
            st.warnings = c.warnings.clone();
            if stage != "downloading" && stage != "verifying" {
                st.progress = None;
            }
        });
    }

    fn save(&self) {
        if let Err(e) = self.state.save() {
            log(&format!("error: saving the update state: {e}"));
        }
    }

    pub fn run(mut self, rx: Receiver<Command>) {
        loop {
            if self.state.lock_held && self.state.staged.is_none() && self.next_retry.is_none() {
                self.release_lock();
            }
            let mut deadline = self.next_check;
            if let Some(r) = self.next_retry {
                deadline = deadline.min(r);
            }
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(cmd) => self.handle(cmd),
                Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) => {
                    let now = Instant::now();
                    if self.next_retry.is_some_and(|r| r <= now) {
                        self.next_retry = None;
                        if self.pending_reboot {
                            self.try_reboot();
                        }
                    }
                    if self.next_check <= now {
                        self.next_check = now + self.cfg.check_interval;
                        if self.cfg.server.is_some() && !self.pending_reboot {
                            self.update(false, false);
                        }
                    }
                }
            }
        }
    }

    fn handle(&mut self, cmd: Command) {
        let respond = |ok: bool, message: String, shared: &Shared| {
            let _ = cmd.reply.send(Response { ok, message, status: Some(shared.status()) });
        };
        match cmd.request {
            Request::Status => respond(true, String::new(), &self.shared),
            Request::Check => match self.check(false, false) {
                Ok(d) => {
                    let text = describe(&d);
                    self.state.last_result = text.clone();
                    self.save();
                    self.publish("idle");
                    respond(true, text, &self.shared)
                }
                Err(e) => {
                    self.fail(&e);
                    respond(false, e, &self.shared)
                }
            },
            Request::Apply { allow_downgrade } => {
                if self.pending_reboot {
                    return respond(true, format!("{} is staged; rebooting as the {} strategy allows", self.state.staged.as_ref().map_or("", |s| &s.version), self.cfg.strategy.name()), &self.shared);
                }
                match self.check(true, allow_downgrade) {
                    Ok(Decision::Update { release, delta }) => {
                        respond(true, format!("installing {} to slot {}", release.version, self.machine.slot.other().letter()), &self.shared);
                        self.install_and_reboot(&release, delta.as_ref());
                    }
                    Ok(d) => {
                        let text = describe(&d);
                        self.state.last_result = text.clone();
                        self.save();
                        self.publish("idle");
                        respond(!matches!(d, Decision::Refused { .. }), text, &self.shared)
                    }
                    Err(e) => {
                        self.fail(&e);
                        respond(false, e, &self.shared)
                    }
                }
            }
            Request::Rollback { no_reboot } => match self.rollback() {
                Ok(msg) => {
                    respond(true, msg, &self.shared);
                    if !no_reboot {
                        self.reboot_now();
                    }
                }
                Err(e) => respond(false, e, &self.shared),
            },
        }
    }

    fn fail(&mut self, e: &str) {
        log(&format!("error: {e}"));
        self.state.last_result = e.to_string();
        self.save();
        self.publish("failed");
    }

    /// A scheduled check: install what the wave allows.
    fn update(&mut self, ignore_rollout: bool, allow_downgrade: bool) {
        match self.check(ignore_rollout, allow_downgrade) {
            Ok(Decision::Update { release, delta }) => self.install_and_reboot(&release, delta.as_ref()),
            Ok(d) => {
                self.state.last_result = describe(&d);
                log(&self.state.last_result);
                self.save();
                self.publish("idle");
            }
            Err(e) => self.fail(&e),
        }
    }

    fn trusted(&self) -> Result<Trusted, String> {
        let image = std::fs::read(config::IMAGE_ROOT).map_err(|e| format!("{}: {e}: this image has no update root of trust", config::IMAGE_ROOT))?;
        let image = Trusted::bootstrap(&image).map_err(|e| format!("{}: {e}", config::IMAGE_ROOT))?;
        let kept = Path::new(state::DIR).join("root.json");
        match std::fs::read(&kept).ok().and_then(|b| Trusted::bootstrap(&b).ok()) {
            Some(k) if k.root().version > image.root().version => Ok(k),
            _ => Ok(image),
        }
    }

    /// Fetches the metadata (walking root rotations) and decides.
    fn check(&mut self, ignore_rollout: bool, allow_downgrade: bool) -> Result<Decision, String> {
        let server = self.cfg.server.clone().ok_or_else(|| format!("no update server configured (SERVER= in {})", config::MACHINE_CONF))?;
        self.publish("checking");
        let mut trusted = self.trusted()?;
        let before = trusted.root().version;
        for _ in 0..1000 {
            let next = trusted.root().version + 1;
            let url = format!("{server}/roots/{next}.root.json");
            let Some(bytes) = self.client.small(&url, MAX_METADATA_BYTES)? else { break };
            trusted.rotate(&bytes).map_err(|e| format!("{url}: {e}"))?;
            log(&format!("trusting root v{next} of the repository"));
        }
        if trusted.root().version != before {
            write_atomic(&Path::new(state::DIR).join("root.json"), trusted.root_envelope())?;
        }
        let now = SystemTime::now();
        trusted.check_expiry(now).map_err(|e| e.to_string())?;
        let url = format!("{server}/channels/{}.json", self.cfg.channel);
        let bytes = self.client.small(&url, MAX_METADATA_BYTES)?.ok_or_else(|| format!("{url}: the repository has no channel {}", self.cfg.channel))?;
        let seen = self.state.channel_seen.get(&self.cfg.channel).copied().unwrap_or(0);
        let channel = trusted.channel(&bytes, &self.cfg.channel, now, seen).map_err(|e| format!("{url}: {e}"))?;
        self.state.channel_seen.insert(self.cfg.channel.clone(), channel.version);
        self.state.last_check = Some(now_text());
        self.shared.set(|s| s.available = Some(channel.release.version.clone()));
        let staged = self.state.staged.as_ref().filter(|s| s.status == "staged").map(|s| s.version.clone());
        let d = decide(
            &channel,
            &Inputs {
                image_name: &self.machine.image,
                running: &self.machine.version,
                failed: &self.state.failed,
                staged: staged.as_deref(),
                allow_downgrade,
                ignore_rollout,
                position: self.state.position(),
                now,
            },
        );
        self.save();
        Ok(d)
    }

    fn install_and_reboot(&mut self, release: &Release, delta: Option<&Delta>) {
        match self.install(release, delta) {
            Ok(()) => {
                self.pending_reboot = true;
                self.try_reboot();
            }
            Err(e) => {
                self.state.staged = None;
                self.fail(&format!("update to {} failed: {e}", release.version));
            }
        }
    }

    fn install(&mut self, release: &Release, delta: Option<&Delta>) -> Result<(), String> {
        if let Some(d) = delta {
            match self.install_from(release, Some(d)) {
                Ok(()) => return Ok(()),
                Err(e) => log(&format!("the delta from {} did not apply ({e}); taking the full payload", d.from)),
            }
        }
        self.install_from(release, None)
    }

    fn install_from(&mut self, release: &Release, delta: Option<&Delta>) -> Result<(), String> {
        let server = self.cfg.server.clone().ok_or("no update server")?;
        let target = self.machine.slot.other();
        let dev = system::slot_device(target)?;
        let file = delta.map_or(&release.payload, |d| &d.file);
        // The reference of a delta: the running slot and the running UKI's kernel and initramfs.
        let parts = match delta {
            Some(_) => {
                let usr = apply::read_slot(&system::slot_device(self.machine.slot)?, self.machine.usr_bytes())?;
                let esp = system::esp()?;
                let (current, _) = basalt_slots::find(&esp.linux_dir(), &self.machine.uki_base()).ok_or("the running UKI is not on the ESP")?;
                let uki = std::fs::read(esp.linux_dir().join(&current)).map_err(|e| format!("reading {current}: {e}"))?;
                let (kernel, initrd) = apply::uki_kernel_initrd(&uki)?;
                Some((usr, kernel, initrd))
            }
            None => None,
        };
        let reference = parts.as_ref().map(|(usr, kernel, initrd)| Reference { version: &self.machine.version, usr, kernel, initrd });

        // The slot is marked as being written, and its UKIs leave the ESP,
        // before its first byte changes.
        self.state.staged = Some(Staged {
            version: release.version.clone(),
            slot: target.letter().into(),
            status: "writing".into(),
            boot_id: self.machine.boot_id.clone(),
            from_version: self.machine.version.clone(),
        });
        self.save();
        {
            let esp = system::esp()?;
            for f in basalt_slots::remove_slot(&esp.linux_dir(), target)? {
                log(&format!("removed {f} from the ESP: slot {} is being rewritten", target.letter()));
            }
        }
        let url = format!("{server}/{}", file.path);
        log(&format!("installing {} to slot {} from {url} ({:.1} MiB{})", release.version, target.letter(), file.size as f64 / 1048576.0, if delta.is_some() { ", delta" } else { "" }));
        self.publish("downloading");
        let stream = self.client.stream(&url, file.size)?;
        let shared = self.shared.clone();
        let mut last_log = Instant::now();
        let mut progress = |stage: &str, done: u64, total: u64, secs: f64| {
            let rate = if secs > 0.0 { done as f64 / secs } else { 0.0 };
            shared.set(|s| {
                s.stage = stage.into();
                s.progress = Some(Progress { stage: stage.into(), done, total, rate });
            });
            if last_log.elapsed() >= Duration::from_secs(2) || done == total {
                last_log = Instant::now();
                log(&format!("{stage}: {:.1} of {:.1} MiB, {:.1} MiB/s", done as f64 / 1048576.0, total as f64 / 1048576.0, rate / 1048576.0));
            }
        };
        let expect = Expect { name: &release.name, version: &release.version, usr_root_hash: &release.usr_root_hash, file };
        let written = apply::write_slot(stream, &expect, target, &dev, reference.as_ref(), &mut progress)?;
        log(&format!("slot {} verified: verity root {}", target.letter(), release.usr_root_hash));

        // Valid: the loader may now boot it, a few times at most until blessed.
        let name = format!("{}+{}.efi", basalt_slots::uki_base(&self.machine.image, &release.version, target), self.cfg.tries);
        {
            self.publish("installing");
            let esp = system::esp()?;
            basalt_slots::install(&esp.linux_dir(), &name, &written.uki)?;
        }
        log(&format!("installed {name} on the ESP"));
        if let Some(s) = self.state.staged.as_mut() {
            s.status = "staged".into();
        }
        self.state.last_result = format!("{} written to slot {} and verified; reboot to use it", release.version, target.letter());
        self.save();
        self.publish("staged");
        Ok(())
    }

    fn try_reboot(&mut self) {
        if !self.pending_reboot {
            return;
        }
        let now = SystemTime::now();
        if self.cfg.strategy == Strategy::Off {
            log("update staged; reboot strategy is off: reboot to finish");
            self.publish("staged");
            return;
        }
        if let Some(w) = self.cfg.window {
            if !w.contains(now) {
                let wait = w.wait(now);
                log(&format!("update staged; reboot window {} opens in {} s", w.describe(), wait.as_secs()));
                self.next_retry = Some(Instant::now() + wait.min(Duration::from_secs(300)));
                self.publish("waiting-for-window");
                return;
            }
        }
        if let Some(url) = self.cfg.lock_url() {
            match reboot::pre_reboot(&self.client, &url, &self.machine.machine_id) {
                Ok(true) => {
                    self.state.lock_held = true;
                    self.save();
                }
                Ok(false) => {
                    log(&format!("waiting for a reboot slot from {url}"));
                    self.next_retry = Some(Instant::now() + Duration::from_secs(30));
                    self.publish("waiting-for-lock");
                    return;
                }
                Err(e) if self.cfg.strategy == Strategy::BestEffort => log(&format!("no reboot lock ({e}); best-effort reboots anyway")),
                Err(e) => {
                    log(&format!("reboot lock: {e}; trying again in 30 s"));
                    self.next_retry = Some(Instant::now() + Duration::from_secs(30));
                    self.publish("waiting-for-lock");
                    return;
                }
            }
        }
        self.reboot_now();
    }

    fn reboot_now(&mut self) {
        self.publish("rebooting");
        log("rebooting into the new slot");
        if let Err(e) = basalt_control::call(&basalt_control::Request::Reboot) {
            self.fail(&format!("asking init to reboot: {e}"));
        }
    }

    fn release_lock(&mut self) {
        let Some(url) = self.cfg.lock_url() else {
            self.state.lock_held = false;
            return self.save();
        };
        match reboot::steady_state(&self.client, &url, &self.machine.machine_id) {
            Ok(()) => {
                log(&format!("gave the reboot slot back to {url}"));
                self.state.lock_held = false;
                self.save();
            }
            Err(e) => {
                log(&format!("giving the reboot slot back: {e}; trying again in 30 s"));
                self.next_retry = Some(Instant::now() + Duration::from_secs(30));
            }
        }
    }

    /// Makes the other slot the one the loader starts: the running UKI
    /// gets no tries left, which sorts it last.
    fn rollback(&mut self) -> Result<String, String> {
        let m = self.machine.clone();
        let other = m.slot.other();
        let esp = system::esp()?;
        let dir = esp.linux_dir();
        let (file, name) = system::ukis_of(&dir, other).into_iter().next().ok_or_else(|| format!("slot {} has no UKI on the ESP: there is nothing to go back to", other.letter()))?;
        if name.left == Some(0) {
            return Err(format!("slot {}'s UKI {file} has no tries left (it failed before); not going back to it", other.letter()));
        }
        let to_version = name.version().unwrap_or("?").to_string();
        let (current, mut cur) = basalt_slots::find(&dir, &m.uki_base()).ok_or("the running UKI is not on the ESP")?;
        cur.left = Some(0);
        basalt_slots::rename(&dir, &current, &cur.file_name())?;
        drop(esp);
        let msg = format!("rolled back on request from {} (slot {}) to {to_version} (slot {})", m.version, m.slot.letter(), other.letter());
        log(&msg);
        if !self.state.failed.contains(&m.version) {
            self.state.failed.push(m.version.clone());
        }
        self.state.rolled_back = Some(msg.clone());
        self.state.last_result = msg.clone();
        self.state.staged = None;
        self.save();
        self.publish("idle");
        Ok(msg)
    }
}

fn describe(d: &Decision) -> String {
    match d {
        Decision::UpToDate { version } => format!("up to date: {version} is the newest"),
        Decision::Update { release, delta } => format!("update available: {}{}", release.version, if delta.is_some() { " (delta)" } else { "" }),
        Decision::Staged { version } => format!("{version} is staged; waiting for the reboot"),
        Decision::Wait { version, until } => format!("{version} is rolling out; this machine's wave starts {}", until.map(basalt_repo::meta::format_time).unwrap_or_else(|| "later".into())),
        Decision::Refused { reason } => format!("refused: {reason}"),
    }
}
