//! The booted slot's UKI on the ESP, its boot counter, and blessing: the
//! Boot Loader Specification's way of saying "this boot was good" is to drop
//! the `+LEFT-DONE` counter from the file name. The names and the ESP live
//! in lib/slots, shared with the update agent.

use crate::modprobe;
use basalt_slots::MountedEsp;
use std::path::Path;

const ESP_MOUNT: &str = "/run/basalt/esp";

pub use basalt_slots::split_counter;

fn mount() -> Result<MountedEsp, String> {
    for m in ["vfat", "nls_cp437", "nls_ascii", "nls_utf8", "nls_iso8859_1"] {
        let _ = modprobe::load(m);
    }
    MountedEsp::mount(Path::new(ESP_MOUNT))
}

/// What the ESP says about the booted UKI: its current file name.
pub fn find_uki(base: &str) -> Result<Option<String>, String> {
    let esp = mount()?;
    Ok(basalt_slots::find(&esp.linux_dir(), base).map(|(file, _)| file))
}

/// Renames the booted UKI to its name without counter. Returns the new name.
pub fn bless(base: &str) -> Result<String, String> {
    let esp = mount()?;
    basalt_slots::bless(&esp.linux_dir(), base)
}
