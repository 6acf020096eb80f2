//! Settings: `/usr/share/basalt/update.conf` (the image's defaults, from the
//! spec's `update:`), then `/etc/basalt/update.conf` (the machine's, as
//! cloud-config writes it), `KEY=VALUE` per line as CoreOS's update.conf.

use std::time::Duration;

pub const IMAGE_CONF: &str = "/usr/share/basalt/update.conf";
pub const MACHINE_CONF: &str = "/etc/basalt/update.conf";
/// The root of trust the image ships; rotations are kept on ROOT.
pub const IMAGE_ROOT: &str = "/usr/share/basalt/update/root.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Stage the update; a person reboots.
    Off,
    /// Reboot as soon as the update is staged (inside the window).
    Reboot,
    /// Take the cluster's reboot lock in the node's store (FleetLock on 127.0.0.1:2379).
    Lock,
    /// FleetLock against FLEETLOCK_URL (e.g. Zincati's and Typhoon's lock servers).
    FleetLock,
    /// The lock when the store answers, else a plain reboot.
    BestEffort,
}

impl Strategy {
    pub fn parse(s: &str) -> Option<Strategy> {
        Some(match s {
            "off" => Strategy::Off,
            "reboot" => Strategy::Reboot,
            "lock" | "etcd-lock" => Strategy::Lock,
            "fleetlock" => Strategy::FleetLock,
            "best-effort" => Strategy::BestEffort,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Strategy::Off => "off",
            Strategy::Reboot => "reboot",
            Strategy::Lock => "lock",
            Strategy::FleetLock => "fleetlock",
            Strategy::BestEffort => "best-effort",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Base URL of the repository.
    pub server: Option<String>,
    pub channel: String,
    pub strategy: Strategy,
    pub window: Option<crate::window::Window>,
    pub fleetlock_url: Option<String>,
    pub check_interval: Duration,
    /// Tries a new slot gets before the loader gives up on it.
    pub tries: u32,
    /// Problems found while reading, each naming file, line and key.
    pub warnings: Vec<String>,
}

impl Default for Config {
    fn default() -> Config {
        Config { server: None, channel: "stable".into(), strategy: Strategy::Reboot, window: None, fleetlock_url: None, check_interval: Duration::from_secs(3600), tries: 3, warnings: Vec::new() }
    }
}

pub fn parse_duration(s: &str) -> Option<Duration> {
    humantime::parse_duration(s.trim()).ok()
}

impl Config {
    /// Reads the files that exist, later ones overriding earlier ones.
    pub fn load(files: &[&str]) -> Config {
        let mut c = Config::default();
        for f in files {
            if let Ok(text) = std::fs::read_to_string(f) {
                c.apply(f, &text);
            }
        }
        c
    }

    pub fn apply(&mut self, file: &str, text: &str) {
        let (mut start, mut length) = (None, None);
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = format!("{file}:{}", i + 1);
            let Some((key, value)) = line.split_once('=') else {
                self.warnings.push(format!("{at}: expected KEY=VALUE, found {line:?}"));
                continue;
            };
            let (key, value) = (key.trim(), value.trim().trim_matches('"'));
            let mut bad = |what: &str| self.warnings.push(format!("{at}: {key}={value:?}: {what}"));
            match key {
                "SERVER" => {
                    if value.starts_with("http://") || value.starts_with("https://") {
                        self.server = Some(value.trim_end_matches('/').to_string());
                    } else {
                        bad("not an http:// or https:// URL")
                    }
                }
                "CHANNEL" | "GROUP" => match basalt_repo::meta::check_channel_name(value) {
                    Ok(()) => self.channel = value.to_string(),
                    Err(e) => bad(&e),
                },
                "REBOOT_STRATEGY" => match Strategy::parse(value) {
                    Some(s) => self.strategy = s,
                    None => bad("expected off, reboot, lock (etcd-lock), fleetlock or best-effort"),
                },
                "REBOOT_WINDOW_START" => start = Some((at.clone(), value.to_string())),
                "REBOOT_WINDOW_LENGTH" => length = Some((at.clone(), value.to_string())),
                "FLEETLOCK_URL" => {
                    if value.starts_with("http://") || value.starts_with("https://") {
                        self.fleetlock_url = Some(value.trim_end_matches('/').to_string());
                    } else {
                        bad("not an http:// or https:// URL")
                    }
                }
                "CHECK_INTERVAL" => match parse_duration(value).filter(|d| *d >= Duration::from_secs(10)) {
                    Some(d) => self.check_interval = d,
                    None => bad("expected a duration of at least 10s, such as 30m or 1h"),
                },
                "TRIES" => match value.parse::<u32>() {
                    Ok(n) if (1..=9).contains(&n) => self.tries = n,
                    _ => bad("expected 1 to 9"),
                },
                _ => self.warnings.push(format!("{at}: unknown key {key}; ignored")),
            }
        }
        match (start, length) {
            (None, None) => {}
            (Some((at, s)), Some((_, l))) => match crate::window::Window::parse(&s, &l) {
                Ok(w) => self.window = Some(w),
                Err(e) => self.warnings.push(format!("{at}: reboot window: {e}")),
            },
            (Some((at, _)), None) | (None, Some((at, _))) => self.warnings.push(format!("{at}: a reboot window needs both REBOOT_WINDOW_START and REBOOT_WINDOW_LENGTH")),
        }
        if self.strategy == Strategy::FleetLock && self.fleetlock_url.is_none() {
            self.warnings.push(format!("{file}: REBOOT_STRATEGY=fleetlock needs FLEETLOCK_URL"));
        }
    }

    /// The FleetLock server the strategy uses, if any.
    pub fn lock_url(&self) -> Option<String> {
        match self.strategy {
            Strategy::FleetLock => self.fleetlock_url.clone(),
            Strategy::Lock | Strategy::BestEffort => Some(self.fleetlock_url.clone().unwrap_or_else(|| "http://127.0.0.1:2379".into())),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_files_override_and_bad_lines_are_named() {
        let mut c = Config::default();
        c.apply("/usr/share/basalt/update.conf", "SERVER=https://updates.example.com/\nCHANNEL=stable\n");
        c.apply(
            "/etc/basalt/update.conf",
            "# from cloud-config\nCHANNEL=beta\nREBOOT_STRATEGY=etcd-lock\nREBOOT_WINDOW_START=Thu 04:00\nREBOOT_WINDOW_LENGTH=1h\nCHECK_INTERVAL=5s\nWHAT=1\nnonsense\n",
        );
        assert_eq!(c.server.as_deref(), Some("https://updates.example.com"));
        assert_eq!(c.channel, "beta");
        assert_eq!(c.strategy, Strategy::Lock);
        assert!(c.window.is_some());
        assert_eq!(c.lock_url().as_deref(), Some("http://127.0.0.1:2379"));
        assert_eq!(c.check_interval, Duration::from_secs(3600));
        let w = c.warnings.join("\n");
        assert!(w.contains("/etc/basalt/update.conf:6: CHECK_INTERVAL=\"5s\""), "{w}");
        assert!(w.contains(":7: unknown key WHAT"), "{w}");
        assert!(w.contains(":8: expected KEY=VALUE"), "{w}");

        let mut c = Config::default();
        c.apply("f", "REBOOT_STRATEGY=fleetlock\nSERVER=ftp://x\nCHANNEL=Stable!\nREBOOT_WINDOW_START=04:00\n");
        let w = c.warnings.join("\n");
        assert!(w.contains("not an http:// or https:// URL"), "{w}");
        assert!(w.contains("channel \"Stable!\""), "{w}");
        assert!(w.contains("needs both"), "{w}");
        assert!(w.contains("needs FLEETLOCK_URL"), "{w}");
    }
}
