//! Assembles a Unified Kernel Image (UAPI UKI specification): the systemd EFI
//! stub (a PE32+ executable) with extra sections `.osrel`, `.cmdline`,
//! `.initrd` and `.linux` appended. Also reads those sections back, which the
//! update agent and the tests use to learn what a UKI boots.
//!
//! Rules for a new section (the PE/COFF specification): its header goes right
//! after the last one and must fit before `SizeOfHeaders`; its data starts at a
//! file offset aligned to `FileAlignment`; its virtual address is the end of
//! the previous section rounded up to `SectionAlignment`; `SizeOfImage` grows
//! to cover it. `CheckSum` is zeroed (firmware ignores it for EFI images).

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PeError {
    #[error("not a PE32+ image: {0}")]
    Format(String),
    #[error("no room in the PE header for section {0} (SizeOfHeaders {1})")]
    NoHeaderRoom(String, u32),
    #[error("section name {0:?} is longer than 8 bytes")]
    NameTooLong(String),
    #[error("section {0} already exists in the stub")]
    Duplicate(String),
    #[error("the image has no section {0}")]
    Missing(String),
    #[error("section {name} is {old} bytes; its replacement is {new} bytes, and only a same-size replacement is done in place")]
    SizeChanged { name: String, old: usize, new: usize },
}

const SECTION_HEADER_SIZE: usize = 40;
const SCN_INITIALIZED_DATA_READ: u32 = 0x4000_0040;

struct Layout {
    coff: usize,
    opt: usize,
    sections: usize,
    count: usize,
    section_align: u32,
    file_align: u32,
    size_of_headers: u32,
}

fn u16_at(b: &[u8], o: usize) -> Result<u16, PeError> {
    b.get(o..o + 2).map(|s| u16::from_le_bytes(s.try_into().unwrap())).ok_or_else(|| PeError::Format(format!("truncated at {o}")))
}
fn u32_at(b: &[u8], o: usize) -> Result<u32, PeError> {
    b.get(o..o + 4).map(|s| u32::from_le_bytes(s.try_into().unwrap())).ok_or_else(|| PeError::Format(format!("truncated at {o}")))
}
fn put_u32(b: &mut [u8], o: usize, v: u32) {
    b[o..o + 4].copy_from_slice(&v.to_le_bytes());
}
fn align_up(v: u32, a: u32) -> u32 {
    v.div_ceil(a) * a
}

fn layout(pe: &[u8]) -> Result<Layout, PeError> {
    if !pe.starts_with(b"MZ") {
        return Err(PeError::Format("missing MZ signature".into()));
    }
    let pe_off = u32_at(pe, 0x3c)? as usize;
    if pe.get(pe_off..pe_off + 4) != Some(b"PE\0\0") {
        return Err(PeError::Format("missing PE signature".into()));
    }
    let coff = pe_off + 4;
    let count = u16_at(pe, coff + 2)? as usize;
    let opt_size = u16_at(pe, coff + 16)? as usize;
    let opt = coff + 20;
    if u16_at(pe, opt)? != 0x20b {
        return Err(PeError::Format("optional header is not PE32+".into()));
    }
    let l = Layout { coff, opt, sections: opt + opt_size, count, section_align: u32_at(pe, opt + 32)?, file_align: u32_at(pe, opt + 36)?, size_of_headers: u32_at(pe, opt + 60)? };
    if l.section_align == 0 || l.file_align == 0 {
        return Err(PeError::Format("zero alignment".into()));
    }
    if pe.len() < l.sections + l.count * SECTION_HEADER_SIZE {
        return Err(PeError::Format("section table truncated".into()));
    }
    Ok(l)
}

fn section_name(pe: &[u8], hdr: usize) -> String {
    let raw = &pe[hdr..hdr + 8];
    let end = raw.iter().position(|&b| b == 0).unwrap_or(8);
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

/// The named sections of a PE image and their raw data (trimmed to VirtualSize).
pub fn sections(pe: &[u8]) -> Result<Vec<(String, &[u8])>, PeError> {
    let l = layout(pe)?;
    let mut out = Vec::new();
    for i in 0..l.count {
        let h = l.sections + i * SECTION_HEADER_SIZE;
        let vsize = u32_at(pe, h + 8)? as usize;
        let raw_size = u32_at(pe, h + 16)? as usize;
        let raw_ptr = u32_at(pe, h + 20)? as usize;
        let len = vsize.min(raw_size);
        let data = pe.get(raw_ptr..raw_ptr + len).ok_or_else(|| PeError::Format(format!("section {i} data out of file")))?;
        out.push((section_name(pe, h), data));
    }
    Ok(out)
}

/// Replaces the data of section `name` by `data` of the same length, in
/// place: headers, offsets and every other byte stay as they are. The stub
/// reads `.cmdline` by its VirtualSize, so a same-length command line is all
/// a slot's second UKI needs.
pub fn replace_section(pe: &mut [u8], name: &str, data: &[u8]) -> Result<(), PeError> {
    let l = layout(pe)?;
    for i in 0..l.count {
        let h = l.sections + i * SECTION_HEADER_SIZE;
        if section_name(pe, h) != name {
            continue;
        }
        let vsize = u32_at(pe, h + 8)? as usize;
        let raw_size = u32_at(pe, h + 16)? as usize;
        let raw_ptr = u32_at(pe, h + 20)? as usize;
        let len = vsize.min(raw_size);
        if data.len() != len {
            return Err(PeError::SizeChanged { name: name.to_string(), old: len, new: data.len() });
        }
        let target = pe.get_mut(raw_ptr..raw_ptr + len).ok_or_else(|| PeError::Format(format!("section {name} data out of file")))?;
        target.copy_from_slice(data);
        return Ok(());
    }
    Err(PeError::Missing(name.to_string()))
}

/// Appends `extra` sections to `stub`, in order, and returns the new image.
pub fn append_sections(stub: &[u8], extra: &[(&str, &[u8])]) -> Result<Vec<u8>, PeError> {
    let l = layout(stub)?;
    let existing: Vec<String> = sections(stub)?.into_iter().map(|(n, _)| n).collect();
    let mut pe = stub.to_vec();
    // End of the last section in memory, and of all data in the file.
    let mut next_va = 0u32;
    for i in 0..l.count {
        let h = l.sections + i * SECTION_HEADER_SIZE;
        let end = u32_at(&pe, h + 12)? + u32_at(&pe, h + 8)?.max(u32_at(&pe, h + 16)?);
        next_va = next_va.max(end);
    }
    let mut count = l.count;
    for (name, data) in extra {
        if name.len() > 8 {
            return Err(PeError::NameTooLong(name.to_string()));
        }
        if existing.iter().any(|n| n == name) {
            return Err(PeError::Duplicate(name.to_string()));
        }
        let h = l.sections + count * SECTION_HEADER_SIZE;
        if h + SECTION_HEADER_SIZE > l.size_of_headers as usize {
            return Err(PeError::NoHeaderRoom(name.to_string(), l.size_of_headers));
        }
        let raw_ptr = align_up(pe.len() as u32, l.file_align);
        let raw_size = align_up(data.len() as u32, l.file_align);
        let va = align_up(next_va, l.section_align);
        pe.resize(raw_ptr as usize, 0);
        pe.extend_from_slice(data);
        pe.resize((raw_ptr + raw_size) as usize, 0);
        let mut header = [0u8; SECTION_HEADER_SIZE];
        header[..name.len()].copy_from_slice(name.as_bytes());
        put_u32(&mut header, 8, data.len() as u32);
        put_u32(&mut header, 12, va);
        put_u32(&mut header, 16, raw_size);
        put_u32(&mut header, 20, raw_ptr);
        put_u32(&mut header, 36, SCN_INITIALIZED_DATA_READ);
        pe[h..h + SECTION_HEADER_SIZE].copy_from_slice(&header);
        next_va = va + data.len() as u32;
        count += 1;
    }
    pe[l.coff + 2..l.coff + 4].copy_from_slice(&(count as u16).to_le_bytes());
    put_u32(&mut pe, l.opt + 56, align_up(next_va, l.section_align)); // SizeOfImage
    put_u32(&mut pe, l.opt + 64, 0); // CheckSum
    Ok(pe)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal PE32+ image with one `.text` section, laid out like a linker would.
    fn tiny_pe() -> Vec<u8> {
        let mut pe = vec![0u8; 0x400];
        pe[0..2].copy_from_slice(b"MZ");
        put_u32(&mut pe, 0x3c, 0x80);
        pe[0x80..0x84].copy_from_slice(b"PE\0\0");
        let coff = 0x84;
        pe[coff..coff + 2].copy_from_slice(&0x8664u16.to_le_bytes());
        pe[coff + 2..coff + 4].copy_from_slice(&1u16.to_le_bytes());
        pe[coff + 16..coff + 18].copy_from_slice(&240u16.to_le_bytes());
        let opt = coff + 20;
        pe[opt..opt + 2].copy_from_slice(&0x20bu16.to_le_bytes());
        put_u32(&mut pe, opt + 32, 0x1000);
        put_u32(&mut pe, opt + 36, 0x200);
        put_u32(&mut pe, opt + 56, 0x2000);
        put_u32(&mut pe, opt + 60, 0x400);
        let s = opt + 240;
        pe[s..s + 5].copy_from_slice(b".text");
        put_u32(&mut pe, s + 8, 0x10);
        put_u32(&mut pe, s + 12, 0x1000);
        put_u32(&mut pe, s + 16, 0x200);
        put_u32(&mut pe, s + 20, 0x200);
        pe
    }

    #[test]
    fn appended_sections_read_back_aligned() {
        let pe = append_sections(&tiny_pe(), &[(".osrel", b"ID=basalt\n"), (".linux", &[0xAA; 3000])]).unwrap();
        let secs = sections(&pe).unwrap();
        let names: Vec<_> = secs.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, [".text", ".osrel", ".linux"]);
        assert_eq!(secs[1].1, b"ID=basalt\n");
        assert_eq!(secs[2].1, &[0xAA; 3000][..]);
        let l = layout(&pe).unwrap();
        for i in 1..3 {
            let h = l.sections + i * SECTION_HEADER_SIZE;
            assert_eq!(u32_at(&pe, h + 20).unwrap() % 0x200, 0, "file offset aligned");
            assert_eq!(u32_at(&pe, h + 12).unwrap() % 0x1000, 0, "virtual address aligned");
        }
        // .osrel at 0x2000 (after .text's page), .linux at 0x3000, 3000 bytes -> image ends at 0x4000.
        assert_eq!(u32_at(&pe, l.opt + 56).unwrap(), 0x4000);
    }

    #[test]
    fn replaces_a_section_in_place_only_at_the_same_size() {
        let before = append_sections(&tiny_pe(), &[(".osrel", b"ID=basalt\n"), (".cmdline", b"basalt.slot=A x"), (".linux", &[0xAA; 3000])]).unwrap();
        let mut pe = before.clone();
        replace_section(&mut pe, ".cmdline", b"basalt.slot=B x").unwrap();
        let secs = sections(&pe).unwrap();
        assert_eq!(secs[2], (".cmdline".to_string(), &b"basalt.slot=B x"[..]));
        assert_eq!(secs[3].1, &[0xAA; 3000][..]);
        let changed: Vec<usize> = (0..pe.len()).filter(|&i| pe[i] != before[i]).collect();
        assert_eq!(changed.len(), 1, "only the one differing byte changes");
        assert_eq!(pe.len(), before.len());
        assert_eq!(replace_section(&mut pe, ".cmdline", b"basalt.slot=B xy"), Err(PeError::SizeChanged { name: ".cmdline".into(), old: 15, new: 16 }));
        assert_eq!(replace_section(&mut pe, ".initrd", b""), Err(PeError::Missing(".initrd".into())));
        assert!(matches!(replace_section(&mut b"not a pe".to_vec(), ".cmdline", b""), Err(PeError::Format(_))));
        assert_eq!(sections(&pe).unwrap()[2].1, b"basalt.slot=B x", "a refused replacement changes nothing");
    }

    #[test]
    fn refuses_bad_input() {
        assert!(matches!(append_sections(b"not a pe", &[]), Err(PeError::Format(_))));
        assert!(matches!(append_sections(&tiny_pe(), &[(".waytoolong", b"")]), Err(PeError::NameTooLong(_))));
        assert!(matches!(append_sections(&tiny_pe(), &[(".text", b"")]), Err(PeError::Duplicate(_))));
        let many: Vec<(&str, &[u8])> = (0..20).map(|_| (".x", &b""[..])).collect();
        assert!(matches!(append_sections(&tiny_pe(), &many), Err(PeError::NoHeaderRoom(..))));
    }
}
