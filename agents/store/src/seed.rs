//! Seed keys: `/etc/basalt/store-seed.json`, which cloud-config writes from
//! `store.seed` in the user data (the format is cloud-config's, see
//! docs/cloud-config.md):
//!
//! ```json
//! {"version": 1, "source": "cloud-config",
//!  "keys": [{"key": "/services/web/port", "value": "80"}]}
//! ```
//!
//! At start, before it serves anybody, the store creates every seed key
//! that does not exist (`prevExist=false`) and leaves existing keys alone, so
//! a reboot never overwrites what was changed since. A seed file is applied
//! once per content: the store remembers the file's checksum under the
//! hidden key `/_basalt/store-seed`, so a seed key somebody deleted stays
//! deleted until the seed file itself changes. The whole file is checked
//! before the first key is written; a bad file seeds nothing.

use crate::error::ErrorCode;
use crate::request::Mutation;
use crate::service::Store;
use crate::tree::clean_path;
use serde::Deserialize;
use std::path::{Path, PathBuf};

pub const DEFAULT_PATH: &str = "/etc/basalt/store-seed.json";
/// Where the checksum of the last applied seed file is kept (hidden: `_`).
pub const MARKER_KEY: &str = "/_basalt/store-seed";
/// The seed format version this store reads.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SeedFile {
    version: u32,
    #[serde(default)]
    #[allow(dead_code)]
    source: Option<String>,
    keys: Vec<SeedKey>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedKey {
    pub key: String,
    pub value: String,
}

/// A checked seed file: its keys (each once, the last mention winning, as
/// cloud-config lists user data after the OEM's defaults) and its checksum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seed {
    pub keys: Vec<SeedKey>,
    pub digest: String,
}

#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    #[error("seed file {path}: {message}; no keys seeded")]
    Bad { path: PathBuf, message: String },
    #[error("seed file {path}: writing {key}: {message}; the seed is applied again at the next start")]
    Store { path: PathBuf, key: String, message: String },
}

/// What applying a seed did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// No seed file.
    Absent,
    /// This seed file (same checksum) was applied at an earlier start.
    AlreadyApplied,
    /// `created` keys were new; `kept` existed already and were left alone
    /// (with the reason when it was not simply "exists").
    Applied { created: usize, kept: Vec<(String, String)> },
}

/// Check a seed file's text. `max_key`/`max_value`: the store's limits.
pub fn parse(text: &[u8], path: &Path, max_key: usize, max_value: usize) -> Result<Seed, SeedError> {
    let bad = |message: String| SeedError::Bad { path: path.to_path_buf(), message };
    let file: SeedFile = serde_json::from_slice(text).map_err(|e| bad(e.to_string()))?;
    if file.version != FORMAT_VERSION {
        return Err(bad(format!("version {} is not {FORMAT_VERSION}, the only seed format this store reads", file.version)));
    }
    let mut keys: Vec<SeedKey> = Vec::new();
    for (i, k) in file.keys.into_iter().enumerate() {
        let at = format!("keys[{i}]");
        if !k.key.starts_with('/') || k.key == "/" {
            return Err(bad(format!("{at}: {:?} is not a store key such as \"/app/config\"", k.key)));
        }
        if clean_path(&k.key) != k.key {
            return Err(bad(format!("{at}: {:?} is not a clean key (it would be {:?})", k.key, clean_path(&k.key))));
        }
        if k.key.len() > max_key {
            return Err(bad(format!("{at}: key is {} bytes, more than the limit of {max_key}", k.key.len())));
        }
        if k.value.len() > max_value {
            return Err(bad(format!("{at}: value of {} is {} bytes, more than the limit of {max_value}", k.key, k.value.len())));
        }
        keys.retain(|old| old.key != k.key);
        keys.push(k);
    }
    Ok(Seed { keys, digest: format!("{}-{:08x}", text.len(), crc32fast::hash(text)) })
}

/// Create the seed's missing keys, unless this very seed was applied before.
pub fn apply(store: &Store, seed: &Seed, path: &Path) -> Result<Outcome, SeedError> {
    if store.get(MARKER_KEY, false).ok().and_then(|e| e.node.value) == Some(seed.digest.clone()) {
        return Ok(Outcome::AlreadyApplied);
    }
    let failed = |key: &str, message: String| SeedError::Store { path: path.to_path_buf(), key: key.to_string(), message };
    let mut created = 0;
    let mut kept = Vec::new();
    for k in &seed.keys {
        let create = Mutation::Create { key: k.key.clone(), dir: false, value: k.value.clone(), unique: false, expires: None };
        match store.write_blocking(create) {
            Ok(_) => created += 1,
            Err(e) if e.code == ErrorCode::NodeExist => kept.push((k.key.clone(), String::new())),
            // A directory there, or a file where a directory would be:
            // somebody's data, which a seed never replaces.
            Err(e) if matches!(e.code, ErrorCode::NotFile | ErrorCode::NotDir) => kept.push((k.key.clone(), e.to_string())),
            Err(e) => return Err(failed(&k.key, e.to_string())),
        }
    }
    let marker = Mutation::Set { key: MARKER_KEY.into(), dir: false, value: seed.digest.clone(), expires: None, refresh: false };
    store.write_blocking(marker).map_err(|e| failed(MARKER_KEY, e.to_string()))?;
    Ok(Outcome::Applied { created, kept })
}

/// Read, check and apply the seed file at `path`, if there is one.
pub fn seed_from_file(store: &Store, path: &Path) -> Result<Outcome, SeedError> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Outcome::Absent),
        Err(e) => return Err(SeedError::Bad { path: path.to_path_buf(), message: format!("cannot read: {e}") }),
    };
    let limits = store.limits();
    let seed = parse(&text, path, limits.max_key_bytes, limits.max_value_bytes)?;
    apply(store, &seed, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::Limits;

    fn open(dir: &Path) -> Store {
        Store::open(dir, Limits::default(), 100).unwrap()
    }

    fn value(store: &Store, key: &str) -> Option<String> {
        store.get(key, false).ok().and_then(|e| e.node.value)
    }

    const SEED: &str = r#"{"version": 1, "source": "cloud-config",
 "keys": [{"key": "/services/web/port", "value": "80"}, {"key": "/app/name", "value": "a"}, {"key": "/app/name", "value": "b"}]}"#;

    #[test]
    fn creates_missing_keys_once_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let seed_path = dir.path().join("store-seed.json");
        let store = open(&dir.path().join("data"));
        assert_eq!(seed_from_file(&store, &seed_path).unwrap(), Outcome::Absent);

        std::fs::write(&seed_path, SEED).unwrap();
        store.write_blocking(Mutation::Set { key: "/services/web/port".into(), dir: false, value: "8080".into(), expires: None, refresh: false }).unwrap();
        let outcome = seed_from_file(&store, &seed_path).unwrap();
        assert_eq!(outcome, Outcome::Applied { created: 1, kept: vec![("/services/web/port".into(), String::new())] });
        assert_eq!(value(&store, "/services/web/port").as_deref(), Some("8080"), "an existing key was overwritten");
        assert_eq!(value(&store, "/app/name").as_deref(), Some("b"), "the last mention of a key wins");

        // Applied once per content: a deleted seed key stays deleted.
        store.write_blocking(Mutation::Delete { key: "/app/name".into(), dir: false, recursive: false }).unwrap();
        assert_eq!(seed_from_file(&store, &seed_path).unwrap(), Outcome::AlreadyApplied);
        assert_eq!(value(&store, "/app/name"), None);
        // Hidden: a listing of the root does not show the marker.
        let root = store.get("/", true).unwrap();
        assert!(root.node.nodes.iter().all(|n| !n.key.starts_with("/_basalt")), "{root:?}");

        // A changed seed file is applied again.
        std::fs::write(&seed_path, SEED.replace("\"b\"", "\"c\"")).unwrap();
        assert!(matches!(seed_from_file(&store, &seed_path).unwrap(), Outcome::Applied { created: 1, .. }));
        assert_eq!(value(&store, "/app/name").as_deref(), Some("c"));
    }

    #[test]
    fn the_marker_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let seed_path = dir.path().join("store-seed.json");
        std::fs::write(&seed_path, SEED).unwrap();
        {
            let store = open(&dir.path().join("data"));
            assert!(matches!(seed_from_file(&store, &seed_path).unwrap(), Outcome::Applied { created: 2, .. }));
        }
        // The writer thread lets go of the database shortly after the last handle.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let store = loop {
            match Store::open(&dir.path().join("data"), Limits::default(), 100) {
                Ok(s) => break s,
                Err(_) if std::time::Instant::now() < deadline => std::thread::sleep(std::time::Duration::from_millis(20)),
                Err(e) => panic!("{e}"),
            }
        };
        assert_eq!(seed_from_file(&store, &seed_path).unwrap(), Outcome::AlreadyApplied);
        assert_eq!(value(&store, "/services/web/port").as_deref(), Some("80"));
    }

    #[test]
    fn a_key_below_a_file_is_left_alone_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        store.write_blocking(Mutation::Set { key: "/app".into(), dir: false, value: "file".into(), expires: None, refresh: false }).unwrap();
        let seed = parse(SEED.as_bytes(), Path::new("s.json"), 4096, 1 << 20).unwrap();
        let Outcome::Applied { created, kept } = apply(&store, &seed, Path::new("s.json")).unwrap() else { panic!() };
        assert_eq!(created, 1);
        assert_eq!(kept.len(), 1);
        assert!(kept[0].0 == "/app/name" && kept[0].1.contains("Not a directory"), "{kept:?}");
        assert_eq!(value(&store, "/app").as_deref(), Some("file"));
    }

    #[test]
    fn bad_files_name_the_problem_and_seed_nothing() {
        let p = Path::new("/etc/basalt/store-seed.json");
        let cases = [
            ("{", "EOF"),
            (r#"{"version": 2, "keys": []}"#, "version 2 is not 1"),
            (r#"{"version": 1}"#, "missing field `keys`"),
            (r#"{"version": 1, "keys": [], "extra": 1}"#, "unknown field `extra`"),
            (r#"{"version": 1, "keys": [{"key": "app/x", "value": "1"}]}"#, "keys[0]: \"app/x\" is not a store key"),
            (r#"{"version": 1, "keys": [{"key": "/", "value": "1"}]}"#, "keys[0]: \"/\" is not a store key"),
            (r#"{"version": 1, "keys": [{"key": "/a", "value": "1"}, {"key": "/a//b/", "value": "1"}]}"#, "keys[1]: \"/a//b/\" is not a clean key"),
            (r#"{"version": 1, "keys": [{"key": "/a", "value": 1}]}"#, "invalid type: integer"),
            (r#"{"version": 1, "keys": [{"key": "/a", "value": "123456789"}]}"#, "value of /a is 9 bytes, more than the limit of 8"),
            (r#"{"version": 1, "keys": [{"key": "/0123456789", "value": "1"}]}"#, "key is 11 bytes, more than the limit of 8"),
        ];
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        for (text, want) in cases {
            let e = parse(text.as_bytes(), p, 8, 8).unwrap_err().to_string();
            assert!(e.contains(want) && e.starts_with("seed file /etc/basalt/store-seed.json: ") && e.ends_with("no keys seeded"), "{text}: {e}");
            let file = dir.path().join("seed.json");
            std::fs::write(&file, text).unwrap();
            let _ = seed_from_file(&store, &file);
        }
        // With the store's real limits two of the cases are fine; the rest wrote nothing.
        let mut written: Vec<String> = store.get("/", true).unwrap().node.nodes.into_iter().map(|n| n.key).collect();
        written.sort();
        assert_eq!(written, ["/0123456789", "/a"]);
    }
}
