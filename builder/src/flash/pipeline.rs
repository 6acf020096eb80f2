//! The flash pipeline. Reading the source, hashing it, decompressing it and
//! writing the target each run on a thread of their own, joined by bounded
//! channels of pieces (up to 4 MiB of data, or a run of zeros), so that a
//! flash takes as long as its slowest stage instead of the sum of them:
//!
//! ```text
//!   read ──stored pieces──┬──▶ hash (sha256 of the file as stored)
//!                         └──▶ [decompress, zstd] ──image pieces──▶ write (the caller)
//! ```
//!
//! A local file's holes (`SEEK_DATA`/`SEEK_HOLE`) are not read: they travel
//! as runs of zeros, which the hasher hashes from a static zero buffer and the
//! writer turns into a zeroing request instead of copying zeros around. Data
//! travels in page-aligned buffers, so the writer can hand them to O_DIRECT.
//! A piece is shared (`Arc`) between the hasher and the writer; its buffer
//! goes back to the pool when both are done with it.

use crate::stream::is_zero;
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{self, BufRead, Read};
use std::os::fd::AsRawFd;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

pub use basalt_blockio::{Block, Pool, CHUNK};
/// Runs of zeros travel in pieces of at most this much, so that the writer,
/// which zeroes them almost for free, stays close behind the hasher.
const ZERO_PIECE: u64 = 16 << 20;
/// Pieces waiting in each channel.
const DEPTH: usize = 4;

/// 1 MiB of zeros, page-aligned: hashed in place of holes, and written where
/// a target cannot zero itself.
#[repr(C, align(4096))]
pub struct Zeros(pub [u8; 1 << 20]);
pub static ZEROS: Zeros = Zeros([0; 1 << 20]);

/// A run of the stream: data, or that many zero bytes.
#[derive(Clone)]
pub enum Piece {
    Data(Arc<Block>),
    Zeros(u64),
}

impl Piece {
    pub fn len(&self) -> u64 {
        match self {
            Piece::Data(b) => b.len() as u64,
            Piece::Zeros(n) => *n,
        }
    }
}

/// Where the stored bytes come from.
pub enum Input {
    /// A local file of this length: its holes are not read.
    File(File, u64),
    /// Anything else (a download): read in order.
    Stream(Box<dyn Read + Send>),
}

impl Input {
    /// The first CHUNK bytes (fewer if the input is shorter), read before
    /// the pipeline starts: they say whether the source is compressed and
    /// how large the image is. The reader sends them on first.
    pub fn first_block(&mut self, pool: &Pool) -> io::Result<Block> {
        let mut b = pool.take();
        match self {
            Input::File(f, len) => {
                // SAFETY: advice only; the descriptor is open.
                unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL) };
                b.fill_at(f, (*len).min(CHUNK as u64) as usize, 0)?;
            }
            Input::Stream(r) => {
                b.fill(r)?;
            }
        }
        Ok(b)
    }
}

/// The running stages; the caller takes image pieces from `pieces`.
pub struct Pipeline {
    pub pieces: Receiver<Piece>,
    reader: JoinHandle<io::Result<()>>,
    decoder: Option<JoinHandle<io::Result<()>>>,
    hasher: JoinHandle<(String, u64)>,
}

impl Pipeline {
    pub fn start(input: Input, first: Block, compressed: bool, pool: Pool) -> Pipeline {
        let (hash_tx, hash_rx) = sync_channel(DEPTH);
        let hasher = std::thread::spawn(move || hash(hash_rx));
        let (image_tx, pieces) = sync_channel(DEPTH);
        let (reader, decoder) = if compressed {
            let (stored_tx, stored_rx) = sync_channel(DEPTH);
            let p = pool.clone();
            let reader = std::thread::spawn(move || read(input, first, p, &[hash_tx, stored_tx]));
            let decoder = std::thread::spawn(move || decompress(stored_rx, pool, image_tx));
            (reader, Some(decoder))
        } else {
            (std::thread::spawn(move || read(input, first, pool, &[hash_tx, image_tx])), None)
        };
        Pipeline { pieces, reader, decoder, hasher }
    }

    /// Waits for the stages to end (the caller has taken every piece, or
    /// stopped taking them): the source's sha256 and length, or why reading
    /// or decompressing failed.
    pub fn finish(self) -> anyhow::Result<(String, u64)> {
        drop(self.pieces);
        let read = self.reader.join().expect("reader thread panicked");
        let decoded = self.decoder.map(|d| d.join().expect("decompressor thread panicked")).unwrap_or(Ok(()));
        let hashed = self.hasher.join().expect("hasher thread panicked");
        read.map_err(|e| anyhow::Error::new(e).context("reading the image"))?;
        decoded.map_err(|e| anyhow::Error::new(e).context("decompressing the image"))?;
        Ok(hashed)
    }
}

/// Sends `piece` to every stage in `outs`; false once one has stopped
/// (it reports why itself).
fn send_all(outs: &[SyncSender<Piece>], piece: Piece) -> bool {
    outs.iter().all(|o| o.send(piece.clone()).is_ok())
}

fn read(input: Input, first: Block, pool: Pool, outs: &[SyncSender<Piece>]) -> io::Result<()> {
    let pos = first.len() as u64;
    let short = first.len() < CHUNK;
    if !first.is_empty() && !send_all(outs, Piece::Data(Arc::new(first))) {
        return Ok(());
    }
    match input {
        Input::File(f, len) => read_file(&f, len, pos, &pool, outs),
        Input::Stream(mut r) => {
            if short {
                return Ok(());
            }
            loop {
                let mut b = pool.take();
                let n = b.fill(&mut r)?;
                if n == 0 || !send_all(outs, Piece::Data(Arc::new(b))) || n < CHUNK {
                    return Ok(());
                }
            }
        }
    }
}

/// `lseek(SEEK_DATA/SEEK_HOLE)` from `pos`; None for "the end of the file".
/// A filesystem without hole support is all data.
fn seek(f: &File, pos: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
    // SAFETY: lseek on an open descriptor.
    let r = unsafe { libc::lseek(f.as_raw_fd(), pos as libc::off_t, whence) };
    if r >= 0 {
        return Ok(Some(r as u64));
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENXIO) => Ok(None),
        // No hole support here: all of it is data.
        Some(libc::EINVAL | libc::EOPNOTSUPP) if whence == libc::SEEK_DATA => Ok(Some(pos)),
        Some(libc::EINVAL | libc::EOPNOTSUPP) => Ok(None),
        _ => Err(e),
    }
}

fn read_file(f: &File, len: u64, mut pos: u64, pool: &Pool, outs: &[SyncSender<Piece>]) -> io::Result<()> {
    while pos < len {
        let data = seek(f, pos, libc::SEEK_DATA)?.unwrap_or(len).min(len);
        while pos < data {
            let n = (data - pos).min(ZERO_PIECE);
            if !send_all(outs, Piece::Zeros(n)) {
                return Ok(());
            }
            pos += n;
        }
        if pos >= len {
            break;
        }
        let hole = seek(f, pos, libc::SEEK_HOLE)?.unwrap_or(len).min(len);
        while pos < hole {
            let mut b = pool.take();
            let want = (hole - pos).min(CHUNK as u64) as usize;
            if b.fill_at(f, want, pos)? < want {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the image file shrank while it was read"));
            }
            if !send_all(outs, Piece::Data(Arc::new(b))) {
                return Ok(());
            }
            pos += want as u64;
        }
    }
    Ok(())
}

/// The sha256 (lowercase hex) and length of every piece received.
fn hash(rx: Receiver<Piece>) -> (String, u64) {
    let mut h = Sha256::new();
    let mut total = 0;
    for piece in rx {
        match &piece {
            Piece::Data(b) => h.update(&b[..]),
            Piece::Zeros(n) => {
                let mut left = *n;
                while left > 0 {
                    let k = left.min(ZEROS.0.len() as u64);
                    h.update(&ZEROS.0[..k as usize]);
                    left -= k;
                }
            }
        }
        total += piece.len();
    }
    (basalt_verity::hex(&h.finalize()), total)
}

fn decompress(stored: Receiver<Piece>, pool: Pool, out: SyncSender<Piece>) -> io::Result<()> {
    let mut decoder = zstd::stream::read::Decoder::with_buffer(PieceReader { rx: stored, cur: None, off: 0 })?;
    loop {
        let mut b = pool.take();
        let n = b.fill(&mut decoder)?;
        if n == 0 {
            return Ok(());
        }
        let piece = if is_zero(&b) { Piece::Zeros(n as u64) } else { Piece::Data(Arc::new(b)) };
        if out.send(piece).is_err() || n < CHUNK {
            return Ok(());
        }
    }
}

/// The stored pieces as one byte stream, for the decompressor.
struct PieceReader {
    rx: Receiver<Piece>,
    cur: Option<Piece>,
    off: u64,
}

impl BufRead for PieceReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while self.cur.as_ref().is_none_or(|p| self.off >= p.len()) {
            match self.rx.recv() {
                Ok(p) => {
                    self.cur = Some(p);
                    self.off = 0;
                }
                Err(_) => return Ok(&[]),
            }
        }
        let off = self.off as usize;
        Ok(match self.cur.as_ref().unwrap() {
            Piece::Data(b) => &b[off..],
            Piece::Zeros(n) => &ZEROS.0[..((*n - self.off) as usize).min(ZEROS.0.len())],
        })
    }

    fn consume(&mut self, amt: usize) {
        self.off += amt as u64;
    }
}

impl Read for PieceReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let avail = self.fill_buf()?;
        let n = avail.len().min(buf.len());
        buf[..n].copy_from_slice(&avail[..n]);
        self.consume(n);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use basalt_blockio::ALIGN;
    use std::io::Write;
    use std::os::unix::fs::FileExt;

    fn run(input: Input, compressed: bool) -> (Vec<u8>, Vec<bool>, String, u64) {
        let pool = Pool::default();
        let mut input = input;
        let first = input.first_block(&pool).unwrap();
        let p = Pipeline::start(input, first, compressed, pool);
        let mut out = Vec::new();
        let mut kinds = Vec::new();
        for piece in p.pieces.iter() {
            match &piece {
                Piece::Data(b) => {
                    assert_eq!(b.as_ptr() as usize % ALIGN, 0, "data buffers are page-aligned");
                    out.extend_from_slice(b)
                }
                Piece::Zeros(n) => out.resize(out.len() + *n as usize, 0),
            }
            kinds.push(matches!(piece, Piece::Data(_)));
        }
        let (sha, len) = p.finish().unwrap();
        (out, kinds, sha, len)
    }

    fn sha(b: &[u8]) -> String {
        basalt_verity::hex(&Sha256::digest(b))
    }

    /// 4 MiB data, a 40 MiB hole, 100 bytes of data at the end.
    fn sparse_file(dir: &std::path::Path) -> (File, Vec<u8>) {
        let mut content = vec![0u8; 44 * 1024 * 1024 + 100];
        content[..CHUNK].iter_mut().enumerate().for_each(|(i, b)| *b = (i % 251) as u8 + 1);
        let tail = content.len() - 100;
        content[tail..].fill(7);
        let p = dir.join("sparse");
        let f = File::create(&p).unwrap();
        f.write_all_at(&content[..CHUNK], 0).unwrap();
        f.write_all_at(&content[tail..], tail as u64).unwrap();
        (File::open(&p).unwrap(), content)
    }

    #[test]
    fn a_sparse_file_arrives_whole_with_its_holes_as_zero_runs() {
        let dir = tempfile::tempdir().unwrap();
        let (f, content) = sparse_file(dir.path());
        let len = content.len() as u64;
        let (out, kinds, digest, n) = run(Input::File(f, len), false);
        assert!(out == content, "the stream differs from the file");
        assert_eq!((digest, n), (sha(&content), len));
        // tmpfs and ext4 both report the hole; the middle arrives as zero runs.
        assert!(kinds.iter().filter(|d| !**d).count() >= 2, "{kinds:?}");
    }

    #[test]
    fn a_stream_is_hashed_as_stored_and_decompressed_for_the_writer() {
        let mut image = vec![0u8; 3 * CHUNK + 5];
        image[CHUNK + 17] = 9;
        image[3 * CHUNK + 4] = 1;
        let mut packed = Vec::new();
        let mut enc = zstd::Encoder::new(&mut packed, 3).unwrap();
        enc.write_all(&image).unwrap();
        enc.finish().unwrap();
        let (out, kinds, digest, n) = run(Input::Stream(Box::new(std::io::Cursor::new(packed.clone()))), true);
        assert!(out == image);
        assert_eq!(kinds, [false, true, false, true], "all-zero chunks become zero runs");
        assert_eq!((digest, n), (sha(&packed), packed.len() as u64));
    }

    #[test]
    fn a_truncated_compressed_stream_is_an_error() {
        let image = vec![3u8; 2 * CHUNK];
        let packed = zstd::encode_all(&image[..], 3).unwrap();
        let cut = packed[..packed.len() - 10].to_vec();
        let pool = Pool::default();
        let mut input = Input::Stream(Box::new(std::io::Cursor::new(cut)));
        let first = input.first_block(&pool).unwrap();
        let p = Pipeline::start(input, first, true, pool);
        for _ in p.pieces.iter() {}
        let err = p.finish().unwrap_err();
        assert!(format!("{err:#}").contains("decompressing the image"), "{err:#}");
    }

    #[test]
    fn a_consumer_that_stops_early_ends_the_pipeline() {
        let data = vec![1u8; 10 * CHUNK];
        let pool = Pool::default();
        let mut input = Input::Stream(Box::new(std::io::Cursor::new(data)));
        let first = input.first_block(&pool).unwrap();
        let p = Pipeline::start(input, first, false, pool);
        let _ = p.pieces.recv().unwrap();
        // Dropping the receiver in finish() lets the reader stop; nothing hangs.
        let (_, n) = p.finish().unwrap();
        assert!((CHUNK as u64..=10 * CHUNK as u64).contains(&n), "{n}");
    }
}
