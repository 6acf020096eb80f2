//! What the agent remembers across restarts and reboots, on ROOT.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

pub const DIR: &str = "/var/lib/basalt/update";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Staged {
    pub version: String,
    pub slot: String,
    /// `writing` until the slot verified and its UKI is on the ESP, then `staged`.
    pub status: String,
    /// The boot in which it was written: a later boot still on the old
    /// version means the loader went back.
    pub boot_id: String,
    pub from_version: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct State {
    /// This machine's draw for rollout waves.
    pub seed: u64,
    /// Highest channel document version accepted, per channel.
    pub channel_seen: BTreeMap<String, u64>,
    pub staged: Option<Staged>,
    /// Versions that failed here or were rolled back from: not retried.
    pub failed: Vec<String>,
    pub rolled_back: Option<String>,
    pub last_check: Option<String>,
    pub last_result: String,
    /// A FleetLock slot this machine took before rebooting, to give back.
    pub lock_held: bool,
}

pub fn path() -> PathBuf {
    Path::new(DIR).join("state.json")
}

impl State {
    pub fn load() -> State {
        let mut s: State = std::fs::read(path()).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default();
        if s.seed == 0 {
            let mut b = [0u8; 8];
            let _ = std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b));
            s.seed = u64::from_le_bytes(b).max(1);
        }
        s
    }

    /// Rollout position in [0, 1).
    pub fn position(&self) -> f64 {
        (self.seed >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn save(&self) -> Result<(), String> {
        write_atomic(&path(), &serde_json::to_vec_pretty(self).expect("state serializes"))
    }
}

/// Write, fsync, rename, fsync the directory.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<(), String> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    f.write_all(data).and_then(|_| f.sync_all()).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}
