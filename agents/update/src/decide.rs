//! Whether to take the release a channel offers.

use basalt_repo::meta::{Channel, Delta, Release};
use basalt_repo::version::Version;
use std::time::SystemTime;

// Made once per check and matched at once: boxing the release would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    UpToDate {
        version: String,
    },
    /// Take `release`, by `delta` when one starts from the running version.
    Update {
        release: Release,
        delta: Option<Delta>,
    },
    /// Already written to the other slot; waiting for the reboot.
    Staged {
        version: String,
    },
    /// This machine's rollout wave has not come yet.
    Wait {
        version: String,
        until: Option<SystemTime>,
    },
    /// Not taken, and why.
    Refused {
        reason: String,
    },
}

pub struct Inputs<'a> {
    pub image_name: &'a str,
    pub running: &'a str,
    /// Versions that failed their health checks here, or were rolled back.
    pub failed: &'a [String],
    /// The version written to the other slot and waiting for a reboot.
    pub staged: Option<&'a str>,
    pub allow_downgrade: bool,
    pub ignore_rollout: bool,
    /// This machine's place in the fleet, in [0, 1).
    pub position: f64,
    pub now: SystemTime,
}

pub fn decide(channel: &Channel, i: &Inputs) -> Decision {
    let r = &channel.release;
    if r.name != i.image_name {
        return Decision::Refused { reason: format!("channel {} offers image {:?}; this machine runs {:?}", channel.channel, r.name, i.image_name) };
    }
    let (Ok(offered), Ok(running)) = (Version::parse(&r.version), Version::parse(i.running)) else {
        return Decision::Refused { reason: format!("cannot compare versions {:?} and {:?}", r.version, i.running) };
    };
    if offered == running {
        return Decision::UpToDate { version: r.version.clone() };
    }
    if i.failed.iter().any(|f| f == &r.version) {
        return Decision::Refused { reason: format!("{} failed its health checks on this machine before; not retrying it (a newer release will be taken)", r.version) };
    }
    if offered < running && !i.allow_downgrade {
        return Decision::Refused {
            reason: format!("channel {} offers {}, older than the running {}; not going down unless told (basaltctl update apply --allow-downgrade)", channel.channel, r.version, i.running),
        };
    }
    if i.staged == Some(r.version.as_str()) {
        return Decision::Staged { version: r.version.clone() };
    }
    if !i.ignore_rollout && r.share_at(i.now) <= i.position {
        return Decision::Wait { version: r.version.clone(), until: r.allowed_from(i.position) };
    }
    let delta = r.deltas.iter().find(|d| d.from == i.running).cloned();
    Decision::Update { release: r.clone(), delta }
}

#[cfg(test)]
mod tests {
    use super::*;
    use basalt_repo::meta::{FileRef, Wave};
    use std::time::Duration;

    fn channel(version: &str) -> Channel {
        let file = |p: &str| FileRef { path: p.into(), size: 1, sha256: "0".repeat(64) };
        Channel {
            kind: "channel".into(),
            channel: "stable".into(),
            version: 1,
            expires: "2099-01-01T00:00:00Z".into(),
            release: Release {
                name: "basalt".into(),
                version: version.into(),
                usr_root_hash: "0".repeat(64),
                payload: file("full"),
                deltas: vec![Delta { from: "0.1.0".into(), file: file("delta") }],
                rollout: vec![],
            },
        }
    }

    fn inputs(running: &str) -> Inputs<'_> {
        Inputs { image_name: "basalt", running, failed: &[], staged: None, allow_downgrade: false, ignore_rollout: false, position: 0.5, now: SystemTime::now() }
    }

    #[test]
    fn takes_newer_releases_only() {
        match decide(&channel("0.2.0"), &inputs("0.1.0")) {
            Decision::Update { delta: Some(d), .. } => assert_eq!(d.file.path, "delta"),
            d => panic!("{d:?}"),
        }
        assert!(matches!(decide(&channel("0.3.0"), &inputs("0.2.0")), Decision::Update { delta: None, .. }));
        assert!(matches!(decide(&channel("0.2.0"), &inputs("0.2.0")), Decision::UpToDate { .. }));
        let Decision::Refused { reason } = decide(&channel("0.1.0"), &inputs("0.2.0")) else { panic!() };
        assert!(reason.contains("older than the running 0.2.0"), "{reason}");
        let mut i = inputs("0.2.0");
        i.allow_downgrade = true;
        assert!(matches!(decide(&channel("0.1.0"), &i), Decision::Update { .. }));
        let failed = vec!["0.3.0".to_string()];
        let mut i = inputs("0.2.0");
        i.failed = &failed;
        assert!(matches!(decide(&channel("0.3.0"), &i), Decision::Refused { reason } if reason.contains("not retrying")));
        let mut i = inputs("0.1.0");
        i.image_name = "other";
        assert!(matches!(decide(&channel("0.2.0"), &i), Decision::Refused { .. }));
        let mut i = inputs("0.1.0");
        i.staged = Some("0.2.0");
        assert!(matches!(decide(&channel("0.2.0"), &i), Decision::Staged { .. }));
    }

    #[test]
    fn rollout_waves_hold_back_the_rest_of_the_fleet() {
        let now = SystemTime::now();
        let mut c = channel("0.2.0");
        let from = |t: SystemTime| basalt_repo::meta::format_time(t);
        c.release.rollout = vec![Wave { from: from(now - Duration::from_secs(60)), share: 0.25 }, Wave { from: from(now + Duration::from_secs(3600)), share: 1.0 }];
        let mut i = inputs("0.1.0");
        i.position = 0.1;
        assert!(matches!(decide(&c, &i), Decision::Update { .. }));
        i.position = 0.6;
        let Decision::Wait { until: Some(t), .. } = decide(&c, &i) else { panic!() };
        assert!(t > now);
        i.ignore_rollout = true;
        assert!(matches!(decide(&c, &i), Decision::Update { .. }));
    }
}
