//! basalt's container runtime: pulls OCI and Docker images from registries
//! into a content-addressed store on ROOT and runs them as supervised
//! containers in their own namespaces, under cgroup v2 limits. See
//! docs/runtime.md.

pub mod digest;
pub mod manifest;
pub mod pull;
pub mod reference;
pub mod seccomp;
pub mod registry;
pub mod settings;
pub mod store;
pub mod unpack;
pub mod linux;
pub mod oci;
pub mod bundle;
pub mod spec;
pub mod agent;
pub mod api;
pub mod logs;
pub mod network;
