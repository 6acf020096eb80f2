//! The content store on ROOT, shared by every image:
//!
//! ```text
//! blobs/sha256/HEX        manifests, configs and compressed layers, verified
//! ingest/HEX.partial      downloads in progress (kept so a pull can resume)
//! layers/sha256/DIFFID/   unpacked layers, named by their uncompressed digest
//! images.json             reference -> manifest digest
//! ```
//!
//! A blob is written under `ingest/`, checked against its digest and size,
//! synced and only then renamed into `blobs/`; a layer is unpacked into a
//! `layers/.tmp-*` directory and renamed when its diff_id matched. So a name
//! under `blobs/` or `layers/` always means complete, verified content, and a
//! crash leaves only leftovers that `prune` (or the next pull) clears.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::digest::{Digest, HashingWriter};
use crate::manifest::{self, Compression, ImageConfig, Manifest};

pub const DEFAULT_ROOT: &str = "/var/lib/basalt/runtime";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("blob {digest}: downloaded content has digest {actual}; refused")]
    DigestMismatch { digest: Digest, actual: Digest },
    #[error("blob {digest}: truncated, got {got} of {expected} bytes")]
    Truncated { digest: Digest, got: u64, expected: u64 },
    #[error("blob {digest}: longer than the {expected} bytes its descriptor says; refused")]
    TooLong { digest: Digest, expected: u64 },
    #[error("{0}")]
    Fetch(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("the store at {0} is in use by another process")]
    Locked(PathBuf),
    #[error("{0}")]
    Corrupt(String),
}

fn io_error(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_path_buf(), source }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub manifest: Digest,
    /// Seconds since the epoch.
    pub pulled: u64,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Index {
    images: BTreeMap<String, ImageRecord>,
}

/// What one blob download did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ingested {
    /// Bytes fetched from the network this time.
    pub downloaded: u64,
    /// Bytes of an earlier, interrupted download that were reused.
    pub resumed: u64,
    /// The blob was in the store already.
    pub present: bool,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pruned {
    pub blobs: Vec<Digest>,
    pub layers: Vec<Digest>,
    pub bytes: u64,
}

pub struct Store {
    root: PathBuf,
    _lock: File,
}

/// An image the store holds completely, read back.
#[derive(Debug, Clone)]
pub struct StoredImage {
    pub reference: String,
    pub manifest_digest: Digest,
    pub manifest: Manifest,
    pub config: ImageConfig,
    pub pulled: u64,
}

impl StoredImage {
    pub fn size(&self) -> u64 {
        self.manifest.layers.iter().map(|l| l.size).sum::<u64>() + self.manifest.config.size
    }
}

impl Store {
    /// Opens (creating if needed) the store at `root`; one process at a time.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        for dir in ["blobs/sha256", "ingest", "layers/sha256", "layers-userns/sha256"] {
            let path = root.join(dir);
            fs::create_dir_all(&path).map_err(io_error(&path))?;
        }
        let lock_path = root.join("lock");
        let lock = OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).map_err(io_error(&lock_path))?;
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            return Err(StoreError::Locked(root.to_path_buf()));
        }
        Ok(Store { root: root.to_path_buf(), _lock: lock })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    fn partial_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("ingest").join(format!("{}.partial", digest.hex()))
    }

    pub fn layer_path(&self, diff_id: &Digest) -> PathBuf {
        self.root.join("layers/sha256").join(diff_id.hex())
    }

    /// The layer with its owners shifted into the user namespace range
    /// (linux/userns.rs), made from the unpacked layer the first time a
    /// remapped container needs it: copied under a temporary name, synced,
    /// then renamed, so a name there always means a complete copy.
    pub fn shifted_layer(&self, diff_id: &Digest) -> Result<PathBuf, StoreError> {
        let path = self.root.join("layers-userns/sha256").join(diff_id.hex());
        if path.is_dir() {
            return Ok(path);
        }
        let temporary = self.root.join("layers-userns").join(format!(".tmp-{}-{}", diff_id.hex(), std::process::id()));
        let _ = remove_tree(&temporary);
        let copied = crate::linux::userns::copy_shifted(&self.layer_path(diff_id), &temporary).and_then(|()| {
            // SAFETY: syncfs on a descriptor this block opened and closes.
            let dir = File::open(&temporary)?;
            if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
        if let Err(e) = copied {
            let _ = remove_tree(&temporary);
            return Err(io_error(&temporary)(e));
        }
        fs::rename(&temporary, &path).map_err(io_error(&path))?;
        sync_dir(path.parent().unwrap_or(Path::new(".")))?;
        Ok(path)
    }

    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>, StoreError> {
        let path = self.blob_path(digest);
        fs::read(&path).map_err(io_error(&path))
    }

    /// Stores bytes already in memory (a manifest) after checking their digest.
    pub fn put_bytes(&self, digest: &Digest, bytes: &[u8]) -> Result<(), StoreError> {
        let actual = Digest::of(bytes);
        if &actual != digest {
            return Err(StoreError::DigestMismatch { digest: digest.clone(), actual });
        }
        if self.has_blob(digest) {
            return Ok(());
        }
        let partial = self.partial_path(digest);
        let mut file = File::create(&partial).map_err(io_error(&partial))?;
        file.write_all(bytes).and_then(|_| file.sync_all()).map_err(io_error(&partial))?;
        self.publish(&partial, &self.blob_path(digest))
    }

    fn publish(&self, from: &Path, to: &Path) -> Result<(), StoreError> {
        fs::rename(from, to).map_err(io_error(to))?;
        sync_dir(to.parent().expect("store paths have parents"))
    }

    /// Downloads a blob of `size` bytes with `digest`: `fetch(offset)` gives
    /// the bytes from `offset` on (or from 0, saying so). An interrupted
    /// download's bytes are kept and resumed from; bytes that fail the digest
    /// are thrown away.
    pub fn ingest(&self, digest: &Digest, size: u64, mut fetch: impl FnMut(u64) -> Result<(u64, Box<dyn Read + Send>), String>) -> Result<Ingested, StoreError> {
        if self.has_blob(digest) {
            return Ok(Ingested { present: true, ..Ingested::default() });
        }
        let partial = self.partial_path(digest);
        let have = fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
        let (mut offset, mut stream) = if have > 0 && have < size {
            match fetch(have) {
                Ok(answer) => answer,
                // e.g. HTTP 416: the registry cannot serve the rest; start over.
                Err(_) => fetch(0).map_err(StoreError::Fetch)?,
            }
        } else {
            fetch(0).map_err(StoreError::Fetch)?
        };
        if offset > 0 && offset != have {
            (offset, stream) = fetch(0).map_err(StoreError::Fetch)?;
        }
        let file = OpenOptions::new().create(true).append(false).write(true).read(true).truncate(offset == 0).open(&partial).map_err(io_error(&partial))?;
        let mut writer = HashingWriter::new(io::BufWriter::with_capacity(1 << 20, &file));
        let resumed = if offset > 0 {
            let earlier = File::open(&partial).map_err(io_error(&partial))?;
            writer.absorb(earlier.take(offset)).map_err(io_error(&partial))?
        } else {
            0
        };
        {
            let mut positioned = &file;
            use std::io::Seek;
            positioned.seek(io::SeekFrom::Start(offset)).map_err(io_error(&partial))?;
        }
        // One byte more than expected tells a too-long blob from a complete one.
        let copied = io::copy(&mut (&mut stream).take(size - offset + 1), &mut writer);
        let (buffered, actual, total) = writer.finish();
        let flushed = buffered.into_inner().map_err(|e| e.into_error());
        let result = copied.and(flushed.map(|_| ()));
        if let Err(e) = result {
            // Keep what arrived: the next pull resumes from it.
            return Err(StoreError::Fetch(format!("blob {digest}: download interrupted after {} of {size} bytes: {e}", fs::metadata(&partial).map(|m| m.len()).unwrap_or(0))));
        }
        if total > size {
            let _ = fs::remove_file(&partial);
            return Err(StoreError::TooLong { digest: digest.clone(), expected: size });
        }
        if total < size {
            return Err(StoreError::Truncated { digest: digest.clone(), got: total, expected: size });
        }
        if &actual != digest {
            let _ = fs::remove_file(&partial);
            return Err(StoreError::DigestMismatch { digest: digest.clone(), actual });
        }
        file.sync_all().map_err(io_error(&partial))?;
        drop(file);
        self.publish(&partial, &self.blob_path(digest))?;
        Ok(Ingested { downloaded: size - resumed, resumed, present: false })
    }

    /// Unpacks a stored layer blob unless its directory exists already.
    /// Returns true if it was unpacked now, false if reused.
    pub fn unpack_layer(&self, blob: &Digest, compression: Compression, diff_id: &Digest) -> Result<bool, StoreError> {
        let target = self.layer_path(diff_id);
        if target.is_dir() {
            return Ok(false);
        }
        let temporary = self.root.join("layers").join(format!(".tmp-{}-{}", diff_id.hex(), std::process::id()));
        let _ = remove_tree(&temporary);
        fs::create_dir(&temporary).map_err(io_error(&temporary))?;
        let source = self.blob_path(blob);
        let file = File::open(&source).map_err(io_error(&source))?;
        if let Err(e) = crate::unpack::unpack(io::BufReader::with_capacity(1 << 20, file), compression, blob, diff_id, &temporary) {
            let _ = remove_tree(&temporary);
            return Err(StoreError::Corrupt(e.to_string()));
        }
        let dir = File::open(&temporary).map_err(io_error(&temporary))?;
        unsafe { libc::syncfs(dir.as_raw_fd()) };
        fs::rename(&temporary, &target).map_err(io_error(&target))?;
        sync_dir(&self.root.join("layers/sha256"))?;
        Ok(true)
    }

    fn load_index(&self) -> Result<Index, StoreError> {
        let path = self.root.join("images.json");
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Index::default()),
            Err(e) => Err(io_error(&path)(e)),
        }
    }

    fn save_index(&self, index: &Index) -> Result<(), StoreError> {
        let path = self.root.join("images.json");
        write_atomically(&path, &serde_json::to_vec_pretty(index).expect("the index serialises"))
    }

    /// Records that `reference` names the image with this manifest.
    pub fn tag(&self, reference: &str, manifest: &Digest, pulled: u64) -> Result<(), StoreError> {
        let mut index = self.load_index()?;
        index.images.insert(reference.to_string(), ImageRecord { manifest: manifest.clone(), pulled });
        self.save_index(&index)
    }

    pub fn untag(&self, reference: &str) -> Result<bool, StoreError> {
        let mut index = self.load_index()?;
        let removed = index.images.remove(reference).is_some();
        if removed {
            self.save_index(&index)?;
        }
        Ok(removed)
    }

    pub fn references(&self) -> Result<BTreeMap<String, ImageRecord>, StoreError> {
        Ok(self.load_index()?.images)
    }

    /// The manifest and config of a stored image, checked to be complete.
    pub fn image_by_digest(&self, reference: &str, manifest_digest: &Digest, pulled: u64) -> Result<StoredImage, StoreError> {
        let bytes = self.read_blob(manifest_digest)?;
        let manifest = match manifest::parse(&bytes, None).map_err(|e| StoreError::Corrupt(format!("{manifest_digest}: {e}")))? {
            manifest::Parsed::Manifest(m) => m,
            manifest::Parsed::Index(_) => return Err(StoreError::Corrupt(format!("{manifest_digest} is an index, not an image manifest"))),
        };
        let config_bytes = self.read_blob(&manifest.config.digest)?;
        let config = manifest::parse_config(&config_bytes, &manifest).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        Ok(StoredImage { reference: reference.to_string(), manifest_digest: manifest_digest.clone(), manifest, config, pulled })
    }

    pub fn image(&self, reference: &str) -> Result<Option<StoredImage>, StoreError> {
        match self.references()?.get(reference) {
            Some(record) => self.image_by_digest(reference, &record.manifest, record.pulled).map(Some),
            None => Ok(None),
        }
    }

    /// Removes every blob and unpacked layer that neither a tagged image nor
    /// one of `also_keep` (manifests of images containers still use) needs,
    /// and any leftovers of interrupted work.
    pub fn prune(&self, also_keep: &[Digest]) -> Result<Pruned, StoreError> {
        let mut keep_blobs = BTreeSet::new();
        let mut keep_layers = BTreeSet::new();
        let manifests: Vec<Digest> = self.references()?.into_values().map(|r| r.manifest).chain(also_keep.iter().cloned()).collect();
        for digest in manifests {
            keep_blobs.insert(digest.clone());
            let Ok(image) = self.image_by_digest("", &digest, 0) else { continue };
            keep_blobs.insert(image.manifest.config.digest.clone());
            keep_blobs.extend(image.manifest.layers.iter().map(|l| l.digest.clone()));
            keep_layers.extend(image.config.rootfs.diff_ids.iter().cloned());
        }
        let mut pruned = Pruned::default();
        let mut shifted = Vec::new();
        for (dir, keep, list) in [("blobs/sha256", &keep_blobs, &mut pruned.blobs), ("layers/sha256", &keep_layers, &mut pruned.layers), ("layers-userns/sha256", &keep_layers, &mut shifted)] {
            let path = self.root.join(dir);
            for entry in fs::read_dir(&path).map_err(io_error(&path))?.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let digest = Digest::parse(&format!("sha256:{name}")).ok();
                if digest.as_ref().is_some_and(|d| keep.contains(d)) {
                    continue;
                }
                pruned.bytes += tree_bytes(&entry.path());
                remove_tree(&entry.path()).map_err(io_error(&entry.path()))?;
                list.extend(digest);
            }
        }
        for dir in ["ingest", "layers", "layers-userns"] {
            let path = self.root.join(dir);
            for entry in fs::read_dir(&path).map_err(io_error(&path))?.flatten() {
                if dir == "ingest" || entry.file_name().to_string_lossy().starts_with(".tmp-") {
                    pruned.bytes += tree_bytes(&entry.path());
                    remove_tree(&entry.path()).map_err(io_error(&entry.path()))?;
                }
            }
        }
        Ok(pruned)
    }
}

pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let temporary = path.with_extension(format!("tmp-{}", std::process::id()));
    let mut file = File::create(&temporary).map_err(io_error(&temporary))?;
    file.write_all(bytes).and_then(|_| file.sync_all()).map_err(io_error(&temporary))?;
    fs::rename(&temporary, path).map_err(io_error(path))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_error(dir))
}

pub fn remove_tree(path: &Path) -> io::Result<()> {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn tree_bytes(path: &Path) -> u64 {
    match fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => fs::read_dir(path).map(|rd| rd.flatten().map(|e| tree_bytes(&e.path())).sum()).unwrap_or(0),
        Ok(meta) => meta.len(),
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(bytes: &'static [u8]) -> Box<dyn Read + Send> {
        Box::new(bytes)
    }

    #[test]
    fn a_blob_appears_only_when_verified() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let good = Digest::of(b"hello world");
        // Wrong bytes: refused, nothing visible, nothing kept.
        let err = store.ingest(&good, 11, |_| Ok((0, reader(b"hello w0rld")))).unwrap_err();
        assert!(matches!(err, StoreError::DigestMismatch { .. }), "{err}");
        assert!(!store.has_blob(&good));
        assert!(!store.partial_path(&good).exists());
        // Too short: refused, the bytes kept for a resume.
        let err = store.ingest(&good, 11, |_| Ok((0, reader(b"hello")))).unwrap_err();
        assert_eq!(err.to_string(), format!("blob {good}: truncated, got 5 of 11 bytes"));
        assert!(!store.has_blob(&good));
        // The resume asks for offset 5 and reuses the five bytes.
        let mut asked = Vec::new();
        let done = store
            .ingest(&good, 11, |offset| {
                asked.push(offset);
                Ok((offset, reader(&b"hello world"[offset as usize..])))
            })
            .unwrap();
        assert_eq!(asked, [5]);
        assert_eq!(done, Ingested { downloaded: 6, resumed: 5, present: false });
        assert_eq!(store.read_blob(&good).unwrap(), b"hello world");
        // Too long: refused.
        let other = Digest::of(b"abc");
        assert!(matches!(store.ingest(&other, 3, |_| Ok((0, reader(b"abcd")))).unwrap_err(), StoreError::TooLong { .. }));
        // A second open of the same store is refused while the first lives.
        assert!(matches!(Store::open(dir.path()), Err(StoreError::Locked(_))));
    }

    #[test]
    fn a_server_that_ignores_range_restarts_the_download() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let good = Digest::of(b"hello world");
        fs::write(store.partial_path(&good), b"hellX").unwrap();
        let done = store.ingest(&good, 11, |_| Ok((0, reader(b"hello world")))).unwrap();
        assert_eq!(done, Ingested { downloaded: 11, resumed: 0, present: false });
        assert!(store.has_blob(&good));
    }
}
