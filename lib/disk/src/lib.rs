//! The disk: GPT reading and writing ([`gpt`]), GUIDs ([`guid`]) and the
//! basalt partition layout ([`layout`]). The builder writes disks with it; the
//! initramfs reads it to find its partitions; first boot and the update agent
//! change it. One format, one place.

pub mod gpt;
pub mod guid;
pub mod layout;

pub use gpt::{Gpt, GptError, Partition};
pub use guid::Guid;
