//! Pinned inputs: `image/inputs.lock` names each Debian package by name,
//! version and sha256. `basalt fetch` downloads them with `apt-get download`
//! into a cache outside the repository; `basalt build` takes a file only if its
//! sha256 matches the lock.

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    pub name: String,
    pub version: String,
    pub sha256: String,
}

#[derive(Debug, Clone)]
pub struct Lock {
    pub path: PathBuf,
    pub pins: BTreeMap<String, Pin>,
}

impl Lock {
    pub fn load(path: &Path) -> Result<Lock> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Self::parse(path, &text)
    }

    /// One package per line: `name version sha256`; `#` starts a comment.
    pub fn parse(path: &Path, text: &str) -> Result<Lock> {
        let mut pins = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap().trim();
            if line.is_empty() {
                continue;
            }
            let at = || format!("{}:{}", path.display(), i + 1);
            let words: Vec<&str> = line.split_whitespace().collect();
            let [name, version, sha256] = words[..] else {
                bail!("{}: expected `name version sha256`, found {} words", at(), words.len());
            };
            if sha256.len() != 64 || !sha256.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()) {
                bail!("{}: sha256 of {name} must be 64 lowercase hex digits", at());
            }
            if pins.insert(name.to_string(), Pin { name: name.into(), version: version.into(), sha256: sha256.into() }).is_some() {
                bail!("{}: {name} is pinned twice", at());
            }
        }
        Ok(Lock { path: path.to_owned(), pins })
    }

    pub fn pin(&self, name: &str) -> Result<&Pin> {
        self.pins.get(name).with_context(|| format!("package {name} is not pinned in {}; add `name version sha256` for it", self.path.display()))
    }
}

pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("BASALT_CACHE") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache/basalt")
}

impl Pin {
    /// Where the package lives in the cache (epoch colons are not file-name friendly).
    pub fn cached_path(&self, cache: &Path) -> PathBuf {
        cache.join("debs").join(format!("{}_{}_amd64.deb", self.name, self.version.replace(':', "%3a")))
    }

    /// The cached file, checked against the lock.
    pub fn verified(&self, cache: &Path) -> Result<PathBuf> {
        let path = self.cached_path(cache);
        if !path.exists() {
            bail!("input {} {} is not in the cache ({}); run `make inputs` (basalt fetch) to fetch it", self.name, self.version, path.display());
        }
        let actual = sha256_file(&path)?;
        if actual != self.sha256 {
            bail!("input {} has sha256 {actual}, but image/inputs.lock pins {}; delete {} and run `make inputs` to refetch it", path.display(), self.sha256, path.display());
        }
        Ok(path)
    }
}

pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(basalt_verity::hex(&h.finalize()))
}

/// Downloads every pinned package that is missing or wrong in the cache.
pub fn fetch(lock: &Lock, cache: &Path) -> Result<()> {
    let debs = cache.join("debs");
    std::fs::create_dir_all(&debs).with_context(|| format!("creating {}", debs.display()))?;
    for pin in lock.pins.values() {
        if pin.verified(cache).is_ok() {
            continue;
        }
        let staging = tempfile_dir(&debs)?;
        eprintln!("fetching {} {}", pin.name, pin.version);
        let status = Command::new("apt-get").arg("download").arg(format!("{}={}", pin.name, pin.version)).current_dir(&staging).status().context("running apt-get download (is this Debian?)")?;
        if !status.success() {
            let _ = std::fs::remove_dir_all(&staging);
            bail!("apt-get download {}={} failed; is the version still in the archive? (apt-cache madison {})", pin.name, pin.version, pin.name);
        }
        let file = std::fs::read_dir(&staging)?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .with_context(|| format!("apt-get download left no .deb for {}", pin.name))?;
        let actual = sha256_file(&file)?;
        if actual != pin.sha256 {
            let _ = std::fs::remove_dir_all(&staging);
            bail!("downloaded {} {} has sha256 {actual}, the lock pins {}; refusing it", pin.name, pin.version, pin.sha256);
        }
        std::fs::rename(&file, pin.cached_path(cache))?;
        std::fs::remove_dir_all(&staging)?;
    }
    Ok(())
}

fn tempfile_dir(parent: &Path) -> Result<PathBuf> {
    let d = parent.join(format!(".fetch-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    // apt-get drops privileges to _apt when it can; let it write here.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777))?;
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "efe19f605b6f54a8352e68d85a629abb2d30b72a085faef603a9152590baa791";

    #[test]
    fn parses_and_names_bad_lines() {
        let p = Path::new("inputs.lock");
        let l = Lock::parse(p, &format!("# comment\nfoo 1.0 {SHA} # trailing\n")).unwrap();
        assert_eq!(l.pin("foo").unwrap().version, "1.0");
        let e = Lock::parse(p, "foo 1.0\n").unwrap_err().to_string();
        assert!(e.contains("inputs.lock:1") && e.contains("name version sha256"), "{e}");
        let e = Lock::parse(p, &format!("\nfoo 1.0 {}\n", &SHA[1..])).unwrap_err().to_string();
        assert!(e.contains("inputs.lock:2") && e.contains("64 lowercase hex"), "{e}");
        let e = Lock::parse(p, &format!("foo 1 {SHA}\nfoo 2 {SHA}\n")).unwrap_err().to_string();
        assert!(e.contains("pinned twice"), "{e}");
        assert!(l.pin("bar").unwrap_err().to_string().contains("not pinned"));
    }

    #[test]
    fn refuses_a_file_whose_sha256_differs() {
        let cache = tempfile::tempdir().unwrap();
        let pin = Pin { name: "foo".into(), version: "1:2.0".into(), sha256: SHA.into() };
        let e = pin.verified(cache.path()).unwrap_err().to_string();
        assert!(e.contains("not in the cache") && e.contains("make inputs"), "{e}");
        std::fs::create_dir_all(cache.path().join("debs")).unwrap();
        std::fs::write(pin.cached_path(cache.path()), b"tampered").unwrap();
        let e = pin.verified(cache.path()).unwrap_err().to_string();
        assert!(e.contains("pins") && e.contains("refetch"), "{e}");
    }
}
