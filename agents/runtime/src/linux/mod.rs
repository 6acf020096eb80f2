//! The Linux mechanics of running a container: capabilities, cgroup v2,
//! mounts and pivot_root, and the process that sets them up and execs.

pub mod caps;
pub mod cgroup;
pub mod devices;
pub mod mounts;
pub mod process;
pub mod seccomp;
pub mod sys;
pub mod userns;
