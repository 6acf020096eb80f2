//! The node's versioned key/value store: the etcd v2 keys API with its
//! semantics (`tree`), kept durable by an embedded engine (`engine`), served
//! over HTTP (`http`), with confd-style templates (`template`), a reboot lock
//! (`reboot_lock`) and a client (`client`).

pub mod error;
pub mod event;
pub mod history;
pub mod request;
pub mod timestamp;
pub mod tree;

pub use error::{ErrorCode, EtcdError};
pub use event::{Action, Event, NodeView};
pub use request::Mutation;
pub use timestamp::Timestamp;
pub use tree::Tree;
