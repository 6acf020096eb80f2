//! cloud-config: user data from the places a machine finds it, applied safely. Nothing here yet.
