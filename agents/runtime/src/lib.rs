//! basalt's container runtime: pulls OCI and Docker images from registries
//! into a content-addressed store on ROOT and runs them as supervised
//! containers in their own namespaces, under cgroup v2 limits. See
//! docs/runtime.md.

pub mod agent;
pub mod api;
pub mod bundle;
pub mod digest;
pub mod linux;
pub mod logs;
pub mod manifest;
pub mod network;
pub mod oci;
pub mod pull;
pub mod reference;
pub mod registry;
pub mod seccomp;
pub mod settings;
pub mod spec;
pub mod store;
pub mod unpack;
