//! Loading a module of the running kernel by name, dependencies first, from
//! the modules.dep the builder wrote into /usr/lib/modules/<kver>/.

use std::path::{Path, PathBuf};

fn module_dir() -> PathBuf {
    // SAFETY: utsname is arrays of c_char, for which all zeroes is valid.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `uts` is a live utsname for the kernel to fill.
    unsafe { libc::uname(&mut uts) };
    // SAFETY: uname fills release with a NUL-terminated string; zeroed() made
    // it one even if uname failed.
    let release = unsafe { std::ffi::CStr::from_ptr(uts.release.as_ptr()) }.to_string_lossy().into_owned();
    PathBuf::from("/usr/lib/modules").join(release)
}

fn name_of(path: &str) -> String {
    path.rsplit('/').next().unwrap_or(path).trim_end_matches(".ko").replace('-', "_")
}

/// Loads `name` and what it depends on; a module already loaded (or built in) is fine.
pub fn load(name: &str) -> Result<(), String> {
    let dir = module_dir();
    let dep = std::fs::read_to_string(dir.join("modules.dep")).map_err(|e| format!("reading modules.dep: {e}"))?;
    let wanted = name.replace('-', "_");
    let Some(line) = dep.lines().find(|l| l.split(':').next().is_some_and(|p| name_of(p) == wanted)) else {
        // Not a module: maybe built into the kernel.
        return if Path::new("/sys/module").join(&wanted).exists() { Ok(()) } else { Err(format!("no module {name}")) };
    };
    let (path, deps) = line.split_once(':').unwrap();
    // modules.dep lists the module to load first last.
    for d in deps.split_whitespace().rev().chain(std::iter::once(path)) {
        crate::sys::load_module(&dir.join(d)).map_err(|e| e.to_string())?;
    }
    Ok(())
}
