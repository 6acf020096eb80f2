//! An in-memory file tree: what goes into the USR filesystem. Packages are
//! unpacked into it, our binaries and the spec's files added, and then it is
//! written out as squashfs in one pass, with every owner root and every
//! timestamp SOURCE_DATE_EPOCH, so no build host detail leaks in.

use anyhow::{bail, Result};
use basalt_deb::{Entry, EntryKind};
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Debug, Clone)]
pub enum Node {
    Dir { mode: u32 },
    File { mode: u32, data: Arc<[u8]> },
    Symlink { target: String },
}

#[derive(Debug, Default)]
pub struct Tree {
    /// Absolute paths, `/usr/...`; BTreeMap order puts parents before children.
    pub nodes: BTreeMap<String, Node>,
}

impl Tree {
    pub fn insert(&mut self, path: &str, node: Node) -> Result<()> {
        if !path.starts_with('/') || path.ends_with('/') || path.split('/').skip(1).any(|c| c.is_empty() || c == "." || c == "..") {
            bail!("bad path {path:?} in image tree");
        }
        let mut parent = String::new();
        let comps: Vec<&str> = path.split('/').skip(1).collect();
        for c in &comps[..comps.len() - 1] {
            parent.push('/');
            parent.push_str(c);
            match self.nodes.get(&parent) {
                None => {
                    self.nodes.insert(parent.clone(), Node::Dir { mode: 0o755 });
                }
                Some(Node::Dir { .. }) => {}
                Some(_) => bail!("{path}: parent {parent} is not a directory"),
            }
        }
        if let (Some(Node::Dir { .. }), Node::Dir { .. }) = (self.nodes.get(path), &node) {
            // A package re-declaring a directory keeps what is there.
            return Ok(());
        }
        self.nodes.insert(path.to_string(), node);
        Ok(())
    }

    pub fn file(&mut self, path: &str, mode: u32, data: impl Into<Arc<[u8]>>) -> Result<()> {
        self.insert(path, Node::File { mode, data: data.into() })
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> Result<()> {
        self.insert(path, Node::Symlink { target: target.to_string() })
    }

    /// Adds a package's files, mapping them into /usr (merged /usr: /bin,
    /// /sbin and /lib move under /usr; /etc becomes the defaults under
    /// /usr/share/basalt/etc). Documentation, manuals and anything outside
    /// those trees are left out.
    pub fn add_package(&mut self, entries: &[Entry]) -> Result<()> {
        for e in entries {
            let Some(path) = usr_path(&e.path) else { continue };
            let node = match &e.kind {
                EntryKind::Dir => Node::Dir { mode: e.mode },
                EntryKind::File(data) => Node::File { mode: e.mode, data: data.as_slice().into() },
                EntryKind::Symlink(t) => Node::Symlink { target: t.clone() },
            };
            self.insert(&path, node)?;
        }
        Ok(())
    }

    pub fn total_file_bytes(&self) -> u64 {
        self.nodes.values().map(|n| if let Node::File { data, .. } = n { data.len() as u64 } else { 0 }).sum()
    }
}

const LEFT_OUT: &[&str] = &["/usr/share/doc", "/usr/share/man", "/usr/share/info", "/usr/share/lintian", "/usr/share/bug", "/usr/share/locale"];

fn usr_path(p: &str) -> Option<String> {
    let mapped = if p == "/usr" || p.starts_with("/usr/") {
        p.to_string()
    } else if ["/bin", "/sbin", "/lib", "/lib64"].iter().any(|d| p == *d || p.starts_with(&format!("{d}/"))) {
        format!("/usr{p}")
    } else if p == "/etc" || p.starts_with("/etc/") {
        format!("/usr/share/basalt{p}")
    } else {
        return None;
    };
    if mapped == "/usr" || LEFT_OUT.iter().any(|l| mapped == *l || mapped.starts_with(&format!("{l}/"))) {
        return None;
    }
    Some(mapped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_into_usr_and_leaves_docs_out() {
        assert_eq!(usr_path("/bin/busybox").as_deref(), Some("/usr/bin/busybox"));
        assert_eq!(usr_path("/lib/modules/6.1/x.ko").as_deref(), Some("/usr/lib/modules/6.1/x.ko"));
        assert_eq!(usr_path("/etc/dropbear").as_deref(), Some("/usr/share/basalt/etc/dropbear"));
        assert_eq!(usr_path("/usr/share/doc/busybox/copyright"), None);
        assert_eq!(usr_path("/boot/vmlinuz"), None);
        assert_eq!(usr_path("/var/lib/x"), None);
        assert_eq!(usr_path("/binary"), None);
    }

    #[test]
    fn parents_are_created_and_conflicts_refused() {
        let mut t = Tree::default();
        t.file("/usr/lib/basalt/init", 0o755, &b"x"[..]).unwrap();
        assert!(matches!(t.nodes.get("/usr/lib"), Some(Node::Dir { mode: 0o755 })));
        assert!(t.file("/usr/lib/basalt/init/sub", 0o644, &b""[..]).is_err());
        assert!(t.file("/usr/../etc", 0o644, &b""[..]).is_err());
    }
}
