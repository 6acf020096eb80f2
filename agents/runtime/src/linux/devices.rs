//! The device cgroup program: which device nodes a container may create
//! (mknod), read and write. cgroup v2 has no devices controller file; as runc
//! and crun do, the runtime loads a `BPF_PROG_TYPE_CGROUP_DEVICE` program
//! into the kernel and attaches it to the container's cgroup, where the
//! kernel runs it on every open and mknod of a device node.
//!
//! The program is assembled here from the rules: a few eBPF instructions
//! per rule (compare type, major, minor, then the access bits), evaluated
//! last rule first so the last matching rule wins, and anything no rule
//! matches is refused. The config's `linux.resources.devices` come first and
//! [`DEFAULT_ALLOWED`] (the OCI default devices) after them, as runc orders
//! them, so a leading "deny everything" in the config (what `runc spec` and
//! docker write) still leaves the default devices usable.

use std::path::Path;

use serde::{Deserialize, Serialize};

/// One rule, in the OCI runtime spec's form (`linux.resources.devices[]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceRule {
    pub allow: bool,
    /// `c`, `b` or `a` (all); absent means all.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub major: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minor: Option<i64>,
    /// Letters of `rwm`; absent means all three.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<String>,
}

impl DeviceRule {
    pub fn allow_char(major: i64, minor: Option<i64>, access: &str) -> DeviceRule {
        DeviceRule { allow: true, kind: Some("c".into()), major: Some(major), minor, access: Some(access.into()) }
    }

    pub fn deny_all() -> DeviceRule {
        DeviceRule { allow: false, kind: Some("a".into()), major: None, minor: None, access: Some("rwm".into()) }
    }

    pub fn allow_all() -> DeviceRule {
        DeviceRule { allow: true, kind: Some("a".into()), major: None, minor: None, access: Some("rwm".into()) }
    }
}

/// The OCI default devices every container may use: null, zero, full,
/// random, urandom, tty, console, ptmx and the pts terminals.
pub const DEFAULT_ALLOWED: &[(i64, Option<i64>)] = &[(1, Some(3)), (1, Some(5)), (1, Some(7)), (1, Some(8)), (1, Some(9)), (5, Some(0)), (5, Some(1)), (5, Some(2)), (136, None)];

pub fn default_rules() -> Vec<DeviceRule> {
    DEFAULT_ALLOWED.iter().map(|(major, minor)| DeviceRule::allow_char(*major, *minor, "rwm")).collect()
}

// The kernel's encoding (include/uapi/linux/bpf.h).
const DEV_BLOCK: i32 = 1;
const DEV_CHAR: i32 = 2;
const ACC_MKNOD: i32 = 1;
const ACC_READ: i32 = 2;
const ACC_WRITE: i32 = 4;

/// A rule as the program tests it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Compiled {
    allow: bool,
    kind: Option<i32>,
    major: Option<i32>,
    minor: Option<i32>,
    access: i32,
}

fn compile_rule(index: usize, rule: &DeviceRule) -> Result<Compiled, String> {
    let at = || format!("linux.resources.devices[{index}]");
    let kind = match rule.kind.as_deref() {
        None | Some("a") => None,
        Some("c") => Some(DEV_CHAR),
        Some("b") => Some(DEV_BLOCK),
        Some(other) => return Err(format!("{}: type {other:?} is not c, b or a", at())),
    };
    let number = |value: Option<i64>, what: &str| -> Result<Option<i32>, String> {
        match value {
            None | Some(-1) => Ok(None),
            Some(n) if (0..=i32::MAX as i64).contains(&n) => Ok(Some(n as i32)),
            Some(n) => Err(format!("{}: {what} {n} is not a device number", at())),
        }
    };
    let mut access = 0;
    for letter in rule.access.as_deref().unwrap_or("rwm").chars() {
        access |= match letter {
            'r' => ACC_READ,
            'w' => ACC_WRITE,
            'm' => ACC_MKNOD,
            other => return Err(format!("{}: access {other:?} is not one of r, w, m", at())),
        };
    }
    if access == 0 {
        return Err(format!("{}: access is empty (give some of r, w, m)", at()));
    }
    Ok(Compiled { allow: rule.allow, kind, major: number(rule.major, "major")?, minor: number(rule.minor, "minor")?, access })
}

/// One eBPF instruction (struct bpf_insn).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn { code, regs: (src << 4) | dst, off, imm }
}

// Opcodes: class | operation | source.
const LDX_MEM_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const ALU32_MOV_X: u8 = 0xbc; // BPF_ALU | BPF_MOV | BPF_X
const ALU32_AND_K: u8 = 0x54; // BPF_ALU | BPF_AND | BPF_K
const ALU32_RSH_K: u8 = 0x74; // BPF_ALU | BPF_RSH | BPF_K
const ALU64_MOV_K: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
const JMP32_JNE_K: u8 = 0x56; // BPF_JMP32 | BPF_JNE | BPF_K
const JMP32_JEQ_K: u8 = 0x16; // BPF_JMP32 | BPF_JEQ | BPF_K
const EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT

// Registers: r1 the context (struct bpf_cgroup_dev_ctx: access_type, major,
// minor, each u32); r2 the requested access, r3 the type, r4 major, r5 minor.
const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;
const R5: u8 = 5;

/// The program for `rules` (the config's, then the defaults).
pub fn assemble(rules: &[DeviceRule]) -> Result<Vec<Insn>, String> {
    let compiled: Vec<Compiled> = rules.iter().enumerate().map(|(i, r)| compile_rule(i, r)).collect::<Result<_, _>>()?;
    let mut program = vec![
        insn(LDX_MEM_W, R2, R1, 0, 0),
        insn(ALU32_MOV_X, R3, R2, 0, 0),
        insn(ALU32_AND_K, R3, 0, 0, 0xffff),
        insn(ALU32_RSH_K, R2, 0, 0, 16),
        insn(LDX_MEM_W, R4, R1, 4, 0),
        insn(LDX_MEM_W, R5, R1, 8, 0),
    ];
    // The last rule is tested first: the first match returns.
    for rule in compiled.iter().rev() {
        // Each jump in a block goes to the block's end (the next rule); its
        // offset is filled in once the block's length is known.
        let mut block: Vec<Insn> = Vec::new();
        let mut jumps = Vec::new();
        for (register, value) in [(R3, rule.kind), (R4, rule.major), (R5, rule.minor)] {
            if let Some(value) = value {
                jumps.push(block.len());
                block.push(insn(JMP32_JNE_K, register, 0, 0, value));
            }
        }
        block.push(insn(ALU32_MOV_X, R0, R2, 0, 0));
        if rule.allow {
            // Allowed when nothing asked for is outside the rule's access.
            block.push(insn(ALU32_AND_K, R0, 0, 0, !rule.access & 7));
            jumps.push(block.len());
            block.push(insn(JMP32_JNE_K, R0, 0, 0, 0));
            block.push(insn(ALU64_MOV_K, R0, 0, 0, 1));
        } else {
            // Refused when anything asked for is in the rule's access.
            block.push(insn(ALU32_AND_K, R0, 0, 0, rule.access));
            jumps.push(block.len());
            block.push(insn(JMP32_JEQ_K, R0, 0, 0, 0));
            block.push(insn(ALU64_MOV_K, R0, 0, 0, 0));
        }
        block.push(insn(EXIT, 0, 0, 0, 0));
        let length = block.len();
        for at in jumps {
            block[at].off = (length - at - 1) as i16;
        }
        program.extend(block);
    }
    program.push(insn(ALU64_MOV_K, R0, 0, 0, 0));
    program.push(insn(EXIT, 0, 0, 0, 0));
    Ok(program)
}

/// The checked rules of a config, for errors before anything starts.
pub fn check(rules: &[DeviceRule]) -> Result<(), String> {
    rules.iter().enumerate().try_for_each(|(i, r)| compile_rule(i, r).map(|_| ()))
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;

/// The start of union bpf_attr for BPF_PROG_LOAD (the kernel takes a
/// shorter attr and treats the rest as zero).
#[repr(C)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// union bpf_attr for BPF_PROG_ATTACH.
#[repr(C)]
struct ProgAttach {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

fn bpf<T>(command: libc::c_long, attr: &mut T) -> libc::c_long {
    // SAFETY: `attr` is a live, initialised repr(C) prefix of union bpf_attr
    // for `command`, and its size is passed with it; the kernel copies it in
    // and writes back into it only within that size.
    unsafe { libc::syscall(libc::SYS_bpf, command, attr as *mut T, std::mem::size_of::<T>() as u32) }
}

/// Loads the program for `rules` and attaches it to the cgroup directory
/// `cgroup`. The kernel keeps it attached for the cgroup's life.
pub fn attach(cgroup: &Path, rules: &[DeviceRule]) -> Result<(), String> {
    let program = assemble(rules)?;
    let license = c"Apache-2.0";
    let mut log = vec![0u8; 64 * 1024];
    let mut name = [0u8; 16];
    name[..13].copy_from_slice(b"basalt_device");
    let mut load = ProgLoad {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: program.len() as u32,
        insns: program.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        kern_version: 0,
        prog_flags: 0,
        prog_name: name,
        prog_ifindex: 0,
        expected_attach_type: 0,
    };
    let prog_fd = bpf(BPF_PROG_LOAD, &mut load);
    if prog_fd < 0 {
        let error = std::io::Error::last_os_error();
        let verifier = String::from_utf8_lossy(&log[..log.iter().position(|&b| b == 0).unwrap_or(0)]).trim().to_string();
        return Err(format!("loading the device cgroup program: {error}{}", if verifier.is_empty() { String::new() } else { format!(" (verifier: {verifier})") }));
    }
    let dir = super::sys::cpath(cgroup);
    // SAFETY: a NUL-terminated path; the descriptor is closed below.
    let cgroup_fd = unsafe { libc::open(dir.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) };
    if cgroup_fd < 0 {
        let error = std::io::Error::last_os_error();
        // SAFETY: closing the program descriptor this function opened.
        unsafe { libc::close(prog_fd as i32) };
        return Err(format!("opening cgroup {} for its device program: {error}", cgroup.display()));
    }
    let mut attach = ProgAttach { target_fd: cgroup_fd as u32, attach_bpf_fd: prog_fd as u32, attach_type: BPF_CGROUP_DEVICE, attach_flags: 0, replace_bpf_fd: 0 };
    let attached = bpf(BPF_PROG_ATTACH, &mut attach);
    let error = std::io::Error::last_os_error();
    // SAFETY: both descriptors were opened above and are not used again; the
    // attached program stays referenced by the cgroup.
    unsafe {
        libc::close(cgroup_fd);
        libc::close(prog_fd as i32);
    }
    if attached < 0 {
        return Err(format!("attaching the device program to cgroup {}: {error}", cgroup.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the program the way the kernel does, for the subset it uses.
    fn run(program: &[Insn], kind: i32, access: i32, major: i32, minor: i32) -> u64 {
        let ctx = [((access << 16) | kind) as u32, major as u32, minor as u32];
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        loop {
            let i = program[pc];
            let (dst, src) = ((i.regs & 0xf) as usize, (i.regs >> 4) as usize);
            pc += 1;
            match i.code {
                LDX_MEM_W => {
                    assert_eq!(src, 1);
                    r[dst] = ctx[i.off as usize / 4] as u64;
                }
                ALU32_MOV_X => r[dst] = r[src] as u32 as u64,
                ALU32_AND_K => r[dst] = (r[dst] as u32 & i.imm as u32) as u64,
                ALU32_RSH_K => r[dst] = ((r[dst] as u32) >> i.imm) as u64,
                ALU64_MOV_K => r[dst] = i.imm as i64 as u64,
                JMP32_JNE_K if r[dst] as u32 != i.imm as u32 => pc += i.off as usize,
                JMP32_JEQ_K if r[dst] as u32 == i.imm as u32 => pc += i.off as usize,
                JMP32_JNE_K | JMP32_JEQ_K => {}
                EXIT => return r[0],
                other => panic!("opcode {other:#x}"),
            }
        }
    }

    fn allowed(rules: &[DeviceRule], kind: i32, access: i32, major: i32, minor: i32) -> bool {
        run(&assemble(rules).unwrap(), kind, access, major, minor) == 1
    }

    #[test]
    fn the_default_devices_and_nothing_else() {
        let mut rules = vec![DeviceRule::deny_all()];
        rules.extend(default_rules());
        for (major, minor) in [(1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 1), (5, 2), (136, 0), (136, 7)] {
            assert!(allowed(&rules, DEV_CHAR, ACC_READ | ACC_WRITE, major, minor), "{major}:{minor}");
        }
        // The host's disks (virtio 253/254, sd 8, nvme 259) and memory (1:1), any access.
        for (kind, major, minor) in [(DEV_BLOCK, 254, 0), (DEV_BLOCK, 253, 1), (DEV_BLOCK, 8, 0), (DEV_BLOCK, 259, 0), (DEV_CHAR, 1, 1), (DEV_CHAR, 10, 200), (DEV_CHAR, 4, 1)] {
            for access in [ACC_READ, ACC_WRITE, ACC_MKNOD, ACC_READ | ACC_WRITE] {
                assert!(!allowed(&rules, kind, access, major, minor), "{kind} {major}:{minor} {access}");
            }
        }
        // /dev/null is not a block device.
        assert!(!allowed(&rules, DEV_BLOCK, ACC_READ, 1, 3));
    }

    #[test]
    fn the_last_matching_rule_wins_and_access_is_checked_per_letter() {
        let mut rules = vec![DeviceRule::deny_all(), DeviceRule { allow: true, kind: Some("b".into()), major: Some(254), minor: Some(0), access: Some("r".into()) }];
        assert!(allowed(&rules, DEV_BLOCK, ACC_READ, 254, 0));
        assert!(!allowed(&rules, DEV_BLOCK, ACC_READ | ACC_WRITE, 254, 0), "w was not granted");
        assert!(!allowed(&rules, DEV_BLOCK, ACC_READ, 254, 1));
        rules.push(DeviceRule { allow: false, kind: Some("b".into()), major: Some(254), minor: None, access: Some("r".into()) });
        assert!(!allowed(&rules, DEV_BLOCK, ACC_READ, 254, 0), "a later deny overrides");
        assert!(allowed(&[DeviceRule::allow_all()], DEV_BLOCK, ACC_READ | ACC_WRITE | ACC_MKNOD, 8, 0));
        assert!(!allowed(&[], DEV_CHAR, ACC_READ, 1, 3), "no rule: nothing");
    }

    #[test]
    fn bad_rules_are_refused_by_index_and_field() {
        let bad = |rule: DeviceRule| assemble(&[DeviceRule::deny_all(), rule]).unwrap_err();
        assert_eq!(bad(DeviceRule { kind: Some("x".into()), ..DeviceRule::allow_all() }), "linux.resources.devices[1]: type \"x\" is not c, b or a");
        assert_eq!(bad(DeviceRule { access: Some("rx".into()), ..DeviceRule::allow_all() }), "linux.resources.devices[1]: access 'x' is not one of r, w, m");
        assert_eq!(bad(DeviceRule { major: Some(-5), ..DeviceRule::allow_all() }), "linux.resources.devices[1]: major -5 is not a device number");
        assert!(bad(DeviceRule { access: Some(String::new()), ..DeviceRule::allow_all() }).contains("access is empty"));
    }
}
