//! Reading the slot back from the device while the rest of it is still
//! being written, and checking it against the signed verity root hash.
//!
//! The writer hands each block to the device with O_DIRECT and then tells
//! [`ReadBack`] where it went; the block is read back with O_DIRECT too,
//! from the device rather than any cache of the kernel's, and its 4 KiB
//! data blocks are hashed into the verity tree (the salt is in the payload
//! header, so this can start before the superblock arrives at the end).
//! What lies past the data, the superblock and the tree as stored, is kept
//! and compared with the computed tree at the end. The slot is only called
//! good after the device has been flushed and all of this matched.
//!
//! A device or file that refuses O_DIRECT is read back after the flush
//! instead, past its dropped page cache ([`after_sync`]).

use basalt_blockio::{Block, MediumReader, Pool};
use basalt_verity::{TreeHasher, BLOCK_SIZE};
use std::fs::File;
use std::io;

pub struct ReadBack {
    file: File,
    block: Block,
    hash_offset: u64,
    tree: TreeHasher,
    /// The hash area as read back: superblock, then the tree.
    area: Vec<u8>,
    salt: Vec<u8>,
    /// Where the next block is expected: blocks come back in order.
    next: u64,
}

impl ReadBack {
    /// None where `target` cannot be read with O_DIRECT.
    pub fn open(target: &File, hash_offset: u64, bytes: u64, salt: &[u8]) -> Option<ReadBack> {
        let file = basalt_blockio::open_direct(target, false)?;
        let area = Vec::with_capacity(bytes.saturating_sub(hash_offset).min(1 << 30) as usize);
        Some(ReadBack { file, block: Pool::default().take(), hash_offset, tree: TreeHasher::new(hash_offset / BLOCK_SIZE, salt), area, salt: salt.to_vec(), next: 0 })
    }

    /// Reads back and hashes the `len` bytes just written at `at`.
    pub fn next(&mut self, at: u64, len: usize) -> io::Result<()> {
        if at != self.next {
            return Err(io::Error::other(format!("read back at {at}, expected {}", self.next)));
        }
        let n = self.block.fill_at(&self.file, len, at)?;
        if n < len {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("the slot ends at {} while reading back", at + n as u64)));
        }
        let data_end = (self.hash_offset.saturating_sub(at) as usize).min(len);
        self.tree.update(&self.block[..data_end]).map_err(io::Error::other)?;
        self.area.extend_from_slice(&self.block[data_end..len]);
        self.next += len as u64;
        Ok(())
    }

    /// After the device was flushed: the stored superblock and tree must be
    /// the ones computed from the data, and the root the signed one.
    pub fn finish(self, expected_root: &[u8; 32]) -> Result<(), String> {
        let (data_blocks, salt, _) = basalt_verity::read_superblock(&self.area).map_err(|e| e.to_string())?;
        if data_blocks != self.hash_offset / BLOCK_SIZE || salt != self.salt {
            return Err(format!(
                "the verity superblock says {data_blocks} data blocks and salt {}, the payload header {} and {}",
                basalt_verity::hex(&salt),
                self.hash_offset / BLOCK_SIZE,
                basalt_verity::hex(&self.salt)
            ));
        }
        let (levels, root) = self.tree.finish().map_err(|e| e.to_string())?;
        basalt_verity::check_hash_area(&self.area, &levels, &root, expected_root).map_err(|e| e.to_string())
    }
}

/// The slot read back as a whole after the flush, for targets without
/// O_DIRECT: their page cache is dropped first.
pub fn after_sync(target: &File, hash_offset: u64, expected_root: &[u8; 32]) -> Result<(), String> {
    let mut dev = MediumReader::open(target).map_err(|e| e.to_string())?;
    basalt_verity::verify(&mut dev, hash_offset, expected_root).map(|_| ()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A slot image of `blocks` data blocks with its verity tree, in a file
    /// twice as large (the partition); its hash offset, size and root.
    fn slot(dir: &std::path::Path, blocks: u64) -> (std::path::PathBuf, u64, u64, [u8; 32]) {
        let (image, hash_offset, root) = crate::apply::tests::slot_image(dir, blocks);
        let path = dir.join("slot");
        std::fs::write(&path, &image).unwrap();
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(2 * image.len() as u64).unwrap();
        (path, hash_offset, image.len() as u64, basalt_verity::parse_hex(&root).unwrap().try_into().unwrap())
    }

    fn read_back(path: &std::path::Path, hash_offset: u64, bytes: u64, salt: &[u8], root: &[u8; 32]) -> Result<(), String> {
        let f = File::open(path).unwrap();
        let mut rb = ReadBack::open(&f, hash_offset, bytes, salt).expect("the test's filesystem takes O_DIRECT");
        let mut at = 0;
        while at < bytes {
            let len = (bytes - at).min(basalt_blockio::CHUNK as u64);
            rb.next(at, len as usize).map_err(|e| e.to_string())?;
            at += len;
        }
        rb.finish(root)
    }

    fn flip(path: &std::path::Path, at: u64) {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
        let mut b = [0u8];
        f.read_exact_at(&mut b, at).unwrap();
        f.write_all_at(&[b[0] ^ 0x10], at).unwrap();
    }

    #[test]
    fn a_slot_read_back_in_pieces_matches_its_root() {
        let d = tempfile::tempdir().unwrap();
        let (path, hash_offset, bytes, root) = slot(d.path(), 2000);
        read_back(&path, hash_offset, bytes, b"salt", &root).unwrap();
        after_sync(&File::open(&path).unwrap(), hash_offset, &root).unwrap();
    }

    #[test]
    fn what_the_device_holds_is_checked_not_what_was_sent() {
        let d = tempfile::tempdir().unwrap();
        let (path, hash_offset, bytes, root) = slot(d.path(), 2000);
        let e = read_back(&path, hash_offset, bytes, b"salt", &[9; 32]).unwrap_err();
        assert!(e.contains("root hash mismatch"), "another root: {e}");
        let e = read_back(&path, hash_offset, bytes, b"other", &root).unwrap_err();
        assert!(e.contains("the verity superblock says 2000 data blocks and salt"), "another salt: {e}");
        flip(&path, hash_offset + BLOCK_SIZE + 40);
        let e = read_back(&path, hash_offset, bytes, b"salt", &root).unwrap_err();
        assert!(e.contains("stored hash tree differs"), "a changed tree: {e}");
        flip(&path, hash_offset + BLOCK_SIZE + 40);
        flip(&path, 5 * BLOCK_SIZE + 7);
        let e = read_back(&path, hash_offset, bytes, b"salt", &root).unwrap_err();
        assert!(e.contains("root hash mismatch"), "a changed data block: {e}");
        assert!(after_sync(&File::open(&path).unwrap(), hash_offset, &root).is_err());
    }
}
