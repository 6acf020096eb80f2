//! The USR slot: squashfs of the /usr tree, padded to the 4096-byte verity
//! block, followed by its dm-verity superblock and hash tree.

use crate::tree::{Node, Tree};
use anyhow::{bail, Context, Result};
use backhand::compression::Compressor;
use backhand::{FilesystemCompressor, FilesystemWriter, NodeHeader};
use basalt_verity::VerityParams;
use std::fs::File;
use std::io::{BufWriter, Cursor, Seek, SeekFrom, Write};
use std::path::Path;

/// Sizes of what was written, for the build report and `make bench`.
pub struct UsrImage {
    pub fs_bytes: u64,
    pub verity: VerityParams,
}

impl UsrImage {
    pub fn total_bytes(&self) -> u64 {
        self.fs_bytes + self.verity.hash_area_size()
    }
}

pub fn write(tree: &Tree, mtime: u32, salt: &[u8], uuid: [u8; 16], path: &Path, slot_bytes: u64) -> Result<UsrImage> {
    let mut fs = FilesystemWriter::default();
    fs.set_time(mtime);
    fs.set_root_mode(0o755);
    fs.set_root_uid(0);
    fs.set_root_gid(0);
    fs.set_block_size(128 * 1024);
    fs.set_compressor(FilesystemCompressor::new(Compressor::Zstd, None)?);
    fs.set_no_padding();
    let header = |mode: u32| NodeHeader::new((mode & 0o7777) as u16, 0, 0, mtime);
    for (path, node) in &tree.nodes {
        let Some(rel) = path.strip_prefix("/usr/") else { continue };
        match node {
            Node::Dir { mode } => fs.push_dir(rel, header(*mode))?,
            Node::File { mode, data } => fs.push_file(Cursor::new(data.clone()), rel, header(*mode))?,
            Node::Symlink { target } => fs.push_symlink(target, rel, header(0o777))?,
        }
    }
    let file = File::options().read(true).write(true).create(true).truncate(true).open(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = BufWriter::with_capacity(4 << 20, file);
    let (_, written) = fs.write(&mut out).context("writing squashfs")?;
    out.seek(SeekFrom::Start(written))?;
    let fs_bytes = written.div_ceil(basalt_verity::BLOCK_SIZE) * basalt_verity::BLOCK_SIZE;
    out.write_all(&vec![0u8; (fs_bytes - written) as usize])?;
    let mut file = out.into_inner().map_err(|e| e.into_error())?;
    let verity = basalt_verity::format(&mut file, fs_bytes, salt, uuid).context("computing dm-verity tree")?;
    let image = UsrImage { fs_bytes, verity };
    if image.total_bytes() > slot_bytes {
        bail!("/usr needs {} MiB with its hash tree, but the USR slot is {} MiB; raise partitions.usr_mib in the spec", image.total_bytes().div_ceil(1 << 20), slot_bytes >> 20);
    }
    file.sync_all()?;
    Ok(image)
}
