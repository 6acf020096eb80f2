//! The root directory being configured (`/` on a machine, a scratch
//! directory in tests). Every write is idempotent and atomic: unchanged
//! files are not touched, changed ones are written to a temporary file,
//! synced and renamed into place, so a power cut leaves the old or the new
//! file, never half of one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Root {
    base: PathBuf,
}

impl Root {
    pub fn new(base: impl Into<PathBuf>) -> Self {
        Root { base: base.into() }
    }

    pub fn base(&self) -> &Path {
        &self.base
    }

    /// The host path of an absolute path inside the root.
    pub fn path(&self, inside: &str) -> PathBuf {
        self.base.join(inside.trim_start_matches('/'))
    }

    pub fn read_to_string(&self, inside: &str) -> Option<String> {
        fs::read_to_string(self.path(inside)).ok()
    }

    pub fn exists(&self, inside: &str) -> bool {
        self.path(inside).symlink_metadata().is_ok()
    }

    /// Writes `content` with `mode` and owner unless the file already is
    /// exactly that. Missing parent directories are created root-owned 0755.
    /// Returns whether anything changed.
    pub fn write(&self, inside: &str, content: &[u8], mode: u32, uid: u32, gid: u32) -> io::Result<bool> {
        let path = self.path(inside);
        if let Ok(existing) = path.symlink_metadata() {
            if existing.file_type().is_file() && existing.len() == content.len() as u64 && fs::read(&path)? == content {
                let same_owner = existing.uid() == uid && existing.gid() == gid;
                if same_owner && existing.mode() & 0o7777 == mode {
                    return Ok(false);
                }
                // Same bytes, other owner or mode: fix them in place. chown
                // first, since it clears set-id bits.
                std::os::unix::fs::chown(&path, Some(uid), Some(gid))?;
                fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
                return Ok(true);
            }
        }
        let parent = path.parent().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no parent directory"))?;
        create_dirs(parent)?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let temporary = parent.join(format!(".{name}.cloud-config.tmp"));
        let result = (|| {
            let mut file = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&temporary)?;
            file.write_all(content)?;
            std::os::unix::fs::fchown(&file, Some(uid), Some(gid))?;
            file.set_permissions(fs::Permissions::from_mode(mode))?;
            file.sync_all()?;
            fs::rename(&temporary, &path)?;
            File::open(parent)?.sync_all()
        })();
        if result.is_err() {
            let _ = fs::remove_file(&temporary);
        }
        result.map(|_| true)
    }

    /// Makes a directory (and root-owned 0755 parents) and sets its owner and
    /// mode. Returns whether anything changed.
    pub fn ensure_dir(&self, inside: &str, mode: u32, uid: u32, gid: u32) -> io::Result<bool> {
        let path = self.path(inside);
        let mut changed = false;
        if !path.is_dir() {
            create_dirs(path.parent().unwrap_or(&path))?;
            fs::create_dir(&path)?;
            changed = true;
        }
        let metadata = path.metadata()?;
        if metadata.uid() != uid || metadata.gid() != gid {
            std::os::unix::fs::chown(&path, Some(uid), Some(gid))?;
            changed = true;
        }
        if metadata.mode() & 0o7777 != mode {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
            changed = true;
        }
        Ok(changed)
    }

    /// Makes `inside` a symlink to `target` (a path as the running system sees
    /// it), replacing whatever was there. Returns whether anything changed.
    pub fn ensure_symlink(&self, inside: &str, target: &str) -> io::Result<bool> {
        let path = self.path(inside);
        if fs::read_link(&path).is_ok_and(|current| current == Path::new(target)) {
            return Ok(false);
        }
        let parent = path.parent().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no parent directory"))?;
        create_dirs(parent)?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let temporary = parent.join(format!(".{name}.cloud-config.tmp"));
        let _ = fs::remove_file(&temporary);
        std::os::unix::fs::symlink(target, &temporary)?;
        fs::rename(&temporary, &path)?;
        Ok(true)
    }

    /// Removes a file if it exists. Returns whether it did.
    pub fn remove(&self, inside: &str) -> io::Result<bool> {
        match fs::remove_file(self.path(inside)) {
            Ok(()) => Ok(true),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// File names in a directory inside the root, sorted; empty if it is missing.
    pub fn list(&self, inside: &str) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.path(inside)).map(|entries| entries.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect()).unwrap_or_default();
        names.sort();
        names
    }
}

fn create_dirs(path: &Path) -> io::Result<()> {
    if path.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new().recursive(true).mode(0o755).create(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writing_the_same_file_twice_changes_nothing() {
        let scratch = tempfile::tempdir().unwrap();
        let root = Root::new(scratch.path());
        assert!(root.write("/etc/a/b.conf", b"x=1\n", 0o640, 0, 0).unwrap());
        assert!(!root.write("/etc/a/b.conf", b"x=1\n", 0o640, 0, 0).unwrap());
        let metadata = fs::metadata(root.path("/etc/a/b.conf")).unwrap();
        assert_eq!(metadata.mode() & 0o7777, 0o640);
        assert!(root.write("/etc/a/b.conf", b"x=1\n", 0o600, 0, 0).unwrap());
        assert!(root.write("/etc/a/b.conf", b"x=2\n", 0o600, 0, 0).unwrap());
        assert_eq!(fs::read(root.path("/etc/a/b.conf")).unwrap(), b"x=2\n");
        assert_eq!(root.list("/etc/a"), ["b.conf"], "no temporary file is left behind");
    }

    #[test]
    fn symlinks_are_replaced_only_when_they_differ() {
        let scratch = tempfile::tempdir().unwrap();
        let root = Root::new(scratch.path());
        assert!(root.ensure_symlink("/etc/x.wants/a.service", "/etc/a.service").unwrap());
        assert!(!root.ensure_symlink("/etc/x.wants/a.service", "/etc/a.service").unwrap());
        assert!(root.ensure_symlink("/etc/x.wants/a.service", "/dev/null").unwrap());
        assert_eq!(fs::read_link(root.path("/etc/x.wants/a.service")).unwrap(), Path::new("/dev/null"));
    }
}
