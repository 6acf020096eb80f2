//! Unpacking a layer (a tar stream, maybe gzip or zstd compressed) into a
//! directory overlayfs can use as a lower layer: OCI whiteouts (`.wh.NAME`)
//! become overlay whiteouts (a 0:0 character device), opaque markers
//! (`.wh..wh..opq`) become the `trusted.overlay.opaque` attribute. The
//! uncompressed stream is hashed on the way and must match the image
//! config's diff_id. Entries that would land outside the directory are
//! refused (the tar crate checks every path and symlinked parent).

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
                let unpacked = entry.unpack_in(into).map_err(|e| bad(format!("{}: {e}", path.display())))?;
                if !unpacked {
                    return Err(bad(format!("entry {} leaves the layer", path.display())));
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
    if unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o000, 0) } != 0 {
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

    #[test]
    fn paths_that_climb_out_are_refused() {
        assert_eq!(clean_path(Path::new("./usr/bin/sh")), Some(PathBuf::from("usr/bin/sh")));
        assert_eq!(clean_path(Path::new("/etc/passwd")), Some(PathBuf::from("etc/passwd")));
        assert_eq!(clean_path(Path::new("a/../../etc")), None);
    }
}
