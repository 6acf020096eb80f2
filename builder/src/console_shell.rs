//! Whether a built image offers a root shell on its serial console, as
//! `basalt flash` and `basalt publish aws` read it back from the image itself:
//! the `basalt.console_shell=` word on the command line of slot A's UKI on the
//! ESP (what init obeys), never the spec the image may have come from.

use crate::flash::PartitionIo;
use anyhow::{bail, Result};
use basalt_disk::{layout, Gpt};
use basalt_fwcfg::{ConsoleShell, CONSOLE_SHELL_ENTRY, CONSOLE_SHELL_PARAM};
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};

/// What an image says; `None`: its command line names no (known) setting,
/// an image built before the setting existed, whose console shell was a
/// file in /usr (the default spec had one).
pub type ImageShell = Option<ConsoleShell>;

/// Reads the setting from an ESP: `esp` is the partition as a file of its own.
pub fn of_esp<T: Read + Write + Seek>(esp: T, image: &str) -> Result<ImageShell> {
    let (uki_name, uki) = crate::payload::read_uki_a(esp, image)?;
    let cmdline = crate::payload::section_text(&uki, ".cmdline", &uki_name)?;
    Ok(ConsoleShell::from_cmdline(&cmdline))
}

/// Reads the setting from a raw image (or a disk holding one) at offset 0
/// of `file`, whose partition table is `gpt`.
pub fn of_disk(file: &std::fs::File, gpt: &Gpt, image: &str) -> Result<ImageShell> {
    let Some(esp) = gpt.partition(layout::ESP) else { bail!("{image}: no EFI system partition (partition {}); is this a basalt image?", layout::ESP) };
    of_esp(PartitionIo { file, start: esp.offset_bytes(), len: esp.size_bytes(), pos: 0 }, image)
}

/// Reads the setting from the start of a decompressed image stream: the
/// ESP's range is read into memory (its all-zero chunks are not kept).
pub fn of_stream(mut stream: impl Read, gpt: &Gpt, image: &str) -> Result<ImageShell> {
    let Some(esp) = gpt.partition(layout::ESP) else { bail!("{image}: no EFI system partition (partition {}); is this a basalt image?", layout::ESP) };
    let sparse = Sparse::read(&mut stream, esp.offset_bytes(), esp.size_bytes())?;
    of_esp(sparse, image)
}

/// A read that failed (not a basalt image, no UKI) counts as unknown, which
/// `check` refuses unless allowed; the reason is printed.
pub fn or_unknown(read: Result<ImageShell>) -> ImageShell {
    read.unwrap_or_else(|e| {
        eprintln!("basalt: warning: cannot tell whether the image has a console shell: {e:#}");
        None
    })
}

/// The line `flash` and `publish` print.
pub fn describe(shell: ImageShell) -> String {
    match shell {
        Some(ConsoleShell::Never) => "console shell: none (console_shell: never)".into(),
        Some(ConsoleShell::Hypervisor) => {
            format!("console shell: only where a local hypervisor sets fw_cfg {CONSOLE_SHELL_ENTRY}=1, as `basalt run` does; none on EC2 or hardware (console_shell: hypervisor)")
        }
        Some(ConsoleShell::Always) => "console shell: ALWAYS, an unauthenticated root shell on the serial console of every machine it boots (console_shell: always)".into(),
        None => format!("console shell: unknown, no UKI command line with {CONSOLE_SHELL_PARAM}= (an image built before the setting, or not a basalt image)"),
    }
}

/// Refuses an image that gives a root shell to whoever reaches its serial
/// console, unless the user said `--allow-console-shell`.
pub fn check(shell: ImageShell, allow: bool, image: &str, what: &str) -> Result<()> {
    if allow {
        return Ok(());
    }
    match shell {
        Some(ConsoleShell::Never | ConsoleShell::Hypervisor) => Ok(()),
        Some(ConsoleShell::Always) => bail!(
            "{image} was built with `console_shell: always`: every machine it boots offers an unauthenticated root shell on its serial console{what}. \
             Build it with `console_shell: hypervisor` (the default spec's) or `never`, or pass --allow-console-shell if that is really meant"
        ),
        None => bail!(
            "{image} does not say whether it has a console shell (no UKI command line with {CONSOLE_SHELL_PARAM}=): an image built before the setting, \
             when the default image had an unconditional root shell on its serial console, or not a basalt image. Rebuild it, or pass --allow-console-shell if that is really meant"
        ),
    }
}

const CHUNK: usize = 64 << 10;

/// A byte range of a stream held in memory as its non-zero 64 KiB chunks,
/// readable as a file of its own (writes are refused).
struct Sparse {
    len: u64,
    chunks: HashMap<u64, Vec<u8>>,
    pos: u64,
}

impl Sparse {
    /// Skips `start` bytes of `stream`, then keeps the next `len`.
    fn read(stream: &mut impl Read, start: u64, len: u64) -> Result<Sparse> {
        std::io::copy(&mut stream.take(start), &mut std::io::sink())?;
        let mut chunks = HashMap::new();
        let mut at = 0u64;
        while at < len {
            let want = (len - at).min(CHUNK as u64) as usize;
            let mut buf = vec![0u8; want];
            let mut got = 0;
            while got < want {
                match stream.read(&mut buf[got..])? {
                    0 => break,
                    n => got += n,
                }
            }
            if buf.iter().any(|&b| b != 0) {
                chunks.insert(at / CHUNK as u64, buf);
            }
            if got < want {
                break; // the stream ended: the rest reads as zeros
            }
            at += want as u64;
        }
        Ok(Sparse { len, chunks, pos: 0 })
    }
}

impl Read for Sparse {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.len {
            return Ok(0);
        }
        let index = self.pos / CHUNK as u64;
        let within = (self.pos % CHUNK as u64) as usize;
        let n = buf.len().min(CHUNK - within).min((self.len - self.pos) as usize);
        match self.chunks.get(&index) {
            Some(c) => {
                let avail = c.len().saturating_sub(within).min(n);
                buf[..avail].copy_from_slice(&c[within..within + avail]);
                buf[avail..n].fill(0);
            }
            None => buf[..n].fill(0),
        }
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for Sparse {
    fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
        Err(std::io::Error::other("the image is read, never written"))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Seek for Sparse {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(p) => p as i64,
            SeekFrom::End(d) => self.len as i64 + d,
            SeekFrom::Current(d) => self.pos as i64 + d,
        };
        if pos < 0 {
            return Err(std::io::Error::other("seek before the start"));
        }
        self.pos = pos as u64;
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sparse_range_reads_back_as_the_stream_had_it() {
        let mut data = vec![0u8; 5 * CHUNK + 100];
        data[3] = 1;
        data[2 * CHUNK + 7] = 2;
        data[5 * CHUNK + 99] = 3;
        let mut s = Sparse::read(&mut std::io::Cursor::new(&data), 2, (data.len() - 2) as u64).unwrap();
        assert!(s.chunks.len() <= 4, "{} chunks kept", s.chunks.len());
        let mut back = Vec::new();
        s.read_to_end(&mut back).unwrap();
        assert_eq!(back, data[2..]);
        s.seek(SeekFrom::Start(2 * CHUNK as u64 + 5)).unwrap();
        let mut b = [9u8; 1];
        s.read_exact(&mut b).unwrap();
        assert_eq!(b, [2]);
        // A stream shorter than the range reads as zeros after its end.
        let mut short = Sparse::read(&mut std::io::Cursor::new(&data[..10]), 0, 100).unwrap();
        let mut back = Vec::new();
        short.read_to_end(&mut back).unwrap();
        assert_eq!(&back[..10], &data[..10]);
        assert!(back.len() == 100 && back[10..].iter().all(|&b| b == 0));
    }

    #[test]
    fn always_and_unknown_are_refused_unless_allowed() {
        assert!(check(Some(ConsoleShell::Never), false, "x.img", "").is_ok());
        assert!(check(Some(ConsoleShell::Hypervisor), false, "x.img", "").is_ok());
        let e = check(Some(ConsoleShell::Always), false, "x.img", " (on EC2 too)").unwrap_err().to_string();
        assert!(e.contains("x.img") && e.contains("console_shell: always") && e.contains("--allow-console-shell") && e.contains("(on EC2 too)"), "{e}");
        let e = check(None, false, "x.img", "").unwrap_err().to_string();
        assert!(e.contains("basalt.console_shell=") && e.contains("--allow-console-shell"), "{e}");
        assert!(check(Some(ConsoleShell::Always), true, "x.img", "").is_ok());
        assert!(check(None, true, "x.img", "").is_ok());
        assert!(describe(Some(ConsoleShell::Always)).contains("ALWAYS"));
        assert!(describe(Some(ConsoleShell::Hypervisor)).contains("opt/org.basalt/console-shell=1"));
    }
}
