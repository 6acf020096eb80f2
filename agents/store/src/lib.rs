//! The node's versioned key/value store: the etcd v2 keys API with its
//! semantics (`tree`), kept durable by an embedded engine (`engine`), run by
//! a writer thread with group commit (`service`), served over HTTP (`http`,
//! `server`), seeded from cloud-config (`seed`), with confd-style templates
//! (`template`), a reboot lock (`reboot_lock`) and a client (`client`).

// The wire format and the client live in their own small crate (basaltctl
// uses it); here they keep their old paths.
pub use basalt_store_client::{client, error, event, timestamp};

pub mod cluster;
pub mod config;
pub mod daemon;
pub mod engine;
pub mod form;
pub mod harness;
pub mod history;
pub mod http;
pub mod reboot_lock;
pub mod request;
pub mod seed;
pub mod server;
pub mod service;
pub mod template;
pub mod tls;
pub mod tree;
pub mod wal;

pub use error::{ErrorCode, EtcdError};
pub use event::{Action, Event, NodeView};
pub use request::Mutation;
pub use service::{Limits, Store, Watch};
pub use timestamp::Timestamp;
pub use tree::Tree;
