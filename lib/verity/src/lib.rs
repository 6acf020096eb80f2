//! dm-verity hash trees, written the way `veritysetup format` writes them
//! (format version 1, sha256, 4096-byte data and hash blocks, salted), so the
//! kernel's dm-verity target and `veritysetup verify` both accept them.
//!
//! Layout of the hash area (what follows the data, at `hash_offset`):
//! one 4096-byte block holding the superblock, then the tree levels, the top
//! level (one block) first and the level hashing the data blocks last. This is
//! the order the kernel computes in `verity_ctr`: it walks levels from the top
//! down and lays them out one after another from `hash_start`.

use sha2::{Digest, Sha256};
use std::io::{self, Read, Seek, SeekFrom, Write};

pub const BLOCK_SIZE: u64 = 4096;
const HASH_SIZE: usize = 32;
const HASHES_PER_BLOCK: u64 = BLOCK_SIZE / HASH_SIZE as u64;
const SUPERBLOCK_SIGNATURE: &[u8; 8] = b"verity\0\0";

#[derive(Debug, thiserror::Error)]
pub enum VerityError {
    #[error("data area is {0} bytes, not a multiple of the 4096-byte verity block")]
    Unaligned(u64),
    #[error("data area is empty")]
    Empty,
    #[error("salt is {0} bytes; dm-verity takes at most 256")]
    SaltTooLong(usize),
    #[error("not a verity superblock (signature {0:02x?})")]
    BadSignature([u8; 8]),
    #[error("unsupported verity superblock: {0}")]
    Unsupported(String),
    #[error("verity root hash mismatch: expected {expected}, computed {computed}")]
    RootHashMismatch { expected: String, computed: String },
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// What a verity device needs besides its two block devices: everything that
/// goes into the kernel table and the veritysetup command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerityParams {
    pub data_blocks: u64,
    /// Byte offset of the superblock; the tree starts one block later.
    pub hash_offset: u64,
    pub salt: Vec<u8>,
    pub root_hash: [u8; 32],
    /// The UUID stored in the superblock (veritysetup prints it; the kernel ignores it).
    pub uuid: [u8; 16],
}

impl VerityParams {
    pub fn root_hash_hex(&self) -> String {
        hex(&self.root_hash)
    }
    pub fn salt_hex(&self) -> String {
        hex(&self.salt)
    }
    /// Size of superblock plus tree, in bytes.
    pub fn hash_area_size(&self) -> u64 {
        BLOCK_SIZE * (1 + tree_blocks(self.data_blocks))
    }
    /// The dm table line for a device whose data and hash tree live on the
    /// same block device `dev` (as in a basalt USR slot).
    pub fn dm_table(&self, dev: &str, options: &[&str]) -> String {
        let mut t = format!(
            "0 {} verity 1 {dev} {dev} {bs} {bs} {} {} sha256 {} {}",
            self.data_blocks * (BLOCK_SIZE / 512),
            self.data_blocks,
            self.hash_offset / BLOCK_SIZE + 1,
            self.root_hash_hex(),
            if self.salt.is_empty() { "-".to_string() } else { self.salt_hex() },
            bs = BLOCK_SIZE,
        );
        if !options.is_empty() {
            t.push_str(&format!(" {}", options.len()));
            for o in options {
                t.push(' ');
                t.push_str(o);
            }
        }
        t
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn parse_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || !s.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok()).collect()
}

/// Number of hash blocks in each level, top level first.
/// A single data block needs no tree: its own hash is the root (as in the
/// kernel, whose level count is zero then).
fn level_sizes(data_blocks: u64) -> Vec<u64> {
    let mut sizes = Vec::new();
    let mut n = data_blocks;
    while n > 1 {
        n = n.div_ceil(HASHES_PER_BLOCK);
        sizes.push(n);
    }
    sizes.reverse();
    sizes
}

/// Hash blocks in the whole tree (not counting the superblock).
pub fn tree_blocks(data_blocks: u64) -> u64 {
    level_sizes(data_blocks).iter().sum()
}

fn salted_hash(salt: &[u8], block: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(block);
    h.finalize().into()
}

fn superblock(data_blocks: u64, salt: &[u8], uuid: &[u8; 16]) -> Vec<u8> {
    let mut sb = vec![0u8; BLOCK_SIZE as usize];
    sb[0..8].copy_from_slice(SUPERBLOCK_SIGNATURE);
    sb[8..12].copy_from_slice(&1u32.to_le_bytes()); // superblock version
    sb[12..16].copy_from_slice(&1u32.to_le_bytes()); // hash type: normal
    sb[16..32].copy_from_slice(uuid);
    sb[32..38].copy_from_slice(b"sha256");
    sb[64..68].copy_from_slice(&(BLOCK_SIZE as u32).to_le_bytes());
    sb[68..72].copy_from_slice(&(BLOCK_SIZE as u32).to_le_bytes());
    sb[72..80].copy_from_slice(&data_blocks.to_le_bytes());
    sb[80..82].copy_from_slice(&(salt.len() as u16).to_le_bytes());
    sb[88..88 + salt.len()].copy_from_slice(salt);
    sb
}

/// Reads a superblock written by [`format`] or by `veritysetup format`.
pub fn read_superblock(block: &[u8]) -> Result<(u64, Vec<u8>, [u8; 16]), VerityError> {
    if block.len() < 512 {
        return Err(VerityError::Unsupported("superblock shorter than 512 bytes".into()));
    }
    let sig: [u8; 8] = block[0..8].try_into().unwrap();
    if &sig != SUPERBLOCK_SIGNATURE {
        return Err(VerityError::BadSignature(sig));
    }
    let u32_at = |o: usize| u32::from_le_bytes(block[o..o + 4].try_into().unwrap());
    if u32_at(8) != 1 || u32_at(12) != 1 {
        return Err(VerityError::Unsupported(format!("version {} hash type {}", u32_at(8), u32_at(12))));
    }
    let alg_end = block[32..64].iter().position(|&b| b == 0).unwrap_or(32);
    if &block[32..32 + alg_end] != b"sha256" {
        return Err(VerityError::Unsupported("hash algorithm is not sha256".into()));
    }
    if u32_at(64) as u64 != BLOCK_SIZE || u32_at(68) as u64 != BLOCK_SIZE {
        return Err(VerityError::Unsupported("block sizes other than 4096".into()));
    }
    let data_blocks = u64::from_le_bytes(block[72..80].try_into().unwrap());
    let salt_len = u16::from_le_bytes(block[80..82].try_into().unwrap()) as usize;
    if salt_len > 256 {
        return Err(VerityError::SaltTooLong(salt_len));
    }
    let uuid: [u8; 16] = block[16..32].try_into().unwrap();
    Ok((data_blocks, block[88..88 + salt_len].to_vec(), uuid))
}

/// Computes the hash tree over the first `data_size` bytes of `dev` and
/// writes superblock and tree right after them (at `data_size`), the layout of
/// `veritysetup format --hash-offset=<data_size> DEV DEV`.
pub fn format<F: Read + Write + Seek>(dev: &mut F, data_size: u64, salt: &[u8], uuid: [u8; 16]) -> Result<VerityParams, VerityError> {
    if data_size == 0 {
        return Err(VerityError::Empty);
    }
    if !data_size.is_multiple_of(BLOCK_SIZE) {
        return Err(VerityError::Unaligned(data_size));
    }
    if salt.len() > 256 {
        return Err(VerityError::SaltTooLong(salt.len()));
    }
    let data_blocks = data_size / BLOCK_SIZE;
    let (levels, root_hash) = compute_tree(dev, data_blocks, salt)?;
    dev.seek(SeekFrom::Start(data_size))?;
    dev.write_all(&superblock(data_blocks, salt, &uuid))?;
    for level in &levels {
        dev.write_all(level)?;
    }
    Ok(VerityParams { data_blocks, hash_offset: data_size, salt: salt.to_vec(), root_hash, uuid })
}

/// Hashes `data_blocks` blocks from the start of `dev` and returns the tree
/// levels (top first) and the root hash.
fn compute_tree<R: Read + Seek>(dev: &mut R, data_blocks: u64, salt: &[u8]) -> Result<(Vec<Vec<u8>>, [u8; 32]), VerityError> {
    dev.seek(SeekFrom::Start(0))?;
    let mut reader = io::BufReader::with_capacity(1 << 20, dev);
    let mut tree = TreeHasher::new(data_blocks, salt);
    let mut buf = vec![0u8; 1 << 20];
    let mut left = data_blocks * BLOCK_SIZE;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        reader.read_exact(&mut buf[..n])?;
        tree.update(&buf[..n])?;
        left -= n as u64;
    }
    tree.finish()
}

/// The hash tree of data fed to it block by block, in order: for hashing
/// data while it streams past (the update agent reads a slot back while it
/// is still writing the rest of it).
pub struct TreeHasher {
    salt: Vec<u8>,
    data_blocks: u64,
    fed: u64,
    /// Hashes of the data blocks so far: the bottom level.
    bottom: Vec<u8>,
}

impl TreeHasher {
    pub fn new(data_blocks: u64, salt: &[u8]) -> TreeHasher {
        TreeHasher { salt: salt.to_vec(), data_blocks, fed: 0, bottom: Vec::with_capacity((data_blocks.div_ceil(HASHES_PER_BLOCK) * BLOCK_SIZE) as usize) }
    }

    /// Hashes the next data blocks; `data` is a whole number of blocks.
    pub fn update(&mut self, data: &[u8]) -> Result<(), VerityError> {
        if !(data.len() as u64).is_multiple_of(BLOCK_SIZE) {
            return Err(VerityError::Unaligned(data.len() as u64));
        }
        let blocks = data.len() as u64 / BLOCK_SIZE;
        if self.fed + blocks > self.data_blocks {
            return Err(VerityError::Unsupported(format!("{} data blocks given to a tree of {}", self.fed + blocks, self.data_blocks)));
        }
        for block in data.chunks(BLOCK_SIZE as usize) {
            self.bottom.extend_from_slice(&salted_hash(&self.salt, block));
        }
        self.fed += blocks;
        Ok(())
    }

    /// The tree levels (top first) and the root hash, once every data block
    /// was given.
    pub fn finish(self) -> Result<(Vec<Vec<u8>>, [u8; 32]), VerityError> {
        if self.fed != self.data_blocks {
            return Err(VerityError::Unsupported(format!("{} of {} data blocks hashed", self.fed, self.data_blocks)));
        }
        if self.data_blocks == 0 {
            return Err(VerityError::Empty);
        }
        if self.data_blocks == 1 {
            return Ok((Vec::new(), self.bottom[..HASH_SIZE].try_into().unwrap()));
        }
        let mut level = self.bottom;
        pad_to_block(&mut level);
        let mut levels = vec![level];
        while levels.last().unwrap().len() as u64 > BLOCK_SIZE {
            let below = levels.last().unwrap();
            let mut up = Vec::new();
            for chunk in below.chunks(BLOCK_SIZE as usize) {
                up.extend_from_slice(&salted_hash(&self.salt, chunk));
            }
            pad_to_block(&mut up);
            levels.push(up);
        }
        let root = salted_hash(&self.salt, levels.last().unwrap());
        levels.reverse();
        Ok((levels, root))
    }
}

/// Checks a slot's hash area as stored (superblock, then the tree) against
/// the tree computed from its data and the root hash expected.
pub fn check_hash_area(area: &[u8], levels: &[Vec<u8>], root: &[u8; 32], expected_root: &[u8; 32]) -> Result<(), VerityError> {
    if root != expected_root {
        return Err(VerityError::RootHashMismatch { expected: hex(expected_root), computed: hex(root) });
    }
    let mut at = BLOCK_SIZE as usize;
    for level in levels {
        if area.get(at..at + level.len()) != Some(&level[..]) {
            return Err(VerityError::Unsupported("stored hash tree differs from the data".into()));
        }
        at += level.len();
    }
    Ok(())
}

fn pad_to_block(v: &mut Vec<u8>) {
    let rem = v.len() % BLOCK_SIZE as usize;
    if rem != 0 {
        v.resize(v.len() + BLOCK_SIZE as usize - rem, 0);
    }
}

/// Reads the superblock at `hash_offset`, recomputes the tree from the data
/// and checks that both the stored tree and the root hash match. This is what
/// the update agent uses before it declares a slot valid.
pub fn verify<F: Read + Seek>(dev: &mut F, hash_offset: u64, expected_root: &[u8; 32]) -> Result<VerityParams, VerityError> {
    dev.seek(SeekFrom::Start(hash_offset))?;
    let mut sb = vec![0u8; BLOCK_SIZE as usize];
    dev.read_exact(&mut sb)?;
    let (data_blocks, salt, uuid) = read_superblock(&sb)?;
    let (levels, root) = compute_tree(dev, data_blocks, &salt)?;
    let mut area = vec![0u8; (BLOCK_SIZE * (1 + tree_blocks(data_blocks))) as usize];
    dev.seek(SeekFrom::Start(hash_offset))?;
    dev.read_exact(&mut area)?;
    check_hash_area(&area, &levels, &root, expected_root)?;
    Ok(VerityParams { data_blocks, hash_offset, salt, root_hash: root, uuid })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use std::process::Command;

    fn data(blocks: u64) -> Vec<u8> {
        (0..blocks * BLOCK_SIZE).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn the_streamed_tree_is_the_formatted_one_however_it_is_fed() {
        for blocks in [1u64, 2, 128, 129, 300] {
            let d = data(blocks);
            let mut dev = Cursor::new(d.clone());
            let p = format(&mut dev, d.len() as u64, b"pepper", [1; 16]).unwrap();
            let mut t = TreeHasher::new(blocks, b"pepper");
            for piece in d.chunks(3 * BLOCK_SIZE as usize) {
                t.update(piece).unwrap();
            }
            let (levels, root) = t.finish().unwrap();
            assert_eq!(root, p.root_hash, "{blocks} blocks");
            let area = &dev.get_ref()[d.len()..];
            check_hash_area(area, &levels, &root, &p.root_hash).unwrap();
            let mut bad = area.to_vec();
            if let Some(b) = bad.get_mut(BLOCK_SIZE as usize + 5) {
                *b ^= 1;
                assert!(check_hash_area(&bad, &levels, &root, &p.root_hash).is_err());
            }
            assert!(matches!(check_hash_area(area, &levels, &root, &[0; 32]), Err(VerityError::RootHashMismatch { .. })));
        }
        let mut t = TreeHasher::new(2, b"");
        assert!(t.update(&[0; 100]).is_err(), "part of a block");
        t.update(&data(1)).unwrap();
        assert!(t.finish().is_err(), "a block missing");
    }

    #[test]
    fn level_sizes_match_kernel_layout() {
        assert_eq!(level_sizes(1), Vec::<u64>::new());
        assert_eq!(level_sizes(128), vec![1]);
        assert_eq!(level_sizes(129), vec![1, 2]);
        assert_eq!(level_sizes(128 * 128 + 1), vec![1, 2, 129]);
    }

    #[test]
    fn superblock_round_trips() {
        let sb = superblock(42, b"salty", &[7; 16]);
        let (n, salt, uuid) = read_superblock(&sb).unwrap();
        assert_eq!((n, salt.as_slice(), uuid), (42, &b"salty"[..], [7; 16]));
        let mut bad = sb.clone();
        bad[0] = b'X';
        assert!(matches!(read_superblock(&bad), Err(VerityError::BadSignature(_))));
    }

    #[test]
    fn rejects_unaligned_and_empty_data() {
        let mut c = Cursor::new(vec![0u8; 5000]);
        assert!(matches!(format(&mut c, 5000, b"", [0; 16]), Err(VerityError::Unaligned(5000))));
        assert!(matches!(format(&mut c, 0, b"", [0; 16]), Err(VerityError::Empty)));
    }

    #[test]
    fn verify_catches_a_flipped_byte() {
        let mut c = Cursor::new(data(300));
        let p = format(&mut c, 300 * BLOCK_SIZE, &[1, 2, 3], [9; 16]).unwrap();
        assert_eq!(c.get_ref().len() as u64, 300 * BLOCK_SIZE + p.hash_area_size());
        verify(&mut c, p.hash_offset, &p.root_hash).unwrap();
        c.get_mut()[12345] ^= 1;
        assert!(matches!(verify(&mut c, p.hash_offset, &p.root_hash), Err(VerityError::RootHashMismatch { .. })));
    }

    /// The independent check: veritysetup (cryptsetup) must accept our tree
    /// and compute the same root hash for the same salt and UUID.
    #[test]
    fn veritysetup_agrees() {
        if Command::new("veritysetup").arg("--version").output().is_err() {
            panic!("veritysetup not installed (cryptsetup-bin); `make deps` installs it");
        }
        let dir = tempfile::tempdir().unwrap();
        for blocks in [1u64, 129, 1000] {
            let ours = dir.path().join(format!("ours-{blocks}"));
            let theirs = dir.path().join(format!("theirs-{blocks}"));
            std::fs::write(&ours, data(blocks)).unwrap();
            std::fs::write(&theirs, data(blocks)).unwrap();
            let salt = [0xabu8; 32];
            let uuid = *b"0123456789abcdef";
            let mut f = std::fs::OpenOptions::new().read(true).write(true).open(&ours).unwrap();
            let p = format(&mut f, blocks * BLOCK_SIZE, &salt, uuid).unwrap();
            drop(f);
            let uuid_str = "30313233-3435-3637-3839-616263646566";
            let out = Command::new("veritysetup")
                .args(["format", "--hash-offset", &(blocks * BLOCK_SIZE).to_string(), "--salt", &hex(&salt), "--uuid", uuid_str])
                .arg(&theirs)
                .arg(&theirs)
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(text.contains(&p.root_hash_hex()), "veritysetup printed {text}, we computed {}", p.root_hash_hex());
            assert_eq!(std::fs::read(&ours).unwrap(), std::fs::read(&theirs).unwrap(), "hash area differs for {blocks} blocks");
            let out = Command::new("veritysetup").args(["verify", "--hash-offset", &(blocks * BLOCK_SIZE).to_string()]).arg(&ours).arg(&ours).arg(p.root_hash_hex()).output().unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        }
    }

    #[test]
    fn dm_table_names_hash_start_after_superblock() {
        let p = VerityParams { data_blocks: 10, hash_offset: 40960, salt: vec![0xaa], root_hash: [0; 32], uuid: [0; 16] };
        let t = p.dm_table("/dev/vda3", &["restart_on_corruption"]);
        assert_eq!(t, format!("0 80 verity 1 /dev/vda3 /dev/vda3 4096 4096 10 11 sha256 {} aa 1 restart_on_corruption", "0".repeat(64)));
    }
}
