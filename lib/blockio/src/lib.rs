//! Large sequential I/O on block devices, shared by the flash pipeline and
//! the update agent: buffers of [`CHUNK`] bytes at page-aligned addresses,
//! kept in a [`Pool`] so a stream of them costs no allocation per piece, and
//! O_DIRECT descriptors that hand those buffers straight to the device
//! instead of copying them through the page cache.
//!
//! O_DIRECT wants the buffer's address, the file offset and the length to be
//! multiples of the device's logical block size; a page (4096) covers every
//! block device. Where a file or device refuses O_DIRECT (tmpfs, some
//! filesystems) the callers fall back to ordinary buffered I/O.

use std::alloc::{alloc_zeroed, dealloc, handle_alloc_error, Layout};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::ops::Deref;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::ptr::NonNull;
use std::sync::{Arc, Mutex};

/// Size of every buffer.
pub const CHUNK: usize = 4 << 20;
/// Buffer alignment: a page, enough for O_DIRECT on any block device.
pub const ALIGN: usize = 4096;

/// CHUNK bytes at a page-aligned address.
struct AlignedBuf(NonNull<u8>);

// SAFETY: the buffer is plain memory owned by this value alone.
unsafe impl Send for AlignedBuf {}
// SAFETY: through &AlignedBuf the bytes are only read (bytes()); writing
// needs &mut (bytes_mut()), so shared references never race.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    fn layout() -> Layout {
        Layout::from_size_align(CHUNK, ALIGN).unwrap()
    }
    fn new() -> AlignedBuf {
        // SAFETY: the layout has a non-zero size.
        let p = unsafe { alloc_zeroed(Self::layout()) };
        AlignedBuf(NonNull::new(p).unwrap_or_else(|| handle_alloc_error(Self::layout())))
    }
    fn bytes(&self) -> &[u8] {
        // SAFETY: CHUNK initialised bytes (alloc_zeroed), owned by self.
        unsafe { std::slice::from_raw_parts(self.0.as_ptr(), CHUNK) }
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.0.as_ptr(), CHUNK) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in new() with the same layout.
        unsafe { dealloc(self.0.as_ptr(), Self::layout()) }
    }
}

/// Buffers that were used and given back; whoever bounds the number of
/// blocks in flight (a channel's depth) bounds how many exist at once.
#[derive(Clone, Default)]
pub struct Pool(Arc<Mutex<Vec<AlignedBuf>>>);

impl Pool {
    /// An empty block: a buffer given back earlier, or a new one.
    pub fn take(&self) -> Block {
        let buf = self.0.lock().unwrap().pop().unwrap_or_else(AlignedBuf::new);
        Block { buf: Some(buf), len: 0, pool: self.clone() }
    }
}

/// A buffer from the pool holding `len` bytes; back to the pool when dropped.
pub struct Block {
    buf: Option<AlignedBuf>,
    len: usize,
    pool: Pool,
}

impl Block {
    /// Fills the block from `r` until it is full or `r` ends; the bytes read.
    pub fn fill(&mut self, r: &mut impl Read) -> io::Result<usize> {
        self.fill_with(CHUNK, |buf, _| r.read(buf))
    }

    /// Reads `want` (at most CHUNK) bytes of `f` at `at`; fewer at its end.
    pub fn fill_at(&mut self, f: &File, want: usize, at: u64) -> io::Result<usize> {
        self.fill_with(want, |buf, done| f.read_at(buf, at + done as u64))
    }

    /// Fills the first `want` bytes by calling `read(rest, done)` until they
    /// are there or it returns 0.
    fn fill_with(&mut self, want: usize, mut read: impl FnMut(&mut [u8], usize) -> io::Result<usize>) -> io::Result<usize> {
        let buf = &mut self.buf.as_mut().unwrap().bytes_mut()[..want];
        let mut done = 0;
        while done < want {
            match read(&mut buf[done..], done) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.len = done;
        Ok(done)
    }

    /// Appends as much of `data` as fits; how much that was.
    pub fn push(&mut self, data: &[u8]) -> usize {
        let n = data.len().min(CHUNK - self.len);
        let len = self.len;
        self.buf.as_mut().unwrap().bytes_mut()[len..len + n].copy_from_slice(&data[..n]);
        self.len += n;
        n
    }

    pub fn is_full(&self) -> bool {
        self.len == CHUNK
    }
}

impl Deref for Block {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf.as_ref().unwrap().bytes()[..self.len]
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        if let (Some(buf), Ok(mut pool)) = (self.buf.take(), self.pool.0.lock()) {
            pool.push(buf);
        }
    }
}

/// A second descriptor of the file or device `f` is open on, with O_DIRECT;
/// None where that is refused (tmpfs, some filesystems). Opened through
/// /proc/self/fd: the very file already open, whatever its path names now.
pub fn open_direct(f: &File, write: bool) -> Option<File> {
    OpenOptions::new().read(!write).write(write).custom_flags(libc::O_DIRECT | libc::O_CLOEXEC).open(format!("/proc/self/fd/{}", f.as_raw_fd())).ok()
}

/// Writes `data` at `offset` through `direct` (an O_DIRECT descriptor) when
/// both are page-aligned, else through `buffered`.
pub fn write_at(direct: Option<&File>, buffered: &File, data: &[u8], offset: u64) -> io::Result<()> {
    let aligned = (data.as_ptr() as usize).is_multiple_of(ALIGN) && data.len().is_multiple_of(ALIGN) && offset.is_multiple_of(ALIGN as u64);
    match direct {
        Some(d) if aligned => d.write_all_at(data, offset),
        _ => buffered.write_all_at(data, offset),
    }
}

/// Reads a file or device from the medium rather than the page cache:
/// O_DIRECT reads of whole aligned chunks where the file allows them,
/// else buffered reads after the file's cached pages are dropped.
/// Sequential reads are what it is for; a seek refills from there.
pub struct MediumReader {
    file: File,
    block: Block,
    /// File offset of the block's first byte.
    at: u64,
    pos: usize,
    end: u64,
}

impl MediumReader {
    pub fn open(f: &File) -> io::Result<MediumReader> {
        // A descriptor of its own (its own offset), opened again through
        // /proc/self/fd: the very file `f` is.
        let mut file = match open_direct(f, false) {
            Some(d) => d,
            None => {
                // SAFETY: advice only; the descriptor is open.
                unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
                OpenOptions::new().read(true).custom_flags(libc::O_CLOEXEC).open(format!("/proc/self/fd/{}", f.as_raw_fd()))?
            }
        };
        let end = file.seek(SeekFrom::End(0))?;
        Ok(MediumReader { file, block: Pool::default().take(), at: 0, pos: 0, end })
    }
}

impl Read for MediumReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.block.len() {
            let next = self.at + self.block.len() as u64;
            if next >= self.end {
                return Ok(0);
            }
            // Whole aligned chunks; the device's end is a multiple of its
            // block size, so the last read is short but aligned too.
            let want = ((self.end - next).min(CHUNK as u64) as usize).next_multiple_of(ALIGN);
            let n = self.block.fill_at(&self.file, want, next)?;
            self.at = next;
            self.pos = 0;
            if n == 0 {
                return Ok(0);
            }
        }
        let n = buf.len().min(self.block.len() - self.pos);
        buf[..n].copy_from_slice(&self.block[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Seek for MediumReader {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let here = self.at + self.pos as u64;
        let target = match to {
            SeekFrom::Start(n) => n,
            SeekFrom::End(d) => self.end.checked_add_signed(d).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?,
            SeekFrom::Current(d) => here.checked_add_signed(d).ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?,
        };
        if target >= self.at && target <= self.at + self.block.len() as u64 {
            self.pos = (target - self.at) as usize;
        } else {
            // Refill from the aligned offset at or below the target.
            let base = target - target % ALIGN as u64;
            let n = if base < self.end {
                self.block.fill_at(&self.file, ((self.end - base).min(CHUNK as u64) as usize).next_multiple_of(ALIGN), base)?
            } else {
                self.block.fill_at(&self.file, 0, base)?
            };
            self.at = base;
            self.pos = ((target - base) as usize).min(n);
        }
        Ok(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Bytes that differ from one 4 KiB block to the next.
    fn noise(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 % 251) as u8).collect()
    }

    #[test]
    fn blocks_are_aligned_and_reused() {
        let pool = Pool::default();
        let mut a = pool.take();
        assert_eq!(a.as_ptr() as usize % ALIGN, 0);
        assert_eq!(a.push(&[1, 2, 3]), 3);
        assert_eq!(&a[..], &[1, 2, 3]);
        let big = vec![7u8; CHUNK];
        assert_eq!(a.push(&big), CHUNK - 3);
        assert!(a.is_full());
        let p = a.as_ptr();
        drop(a);
        let b = pool.take();
        assert_eq!(b.as_ptr(), p, "the buffer came back to the pool");
        assert!(b.is_empty());
    }

    #[test]
    fn medium_reader_reads_and_seeks_like_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data = noise(CHUNK * 2 + 3 * ALIGN);
        std::fs::File::create(&path).unwrap().write_all(&data).unwrap();
        let f = File::open(&path).unwrap();
        let mut r = MediumReader::open(&f).unwrap();
        let mut all = Vec::new();
        let mut piece = vec![0u8; 100_000];
        loop {
            let n = r.read(&mut piece).unwrap();
            if n == 0 {
                break;
            }
            all.extend_from_slice(&piece[..n]);
        }
        assert!(all == data, "a sequential read gives the file");
        for at in [5u64, CHUNK as u64 + 17, 3 * ALIGN as u64, data.len() as u64 - 10] {
            r.seek(SeekFrom::Start(at)).unwrap();
            let mut got = vec![0u8; 10];
            r.read_exact(&mut got).unwrap();
            assert_eq!(got, data[at as usize..at as usize + 10], "at {at}");
        }
        r.seek(SeekFrom::Start(data.len() as u64)).unwrap();
        assert_eq!(r.read(&mut piece).unwrap(), 0);
    }

    #[test]
    fn write_at_goes_direct_only_when_aligned() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let f = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
        f.set_len(3 * ALIGN as u64).unwrap();
        let direct = open_direct(&f, true);
        let pool = Pool::default();
        let mut b = pool.take();
        b.push(&noise(2 * ALIGN));
        write_at(direct.as_ref(), &f, &b, ALIGN as u64).unwrap();
        write_at(direct.as_ref(), &f, &[9; 5], 1).unwrap();
        let back = std::fs::read(&path).unwrap();
        assert_eq!(&back[1..6], &[9; 5]);
        assert!(back[ALIGN..3 * ALIGN] == b[..]);
    }
}
