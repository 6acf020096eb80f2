//! Reads the file tree of a Debian binary package (`.deb`) in-process: the
//! outer `ar` archive, then `data.tar` compressed with xz, zstd or gzip.
//! Maintainer scripts are not run; basalt images take files, not behaviour.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum DebError {
    #[error("{path}: not a Debian package: {why}")]
    Format { path: PathBuf, why: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    File(Vec<u8>),
    Symlink(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Absolute path inside the package, e.g. `/usr/bin/busybox`.
    pub path: String,
    /// Permission bits (including setuid/setgid/sticky).
    pub mode: u32,
    pub kind: EntryKind,
}

/// One member of an `ar` archive.
struct ArMember<'a> {
    name: String,
    data: &'a [u8],
}

fn ar_members(bytes: &[u8]) -> Result<Vec<ArMember<'_>>, String> {
    const MAGIC: &[u8] = b"!<arch>\n";
    if !bytes.starts_with(MAGIC) {
        return Err("missing ar magic".into());
    }
    let mut members = Vec::new();
    let mut pos = MAGIC.len();
    while pos < bytes.len() {
        let header = bytes.get(pos..pos + 60).ok_or("truncated ar header")?;
        if &header[58..60] != b"`\n" {
            return Err(format!("bad ar header at byte {pos}"));
        }
        let name = String::from_utf8_lossy(&header[0..16]).trim_end().trim_end_matches('/').to_string();
        let size: usize = std::str::from_utf8(&header[48..58]).ok().and_then(|s| s.trim().parse().ok()).ok_or_else(|| format!("bad size in ar member {name}"))?;
        let start = pos + 60;
        let data = bytes.get(start..start + size).ok_or_else(|| format!("ar member {name} is truncated"))?;
        members.push(ArMember { name, data });
        pos = start + size + (size % 2);
    }
    Ok(members)
}

fn decompressor<'a>(name: &str, data: &'a [u8]) -> Result<Box<dyn Read + 'a>, String> {
    Ok(match name.rsplit('.').next() {
        Some("xz") => Box::new(xz2::read::XzDecoder::new(data)),
        Some("zst") => Box::new(zstd::stream::read::Decoder::new(data).map_err(|e| e.to_string())?),
        Some("gz") => Box::new(flate2::read::GzDecoder::new(data)),
        Some("tar") => Box::new(data),
        _ => return Err(format!("unknown compression of {name}")),
    })
}

/// Every entry of the package's data archive, with paths made absolute and
/// hard links resolved into copies of their target's content.
pub fn read_data(path: &Path) -> Result<Vec<Entry>, DebError> {
    let io_err = |source| DebError::Io { path: path.to_owned(), source };
    let fmt_err = |why: String| DebError::Format { path: path.to_owned(), why };
    let bytes = std::fs::read(path).map_err(io_err)?;
    let members = ar_members(&bytes).map_err(fmt_err)?;
    if members.first().map(|m| m.name.as_str()) != Some("debian-binary") {
        return Err(fmt_err("first ar member is not debian-binary".into()));
    }
    let data = members.iter().find(|m| m.name.starts_with("data.tar")).ok_or_else(|| fmt_err("no data.tar member".into()))?;
    let reader = decompressor(&data.name, data.data).map_err(fmt_err)?;
    let mut archive = tar::Archive::new(reader);
    let mut entries: Vec<Entry> = Vec::new();
    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    for entry in archive.entries().map_err(io_err)? {
        let mut entry = entry.map_err(io_err)?;
        let raw = entry.path().map_err(io_err)?.to_string_lossy().into_owned();
        let abs = normalize(&raw);
        if abs == "/" {
            continue;
        }
        let mode = entry.header().mode().map_err(io_err)? & 0o7777;
        let kind = match entry.header().entry_type() {
            tar::EntryType::Directory => EntryKind::Dir,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let mut buf = Vec::with_capacity(entry.size() as usize);
                entry.read_to_end(&mut buf).map_err(io_err)?;
                EntryKind::File(buf)
            }
            tar::EntryType::Symlink => {
                let target = entry.link_name().map_err(io_err)?.ok_or_else(|| fmt_err(format!("symlink {abs} without target")))?;
                EntryKind::Symlink(target.to_string_lossy().into_owned())
            }
            tar::EntryType::Link => {
                let target = entry.link_name().map_err(io_err)?.ok_or_else(|| fmt_err(format!("hard link {abs} without target")))?;
                let target = normalize(&target.to_string_lossy());
                let i = *index.get(&target).ok_or_else(|| fmt_err(format!("hard link {abs} to unknown {target}")))?;
                entries[i].kind.clone()
            }
            other => return Err(fmt_err(format!("{abs}: unsupported tar entry type {other:?}"))),
        };
        index.insert(abs.clone(), entries.len());
        entries.push(Entry { path: abs, mode, kind });
    }
    Ok(entries)
}

fn normalize(p: &str) -> String {
    let parts: Vec<&str> = p.split('/').filter(|s| !s.is_empty() && *s != ".").collect();
    format!("/{}", parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ar(members: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = b"!<arch>\n".to_vec();
        for (name, data) in members {
            out.extend_from_slice(format!("{:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n", name, 0, 0, 0, 100644, data.len()).as_bytes());
            out.extend_from_slice(data);
            if data.len() % 2 == 1 {
                out.push(b'\n');
            }
        }
        out
    }

    fn tar_xz() -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        b.append_data(&mut h, "./usr/", &[][..]).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o4755);
        h.set_size(5);
        b.append_data(&mut h, "./usr/tool", &b"hello"[..]).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Link);
        h.set_mode(0o4755);
        h.set_size(0);
        b.append_link(&mut h, "./usr/tool2", "./usr/tool").unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_size(0);
        b.append_link(&mut h, "./usr/link", "tool").unwrap();
        let raw = b.into_inner().unwrap();
        let mut xz = xz2::write::XzEncoder::new(Vec::new(), 1);
        std::io::Write::write_all(&mut xz, &raw).unwrap();
        xz.finish().unwrap()
    }

    #[test]
    fn reads_files_links_and_modes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.deb");
        std::fs::write(&p, ar(&[("debian-binary", b"2.0\n"), ("control.tar.xz", b""), ("data.tar.xz", &tar_xz())])).unwrap();
        let e = read_data(&p).unwrap();
        assert_eq!(e[0], Entry { path: "/usr".into(), mode: 0o755, kind: EntryKind::Dir });
        assert_eq!(e[1], Entry { path: "/usr/tool".into(), mode: 0o4755, kind: EntryKind::File(b"hello".to_vec()) });
        assert_eq!(e[2].kind, EntryKind::File(b"hello".to_vec()));
        assert_eq!(e[3].kind, EntryKind::Symlink("tool".into()));
    }

    #[test]
    fn rejects_non_packages() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("junk.deb");
        std::fs::write(&p, b"this is not an archive").unwrap();
        let err = read_data(&p).unwrap_err().to_string();
        assert!(err.contains("missing ar magic"), "{err}");
        std::fs::write(&p, ar(&[("debian-binary", b"2.0\n")])).unwrap();
        assert!(read_data(&p).unwrap_err().to_string().contains("no data.tar"));
    }
}
