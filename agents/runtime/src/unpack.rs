//! Unpacking a layer (a tar stream, maybe gzip or zstd compressed) into a
//! directory overlayfs can use as a lower layer: OCI whiteouts (`.wh.NAME`)
//! become overlay whiteouts (a 0:0 character device), opaque markers
//! (`.wh..wh..opq`) become the `trusted.overlay.opaque` attribute. The
//! uncompressed stream is hashed on the way and must match the image
//! config's diff_id. Entries that would land outside the directory are
//! refused (the tar crate checks every path and symlinked parent).
//!
//! Extended attributes in the layer (PAX `SCHILY.xattr.NAME` records, what
//! docker and buildah write) are set after the entry's owner and mode, since
//! a chown clears `security.capability`: file capabilities, `user.*` and
//! ACLs. `trusted.*` ones are skipped: the lower directory is overlayfs's,
//! and `trusted.overlay.*` there would change how it reads the layer.

use std::ffi::CString;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use crate::digest::{Digest, HashingReader};
use crate::manifest::Compression;

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("layer {layer}: {message}")]
    Bad { layer: Digest, message: String },
    #[error("layer {layer}: uncompressed content has digest {actual}, the image config says {expected}")]
    DiffId { layer: Digest, expected: Digest, actual: Digest },
}

const OPAQUE: &str = ".wh..wh..opq";
const WHITEOUT: &str = ".wh.";

pub fn unpack(blob: impl Read, compression: Compression, layer: &Digest, diff_id: &Digest, into: &Path) -> Result<(), UnpackError> {
    let bad = |message: String| UnpackError::Bad { layer: layer.clone(), message };
    let decompressed: Box<dyn Read> = match compression {
        Compression::None => Box::new(blob),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(blob)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(blob).map_err(|e| bad(format!("zstd: {e}")))?),
    };
    let mut hashing = HashingReader::new(decompressed);
    {
        let mut archive = tar::Archive::new(&mut hashing);
        archive.set_preserve_permissions(true);
        archive.set_preserve_ownerships(true);
        archive.set_preserve_mtime(true);
        archive.set_overwrite(true);
        for entry in archive.entries().map_err(|e| bad(format!("not a tar stream: {e}")))? {
            let mut entry = entry.map_err(|e| bad(format!("reading the tar stream: {e}")))?;
            let path = entry.path().map_err(|e| bad(format!("entry name: {e}")))?.into_owned();
            let relative = clean_path(&path).ok_or_else(|| bad(format!("entry {} leaves the layer", path.display())))?;
            let Some(name) = relative.file_name().map(|n| n.to_string_lossy().into_owned()) else { continue };
            let parent = into.join(relative.parent().unwrap_or(Path::new("")));
            if name == OPAQUE {
                std::fs::create_dir_all(&parent).map_err(|e| bad(format!("{}: {e}", parent.display())))?;
                set_xattr(&parent, "trusted.overlay.opaque", b"y").map_err(|e| bad(format!("marking {} opaque: {e}", parent.display())))?;
            } else if let Some(hidden) = name.strip_prefix(WHITEOUT) {
                std::fs::create_dir_all(&parent).map_err(|e| bad(format!("{}: {e}", parent.display())))?;
                let target = parent.join(hidden);
                remove_any(&target).map_err(|e| bad(format!("{}: {e}", target.display())))?;
                mknod_whiteout(&target).map_err(|e| bad(format!("whiteout {}: {e}", target.display())))?;
            } else {
                let attributes = xattrs(&mut entry).map_err(|e| bad(format!("{}: extended attributes: {e}", path.display())))?;
                let unpacked = entry.unpack_in(into).map_err(|e| bad(format!("{}: {e}", path.display())))?;
                if !unpacked {
                    return Err(bad(format!("entry {} leaves the layer", path.display())));
                }
                if entry.header().entry_type() != tar::EntryType::Symlink {
                    let target = into.join(&relative);
                    for (name, value) in attributes {
                        set_xattr(&target, &name, &value).map_err(|e| bad(format!("{}: setting {name}: {e}", path.display())))?;
                    }
                }
            }
        }
    }
    // The digest covers the whole stream, padding after the end marker included.
    io::copy(&mut hashing, &mut io::sink()).map_err(|e| bad(format!("reading the layer's end: {e}")))?;
    let (actual, _) = hashing.finish();
    if &actual != diff_id {
        return Err(UnpackError::DiffId { layer: layer.clone(), expected: diff_id.clone(), actual });
    }
    Ok(())
}

/// The extended attributes an entry carries that are set on unpacking.
fn xattrs<R: Read>(entry: &mut tar::Entry<R>) -> io::Result<Vec<(String, Vec<u8>)>> {
    let mut attributes = Vec::new();
    if let Some(extensions) = entry.pax_extensions()? {
        for extension in extensions {
            let extension = extension?;
            let Some(name) = extension.key_bytes().strip_prefix(b"SCHILY.xattr.") else { continue };
            let name = String::from_utf8(name.to_vec()).map_err(|_| io::Error::other("an attribute name is not UTF-8"))?;
            let wanted = ["security.", "user."].iter().any(|p| name.starts_with(p)) || name == "system.posix_acl_access" || name == "system.posix_acl_default";
            if wanted && !name.contains('\0') {
                attributes.push((name, extension.value_bytes().to_vec()));
            }
        }
    }
    Ok(attributes)
}

/// The entry's path relative to the layer root, or None if it climbs out.
fn clean_path(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

fn cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::other("path has a NUL byte"))
}

fn set_xattr(path: &Path, name: &str, value: &[u8]) -> io::Result<()> {
    let path = cstring(path)?;
    let name = CString::new(name).expect("attribute names have no NUL");
    let rc = unsafe { libc::lsetxattr(path.as_ptr(), name.as_ptr(), value.as_ptr().cast(), value.len(), 0) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn mknod_whiteout(path: &Path) -> io::Result<()> {
    let c = cstring(path)?;
    if unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn remove_any(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A layer whose file has a capability, a user attribute and an overlay
    /// attribute, the way docker writes them (PAX records before the entry).
    #[test]
    fn file_capabilities_and_user_attributes_are_unpacked() {
        // cap_net_bind_service+ep: VFS_CAP_REVISION_2, effective, permitted bit 10.
        let capability: [u8; 20] = [0x01, 0x00, 0x00, 0x02, 0x00, 0x04, 0x00, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let mut builder = tar::Builder::new(Vec::new());
        builder.append_pax_extensions([("SCHILY.xattr.security.capability", &capability[..]), ("SCHILY.xattr.user.origin", &b"test"[..]), ("SCHILY.xattr.trusted.overlay.opaque", &b"y"[..])]).unwrap();
        let mut header = tar::Header::new_gnu();
        header.set_path("bin/server").unwrap();
        header.set_size(4);
        header.set_mode(0o755);
        header.set_uid(0);
        header.set_gid(0);
        header.set_cksum();
        builder.append(&header, &b"\x7fELF"[..]).unwrap();
        let layer = builder.into_inner().unwrap();
        let digest = Digest::of(&layer);
        let dir = tempfile::tempdir().unwrap();
        unpack(&layer[..], Compression::None, &digest, &digest, dir.path()).unwrap();
        let get = |name: &str| {
            let path = cstring(&dir.path().join("bin/server")).unwrap();
            let name = CString::new(name).unwrap();
            let mut value = vec![0u8; 64];
            let n = unsafe { libc::lgetxattr(path.as_ptr(), name.as_ptr(), value.as_mut_ptr().cast(), value.len()) };
            (n >= 0).then(|| value[..n as usize].to_vec())
        };
        assert_eq!(get("security.capability").as_deref(), Some(&capability[..]));
        assert_eq!(get("user.origin").as_deref(), Some(&b"test"[..]));
        assert_eq!(get("trusted.overlay.opaque"), None, "overlay's own attributes are not taken from a layer");
    }

    #[test]
    fn paths_that_climb_out_are_refused() {
        assert_eq!(clean_path(Path::new("./usr/bin/sh")), Some(PathBuf::from("usr/bin/sh")));
        assert_eq!(clean_path(Path::new("/etc/passwd")), Some(PathBuf::from("etc/passwd")));
        assert_eq!(clean_path(Path::new("a/../../etc")), None);
    }
}
