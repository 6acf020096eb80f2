//! The A/B update agent. Its work is tracked by the "Updates" issue; nothing here yet.
