//! The write-ahead log in front of redb. A commit of the keyspace is one
//! appended record and one `fdatasync` of a file whose blocks were allocated
//! (written with zeros) in advance, so the sync moves no file-system
//! metadata: the cheapest durable write the disk offers, and the one etcd's
//! own WAL makes. redb then takes the accumulated changes in a checkpoint now
//! and then, after which the log starts over under a new generation.
//!
//! Record: `len u32 | crc32 u32 | generation u64 | seq u64 | payload`, the
//! CRC over everything after it. Replay accepts records of the current
//! generation with strictly increasing `seq` and stops at the first that is
//! torn, stale or foreign, which is where the next append goes.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

const HEADER: usize = 24;
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

pub struct Wal {
    file: File,
    path: PathBuf,
    pos: u64,
    capacity: u64,
    generation: u64,
    last_seq: u64,
}

/// One record read back.
pub struct Record {
    pub seq: u64,
    pub payload: Vec<u8>,
}

impl Wal {
    /// Open (creating and pre-allocating `capacity` bytes if needed) and
    /// read back the valid records of `generation`.
    pub fn open(path: &Path, capacity: u64, generation: u64) -> io::Result<(Wal, Vec<Record>)> {
        let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
        let len = file.metadata()?.len();
        if len < capacity {
            file.seek(SeekFrom::Start(len))?;
            let mut left = capacity - len;
            while left > 0 {
                let n = left.min(ZEROS.len() as u64) as usize;
                file.write_all(&ZEROS[..n])?;
                left -= n as u64;
            }
            file.sync_all()?;
            if let Some(dir) = path.parent() {
                File::open(dir)?.sync_all()?;
            }
        }
        let mut bytes = Vec::new();
        file.seek(SeekFrom::Start(0))?;
        file.read_to_end(&mut bytes)?;
        let (records, pos, last_seq) = scan(&bytes, generation);
        let capacity = capacity.max(len);
        Ok((Wal { file, path: path.to_path_buf(), pos, capacity, generation, last_seq }, records))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes written since the last reset.
    pub fn used(&self) -> u64 {
        self.pos
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Append one record and make it durable.
    pub fn append(&mut self, seq: u64, payload: &[u8]) -> io::Result<()> {
        assert!(seq > self.last_seq, "log sequence must increase: {seq} after {}", self.last_seq);
        let mut rec = Vec::with_capacity(HEADER + payload.len());
        rec.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        rec.extend_from_slice(&[0; 4]);
        rec.extend_from_slice(&self.generation.to_le_bytes());
        rec.extend_from_slice(&seq.to_le_bytes());
        rec.extend_from_slice(payload);
        let crc = crc32fast::hash(&rec[8..]);
        rec[4..8].copy_from_slice(&crc.to_le_bytes());
        write_all_at(&self.file, &rec, self.pos)?;
        // A record past the pre-allocated end grew the file: its size must be synced too.
        if self.pos + rec.len() as u64 > self.capacity {
            self.file.sync_all()?;
            self.capacity = self.pos + rec.len() as u64;
        } else {
            self.file.sync_data()?;
        }
        self.pos += rec.len() as u64;
        self.last_seq = seq;
        Ok(())
    }

    /// Start over (after a checkpoint made every record redundant). Old
    /// records stay on disk but belong to an older generation.
    pub fn reset(&mut self, generation: u64) {
        self.generation = generation;
        self.pos = 0;
        self.last_seq = 0;
    }
}

fn write_all_at(file: &File, mut buf: &[u8], mut offset: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    while !buf.is_empty() {
        let n = file.write_at(buf, offset)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "write-ahead log: short write"));
        }
        buf = &buf[n..];
        offset += n as u64;
    }
    Ok(())
}

fn scan(bytes: &[u8], generation: u64) -> (Vec<Record>, u64, u64) {
    let mut records = Vec::new();
    let (mut pos, mut last_seq) = (0usize, 0u64);
    while pos + HEADER <= bytes.len() {
        let word = |at: usize, n: usize| &bytes[pos + at..pos + at + n];
        let len = u32::from_le_bytes(word(0, 4).try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(word(4, 4).try_into().expect("4 bytes"));
        let gen = u64::from_le_bytes(word(8, 8).try_into().expect("8 bytes"));
        let seq = u64::from_le_bytes(word(16, 8).try_into().expect("8 bytes"));
        let end = pos + HEADER + len;
        if gen != generation || seq <= last_seq || end > bytes.len() || crc32fast::hash(&bytes[pos + 8..end]) != crc {
            break;
        }
        records.push(Record { seq, payload: bytes[pos + HEADER..end].to_vec() });
        last_seq = seq;
        pos = end;
    }
    (records, pos as u64, last_seq)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_come_back_until_a_torn_or_stale_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal");
        {
            let (mut wal, records) = Wal::open(&path, 4096, 1).unwrap();
            assert!(records.is_empty());
            wal.append(5, b"five").unwrap();
            wal.append(6, b"six").unwrap();
            wal.append(9, b"nine").unwrap();
        }
        let (mut wal, records) = Wal::open(&path, 4096, 1).unwrap();
        let got: Vec<(u64, &[u8])> = records.iter().map(|r| (r.seq, r.payload.as_slice())).collect();
        assert_eq!(got, vec![(5, &b"five"[..]), (6, b"six"), (9, b"nine")]);
        // A new generation overwrites from the start; the old tail is ignored.
        wal.reset(2);
        wal.append(10, b"ten").unwrap();
        drop(wal);
        let (_, records) = Wal::open(&path, 4096, 2).unwrap();
        assert_eq!(records.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![10]);
        // A torn record (flipped byte) ends the log there.
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[HEADER + 1] ^= 0xff;
        std::fs::write(&path, &bytes).unwrap();
        let (wal, records) = Wal::open(&path, 4096, 2).unwrap();
        assert!(records.is_empty());
        assert_eq!(wal.used(), 0);
    }

    #[test]
    fn grows_past_the_preallocated_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal");
        let (mut wal, _) = Wal::open(&path, 64, 1).unwrap();
        wal.append(1, &[7u8; 100]).unwrap();
        wal.append(2, &[8u8; 100]).unwrap();
        drop(wal);
        let (_, records) = Wal::open(&path, 64, 1).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[1].payload, vec![8u8; 100]);
    }
}
