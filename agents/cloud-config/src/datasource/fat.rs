//! Reading files from a vfat filesystem on a device or image without
//! mounting it, through the fatfs crate over a read-only handle.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

use super::{DatasourceError, READ_LIMIT};

/// A file opened for reading that refuses writes, so that nothing fatfs does
/// (it may want to clear a dirty flag) can change the user's disk.
struct ReadOnly(File);

impl Read for ReadOnly {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Seek for ReadOnly {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.0.seek(pos)
    }
}

impl Write for ReadOnly {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(io::ErrorKind::PermissionDenied, "datasource filesystems are read only"))
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A boot sector with the signature and a FAT type string where FAT12/16
/// or FAT32 keep it.
pub fn looks_like_fat(boot: &[u8; 512]) -> bool {
    boot[510] == 0x55 && boot[511] == 0xaa && (boot[0x36..0x39] == *b"FAT" || boot[0x52..0x57] == *b"FAT32")
}

fn open(device: &Path) -> Result<fatfs::FileSystem<ReadOnly>, DatasourceError> {
    let file = File::open(device).map_err(|source| DatasourceError::Io { path: device.into(), source })?;
    fatfs::FileSystem::new(ReadOnly(file), fatfs::FsOptions::new()).map_err(|error| DatasourceError::Filesystem { device: device.into(), message: format!("not a readable vfat filesystem: {error}") })
}

/// The volume label: the root directory's label entry when there is one
/// (what blkid reports), else the boot sector's.
pub fn label(device: &Path) -> Result<String, DatasourceError> {
    let filesystem = open(device)?;
    let from_root = filesystem.read_volume_label_from_root_dir().ok().flatten();
    Ok(from_root.unwrap_or_else(|| filesystem.volume_label()).trim_end().to_string())
}

/// The bytes of `path` (`/`-separated, relative to the root; FAT names
/// compare case-insensitively), or `None` if there is no such file.
pub fn read_file(device: &Path, path: &str) -> Result<Option<Vec<u8>>, DatasourceError> {
    let filesystem = open(device)?;
    let root = filesystem.root_dir();
    let mut file = match root.open_file(path.trim_start_matches('/')) {
        Ok(file) => file,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => {
            return Err(DatasourceError::Filesystem { device: device.into(), message: format!("{path}: {error}") });
        }
    };
    let mut bytes = Vec::new();
    (&mut file).take(READ_LIMIT as u64 + 1).read_to_end(&mut bytes).map_err(|error| DatasourceError::Filesystem { device: device.into(), message: format!("{path}: {error}") })?;
    if bytes.len() > READ_LIMIT {
        return Err(DatasourceError::TooLarge { what: format!("{}:{path}", device.display()) });
    }
    Ok(Some(bytes))
}

#[cfg(test)]
mod tests {
    use super::super::testenv::Scratch;
    use super::*;

    #[test]
    fn files_are_read_without_mounting_and_the_image_is_unchanged() {
        let scratch = Scratch::new();
        let image = scratch.vfat("OEM", &[("cloud-config.yml", b"#cloud-config\nhostname: oem\n"), ("sub/dir/file.txt", b"deep")]);
        let before = std::fs::read(&image).unwrap();
        assert_eq!(label(&image).unwrap(), "OEM");
        assert_eq!(read_file(&image, "cloud-config.yml").unwrap().unwrap(), b"#cloud-config\nhostname: oem\n");
        assert_eq!(read_file(&image, "CLOUD-CONFIG.YML").unwrap().unwrap().len(), 28);
        assert_eq!(read_file(&image, "sub/dir/file.txt").unwrap().unwrap(), b"deep");
        assert_eq!(read_file(&image, "missing").unwrap(), None);
        assert_eq!(std::fs::read(&image).unwrap(), before);
    }
}
