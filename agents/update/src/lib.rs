//! The update agent's library half: what `basaltctl update` needs to talk to
//! it ([`protocol`]), and the parts that are tested on the host without a
//! machine ([`config`], [`window`], [`decide`], [`apply`], and [`reboot`]'s
//! FleetLock calls against a real store).

pub mod apply;
pub mod config;
pub mod decide;
pub mod fetch;
pub mod protocol;
pub mod readback;
pub mod reboot;
pub mod window;
