//! Kernel modules: dependencies and aliases read from each module's
//! `.modinfo` ELF section (what depmod derives modules.dep from; Debian's
//! kernel package does not ship modules.dep, its postinst runs depmod).

use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone)]
pub struct Module {
    /// Path relative to /usr/lib/modules/<kver>/, e.g. `kernel/drivers/block/virtio_blk.ko`.
    pub rel_path: String,
    pub depends: Vec<String>,
    pub aliases: Vec<String>,
}

/// Module name from a file name: `dm-verity.ko` → `dm_verity`.
pub fn module_name(rel_path: &str) -> String {
    let file = rel_path.rsplit('/').next().unwrap_or(rel_path);
    file.trim_end_matches(".ko").replace('-', "_")
}

/// The `.modinfo` section of an ELF64 little-endian object.
pub fn modinfo(elf: &[u8]) -> Result<Vec<(String, String)>> {
    if elf.len() < 64 || &elf[0..4] != b"\x7fELF" || elf[4] != 2 || elf[5] != 1 {
        bail!("not an ELF64 little-endian object");
    }
    let u16_at = |o: usize| -> Result<u16> { Ok(u16::from_le_bytes(elf.get(o..o + 2).context("truncated ELF")?.try_into()?)) };
    let u32_at = |o: usize| -> Result<u32> { Ok(u32::from_le_bytes(elf.get(o..o + 4).context("truncated ELF")?.try_into()?)) };
    let u64_at = |o: usize| -> Result<u64> { Ok(u64::from_le_bytes(elf.get(o..o + 8).context("truncated ELF")?.try_into()?)) };
    let shoff = u64_at(0x28)? as usize;
    let shentsize = u16_at(0x3a)? as usize;
    let shnum = u16_at(0x3c)? as usize;
    let shstrndx = u16_at(0x3e)? as usize;
    let section = |i: usize| -> Result<(u32, usize, usize)> {
        let h = shoff + i * shentsize;
        Ok((u32_at(h)?, u64_at(h + 24)? as usize, u64_at(h + 32)? as usize))
    };
    let (_, str_off, str_size) = section(shstrndx)?;
    let strtab = elf.get(str_off..str_off + str_size).context("section names out of file")?;
    for i in 0..shnum {
        let (name_off, off, size) = section(i)?;
        let name = strtab.get(name_off as usize..).context("bad section name")?;
        let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
        if name == b".modinfo" {
            let data = elf.get(off..off + size).context(".modinfo out of file")?;
            return Ok(data.split(|&b| b == 0).filter_map(|kv| std::str::from_utf8(kv).ok()).filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.to_string(), v.to_string()))).collect());
        }
    }
    bail!("no .modinfo section")
}

#[derive(Debug, Default)]
pub struct ModuleSet {
    pub by_name: BTreeMap<String, Module>,
}

impl ModuleSet {
    pub fn add(&mut self, rel_path: &str, elf: &[u8]) -> Result<()> {
        let info = modinfo(elf).with_context(|| format!("module {rel_path}"))?;
        let depends = info.iter().filter(|(k, _)| k == "depends").flat_map(|(_, v)| v.split(',').filter(|s| !s.is_empty()).map(|s| s.replace('-', "_"))).collect();
        let aliases = info.iter().filter(|(k, _)| k == "alias").map(|(_, v)| v.clone()).collect();
        self.by_name.insert(module_name(rel_path), Module { rel_path: rel_path.to_string(), depends, aliases });
        Ok(())
    }

    /// `wanted` and everything they depend on, dependencies first: the order
    /// to load them in.
    pub fn load_order(&self, wanted: &[String]) -> Result<Vec<&Module>> {
        let mut order = Vec::new();
        let mut done = BTreeSet::new();
        for w in wanted {
            self.visit(&w.replace('-', "_"), &mut Vec::new(), &mut done, &mut order)?;
        }
        Ok(order)
    }

    fn visit<'a>(&'a self, name: &str, stack: &mut Vec<String>, done: &mut BTreeSet<String>, order: &mut Vec<&'a Module>) -> Result<()> {
        if done.contains(name) {
            return Ok(());
        }
        if stack.iter().any(|s| s == name) {
            bail!("module dependency cycle: {} -> {name}", stack.join(" -> "));
        }
        let m = self.by_name.get(name).with_context(|| match stack.last() {
            Some(parent) => format!("module {parent} depends on {name}, which the kernel package does not have"),
            None => format!("module {name} is not in the kernel package (built in, or misspelt?)"),
        })?;
        stack.push(name.to_string());
        for d in &m.depends {
            self.visit(d, stack, done, order)?;
        }
        stack.pop();
        done.insert(name.to_string());
        order.push(m);
        Ok(())
    }

    /// modules.dep in depmod's format: each module, then its dependencies,
    /// the one to load first last.
    pub fn modules_dep(&self) -> Result<String> {
        let mut out = String::new();
        for (name, m) in &self.by_name {
            let mut deps: Vec<&str> = self.load_order(std::slice::from_ref(name))?.iter().map(|d| d.rel_path.as_str()).filter(|p| *p != m.rel_path).collect();
            deps.reverse();
            out.push_str(&m.rel_path);
            out.push(':');
            for d in deps {
                out.push(' ');
                out.push_str(d);
            }
            out.push('\n');
        }
        Ok(out)
    }

    /// modules.alias: `alias <pattern> <module>` lines, for loading drivers by modalias.
    pub fn modules_alias(&self) -> String {
        let mut out = String::new();
        for (name, m) in &self.by_name {
            for a in &m.aliases {
                out.push_str(&format!("alias {a} {name}\n"));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set() -> ModuleSet {
        let mut s = ModuleSet::default();
        let m = |p: &str, d: &[&str]| Module { rel_path: p.into(), depends: d.iter().map(|s| s.to_string()).collect(), aliases: vec![] };
        s.by_name.insert("dm_verity".into(), m("kernel/drivers/md/dm-verity.ko", &["dm_bufio", "dm_mod"]));
        s.by_name.insert("dm_bufio".into(), m("kernel/drivers/md/dm-bufio.ko", &[]));
        s.by_name.insert("dm_mod".into(), m("kernel/drivers/md/dm-mod.ko", &[]));
        s.by_name.insert("loop_a".into(), m("a.ko", &["loop_b"]));
        s.by_name.insert("loop_b".into(), m("b.ko", &["loop_a"]));
        s
    }

    #[test]
    fn load_order_puts_dependencies_first() {
        let s = set();
        let names: Vec<_> = s.load_order(&["dm-verity".into()]).unwrap().iter().map(|m| module_name(&m.rel_path)).collect();
        assert_eq!(names, ["dm_bufio", "dm_mod", "dm_verity"]);
    }

    #[test]
    fn missing_and_cyclic_modules_are_named() {
        let s = set();
        assert!(s.load_order(&["nope".into()]).unwrap_err().to_string().contains("module nope is not in the kernel package"));
        assert!(s.load_order(&["loop_a".into()]).unwrap_err().to_string().contains("cycle"));
    }

    #[test]
    fn module_names_follow_kernel_rules() {
        assert_eq!(module_name("kernel/drivers/md/dm-verity.ko"), "dm_verity");
        assert!(modinfo(b"not elf").is_err());
    }
}
