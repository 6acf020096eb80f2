//! The node's versioned key/value store (etcd v2 keys API). Nothing here yet.
