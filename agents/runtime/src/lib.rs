//! The OCI container runtime agent. Nothing here yet.
