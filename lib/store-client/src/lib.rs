//! What goes over the wire of the store's etcd v2 keys API — events and
//! nodes (`event`), errors with etcd's codes (`error`), expiration times
//! (`timestamp`) — and a small blocking HTTP/1.1 client (`client`) over TCP
//! or the Unix socket. Kept apart from `basalt-store` (its server, engine and
//! templates) so that `basaltctl` can talk to the store without carrying
//! tokio, hyper or redb.

pub mod client;
pub mod error;
pub mod event;
pub mod timestamp;

pub use client::{Client, ClientError, Endpoint, SetOptions};
pub use error::{ErrorCode, EtcdError};
pub use event::{Action, Event, NodeView};
pub use timestamp::Timestamp;
